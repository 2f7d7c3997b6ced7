"""Benchmark: RetinaNet R50-FPN inference, batch 1, 512 px: the whole model and its post-processing alone
(RetinaNet and FCOS).

Whole model: ``model([image])`` in eval mode under ``torch.no_grad`` for torchvision's
``retinanet_resnet50_fpn`` (``min_size = max_size = 512``, no resize) and anchorlab's ``retinanet`` with
the same architecture (NCHW and channels_last). Random-init models score every anchor near the
classification prior (0.01 < the 0.05 threshold), so their post-processing has almost nothing to do.

Post-processing alone (decode + top-k + class-wise NMS): both implementations get the **same** head
outputs and the **same** anchors (torchvision's), with logits drawn so that candidates exist:

* ``dense``: logits ~ N(-4.6, 1.5): every level has more than 1000 (anchor, class) scores above 0.05,
  so both keep 1000 per level (5000 boxes into NMS) - the worst case of the standard settings;
* ``sparse``: logits ~ N(-6, 1): about 0.1 % above 0.05 (~2000 candidates, P3 capped at 1000), closer
  to a trained model.

Box deltas ~ N(0, 0.1) decode with weights (1, 1, 1, 1) on both sides (anchorlab built with
``model.box_coder_stds=[1,1,1,1]``), so the detections must agree; the script asserts it.
torchvision: ``model.postprocess_detections`` (score > 0.05, top 1000 per level, NMS 0.5, 100 per image:
``detections_per_img=100`` instead of its default 300, to match);
anchorlab: ``Detector.head.postprocess`` with the same settings.

FCOS (post-processing only): torchvision's ``fcos_resnet50_fpn`` built with the same settings
(``score_thresh=0.05, nms_thresh=0.5, topk_candidates=1000, detections_per_img=100``; its defaults are
0.2 / 0.6 / 1000 / 100) against ``FCOSHead.postprocess``, on the same logits ``[1, R, 80]``, centerness
logits ~ N(0, 1) and distances (``(l, t, r, b)`` ~ U(0.5, 4) strides); anchorlab's points are
torchvision's anchor centres and its distances are torchvision's size-normalised codes times the anchor
size, so both decode the same boxes. Score ``sqrt(sigmoid(cls) * sigmoid(centerness))`` on both sides;
``dense``: logits ~ N(-4.6, 1.5), ``sparse``: N(-8, 1).

End to end (``--part predict``): ``model.predict(folder, batch=8)`` on a folder of ``--images`` PNGs of
640 x 480 (decode with ``read_rgb`` + the evaluation resize to 384 x 512 + model + post-processing + boxes
back to original pixels + ``Detections``) against torchvision's ``retinanet_resnet50_fpn`` with the SAME
weights (anchorlab's state dict copied over; checked: equal detections on the same resized image) and the
same resize (``min_size=384, max_size=640``: 640 x 480 -> 512 x 384 in both), fed the decoded images 8 at a
time. Model time = ``Detector.detect`` (normalise + pad + backbone + head + decode + NMS) on the already
resized images in batches of 8; overhead = decode + resize + boxes back to original pixels, timed alone
(``anchorlab pre/post only``), as % of the model time; also (``predict`` - model time) / model time, which
on a loaded machine is the difference of two noisy totals. The classification
bias is set to ``logit(0.05)`` so that the untrained model has candidates for NMS (a dense, worst case).

Run: ``.venv/bin/python bench/bench_inference.py [--threads 2] [--reps 7] [--part model|predict|all]
[--images 64]``
"""

from __future__ import annotations

import argparse
import math
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.models.detection import fcos_resnet50_fpn, retinanet_resnet50_fpn
from torchvision.models.detection.image_list import ImageList
from torchvision.ops import box_iou

from anchorlab.config import load_config
from anchorlab.data.loader import read_rgb
from anchorlab.data.transforms import boxes_to_original
from anchorlab.engine.evaluate import eval_transforms
from anchorlab.models import build_detector
from anchorlab.models.heads.fcos import FCOSHead
from common import interleaved, load_average, median_ms, random_images, setup, spread, table

