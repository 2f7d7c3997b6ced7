"""Benchmark: image decoding, anchorlab's ``read_rgb`` (PIL, EXIF, PNG data check) vs torchvision's.

``read_rgb`` decodes with PIL because torchvision's native PNG decoder crashes the process (SIGSEGV) on a
PNG whose image data is shorter than its header says; it inflates a PNG's image data once more, to refuse
such files, when rows may be missing (interlaced, or an all-zero last row: PIL fills missing rows with
black). This measures what that costs on one
416 x 416 RGB image with texture (PNG, and JPEG quality 90), single-threaded: ms per image, best of 5
rounds of 100 decodes.

Run: ``.venv/bin/python bench/bench_decode.py``
"""

from __future__ import annotations

import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.io import ImageReadMode, decode_image, read_file

from anchorlab.data.image import read_rgb


def torchvision_rgb(path: Path) -> torch.Tensor:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return decode_image(read_file(str(path)), mode=ImageReadMode.RGB)


def pil_rgb(path: Path) -> torch.Tensor:
    with Image.open(path) as im:
        return torch.from_numpy(np.array(im.convert("RGB"))).permute(2, 0, 1).contiguous()


def best_ms(fn, path: Path, rounds: int = 5, n: int = 100) -> float:
    for _ in range(5):
        fn(path)
    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        for _ in range(n):
            fn(path)
        times.append((time.perf_counter() - t) / n * 1e3)
    return min(times)


def main() -> None:
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:416, 0:416]
    arr = np.stack([xx % 256, yy % 256, (xx + yy) % 256], -1) + rng.integers(-20, 20, (416, 416, 3))
    img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    with tempfile.TemporaryDirectory() as tmp:
        files = {"PNG": Path(tmp) / "a.png", "JPEG": Path(tmp) / "a.jpg"}
        img.save(files["PNG"])
        img.save(files["JPEG"], quality=90)
        print("| format | torchvision decode_image | PIL convert('RGB') | anchorlab read_rgb |")
        print("|---|---|---|---|")
        for name, path in files.items():
            tv, pil, ours = (best_ms(fn, path) for fn in (torchvision_rgb, pil_rgb, read_rgb))
            print(f"| {name} 416 px | {tv:.2f} ms | {pil:.2f} ms | {ours:.2f} ms |")


if __name__ == "__main__":
    main()
