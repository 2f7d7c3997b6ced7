"""Benchmark: anchorlab's data loader throughput vs the training step's, R18 RetinaNet at 512 px.

Data: ``make_synthetic`` PNGs of 512 x 512 px (5..15 objects each) written to a temporary folder, read
with ``load_coco`` and ``build_loader`` with the training transforms (shortest-edge resize to 512,
horizontal flip, float 0..1), batch 2. Measured:

1. the loader alone with 0 and 2 workers (images/s; the first batch, which pays worker start-up, is
   excluded);
2. the training step alone (forward + loss + backward + SGD) of anchorlab RetinaNet R18-FPN (FPN and
   head 256 channels, 4 convs, channels_last) on one fixed batch (images/s);
3. the same step fed by the loader (0 and 2 workers): the real training throughput. If it matches (2),
   loading is not the bottleneck.

Run: ``.venv/bin/python bench/bench_data_loading.py [--threads 2] [--steps 6]``
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch

from anchorlab.data import load_coco
from anchorlab.data.loader import build_loader
from anchorlab.data.synthetic import make_synthetic
from anchorlab.data.transforms import build_transforms
from bench_train_step import NUM_CLASSES, build_ours
from common import load_average, setup, table

SIZE = 512
BATCH = 2


def loader_for(ds, workers: int):
    transforms = build_transforms(True, min_size=SIZE, max_size=SIZE)
    return build_loader(ds, batch_size=BATCH, train=True, workers=workers, transforms=transforms,
                        infinite=True, size_divisible=128)  # fmt: skip


def loader_rate(ds, workers: int, batches: int) -> float:
    """Images/s of the loader alone over ``batches`` batches after the first."""
    it = iter(loader_for(ds, workers))
    next(it)
    t0 = time.perf_counter()
    for _ in range(batches):
        next(it)
    return batches * BATCH / (time.perf_counter() - t0)


def train_rate(model, opt, batches, steps: int) -> float:
    """Images/s of ``steps`` training steps on batches from the iterator ``batches`` (after one warm-up)."""

    def step(images, targets) -> None:
        opt.zero_grad(set_to_none=True)
        targets = [{"boxes": t["boxes"], "labels": t["labels"] % NUM_CLASSES} for t in targets]
        sum(model(images, targets).values()).backward()
        opt.step()

    step(*next(batches))
    t0 = time.perf_counter()
    for _ in range(steps):
        step(*next(batches))
    return steps * BATCH / (time.perf_counter() - t0)


def repeat(batch):
    while True:
        yield batch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--images", type=int, default=64)
    args = parser.parse_args()
    print(setup(args.threads))
    with tempfile.TemporaryDirectory() as tmp:
        paths = make_synthetic(tmp, images=args.images, size=SIZE, classes=8, min_object=16,
                               max_object=200, objects=(5, 15), val_images=1)  # fmt: skip
        ds = load_coco(paths.train)
        rows = []
        for workers in (0, 2):
            rate = loader_rate(ds, workers, batches=min(args.images // BATCH - 2, 24))
            rows.append([f"loader alone, {workers} workers", f"{rate:.1f}"])
            print(rows[-1], flush=True)
        torch.manual_seed(0)
        model = build_ours("retinanet_r18", channels_last=True).train()
        opt = torch.optim.SGD(model.parameters(), lr=1e-5, momentum=0.9)
        fixed = next(iter(loader_for(ds, 0)))
        step_alone = train_rate(model, opt, repeat(fixed), args.steps)
        rows.append(["training step alone (fixed batch)", f"{step_alone:.2f}"])
        print(rows[-1], flush=True)
        for workers in (0, 2):
            fed = train_rate(model, opt, iter(loader_for(ds, workers)), args.steps)
            rows.append([f"training step fed by the loader, {workers} workers", f"{fed:.2f}"])
            print(rows[-1], flush=True)
    print(f"\nload average after: {load_average()}\n")
    print(
        f"Images/s, batch {BATCH}, {SIZE} px synthetic PNGs, "
        "anchorlab RetinaNet R18-FPN (256 ch, channels_last)\n"
    )
    print(table(["what", "images/s"], rows))


if __name__ == "__main__":
    main()
