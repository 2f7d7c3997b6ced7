"""Parallel training for ``compare --jobs N``: several detectors train at once in spawned processes.

On a small CPU, N trainings with one torch thread each get more images through than one training with N
threads (docs/architecture.md). Only the training runs in the workers:
evaluation and timing stay in the main process, one detector at a time, so ``infer ms`` is comparable.
The main process shows one progress bar per running training, read from its ``OUT/<detector>/log.jsonl``.
"""

from __future__ import annotations

import io
import json
import multiprocessing
import os
import signal
import traceback
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import Progress, TaskID

from anchorlab.config import Config
from anchorlab.io import make_dir

__all__ = ["TRAIN_COST", "prepare_run_dir", "submission_order", "train_parallel", "train_worker"]

#: Step time relative to the dense detectors (measured on the quick budget); the costliest start first.
TRAIN_COST = {"faster_rcnn": 1.7}
#: Seconds between two looks at the running trainings' logs.
POLL_S = 1.0
#: After Ctrl-C, seconds the workers get to write their checkpoints before they are sent SIGINT too.
INTERRUPT_GRACE_S = 10.0
#: A worker's state for its SIGINT handler.
_STATE = {"training": False, "interrupted": False}


def _on_sigint(signum: int, frame: Any) -> None:
    """Ctrl-C in a worker: interrupt the running training (it writes its checkpoint); an idle worker only
    notes it, so it starts no queued training and exits quietly at shutdown."""
    _STATE["interrupted"] = True
    if _STATE["training"]:
        raise KeyboardInterrupt


def _init_worker() -> None:
    signal.signal(signal.SIGINT, _on_sigint)


def train_worker(tree: dict[str, Any], threads: int) -> dict[str, Any]:
    """Train the config ``tree`` (``Config.model_dump(mode="json")``) in a worker process with ``threads``
    torch threads; returns ``{"summary", "log", "memory"}`` (``memory``: ``PeakMemory.result()`` of the
    training, measured in this worker) or, when training raised, ``{"error", "traceback", "log"}``
    (``log``: what the training printed)."""
    import torch

    from anchorlab.compare.measure import PeakMemory
    from anchorlab.engine.common import resolve_device
    from anchorlab.engine.train import train

    if _STATE["interrupted"]:
        raise KeyboardInterrupt("compare was interrupted before this training started")
    buffer = io.StringIO()
    console = Console(file=buffer, width=120, no_color=True)
    _STATE["training"] = True
    try:
        cfg = Config.model_validate(tree)
        torch.set_num_threads(threads)
        with PeakMemory(resolve_device(cfg.train.device), "training worker process") as memory:
            summary = train(cfg, exist_ok=True, evaluate=False, console=console, show_progress=False)
        return {"summary": summary, "log": buffer.getvalue(), "memory": memory.result()}
    except Exception as exc:  # reported as the detector's failure by the main process
        error = f"{type(exc).__name__}: {exc}"
        return {"error": error, "traceback": traceback.format_exc(), "log": buffer.getvalue()}
    finally:
        _STATE["training"] = False


def prepare_run_dir(run_dir: Path) -> None:
    """Create a detector's run folder and drop the previous run's result, error and log."""
    make_dir(run_dir)
    for name in ("result.json", "error.txt", "log.jsonl"):
        (run_dir / name).unlink(missing_ok=True)


def submission_order(detectors: list[str]) -> list[str]:
    """``detectors`` with the costliest trainings first (``TRAIN_COST``), otherwise in the given order."""
    return sorted(detectors, key=lambda d: -TRAIN_COST.get(d, 1.0))


def _logged_iteration(path: Path) -> int | None:
    """The ``iteration`` of the last complete record of a training's ``log.jsonl`` (None: none yet)."""
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        try:
            return int(json.loads(line)["iteration"])
        except (ValueError, KeyError, TypeError):
            continue  # a line being written
    return None


def _outcome(future: Future) -> dict[str, Any]:
    """The worker's result, or a failure when the worker itself broke (killed, unpicklable result)."""
    try:
        return future.result()
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}"
        return {"error": error, "traceback": "".join(traceback.format_exception(exc)), "log": ""}


def _interrupt(pool: ProcessPoolExecutor, futures: dict[Future, str]) -> None:
    """Ctrl-C: drop the trainings not started; the running ones got the interrupt too (one process group)
    and write their checkpoints; a worker still training after the grace time is sent SIGINT."""
    for future in futures:
        future.cancel()
    running = [f for f in futures if not f.done()]
    _, still = wait(running, timeout=INTERRUPT_GRACE_S)
    if still:
        for process in list(getattr(pool, "_processes", {}).values()):
            if process.is_alive() and process.pid is not None:
                os.kill(process.pid, signal.SIGINT)
        wait(still, timeout=INTERRUPT_GRACE_S)


def train_parallel(
    configs: dict[str, Config],
    jobs: int,
    *,
    threads: int | None = None,
    console: Console,
    progress: Progress | None = None,
) -> dict[str, dict[str, Any]]:
    """Train every config ``jobs`` at a time in spawned processes, each with ``threads`` torch threads
    (None: the cores / ``jobs``; set as the configs' ``train.threads``), into fresh run folders; returns
    ``train_worker``'s result per detector. Raises ``KeyboardInterrupt`` after shutting the pool down."""
    share = threads or max(1, (os.cpu_count() or 1) // jobs)
    for cfg in configs.values():
        cfg.train.threads = share
        prepare_run_dir(Path(cfg.train.out))
    console.print(f"training {len(configs)} detectors, {jobs} at a time with {share} torch thread(s) each")
    context = multiprocessing.get_context("spawn")  # fork + torch threads can deadlock
    pool = ProcessPoolExecutor(max_workers=jobs, mp_context=context, initializer=_init_worker)
    futures: dict[Future, str] = {}
    tasks: dict[str, TaskID] = {}
    outcomes: dict[str, dict[str, Any]] = {}
    started: set[str] = set()
    try:
        for det in submission_order(list(configs)):
            cfg = configs[det]
            future = pool.submit(train_worker, cfg.model_dump(mode="json"), share)
            futures[future] = det
            if progress is not None:
                tasks[det] = progress.add_task(
                    f"  train {det}", total=cfg.train.iterations, visible=False, start=False
                )
        pending = set(futures)
        while pending:
            done, pending = wait(pending, timeout=POLL_S, return_when=FIRST_COMPLETED)
            for future in done:
                det = futures[future]
                outcomes[det] = _outcome(future)
                if outcomes[det]["log"].strip():
                    console.print(f"[dim]{det} training output:[/]\n{outcomes[det]['log'].rstrip()}")
                if det in tasks:
                    progress.remove_task(tasks.pop(det))  # type: ignore[union-attr]
            for det, task in tasks.items():
                iteration = _logged_iteration(Path(configs[det].train.out) / "log.jsonl")
                if iteration is not None:  # the training has started: show its bar, time it from here
                    if det not in started:
                        started.add(det)
                        progress.start_task(task)  # type: ignore[union-attr]
                    progress.update(task, completed=iteration, visible=True)  # type: ignore[union-attr]
    except KeyboardInterrupt:
        _interrupt(pool, futures)
        console.print("interrupted: the running trainings wrote their checkpoints (OUT/<detector>/last.pt)")
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        for task in tasks.values():
            progress.remove_task(task)  # type: ignore[union-attr]
    return outcomes
