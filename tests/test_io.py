"""Atomic output files (``anchorlab.io``): a full disk or an impossible output folder while writing a report
gives one clear error naming the file, and the earlier file stays byte-identical (issue #11)."""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pytest

import anchorlab.io as aio
from anchorlab.io import OutputError, atomic_write, make_dir, save_figure, write_json, write_text


@pytest.fixture
def disk_full(monkeypatch) -> Callable[[str], None]:
    """``disk_full("report.html")``: from now on, writing the temporary file of any ``report.html`` stores
    a few bytes and then fails with ENOSPC, like a disk that fills up half-way through the write."""
    real_fdopen = os.fdopen
    names: list[str] = []

    class FullFile:
        def __init__(self, f) -> None:
            self._f = f

        def write(self, data) -> int:
            self._f.write(bytes(data)[:3])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        def __getattr__(self, name: str):
            return getattr(self._f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc) -> None:
            self._f.close()

    def fdopen(fd: int, *args, **kwargs):
        f = real_fdopen(fd, *args, **kwargs)
        target = os.path.basename(os.readlink(f"/proc/self/fd/{fd}"))
        return FullFile(f) if any(target.startswith(f".{n}.") for n in names) else f

    monkeypatch.setattr(aio.os, "fdopen", fdopen)
    return names.append


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob(".*.tmp"))


def test_write_replaces_the_file_with_normal_permissions(tmp_path: Path) -> None:
    path = write_json(tmp_path / "a" / "b.json", {"x": 1})
    assert path.read_text() == '{\n  "x": 1\n}'
    write_text(path, "second")
    assert path.read_text() == "second" and _leftovers(tmp_path) == []
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask


def test_full_disk_keeps_the_old_file_and_names_the_new_one(tmp_path: Path, disk_full) -> None:
    path = write_text(tmp_path / "report.md", "the earlier report")
    disk_full("report.md")
    with pytest.raises(OutputError, match=r"cannot write .*report\.md: No space left on device") as err:
        write_text(path, "a much longer new report " * 100)
    assert isinstance(err.value, OSError) and err.value.errno == errno.ENOSPC
    assert path.read_text() == "the earlier report" and _leftovers(tmp_path) == []


def test_an_interrupted_write_leaves_no_trace(tmp_path: Path) -> None:
    def die(f) -> None:
        f.write(b"half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(tmp_path / "x.bin", die)
    assert list(tmp_path.iterdir()) == []


def test_folder_under_a_file_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("a file")
    with pytest.raises(OutputError, match=r"cannot create output folder .*not_a_folder is a file"):
        make_dir(blocker / "run" / "deeper")
    with pytest.raises(OutputError, match="not_a_folder"):
        write_json(blocker / "metrics.json", {})
    assert blocker.read_text() == "a file"


def test_save_figure_closes_the_figure_even_when_the_disk_is_full(tmp_path: Path, disk_full) -> None:
    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    path = save_figure(fig, tmp_path / "plot.png")
    assert path.read_bytes().startswith(b"\x89PNG") and not plt.fignum_exists(fig.number)
    before = path.read_bytes()
    fig, _ = plt.subplots()
    disk_full("plot.png")
    with pytest.raises(OutputError, match=r"plot\.png"):
        save_figure(fig, path)
    assert not plt.fignum_exists(fig.number) and path.read_bytes() == before


# -- the commands: a report rewrite on a full disk, and an output folder under a file -------------------


def _blocker(tmp_path: Path) -> Path:
    """A file where an output folder should go (tests run as root, so chmod would not block writes)."""
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("a file")
    return blocker


def _clear_error(result, name: str) -> None:
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output, result.output
    errors = [line for line in result.stderr.splitlines() if line.lower().startswith("error:")]
    assert len(errors) == 1 and name in errors[0], result.stderr  # one line, naming the path


@pytest.fixture(scope="module")
def coco(tmp_path_factory) -> Path:
    """6 images of 96x128 (PNGs next to the JSON), 2 boxes each, two classes."""
    import json

    import numpy as np
    from PIL import Image

    root = tmp_path_factory.mktemp("coco")
    rng = np.random.default_rng(0)
    images, anns = [], []
    for i in range(6):
        Image.fromarray(rng.integers(0, 255, (96, 128, 3), dtype=np.uint8)).save(root / f"{i}.png")
        images.append({"id": i + 1, "file_name": f"{i}.png", "width": 128, "height": 96})
        for k in range(2):
            x, y, w, h = 10 + 40 * k, 8 + 5 * i, 20 + 4 * i, 16 + 3 * k
            anns.append(
                {"id": len(anns) + 1, "image_id": i + 1, "category_id": 3 + 4 * k,
                 "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0}
            )  # fmt: skip
    cats = [{"id": 3, "name": "cat"}, {"id": 7, "name": "dog"}]
    path = root / "train.json"
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return path


def _invoke(*args: str):
    from typer.testing import CliRunner

    from anchorlab.cli import app

    return CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "100"})


SIZES = ["--set", "data.min_size=96", "--set", "data.max_size=128"]


