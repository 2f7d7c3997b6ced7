"""ONNX export round trip: every export-capable detector, trained a few steps, gives under onnxruntime
the detections PyTorch gives, in "raw" mode (``postprocess_raw``; dynamic axes: at the example size and
at another size and batch) and "full" mode (NMS in the graph); the CLI exports a ResNet-18 checkpoint.

Exports are slow (torch.export's symbolic shapes grow with the graph), so the round trip uses a tiny
detector: a 4-conv stand-in for ResNet-18 (the body is the same for every detector; the CLI test exports
the real one), two FPN levels of 16 channels, prediction convs straight on them, one trained model per
detector shared by both modes, and no ONNX graph optimizer (the CLI test runs it).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import pytest
import torch
from torch import nn

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from typer.testing import CliRunner  # noqa: E402

from anchorlab.config import Config, ModelConfig  # noqa: E402
from anchorlab.engine.checkpoint import save_checkpoint  # noqa: E402
from anchorlab.export import (  # noqa: E402
    EXPORT_MODES,
    FULL_OUTPUTS,
    RAW_OUTPUTS,
    ExportError,
    ExportWrapper,
    OnnxDetector,
    compare_detections,
    export_onnx,
    onnx_metadata,
    postprocess_raw,
)
from anchorlab.models import Detector, build_detector  # noqa: E402
from anchorlab.models.backbone import BackboneFPN  # noqa: E402
from models.helpers import NUM_CLASSES, train  # noqa: E402
from models.helpers import tiny_config as helpers_tiny_config  # noqa: E402

EXAMPLE = (2, 96, 96)  # batch, H, W of the export example
OTHER = (3, 64, 128)  # another batch and size: the dynamic axes must give the same detections there
TARGET_DETECTIONS = 20  # the score threshold is set so the first image has about this many
#: Every export-capable detector: its name in the export metadata -> ``ModelConfig`` fields.
EXPORTABLE: dict[str, dict[str, Any]] = {
    "retinanet": {"detector": "retinanet"},
    "free_anchor": {"detector": "free_anchor"},
    "retinanet_hnm": {"detector": "retinanet", "sampler": "hard_negative"},  # softmax over K + 1
    "fcos": {"detector": "fcos"},
    "centernet": {"detector": "centernet", "fpn": {"channels": 16, "min_level": 2, "max_level": 3}},
    "grid": {"detector": "grid"},
}


def images(batch: int, height: int, width: int, seed: int) -> torch.Tensor:
    return torch.rand(batch, 3, height, width, generator=torch.Generator().manual_seed(seed))


def tiny_config(detector: str, **fields: Any) -> ModelConfig:
    """ResNet-18, FPN 16 channels (P3-P4), head without tower convs, threshold 0, 100 detections."""
    defaults: dict[str, Any] = {
        "fpn": {"channels": 16, "min_level": 3, "max_level": 4},
        "head": {"channels": 16, "num_convs": 0},
        "centernet": {"topk": 50},
        "inference": {"score_thresh": 0.0, "max_detections": 100},
    }
    return helpers_tiny_config(detector, **{**defaults, **fields})


class TinyBody(nn.Module):
    """ResNet's ``IntermediateLayerGetter`` interface (``{"l": C_l}`` at stride ``2**l``) in 4 convs."""

    def __init__(self, levels: list[int], channels: int = 8) -> None:
        super().__init__()
        self.levels = levels
        self.stem = nn.Conv2d(3, channels, 5, stride=4, padding=2)
        self.down = nn.ModuleList(nn.Conv2d(channels, channels, 3, stride=2, padding=1) for _ in range(3))

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        x, out = torch.relu(self.stem(x)), OrderedDict()
        for level in range(2, 6):
            if level > 2:
                x = torch.relu(self.down[level - 3](x))
            if level in self.levels:
                out[str(level)] = x
        return out


