"""Faults: a run killed with SIGKILL resumes to the same weights; one seed gives one result."""

import json
import os
import signal
import subprocess
import sys
import time

import torch

from anchorlab.config import dump_config
from anchorlab.engine.checkpoint import load_checkpoint
from anchorlab.engine.train import train

from .test_train import _same_weights, synth, tiny  # noqa: F401  (synth is a fixture)


def _log_iterations(path) -> list[int]:
    if not path.is_file():
        return []
    return [json.loads(line)["iteration"] for line in path.read_text().splitlines() if line.endswith("}")]


def test_sigkill_then_resume_reaches_the_same_weights(synth, tmp_path):  # noqa: F811
    # Both runs in subprocesses with one thread: bit-identical results need the same reduction order.
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    commands = {}
    for name in ("full", "killed"):
        cfg_path = tmp_path / f"{name}.yaml"
        cfg_path.write_text(
            dump_config(tiny(synth, tmp_path / name, "train.iterations=16", "train.checkpoint_every=2"))
        )
        commands[name] = [sys.executable, "-m", "anchorlab", "train", str(cfg_path), "--no-eval"]
    subprocess.run(commands["full"], env=env, check=True, capture_output=True)

    command = commands["killed"]
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    log = tmp_path / "killed" / "log.jsonl"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None and max(_log_iterations(log), default=0) < 5:
        time.sleep(0.05)
    assert proc.poll() is None, "training finished before it could be killed: " + proc.stderr.read().decode()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = load_checkpoint(tmp_path / "killed" / "last.pt")["iteration"]
    assert 4 <= killed_at < 16

    subprocess.run([*command, "--resume"], env=env, check=True, capture_output=True)
    assert load_checkpoint(tmp_path / "killed" / "last.pt")["iteration"] == 16
    full = load_checkpoint(tmp_path / "full" / "last.pt")["model"]
    assert _same_weights(full, load_checkpoint(tmp_path / "killed" / "last.pt")["model"])


def test_same_seed_same_weights(synth, tmp_path):  # noqa: F811
    runs = []
    for name in ("a", "b"):
        cfg = tiny(synth, tmp_path / name, "train.iterations=4", "data.photometric=true")
        train(cfg, evaluate=False, show_progress=False)
        runs.append(load_checkpoint(tmp_path / name / "last.pt")["model"])
    assert _same_weights(*runs)
    other = tiny(synth, tmp_path / "c", "train.iterations=4", "train.seed=1")
    train(other, evaluate=False, show_progress=False)
    assert not torch.equal(
        runs[0]["head.cls_logits.weight"],
        load_checkpoint(tmp_path / "c" / "last.pt")["model"]["head.cls_logits.weight"],
    )
