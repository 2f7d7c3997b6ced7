"""The one place image files are opened: ``read_rgb`` decodes, ``image_size`` reads the header.

Both apply the EXIF orientation tag (a phone photo stored sideways with ``Orientation=6`` is returned,
and measured, upright, as every viewer and annotation tool shows it), and both refuse what they cannot
handle with an ``ImageError`` (a ``DataError``) naming the file and the reason, never a crash:
decoding is PIL's (a malformed PNG or JPEG raises; torchvision's native decoders can abort the process
on some malformed files). Pixel modes other than RGB (grayscale, palette, RGBA, CMYK, 16-bit) are
converted to 8-bit RGB. Images of more than ``max_pixels`` pixels are refused with ``ImageTooLarge``
before any pixel is decoded (decompression bombs).
"""

from __future__ import annotations

import contextlib
import os
import struct
import warnings
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from anchorlab.data.core import DataError

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "ImageError",
    "ImageTooLarge",
    "exif_orientation",
    "image_size",
    "read_rgb",
]

#: Default pixel limit (width x height) of one image: PIL's decompression-bomb error threshold.
DEFAULT_MAX_PIXELS = 178_956_970

#: EXIF orientations that turn the image by 90 degrees (width and height swap).
_TRANSPOSING = frozenset({5, 6, 7, 8})

#: Everything PIL's decoders are known to raise on malformed input.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, TypeError, IndexError, KeyError, struct.error,
                  zlib.error, EOFError, MemoryError, AttributeError)  # fmt: skip


class ImageError(DataError):
    """An image file that cannot be used: missing, unreadable or malformed. ``kind`` is the problem kind
    (``image_missing``, ``image_unreadable`` or ``image_too_large``)."""

    def __init__(self, path: str | os.PathLike, reason: str, kind: str = "image_unreadable") -> None:
        self.path, self.reason, self.kind = str(path), reason, kind
        super().__init__(f"{path}: {reason}")


class ImageTooLarge(ImageError):
    def __init__(self, path: str | os.PathLike, reason: str) -> None:
        super().__init__(path, reason, "image_too_large")


@contextlib.contextmanager
def _opened(path: str | os.PathLike, max_pixels: int | None) -> Iterator[Image.Image]:
    """``PIL.Image.open`` with the pixel limit checked and every failure an ``ImageError``."""
    limit = DEFAULT_MAX_PIXELS if max_pixels is None else int(max_pixels)
    saved = Image.MAX_IMAGE_PIXELS
    try:
        Image.MAX_IMAGE_PIXELS = max(limit, 1)  # PIL itself raises only above twice this
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(path)
    except FileNotFoundError:
        raise ImageError(path, "file not found", "image_missing") from None
    except Image.DecompressionBombError:
        raise ImageTooLarge(path, f"more than twice the pixel limit of {limit} (data.max_pixels)") from None
    except _DECODE_ERRORS as exc:
        raise ImageError(path, f"not a readable image ({_reason(exc)})") from None
    finally:
        Image.MAX_IMAGE_PIXELS = saved
    with im:
        w, h = im.size
        if w * h > limit:
            raise ImageTooLarge(
                path, f"{w}x{h} = {w * h} pixels is over the limit of {limit} (data.max_pixels)"
            )
        yield im


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[-1]}" if text else type(exc).__name__


def exif_orientation(im: Image.Image) -> int:
    """The EXIF orientation tag (1..8) of an opened image; 1 when absent or unreadable."""
    try:
        value = im.getexif().get(0x0112, 1)
        return int(value) if int(value) in range(1, 9) else 1
    except _DECODE_ERRORS:
        return 1


def image_size(
    path: str | os.PathLike, max_pixels: int | None = None, *, with_orientation: bool = False
) -> tuple[int, int] | tuple[int, int, int]:
    """``(width, height)`` as displayed, i.e. after the EXIF orientation, from the header only (no pixels
    decoded). ``with_orientation=True`` returns ``(width, height, orientation)``. Raises ``ImageError``."""
    with _opened(path, max_pixels) as im:
        w, h = im.size
        orientation = exif_orientation(im)
    if orientation in _TRANSPOSING:
        w, h = h, w
    return (w, h, orientation) if with_orientation else (w, h)


