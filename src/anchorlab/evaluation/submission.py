"""Results files for the COCO evaluation server (test-dev / test-challenge have no public annotations).

The server takes a zip holding one JSON list of results named ``detections_<testset>_<alg>_results.json``
(``testset``: ``test-dev2017`` or ``test-challenge2017``; ``alg``: a name of the method without
underscores, which the server uses as separators). Each result is ``{image_id, category_id,
bbox: [x, y, w, h], score}`` with the image-info file's image ids and category ids, at most 100 per image.
"""

from __future__ import annotations

import json
import re
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from anchorlab.io import atomic_write, write_text

__all__ = ["SUBMISSION_INFERENCE", "TESTSETS", "algorithm_name", "submission_name", "write_results"]

#: Test splits the server evaluates.
TESTSETS = ("test-dev2017", "test-challenge2017")
#: Inference settings of a benchmark submission: every detection scoring above 0.05, 100 per image.
SUBMISSION_INFERENCE: dict[str, Any] = {"score_thresh": 0.05, "max_detections": 100}


def algorithm_name(text: str) -> str:
    """``text`` as a server-safe method name: letters, digits and ``-`` only (``_``, ``.`` -> ``-``)."""
    name = re.sub(r"[^A-Za-z0-9-]+", "-", text).strip("-")
    if not name:
        raise ValueError(f"algorithm name {text!r} has no letters or digits")
    return name


def submission_name(testset: str, alg: str) -> str:
    """``detections_<testset>_<alg>_results.json``; ``alg`` is made server-safe (``algorithm_name``)."""
    if testset not in TESTSETS:
        raise ValueError(f"testset {testset!r} is not one of {', '.join(TESTSETS)}")
    return f"detections_{testset}_{algorithm_name(alg)}_results.json"


def write_results(
    results: Sequence[dict[str, Any]], out: str | Path, *, zip_as: str | None = None
) -> list[Path]:
    """Write ``results`` (COCO result dicts) to ``out`` as JSON and, with ``zip_as`` (a
    ``submission_name``), also ``out`` with suffix ``.zip`` holding the same JSON as ``zip_as``; both
    atomically. Returns the paths written."""
    out = Path(out)
    text = json.dumps(list(results), separators=(",", ":"))
    written = [write_text(out, text + "\n")]
    if zip_as is not None:
        zip_path = out.with_suffix(".zip")

        def write(f: Any) -> None:
            with zipfile.ZipFile(f, "w", compression=zipfile.ZIP_DEFLATED) as archive:
                archive.writestr(zip_as, text + "\n")

        written.append(atomic_write(zip_path, write))
    return written
