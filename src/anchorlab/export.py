"""ONNX export of a ``Detector``: one graph from a ``[B, 3, H, W]`` image batch in 0..1 to detections.

The input's ``H`` and ``W`` must be multiples of ``model.size_divisible`` (the largest stride), at least
twice it: pad images bottom/right first (``Detector`` pads with the pixel mean, i.e. zero after
normalisation). Two modes (``EXPORT_MODES``), both with dynamic batch, height and width:

* ``"full"``: normalisation, backbone, head, priors, decoding, per-level top-k, score threshold,
  clipping to ``(H, W)``, class-wise NMS (ONNX ``NonMaxSuppression``) and padding to a fixed
  ``max_detections`` per image -- outputs ``boxes [B, D, 4]`` xyxy in input pixels, ``scores [B, D]``,
  ``labels [B, D]`` (int64, ``-1`` in padding rows) and ``num_detections [B]`` (int64), ``D =
  max_detections``. Rows ``>= num_detections[i]`` are padding (zeros, label ``-1``).
* ``"raw"``: the graph stops before anything data-dependent: per prior, the decoded ``boxes [B, R, 4]``
  (input pixels, not clipped), the class ``scores [B, R, K]`` (probabilities as the head ranks them) and
  ``num_priors_per_level [L]`` (int64). ``postprocess_raw`` turns them into the same detections.

Priors are computed inside the graph from the feature maps' shapes (``torch.arange`` of the symbolic
sizes), not taken from ``AnchorGenerator``'s cache, so a graph exported at one size is right at any
other. Export uses the ``torch.export``-based exporter (``torch.onnx.export(..., dynamo=True)``), which
maps ``torchvision::nms`` to ONNX ``NonMaxSuppression`` (onnxscript's torchlib). It is slow (tens of
seconds for a ResNet-18: symbolic-shape reasoning); padding inside the graph doubled that, hence the
multiple-of-stride input.

Shape legend (DESIGN.md): B images, R priors, K classes, L levels, D detections per image.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import nms

from anchorlab.io import atomic_path
from anchorlab.models.detector import Detector
from anchorlab.models.heads.centernet import CenterNetHead
from anchorlab.models.heads.fcos import FCOSHead, distances_to_boxes, select_detections
from anchorlab.models.heads.grid import GridHead
from anchorlab.models.heads.retina import RetinaHead

__all__ = [
    "EXPORT_MODES",
    "FULL_OUTPUTS",
    "RAW_OUTPUTS",
    "ExportError",
    "ExportWrapper",
    "OnnxDetector",
    "check_onnx",
    "compare_detections",
    "detector_family",
    "export_onnx",
    "onnx_metadata",
    "postprocess_raw",
]

EXPORT_MODES = ("full", "raw")
INPUT_NAME = "images"
FULL_OUTPUTS = ("boxes", "scores", "labels", "num_detections")
RAW_OUTPUTS = ("boxes", "scores", "num_priors_per_level")
_INSTALL_HINT = 'ONNX export needs onnx, onnxruntime and onnxscript: pip install "anchorlab[export]"'


class ExportError(RuntimeError):
    """A detector or option that cannot be exported; the message says why and what to use."""


def _grid(feature: torch.Tensor, stride: int, offset: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Cell positions ``x, y [H*W]`` (row-major) of ``feature [B, C, H, W]``, from its symbolic shape."""
    xs = (torch.arange(feature.shape[-1], device=feature.device, dtype=torch.float32) + offset) * stride
    ys = (torch.arange(feature.shape[-2], device=feature.device, dtype=torch.float32) + offset) * stride
    cy, cx = torch.meshgrid(ys, xs, indexing="ij")
    return cx.reshape(-1), cy.reshape(-1)