def set_threshold(model: Detector) -> None:
    """A score threshold midway between two consecutive scores of the first example image: no score
    sits within float noise of it, images get different, non-trivial counts."""
    scores = model.detect(list(images(*EXAMPLE, seed=1)))[0]["scores"]
    k = min(TARGET_DETECTIONS, len(scores) // 2)  # CenterNet's heatmap has few peaks
    model.inference["score_thresh"] = float(scores[k - 1 : k + 1].mean())


def train_tiny(name: str) -> Detector:
    """The tiny detector ``name`` (``TinyBody``) trained 3 steps, in eval mode, threshold set."""
    cfg = tiny_config(**EXPORTABLE[name])
    torch.manual_seed(0)
    model = build_detector(cfg)
    levels = list(range(cfg.fpn.min_level, cfg.fpn.max_level + 1))
    model.backbone = BackboneFPN(TinyBody(levels), [8] * len(levels), 16, levels[0], levels[-1])
    train(model, 3, lr=1e-2)
    model.eval()
    set_threshold(model)
    return model


@pytest.fixture(scope="module")
def trained() -> dict[str, Detector]:
    """One trained model per detector, shared by its full and raw exports (filled on first use)."""
    return {}


@pytest.fixture(
    scope="module",
    params=[(name, mode) for name in EXPORTABLE for mode in EXPORT_MODES],
    ids=lambda p: f"{p[0]}-{p[1]}",
)
def exported(request, trained, tmp_path_factory) -> tuple[str, Detector, str, Any]:
    """``(name, model, mode, path)``: raw graphs with dynamic axes, full graphs static (their selection
    is the same for every detector; the CLI test exports a dynamic full graph)."""
    name, mode = request.param
    if name not in trained:
        trained[name] = train_tiny(name)
    model = trained[name]
    path = tmp_path_factory.mktemp("onnx") / f"{name}_{mode}.onnx"
    model.train()
    dynamic = mode == "raw"
    export_onnx(
        model, path, mode=mode, image_size=EXAMPLE[1:], batch_size=EXAMPLE[0], dynamic=dynamic, optimize=False
    )
    assert model.training  # exported in eval mode, the caller's mode restored
    model.eval()
    return name, model, mode, path


def assert_same_detections(ours, reference) -> None:
    assert len(ours) == len(reference)
    for a, b in zip(ours, reference, strict=True):
        assert len(a["scores"]) == len(b["scores"])
        assert torch.equal(a["labels"].long(), b["labels"].long())
        torch.testing.assert_close(a["boxes"], b["boxes"], atol=1e-3, rtol=0)
        torch.testing.assert_close(a["scores"], b["scores"], atol=1e-4, rtol=0)
    counts = [len(r["scores"]) for r in reference]
    assert sum(counts) > 0 and max(counts) < 100, counts  # a real test: detections, none truncated


def test_round_trip_matches_pytorch(exported) -> None:
    name, model, mode, path = exported
    meta = onnx_metadata(path)
    assert meta["detector"] == name and meta["mode"] == mode and meta["num_classes"] == NUM_CLASSES
    session = ort.InferenceSession(str(path))
    assert [o.name for o in session.get_outputs()] == list(FULL_OUTPUTS if mode == "full" else RAW_OUTPUTS)
    runtime = OnnxDetector(path)
    shapes = ((1, EXAMPLE), (2, OTHER)) if mode == "raw" else ((1, EXAMPLE),)
    for seed, shape in shapes:
        batch = images(*shape, seed=seed)
        assert_same_detections(runtime(batch), model.detect(list(batch)))
    if mode == "full":
        out = dict(zip(FULL_OUTPUTS, session.run(None, {"images": batch.numpy()}), strict=True))
        assert out["boxes"].shape == (EXAMPLE[0], 100, 4) and out["labels"].shape == (EXAMPLE[0], 100)
        n = int(out["num_detections"][0])
        assert (out["labels"][0, n:] == -1).all() and (out["scores"][0, n:] == 0).all()  # padding rows
    elif hasattr(model.head, "class_scores"):
        check_raw_anchors_and_scores(model, path)


def check_raw_anchors_and_scores(model: Detector, path) -> None:
    """Anchor heads: the in-graph anchors equal ``AnchorGenerator.grid_anchors`` at a size never traced
    (64 x 128), the scores are the head's ``class_scores`` (hard negative mining: softmax over ``K + 1``,
    background dropped), and ``postprocess_raw`` takes the outputs by name and per-image sizes too."""
    batch = images(*OTHER, seed=2)
    boxes, scores, counts = ort.InferenceSession(str(path)).run(None, {"images": batch.numpy()})
    with torch.no_grad():
        features = list(model.backbone(model.preprocess(list(batch)).tensor))
        outputs = model.head(features)
        anchors = model.priors(features)
    assert counts.tolist() == outputs["num_priors_per_level"] == [8 * 16 * 9, 4 * 8 * 9]
    assert scores.shape == (OTHER[0], counts.sum(), NUM_CLASSES)
    decoded = model.head.coder.decode(anchors[None], outputs["box_deltas"])
    torch.testing.assert_close(torch.from_numpy(boxes), decoded, atol=1e-3, rtol=0)
    expected = model.head.class_scores(outputs["cls_logits"])
    torch.testing.assert_close(torch.from_numpy(scores), expected, atol=1e-5, rtol=0)
    named = dict(zip(RAW_OUTPUTS, (boxes, scores, counts), strict=True))
    settings = onnx_metadata(path)["inference"]
    assert_same_detections(
        postprocess_raw(named, [OTHER[1:]] * OTHER[0], **settings), model.detect(list(batch))
    )


@pytest.fixture(scope="module")
def cli_export(tmp_path_factory):
    """``anchorlab export CHECKPOINT --check`` (full mode, dynamic axes) on a checkpoint of a tiny
    ResNet-18 FreeAnchor detector with re-drawn head weights (untrained heads score priors alike)."""
    from anchorlab.cli.app import app
    from anchorlab.cli.export import export  # noqa: F401  (registers the command)

    tmp = tmp_path_factory.mktemp("cli")
    cfg = Config(model=tiny_config("free_anchor"))
    torch.manual_seed(0)
    model = build_detector(cfg.model).eval()
    with torch.no_grad():
        for p in model.head.parameters():
            p.normal_(0, 0.03 if p.ndim > 1 else 0.1)
    set_threshold(model)
    cfg.model.inference.score_thresh = model.inference["score_thresh"]
    categories = [{"id": 10 + k, "name": f"c{k}"} for k in range(NUM_CLASSES)]
    state = {"model": model.state_dict(), "config": cfg.model_dump(mode="json"), "categories": categories}
    checkpoint = save_checkpoint(tmp / "checkpoint.pt", state)
    out = tmp / "model.onnx"
    args = ["export", str(checkpoint), "--out", str(out), "--size", "64", "--check"]
    result = CliRunner().invoke(app, args)
    return model, out, result


def test_cli_exports_and_checks_a_resnet18_checkpoint(cli_export) -> None:
    model, path, result = cli_export
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())  # rich wraps lines
    assert "max box diff" in text and "same count/labels: True" in text
    meta = onnx_metadata(path)
    assert meta["mode"] == "full" and meta["detector"] == "free_anchor" and meta["size_divisible"] == 16
    assert meta["categories"][1] == {"id": 11, "name": "c1"}
    runtime = OnnxDetector(path)
    for seed, shape in ((1, EXAMPLE), (2, OTHER)):  # dynamic batch and size
        batch = images(*shape, seed=seed)
        assert_same_detections(runtime(batch), model.detect(list(batch)))


