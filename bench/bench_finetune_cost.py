"""Seconds per fine-tuning step of torchvision's RetinaNet R-50-FPN imported into anchorlab.

A random-state ``retinanet_resnet50_fpn`` (``weights=None``: nothing downloads) is imported with
``anchorlab.models.pretrained.import_torchvision``; per (image size, ``trainable_layers``) two SGD steps
of 2 images (4:3) with 3 classes run after building, and the second is timed, then one inference.

    python bench/bench_finetune_cost.py --threads 1 --sizes 512 800 --trainable 0 3
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
import torchvision

from anchorlab.config import Config
from anchorlab.models import build_detector
from anchorlab.models.pretrained import import_torchvision


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 800])
    parser.add_argument("--trainable", type=int, nargs="+", default=[0, 3, 5])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "tv.pth"
        tv = torchvision.models.get_model("retinanet_resnet50_fpn", weights=None, weights_backbone=None)
        torch.save(tv.state_dict(), path)
        weights = import_torchvision("retinanet_resnet50_fpn", path)
    for short in args.sizes:
        for trainable in args.trainable:
            model_tree = dict(weights["config"]["model"], num_classes=3, init_from="imported")
            model_tree["backbone"] = dict(model_tree["backbone"], trainable_layers=trainable, weights=None)
            model = build_detector(Config.model_validate({**weights["config"], "model": model_tree})).train()
            params = [p for p in model.parameters() if p.requires_grad]
            optimizer = torch.optim.SGD(params, lr=1e-3, momentum=0.9)
            images = [torch.rand(3, short, short * 4 // 3) for _ in range(2)]
            box = torch.tensor([[10.0, 20.0, 200.0, 220.0], [100.0, 50.0, 300.0, 400.0]])
            targets = [{"boxes": box, "labels": torch.tensor([0, 2])} for _ in images]
            for _ in range(2):
                start = time.perf_counter()
                loss = sum(model(images, targets).values())
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                step = time.perf_counter() - start
            start = time.perf_counter()
            model.detect(images[:1])
            infer = time.perf_counter() - start
            print(
                f"short side {short} ({short}x{short * 4 // 3}), trainable_layers {trainable}: "
                f"{step:.1f} s / step of 2 images, inference {infer:.1f} s / image",
                flush=True,
            )


if __name__ == "__main__":
    main()