@pytest.mark.parametrize(
    ("command", "extra", "name"),
    [
        ("assign-report", ["--pictures", "1", "--strategies", "max_iou,fcos"], "assign_report.json"),
        ("assign-report", ["--pictures", "1", "--strategies", "max_iou,fcos"], "assign_crowded.png"),
        ("anchors", ["--anchors-per-level", "3", "--ratios", "3"], "anchors.yaml"),
        ("anchors", ["--anchors-per-level", "3", "--ratios", "3"], "best_iou.png"),
    ],
)
def test_data_reports_on_a_full_disk_keep_the_earlier_file(
    coco: Path, tmp_path: Path, disk_full, command: str, extra: list[str], name: str
) -> None:
    out = tmp_path / "out"
    assert _invoke(command, coco, *SIZES, *extra, "--out", out).exit_code == 0
    before = (out / name).read_bytes()
    disk_full(name)
    result = _invoke(command, coco, *SIZES, *extra, "--out", out)
    _clear_error(result, str(out / name))
    assert "No space left on device" in result.stderr
    assert (out / name).read_bytes() == before and _leftovers(out) == []


@pytest.mark.parametrize("command", ["assign-report", "anchors"])
def test_data_reports_under_a_file_are_a_clear_error(coco: Path, tmp_path: Path, command: str) -> None:
    blocker = _blocker(tmp_path)
    result = _invoke(command, coco, *SIZES, "--pictures" if command == "assign-report" else "--seed", "0",
                     "--out", blocker / "out")  # fmt: skip
    _clear_error(result, "not_a_folder is a file")


def test_compare_report_on_a_full_disk_keeps_the_earlier_report(tmp_path: Path, disk_full, monkeypatch):
    """The training of each detector is replaced by a failure (fast); the report is still written."""
    from anchorlab.data import make_synthetic
    from anchorlab.engine import train as train_module

    def no_training(*args, **kwargs):
        raise RuntimeError("training skipped in this test")

    monkeypatch.setattr(train_module, "train", no_training)
    synth = make_synthetic(tmp_path / "synth", images=4, seed=0, size=64, min_object=16, max_object=32)
    args = ["compare", "--detectors", "retinanet", "--budget", "tiny", "--threads", "1"]
    args += ["--data", synth.train, "--val", synth.val]
    out = tmp_path / "compare"
    first = _invoke(*args, "--out", out)
    assert first.exit_code == 1 and "1 of 1 detectors failed" in first.stderr, first.output
    before = {name: (out / name).read_bytes() for name in ("report.html", "report.md", "results.json")}
    disk_full("report.html")
    result = _invoke(*args, "--out", out)
    _clear_error(result, str(out / "report.html"))
    assert "No space left on device" in result.stderr and "detectors failed" not in result.stderr
    assert {name: (out / name).read_bytes() for name in before} == before
    assert _leftovers(out) == []
    blocked = _invoke(*args, "--out", _blocker(tmp_path) / "compare")
    _clear_error(blocked, "not_a_folder is a file")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """An untrained tiny RetinaNet (ResNet-18, 16-channel FPN and head) saved like ``anchorlab train``."""
    import torch

    from anchorlab.config import Config
    from anchorlab.engine.checkpoint import save_checkpoint
    from anchorlab.models import build_detector

    torch.manual_seed(0)
    cfg = Config.model_validate(
        {
            "model": {
                "detector": "retinanet",
                "num_classes": 2,
                "backbone": {"name": "resnet18", "weights": None},
                "fpn": {"channels": 16, "min_level": 3, "max_level": 5},
                "head": {"channels": 16, "num_convs": 1},
            },
            "data": {"min_size": 64, "max_size": 64},
        }
    )
    model = build_detector(cfg)
    categories = [{"id": 3, "name": "cat"}, {"id": 7, "name": "dog"}]
    state = {"model": model.state_dict(), "config": cfg.model_dump(mode="json"), "categories": categories}
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "checkpoint.pt", state)


def test_predict_on_a_full_disk_keeps_the_earlier_results(
    checkpoint: Path, coco: Path, tmp_path: Path, disk_full
) -> None:
    import anchorlab.cli.predict  # noqa: F401  (registers the command)

    image, out = coco.parent / "0.png", tmp_path / "pred"
    args = ["predict", checkpoint, image, "--conf", "0.0", "--device", "cpu", "--save-json", "--overwrite"]
    args += ["--out", out]
    assert _invoke(*args).exit_code == 0
    before = (out / "detections.json").read_bytes()
    disk_full("detections.json")
    result = _invoke(*args)
    _clear_error(result, str(out / "detections.json"))
    assert (out / "detections.json").read_bytes() == before and _leftovers(out) == []
    _clear_error(_invoke(*args[:-1], _blocker(tmp_path) / "pred"), "not_a_folder is a file")


def test_export_on_a_full_disk_keeps_the_earlier_file(checkpoint: Path, tmp_path: Path, monkeypatch):
    """The exporter is replaced by a program whose save fills the disk half-way (no real ONNX export)."""
    from types import SimpleNamespace

    import anchorlab.cli.export  # noqa: F401  (registers the command)
    import anchorlab.export as export_module

    class FullDiskProgram:
        model = SimpleNamespace(metadata_props={})

        def save(self, destination: str, **kwargs) -> None:
            Path(destination).write_bytes(b"half an onnx")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(export_module.torch.onnx, "export", lambda *a, **k: FullDiskProgram())
    out = tmp_path / "model.onnx"
    out.write_bytes(b"the earlier export")
    result = _invoke("export", checkpoint, "--out", out, "--device", "cpu", "--size", "64")
    _clear_error(result, str(out))
    assert "No space left on device" in result.stderr
    assert out.read_bytes() == b"the earlier export" and _leftovers(tmp_path) == []
    blocked = _invoke("export", checkpoint, "--out", _blocker(tmp_path) / "x" / "m.onnx", "--device", "cpu")
    _clear_error(blocked, "not_a_folder is a file")