def _points(features: Sequence[torch.Tensor], strides: Sequence[int], offset: float):
    """``grid_points`` computed from the maps: ``(points [R, 2] (x, y), point_strides [R])``."""
    points, point_strides = [], []
    for feature, stride in zip(features, strides, strict=True):
        cx, cy = _grid(feature, stride, offset)
        points.append(torch.stack((cx, cy), dim=1))
        point_strides.append(torch.full_like(cx, float(stride)))
    return torch.cat(points), torch.cat(point_strides)


class ExportWrapper(nn.Module):
    """``images [B, 3, H, W]`` in 0..1 -> the outputs of ``mode`` (module docstring); an export-friendly
    re-statement of ``Detector.forward`` + ``head.postprocess`` (no Python ints taken from shapes, no
    per-image Python loop, fixed-size outputs).

    Args:
        model: the detector (its head is a ``RetinaHead``, ``FCOSHead``, ``GridHead`` or
            ``CenterNetHead``).
        mode: ``"full"`` or ``"raw"``.
        inference: overrides of ``model.inference`` (score_thresh, topk_per_level, nms_iou,
            max_detections).
    """

    def __init__(
        self, model: Detector, mode: str = "full", inference: Mapping[str, Any] | None = None
    ) -> None:
        super().__init__()
        if mode not in EXPORT_MODES:
            raise ExportError(f"export mode {mode!r} is not one of {', '.join(EXPORT_MODES)}")
        head = model.head
        if not isinstance(head, (RetinaHead, FCOSHead, GridHead, CenterNetHead)):
            raise ExportError(
                f"ONNX export supports the retinanet, free_anchor, fcos, centernet and grid heads; "
                f"{type(head).__name__} is not one of them (see docs/export.md)"
            )
        self.model, self.mode = model, mode
        settings = {"score_thresh": 0.05, "topk_per_level": 1000, "nms_iou": 0.5, "max_detections": 100}
        settings.update(model.inference)
        settings.update(inference or {})
        if isinstance(head, CenterNetHead):  # peaks: one "level", head.topk candidates, no NMS
            settings.update(topk_per_level=head.topk, nms_iou=None)
        self.settings = settings
        if isinstance(head, RetinaHead):
            generator = model.anchor_generator
            base = [
                generator.base_anchors(level, dtype=torch.float32) for level in range(generator.num_levels)
            ]
            self.register_buffer("base_anchors", torch.stack(base), persistent=False)  # [L, A, 4]
            self.anchor_offset = generator.offset

    # -- graph pieces ------------------------------------------------------------------------------
    def candidates(self, features: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, list]:
        """Per prior: decoded ``boxes [B, R, 4]``, ``scores [B, R, K]``, and the priors per level."""
        model, head = self.model, self.model.head
        strides = model.strides
        if isinstance(head, CenterNetHead):
            out = head(features)
            heat = out["heatmap"].sigmoid()
            heat = heat * (F.max_pool2d(heat, 3, stride=1, padding=1) == heat).to(heat.dtype)
            cx, cy = _grid(heat, 1, 0.0)
            xy = torch.stack((cx, cy))[None] + out["offset"].flatten(2)  # [B, 2, HW] in cells
            half = out["size"].flatten(2) / 2
            boxes = torch.cat((xy - half, xy + half), dim=1).transpose(1, 2) * strides[0]
            return boxes, heat.flatten(2).transpose(1, 2), [heat.shape[-2] * heat.shape[-1]]
        out = head(features)
        per_level = [f.shape[-2] * f.shape[-1] for f in features]
        if isinstance(head, RetinaHead):
            anchors = []
            for level, (feature, stride) in enumerate(zip(features, strides, strict=True)):
                cx, cy = _grid(feature, stride, self.anchor_offset)
                shifts = torch.stack((cx, cy, cx, cy), dim=1)
                anchors.append((shifts[:, None, :] + self.base_anchors[level][None]).reshape(-1, 4))
            boxes = head.coder.decode(torch.cat(anchors)[None], out["box_deltas"])
            return boxes, out["cls_logits"].sigmoid(), [n * head.num_anchors for n in per_level]
        if isinstance(head, FCOSHead):
            points, _ = _points(features, strides, 0.5)
            boxes = distances_to_boxes(points[None], out["box_dist"])
            scores = (out["cls_logits"].sigmoid() * out["centerness"].sigmoid()[..., None]).sqrt()
            return boxes, scores, per_level
        corners, point_strides = _points(features, strides, 0.0)  # GridHead
        boxes = GridHead.decode(out["box_raw"], corners[None], point_strides[None])
        scores = out["obj_logits"].sigmoid()[..., None] * out["cls_logits"].sigmoid()
        return boxes, scores, per_level

    def detections(
        self, boxes: torch.Tensor, scores: torch.Tensor, per_level: list, height: Any, width: Any
    ) -> tuple[torch.Tensor, ...]:
        """Per-level top-k, threshold, clip, class-wise NMS, pad to ``max_detections`` (no batch loop)."""
        s = self.settings
        num_images, _, num_classes = scores.shape
        cand_boxes, cand_scores, cand_labels, start = [], [], [], 0
        for count in per_level:
            level = scores[:, start : start + count].reshape(num_images, count * num_classes)
            top, index = level.topk(torch.sym_min(s["topk_per_level"], count * num_classes), dim=1)
            prior = index // num_classes + start
            cand_boxes.append(boxes.gather(1, prior[..., None].expand(-1, -1, 4)))
            cand_scores.append(top)
            cand_labels.append(index % num_classes)
            start = start + count
        boxes = torch.cat(cand_boxes, dim=1)  # [B, N, 4]
        scores, labels = torch.cat(cand_scores, dim=1), torch.cat(cand_labels, dim=1)  # [B, N]
        upper = torch.stack((width, height, width, height)).to(boxes.dtype)
        boxes = torch.minimum(boxes.clamp(min=0), upper)
        image = torch.arange(num_images, device=boxes.device)[:, None].expand_as(labels)
        keep = (
            (scores > s["score_thresh"]) & (boxes[..., 2] > boxes[..., 0]) & (boxes[..., 3] > boxes[..., 1])
        )
        boxes, scores, labels, image = boxes[keep], scores[keep], labels[keep], image[keep]
        if s["nms_iou"] is not None:
            # Class-wise and image-wise in one NMS: shift each class along x and each image along y by
            # more than the image size (torchvision's coordinate trick, per axis to keep offsets small).
            span = torch.maximum(width, height) + 1
            shift = torch.stack((labels, image), dim=1).to(boxes.dtype) * span  # [N, 2]
            order = nms(boxes + shift.repeat(1, 2), scores, s["nms_iou"])  # decreasing score
        else:
            order = scores.argsort(descending=True)
        boxes, scores, labels, image = boxes[order], scores[order], labels[order], image[order]
        # Rank of each detection within its image (they arrive by decreasing score), then scatter.
        onehot = (image[:, None] == torch.arange(num_images, device=image.device)).long()  # [N, B]
        rank = (onehot.cumsum(0) * onehot).sum(1) - 1
        max_det = s["max_detections"]
        slot = torch.where(rank < max_det, image * max_det + rank, num_images * max_det)
        out_boxes = boxes.new_zeros((num_images * max_det + 1, 4)).index_copy(0, slot, boxes)
        out_scores = scores.new_zeros((num_images * max_det + 1,)).index_copy(0, slot, scores)
        out_labels = labels.new_full((num_images * max_det + 1,), -1).index_copy(0, slot, labels)
        return (
            out_boxes[:-1].reshape(num_images, max_det, 4),
            out_scores[:-1].reshape(num_images, max_det),
            out_labels[:-1].reshape(num_images, max_det),
            onehot.sum(0).clamp(max=max_det),
        )

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """``images [B, 3, H, W]`` in 0..1, ``H`` and ``W`` multiples of ``model.size_divisible``."""
        model = self.model
        x = (images - model.pixel_mean) / model.pixel_std
        features = list(model.backbone(x))
        boxes, scores, per_level = self.candidates(features)
        if self.mode == "raw":
            counts = torch.stack([torch.scalar_tensor(n, dtype=torch.int64) for n in per_level])
            return boxes, scores, counts
        height = torch.scalar_tensor(images.shape[-2], dtype=torch.float32)
        width = torch.scalar_tensor(images.shape[-1], dtype=torch.float32)
        return self.detections(boxes, scores, per_level, height, width)


