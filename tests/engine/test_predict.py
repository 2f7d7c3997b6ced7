"""``anchorlab.load`` / ``Detector.from_checkpoint`` and ``Detector.predict`` on every source kind."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms.v2 import functional as F

import anchorlab
from anchorlab.data.transforms import boxes_to_original, shortest_edge_size
from anchorlab.engine.checkpoint import CheckpointError
from anchorlab.engine.sources import SourceError
from anchorlab.models import Detector, build_detector

from .predict_helpers import SIZE, image_u8, synth_set, tiny_config, train_tiny, write_weights_file


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    return synth_set(tmp_path_factory.mktemp("synth"))


@pytest.fixture(scope="module")
def resumable(synth, tmp_path_factory):
    return train_tiny(synth, tmp_path_factory.mktemp("run"))


@pytest.fixture(scope="module")
def model(resumable):
    return anchorlab.load(resumable, device="cpu", verbose=False)


@pytest.fixture(scope="module")
def images(synth):
    return sorted((Path(synth.train).parent / "images").glob("*.png"))


def same(a, b) -> None:
    assert a.image_shape == b.image_shape
    torch.testing.assert_close(a.xyxy, b.xyxy)
    torch.testing.assert_close(a.scores, b.scores)
    assert torch.equal(a.labels, b.labels)


# -- loading ----------------------------------------------------------------------------------------------
def test_load_run_folder_prefers_best_then_last_then_checkpoint(resumable, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(resumable, run / "checkpoint.pt")
    assert anchorlab.load(run, "cpu").checkpoint_path == run / "checkpoint.pt"
    assert "checkpoint.pt" in capsys.readouterr().err  # the file chosen is said
    shutil.copy(resumable, run / "last.pt")
    assert anchorlab.load(run, "cpu", verbose=False).checkpoint_path == run / "last.pt"
    write_weights_file(resumable, run / "best.pt")
    model = Detector.from_checkpoint(run, device="cpu")
    assert model.checkpoint_path == run / "best.pt"
    assert not model.training and model.names == ["rectangle", "ellipse", "triangle"]
    assert [c["id"] for c in model.categories] == [10, 20, 30]
    assert model.config.data.min_size == SIZE and model.config.model.backbone.weights is None
    reference = anchorlab.load(resumable, "cpu", verbose=False)
    for key, value in reference.state_dict().items():
        assert torch.equal(value, model.state_dict()[key]), key


def test_load_errors_name_the_file(tmp_path):
    with pytest.raises(CheckpointError, match=r"holds none of best\.pt, last\.pt, checkpoint\.pt"):
        anchorlab.load(tmp_path, "cpu")
    with pytest.raises(CheckpointError, match=r"nothing\.pt does not exist"):
        anchorlab.load(tmp_path / "nothing.pt", "cpu")


def test_predict_needs_preprocessing(synth, tmp_path):
    bare = build_detector(tiny_config(synth, tmp_path, "model.num_classes=3")).eval()
    with pytest.raises(ValueError, match=r"anchorlab.load"):
        bare.predict(torch.zeros(3, 32, 32, dtype=torch.uint8))


# -- source kinds -----------------------------------------------------------------------------------------
def test_every_source_kind_gives_the_same_detections(model, images):
    path = images[0]
    ref = model.predict(path, conf=0.0)[0]
    assert len(ref) == 20 and ref.path == path and ref.image_shape == (SIZE, SIZE)
    u8 = image_u8(path)
    array = u8.permute(1, 2, 0).numpy()
    kinds = {
        "str": str(path),
        "folder": path.parent,
        "glob": str(path.parent / "img_00000[0-1].png"),
        "list": [path, images[1]],
        "pil": Image.fromarray(array),
        "numpy": array,
        "tensor_u8": u8,
        "tensor_float": u8.float() / 255,
        "batch_u8": torch.stack([u8, image_u8(images[1])]),
    }
    for name, source in kinds.items():
        got = model.predict(source, conf=0.0)
        same(got[0], ref)
        assert got[0].path == (path if name in {"str", "folder", "glob", "list"} else None), name
        if name == "folder":
            assert [d.path for d in got] == images
        if name in {"glob", "list", "batch_u8"}:
            assert len(got) == 2
            same(got[1], model.predict(images[1], conf=0.0)[0])


def test_mixed_list_keeps_its_order(model, images):
    array = image_u8(images[2]).permute(1, 2, 0).numpy()
    got = model.predict([images[1], array, images[0]], conf=0.0)
    assert [d.path for d in got] == [images[1], None, images[0]]
    same(got[1], model.predict(images[2], conf=0.0)[0])


def test_large_image_is_resized_and_boxes_come_back_in_original_pixels(model, images):
    small = image_u8(images[0])
    large = F.resize(small, [300, 400], antialias=True)  # 3.1x / 4.2x: the model sees ~72 x 96
    got = model.predict(large.permute(1, 2, 0).numpy(), conf=0.0)[0]
    assert got.image_shape == (300, 400)
    # by hand: the same shortest-edge resize, the raw model, then undo the scale
    h, w = shortest_edge_size(300, 400, SIZE, SIZE)
    resized = F.resize(large, [h, w], antialias=True).float() / 255
    raw = model.detect([resized], inference={"score_thresh": 0.0})[0]
    expected = boxes_to_original(raw["boxes"], (w / 400, h / 300), (300, 400))
    torch.testing.assert_close(got.xyxy, expected)
    torch.testing.assert_close(got.scores, raw["scores"])
    assert float(got.xyxy[:, 2].max()) > SIZE  # not in the 96 px model input's frame
    assert float(got.xyxy[:, 2].max()) <= 400 and float(got.xyxy[:, 3].max()) <= 300


def test_batching_and_video_frames(model, images, tmp_path):
    one = model.predict(images[:5], conf=0.0, batch=1)
    three = model.predict(images[:5], conf=0.0, batch=3)
    for a, b in zip(one, three, strict=True):
        same(a, b)
    av = pytest.importorskip("av")
    video = tmp_path / "clip.mp4"
    with av.open(str(video), "w") as container:
        stream = container.add_stream("mpeg4", rate=5)
        stream.width, stream.height, stream.pix_fmt = SIZE, SIZE, "yuv420p"
        for path in images[:3]:
            frame = av.VideoFrame.from_ndarray(image_u8(path).permute(1, 2, 0).numpy(), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    frames = list(model.predict(video, conf=0.0, stream=True))
    assert [d.frame for d in frames] == [0, 1, 2] and all(d.path == video for d in frames)
    assert frames[0].image is not None and frames[0].image_shape == (SIZE, SIZE)
    assert frames[0].plot().shape == (SIZE, SIZE, 3)


def test_video_without_pyav_is_a_clear_error(model, tmp_path, monkeypatch):
    video = tmp_path / "clip.mp4"
    video.write_bytes(b"\0" * 64)
    monkeypatch.setitem(sys.modules, "av", None)  # import av -> ImportError
    with pytest.raises(SourceError, match=r"clip.mp4: reading videos needs PyAV.*anchorlab\[video\]"):
        model.predict(video)


# -- settings for one call ---------------------------------------------------------------------------------
def test_conf_iou_max_det_apply_to_one_call(model, images):
    before = dict(model.inference)
    assert len(model.predict(images[0], conf=0.0, max_det=3)[0]) == 3
    assert len(model.predict(images[0], conf=1.0)[0]) == 0
    loose = len(model.predict(images[0], conf=0.0, iou=0.9, max_det=100)[0])
    tight = len(model.predict(images[0], conf=0.0, iou=0.1, max_det=100)[0])
    assert tight < loose
    assert model.inference == before
    with pytest.raises(ValueError, match=r"conf must be in 0\.\.1"):
        model.predict(images[0], conf=2)


# -- bad input ---------------------------------------------------------------------------------------------
def test_bad_sources_are_one_line_errors(model, images, tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    cases = [
        (tmp_path / "missing.png", "missing.png: no such image, folder"),
        (str(tmp_path / "*.jpg"), "the pattern matches no file"),
        (broken, "broken.png: not a readable image"),
        (torch.full((3, 8, 8), 255.0), "float tensors must hold values in 0..1"),
        (np.zeros((8, 8, 3), np.float32), "expected a uint8 array"),
        (np.zeros((8, 8), np.uint8), "expected an H x W x 3 RGB array"),
        (torch.zeros(1, 8, 8), r"expected a \[3, H, W\] tensor"),
        (42, "cannot predict on a int"),
    ]
    for source, message in cases:
        with pytest.raises(SourceError, match=message):
            model.predict(source)
    with pytest.raises(SourceError, match="an empty list"):
        model.predict([])
    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceError, match="no images"):
        model.predict(tmp_path / "empty")
