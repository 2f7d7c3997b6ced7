"""Image decoding and sizes: EXIF orientation, malformed and hostile files, pixel modes, pixel limit."""

from __future__ import annotations

import json
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from anchorlab.cli import app
from anchorlab.data import DataError, ImageError, ImageTooLarge, image_size, load_coco, read_rgb
from anchorlab.data.loader import DetectionDataset

runner = CliRunner()


def rotated_jpeg(path, upright_w=64, upright_h=40, box=(8, 4, 24, 16)):
    """A JPEG stored sideways with EXIF Orientation=6 (turn 90 degrees clockwise to view): upright it is
    ``upright_w x upright_h`` with a red square at ``box`` (xyxy) on grey."""
    upright = np.full((upright_h, upright_w, 3), 128, np.uint8)
    x1, y1, x2, y2 = box
    upright[y1:y2, x1:x2] = (255, 0, 0)
    stored = Image.fromarray(upright).transpose(Image.Transpose.ROTATE_90)  # what a phone writes
    exif = Image.Exif()
    exif[0x0112] = 6
    stored.save(path, quality=95, exif=exif.tobytes())
    return path


def short_idat_png(path, width=64, height=64):
    """A ~100-byte PNG whose IDAT holds 2 rows although the header says ``height`` (torchvision's
    decoder crashed the process on such a file)."""
    raw = b"".join(b"\x00" + b"\x7f" * (width * 3) for _ in range(2))

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    data = (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(raw, 9))
        + chunk(b"IEND", b"")
    )
    path.write_bytes(data)
    return path


def test_exif_rotated_jpeg_is_upright_and_its_box_lands_on_the_object(tmp_path):
    img = rotated_jpeg(tmp_path / "phone.jpg")
    with Image.open(img) as im:
        assert im.size == (40, 64)  # stored sideways
    assert image_size(img) == (64, 40)
    pixels = read_rgb(img)
    assert pixels.shape == (3, 40, 64) and pixels.dtype == torch.uint8
    doc = {
        "images": [{"id": 1, "file_name": "phone.jpg", "width": 64, "height": 40}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [8, 4, 16, 12]}],
        "categories": [{"id": 1, "name": "red"}],
    }
    (tmp_path / "ann.json").write_text(json.dumps(doc))
    ds = load_coco(tmp_path / "ann.json", check_images="header")  # sizes agree after EXIF: no mismatch
    image, target = DetectionDataset(ds)[0]
    x1, y1, x2, y2 = target["boxes"][0].round().int().tolist()
    inside = image[:, y1 + 2 : y2 - 2, x1 + 2 : x2 - 2]
    assert inside[0].min() > 0.8 and inside[1].max() < 0.2  # red where the box says
    assert image[1, :, 40:].min() > 0.35  # grey to the right of the box


def test_size_recorded_before_rotation_is_a_mismatch_naming_exif(tmp_path):
    rotated_jpeg(tmp_path / "phone.jpg")
    doc = {"images": [{"id": 1, "file_name": "phone.jpg", "width": 40, "height": 64}], "annotations": [],
           "categories": [{"id": 1, "name": "x"}]}  # fmt: skip
    (tmp_path / "ann.json").write_text(json.dumps(doc))
    with pytest.raises(DataError, match=r"image_size_mismatch: .*EXIF orientation 6"):
        load_coco(tmp_path / "ann.json", check_images="header")


def test_short_idat_png_raises_instead_of_crashing_and_training_skips_it(tmp_path):
    bad = short_idat_png(tmp_path / "bad.png")
    assert bad.stat().st_size < 120
    assert image_size(bad) == (64, 64)  # the header is fine
    with pytest.raises(ImageError, match=r"bad\.png: truncated PNG: its image data holds 386 of") as info:
        read_rgb(bad)
    assert info.value.kind == "image_unreadable"
    Image.new("RGB", (64, 64), (10, 200, 10)).save(tmp_path / "good.png")
    files = ((1, "bad.png"), (2, "good.png"))
    doc = {"images": [{"id": i, "file_name": n, "width": 64, "height": 64} for i, n in files],
           "annotations": [], "categories": [{"id": 1, "name": "x"}]}  # fmt: skip
    (tmp_path / "ann.json").write_text(json.dumps(doc))
    ds = load_coco(tmp_path / "ann.json")
    with pytest.warns(RuntimeWarning, match="skipping unreadable image .*bad.png"):
        image, target = DetectionDataset(ds)[0]
    assert image.shape == (3, 64, 64) and target["image_id"] == 2 and target["skipped"] == [str(bad)]


def test_a_complete_png_with_a_black_last_row_decodes(tmp_path):
    arr = np.full((16, 16, 3), 200, np.uint8)
    arr[-1] = 0  # the data check runs (the last row is zero) and finds the data complete
    Image.fromarray(arr).save(tmp_path / "black_row.png")
    assert read_rgb(tmp_path / "black_row.png")[:, -1].max() == 0


def test_pixel_modes_are_converted_to_8_bit_rgb(tmp_path):
    modes = {
        "gray16.png": Image.fromarray(np.full((8, 8), 65535, np.uint16)),
        "gray.png": Image.new("L", (8, 8), 200),
        "palette.png": Image.new("P", (8, 8), 3),
        "rgba.png": Image.new("RGBA", (8, 8), (1, 2, 3, 0)),
        "cmyk.jpg": Image.new("CMYK", (8, 8), (0, 0, 0, 0)),
        "float.tif": Image.fromarray(np.full((8, 8), 0.5, np.float32)),
    }
    for name, im in modes.items():
        im.save(tmp_path / name)
        out = read_rgb(tmp_path / name)
        assert out.shape == (3, 8, 8) and out.dtype == torch.uint8, name
    assert read_rgb(tmp_path / "gray16.png").max() == 255  # scaled, not clipped from 65535
    assert read_rgb(tmp_path / "float.tif").max() == 127


def test_pixel_limit_is_image_too_large_and_other_problems_are_still_reported(tmp_path):
    Image.new("RGB", (100, 100)).save(tmp_path / "big.png")
    short_idat_png(tmp_path / "bad.png", 20, 20)
    Image.new("RGB", (10, 10)).save(tmp_path / "ok.png")
    with pytest.raises(ImageTooLarge, match="100x100 = 10000 pixels is over the limit of 5000"):
        read_rgb(tmp_path / "big.png", max_pixels=5000)
    with pytest.raises(ImageTooLarge, match="more than twice the pixel limit"):  # PIL's bomb check
        image_size(tmp_path / "big.png", max_pixels=1000)
    files = ["big.png", "bad.png", "ok.png", "missing.png"]
    doc = {
        "images": [{"id": i + 1, "file_name": n, "width": 10, "height": 10} for i, n in enumerate(files)],
        "annotations": [{"id": 1, "image_id": 3, "category_id": 1, "bbox": [0, 0, 20, 20]}],
        "categories": [{"id": 1, "name": "x"}],
    }
    (tmp_path / "ann.json").write_text(json.dumps(doc))
    res = runner.invoke(app, ["data", "check", str(tmp_path / "ann.json"), "--max-pixels", "1000", "--json"])
    assert res.exit_code == 1, res.output
    kinds = sorted({p["kind"] for p in json.loads(res.stdout)["problems"]})
    assert kinds == ["box_partly_outside", "image_missing", "image_too_large", "image_unreadable"]
    assert "Traceback" not in res.output
