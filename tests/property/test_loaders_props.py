"""Annotation loaders under random damage: COCO JSON, VOC XML and YOLO txt.

Each example builds a valid dataset, applies 1-3 random mutations (wrong types, missing keys, NaN /
infinite / huge / non-numeric numbers, negative sizes, duplicate and unknown ids, truncated or
non-UTF-8 files, bad YOLO fields and classes), and loads it under the default policy or a lenient one
(drop wherever allowed). The loader must return a ``DetectionSet`` or raise ``DataError`` naming the
file -- any other exception fails -- and must not lose what the mutations did not touch: every
untouched valid annotation is loaded with its box and class, or, when the load fails, is not listed
as a problem in the report.

``HealthCheck.too_slow`` is suppressed here only: every example writes a few small files by design.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from PIL import Image

from anchorlab.data import (
    KINDS,
    Action,
    DataError,
    DetectionSet,
    ProblemReport,
    load_coco,
    load_voc,
    load_yolo,
    write_coco,
)

LOADER_SETTINGS = settings(suppress_health_check=[HealthCheck.too_slow])
SIZES = {"a.png": (40, 30), "b.png": (50, 40), "c.png": (30, 30)}  # name -> (width, height)
CLASSES = ["cat", "dog", "fox"]
LENIENT = {k: ("drop" if Action.DROP in spec[1] else spec[0].value) for k, spec in KINDS.items()}
LENIENT["box_partly_outside"] = "clip"
POLICY = st.sampled_from([None, LENIENT, LENIENT])  # lenient loads succeed: presence is checked
WEIRD = st.sampled_from([None, "x", "", [], {}, [1, 2], True, 1.5, -1, 10**30, float("nan"), float("inf")])
HUGE_INT = 10**400  # JSON integer literal that overflows float()


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("images")
    for name, size in SIZES.items():
        Image.new("RGB", size, (90, 120, 150)).save(d / name)
    return d


def _load(fn, path: Path, *args, policy, **kw) -> tuple[DetectionSet | None, ProblemReport]:
    """Call a loader; only a ``DetectionSet`` or a ``DataError`` naming ``path`` is acceptable."""
    report = ProblemReport()
    try:
        return fn(path, *args, policy=policy, report=report, **kw), report
    except DataError as exc:
        assert str(path) in str(exc), f"DataError does not name {path}: {exc}"
        assert exc.problems and all(p.action is Action.ERROR for p in exc.problems)
        return None, report


@st.composite
def box_in(draw, width: int, height: int) -> list[float]:
    """A valid COCO ``[x, y, w, h]`` inside a ``width x height`` image."""
    x, y = draw(st.integers(0, width - 2)), draw(st.integers(0, height - 2))
    return [
        float(x),
        float(y),
        float(draw(st.integers(1, width - x))),
        float(draw(st.integers(1, height - y))),
    ]


# ---------------------------------------------------------------------------------------------- COCO


def _coco_images() -> list[dict]:
    return [
        {"id": i + 1, "file_name": n, "width": w, "height": h} for i, (n, (w, h)) in enumerate(SIZES.items())
    ]


def _coco_categories() -> list[dict]:
    return [{"id": 7, "name": "cat"}, {"id": 3, "name": "dog"}, {"id": 12, "name": "fox"}]


@st.composite
def coco_case(draw):
    """``(original dict, damaged JSON text, ids of the annotations the damage may affect)``."""
    images, cats = _coco_images(), _coco_categories()
    anns = []
    for k in range(draw(st.integers(1, 7))):
        im = draw(st.sampled_from(images))
        bbox = draw(box_in(im["width"], im["height"]))
        cat = draw(st.sampled_from([7, 3, 12]))
        anns.append({"id": 100 + 3 * k, "image_id": im["id"], "category_id": cat, "bbox": bbox, "iscrowd": 0})
    data = {"images": images, "annotations": anns, "categories": cats}
    original = json.loads(json.dumps(data))
    touched: set[int] = set()
    text = None
    for _ in range(draw(st.integers(1, 3))):
        local = ["ann_field", "bbox", "dup_ann", "unknown_ref", "image", "dup_image", "ann_type"]
        kind = draw(st.sampled_from([*local, *local, "category", "top", "truncate"]))  # mostly not fatal
        ann_ids = [a["id"] for a in original["annotations"]]
        if kind == "truncate":
            raw = json.dumps(data)
            text = raw[: draw(st.integers(0, len(raw) - 1))]
            touched |= set(ann_ids)
            break
        if kind == "top":
            key = draw(st.sampled_from(["images", "annotations", "categories"]))
            if draw(st.booleans()):
                del data[key]
            else:
                data[key] = draw(st.sampled_from([{}, "x", None, 3]))
            touched |= set(ann_ids)
            break
        if kind == "category":
            c = draw(st.integers(0, len(data["categories"]) - 1))
            cid = data["categories"][c]["id"]  # an earlier "remove" may have shifted the list
            what = draw(st.sampled_from(["remove", "dup", "id"]))
            if what == "remove":
                data["categories"].pop(c)
            elif what == "dup":
                data["categories"].append(dict(data["categories"][c]))
            else:
                data["categories"][c]["id"] = draw(WEIRD)
            touched |= {a["id"] for a in original["annotations"] if a["category_id"] == cid}
            continue
        if kind in ("image", "dup_image"):
            i = draw(st.integers(0, 2))
            iid = original["images"][i]["id"]
            if kind == "dup_image":  # a later entry repeats the id: the first is kept
                data["images"].append(
                    {**original["images"][i], "file_name": draw(st.sampled_from(list(SIZES)))}
                )
                continue
            field = draw(st.sampled_from(["id", "file_name", "width", "height"]))
            if draw(st.booleans()):
                data["images"][i].pop(field, None)
            else:
                value = draw(st.one_of(WEIRD, st.sampled_from([HUGE_INT, 0, -5, "missing.png", 2, 3, 2.5])))
                data["images"][i][field] = value
                if field == "id" and _int_like(value) is not None:  # now really shares another image's id
                    touched |= {a["id"] for a in original["annotations"] if a["image_id"] == _int_like(value)}
            touched |= {a["id"] for a in original["annotations"] if a["image_id"] == iid}
            continue
        k = draw(st.integers(0, len(data["annotations"]) - 1))
        touched.add(ann_ids[k])
        ann = data["annotations"][k]
        if kind == "ann_type":
            data["annotations"][k] = draw(st.sampled_from(["x", 5, None, [1, 2, 3]]))
        elif kind == "ann_field":
            field = draw(st.sampled_from(["id", "image_id", "category_id", "bbox", "iscrowd"]))
            if not isinstance(ann, dict):
                continue
            if draw(st.booleans()):
                ann.pop(field, None)
            else:
                other = draw(st.sampled_from(ann_ids))
                ann[field] = draw(st.one_of(WEIRD, st.just(other + 0.5), st.just(HUGE_INT)))
        elif kind == "bbox" and isinstance(ann, dict):
            bad = draw(st.sampled_from(["value", "negative", "zero", "length", "type"]))
            box = list(original["annotations"][k]["bbox"])
            if bad == "value":
                box[draw(st.integers(0, 3))] = draw(
                    st.sampled_from([float("nan"), float("inf"), -float("inf"), "abc", None, HUGE_INT, "7"])
                )
            elif bad in ("negative", "zero"):
                box[draw(st.integers(2, 3))] = -3.0 if bad == "negative" else 0.0
            elif bad == "length":
                box = box[: draw(st.sampled_from([0, 3]))] or [*box, 1.0]
            else:
                box = draw(st.sampled_from(["1 2 3 4", {"x": 1}, 4]))
            ann["bbox"] = box
        elif kind == "dup_ann" and isinstance(ann, dict):
            other = draw(st.sampled_from(ann_ids))
            ann["id"] = other
            touched.add(other)
        elif kind == "unknown_ref" and isinstance(ann, dict):
            ann[draw(st.sampled_from(["image_id", "category_id"]))] = 999
    if text is None:
        text = json.dumps(data)
    return original, text, touched


def _int_like(v) -> int | None:
    """The integer a (strict) id parser would read from ``v``, else None."""
    if isinstance(v, bool):
        return None
    if isinstance(v, int):
        return v
    if isinstance(v, float) and v.is_integer():
        return int(v)
    if isinstance(v, str):
        try:
            return int(v)
        except ValueError:
            return None
    return None


def _coco_example(section: str, index: int, field: str, value, touched: set[int]):
    """A fixed ``coco_case`` value: annotations 100, 103 (image 1) and 106 (image 2), one field set."""
    anns = [
        {"id": 100, "image_id": 1, "category_id": 7, "bbox": [1.0, 2.0, 10.0, 5.0], "iscrowd": 0},
        {"id": 103, "image_id": 1, "category_id": 3, "bbox": [20.0, 10.0, 5.0, 5.0], "iscrowd": 0},
        {"id": 106, "image_id": 2, "category_id": 12, "bbox": [0.0, 0.0, 50.0, 40.0], "iscrowd": 0},
    ]
    original = {"images": _coco_images(), "annotations": anns, "categories": _coco_categories()}
    data = json.loads(json.dumps(original))
    data[section][index][field] = value
    return original, json.dumps(data), touched


# regressions: each of these crashed or lost an untouched annotation before the loader fixes
@example(_coco_example("annotations", 0, "id", 10**30, {100}), None, False)  # int64 overflow
@example(_coco_example("annotations", 0, "id", 103.5, {100}), LENIENT, False)  # read as 103: 103 dropped
@example(_coco_example("images", 0, "id", 2.5, {100, 103}), LENIENT, False)  # read as 2: 106 moved
@example(_coco_example("images", 1, "width", HUGE_INT, {106}), None, False)  # float() overflow
@example(_coco_example("categories", 0, "id", "x", {100}), LENIENT, False)  # fatal error without problems
@LOADER_SETTINGS
@given(coco_case(), POLICY, st.booleans())
def test_coco_loader_never_crashes_and_keeps_untouched(
    tmp_path_factory, image_dir, case, policy, binary
) -> None:
    original, text, touched = case
    path = tmp_path_factory.mktemp("coco") / "ann.json"
    raw = text.encode()
    if binary:  # a stray non-UTF-8 byte somewhere in the file
        raw = raw[: len(raw) // 2] + b"\xff" + raw[len(raw) // 2 :]
        touched = {a["id"] for a in original["annotations"]}
    path.write_bytes(raw)
    ds, report = _load(load_coco, path, image_dir, policy=policy)
    event("loaded" if ds is not None else "DataError")
    untouched = [a for a in original["annotations"] if a["id"] not in touched]
    flagged = {p.annotation for p in report.problems}
    for a in untouched:
        assert a["id"] not in flagged, f"untouched annotation {a} reported: {report.problems}"
    if ds is None:
        return
    by_id = {r.id: r for r in ds.images}
    for a in untouched:
        rec = by_id[a["image_id"]]
        (j,) = np.flatnonzero(rec.ann_ids == a["id"])
        x, y, w, h = a["bbox"]
        np.testing.assert_allclose(rec.boxes[j], [x, y, x + w, y + h], atol=1e-4)
        assert int(ds.label_to_category_id(rec.labels[j])) == a["category_id"]
    # whatever was loaded survives a write_coco / load_coco round trip unchanged (the images are in
    # another folder: file_names are written relative to it, never as ../)
    again = load_coco(write_coco(ds, path.with_name("written.json")), image_dir)
    assert [c.id for c in again.categories] == [c.id for c in ds.categories]
    assert [(r.id, r.file.resolve(), r.width, r.height) for r in again.images] == [
        (r.id, r.file.resolve(), r.width, r.height) for r in ds.images
    ]
    for r, q in zip(ds.images, again.images, strict=True):
        assert r.ann_ids.tolist() == q.ann_ids.tolist() and r.labels.tolist() == q.labels.tolist()
        np.testing.assert_allclose(q.boxes, r.boxes, atol=1e-3)
        np.testing.assert_allclose(q.crowd, r.crowd, atol=1e-3)


# ----------------------------------------------------------------------------------------------- VOC


def _voc_xml(name: str, size: tuple[str | None, str | None], objects: list[dict]) -> str:
    parts = ["<annotation>", f"<filename>{name}</filename>"]
    if size != (None, None):
        dims = zip(("width", "height"), size, strict=True)
        parts.append("<size>" + "".join(f"<{t}>{v}</{t}>" for t, v in dims if v is not None) + "</size>")
    for o in objects:
        tags = "".join(f"<{t}>{v}</{t}>" for t, v in o["box"].items() if v is not None)
        name_tag = f"<name>{o['name']}</name>" if o["name"] is not None else ""
        diff = f"<difficult>{o['difficult']}</difficult>" if o.get("difficult") is not None else ""
        parts.append(f"<object>{name_tag}{diff}<bndbox>{tags}</bndbox></object>")
    parts.append("</annotation>")
    return "\n".join(parts)


BAD_NUMBER = st.sampled_from(["abc", "", "nan", "inf", "1e400", "-7", "0x10", "1,5"])


@st.composite
def voc_case(draw):
    files = {}
    for stem, (name, (w, h)) in zip(("f0", "f1", "f2"), SIZES.items(), strict=True):
        objs = []
        for _ in range(draw(st.integers(0, 4))):
            x, y, bw, bh = draw(box_in(w, h))
            box = {"xmin": int(x) + 1, "ymin": int(y) + 1, "xmax": int(x + bw), "ymax": int(y + bh)}
            objs.append(
                {"name": draw(st.sampled_from(CLASSES)), "box": box, "difficult": 0, "touched": False}
            )
        files[stem] = {"name": name, "size": (str(w), str(h)), "objects": objs, "touched": False, "cut": None}
    for _ in range(draw(st.integers(1, 3))):
        stem = draw(st.sampled_from(sorted(files)))
        f = files[stem]
        kind = draw(st.sampled_from(["truncate", "size", "object", "object", "object"]))
        if kind == "truncate":
            f["cut"], f["touched"] = draw(st.floats(0, 0.99)), True
        elif kind == "size":  # a size the file does not have invalidates every box of the image
            f["size"] = (draw(st.one_of(st.none(), BAD_NUMBER)), f["size"][1])
            f["touched"] = True
        elif f["objects"]:
            o = draw(st.sampled_from(f["objects"]))
            o["touched"] = True
            what = draw(st.sampled_from(["coord", "missing", "name", "difficult"]))
            if what == "coord":
                o["box"][draw(st.sampled_from(list(o["box"])))] = draw(BAD_NUMBER)
            elif what == "missing":
                o["box"][draw(st.sampled_from(list(o["box"])))] = None
            elif what == "name":
                o["name"] = draw(st.sampled_from([None, "unicorn", ""]))
            else:
                o["difficult"] = draw(BAD_NUMBER)
    return files


def _voc_example(difficult: str) -> dict:
    """Fixed ``voc_case`` value: one good object in each of two files, the second object of a.png damaged."""
    box = {"xmin": 2, "ymin": 3, "xmax": 12, "ymax": 9}
    good = {"name": "dog", "box": box, "difficult": 0, "touched": False}
    bad = {"name": "cat", "box": dict(box), "difficult": difficult, "touched": True}
    files = {"f0": ("a.png", [good, bad]), "f1": ("b.png", [dict(good)])}
    return {
        stem: {
            "name": n,
            "size": (str(SIZES[n][0]), str(SIZES[n][1])),
            "objects": objs,
            "touched": False,
            "cut": None,
        }
        for stem, (n, objs) in files.items()
    }


@example(_voc_example("inf"), LENIENT)  # int(float("inf")) raised OverflowError
@LOADER_SETTINGS
@given(voc_case(), POLICY)
def test_voc_loader_never_crashes_and_keeps_untouched(tmp_path_factory, image_dir, files, policy) -> None:
    root = tmp_path_factory.mktemp("voc")
    ann_dir = root / "Annotations"
    ann_dir.mkdir()
    for stem, f in files.items():
        text = _voc_xml(f["name"], f["size"], f["objects"])
        if f["cut"] is not None:
            text = text[: int(f["cut"] * len(text))]
        (ann_dir / f"{stem}.xml").write_text(text)
    ds, report = _load(load_voc, root, image_dir, CLASSES, policy=policy)
    event("loaded" if ds is not None else "DataError")
    clean = {
        str(ann_dir / f"{s}.xml")
        for s, f in files.items()
        if not f["touched"] and not any(o["touched"] for o in f["objects"])
    }
    for p in report.problems:
        assert p.file not in clean, f"a file without mutations is reported: {p}"
    if ds is None:
        return
    by_file = {r.file.name: r for r in ds.images}
    for f in files.values():
        keep = [o for o in f["objects"] if not o["touched"]]
        if f["touched"] or not keep:
            continue
        rec = by_file[f["name"]]
        got = {(tuple(b), int(lab)) for b, lab in zip(rec.boxes.tolist(), rec.labels.tolist(), strict=True)}
        for o in keep:
            b = o["box"]
            want = (
                (b["xmin"] - 1.0, b["ymin"] - 1.0, float(b["xmax"]), float(b["ymax"])),
                CLASSES.index(o["name"]),
            )
            assert want in got, f"untouched object {o} of {f['name']} lost: {got}"


# ---------------------------------------------------------------------------------------------- YOLO


@st.composite
def yolo_case(draw):
    files = {}
    for name, (w, h) in SIZES.items():
        lines = []
        for _ in range(draw(st.integers(0, 4))):
            x, y, bw, bh = draw(box_in(w, h))
            cls = draw(st.integers(0, len(CLASSES) - 1))
            lines.append(f"{cls} {(x + bw / 2) / w:.6f} {(y + bh / 2) / h:.6f} {bw / w:.6f} {bh / h:.6f}")
        files[name] = {"lines": lines, "clean": list(lines), "touched": set(), "raw": None}
    for _ in range(draw(st.integers(1, 3))):
        name = draw(st.sampled_from(sorted(files)))
        f = files[name]
        kind = draw(st.sampled_from(["fields", "class", "number", "append", "truncate", "binary"]))
        if kind in ("truncate", "binary"):
            text = "\n".join(f["lines"])
            cut = draw(st.integers(0, len(text)))
            cut_line = text[:cut].count("\n")
            f["touched"] |= (
                set(range(cut_line, len(f["lines"]))) if kind == "truncate" else set(range(len(f["lines"])))
            )
            f["raw"] = (
                text[:cut].encode()
                if kind == "truncate"
                else text[:cut].encode() + b"\xff\xfe" + text[cut:].encode()
            )
            continue
        if kind == "append" or not f["clean"]:  # appended lines keep the numbers of the others
            f["lines"].append(
                draw(st.sampled_from(["0 0.5", "x y z w h", "1 0.5 0.5 0.2 0.2 0.1", "7 0.5 0.5 0.1 0.1"]))
            )
            continue
        k = draw(st.integers(0, len(f["clean"]) - 1))
        f["touched"].add(k)
        parts = f["lines"][k].split()
        if kind == "fields":
            parts = parts[:4] if draw(st.booleans()) else [*parts, "0.5"]
        elif kind == "class":
            parts[0] = draw(st.sampled_from(["3", "99", "-1", "1.5", "inf", "nan", "1e400"]))
        else:
            parts[draw(st.integers(1, max(1, len(parts) - 1)))] = draw(
                st.sampled_from(["abc", "nan", "inf", "-inf", "1e400", "--1"])
            )
        f["lines"][k] = " ".join(parts)
    return files


def _yolo_example(bad_line: str | None = None, raw: bytes | None = None) -> dict:
    """Fixed ``yolo_case`` value: a good line per file; a.png gets ``bad_line`` appended or ``raw`` bytes."""
    good = "1 0.500000 0.500000 0.250000 0.250000"
    files = {n: {"lines": [good], "clean": [good], "touched": set(), "raw": None} for n in SIZES}
    if bad_line is not None:
        files["a.png"]["lines"].append(bad_line)
    if raw is not None:
        files["a.png"].update(raw=raw, touched={0})
    return files


@example(_yolo_example("inf 0.5 0.5 0.1 0.1"), LENIENT)  # int(inf) raised OverflowError
@example(_yolo_example(raw=b"0 0.5 0.5 0.1 0.1\n\xff\xfe"), None)  # not UTF-8: UnicodeDecodeError
@LOADER_SETTINGS
@given(yolo_case(), POLICY)
def test_yolo_loader_never_crashes_and_keeps_untouched(tmp_path_factory, image_dir, files, policy) -> None:
    root = tmp_path_factory.mktemp("yolo")
    (root / "images").mkdir()
    (root / "labels").mkdir()
    for name, f in files.items():
        shutil.copy(image_dir / name, root / "images" / name)
        raw = f["raw"] if f["raw"] is not None else ("\n".join(f["lines"]) + "\n").encode()
        (root / "labels" / name).with_suffix(".txt").write_bytes(raw)
    ds, report = _load(load_yolo, root, CLASSES, policy=policy)
    event("loaded" if ds is not None else "DataError")
    for name, f in files.items():
        lbl = str((root / "labels" / name).with_suffix(".txt"))
        if f["raw"] is None:  # readable text: problems are per line, none for the whole file
            assert not [p for p in report.problems if p.file == lbl and p.line is None], report.problems
        lines = {p.line for p in report.problems if p.file == lbl}
        for k in set(range(len(f["clean"]))) - f["touched"]:
            assert k + 1 not in lines, f"untouched line {k + 1} of {name} reported: {report.problems}"
    if ds is None:
        return
    by_file = {r.file.name: r for r in ds.images}
    for name, f in files.items():
        w, h = SIZES[name]
        rec = by_file[name]
        for k in set(range(len(f["clean"]))) - f["touched"]:
            cls, cx, cy, bw, bh = (float(v) for v in f["clean"][k].split())
            want = np.array([(cx - bw / 2) * w, (cy - bh / 2) * h, (cx + bw / 2) * w, (cy + bh / 2) * h])
            hit = (np.abs(rec.boxes - want).max(axis=1) < 1e-3) & (rec.labels == int(cls))
            assert hit.any(), f"untouched line {f['clean'][k]!r} of {name} lost: {rec.boxes}, {rec.labels}"
