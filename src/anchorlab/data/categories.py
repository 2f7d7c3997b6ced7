"""Categories across files: match a dataset to a model's categories by id, and check names and paths
before a long run depends on them.

A model's label ``i`` is its ``categories[i]`` (the training data's, stored in the checkpoint); an
evaluation file may list its categories in another order, add ids (Roboflow's superclass ``0``) or lack
some. ``align_categories`` re-indexes the file's labels to the model's by category id -- never by
position -- so a prediction of label ``i`` is scored against the same category id it was trained on.
"""

from __future__ import annotations

import dataclasses
import unicodedata
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from anchorlab.data.core import Category, DataError, DetectionSet

__all__ = ["align_categories", "as_categories", "check_printable", "plot_text"]


def as_categories(categories: Sequence[Category | Mapping[str, Any]]) -> list[Category]:
    """``Category`` objects from ``Category``s or checkpoint dicts ``{"id": int, "name": str}``."""
    return [
        c if isinstance(c, Category) else Category(int(c["id"]), str(c.get("name", c["id"])))
        for c in categories
    ]


def _named(ids: Sequence[int], names: Mapping[int, str]) -> str:
    return ", ".join(f"{i} ({names[i]!r})" for i in ids)


def align_categories(
    ds: DetectionSet, categories: Sequence[Category | Mapping[str, Any]], *, model: str = "the model"
) -> DetectionSet:
    """``ds`` with its labels re-indexed to ``categories`` (the model's, in label order), matched by id.

    Category ids of ``ds`` that the model lacks are a ``DataError`` naming them when an annotation uses
    them (its boxes could never be detected: the AP would be silently wrong), and a warning otherwise
    (e.g. an unused superclass). Model ids absent from ``ds`` are a warning (no ground truth: AP n/a).
    The same id with another name is a warning; the model's name is kept. Returns a new set whose
    ``categories`` are the model's; nothing is relabelled by position."""
    cats = as_categories(categories)
    model_ids = [c.id for c in cats]
    if len(set(model_ids)) != len(model_ids):
        raise DataError(f"{model} lists a category id more than once: {model_ids}")
    file_names = {c.id: c.name for c in ds.categories}
    where = ds.source if ds.source is not None else "the data"
    extra = [c.id for c in ds.categories if c.id not in set(model_ids)]
    if extra:
        used = np.zeros(len(ds.categories), bool)
        for r in ds.images:
            used[r.labels] = True
            used[np.asarray(getattr(r, "crowd_labels", []), np.int64)] = True
        in_use = [c.id for k, c in enumerate(ds.categories) if c.id in extra and used[k]]
        if in_use:
            known = _named(model_ids, {c.id: c.name for c in cats})
            raise DataError(
                f"{where}: category id(s) {_named(in_use, file_names)} are used by annotations but"
                f" {model} has no such category (its ids: {known}); nothing is relabelled"
            )
        warnings.warn(f"{where}: category id(s) {_named(extra, file_names)} have no annotations and are not"
                      f" in {model}: ignored", stacklevel=2)  # fmt: skip
    missing = [i for i in model_ids if i not in file_names]
    if missing:
        names = {c.id: c.name for c in cats}
        warnings.warn(f"{where}: no category id(s) {_named(missing, names)} of {model}: their AP is n/a",
                      stacklevel=2)  # fmt: skip
    renamed = [
        (c.id, file_names[c.id], c.name) for c in cats if c.id in file_names and file_names[c.id] != c.name
    ]
    if renamed:
        pairs = ", ".join(f"{i}: {a!r} here, {b!r} in {model}" for i, a, b in renamed[:10])
        warnings.warn(f"{where}: same category id, other name ({pairs})", stacklevel=2)
    table = np.full(len(ds.categories), -1, np.int64)
    position = {i: k for k, i in enumerate(model_ids)}
    for k, c in enumerate(ds.categories):
        table[k] = position.get(c.id, -1)
    if (table == np.arange(len(table))).all() and len(table) == len(cats) and not renamed:
        return ds
    images = []
    for r in ds.images:
        crowd_labels = np.asarray(getattr(r, "crowd_labels", np.zeros(0, np.int64)), np.int64)
        keep = table[crowd_labels] >= 0 if len(crowd_labels) else np.zeros(0, bool)
        rec = dataclasses.replace(
            r, labels=table[r.labels], crowd=r.crowd[keep] if len(crowd_labels) else r.crowd
        )
        rec.crowd_labels = table[crowd_labels[keep]] if len(crowd_labels) else crowd_labels
        images.append(rec)
    return DetectionSet(images, cats, ds.source, ds.max_pixels)


def _unprintable(text: str) -> str | None:
    """Why ``text`` cannot be shown as one line of UTF-8, or None."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "is not valid UTF-8 (undecodable bytes)"
    bad = [ch for ch in text if unicodedata.category(ch) in {"Cc", "Cf", "Zl", "Zp"} and ch not in "\u200d"]
    if bad:
        return f"holds control character(s) {', '.join(repr(c) for c in dict.fromkeys(bad))}"
    return None


def check_printable(*sets: DetectionSet | None) -> None:
    """Raise ``DataError`` naming the first category name or image path that could not be printed,
    written to JSON / CSV or drawn as one line (undecodable bytes, newlines or other control
    characters) -- checked before training, so no run dies at its report."""
    for ds in sets:
        if ds is None:
            continue
        where = ds.source if ds.source is not None else "the data"
        for c in ds.categories:
            if not c.name.strip():
                raise DataError(f"{where}: category id {c.id} has an empty name")
            if (why := _unprintable(c.name)) is not None:
                raise DataError(f"{where}: the name of category id {c.id}, {c.name!r}, {why}: rename it")
        for r in ds.images:
            if (why := _unprintable(str(r.file))) is not None:
                raise DataError(f"{where}: the path of image {r.id}, {str(r.file)!r}, {why}: rename the file")


def plot_text(text: str) -> str:
    """``text`` as matplotlib draws it literally: ``$`` escaped so a name like ``$5 bill`` is not read
    as mathtext (which would fail on an unbalanced ``$`` or print math)."""
    return str(text).replace("$", r"\$")
