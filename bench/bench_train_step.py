"""Benchmark: one training step (forward + loss + backward + SGD step) of anchorlab vs torchvision detectors.

Pairs with the same architecture (random init on both sides, nothing downloads):

* ``retinanet_r50``: ``torchvision.models.detection.retinanet_resnet50_fpn`` vs anchorlab ``retinanet``
  ResNet-50, FPN 256 P3-P7 (P6 from P5), head 256 x 4 convs without norm, 9 anchors (octave 4, 3 scales,
  3 ratios), focal loss + L1 box loss on deltas with coder weights (1, 1, 1, 1) as torchvision's v1.
* ``retinanet_r18``: torchvision's ``RetinaNet`` on ``_resnet_fpn_extractor(resnet18, 5, [2, 3, 4],
  LastLevelP6P7(256, 256))`` vs the same anchorlab config with ResNet-18.
* ``fcos_r50``: ``fcos_resnet50_fpn`` vs anchorlab ``fcos`` (head 256 x 4 convs + GroupNorm 32, GIoU,
  centre sampling 1.5, centerness on the regression tower).

Without weights torchvision builds its ResNets with trainable ``nn.BatchNorm2d`` (``FrozenBatchNorm2d``
only with weights) and all 5 stages trainable: anchorlab uses ``backbone.norm=bn``, 5 trainable stages.
torchvision's ``GeneralizedRCNNTransform`` gets ``min_size = max_size = image size`` so it does not
resize; it normalises inside the model, as anchorlab's ``Detector.preprocess`` does. 80 classes, batch 2,
random boxes; variants timed interleaved. Peak memory: ``VmHWM`` (peak RSS) of a fresh subprocess per model
running 3 steps (absolute, and above the RSS right after building the model), plus torchvision's model in
channels_last (``torchvision_cl``, memory only), to separate what channels_last itself costs.
Assignment + loss share: the detector's loss (assignment included) and its backward, timed on detached
head outputs, over the median step.

Run: ``.venv/bin/python bench/bench_train_step.py [--quick] [--threads 2] [--models retinanet_r50,...]``
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import torch
import torchvision
from torch import nn
from torchvision.models.detection import FCOS, RetinaNet, fcos_resnet50_fpn, retinanet_resnet50_fpn
from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
from torchvision.ops.feature_pyramid_network import LastLevelP6P7

from anchorlab.config import load_config
from anchorlab.models import build_detector
from common import (
    interleaved,
    load_average,
    median_ms,
    peak_rss_mib,
    random_images,
    random_targets,
    setup,
    spread,
    table,
)

MODELS = ("retinanet_r50", "retinanet_r18", "fcos_r50")
NUM_CLASSES = 80


def build_theirs(name: str, size: int) -> nn.Module:
    kw: dict[str, Any] = {"num_classes": NUM_CLASSES, "min_size": size, "max_size": size}
    if name == "retinanet_r50":
        return retinanet_resnet50_fpn(weights=None, weights_backbone=None, **kw)
    if name == "fcos_r50":
        return fcos_resnet50_fpn(weights=None, weights_backbone=None, **kw)
    body = torchvision.models.resnet18(weights=None)
    backbone = _resnet_fpn_extractor(body, 5, returned_layers=[2, 3, 4], extra_blocks=LastLevelP6P7(256, 256))
    return RetinaNet(backbone, **kw)


def build_ours(name: str, channels_last: bool) -> nn.Module:
    detector, depth = name.split("_")
    common = [
        f"model.detector={detector}",
        f"model.num_classes={NUM_CLASSES}",
        f"model.backbone.name=resnet{depth[1:]}",
        "model.backbone.norm=bn",
        "model.fpn.channels=256",
        "model.fpn.min_level=3",
        "model.fpn.max_level=7",
        "model.head.channels=256",
        "model.head.num_convs=4",
        f"model.channels_last={str(channels_last).lower()}",
    ]
    if detector == "fcos":
        extra = ["model.head.norm=gn", "model.loss.box=giou"]
    else:
        extra = ["model.head.norm=none", "model.loss.box=l1", "model.box_coder_stds=[1,1,1,1]"]
    return build_detector(load_config(None, common + extra))


def build(name: str, variant: str, size: int) -> nn.Module:
    torch.manual_seed(0)
    if variant.startswith("torchvision"):
        model = build_theirs(name, size)
        if variant == "torchvision_cl":  # memory probe only: what channels_last costs torchvision itself
            model = model.to(memory_format=torch.channels_last)
    else:
        model = build_ours(name, variant == "ours_cl")
    return model.train()


def step_fn(model: nn.Module, images, targets) -> Callable[[], None]:
    opt = torch.optim.SGD(model.parameters(), lr=1e-5, momentum=0.9)

    def run() -> None:
        opt.zero_grad(set_to_none=True)
        losses = model(images, targets)
        sum(losses.values()).backward()
        opt.step()

    return run


def _leaf(outputs: dict[str, Any]) -> dict[str, Any]:
    return {k: v.detach().requires_grad_() if torch.is_tensor(v) else v for k, v in outputs.items()}


def loss_fn(model: nn.Module, variant: str, images, targets) -> Callable[[], None]:
    """Assignment + loss + its backward on detached (leaf) head outputs of ``images``."""
    with torch.no_grad():
        if variant == "torchvision":
            image_list, tv_targets = model.transform(images, targets)
            features = list(model.backbone(image_list.tensors).values())
            head_outputs = _leaf(model.head(features))
            anchors = model.anchor_generator(image_list, features)
            if isinstance(model, FCOS):
                per_level = [f.size(2) * f.size(3) for f in features]
                args: tuple = (tv_targets, head_outputs, anchors, per_level)
            else:
                args = (tv_targets, head_outputs, anchors)
            compute: Callable[..., dict[str, torch.Tensor]] = model.compute_loss
        else:
            batch = model.preprocess(images)
            features = list(model.backbone(batch.tensor))
            head_outputs = _leaf(model.head(features))
            args = (head_outputs, model.priors(features), targets)
            compute = model.head.loss

    def run() -> None:
        losses = compute(*args)
        sum(losses.values()).backward()
        for v in head_outputs.values():
            if torch.is_tensor(v):
                v.grad = None

    return run


def memory_child(name: str, variant: str, size: int, objects: int) -> None:
    """Subprocess: build one model, run 3 steps, print peak RSS (MiB) as JSON."""
    model = build(name, variant, size)
    after_build = peak_rss_mib()
    run = step_fn(model, random_images(2, size), random_targets(2, objects, size, NUM_CLASSES))
    for _ in range(3):
        run()
    print(json.dumps({"peak": peak_rss_mib(), "after_build": after_build}))


def measure_memory(name: str, variant: str, size: int, objects: int, threads: int) -> dict[str, float]:
    cmd = [sys.executable, __file__, "--memory-child", f"{name},{variant},{size},{objects}"]
    cmd += ["--threads", str(threads)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: 320 px, 10 objects, 2 reps")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--sizes", default="320,512")
    parser.add_argument("--objects", default="10,50")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument("--memory-only", action="store_true", help="skip the timings")
    parser.add_argument("--memory-child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        torch.set_num_threads(args.threads)
        name, variant, size, objects = args.memory_child.split(",")
        memory_child(name, variant, int(size), int(objects))
        return
    if args.quick:
        args.sizes, args.objects, args.reps, args.no_memory = "320", "10", 2, True
    print(setup(args.threads))
    sizes = [int(s) for s in args.sizes.split(",")]
    object_counts = [int(s) for s in args.objects.split(",")]
    variants = ("torchvision", "ours_nchw", "ours_cl")
    rows, share_rows, mem_rows = [], [], []
    for name in args.models.split(","):
        for size in sizes:
            if args.memory_only:
                continue
            models = {v: build(name, v, size) for v in variants}
            for objects in object_counts:
                images, targets = random_images(2, size), random_targets(2, objects, size, NUM_CLASSES)
                fns = {v: step_fn(m, images, targets) for v, m in models.items()}
                t = interleaved(fns, reps=args.reps, warmup=1)
                theirs = median_ms(t["torchvision"])
                ours_nchw, ours_cl = median_ms(t["ours_nchw"]), median_ms(t["ours_cl"])
                rows.append(
                    [name, size, objects, f"{theirs:.0f}", f"{ours_nchw:.0f}", f"{ours_cl:.0f}",
                     f"{ours_nchw / theirs:.2f}", f"{ours_cl / theirs:.2f}",
                     " / ".join(spread(t[v]) for v in variants)]
                )  # fmt: skip
                print(rows[-1], flush=True)
                if size == max(sizes):
                    lf = {v: loss_fn(models[v], v, images, targets) for v in ("torchvision", "ours_cl")}
                    lt = interleaved(lf, reps=max(args.reps, 5), warmup=1)
                    tv_loss, our_loss = median_ms(lt["torchvision"]), median_ms(lt["ours_cl"])
                    share_rows.append(
                        [name, size, objects, f"{tv_loss:.1f}", f"{100 * tv_loss / theirs:.1f} %",
                         f"{our_loss:.1f}", f"{100 * our_loss / ours_cl:.1f} %"]
                    )  # fmt: skip
                    print(share_rows[-1], flush=True)
            del models
        if not args.no_memory:
            size, objects = max(sizes), object_counts[0]
            mem_variants = (*variants, "torchvision_cl")
            mem = {v: measure_memory(name, v, size, objects, args.threads) for v in mem_variants}
            mem_rows.append(
                [name, size]
                + [
                    f"{mem[v]['peak']:.0f} ({mem[v]['peak'] - mem[v]['after_build']:.0f})"
                    for v in mem_variants
                ]
                + [f"{mem['ours_cl']['peak'] / mem['torchvision']['peak']:.2f}"]
                + [f"{mem['ours_cl']['peak'] / mem['torchvision_cl']['peak']:.2f}"]
            )
            print(mem_rows[-1], flush=True)
    print(f"\nload average after: {load_average()}\n")
    print("Training step, batch 2, median ms (ratio = ours / torchvision; spread = min..max per variant)\n")
    print(table(["model", "px", "objects", "torchvision", "ours NCHW", "ours channels_last",
                 "ratio NCHW", "ratio CL", "spread tv / nchw / cl"], rows))  # fmt: skip
    print("\nAssignment + loss (forward + backward, on detached head outputs), share of the step\n")
    print(table(["model", "px", "objects", "torchvision ms", "tv share", "ours ms", "ours share (CL step)"],
                share_rows))  # fmt: skip
    if mem_rows:
        print("\nPeak RSS MiB of a fresh process, 3 steps (in brackets: above the RSS after building)\n")
        print(table(["model", "px", "torchvision", "ours NCHW", "ours CL", "torchvision CL", "ours CL / tv",
                     "ours CL / tv CL"], mem_rows))  # fmt: skip


if __name__ == "__main__":
    main()
