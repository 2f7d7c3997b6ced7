import os

import pytest
import torch

from anchorlab.engine.checkpoint import CheckpointError, atomic_write_bytes, load_checkpoint, save_checkpoint


def test_round_trip(tmp_path):
    path = save_checkpoint(
        tmp_path / "run" / "checkpoint.pt", {"model": {"w": torch.ones(3)}, "iteration": 4}
    )
    state = load_checkpoint(path)
    assert state["iteration"] == 4 and torch.equal(state["model"]["w"], torch.ones(3))


def test_interrupted_write_keeps_the_last_good_file(tmp_path):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"model": {}, "iteration": 1})

    def half_then_die(f):
        f.write(b"partial garbage")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write_bytes(path, half_then_die)
    assert load_checkpoint(path)["iteration"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]  # no temporary file left behind


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_unwritable_folder_is_a_clear_error(tmp_path):
    tmp_path.chmod(0o500)
    try:
        with pytest.raises(CheckpointError, match="cannot write"):
            save_checkpoint(tmp_path / "checkpoint.pt", {"model": {}})
    finally:
        tmp_path.chmod(0o700)


def test_write_error_names_file_and_keeps_old(tmp_path):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"model": {}, "iteration": 2})

    def disk_full(f):
        raise OSError(28, "No space left on device")

    with pytest.raises(CheckpointError, match="No space left"):
        atomic_write_bytes(path, disk_full)
    assert load_checkpoint(path)["iteration"] == 2


def test_load_errors(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not readable"):
        load_checkpoint(bad)
    torch.save({"weights": 1}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not an anchorlab checkpoint"):
        load_checkpoint(tmp_path / "other.pt")