# -- export ----------------------------------------------------------------------------------------
def _require_export_packages() -> None:
    import importlib.util

    missing = [name for name in ("onnx", "onnxscript") if importlib.util.find_spec(name) is None]
    if missing:
        raise ExportError(f"{', '.join(missing)} not installed. {_INSTALL_HINT}")


def detector_family(model: Detector) -> str:
    """``retinanet | free_anchor | fcos | centernet | grid`` from the head (``ExportError`` otherwise)."""
    head = model.head
    if isinstance(head, RetinaHead):
        return "free_anchor" if head.loss_mode == "free_anchor" else "retinanet"
    for cls, name in ((FCOSHead, "fcos"), (CenterNetHead, "centernet"), (GridHead, "grid")):
        if isinstance(head, cls):
            return name
    raise ExportError(
        f"ONNX export supports the retinanet, free_anchor, fcos, centernet and grid heads; "
        f"{type(head).__name__} is not one of them (see docs/export.md)"
    )


def export_onnx(
    model: Detector,
    path: str | Path,
    *,
    mode: str = "full",
    opset: int = 18,
    image_size: tuple[int, int] | None = None,
    batch_size: int = 2,
    dynamic: bool = True,
    inference: Mapping[str, Any] | None = None,
    categories: Sequence[Mapping[str, Any]] | None = None,
    optimize: bool = True,
) -> Path:
    """Write ``model`` as an ONNX graph (``mode`` "full" or "raw", module docstring) and return ``path``.

    Args:
        model: a ``Detector`` (any device; exported in eval mode, the model's own mode is restored).
        path: the ``.onnx`` file to write.
        opset: ONNX opset (18 is what the exporter emits natively; 17 is converted down).
        image_size: ``(H, W)`` of the example input; default ``2 * size_divisible`` squared. Must be
            multiples of ``model.size_divisible``.
        batch_size: batch of the example input; at least 2 when ``dynamic`` (torch.export specialises
            dimensions of size 1).
        dynamic: dynamic batch, height and width (any multiple of ``size_divisible``, at least twice
            it); False fixes the example's shape.
        inference: overrides of ``model.inference`` baked into a "full" graph (score_thresh,
            topk_per_level, nms_iou, max_detections); stored as metadata in both modes.
        categories: ``[{"id", "name"}]`` of the labels ``0..K-1``, stored as metadata.
        optimize: run the exporter's ONNX graph optimizer (constant folding and friends).
    """
    _require_export_packages()
    family = detector_family(model)
    param = next(model.parameters())
    if param.dtype != torch.float32:
        raise ExportError(f"export a float32 model (this one is {param.dtype}): model.float()")
    was_training = model.training
    wrapper = ExportWrapper(model, mode, inference).eval()  # also puts the model in eval mode
    div = model.size_divisible
    height, width = image_size if image_size is not None else (2 * div, 2 * div)
    if height % div or width % div or height < 2 * div or width < 2 * div:
        raise ExportError(
            f"image_size {(height, width)} must be multiples of the model's size_divisible {div}, "
            f"at least {2 * div}"
        )
    if dynamic and batch_size < 2:
        raise ExportError(f"a dynamic export needs an example batch_size >= 2, got {batch_size}")
    example = torch.rand(batch_size, 3, height, width, device=param.device, dtype=param.dtype)
    dynamic_shapes = None
    if dynamic:
        dim = torch.export.Dim
        dynamic_shapes = {
            "images": {0: dim("batch", min=1), 2: div * dim("h_cells", min=2), 3: div * dim("w_cells", min=2)}
        }
    names = FULL_OUTPUTS if mode == "full" else RAW_OUTPUTS
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torchvision's nms meta kernel, torch.export
            program = torch.onnx.export(
                wrapper,
                (example,),
                dynamo=True,
                input_names=[INPUT_NAME],
                output_names=list(names),
                dynamic_shapes=dynamic_shapes,
                opset_version=opset,
                optimize=optimize,
                verbose=False,
            )
    except ImportError as exc:
        raise ExportError(f"{exc}. {_INSTALL_HINT}") from exc
    except Exception as exc:  # the exporter's own errors are long: keep the first line, chain the rest
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ExportError(f"torch.onnx.export failed for {family} ({mode}): {first}") from exc
    finally:
        model.train(was_training)
    metadata = {
        "anchorlab_detector": family,
        "anchorlab_mode": mode,
        "anchorlab_size_divisible": str(div),
        "anchorlab_strides": json.dumps(model.strides),
        "anchorlab_num_classes": str(model.num_classes),
        "anchorlab_inference": json.dumps(wrapper.settings),
        "anchorlab_input": f"{INPUT_NAME} float32 [B, 3, H, W] RGB in 0..1, H and W multiples of {div}",
    }
    if categories is not None:
        metadata["anchorlab_categories"] = json.dumps(
            [{"id": c["id"], "name": c["name"]} for c in categories]
        )
    program.model.metadata_props.update(metadata)
    path = Path(path)
    with atomic_path(path) as tmp:  # a failed save (full disk) keeps an earlier export intact
        program.save(str(tmp), external_data=False)
    return path


