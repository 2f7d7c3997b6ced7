"""torchvision's COCO detectors imported into anchorlab give the same detections (issue 20).

Each torchvision model is built with ``weights=None, weights_backbone=None`` and a seeded random state
(BatchNorm statistics randomised, head weights scaled so that detections exist above the score
threshold, torchvision's unused "N/A" class ids pushed far below it as in its published weights), saved
to a local ``.pth`` and imported; no download. The images are 128 px high and 160 / 136 px wide, so that
torchvision resizes them by 1.0; their 128 x 160 canvas is not a multiple of P6's stride (torchvision's
P6 anchors are then 53 px apart across, which ``anchors.canvas_strides`` reproduces).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torchvision

from anchorlab.config import Config
from anchorlab.models import build_detector
from anchorlab.models.pretrained import (
    _VOID_IDS,
    COCO_CATEGORIES,
    TORCHVISION_MODELS,
    TorchvisionImportError,
    import_torchvision,
)

IMPORTABLE = [name for name, spec in TORCHVISION_MODELS.items() if spec.reason is None]


def random_torchvision(name: str, seed: int = 0) -> torch.nn.Module:
    """torchvision's ``name`` with a seeded random state that yields detections, in eval mode."""
    torch.manual_seed(seed)
    model = torchvision.models.get_model(
        name, weights=None, weights_backbone=None, num_classes=91, min_size=128, max_size=160
    )
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.2, 0.5)
        state = dict(model.named_parameters())
        for key, value in state.items():  # the 0.01-std head convs: scale to He-like magnitudes
            if key.startswith("head.") and ".conv." in key and key.endswith("weight") and value.dim() == 4:
                value.mul_(3)
        if name.startswith("retinanet"):
            state["head.classification_head.cls_logits.weight"].mul_(30)
            state["head.regression_head.bbox_reg.weight"].mul_(10)
            bias = state["head.classification_head.cls_logits.bias"].view(9, 91)
            bias.normal_(-4.0, 1.0)
            bias[:, _VOID_IDS] = -30.0
        elif name.startswith("fcos"):
            state["head.classification_head.cls_logits.weight"].mul_(10)
            state["head.regression_head.bbox_reg.weight"].mul_(3)
            state["head.regression_head.bbox_ctrness.weight"].mul_(10)
            bias = state["head.classification_head.cls_logits.bias"]
            bias.normal_(-4.0, 1.0)
            bias[_VOID_IDS] = -30.0
        else:  # Faster R-CNN
            state["roi_heads.box_predictor.cls_score.weight"].mul_(100)
            state["roi_heads.box_predictor.cls_score.bias"][_VOID_IDS] = -30.0
    return model.eval()


def anchorlab_model(weights: dict) -> torch.nn.Module:
    cfg = Config.model_validate(weights["config"])
    cfg.model.backbone.weights = None
    model = build_detector(cfg)
    model.load_state_dict(weights["model"])
    return model.eval()


def assert_same_detections(ref: dict, got: dict) -> None:
    """Same count, labels (as COCO ids) and order, boxes within 1e-3 px, scores within 1e-5; detections
    whose scores tie (within 1e-6) may come in either order."""
    ids = torch.tensor([c["id"] for c in COCO_CATEGORIES])
    assert len(ref["scores"]) == len(got["scores"]) > 10
    torch.testing.assert_close(got["scores"], ref["scores"], rtol=0, atol=1e-5)
    unmatched = list(range(len(ref["scores"])))
    for i in range(len(got["scores"])):
        tied = [j for j in unmatched if abs(float(ref["scores"][j] - got["scores"][i])) < 1e-6 or j == i]
        match = [
            j
            for j in tied
            if int(ref["labels"][j]) == int(ids[got["labels"][i]])
            and float((ref["boxes"][j] - got["boxes"][i]).abs().max()) < 1e-3
        ]
        assert match, (i, got["boxes"][i], got["scores"][i], ref["boxes"][i], ref["scores"][i])
        unmatched.remove(match[0])


@pytest.mark.parametrize("name", IMPORTABLE)
def test_imported_detector_equals_torchvision(name: str, tmp_path: Path) -> None:
    reference = random_torchvision(name)
    path = tmp_path / f"{name}.pth"
    torch.save(reference.state_dict(), path)
    weights = import_torchvision(name, path)
    assert weights["format"] == "anchorlab/1" and weights["iteration"] == 0 and weights["metrics"] == {}
    assert len(weights["categories"]) == 80 and weights["categories"][0] == {"id": 1, "name": "person"}
    assert weights["categories"][-1] == {"id": 90, "name": "toothbrush"}
    model = anchorlab_model(weights)
    g = torch.Generator().manual_seed(1)
    images = [torch.rand(3, 128, 160, generator=g), torch.rand(3, 128, 136, generator=g)]
    with torch.no_grad():
        expected = reference(images)
        got = model.detect(images)
    for ref, det in zip(expected, got, strict=True):
        assert_same_detections(ref, det)


