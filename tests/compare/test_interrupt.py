"""Ctrl-C during ``anchorlab compare --jobs 2``: the running trainings write their checkpoints, the queued
one never starts, the command exits 130 and leaves no process behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from anchorlab.data import make_synthetic

#: Generous bounds for a loaded 2-core machine; the test never asserts on speed.
START_TIMEOUT_S = 240.0
EXIT_TIMEOUT_S = 90.0


def _iteration(log: Path) -> int:
    try:
        lines = log.read_text().splitlines()
    except OSError:
        return -1
    for line in reversed(lines):
        try:
            return int(json.loads(line)["iteration"])
        except (ValueError, KeyError):
            continue
    return -1


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.skipif(sys.platform == "win32", reason="process groups and SIGINT are POSIX")
def test_ctrl_c_checkpoints_running_trainings_and_exits_130(tmp_path):
    synth = make_synthetic(tmp_path / "d", images=16, seed=0, size=96, min_object=20, max_object=48)
    out = tmp_path / "cmp"
    args = [sys.executable, "-m", "anchorlab", "compare", "--budget", "tiny", "--jobs", "2", "--threads", "1"]
    args += ["--detectors", "retinanet,fcos,grid", "--data", str(synth.train), "--val", str(synth.val)]
    args += ["--out", str(out), "--set", "train.iterations=100000", "--set", "train.checkpoint_every=100000"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # its own session: SIGINT goes to the whole process group, as a terminal's Ctrl-C does
    proc = subprocess.Popen(
        args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        running = ["retinanet", "fcos"]  # submitted first (equal cost: the given order)
        while min(_iteration(out / d / "log.jsonl") for d in running) < 2:
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the two trainings did not start"
            time.sleep(0.5)
        os.killpg(proc.pid, signal.SIGINT)
        _, stderr = proc.communicate(timeout=EXIT_TIMEOUT_S)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 130, stderr[-3000:]
    assert "interrupted" in stderr
    for det in running:
        assert (out / det / "last.pt").is_file(), f"{det} wrote no checkpoint:\n{stderr[-3000:]}"
    assert not (out / "grid" / "log.jsonl").exists() and not (out / "grid" / "last.pt").exists()
    deadline = time.monotonic() + 10
    while _group_alive(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _group_alive(proc.pid), "worker processes outlived compare"