def onnx_metadata(path: str | Path) -> dict[str, Any]:
    """The anchorlab metadata of an exported file: ``detector``, ``mode``, ``size_divisible``, ``strides``,
    ``num_classes``, ``inference`` (the settings baked in / for ``postprocess_raw``), ``categories``."""
    import onnx

    props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    out: dict[str, Any] = {}
    for key, value in props.items():
        if not key.startswith("anchorlab_"):
            continue
        name = key.removeprefix("anchorlab_")
        if name in ("strides", "inference", "categories"):
            out[name] = json.loads(value)
        elif name in ("size_divisible", "num_classes"):
            out[name] = int(value)
        else:
            out[name] = value
    return out


# -- raw-mode post-processing ----------------------------------------------------------------------
def postprocess_raw(
    outputs: Sequence[Any] | Mapping[str, Any],
    image_size: tuple[int, int] | Sequence[tuple[int, int]],
    *,
    score_thresh: float = 0.05,
    topk_per_level: int = 1000,
    nms_iou: float | None = 0.5,
    max_detections: int = 100,
) -> list[dict[str, torch.Tensor]]:
    """Detections from a "raw" graph's outputs, exactly as the "full" graph and ``Detector`` compute them.

    ``outputs``: ``(boxes [B, R, 4], scores [B, R, K], num_priors_per_level [L])`` (numpy arrays, e.g.
    onnxruntime's ``session.run(None, ...)``, or tensors), or a mapping with those names.
    ``image_size``: the input's ``(H, W)`` (boxes are clipped to it), or one per image. The other
    arguments are ``onnx_metadata(path)["inference"]`` (CenterNet: ``nms_iou=None``,
    ``topk_per_level`` = its peak count). Returns per image ``boxes [D, 4]``, ``scores [D]``,
    ``labels [D]`` (int64), sorted by decreasing score.
    """
    if isinstance(outputs, Mapping):
        outputs = [outputs[name] for name in RAW_OUTPUTS]
    boxes, scores, counts = (torch.as_tensor(np.asarray(o)) for o in outputs)
    num_images, _, num_classes = scores.shape
    sizes = [tuple(image_size)] * num_images if np.ndim(image_size) == 1 else list(image_size)
    cand_boxes, cand_scores, cand_labels, start = [], [], [], 0
    for count in counts.tolist():
        level = scores[:, start : start + count].reshape(num_images, count * num_classes)
        top, index = level.topk(min(topk_per_level, count * num_classes), dim=1)  # [B, k]
        prior = index // num_classes + start
        cand_boxes.append(boxes.gather(1, prior[..., None].expand(-1, -1, 4)))
        cand_scores.append(top)
        cand_labels.append(index % num_classes)
        start += count
    return select_detections(
        torch.cat(cand_boxes, dim=1),
        torch.cat(cand_scores, dim=1),
        torch.cat(cand_labels, dim=1),
        sizes,
        score_thresh=score_thresh,
        nms_iou=nms_iou,
        max_detections=max_detections,
    )


