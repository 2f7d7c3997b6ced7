"""The README's "Train on your own data" commands, run as written (tiny budget added) on a Roboflow-style
YOLO export and on a VOC folder generated from the synthetic data: every output exists and names the
classes.

Needs the merged branches: ``load_split`` reading a data.yaml and VOC folders (data), ``train --out`` and
``best.pt`` (engine), ``anchorlab predict`` in ``cli/predict.py`` (api). Until then the tests skip with the
missing capability named.
"""

from __future__ import annotations

import importlib.util
import inspect
import json
import re
import shlex
from pathlib import Path
from xml.sax.saxutils import escape

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from anchorlab.cli import app
from anchorlab.data import load_coco, make_synthetic

ROOT = Path(__file__).resolve().parents[1]
#: Appended to `train` and `compare`: seconds instead of minutes (the auto budget keeps --set keys).
TINY = [
    "--set", "train.iterations=4",
    "--set", "train.batch_size=2",
    "--set", "train.workers=0",
    "--set", "train.threads=1",
    "--set", "model.fpn.channels=16",
    "--set", "model.head.channels=16",
    "--set", "model.head.num_convs=1",
    "--set", "model.roi.fc_channels=32",
    "--set", "model.inference.topk_per_level=50",
]  # fmt: skip


def readme_commands(layout: str) -> list[list[str]]:
    """The ``anchorlab`` lines of the README's own-data block whose paths start with ``layout``'s folder
    (``export`` or ``voc``), split as a shell would."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## Train on your own data", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    commands, current = [], None
    for line in block.splitlines():
        if line.startswith("# "):
            current = "export" if "export" in line.lower() else "voc" if "voc" in line.lower() else None
        elif line.startswith("anchorlab ") and current == layout:
            commands.append(shlex.split(line.split("#")[0])[1:])
    return commands


def _synthetic(tmp: Path):
    paths = make_synthetic(
        tmp / "synth", images=12, seed=0, size=64, min_object=16, max_object=32, objects=(1, 2)
    )
    return load_coco(paths.train), load_coco(paths.val)


def _roboflow_export(root: Path, train, val) -> Path:
    """A Roboflow "YOLOv8" export: data.yaml beside train/ and valid/ (images + labels), ``../`` paths."""
    for split, ds in (("train", train), ("valid", val)):
        (root / split / "images").mkdir(parents=True)
        (root / split / "labels").mkdir(parents=True)
        for r in ds.images:
            (root / split / "images" / r.file.name).write_bytes(r.file.read_bytes())
            wh = np.array([r.width, r.height] * 2, float)
            b = r.boxes / wh
            lines = [
                f"{lab} {(x0 + x1) / 2:.6f} {(y0 + y1) / 2:.6f} {x1 - x0:.6f} {y1 - y0:.6f}"
                for lab, (x0, y0, x1, y1) in zip(r.labels.tolist(), b.tolist(), strict=True)
            ]
            (root / split / "labels" / f"{r.file.stem}.txt").write_text("\n".join(lines) + "\n")
    names = train.class_names
    spec = {"train": "../train/images", "val": "../valid/images", "nc": len(names), "names": names}
    (root / "data.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    return root


def _voc_folder(root: Path, train, val) -> Path:
    """A VOC folder: Annotations/*.xml, JPEGImages/, ImageSets/Main/{train,val}.txt."""
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / sub).mkdir(parents=True)
    for split, ds in (("train", train), ("val", val)):
        names = ds.class_names
        for r in ds.images:
            (root / "JPEGImages" / r.file.name).write_bytes(r.file.read_bytes())
            objects = "".join(
                f"<object><name>{escape(names[lab])}</name><difficult>0</difficult><bndbox>"
                f"<xmin>{x0 + 1:.0f}</xmin><ymin>{y0 + 1:.0f}</ymin>"
                f"<xmax>{x1:.0f}</xmax><ymax>{y1:.0f}</ymax>"
                "</bndbox></object>"
                for lab, (x0, y0, x1, y1) in zip(r.labels.tolist(), r.boxes.tolist(), strict=True)
            )
            (root / "Annotations" / f"{r.file.stem}.xml").write_text(
                f"<annotation><filename>{r.file.name}</filename><size><width>{r.width}</width>"
                f"<height>{r.height}</height><depth>3</depth></size>{objects}</annotation>"
            )
        (root / "ImageSets" / "Main" / f"{split}.txt").write_text(
            "\n".join(r.file.stem for r in ds.images) + "\n"
        )
    return root


def _missing_capability(tmp: Path) -> str | None:
    """Why the README commands cannot run in this checkout yet (None: they can)."""
    from anchorlab.config import load_config
    from anchorlab.engine.common import load_split

    if importlib.util.find_spec("anchorlab.cli.predict") is None:
        return "anchorlab predict is not in cli/predict.py yet (api branch)"
    train, val = _synthetic(tmp)
    export = _roboflow_export(tmp / "probe_export", train, val)
    try:
        load_split(load_config(None, [f"data.train={export / 'data.yaml'}"]), "train")
    except Exception as exc:  # any failure means: not merged yet
        return f"load_split cannot read a data.yaml yet (data branch): {type(exc).__name__}"
    from anchorlab.cli import train as train_cli

    if "out" not in inspect.signature(train_cli.train).parameters:
        return "anchorlab train has no --out yet (engine branch)"
    return None


@pytest.fixture(scope="module")
def capability(tmp_path_factory):
    return _missing_capability(tmp_path_factory.mktemp("probe"))


def _localise(args: list[str], tmp: Path) -> list[str]:
    """README paths -> the test's folders (data under tmp, runs under tmp/runs, configs from the repo)."""
    out = []
    for arg in args:
        key, sep, value = arg.rpartition("=") if arg.startswith("data.") else ("", "", arg)
        if value.startswith(("export", "voc", "runs/")):
            value = str(tmp / value)
        elif value.startswith("configs/"):
            value = str(ROOT / value)
        out.append(f"{key}{sep}{value}")
    return out


@pytest.mark.parametrize("layout", ["export", "voc"])
def test_readme_own_data_commands(layout, capability, tmp_path):
    if capability:
        pytest.skip(capability)
    commands = readme_commands(layout)
    assert [c[0] for c in commands] == ["data", "train", "report", "predict", "compare"]
    train, val = _synthetic(tmp_path)
    names = train.class_names
    (_roboflow_export if layout == "export" else _voc_folder)(tmp_path / layout, train, val)
    runner = CliRunner()
    for args in commands:
        args = _localise(args, tmp_path)
        if args[0] in ("train", "compare"):
            args += TINY + (["--detectors", "fcos", "--threads", "1"] if args[0] == "compare" else [])
        result = runner.invoke(app, args)
        assert result.exit_code == 0, f"anchorlab {shlex.join(args)}\n{result.output}"
        if args[0] == "train":
            assert "auto budget: 9 training images at 64/" in result.output
    run = tmp_path / next(c for c in commands if c[0] == "report")[1]
    page = (run / "report.html").read_text()
    assert all(f"<td>{n}</td>" in page for n in names), names
    labels = json.loads((run / "report.json").read_text())["confusion_matrix"]["labels"]
    assert sorted(labels[:-1]) == sorted(names) and labels[-1] == "background"  # VOC sorts its names
    predict_out = tmp_path / next(c for c in commands if c[0] == "predict")[-1]
    assert any(predict_out.rglob("*.*")), "predict wrote nothing"
    compare_out = tmp_path / next(c for c in commands if c[0] == "compare")[-1]
    assert (compare_out / "report.html").is_file()
    per_class = json.loads((compare_out / "fcos" / "metrics.json").read_text())["per_category"]
    assert sorted(per_class) == sorted(names)
