"""Shared helpers of the benchmarks: interleaved A/B timing, medians, the machine header, random targets.

Every benchmark sets ``torch.set_num_threads`` explicitly and prints it, with the load average before and
after: the machine is shared, so absolute times drift; timings of the variants being compared are
interleaved (A, B, C, A, B, C, ... with the order rotated each round) so that load hits all of them alike.
"""

from __future__ import annotations

import os
import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "src") not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(ROOT / "src"))


def cpu_name() -> str:
    """The CPU model, family/model numbers and widest vector ISA from ``/proc/cpuinfo`` (virtual machines
    often report only "AMD EPYC"; the ISA decides float32 vs bfloat16 speed), else the platform's name."""
    try:
        info = dict(
            (k.strip(), v.strip())
            for k, _, v in (line.partition(":") for line in Path("/proc/cpuinfo").read_text().splitlines())
            if v
        )
    except OSError:
        return platform.processor() or "unknown CPU"
    flags = set(info.get("flags", "").split())
    isa = [f for f in ("avx512_bf16", "amx_bf16", "avx512f", "avx2") if f in flags][:2] or ["no AVX2"]
    return (
        f"{info.get('model name', 'unknown CPU')} (family {info.get('cpu family', '?')} "
        f"model {info.get('model', '?')}, {' + '.join(isa)})"
    )


def load_average() -> str:
    return ", ".join(f"{x:.2f}" for x in os.getloadavg())


def setup(threads: int) -> str:
    """Set ``torch.set_num_threads(threads)`` and return the header: machine, versions, threads, load."""
    torch.set_num_threads(threads)
    import numpy
    import torchvision

    try:
        from importlib.metadata import version

        anchorlab_version = version("anchorlab")
    except Exception:
        anchorlab_version = "checkout"
    lines = [
        f"machine: {cpu_name()}, {os.cpu_count()} logical CPUs, {platform.system()} {platform.release()}",
        f"python {platform.python_version()}, torch {torch.__version__}, "
        f"torchvision {torchvision.__version__}, "
        f"numpy {numpy.__version__}, anchorlab {anchorlab_version}",
        f"torch.set_num_threads({threads}) -> {torch.get_num_threads()} threads; "
        f"load average (1, 5, 15 min) before: {load_average()}",
    ]
    return "\n".join(lines)


def interleaved(fns: dict[str, Callable[[], Any]], *, reps: int, warmup: int = 1) -> dict[str, list[float]]:
    """Time each callable ``warmup + reps`` times, interleaved and with a rotating order; seconds per call
    for the ``reps`` timed rounds."""
    names = list(fns)
    times: dict[str, list[float]] = {name: [] for name in names}
    for i in range(warmup + reps):
        shift = i % len(names)
        for name in names[shift:] + names[:shift]:
            t0 = time.perf_counter()
            fns[name]()
            dt = time.perf_counter() - t0
            if i >= warmup:
                times[name].append(dt)
    return times


def median_ms(samples: Sequence[float]) -> float:
    return statistics.median(samples) * 1e3


def spread(samples: Sequence[float]) -> str:
    """``min..max`` in ms, to show how noisy the repetitions were."""
    return f"{min(samples) * 1e3:.0f}..{max(samples) * 1e3:.0f}"


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown table; numbers right-aligned."""
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---:" for _ in headers) + "|"]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(out)


def peak_rss_mib() -> float:
    """This process's peak resident set size in MiB: ``VmHWM`` of ``/proc/self/status`` (per address
    space, so a fresh subprocess starts from zero) or, elsewhere, ``ru_maxrss`` (which Linux carries over
    from the parent at fork, hence not the first choice)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


def random_targets(
    batch: int, objects: int, size: int, num_classes: int = 80, seed: int = 0
) -> list[dict[str, torch.Tensor]]:
    """``batch`` targets of ``objects`` random boxes (sides 8..size/2 px, skewed small) in a square image."""
    g = torch.Generator().manual_seed(seed)
    targets = []
    for _ in range(batch):
        wh = 8 + torch.rand(objects, 2, generator=g) ** 2 * (size / 2 - 8)
        xy = torch.rand(objects, 2, generator=g) * (size - wh)
        targets.append(
            {
                "boxes": torch.cat((xy, xy + wh), dim=1),
                "labels": torch.randint(num_classes, (objects,), generator=g),
            }
        )
    return targets


def random_images(batch: int, size: int, seed: int = 0) -> list[torch.Tensor]:
    """``batch`` images ``[3, size, size]`` in 0..1."""
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(3, size, size, generator=g) for _ in range(batch)]