def _to_rgb(im: Image.Image) -> Image.Image:
    """8-bit RGB from any PIL mode; 16/32-bit integer and float images are scaled to 0..255."""
    if im.mode in {"I", "I;16", "I;16B", "I;16L", "I;16N", "F"}:
        arr = np.asarray(im, dtype=np.float64)
        top = float(np.nanmax(arr)) if arr.size else 0.0
        scale = 255.0 if im.mode == "F" and top <= 1.0 else (255.0 / 65535.0 if top > 255 else 1.0)
        arr = np.clip(np.nan_to_num(arr * scale), 0, 255).astype(np.uint8)
        return Image.fromarray(arr, "L").convert("RGB")
    if im.mode in {"RGBA", "LA", "PA"} or (im.mode == "P" and "transparency" in im.info):
        return im.convert("RGBA").convert("RGB")
    return im.convert("RGB")


_ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))
_PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}


def _png_data_size(width: int, height: int, depth: int, colour: int, interlace: int) -> int:
    """Bytes of filtered scanlines a PNG's IDAT must inflate to (1 filter byte per row, Adam7 passes)."""
    bits = _PNG_CHANNELS.get(colour, 4) * depth
    if not interlace:
        return height * (1 + -(-width * bits // 8))
    total = 0
    for x0, y0, dx, dy in _ADAM7:
        pw, ph = -(-(width - x0) // dx) if width > x0 else 0, -(-(height - y0) // dy) if height > y0 else 0
        if pw and ph:
            total += ph * (1 + -(-pw * bits // 8))
    return total


def check_png_data(path: str | os.PathLike) -> None:
    """Raise ``ImageError`` if a PNG's image data holds fewer rows than its header declares (PIL fills
    them with black without a word; torchvision's decoder crashes the process on such files)."""
    data = Path(path).read_bytes()
    pos, idat, header = 8, [], None
    while pos + 8 <= len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        tag = data[pos + 4 : pos + 8]
        body = data[pos + 8 : pos + 8 + length]
        if tag == b"IHDR" and len(body) >= 13:
            header = struct.unpack(">IIBBBBB", body[:13])
        elif tag == b"IDAT":
            idat.append(body)
        elif tag == b"IEND":
            break
        pos += 12 + length
    if header is None:
        raise ImageError(path, "PNG without an IHDR header")
    width, height, depth, colour, _, _, interlace = header
    expected = _png_data_size(width, height, depth, colour, interlace)
    try:
        got = len(zlib.decompressobj().decompress(b"".join(idat), expected))
    except zlib.error as exc:
        raise ImageError(path, f"cannot decode the image data (zlib: {exc})") from None
    if got < expected:
        raise ImageError(
            path, f"truncated PNG: its image data holds {got} of the {expected} bytes its header declares"
        )


def _may_be_short(im: Image.Image) -> bool:
    """Whether a decoded PNG could be missing rows: PIL leaves rows it got no data for at zero, so a
    non-interlaced image whose last row holds any non-zero value is complete (no second inflate)."""
    if im.info.get("interlace") or getattr(im, "is_animated", False):
        return True
    w, h = im.size
    return not np.asarray(im.crop((0, h - 1, w, h))).any()


def read_rgb(path: str | os.PathLike, max_pixels: int | None = None) -> torch.Tensor:
    """Decode an image file (PNG, JPEG, BMP, TIFF, WebP; any pixel mode) as uint8 RGB ``[3, H, W]``,
    upright per its EXIF orientation. Raises ``ImageError`` (``ImageTooLarge`` above ``max_pixels``,
    default ``DEFAULT_MAX_PIXELS``) for a missing, truncated or malformed file; never crashes the process."""
    with _opened(path, max_pixels) as im:
        try:
            im.load()
            if im.format == "PNG" and _may_be_short(im):
                check_png_data(path)
            orientation = exif_orientation(im)
            if orientation != 1:
                im = ImageOps.exif_transpose(im)
            rgb = _to_rgb(im)
            arr = np.array(rgb, dtype=np.uint8)
        except ImageError:
            raise
        except _DECODE_ERRORS as exc:
            raise ImageError(path, f"cannot decode the image ({_reason(exc)})") from None
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ImageError(path, f"decoded to an array of shape {arr.shape}, not H x W x 3")
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


def describe_size_mismatch(path: Path, recorded: tuple[float, float], orientation: int, actual: tuple) -> str:
    """The message of an ``image_size_mismatch``: names EXIF orientation when it explains the difference."""
    rw, rh = recorded
    fw, fh = actual
    msg = f"recorded size {rw:g}x{rh:g} but {path.name} is {fw}x{fh}"
    if orientation in _TRANSPOSING and (rw, rh) == (fh, fw):
        msg += (
            f" after its EXIF orientation {orientation} (a 90-degree turn); the recorded size is the stored,"
            " unrotated one: check that the boxes were drawn on the upright image"
        )
    elif orientation != 1:
        msg += f" (EXIF orientation {orientation})"
    return msg