# -- running an exported file ----------------------------------------------------------------------
class OnnxDetector:
    """An exported file run by onnxruntime: ``OnnxDetector(path)(images [B, 3, H, W] in 0..1)`` ->
    per image ``{"boxes" [D, 4], "scores" [D], "labels" [D]}`` (torch tensors), for either mode."""

    def __init__(self, path: str | Path, providers: Sequence[str] | None = None) -> None:
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise ExportError(f"onnxruntime is not installed. {_INSTALL_HINT}") from exc
        self.metadata = onnx_metadata(path)
        self.session = ort.InferenceSession(str(path), providers=list(providers or ["CPUExecutionProvider"]))

    def __call__(self, images: np.ndarray | torch.Tensor) -> list[dict[str, torch.Tensor]]:
        array = np.ascontiguousarray(
            np.asarray(images.cpu() if torch.is_tensor(images) else images, np.float32)
        )
        outputs = self.session.run(None, {INPUT_NAME: array})
        if self.metadata.get("mode") == "raw":
            return postprocess_raw(outputs, array.shape[-2:], **self.metadata.get("inference", {}))
        boxes, scores, labels, counts = (torch.from_numpy(o) for o in outputs)
        return [
            {"boxes": boxes[i, :n], "scores": scores[i, :n], "labels": labels[i, :n]}
            for i, n in enumerate(counts.tolist())
        ]


