"""Hostile image files: random bytes, truncated and bit-flipped PNG / JPEG files go through ``data check``
and one training step. Never a crash (no segfault, no traceback): ``data check`` names every bad file with
an image problem kind, and training skips it with a warning."""

from __future__ import annotations

import io
import json
import warnings

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from typer.testing import CliRunner

from anchorlab.cli import app
from anchorlab.config import load_config
from anchorlab.data import load_coco
from anchorlab.data.loader import DetectionDataset, collate
from anchorlab.models import build_detector

runner = CliRunner()
IMAGE_KINDS = {"image_unreadable", "image_too_large", "image_size_mismatch", "image_missing"}


def _encoded(fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (30, 140, 200)).save(buf, fmt)
    return buf.getvalue()


VALID = {"png": _encoded("PNG"), "jpg": _encoded("JPEG")}


@st.composite
def hostile(draw) -> tuple[str, bytes]:
    """``(suffix, bytes)``: random bytes, a valid file truncated, or a valid file with bytes overwritten."""
    suffix = draw(st.sampled_from(["png", "jpg"]))
    good = VALID[suffix]
    kind = draw(st.sampled_from(["random", "prefix", "truncated", "flipped"]))
    if kind == "random":
        return suffix, draw(st.binary(max_size=300))
    if kind == "prefix":
        return suffix, good[:8] + draw(st.binary(max_size=300))
    if kind == "truncated":
        return suffix, good[: draw(st.integers(0, len(good) - 1))]
    data = bytearray(good)
    for _ in range(draw(st.integers(1, 8))):
        data[draw(st.integers(8, len(data) - 1))] = draw(st.integers(0, 255))
    return suffix, bytes(data)


@pytest.fixture(scope="module")
def model():
    cfg = load_config(
        None,
        ["model.num_classes=1", "model.fpn.channels=8", "model.fpn.max_level=5", "model.head.channels=8",
         "model.head.num_convs=1", "model.head.norm=gn", "model.anchors.octave_base_scale=2"],
    )  # fmt: skip
    return build_detector(cfg).train()


@settings(max_examples=15, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(case=hostile())
def test_hostile_bytes_are_a_named_problem_never_a_crash(tmp_path_factory, model, case):
    suffix, data = case
    root = tmp_path_factory.mktemp("hostile")
    (root / f"bad.{suffix}").write_bytes(data)
    (root / "good.png").write_bytes(VALID["png"])
    doc = {
        "images": [
            {"id": 1, "file_name": f"bad.{suffix}", "width": 64, "height": 64},
            {"id": 2, "file_name": "good.png", "width": 64, "height": 64},
        ],
        "annotations": [{"id": i, "image_id": i, "category_id": 1, "bbox": [8, 8, 30, 30]} for i in (1, 2)],
        "categories": [{"id": 1, "name": "thing"}],
    }
    (root / "ann.json").write_text(json.dumps(doc))
    res = runner.invoke(app, ["data", "check", str(root / "ann.json"), "--json"])
    assert res.exception is None or isinstance(res.exception, SystemExit), res.exception
    report = json.loads(res.stdout)
    if res.exit_code:
        assert {p["kind"] for p in report["problems"]} <= IMAGE_KINDS, report["problems"]
        assert all("bad." in p["file"] or "bad." in p["message"] for p in report["problems"])
    ds = load_coco(root / "ann.json", check_images="none")
    dataset = DetectionDataset(ds)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # "skipping unreadable image": expected here
        batch, targets = collate([dataset[0], dataset[1]])
    losses = model(batch, targets)  # one training step on whatever decoded
    sum(losses.values()).backward()
    assert all(torch.isfinite(v) for v in losses.values())
    model.zero_grad(set_to_none=True)