SIZE = 512
K = 80


def build_ours(channels_last: bool):
    overrides = [
        "model.detector=retinanet", f"model.num_classes={K}", "model.backbone.name=resnet50",
        "model.backbone.norm=bn", "model.fpn.channels=256", "model.head.channels=256",
        "model.head.num_convs=4", "model.head.norm=none", "model.loss.box=l1",
        "model.box_coder_stds=[1,1,1,1]", f"model.channels_last={str(channels_last).lower()}",
    ]  # fmt: skip
    torch.manual_seed(0)
    return build_detector(load_config(None, overrides)).eval()


def head_case(theirs, image: torch.Tensor, mean: float, std: float, seed: int = 0):
    """Shared inputs: per-level counts, logits ``[1, R, K]``, deltas ``[1, R, 4]``, anchors ``[R, 4]``."""
    with torch.no_grad():
        image_list, _ = theirs.transform([image])
        features = list(theirs.backbone(image_list.tensors).values())
        anchors = theirs.anchor_generator(image_list, features)[0]
    per_level = [int(f.shape[-2] * f.shape[-1]) * 9 for f in features]
    g = torch.Generator().manual_seed(seed)
    logits = mean + std * torch.randn(1, anchors.shape[0], K, generator=g)
    deltas = 0.1 * torch.randn(1, anchors.shape[0], 4, generator=g)
    return per_level, logits, deltas, anchors, image_list.image_sizes


