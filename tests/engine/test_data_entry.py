"""What training checks about its data before it starts: the user's files are never overwritten by the
synthetic generator, missing paths are named, val categories are matched by id, val images decode, names
and paths are printable."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from anchorlab.config import load_config
from anchorlab.data import (
    Category,
    DataError,
    DetectionSet,
    ImageRecord,
    align_categories,
    check_printable,
    plot_text,
)
from anchorlab.engine.common import ensure_synthetic, prepare_data

SPEC = "data.synthetic={images: 4, seed: 0, size: 64, min_object: 16, max_object: 32}"


def _digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in folder.rglob("*")
        if p.is_file()
    }


def test_synthetic_never_overwrites_a_users_dataset(tmp_path):
    mine = tmp_path / "mine"
    (mine / "images").mkdir(parents=True)
    (mine / "train.json").write_text('{"images": [], "annotations": [], "categories": []}')
    Image.new("RGB", (8, 8), (1, 2, 3)).save(mine / "images" / "img_000000.png")
    before = _digest(mine)
    cfg = load_config(None, [f"data.train={mine / 'train.json'}", f"data.val={mine / 'val.json'}", SPEC])
    with pytest.raises(FileNotFoundError, match=r"data.val .*val.json does not exist.*not empty"):
        ensure_synthetic(cfg)
    assert _digest(mine) == before  # byte-identical, nothing added
    typo = load_config(None, [f"data.train={mine / 'trian.json'}", SPEC])
    with pytest.raises(FileNotFoundError, match=r"data.train .*trian.json does not exist.*generates only"):
        ensure_synthetic(typo)
    assert _digest(mine) == before


def test_synthetic_is_generated_into_an_empty_or_absent_folder_only_once(tmp_path):
    folder = tmp_path / "synth"
    cfg = load_config(None, [f"data.train={folder / 'train.json'}", f"data.val={folder / 'val.json'}", SPEC])
    ensure_synthetic(cfg)
    first = _digest(folder)
    assert "train.json" in first and "val.json" in first
    ensure_synthetic(cfg)  # there: untouched
    assert _digest(folder) == first
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]  # no temporary folder left


def test_a_missing_val_without_synthetic_is_an_error_naming_it(tmp_path):
    folder = tmp_path / "synth"
    cfg = load_config(None, [f"data.train={folder / 'train.json'}", f"data.val={folder / 'val.json'}", SPEC])
    ensure_synthetic(cfg)
    cfg = load_config(None, [f"data.train={folder / 'train.json'}", f"data.val={tmp_path / 'vla.json'}"])
    with pytest.raises(FileNotFoundError, match=r"data.val: .*vla.json does not exist"):
        prepare_data(cfg)


def _set(cat_ids: list[int], labels: list[int], names=None) -> DetectionSet:
    names = names or [f"c{i}" for i in cat_ids]
    boxes = np.tile(np.array([0, 0, 5, 5], np.float32), (len(labels), 1))
    rec = ImageRecord(1, Path("a.png"), 10, 10, boxes,
                      np.asarray(labels, np.int64), np.arange(len(labels), dtype=np.int64))  # fmt: skip
    return DetectionSet([rec], [Category(i, n) for i, n in zip(cat_ids, names, strict=True)])


def test_val_categories_are_matched_by_id_never_by_position():
    model = [{"id": 1, "name": "c1"}, {"id": 2, "name": "c2"}]
    # an unused extra id 0 (Roboflow's superclass): warned, ignored; labels follow the ids
    val = _set([0, 1, 2], [2, 1])  # objects of id 2 and id 1
    with pytest.warns(UserWarning, match=r"category id\(s\) 0 \('c0'\) have no annotations"):
        aligned = align_categories(val, model)
    assert [c.id for c in aligned.categories] == [1, 2]
    assert aligned.label_to_category_id(aligned.images[0].labels).tolist() == [2, 1]
    # an extra id in use: an error naming it, nothing relabelled
    with pytest.raises(DataError, match=r"category id\(s\) 7 \('c7'\) are used by annotations"):
        align_categories(_set([1, 7], [1]), model)
    # fewer classes than the model: warned (AP n/a), no IndexError
    with pytest.warns(UserWarning, match=r"no category id\(s\) 2 \('c2'\)"):
        fewer = align_categories(_set([1], [0]), model)
    assert fewer.num_classes == 2 and fewer.images[0].labels.tolist() == [0]


def test_prepare_data_decodes_val_before_training_and_matches_its_categories(tmp_path):
    for name in ("a.png", "b.png"):
        Image.new("RGB", (32, 32)).save(tmp_path / name)
    cats = [{"id": 1, "name": "x"}, {"id": 2, "name": "y"}]
    ann = [{"id": 1, "image_id": 1, "category_id": 2, "bbox": [1, 1, 9, 9]}]
    train = {"images": [{"id": 1, "file_name": "a.png", "width": 32, "height": 32}], "annotations": ann,
             "categories": cats}  # fmt: skip
    val = {"images": [{"id": 1, "file_name": "b.png", "width": 32, "height": 32}],
           "annotations": [{"id": 1, "image_id": 1, "category_id": 2, "bbox": [1, 1, 9, 9]}],
           "categories": [{"id": 0, "name": "all"}, *cats]}  # fmt: skip
    (tmp_path / "train.json").write_text(json.dumps(train))
    (tmp_path / "val.json").write_text(json.dumps(val))
    cfg = load_config(None, [f"data.train={tmp_path / 'train.json'}", f"data.val={tmp_path / 'val.json'}"])
    with pytest.warns(UserWarning, match="no annotations"):
        _, v = prepare_data(cfg)
    assert v.label_to_category_id(v.images[0].labels).tolist() == [2]
    (tmp_path / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)  # unreadable val image
    cfg = load_config(None, [f"data.train={tmp_path / 'train.json'}", f"data.val={tmp_path / 'val.json'}"])
    with pytest.raises(DataError, match=r"image 1: image_unreadable"):
        prepare_data(cfg)


def test_names_and_paths_must_be_printable_and_dollars_are_drawn_literally():
    check_printable(_set([1], [0], names=["$5 bill [x]"]))  # fine: escaped where drawn / printed
    with pytest.raises(DataError, match=r"category id 1, 'a\\nb', holds control character"):
        check_printable(_set([1], [0], names=["a\nb"]))
    bad = _set([1], [0])
    bad.images[0].file = Path("caf\udce9.png")  # undecodable byte in a file name
    with pytest.raises(DataError, match="not valid UTF-8"):
        check_printable(bad)
    assert plot_text("$5 $bill") == r"\$5 \$bill"
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    ax.set_title(plot_text("cost $x^2"))  # unbalanced / math-looking names draw as text
    ax.text(0, 0, plot_text("$"))
    fig.canvas.draw()
    plt.close(fig)