def test_compare_detections_reports_disagreement() -> None:
    a = [{"boxes": torch.zeros(2, 4), "scores": torch.tensor([0.9, 0.8]), "labels": torch.tensor([0, 1])}]
    b = [{"boxes": torch.ones(2, 4), "scores": torch.tensor([0.9, 0.7]), "labels": torch.tensor([0, 1])}]
    report = compare_detections(a, b)
    assert report["same"] and report["max_box_diff"] == 1.0 and report["max_score_diff"] == pytest.approx(0.1)
    c = [{"boxes": torch.zeros(1, 4), "scores": torch.tensor([0.9]), "labels": torch.tensor([0])}]
    assert not compare_detections(c, b)["same"]


def test_bad_arguments_raise_clear_errors(tmp_path) -> None:
    model = build_detector(tiny_config("retinanet")).eval()
    with pytest.raises(ExportError, match="multiples of the model's size_divisible 16"):
        export_onnx(model, tmp_path / "x.onnx", image_size=(100, 96))
    with pytest.raises(ExportError, match="batch_size >= 2"):
        export_onnx(model, tmp_path / "x.onnx", batch_size=1)
    with pytest.raises(ExportError, match="export mode 'nms' is not one of full, raw"):
        ExportWrapper(model, "nms")
    with pytest.raises(ExportError, match="export a float32 model"):
        export_onnx(model.double(), tmp_path / "x.onnx")
    model.head = torch.nn.Identity()
    with pytest.raises(ExportError, match="Identity is not one of them"):
        ExportWrapper(model, "full")


def test_faster_rcnn_is_refused_with_a_clear_error(tmp_path) -> None:
    model = build_detector(tiny_config("faster_rcnn", roi={"max_level": 4}))
    with pytest.raises(ExportError, match="FasterRCNNHead is not one of them"):
        export_onnx(model, tmp_path / "x.onnx")
    assert not (tmp_path / "x.onnx").exists()


def test_cli_errors_are_clear(tmp_path) -> None:
    from anchorlab.cli.app import app
    from anchorlab.cli.export import export  # noqa: F401  (registers the command)

    runner = CliRunner()
    result = runner.invoke(app, ["export", str(tmp_path / "missing.pt")])
    assert result.exit_code == 1 and "does not exist" in result.output
    result = runner.invoke(app, ["export", str(tmp_path / "missing.pt"), "--mode", "nms"])
    assert result.exit_code == 1 and "is not one of full, raw" in " ".join(result.output.split())
    result = runner.invoke(app, ["export", "--help"])
    assert result.exit_code == 0 and "Example: anchorlab export" in result.output
