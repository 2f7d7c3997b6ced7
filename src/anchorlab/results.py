"""``Detections``: what ``Detector.predict`` returns for one image.

Boxes are in the ORIGINAL image's pixels (xyxy, float32, 0 <= x <= W, 0 <= y <= H), labels are the
detector's contiguous labels ``0..K-1`` with ``names[label]`` their class name and ``category_ids[label]``
the training file's category id. Everything lives on the CPU.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from anchorlab.boxes import xyxy_to_xywh
from anchorlab.io import atomic_write, write_text

__all__ = ["Box", "Detections"]

#: Box colours by label (cycled): tab10.
PALETTE = (
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
    "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf",
)  # fmt: skip


class Box(NamedTuple):
    """One detection: ``xyxy`` in original pixels, ``score`` in 0..1, ``label`` 0..K-1 and its ``name``."""

    xyxy: tuple[float, float, float, float]
    score: float
    label: int
    name: str


@dataclass
class Detections:
    """The detections of one image.

    Attributes:
        xyxy: ``[N, 4]`` float32 boxes in original pixels. scores: ``[N]`` float32, descending.
        labels: ``[N]`` int64 in ``0..K-1``. names: the K class names (``names[label]``).
        image_shape: ``(H, W)`` of the original image. path: the file (``None`` for in-memory sources).
        category_ids: the K category ids of the training file (``category_ids[label]``).
        frame: the frame number for a video, else ``None``. relative: ``path`` relative to the common
        folder of the inputs (the layout ``anchorlab predict`` writes). image: the original uint8
        ``[3, H, W]`` image for in-memory sources and video frames (``plot`` re-reads files otherwise).
    """

    xyxy: torch.Tensor
    scores: torch.Tensor
    labels: torch.Tensor
    names: list[str]
    image_shape: tuple[int, int]
    path: Path | None = None
    category_ids: list[int] | None = None
    frame: int | None = None
    relative: Path | None = None
    image: torch.Tensor | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return int(self.scores.shape[0])

    def __iter__(self) -> Iterator[Box]:
        names = self.names
        for box, score, label in zip(
            self.xyxy.tolist(), self.scores.tolist(), self.labels.tolist(), strict=True
        ):
            yield Box(tuple(box), score, label, names[label])

    @property
    def class_names(self) -> list[str]:
        """The class name of each box."""
        return [self.names[i] for i in self.labels.tolist()]

    # -- exports -----------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict: ``path``, ``frame``, ``image_shape``, ``boxes`` (xyxy), ``scores``,
        ``labels``, ``names`` (per box)."""
        return {
            "path": None if self.path is None else str(self.path),
            "frame": self.frame,
            "image_shape": list(self.image_shape),
            "boxes": self.xyxy.tolist(),
            "scores": self.scores.tolist(),
            "labels": self.labels.tolist(),
            "names": self.class_names,
        }

    def to_coco(self, image_id: int, category_ids: Sequence[int] | None = None) -> list[dict[str, Any]]:
        """COCO results ``[{image_id, category_id, bbox: [x, y, w, h], score}]``; ``category_ids[label]``
        (default: the training file's ids) is each box's category."""
        ids = list(category_ids if category_ids is not None else self.category_ids or range(len(self.names)))
        if len(ids) != len(self.names):
            raise ValueError(f"{len(ids)} category ids for {len(self.names)} classes")
        cats = np.asarray(ids, dtype=np.int64)[self.labels.numpy()]
        bbox = xyxy_to_xywh(self.xyxy).tolist()
        return [
            {"image_id": int(image_id), "category_id": c, "bbox": b, "score": s}
            for c, b, s in zip(cats.tolist(), bbox, self.scores.tolist(), strict=True)
        ]

    def to_yolo(self) -> str:
        """YOLO label text: one ``label cx cy w h`` line per box, normalised by the image size."""
        h, w = self.image_shape
        xyxy = self.xyxy.double()
        rows = torch.stack(
            [
                (xyxy[:, 0] + xyxy[:, 2]) / 2 / w,
                (xyxy[:, 1] + xyxy[:, 3]) / 2 / h,
                (xyxy[:, 2] - xyxy[:, 0]) / w,
                (xyxy[:, 3] - xyxy[:, 1]) / h,
            ],
            dim=1,
        ).tolist()
        return "".join(
            f"{label} {' '.join(f'{v:.6f}' for v in row)}\n"
            for label, row in zip(self.labels.tolist(), rows, strict=True)
        )

    # -- pictures ----------------------------------------------------------------------------------
    def original_image(self) -> torch.Tensor:
        """The uint8 ``[3, H, W]`` original: the kept one, else the file read again."""
        if self.image is not None:
            image = self.image
            return image if image.dtype == torch.uint8 else (image * 255).round().clamp(0, 255).byte()
        if self.path is None or self.frame is not None:
            raise ValueError("no image to draw on: pass image=... to plot()")
        from anchorlab.data.loader import read_rgb

        return read_rgb(self.path)

    def plot(
        self,
        image: Any | None = None,
        *,
        pil: bool = False,
        line_width: int | None = None,
        show_scores: bool = True,
    ) -> Any:
        """The image with its boxes and ``name score`` labels drawn: ``H x W x 3`` uint8 numpy array, or a
        ``PIL.Image`` with ``pil=True``. ``image`` (array, PIL image or ``[3, H, W]`` tensor) replaces the
        original."""
        from torchvision.utils import draw_bounding_boxes

        if image is None:
            canvas = self.original_image()
        else:
            from anchorlab.engine.sources import iter_source

            canvas = next(iter_source(image)).load()
            if canvas.dtype != torch.uint8:
                canvas = (canvas * 255).round().clamp(0, 255).byte()
        if tuple(canvas.shape[-2:]) != tuple(self.image_shape):
            raise ValueError(f"image of size {tuple(canvas.shape[-2:])}, detections of {self.image_shape}")
        texts = self.class_names
        if show_scores:
            texts = [f"{n} {s:.2f}" for n, s in zip(texts, self.scores.tolist(), strict=True)]
        colours = [PALETTE[i % len(PALETTE)] for i in self.labels.tolist()]
        width = line_width or max(1, round(max(self.image_shape) / 300))
        drawn = canvas.cpu()
        if len(self):  # torchvision warns on an empty box list
            drawn = draw_bounding_boxes(drawn, self.xyxy, labels=texts, colors=colours, width=width)
        array = drawn.permute(1, 2, 0).numpy()
        if pil:
            from PIL import Image

            return Image.fromarray(array)
        return array

    def save(self, path: str | Path, **plot_args: Any) -> Path:
        """Write atomically: ``.json`` -> :meth:`to_dict`; ``.txt`` -> :meth:`to_yolo`; an image suffix
        (``.png``, ``.jpg``, ...) -> :meth:`plot` (``plot_args`` passed on)."""
        path = Path(path)
        suffix = path.suffix.lower()
        if suffix == ".json":
            return write_text(path, json.dumps(self.to_dict()) + "\n")
        if suffix == ".txt":
            return write_text(path, self.to_yolo())
        from PIL import Image

        formats = {**Image.registered_extensions()}
        if suffix not in formats:
            raise ValueError(f"{path}: unknown file type {suffix!r} (use .png, .jpg, .json or .txt)")
        buffer = io.BytesIO()
        self.plot(pil=True, **plot_args).save(buffer, format=formats[suffix])
        data = buffer.getvalue()
        return atomic_write(path, lambda f: f.write(data))

    def __repr__(self) -> str:
        where = f" {self.path}" if self.path is not None else ""
        frame = f" frame {self.frame}" if self.frame is not None else ""
        h, w = self.image_shape
        return f"Detections({len(self)} boxes on {w}x{h}{where}{frame})"
