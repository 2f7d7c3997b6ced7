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
maps ``torchvision::nms`` to ONNX ``NonMaxSuppression`` (onnxscript's torchlib). It is slow (symbolic-shape
reasoning, docs/export.md); padding inside the graph made it slower still, hence the multiple-of-stride input.

The graph itself (``ExportWrapper``) lives in ``export_graph``; its public names are re-exported here.

Shape legend (docs/architecture.md): B images, R priors, K classes, L levels, D detections per image.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from anchorlab.export_graph import (
    EXPORT_MODES,
    FULL_OUTPUTS,
    INPUT_NAME,
    RAW_OUTPUTS,
    ExportError,
    ExportWrapper,
)
from anchorlab.io import atomic_path
from anchorlab.models.detector import Detector
from anchorlab.models.heads.postprocess import gather_priors, level_topk, loose_bound, select_detections

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


_INSTALL_HINT = 'ONNX export needs onnx, onnxruntime and onnxscript: pip install "anchorlab[export]"'


# -- export ----------------------------------------------------------------------------------------
def _require_export_packages() -> None:
    import importlib.util

    missing = [name for name in ("onnx", "onnxscript") if importlib.util.find_spec(name) is None]
    if missing:
        raise ExportError(f"{', '.join(missing)} not installed. {_INSTALL_HINT}")


def detector_family(model: Detector) -> str:
    """What the model is, as recorded in an export's metadata: ``model.name`` (``retinanet``,
    ``free_anchor``, ``retinanet_hnm``, ``fcos``, ``centernet``, ``grid`` from ``build_detector``)."""
    return model.name


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
    keep_empty_boxes: bool = False,
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
    num_images = scores.shape[0]
    sizes = [tuple(image_size)] * num_images if np.ndim(image_size) == 1 else list(image_size)
    prior, top, labels = level_topk(  # the heads' per-level top-k: same candidates above the threshold
        scores.amax(dim=-1),
        lambda rows: gather_priors(scores, rows),
        counts.tolist(),
        topk_per_level,
        loose_bound(score_thresh),
    )
    return select_detections(
        gather_priors(boxes, prior),
        top,
        labels,
        sizes,
        score_thresh=score_thresh,
        nms_iou=nms_iou,
        max_detections=max_detections,
        keep_empty_boxes=keep_empty_boxes,
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
    reference = model.detect([im.to(device) for im in images])
    return compare_detections(ours, reference)
