"""``Detector``: backbone + FPN -> head, with priors and input normalisation; a torchvision drop-in.

``model(images, targets)`` in train mode returns a dict of losses; ``model(images)`` in eval mode returns
``[{"boxes": [D, 4] xyxy, "scores": [D], "labels": [D]}]`` per image, in the input images' pixel
coordinates. ``images`` is a list of ``[3, H_i, W_i]`` float tensors in 0..1 (any sizes) or an
``ImageBatch`` (zero-padded, still in 0..1). ``model.detect(images)`` is the same in eval mode without
touching the module's mode; ``model.predict(source)`` is the user's call (files, arrays, videos; resized as
in training; ``anchorlab.Detections`` in the original pixels), once ``anchorlab.load`` (or ``attach``) gave
the model its config and categories.

Head protocol (any head with these methods plugs in; see ``docs/retinanet.md``):

* ``head(features: list[[B, C, H_l, W_l]]) -> outputs`` (a dict of raw tensors flattened over priors in
  level-major, then ``(y, x)``, then per-location order);
* ``head.loss(outputs, priors, targets) -> dict[str, Tensor]`` (weighted; the total is their sum; a
  ``loss`` that also takes ``image_sizes`` gets each image's true ``(h, w)``);
* ``head.postprocess(outputs, priors, image_sizes, **inference) -> list[dict]``;
* priors: the ``prior_generator``'s ``grid_anchors(feature_sizes, device, dtype)`` (anchors) or, when the
  head defines it, ``head.priors(feature_sizes, strides, device, dtype)`` (points, or ``None`` for heads
  that need none). The result is passed unchanged to ``loss`` and ``postprocess``.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from anchorlab.anchors import canvas_strides
from anchorlab.data.batch import ImageBatch, pad_images, size_divisor

__all__ = ["Detector"]


def _float32(outputs: Any) -> Any:
    """Raw head outputs (tensors in dicts/lists) with half-precision floats cast to float32."""
    if torch.is_tensor(outputs):
        return outputs.float() if outputs.is_floating_point() and outputs.dtype != torch.float64 else outputs
    if isinstance(outputs, dict):
        return {k: _float32(v) for k, v in outputs.items()}
    if isinstance(outputs, list | tuple):
        return type(outputs)(_float32(v) for v in outputs)
    return outputs


class Detector(nn.Module):
    """Backbone + head + prior generator + pixel normalisation.

    Args:
        backbone: module mapping ``[B, 3, H, W]`` to a list of feature maps, with ``.strides``.
        head: a head following the protocol of the module docstring.
        anchor_generator: object with ``grid_anchors(feature_sizes, device, dtype)``, or ``None`` when
            the head has a ``priors`` method.
        num_classes: foreground classes ``K``.
        pixel_mean, pixel_std: per-channel normalisation of 0..1 inputs.
        size_divisible: batches are padded to a multiple of it (default: ``size_divisor`` of the
            largest stride, i.e. at most 32).
        channels_last: run the model and its inputs in ``torch.channels_last`` memory format.
        inference: keyword arguments of ``head.postprocess`` (score_thresh, nms_iou, ...).
        name: what the detector is, e.g. ``retinanet_hnm`` (``models.build`` sets it from the config;
            ONNX exports record it); default: the head's class name.
        canvas_strides: space the priors of each level by ``padded canvas // feature size`` per axis, as
            torchvision's AnchorGenerator does (``anchors.canvas_strides``), instead of the true stride.
    """

    def __init__(
        self,
        backbone: nn.Module,
        head: nn.Module,
        anchor_generator: Any | None,
        *,
        num_classes: int,
        pixel_mean: Sequence[float] = (0.485, 0.456, 0.406),
        pixel_std: Sequence[float] = (0.229, 0.224, 0.225),
        size_divisible: int | None = None,
        channels_last: bool = False,
        inference: dict[str, Any] | None = None,
        name: str | None = None,
        canvas_strides: bool = False,
    ) -> None:
        super().__init__()
        if anchor_generator is None and not hasattr(head, "priors"):
            raise ValueError("Detector needs an anchor_generator unless the head defines priors()")
        self.backbone = backbone
        self.head = head
        self.anchor_generator = anchor_generator
        self.num_classes = num_classes
        self.name = name or type(head).__name__
        self.strides: list[int] = list(backbone.strides)
        self.size_divisible = int(size_divisible or size_divisor(max(self.strides)))
        self.inference = dict(inference or {})
        self.canvas_strides = bool(canvas_strides)
        self._loss_takes_sizes = "image_sizes" in inspect.signature(head.loss).parameters
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(1, -1, 1, 1), persistent=False)
        self.config: Any = None  # the training Config, set by attach() (anchorlab.load)
        self.categories: list[dict[str, Any]] | None = None
        self.channels_last = False
        if channels_last:
            self.use_channels_last()

    def use_channels_last(self, enabled: bool = True) -> Detector:
        """Convert the parameters (and from now on the inputs) to ``channels_last`` or back."""
        self.channels_last = enabled
        return self.to(memory_format=torch.channels_last if enabled else torch.contiguous_format)

    # -- input -------------------------------------------------------------------------------------
    def preprocess(self, images: Sequence[torch.Tensor] | ImageBatch) -> ImageBatch:
        """Pad (to ``size_divisible``) and normalise; the padding is zero after normalisation."""
        if isinstance(images, ImageBatch):
            batch = images
        else:
            if len(images) == 0:
                raise ValueError("Detector got an empty list of images")
            for i, im in enumerate(images):
                if im.ndim != 3 or im.shape[0] != 3:
                    raise ValueError(f"images[{i}] must have shape [3, H, W], got {tuple(im.shape)}")
            batch = pad_images(list(images), self.size_divisible)
        x = batch.tensor.to(self.pixel_mean.dtype)
        div = self.size_divisible
        pad_h, pad_w = -x.shape[-2] % div, -x.shape[-1] % div
        if pad_h or pad_w:  # an ImageBatch padded to a smaller multiple: complete the padding
            x = F.pad(x, (0, pad_w, 0, pad_h))
        height, width = x.shape[-2:]
        sizes = torch.tensor(batch.sizes, device=x.device)  # [B, 2] (h, w)
        inside = (torch.arange(height, device=x.device)[None, :, None] < sizes[:, 0, None, None]) & (
            torch.arange(width, device=x.device)[None, None, :] < sizes[:, 1, None, None]
        )  # [B, H, W]
        x = (x - self.pixel_mean) / self.pixel_std * inside[:, None].to(x.dtype)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return ImageBatch(x, batch.sizes)

    def priors(self, features: Sequence[torch.Tensor], canvas: Sequence[int] | None = None) -> Any:
        """Priors for the feature maps (anchors ``[R, 4]``, points, or whatever the head uses);
        ``canvas``: the padded input ``(H, W)``, needed with ``canvas_strides``."""
        feature_sizes = [(int(f.shape[-2]), int(f.shape[-1])) for f in features]
        device = features[0].device
        dtype = torch.promote_types(features[0].dtype, torch.float32)  # never half precision (autocast)
        grid = {}
        if self.canvas_strides:
            if canvas is None:
                raise ValueError("a Detector with canvas_strides needs the padded canvas size for its priors")
            grid = {"grid_strides": canvas_strides(feature_sizes, canvas)}
        if hasattr(self.head, "priors"):
            return self.head.priors(feature_sizes, self.strides, device, dtype, **grid)
        return self.anchor_generator.grid_anchors(feature_sizes, device=device, dtype=dtype, **grid)

    def _heads(
        self,
        batch: ImageBatch,
        targets: Sequence[dict[str, torch.Tensor]] | None,
        inference: dict[str, Any],
    ) -> dict[str, torch.Tensor] | list[dict[str, torch.Tensor]]:
        """Backbone and head (under any autocast), then loss or post-processing in float32."""
        features = list(self.backbone(batch.tensor))
        outputs = self.head(features)
        priors = self.priors(features, batch.tensor.shape[-2:])
        device_type = batch.tensor.device.type
        if torch.is_autocast_enabled(device_type):
            outputs = _float32(outputs)
        with torch.autocast(device_type, enabled=False):
            if targets is None:
                return self.head.postprocess(outputs, priors, batch.sizes, **inference)
            if self._loss_takes_sizes:  # e.g. Faster R-CNN clips proposals to each image
                return self.head.loss(outputs, priors, targets, image_sizes=batch.sizes)
            return self.head.loss(outputs, priors, targets)

    # -- forward -----------------------------------------------------------------------------------
    def forward(
        self,
        images: Sequence[torch.Tensor] | ImageBatch,
        targets: Sequence[dict[str, torch.Tensor]] | None = None,
    ) -> dict[str, torch.Tensor] | list[dict[str, torch.Tensor]]:
        """Train mode: ``dict`` of losses (``targets`` required). Eval mode: detections per image."""
        if self.training and targets is None:
            raise ValueError("Detector in train mode needs targets; call model.eval() for detections")
        return self._heads(self.preprocess(images), targets if self.training else None, self.inference)

    @torch.no_grad()
    def detect(
        self,
        images: Sequence[torch.Tensor] | ImageBatch,
        return_pre_nms: bool = False,
        inference: dict[str, Any] | None = None,
    ) -> list[dict[str, torch.Tensor]]:
        """Raw detections in eval mode (restoring the previous mode), in the INPUT images' pixels: no resize.

        ``images`` as for ``forward`` (``[3, H, W]`` float 0..1). ``inference`` replaces entries of
        ``self.inference`` for this call; ``return_pre_nms`` adds the NMS inputs. For files, arrays and
        resizing as in training, use :meth:`predict`."""
        was_training = self.training
        self.eval()
        try:
            kwargs = {**self.inference, **(inference or {})}
            if return_pre_nms:
                kwargs["return_pre_nms"] = True
            return self._heads(self.preprocess(images), None, kwargs)
        finally:
            self.train(was_training)

    # -- notebook API ------------------------------------------------------------------------------
    def attach(self, config: Any, categories: Sequence[dict[str, Any]] | None = None) -> Detector:
        """Remember the training ``config`` (an ``anchorlab.config.Config``: input size for :meth:`predict`)
        and ``categories`` (``[{"id", "name"}]``, label i = ``categories[i]``); ``anchorlab.load`` does it."""
        self.config = config
        cats = (
            list(categories) if categories else [{"id": i, "name": str(i)} for i in range(self.num_classes)]
        )
        if len(cats) != self.num_classes:
            raise ValueError(f"{len(cats)} categories for a detector of {self.num_classes} classes")
        self.categories = [{"id": int(c["id"]), "name": str(c["name"])} for c in cats]
        return self

    @property
    def names(self) -> list[str]:
        """Class names indexed by label (``"0".."K-1"`` when no categories are attached)."""
        cats = getattr(self, "categories", None)
        return [c["name"] for c in cats] if cats else [str(i) for i in range(self.num_classes)]

    @classmethod
    def from_checkpoint(
        cls, path: Any, device: str | torch.device = "auto", verbose: bool = False
    ) -> Detector:
        """A trained detector in eval mode from ``best.pt``, ``last.pt``, a legacy ``checkpoint.pt`` or a run
        folder (``best.pt``, else ``last.pt``, else ``checkpoint.pt``); see ``anchorlab.load``."""
        from anchorlab.engine.predict import load_detector

        return load_detector(path, device, verbose=verbose)

    def predict(
        self,
        source: Any,
        conf: float | None = 0.25,
        iou: float | None = None,
        max_det: int | None = None,
        batch: int = 8,
        stream: bool = False,
    ) -> Any:
        """Detect objects in ``source``; one ``anchorlab.Detections`` per image, boxes in ORIGINAL pixels.

        ``source``: an image path, a folder (searched recursively), a glob, a video file, a list of any of
        these, a ``PIL.Image``, an ``H x W x 3`` uint8 RGB numpy array, or a ``[3, H, W]`` / ``[B, 3, H, W]``
        tensor (uint8 0..255 or float 0..1), or a list of arrays/images/tensors. Images are resized as in
        evaluation (shorter side ``data.min_size``, longer at most ``data.max_size``) and run ``batch`` at a
        time. ``conf`` (score threshold; ``None``: the config's), ``iou`` (NMS IoU) and ``max_det``
        override ``model.inference`` for this call only. ``stream=True`` returns a generator (videos,
        large folders) instead of a list."""
        from anchorlab.engine.predict import predict_stream

        results = predict_stream(self, source, conf=conf, iou=iou, max_det=max_det, batch=batch)
        return results if stream else list(results)