def fcos_case(theirs, mean: float, std: float, seed: int = 0):
    """Shared FCOS inputs: torchvision's ``(outputs, anchors, image_sizes)`` and anchorlab's
    ``(outputs, (points, strides))`` for the same scores and boxes."""
    strides = (8, 16, 32, 64, 128)
    sizes = [(SIZE // s, SIZE // s) for s in strides]
    image_list = ImageList(torch.zeros(1, 3, SIZE, SIZE), [(SIZE, SIZE)])
    anchors = theirs.anchor_generator(image_list, [torch.zeros(1, 1, h, w) for h, w in sizes])[0]  # [R, 4]
    per_level = [h * w for h, w in sizes]
    g = torch.Generator().manual_seed(seed)
    logits = mean + std * torch.randn(1, anchors.shape[0], K, generator=g)
    ctr = torch.randn(1, anchors.shape[0], 1, generator=g)
    codes = 0.5 + 3.5 * torch.rand(1, anchors.shape[0], 4, generator=g)
    tv = (
        {
            "cls_logits": list(logits.split(per_level, dim=1)),
            "bbox_regression": list(codes.split(per_level, dim=1)),
            "bbox_ctrness": list(ctr.split(per_level, dim=1)),
        },
        [list(anchors.split(per_level))],
        image_list.image_sizes,
    )
    size = (anchors[:, 2:] - anchors[:, :2]).repeat(1, 2)  # [R, 4] (w, h, w, h)
    ours = {
        "cls_logits": logits,
        "box_dist": codes * size,
        "centerness": ctr[..., 0],
        "num_priors_per_level": per_level,
    }
    points = (anchors[:, :2] + anchors[:, 2:]) / 2
    return (
        tv,
        ours,
        (points, torch.cat([torch.full((n,), float(s)) for n, s in zip(per_level, strides, strict=True)])),
    )


def compare(run_tv, run_ours, reps: int) -> tuple[float, float, int]:
    """Assert equal detections; interleaved medians (ms) of both and the number of detections."""
    a, b = run_tv()[0], run_ours()[0]
    assert a["boxes"].shape == b["boxes"].shape, (a["boxes"].shape, b["boxes"].shape)
    torch.testing.assert_close(a["scores"], b["scores"])
    torch.testing.assert_close(a["boxes"], b["boxes"], rtol=1e-4, atol=1e-3)
    assert torch.equal(a["labels"], b["labels"])
    with torch.no_grad():
        t = interleaved({"torchvision": run_tv, "ours": run_ours}, reps=max(3 * reps, 15), warmup=2)
    return median_ms(t["torchvision"]), median_ms(t["ours"]), len(b["boxes"])


def _tv_head_key(key: str) -> str:
    """anchorlab's RetinaHead parameter name -> torchvision's RetinaNetHead's."""
    parts = key.split(".")
    if parts[1] in {"cls_tower", "box_tower"}:
        head = "classification_head" if parts[1] == "cls_tower" else "regression_head"
        return f"head.{head}.conv.{int(parts[2]) // 2}.0.{parts[3]}"  # conv i sits at index 2 i (conv, relu)
    return {
        "cls_logits": "head.classification_head.cls_logits",
        "bbox_pred": "head.regression_head.bbox_reg",
    }[parts[1]] + f".{parts[2]}"


def copy_weights(ours: torch.nn.Module, theirs: torch.nn.Module) -> None:
    """Load anchorlab's RetinaNet weights into torchvision's: the backbone and FPN list their parameters in
    the same order; the head's are renamed."""
    src = {k: v for k, v in ours.state_dict().items() if k != "head.loss_normalizer"}
    body = [k for k in src if not k.startswith("head.")]
    tv_body = [k for k in theirs.state_dict() if not k.startswith("head.")]
    mapping = dict(zip(body, tv_body, strict=True))
    mapping.update({k: _tv_head_key(k) for k in src if k.startswith("head.")})
    target = theirs.state_dict()
    for k, k_tv in mapping.items():
        assert src[k].shape == target[k_tv].shape, (k, k_tv)
    theirs.load_state_dict({mapping[k]: v for k, v in src.items()})


def predict_bench(args) -> None:
    """``model.predict`` on a folder against torchvision's RetinaNet (see the module docstring)."""
    torch.manual_seed(0)
    settings = {"score_thresh": 0.05, "topk_per_level": 1000, "nms_iou": 0.5, "max_detections": 100}
    cfg = load_config(None, [
        "model.detector=retinanet", f"model.num_classes={K}", "model.backbone.name=resnet50",
        "model.backbone.norm=bn", "model.fpn.channels=256", "model.head.channels=256",
        "model.head.num_convs=4", "model.head.norm=none", "model.loss.box=l1",
        "model.box_coder_stds=[1,1,1,1]", "data.min_size=384", "data.max_size=640",
        *(f"model.inference.{k}={v}" for k, v in settings.items()),
    ])  # fmt: skip
    ours = build_detector(cfg).eval()
    with torch.no_grad():
        ours.head.cls_logits.bias.fill_(math.log(0.05 / 0.95))
    ours.attach(cfg, [{"id": i, "name": f"class{i}"} for i in range(K)])
    theirs = retinanet_resnet50_fpn(
        weights=None, weights_backbone=None, num_classes=K, min_size=384, max_size=640,
        score_thresh=0.05, nms_thresh=0.5, topk_candidates=1000, detections_per_img=100,
    ).eval()  # fmt: skip
    copy_weights(ours, theirs)
    folder = Path(tempfile.mkdtemp(prefix="anchorlab_bench_"))
    rng = np.random.default_rng(0)
    for i in range(args.images):  # smooth random images: noise upsampled (PNG-compressible, not flat)
        small = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)
        Image.fromarray(small).resize((640, 480), Image.BILINEAR).save(folder / f"img_{i:03d}.png")
    files = sorted(folder.glob("*.png"))
    transform = eval_transforms(cfg)
    empty = {"boxes": torch.zeros((0, 4)), "labels": torch.zeros((0,), dtype=torch.int64)}
    resized = [transform(read_rgb(f), dict(empty))[0] for f in files]
    assert tuple(resized[0].shape) == (3, 384, 512)
    with torch.no_grad():  # same weights: the same detections on the same resized image
        a, b = theirs([resized[0]])[0], ours.detect([resized[0]])[0]
    iou = box_iou(b["boxes"], a["boxes"]) * (b["labels"][:, None] == a["labels"][None, :])
    matched = float((iou.max(dim=1).values > 0.95).float().mean()) if len(a["boxes"]) else 0.0
    print(f"same weights check: torchvision {len(a['boxes'])} / anchorlab {len(b['boxes'])} detections, "
          f"{100 * matched:.0f} % of anchorlab's matched (same label, IoU > 0.95)", flush=True)  # fmt: skip
    batches = [resized[i : i + 8] for i in range(0, len(resized), 8)]
    with torch.no_grad():
        outputs = ours.detect(batches[0])

    def run_predict():
        return ours.predict(folder, conf=0.05, batch=8)

    def run_model():
        return [ours.detect(chunk) for chunk in batches]

    def run_prepost():  # what predict adds to the model: decode, resize, boxes back, Detections
        for i in range(0, len(files), 8):
            images = [transform(read_rgb(f), dict(empty)) for f in files[i : i + 8]]
            for (_, target), out in zip(images, outputs, strict=False):
                boxes_to_original(out["boxes"], target["scale"], target["orig_size"])

    def run_tv():
        out = []
        for i in range(0, len(files), 8):
            out += theirs([read_rgb(f).float() / 255 for f in files[i : i + 8]])
        return out

    def run_tv_model():
        return [theirs(chunk) for chunk in batches]

    with torch.no_grad():
        t = interleaved(
            {"anchorlab predict": run_predict, "torchvision e2e": run_tv, "anchorlab model only": run_model,
             "torchvision on resized": run_tv_model, "anchorlab pre/post only": run_prepost},
            reps=args.reps, warmup=1,
        )  # fmt: skip
    n = len(files)
    rows = [
        [name, f"{n / (median_ms(v) / 1e3):.2f}", f"{median_ms(v) / n:.0f}", spread(v)]
        for name, v in t.items()
    ]
    ours_over = median_ms(t["anchorlab predict"]) / median_ms(t["anchorlab model only"]) - 1
    prepost = median_ms(t["anchorlab pre/post only"]) / median_ms(t["anchorlab model only"])
    tv_over = median_ms(t["torchvision e2e"]) / median_ms(t["torchvision on resized"]) - 1
    print(f"\nload average after: {load_average()}\n")
    print(f"{n} images 640x480 PNG -> 512x384, batch 8, RetinaNet R50-FPN, {K} classes, same weights\n")
    print(table(["variant", "images/s", "ms / image", "spread (ms per folder)"], rows))
    print(f"\nanchorlab pre/post-processing alone (decode + resize + boxes back), batch 8: "
          f"{100 * prepost:.1f} % of its model time")  # fmt: skip
    print(f"difference of the totals (noisier: two large numbers): "
          f"anchorlab {100 * ours_over:.1f} % of its model time; "
          f"torchvision {100 * tv_over:.1f} %")  # fmt: skip
    for f in files:
        f.unlink()
    folder.rmdir()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--part", choices=["model", "predict", "all"], default="all")
    parser.add_argument("--images", type=int, default=64, help="images in the folder of --part predict")
    args = parser.parse_args()
    header = setup(args.threads)
    print(header)
    if args.part in {"predict", "all"}:
        predict_bench(args)
    if args.part == "predict":
        return
    torch.manual_seed(0)
    theirs = retinanet_resnet50_fpn(
        weights=None,
        weights_backbone=None,
        num_classes=K,
        min_size=SIZE,
        max_size=SIZE,
        detections_per_img=100,
    ).eval()
    ours = {"ours_nchw": build_ours(False), "ours_cl": build_ours(True)}
    image = random_images(1, SIZE)[0]

    with torch.no_grad():
        fns = {"torchvision": lambda: theirs([image])}
        fns.update({name: (lambda m=m: m([image])) for name, m in ours.items()})
        total = interleaved(fns, reps=args.reps, warmup=1)
    tv_total = median_ms(total["torchvision"])
    total_rows = [
        [name, f"{median_ms(t):.0f}", f"{median_ms(t) / tv_total:.2f}", spread(t)]
        for name, t in total.items()
    ]
    print(total_rows, flush=True)

    post_rows = []
    head = ours["ours_cl"].head
    ours_total = median_ms(total["ours_cl"])
    settings = {"score_thresh": 0.05, "topk_per_level": 1000, "nms_iou": 0.5, "max_detections": 100}
    for case, (mean, std) in {"dense": (-4.6, 1.5), "sparse": (-6.0, 1.0)}.items():
        per_level, logits, deltas, anchors, image_sizes = head_case(theirs, image, mean, std)
        tv_outputs = {
            "cls_logits": list(logits.split(per_level, dim=1)),
            "bbox_regression": list(deltas.split(per_level, dim=1)),
        }
        tv_anchors = [list(anchors.split(per_level))]
        our_outputs = {"cls_logits": logits, "box_deltas": deltas, "num_priors_per_level": per_level}
        candidates = sum(min(1000, int((lv.sigmoid() > 0.05).sum())) for lv in logits.split(per_level, dim=1))

        def run_tv(o=tv_outputs, a=tv_anchors, s=image_sizes):
            return theirs.postprocess_detections(o, a, s)

        def run_ours(o=our_outputs, a=anchors, s=image_sizes):
            return head.postprocess(o, a, s, **settings)

        tv, us, found = compare(run_tv, run_ours, args.reps)
        post_rows.append(
            ["RetinaNet", case, candidates, found, f"{tv:.1f}", f"{us:.1f}", f"{us / tv:.2f}",
             f"{100 * tv / tv_total:.1f} %", f"{100 * us / ours_total:.1f} %"]
        )  # fmt: skip
        print(post_rows[-1], flush=True)

    tv_fcos = fcos_resnet50_fpn(
        weights=None, weights_backbone=None, num_classes=K, min_size=SIZE, max_size=SIZE,
        score_thresh=0.05, nms_thresh=0.5, topk_candidates=1000, detections_per_img=100,
    ).eval()  # fmt: skip
    our_fcos = FCOSHead(256, K, (8, 16, 32, 64, 128)).eval()
    for case, (mean, std) in {"dense": (-4.6, 1.5), "sparse": (-8.0, 1.0)}.items():
        tv_args, our_outputs, points = fcos_case(tv_fcos, mean, std)
        scores = (our_outputs["cls_logits"].sigmoid() * our_outputs["centerness"].sigmoid()[..., None]).sqrt()
        candidates = sum(
            min(1000, int((lv > 0.05).sum())) for lv in scores.split(our_outputs["num_priors_per_level"], 1)
        )

        def run_tv(a=tv_args):
            return tv_fcos.postprocess_detections(*a)

        def run_ours(o=our_outputs, p=points):
            return our_fcos.postprocess(o, p, [(SIZE, SIZE)], **settings)

        tv, us, found = compare(run_tv, run_ours, args.reps)
        post_rows.append(
            ["FCOS", case, candidates, found, f"{tv:.1f}", f"{us:.1f}", f"{us / tv:.2f}", "-", "-"]
        )
        print(post_rows[-1], flush=True)

    print(f"\nload average after: {load_average()}\n")
    print(f"Inference, batch 1, {SIZE} px, whole model (median ms; ratio = / torchvision)\n")
    print(table(["variant", "ms", "ratio", "spread"], total_rows))
    print(
        "\nPost-processing alone (decode + top-k + NMS) on identical head outputs; "
        "detections asserted equal\n"
    )
    print(table(["head", "logits", "candidates into NMS", "detections", "torchvision ms", "ours ms", "ratio",
                 "tv share of total", "ours share of total (CL)"], post_rows))  # fmt: skip


if __name__ == "__main__":
    main()
