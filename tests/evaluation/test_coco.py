"""coco_metrics against pycocotools, edge cases, and detections_to_coco_results."""

from __future__ import annotations

import contextlib
import copy
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from anchorlab.evaluation import METRIC_NAMES, coco_eval_details, coco_metrics, detections_to_coco_results

pycocotools = pytest.importorskip("pycocotools")
from pycocotools.coco import COCO as RefCOCO  # noqa: E402
from pycocotools.cocoeval import COCOeval as RefCOCOeval  # noqa: E402

CATEGORIES = [
    {"id": 3, "name": "car"},
    {"id": 7, "name": "dog"},
    {"id": 18, "name": "cat"},
    {"id": 42, "name": "kite"},
]


def _make_case(seed: int = 0) -> tuple[dict, list[dict]]:
    """Ground truth + jittered detections exercising every corner COCOeval has."""
    rng = np.random.default_rng(seed)
    images, anns, dets = [], [], []
    cat_ids = [c["id"] for c in CATEGORIES]
    for image_id in range(1, 13):
        w, h = int(rng.integers(120, 400)), int(rng.integers(120, 400))
        images.append({"id": image_id * 10, "width": w, "height": h, "file_name": f"{image_id}.jpg"})
        n_gt = 0 if image_id in (3, 8) else int(rng.integers(1, 9))  # images without GT
        for _ in range(n_gt):
            side = float(rng.choice([rng.uniform(8, 30), rng.uniform(35, 90), rng.uniform(100, 115)]))
            bw, bh = side * rng.uniform(0.7, 1.3), side * rng.uniform(0.7, 1.3)
            x, y = rng.uniform(0, max(w - bw, 1)), rng.uniform(0, max(h - bh, 1))
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": image_id * 10,
                    "category_id": int(rng.choice(cat_ids)),
                    "bbox": [x, y, bw, bh],
                    "area": bw * bh * rng.uniform(0.6, 1.0),  # segmentation area, not box area
                    "iscrowd": 0,
                }
            )
        if image_id in (2, 5, 8):  # crowd regions, with and without objects around them
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": image_id * 10,
                    "category_id": cat_ids[0],
                    "bbox": [5.0, 5.0, w / 2, h / 2],
                    "area": w * h / 5,
                    "iscrowd": 1,
                }
            )
    for ann in anns:
        if ann["image_id"] in (60, 110):  # images with GT but no detections
            continue
        for _ in range(int(rng.integers(0, 4))):
            x, y, bw, bh = ann["bbox"]
            jitter = rng.normal(0, 0.12, 4) * [bw, bh, bw, bh]
            box = [x + jitter[0], y + jitter[1], max(bw + jitter[2], 1.0), max(bh + jitter[3], 1.0)]
            cat = ann["category_id"] if rng.random() < 0.85 else int(rng.choice(cat_ids))
            dets.append({"image_id": ann["image_id"], "category_id": cat, "bbox": box, "score": rng.random()})
    for img in images:  # false positives, including on images without GT
        if img["id"] in (60, 110):
            continue
        for _ in range(int(rng.integers(1, 6))):
            bw, bh = rng.uniform(5, 120, 2)
            x, y = rng.uniform(0, img["width"] - 5), rng.uniform(0, img["height"] - 5)
            cat = int(rng.choice(cat_ids))
            dets.append(
                {"image_id": img["id"], "category_id": cat, "bbox": [x, y, bw, bh], "score": rng.random()}
            )
    # Over 100 detections on one image, so maxDets=100 cuts and AR1/AR10/AR100 differ.
    for _ in range(130):
        x, y = rng.uniform(0, 100, 2)
        dets.append(
            {
                "image_id": 10,
                "category_id": cat_ids[1],
                "bbox": [x, y, 40.0, 40.0],
                "score": rng.random() * 0.5,
            }
        )
    # 14 tightly detected objects on one image: AR10 < AR100.
    for k in range(14):
        box = [2.0 + 24 * (k % 5), 2.0 + 24 * (k // 5), 20.0, 20.0]
        anns.append(
            {
                "id": len(anns) + 1,
                "image_id": 120,
                "category_id": 42,
                "bbox": box,
                "area": 400.0,
                "iscrowd": 0,
            }
        )
        dets.append(
            {"image_id": 120, "category_id": 42, "bbox": [box[0] + 1, *box[1:]], "score": rng.random()}
        )
    gt = {"images": images, "annotations": anns, "categories": CATEGORIES}
    return gt, dets


def _write(path: Path, data: object) -> Path:
    path.write_text(json.dumps(data))
    return path


def _reference(gt_path: Path, dets: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    with contextlib.redirect_stdout(io.StringIO()):
        gt = RefCOCO(str(gt_path))
        ev = RefCOCOeval(gt, gt.loadRes(copy.deepcopy(dets)), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return np.asarray(ev.stats), ev.eval["precision"]


@pytest.fixture
def case(tmp_path: Path) -> tuple[Path, list[dict]]:
    gt, dets = _make_case()
    return _write(tmp_path / "gt.json", gt), dets


def test_matches_pycocotools(case: tuple[Path, list[dict]], capsys: pytest.CaptureFixture[str]) -> None:
    gt_path, dets = case
    ref_stats, ref_precision = _reference(gt_path, dets)
    metrics = coco_metrics(gt_path, dets)
    assert capsys.readouterr().out == ""  # no COCO summary printed
    ours = np.array([metrics[k] for k in METRIC_NAMES])
    np.testing.assert_allclose(ours, ref_stats, atol=1e-6, rtol=0)
    # The case is not degenerate: every subset has objects and the numbers are far from 0 and 1.
    assert all(0.05 < metrics[k] < 0.95 for k in METRIC_NAMES), metrics
    assert metrics["AR1"] < metrics["AR10"] < metrics["AR100"]
    for k, cat in enumerate(CATEGORIES):
        p = ref_precision[:, :, k, 0, -1]
        assert metrics["per_category"][cat["name"]] == pytest.approx(p[p > -1].mean(), abs=1e-6)
        p50 = ref_precision[0, :, k, 0, -1]
        assert metrics["per_category_AP50"][cat["name"]] == pytest.approx(p50[p50 > -1].mean(), abs=1e-6)


def test_does_not_mutate_detections(case: tuple[Path, list[dict]]) -> None:
    gt_path, dets = case
    before = copy.deepcopy(dets)
    coco_metrics(gt_path, dets, per_category=False)
    assert dets == before


def test_path_input_equals_list_input(case: tuple[Path, list[dict]], tmp_path: Path) -> None:
    gt_path, dets = case
    det_path = _write(tmp_path / "dets.json", dets)
    from_list = coco_metrics(gt_path, dets)
    from_path = coco_metrics(str(gt_path), det_path)
    assert from_path == from_list


def test_empty_detections_give_zeros(tmp_path: Path) -> None:
    gt, _ = _make_case()
    gt_path = _write(tmp_path / "gt.json", gt)
    metrics = coco_metrics(gt_path, [])
    assert [metrics[k] for k in METRIC_NAMES] == [0.0] * 12
    assert set(metrics["per_category"].values()) == {0.0}


def test_missing_subset_is_minus_one(tmp_path: Path) -> None:
    gt = {
        "images": [{"id": 1, "width": 200, "height": 200}],
        "categories": [{"id": 5, "name": "a"}, {"id": 9, "name": "b"}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 5, "bbox": [10, 10, 50, 50], "area": 2500}],
    }
    dets = [{"image_id": 1, "category_id": 5, "bbox": [10, 10, 50, 50], "score": 0.9}]
    metrics = coco_metrics(_write(tmp_path / "gt.json", gt), dets)
    assert metrics["AP"] == pytest.approx(1.0) and metrics["APm"] == pytest.approx(1.0)
    assert metrics["APs"] == metrics["APl"] == metrics["ARs"] == metrics["ARl"] == -1.0
    assert metrics["per_category"] == {"a": pytest.approx(1.0), "b": -1.0}


def test_unknown_image_and_category_ids_are_named(case: tuple[Path, list[dict]]) -> None:
    gt_path, dets = case
    bad = [*dets, {"image_id": 999, "category_id": 3, "bbox": [0, 0, 5, 5], "score": 0.5}]
    with pytest.raises(ValueError, match=r"image ids not in the ground truth: 999"):
        coco_metrics(gt_path, bad)
    bad = [*dets, {"image_id": 10, "category_id": 0, "bbox": [0, 0, 5, 5], "score": 0.5}]
    with pytest.raises(ValueError, match=r"category ids not in the ground truth: 0 .*contiguous labels"):
        coco_metrics(gt_path, bad)
    with pytest.raises(ValueError, match=r"image ids not in the ground truth: '10'"):  # string id
        coco_metrics(gt_path, [{"image_id": "10", "category_id": 3, "bbox": [0, 0, 5, 5], "score": 0.5}])
    with pytest.raises(ValueError, match="result 1 is list, not a dict"):
        coco_metrics(gt_path, [dets[0], [10, 3, 0, 0, 5, 5, 0.5]])
    with pytest.raises(ValueError, match="result 0 lacks score"):
        coco_metrics(gt_path, [{"image_id": 10, "category_id": 3, "bbox": [0, 0, 5, 5]}])


def test_malformed_and_missing_files(tmp_path: Path) -> None:
    broken = tmp_path / "broken.json"
    broken.write_text('[\n  {"image_id": 1,\n  oops}\n]')
    gt_path = _write(tmp_path / "gt.json", _make_case()[0])
    with pytest.raises(ValueError, match=r"broken.json: malformed JSON at line 3, column 3"):
        coco_metrics(gt_path, broken)
    with pytest.raises(FileNotFoundError, match=r"nope\.json"):
        coco_metrics(tmp_path / "nope.json", [])
    with pytest.raises(ValueError, match="not a COCO annotation file"):
        coco_metrics(_write(tmp_path / "list.json", []), [])


def test_details_shapes_and_summary(case: tuple[Path, list[dict]]) -> None:
    gt_path, dets = case
    details = coco_eval_details(gt_path, dets)
    assert details["precision"].shape == (10, 101, 4, 4, 3)
    assert details["recall"].shape == (10, 4, 4, 3)
    assert details["category_ids"] == [3, 7, 18, 42]
    assert details["category_names"] == ["car", "dog", "cat", "kite"]
    assert details["area_ranges"] == ["all", "small", "medium", "large"]
    assert "Average Precision" in details["summary"] and "maxDets=100" in details["summary"]
    p = details["precision"][:, :, :, 0, -1]
    assert p[p > -1].mean() == pytest.approx(coco_metrics(gt_path, dets)["AP"], abs=1e-9)


def test_detections_to_coco_results_maps_ids_and_scales() -> None:
    outputs = [
        {
            "boxes": torch.tensor([[10.0, 20.0, 30.0, 60.0], [0.0, 0.0, 4.0, 2.0]]),
            "scores": torch.tensor([0.9, 0.25]),
            "labels": torch.tensor([2, 0]),
        },
        {"boxes": np.zeros((0, 4)), "scores": np.zeros(0), "labels": np.zeros(0, dtype=np.int64)},
        {"boxes": np.array([[4.0, 6.0, 8.0, 10.0]]), "scores": np.array([0.5]), "labels": np.array([1])},
    ]
    results = detections_to_coco_results(outputs, [101, 102, 103], [3, 7, 18], scale=[2.0, 1.0, (2.0, 0.5)])
    assert results == [
        {"image_id": 101, "category_id": 18, "bbox": [5.0, 10.0, 10.0, 20.0], "score": pytest.approx(0.9)},
        {"image_id": 101, "category_id": 3, "bbox": [0.0, 0.0, 2.0, 1.0], "score": 0.25},
        {"image_id": 103, "category_id": 7, "bbox": [2.0, 12.0, 2.0, 8.0], "score": 0.5},
    ]
    assert all(
        type(v) in (int, float) for r in results for v in (r["image_id"], r["category_id"], r["score"])
    )
    by_dict = detections_to_coco_results(
        outputs, [101, 102, 103], {0: 3, 1: 7, 2: 18}, scale=[2.0, 1.0, (2.0, 0.5)]
    )
    assert by_dict == results
    with pytest.raises(ValueError, match=r"labels \[2\] have no category id"):
        detections_to_coco_results(outputs[:1], [101], [3, 7])
    with pytest.raises(ValueError, match="2 detection dicts but 1 image ids"):
        detections_to_coco_results(outputs[:2], [101], [3, 7, 18])


def test_results_round_trip_through_coco_metrics(tmp_path: Path) -> None:
    gt = {
        "images": [{"id": 5, "width": 100, "height": 100}, {"id": 6, "width": 100, "height": 100}],
        "categories": [{"id": 11, "name": "a"}, {"id": 22, "name": "b"}],
        "annotations": [
            {"id": 1, "image_id": 5, "category_id": 22, "bbox": [10, 10, 40, 20], "area": 800, "iscrowd": 0},
            {"id": 2, "image_id": 6, "category_id": 11, "bbox": [50, 50, 30, 30], "area": 900, "iscrowd": 0},
        ],
    }
    # The model saw images resized by 2: boxes in model coordinates, labels contiguous.
    outputs = [
        {
            "boxes": torch.tensor([[20.0, 20.0, 100.0, 60.0]]),
            "scores": torch.tensor([0.8]),
            "labels": torch.tensor([1]),
        },
        {
            "boxes": torch.tensor([[100.0, 100.0, 160.0, 160.0]]),
            "scores": torch.tensor([0.7]),
            "labels": torch.tensor([0]),
        },
    ]
    results = detections_to_coco_results(outputs, [5, 6], [11, 22], scale=[2.0, 2.0])
    metrics = coco_metrics(_write(tmp_path / "gt.json", gt), results)
    assert metrics["AP"] == pytest.approx(1.0)
    assert detections_to_coco_results(outputs, [5, 6], [22, 11], scale=[2.0, 2.0]) != results
