"""What ``Detector.predict`` accepts, expanded into a stream of images.

A source is an image file, a folder (searched recursively for ``IMAGE_SUFFIXES``), a glob pattern, a video
file (``VIDEO_SUFFIXES``, decoded with PyAV: the optional ``video`` extra), a ``PIL.Image``, an
``H x W x 3`` uint8 RGB numpy array, a ``[3, H, W]`` or ``[B, 3, H, W]`` tensor (uint8 in 0..255 or float
in 0..1), or a list/tuple of any of these. Files are listed first (a missing path or an empty folder is an
error before any work) and decoded lazily, one batch at a time, with ``anchorlab.data.loader.read_rgb``.

Every :class:`SourceItem` knows its file (``path``), its place in the user's layout (``relative``: the path
relative to the common folder of all the inputs, so equal names in different sub-folders stay apart) and,
for a video, its frame number.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from anchorlab.data.loader import read_rgb

__all__ = [
    "IMAGE_SUFFIXES",
    "VIDEO_SUFFIXES",
    "SourceError",
    "SourceItem",
    "expand_files",
    "iter_source",
    "read_video_frames",
]

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"})
VIDEO_SUFFIXES = frozenset({".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg"})


class SourceError(ValueError):
    """A source that cannot be predicted on; the message names it and says what is wrong."""


@dataclass
class SourceItem:
    """One image to predict on: ``load()`` gives uint8 ``[3, H, W]`` or float ``[3, H, W]`` in 0..1."""

    load: Callable[[], torch.Tensor]
    path: Path | None = None
    relative: Path | None = None
    frame: int | None = None
    in_memory: bool = False  # True for arrays, PIL images, tensors and video frames (kept for plot())


def _is_glob(text: str) -> bool:
    return glob.has_magic(text)


def _glob_root(pattern: str) -> Path:
    """The folder part of ``pattern`` before its first wildcard."""
    parts = Path(pattern).parts
    fixed = [p for p in parts[: next(i for i, p in enumerate(parts) if glob.has_magic(p))]]
    return Path(*fixed) if fixed else Path(".")


def _files_of(entry: str | os.PathLike) -> tuple[list[Path], Path]:
    """``(files, root)`` of one path-like entry: a file, a folder or a glob."""
    text = os.fspath(entry)
    path = Path(text)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in _SUFFIXES)
        if not files:
            raise SourceError(f"{path}: no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in this folder")
        return files, path
    if path.is_file():
        return [path], path.parent
    if _is_glob(text):
        files = sorted(Path(p) for p in glob.glob(text, recursive=True) if Path(p).is_file())
        if not files:
            raise SourceError(f"{text}: the pattern matches no file")
        return files, _glob_root(text)
    raise SourceError(f"{text}: no such image, folder, video or pattern")


_SUFFIXES = IMAGE_SUFFIXES | VIDEO_SUFFIXES


def expand_files(entries: Sequence[str | os.PathLike]) -> list[list[tuple[Path, Path]]]:
    """Per path-like entry (file, folder or glob) its ``[(file, relative)]`` (folders and globs sorted;
    a file already listed by an earlier entry is left out); ``relative`` is relative to the common folder
    of all the entries, so two files never share one."""
    found: list[tuple[list[Path], Path]] = [_files_of(e) for e in entries]
    roots = [os.path.abspath(root) for _, root in found]
    common = Path(os.path.commonpath(roots)) if roots else Path(".")
    seen: set[str] = set()
    out = []
    for files, _ in found:
        part = []
        for f in files:
            key = os.path.abspath(f)
            if key not in seen:
                seen.add(key)
                part.append((f, Path(os.path.relpath(key, common))))
        out.append(part)
    return out


def read_video_frames(path: Path) -> Iterator[np.ndarray]:
    """The frames of a video file as ``H x W x 3`` uint8 RGB arrays, with PyAV (``pip install av``)."""
    try:
        import av
    except ImportError:
        raise SourceError(
            f"{path}: reading videos needs PyAV, which is not installed (pip install 'anchorlab[video]')"
        ) from None
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise SourceError(f"{path}: the file has no video stream")
            for frame in container.decode(video=0):
                yield frame.to_ndarray(format="rgb24")
    except av.FFmpegError as exc:
        raise SourceError(f"{path}: not a readable video ({exc})") from None


def _check_tensor(image: torch.Tensor, what: str) -> torch.Tensor:
    if image.ndim != 3 or image.shape[0] != 3:
        raise SourceError(f"{what}: expected a [3, H, W] tensor, got shape {tuple(image.shape)}")
    if image.dtype == torch.uint8:
        return image
    if not image.is_floating_point():
        raise SourceError(f"{what}: expected uint8 (0..255) or float (0..1) values, got {image.dtype}")
    lo, hi = float(image.min()), float(image.max())
    if lo < -1e-3 or hi > 1 + 1e-3:
        raise SourceError(
            f"{what}: float tensors must hold values in 0..1, got {lo:.3g}..{hi:.3g} (pass uint8 for 0..255)"
        )
    return image


def _array_to_tensor(array: np.ndarray, what: str) -> torch.Tensor:
    if array.ndim != 3 or array.shape[2] != 3:
        raise SourceError(f"{what}: expected an H x W x 3 RGB array, got shape {array.shape}")
    if array.dtype != np.uint8:
        raise SourceError(f"{what}: expected a uint8 array (0..255), got {array.dtype}")
    array = array if array.flags.writeable else array.copy()  # torch wants writable memory
    return torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1)


def _memory_items(obj: Any, what: str) -> list[SourceItem] | None:
    """Items of an in-memory source, or ``None`` when ``obj`` is not one."""
    if isinstance(obj, torch.Tensor):
        if obj.ndim == 4:
            return [
                SourceItem(lambda t=_check_tensor(t, f"{what}[{i}]"): t, in_memory=True)
                for i, t in enumerate(obj)
            ]
        tensor = _check_tensor(obj, what)
        return [SourceItem(lambda: tensor, in_memory=True)]
    if isinstance(obj, np.ndarray):
        tensor = _array_to_tensor(obj, what)
        return [SourceItem(lambda: tensor, in_memory=True)]
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - pillow is a dependency
        return None
    if isinstance(obj, Image.Image):
        tensor = _array_to_tensor(np.asarray(obj.convert("RGB")), what)
        return [SourceItem(lambda: tensor, in_memory=True)]
    return None


def _file_items(path: Path, relative: Path) -> Iterator[SourceItem]:
    if path.suffix.lower() in VIDEO_SUFFIXES:
        for i, frame in enumerate(read_video_frames(path)):
            tensor = torch.from_numpy(frame).permute(2, 0, 1)
            yield SourceItem(lambda t=tensor: t, path=path, relative=relative, frame=i, in_memory=True)
    else:
        yield SourceItem(lambda: _read(path), path=path, relative=relative)


def _read(path: Path) -> torch.Tensor:
    try:
        return read_rgb(path)
    except (RuntimeError, OSError, ValueError) as exc:
        raise SourceError(f"{path}: not a readable image ({str(exc).splitlines()[0]})") from None


def iter_source(source: Any) -> Iterator[SourceItem]:
    """The images of ``source`` (see the module docstring), in order. Every entry is checked (paths listed,
    arrays and tensors validated) before the first item is produced; files are decoded lazily."""
    entries = list(source) if isinstance(source, list | tuple) else [source]
    if not entries:
        raise SourceError("the source is an empty list")
    is_path = [isinstance(e, str | os.PathLike) for e in entries]
    files = iter(expand_files([e for e, p in zip(entries, is_path, strict=True) if p]))
    plan: list[list[SourceItem] | list[tuple[Path, Path]]] = []
    for index, (entry, path_like) in enumerate(zip(entries, is_path, strict=True)):
        if path_like:
            plan.append(next(files))
            continue
        what = f"source[{index}]" if len(entries) > 1 else "source"
        items = _memory_items(entry, what)
        if items is None:
            raise SourceError(
                f"{what}: cannot predict on a {type(entry).__name__}; give a path, folder, glob, video, "
                "PIL.Image, HxWx3 uint8 array or [3,H,W]/[B,3,H,W] tensor"
            )
        plan.append(items)
    for part, path_like in zip(plan, is_path, strict=True):
        if path_like:
            for path, relative in part:
                yield from _file_items(path, relative)
        else:
            yield from part
