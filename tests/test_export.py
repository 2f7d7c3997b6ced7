"""ONNX export: onnxruntime gives the PyTorch detector's detections, at the example size and at another
size and batch (dynamic axes), in "full" mode (NMS in the graph) and "raw" mode (``postprocess_raw``)."""

from __future__ import annotations

import pytest
import torch

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from typer.testing import CliRunner  # noqa: E402

from anchorlab.config import Config, ModelConfig  # noqa: E402
from anchorlab.engine.checkpoint import save_checkpoint  # noqa: E402
from anchorlab.export import (  # noqa: E402
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

NUM_CLASSES = 3
EXAMPLE = (2, 96, 96)  # batch, H, W of the export example
OTHER = (3, 64, 128)  # another batch and size: the dynamic axes must give the same detections there
TARGET_DETECTIONS = 20  # the score threshold is set so the first image has about this many


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Two threads on a shared 2-core machine spin-wait each other out: use one."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def images(batch: int, height: int, width: int, seed: int) -> torch.Tensor:
    return torch.rand(batch, 3, height, width, generator=torch.Generator().manual_seed(seed))


def tiny_config(name: str) -> ModelConfig:
    return ModelConfig(
        detector=name,
        num_classes=NUM_CLASSES,
        backbone={"name": "resnet18"},
        fpn={"channels": 16, "min_level": 2 if name == "centernet" else 3, "max_level": 5},
        head={"channels": 16, "num_convs": 1},
        centernet={"topk": 50},
        inference={"score_thresh": 0.0, "max_detections": 100},
        channels_last=True,
    )


def tiny_detector(name: str) -> Detector:
    """ResNet-18, FPN 16 channels, head 16 channels / 1 conv; the head's weights are re-drawn wider
    (untrained heads score every prior alike, and exact ties make the order of equal scores arbitrary)
    and the score threshold is set between two scores, so images get different, non-trivial counts."""
    torch.manual_seed(0)
    model = build_detector(tiny_config(name)).eval()
    with torch.no_grad():
        for p in model.head.parameters():
            p.normal_(0, 0.03 if p.ndim > 1 else 0.1)
        scores = model.detect(list(images(*EXAMPLE, seed=1)))[0]["scores"]
    # Midway between two consecutive scores: no score sits within float noise of the threshold.
    k = min(TARGET_DETECTIONS, len(scores) // 2)  # CenterNet's smooth random heatmap has few peaks
    model.inference["score_thresh"] = float(scores[k - 1 : k + 1].mean())
    return model


def assert_same_detections(ours, reference) -> None:
    assert len(ours) == len(reference)
    for a, b in zip(ours, reference, strict=True):
        assert len(a["scores"]) == len(b["scores"])
        assert torch.equal(a["labels"].long(), b["labels"].long())
        torch.testing.assert_close(a["boxes"], b["boxes"], atol=1e-3, rtol=0)
        torch.testing.assert_close(a["scores"], b["scores"], atol=1e-4, rtol=0)
    counts = [len(r["scores"]) for r in reference]
    assert sum(counts) > 0 and max(counts) < 100, counts  # a real test: detections, none truncated


def check_parity(model: Detector, path) -> None:
    runtime = OnnxDetector(path)
    for seed, shape in ((1, EXAMPLE), (2, OTHER)):
        batch = images(*shape, seed=seed)
        assert_same_detections(runtime(batch), model.detect(list(batch)))


@pytest.mark.parametrize(
    "name",
    [
        "retinanet",
        pytest.param("free_anchor", marks=pytest.mark.slow),  # raw mode + CLI below cover it by default
        pytest.param("fcos", marks=pytest.mark.slow),
        pytest.param("grid", marks=pytest.mark.slow),
        pytest.param("centernet", marks=pytest.mark.slow),
    ],
)
def test_full_mode_matches_pytorch_at_two_sizes_and_batches(name, tmp_path) -> None:
    model = tiny_detector(name).train()
    path = export_onnx(model, tmp_path / f"{name}.onnx", image_size=EXAMPLE[1:], batch_size=EXAMPLE[0])
    assert model.training  # exported in eval mode, the caller's mode restored
    model.eval()
    session = ort.InferenceSession(str(path))
    assert [o.name for o in session.get_outputs()] == list(FULL_OUTPUTS)
    out = dict(zip(FULL_OUTPUTS, session.run(None, {"images": images(*OTHER, seed=2).numpy()}), strict=True))
    assert out["boxes"].shape == (OTHER[0], 100, 4) and out["labels"].shape == (OTHER[0], 100)
    n = int(out["num_detections"][0])
    assert (out["labels"][0, n:] == -1).all() and (out["scores"][0, n:] == 0).all()  # padding rows
    check_parity(model, path)
    meta = onnx_metadata(path)
    assert meta["detector"] == name and meta["mode"] == "full" and meta["size_divisible"] == 32


@pytest.fixture(scope="module")
def raw_export(tmp_path_factory):
    """``anchorlab export CHECKPOINT --mode raw --check`` on a checkpoint of a tiny FreeAnchor detector
    (the RetinaNet architecture; the full-mode test covers RetinaNet)."""
    from anchorlab.cli.app import app
    from anchorlab.cli.export import export  # noqa: F401  (registers the command)

    tmp = tmp_path_factory.mktemp("raw")
    model = tiny_detector("free_anchor")
    cfg = Config(model=tiny_config("free_anchor"))
    cfg.model.inference.score_thresh = model.inference["score_thresh"]  # the tuned threshold
    categories = [{"id": 10 + k, "name": f"c{k}"} for k in range(NUM_CLASSES)]
    state = {"model": model.state_dict(), "config": cfg.model_dump(mode="json"), "categories": categories}
    checkpoint = save_checkpoint(tmp / "checkpoint.pt", state)
    out = tmp / "raw.onnx"
    result = CliRunner().invoke(
        app, ["export", str(checkpoint), "--out", str(out), "--mode", "raw", "--size", "64", "--check"]
    )
    return model, out, result


def test_cli_exports_raw_mode_and_checks_it(raw_export) -> None:
    _, path, result = raw_export
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())  # rich wraps lines
    assert "max box diff" in text and "same count/labels: True" in text
    meta = onnx_metadata(path)
    assert (
        meta["mode"] == "raw"
        and meta["detector"] == "free_anchor"
        and meta["categories"][1] == {"id": 11, "name": "c1"}
    )


def test_raw_mode_priors_and_postprocess_match_pytorch_at_another_size(raw_export) -> None:
    """The in-graph anchors equal ``AnchorGenerator.grid_anchors`` at a size never traced (64 x 128), and
    ``postprocess_raw`` reproduces ``Detector.predict``."""
    model, path, _ = raw_export
    batch = images(*OTHER, seed=2)
    session = ort.InferenceSession(str(path))
    assert [o.name for o in session.get_outputs()] == list(RAW_OUTPUTS)
    boxes, scores, counts = session.run(None, {"images": batch.numpy()})
    with torch.no_grad():
        features = list(model.backbone(model.preprocess(list(batch)).tensor))
        outputs = model.head(features)
        anchors = model.priors(features)
    assert counts.tolist() == outputs["num_priors_per_level"] == [8 * 16 * 9, 4 * 8 * 9, 2 * 4 * 9]
    decoded = model.head.coder.decode(anchors[None], outputs["box_deltas"])
    torch.testing.assert_close(torch.from_numpy(boxes), decoded, atol=1e-3, rtol=0)
    torch.testing.assert_close(torch.from_numpy(scores), outputs["cls_logits"].sigmoid(), atol=1e-5, rtol=0)
    settings = onnx_metadata(path)["inference"]
    assert_same_detections(
        postprocess_raw((boxes, scores, counts), OTHER[1:], **settings), model.detect(list(batch))
    )
    named = dict(zip(RAW_OUTPUTS, (boxes, scores, counts), strict=True))
    assert_same_detections(
        postprocess_raw(named, [OTHER[1:]] * OTHER[0], **settings), model.detect(list(batch))
    )


def test_compare_detections_reports_disagreement() -> None:
    a = [{"boxes": torch.zeros(2, 4), "scores": torch.tensor([0.9, 0.8]), "labels": torch.tensor([0, 1])}]
    b = [{"boxes": torch.ones(2, 4), "scores": torch.tensor([0.9, 0.7]), "labels": torch.tensor([0, 1])}]
    report = compare_detections(a, b)
    assert report["same"] and report["max_box_diff"] == 1.0 and report["max_score_diff"] == pytest.approx(0.1)
    c = [{"boxes": torch.zeros(1, 4), "scores": torch.tensor([0.9]), "labels": torch.tensor([0])}]
    assert not compare_detections(c, b)["same"]


def test_bad_arguments_raise_clear_errors(tmp_path) -> None:
    model = tiny_detector("retinanet")
    with pytest.raises(ExportError, match="multiples of the model's size_divisible 32"):
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
