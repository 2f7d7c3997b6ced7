"""A training run's folder: one run per folder, one process at a time, nothing of an earlier run lost.

``RunFolder(path, resume=..., exist_ok=...)`` (rank 0 only) takes an exclusive lock (``path/.lock``,
``fcntl.flock``: released by the kernel when the process ends, even on SIGKILL), removes the ``.*.tmp``
files an interrupted atomic write left behind, and decides where this run writes:

- ``resume``: into ``path``; the folder must hold a resumable checkpoint (``last.pt``, or an older
  anchorlab's ``checkpoint.pt``).
- a fresh run into a folder that holds no run: into ``path``.
- a fresh run into a folder that holds a run: refused (:class:`RunFolderExists`) unless ``exist_ok``; then
  the run writes into ``path/.incoming/`` and :meth:`promote` (called once its first checkpoint is
  written) deletes the earlier run's files and moves the new ones in. A run that fails before that leaves
  the earlier run exactly as it was.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path
from typing import IO

from anchorlab.engine.checkpoint import BEST, LAST, LEGACY, CheckpointError
from anchorlab.io import make_dir, write_text

__all__ = ["RUN_FILES", "RunFolder", "RunFolderBusy", "RunFolderExists", "truncate_log"]

#: What a training run writes into its folder (the earlier run's files an ``--exist-ok`` run replaces).
RUN_FILES = (
    LAST,
    LEGACY,
    BEST,
    "log.jsonl",
    "results.csv",
    "metrics.json",
    "summary.json",
    "config.yaml",
    "environment.json",
    "fit_anchors.json",
    "auto_budget.json",
    "init_from.json",
    "tensorboard",
    "report.html",
    "report.json",
    "curves_loss.png",
    "curves_ap.png",
    "pr_curves.png",
    "confusion_matrix.png",
    "val_predictions.png",
)
#: Files whose presence means the folder holds a run.
_RUN_MARKERS = (LAST, LEGACY, BEST, "log.jsonl", "summary.json", "config.yaml")
LOCK, INCOMING = ".lock", ".incoming"


class RunFolderExists(FileExistsError):
    """A fresh run was asked to write into a folder that holds a run (CLI exit status 2)."""


class RunFolderBusy(RuntimeError):
    """Another process holds the run folder's lock (CLI exit status 2)."""


def _lock(handle: IO[str], folder: Path) -> None:
    try:
        import fcntl
    except ImportError:  # no flock on this platform: one process per folder is the user's job
        return
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.seek(0)
        owner = handle.read().strip() or "unknown"
        raise RunFolderBusy(
            f"run folder {folder} is in use by another training (process {owner}; lock {folder / LOCK}): "
            "wait for it to finish or choose another --out"
        ) from None


class RunFolder:
    """The folder ``path`` of one training run, locked for this process until :meth:`close`."""

    def __init__(self, path: str | Path, *, resume: bool = False, exist_ok: bool = False) -> None:
        self.root = Path(path)
        self.resume, self.exist_ok = resume, exist_ok
        self.work = self.root  # where files are written now (``.incoming`` until promoted)
        self._handle: IO[str] | None = None

    # -- opening ---------------------------------------------------------------------------------
    def open(self) -> RunFolder:
        """Lock the folder, check that this run may write into it, clean up (see the module doc). A
        refused run changes nothing in the folder."""
        make_dir(self.root)
        self._handle = open(self.root / LOCK, "a+")  # noqa: SIM115  (held until close)
        try:
            _lock(self._handle, self.root)
            self._check()
            self._clean_leftovers()
            if not self.resume and self.holds_run():
                self.work = make_dir(self.root / INCOMING)
            self._handle.seek(0)
            self._handle.truncate()
            self._handle.write(f"{os.getpid()}\n")  # named in a second process's error
            self._handle.flush()
        except BaseException:
            self.close()
            raise
        return self

    def holds_run(self) -> bool:
        return any((self.root / name).exists() for name in _RUN_MARKERS)

    def _clean_leftovers(self) -> None:
        """Temporary files of interrupted atomic writes, and an interrupted ``--exist-ok`` run's files."""
        for folder in (self.root, self.root / "tensorboard"):
            for tmp in folder.glob(".*.tmp") if folder.is_dir() else ():
                tmp.unlink(missing_ok=True)
        shutil.rmtree(self.root / INCOMING, ignore_errors=True)

    def _check(self) -> None:
        if self.resume:
            if not (self.root / LAST).is_file() and not (self.root / LEGACY).is_file():
                raise CheckpointError(f"nothing to resume: {self.root} holds no {LAST}")
        elif self.holds_run() and not self.exist_ok:
            raise RunFolderExists(
                f"{self.root} already holds a training run; continue it with --resume, or replace it "
                "with --exist-ok (its files are replaced once the new run writes its first checkpoint)"
            )

    # -- writing ---------------------------------------------------------------------------------
    def path(self, name: str) -> Path:
        """Where this run writes ``name`` now."""
        return self.work / name

    def final_path(self, name: str) -> Path:
        """Where ``name`` ends up (after :meth:`promote`)."""
        return self.root / name

    @property
    def staged(self) -> bool:
        return self.work != self.root

    def promote(self) -> None:
        """Replace the earlier run's files by this run's (no-op unless staged in ``.incoming``)."""
        if not self.staged:
            return
        for name in RUN_FILES:
            old = self.root / name
            if old.is_dir():
                shutil.rmtree(old)
            else:
                old.unlink(missing_ok=True)
        for entry in sorted(self.work.iterdir()):
            os.replace(entry, self.root / entry.name)
        self.work.rmdir()
        self.work = self.root

    def close(self) -> None:
        """Drop what a run that never promoted wrote, and release the lock."""
        if self.staged:
            shutil.rmtree(self.work, ignore_errors=True)
            self.work = self.root
        if self._handle is not None:
            with contextlib.suppress(OSError):
                self._handle.close()  # closing releases the flock
            self._handle = None


def truncate_log(path: Path, iteration: int) -> None:
    """Keep the records of ``log.jsonl`` up to ``iteration`` (a resumed run logs the rest again); an
    incomplete last line (a kill mid-write) is dropped."""
    if not path.is_file():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and int(record.get("iteration", 0)) <= iteration:
            keep.append(line)
    write_text(path, "".join(f"{line}\n" for line in keep))