def test_models_that_cannot_be_imported_say_why(tmp_path: Path) -> None:
    for name in ("retinanet_resnet50_fpn_v2", "fasterrcnn_resnet50_fpn_v2"):
        with pytest.raises(TorchvisionImportError, match="cannot be imported exactly: its"):
            import_torchvision(name, tmp_path / "unused.pth")
    with pytest.raises(TorchvisionImportError, match="importable: retinanet_resnet50_fpn"):
        import_torchvision("ssd300_vgg16", tmp_path / "unused.pth")


def test_a_file_of_another_model_is_a_clear_error(tmp_path: Path) -> None:
    torch.save(torchvision.models.resnet18().state_dict(), tmp_path / "r18.pth")
    with pytest.raises(TorchvisionImportError, match="does not fit torchvision's fcos_resnet50_fpn"):
        import_torchvision("fcos_resnet50_fpn", tmp_path / "r18.pth")


def test_cli_import_offline_and_refusals(monkeypatch, tmp_path: Path) -> None:
    import urllib.error

    from typer.testing import CliRunner

    from anchorlab.cli import app

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no internet")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    runner = CliRunner()
    out = tmp_path / "coco.pt"
    result = runner.invoke(app, ["weights", "import", "torchvision:fcos_resnet50_fpn", "--out", str(out)])
    assert result.exit_code == 1 and not out.exists()
    message = " ".join(result.output.split())
    assert (
        "fcos_resnet50_fpn_coco-99b0c9b7.pth" in message and "hub" in message and "Traceback" not in message
    )
    result = runner.invoke(
        app, ["weights", "import", "torchvision:retinanet_resnet50_fpn_v2", "--out", str(out)]
    )
    assert result.exit_code == 1 and "P6" in result.output
    result = runner.invoke(app, ["weights", "import", "detectron2:retinanet", "--out", str(out)])
    assert result.exit_code == 1 and "torchvision:<name>" in result.output
    out.write_text("mine")
    result = runner.invoke(app, ["weights", "import", "torchvision:fcos_resnet50_fpn", "--out", str(out)])
    assert result.exit_code == 1 and "--force" in result.output and out.read_text() == "mine"


def test_torchvision_parity_keys_export_to_onnx(tmp_path: Path) -> None:
    """The ONNX graph follows the keys imports set: canvas-derived anchor spacing (on a 128 x 160
    canvas), rounded anchors, empty boxes kept (a small ResNet-18 RetinaNet stands in for R-50)."""
    pytest.importorskip("onnxruntime")
    from anchorlab.config import load_config
    from anchorlab.export import check_onnx, export_onnx

    cfg = load_config(
        None,
        [
            "model.detector=retinanet",
            "model.num_classes=3",
            "model.fpn.channels=16",
            "model.head.channels=16",
            "model.head.num_convs=1",
            "model.head.norm=gn",
            "model.head.conv_bias=true",
            "model.head.prior_prob=0.3",
            "model.anchors.round=true",
            "model.anchors.canvas_strides=true",
            "model.inference.keep_empty_boxes=true",
        ],
    )
    torch.manual_seed(0)
    model = build_detector(cfg).eval()
    path = export_onnx(model, tmp_path / "m.onnx", mode="full", image_size=(128, 160), batch_size=2)
    report = check_onnx(model, path, image_size=(128, 160))
    assert report["same"] and report["detections"] > 10, report


def test_prediction_pipeline_equals_torchvision_on_image_files(tmp_path: Path) -> None:
    """Image files through anchorlab's predict path (read_rgb, the config's resize, the model, boxes back
    to the original image) against torchvision's model on the same files: one image enlarged, one
    shrunk (torchvision's resize: floored size, no antialiasing = ``data.resize: torchvision``)."""
    from torchvision.io import write_png

    from anchorlab.data.loader import read_rgb
    from anchorlab.data.transforms import boxes_to_original
    from anchorlab.engine.checkpoint import save_checkpoint
    from anchorlab.engine.evaluate import eval_transforms
    from anchorlab.engine.predict import load_trained

    reference = random_torchvision("retinanet_resnet50_fpn")
    reference.transform.min_size, reference.transform.max_size = (160,), 200
    torch.save(reference.state_dict(), tmp_path / "tv.pth")
    weights = import_torchvision("retinanet_resnet50_fpn", tmp_path / "tv.pth")
    assert weights["config"]["data"]["resize"] == "torchvision"
    weights["config"]["data"].update(min_size=160, max_size=200)
    save_checkpoint(tmp_path / "coco.pt", weights)
    model, cfg, _ = load_trained(tmp_path / "coco.pt", "cpu")
    transform = eval_transforms(cfg)
    g = torch.Generator().manual_seed(2)
    for i, (h, w) in enumerate([(100, 150), (300, 420)]):
        path = tmp_path / f"{i}.png"
        write_png((torch.rand(3, h, w, generator=g) * 255).to(torch.uint8), str(path))
        image = read_rgb(path)
        empty = {"boxes": torch.zeros((0, 4)), "labels": torch.zeros((0,), dtype=torch.int64)}
        tensor, target = transform(image, {**empty, "crowd": torch.zeros((0, 4)), "image_id": i})
        with torch.no_grad():
            det = model.detect([tensor])[0]
            expected = reference([image.float() / 255])[0]
        det["boxes"] = boxes_to_original(det["boxes"], target["scale"])
        assert_same_detections(expected, det)