def compare_detections(
    ours: Sequence[Mapping[str, torch.Tensor]], reference: Sequence[Mapping[str, torch.Tensor]]
) -> dict[str, Any]:
    """``same`` (per image: same count and labels in the same order), ``max_box_diff``,
    ``max_score_diff`` over the detections, and the total ``detections`` of ``reference``."""
    same, box_diff, score_diff, total = len(ours) == len(reference), 0.0, 0.0, 0
    for a, b in zip(ours, reference, strict=False):
        total += len(b["scores"])
        if len(a["scores"]) != len(b["scores"]):
            same = False
            continue
        same &= bool(torch.equal(a["labels"].cpu().long(), b["labels"].cpu().long()))
        if len(b["scores"]):
            box_diff = max(box_diff, float((a["boxes"].cpu() - b["boxes"].cpu()).abs().max()))
            score_diff = max(score_diff, float((a["scores"].cpu() - b["scores"].cpu()).abs().max()))
    return {"same": same, "max_box_diff": box_diff, "max_score_diff": score_diff, "detections": total}


def check_onnx(
    model: Detector, path: str | Path, *, image_size: tuple[int, int], batch_size: int = 1, seed: int = 0
) -> dict[str, Any]:
    """Run the exported file and ``model.predict`` on the same random images (``compare_detections``)."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.rand(batch_size, 3, *image_size, generator=generator)
    ours = OnnxDetector(path)(images)
    device = next(model.parameters()).device
    reference = model.predict([im.to(device) for im in images])
    return compare_detections(ours, reference)
