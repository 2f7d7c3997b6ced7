"""``anchorlab predict``: the inputs' layout under OUT, --save-txt read back by the YOLO loader, --save-json
(with --gt image ids) read back by ``anchorlab eval --detections``, refusals and skipped files."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import anchorlab
from anchorlab.cli import app
from anchorlab.config import load_config
from anchorlab.data import load_yolo, make_synthetic
from anchorlab.engine.checkpoint import save_checkpoint
from anchorlab.models import build_detector

runner = CliRunner()


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    return make_synthetic(out, images=8, seed=1, size=96, min_object=20, max_object=48, objects=(1, 3))


@pytest.fixture(scope="module")
def best(synth, tmp_path_factory) -> Path:
    """A weights file (``best.pt`` format) of an untrained 16-channel RetinaNet on 96 px inputs."""
    cfg = load_config(
        None,
        [
            "data.min_size=96", "data.max_size=96", "model.num_classes=3", "model.fpn.channels=16",
            "model.fpn.max_level=5", "model.head.channels=16", "model.head.num_convs=1",
            "model.inference.max_detections=5",
        ],
    )  # fmt: skip
    torch.manual_seed(0)
    model = build_detector(cfg)
    cats = json.loads(Path(synth.train).read_text())["categories"]
    state = {
        "format": "anchorlab/1",
        "model": model.state_dict(),
        "config": cfg.model_dump(mode="json"),
        "categories": [{"id": c["id"], "name": c["name"]} for c in cats],
        "iteration": 0,
        "metrics": {},
    }
    return save_checkpoint(tmp_path_factory.mktemp("run") / "best.pt", state)


@pytest.fixture
def nested(synth, tmp_path) -> Path:
    """``in/a/x.png``, ``in/b/x.png`` (same name, different images) and ``in/c/d/y.png``."""
    images = sorted((Path(synth.train).parent / "images").glob("*.png"))
    for i, rel in enumerate(["a/x.png", "b/x.png", "c/d/y.png"]):
        (tmp_path / "in" / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(images[i], tmp_path / "in" / rel)
    return tmp_path / "in"


def predict(*args: str):
    return runner.invoke(app, ["predict", *args, "--conf", "0", "--device", "cpu"])


def test_layout_and_yolo_txt_load_back(best, nested, tmp_path):
    out = tmp_path / "out"
    result = predict(str(best), str(nested), "--out", str(out), "--save-txt")
    assert result.exit_code == 0, result.output
    rels = ["a/x", "b/x", "c/d/y"]
    assert sorted(p.relative_to(out / "images").as_posix() for p in (out / "images").rglob("*.png")) == [
        f"{r}.png" for r in rels
    ]
    assert sorted(p.relative_to(out / "labels").as_posix() for p in (out / "labels").rglob("*.txt")) == [
        f"{r}.txt" for r in rels
    ]
    model = anchorlab.load(best, "cpu", verbose=False)
    loaded = load_yolo(out)  # OUT/images (annotated copies, same sizes) + OUT/labels + OUT/classes.txt
    assert [c.name for c in loaded.categories] == model.names
    by_file = {Path(r.file).relative_to(out / "images").as_posix(): r for r in loaded.images}
    for rel in rels:
        det = model.predict(nested / f"{rel}.png", conf=0.0)[0]
        record = by_file[f"{rel}.png"]
        assert len(det) == 5
        order = torch.argsort(torch.as_tensor(record.boxes[:, 0]))
        expected = det.xyxy[torch.argsort(det.xyxy[:, 0])]
        torch.testing.assert_close(torch.as_tensor(record.boxes)[order], expected, atol=2e-3, rtol=0)


def test_save_json_uses_gt_ids_and_loads_into_eval(best, synth, tmp_path):
    out = tmp_path / "out"
    images = Path(synth.val).parent / "images"
    val = json.loads(Path(synth.val).read_text())
    val_files = [images / im["file_name"] for im in val["images"]]
    extra = next(p for p in sorted(images.glob("*.png")) if p not in val_files)  # a train image
    result = predict(str(best), *map(str, val_files), str(extra), "--out", str(out), "--save-json",
                     "--gt", str(synth.val), "--no-draw")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "1 image(s) are not in" in result.stderr and extra.name in result.stderr
    dets = json.loads((out / "detections.json").read_text())
    assert {d["image_id"] for d in dets} == {im["id"] for im in val["images"]}
    assert {d["category_id"] for d in dets} <= {c["id"] for c in val["categories"]}
    assert not (out / "images").exists()
    scored = runner.invoke(
        app, ["eval", "--gt", str(synth.val), "--detections", str(out / "detections.json"), "--json"]
    )
    assert scored.exit_code == 0, scored.output
    assert 0 <= json.loads(scored.stdout)["AP"] <= 1


def test_save_json_without_gt_numbers_images_in_input_order(best, nested, tmp_path):
    out = tmp_path / "out"
    result = predict(str(best), str(nested), "--out", str(out), "--save-json", "--max-det", "2")
    assert result.exit_code == 0, result.output
    listed = json.loads((out / "images.json").read_text())
    assert [(im["id"], im["file_name"]) for im in listed] == [
        (1, "a/x.png"),
        (2, "b/x.png"),
        (3, "c/d/y.png"),
    ]
    dets = json.loads((out / "detections.json").read_text())
    assert sorted(d["image_id"] for d in dets) == [1, 1, 2, 2, 3, 3]


def test_refusals_and_skipped_files(best, nested, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    result = predict(str(best), str(nested), "--out", str(out))
    assert result.exit_code == 1 and "is not empty" in result.stderr and "Traceback" not in result.output
    assert (out / "mine.txt").read_text() == "keep"

    shutil.copy(nested / "a/x.png", nested / "a/x.jpg")
    result = predict(str(best), str(nested), "--out", str(tmp_path / "o2"), "--save-txt")
    assert result.exit_code == 1 and "would both write labels/a/x.txt" in result.stderr
    (nested / "a/x.jpg").unlink()

    (nested / "c/broken.png").write_bytes(b"not an image")
    result = predict(str(best), str(nested), "--out", str(tmp_path / "o3"))
    assert result.exit_code == 1 and "broken.png: not a readable image" in result.stderr
    assert len(list((tmp_path / "o3" / "images").rglob("*.png"))) == 3  # the readable ones are all written

    result = predict(str(tmp_path / "nowhere"), str(nested), "--out", str(tmp_path / "o4"))
    assert result.exit_code == 1 and "does not exist" in result.stderr
    result = predict(str(best), str(tmp_path / "none.png"), "--out", str(tmp_path / "o5"))
    assert result.exit_code == 1 and "none.png: no such image" in result.stderr


def test_video_frames_get_their_own_files(best, nested, tmp_path):
    av = pytest.importorskip("av")
    from anchorlab.data.loader import read_rgb

    video = nested / "c" / "clip.mp4"
    with av.open(str(video), "w") as container:
        stream = container.add_stream("mpeg4", rate=5)
        stream.width, stream.height, stream.pix_fmt = 96, 96, "yuv420p"
        frame = read_rgb(nested / "a/x.png").permute(1, 2, 0).numpy()
        for _ in range(2):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    out = tmp_path / "out"
    result = predict(str(best), str(nested), "--out", str(out), "--save-txt", "--save-json")
    assert result.exit_code == 0, result.output
    frames = sorted(p.name for p in (out / "images" / "c" / "clip.mp4.frames").iterdir())
    assert frames == ["frame_000000.png", "frame_000001.png"]
    assert (out / "labels" / "c" / "clip.mp4.frames" / "frame_000001.txt").is_file()
    listed = json.loads((out / "images.json").read_text())
    assert [im["frame"] for im in listed if im["path"] == str(video)] == [0, 1]
