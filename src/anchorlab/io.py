"""Atomic output files: a failed write (full disk, impossible folder) names the file and keeps the old one.

Every user-facing file anchorlab writes (checkpoints, reports, JSON results, plots, ONNX) goes through
:func:`atomic_path`: the content is written to a temporary file in the same folder, flushed and fsynced,
then renamed over the target with ``os.replace`` (atomic on POSIX), so readers see either the previous
complete file or the new complete one. On any error the temporary file is removed and an
:class:`OutputError` (an ``OSError``, so every CLI command's ``OSError`` handler reports it in one line)
names the file.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

__all__ = [
    "OutputError",
    "atomic_path",
    "atomic_write",
    "make_dir",
    "save_figure",
    "write_json",
    "write_text",
]


class OutputError(OSError):
    """An output file or folder that could not be written; earlier files are left as they were."""

    def __init__(self, message: str, errno: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.errno = errno

    def __str__(self) -> str:
        return self.message


def _reason(exc: OSError) -> str:
    return exc.strerror or str(exc)


def make_dir(path: str | Path) -> Path:
    """Create the folder ``path`` (and its parents); :class:`OutputError` naming it when impossible."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        blocker = next((p for p in (path, *path.parents) if p.exists() and not p.is_dir()), None)
        why = f"{blocker} is a file, not a folder" if blocker is not None else _reason(exc)
        raise OutputError(f"cannot create output folder {path}: {why}", exc.errno) from exc
    return path


def _fsync_dir(folder: Path) -> None:
    """Make the rename itself durable (best effort: some filesystems refuse to fsync folders)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` for a writer that wants a file name; on a clean exit the
    file is fsynced and renamed over ``path``, on any error it is removed and ``path`` is untouched.

    OSErrors (full disk, missing folder, ...) become :class:`OutputError` naming ``path``.
    """
    path = Path(path)
    make_dir(path.parent)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        yield tmp
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError) and not isinstance(exc, OutputError):
            raise OutputError(f"cannot write {path}: {_reason(exc)}; earlier files kept", exc.errno) from exc
        raise
    _fsync_dir(path.parent)


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], Any]) -> Path:
    """Call ``write(fileobj)`` on a new binary file, then atomically move it to ``path`` (see above)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        # 0o666 minus the umask, like open(): the final file gets the usual permissions
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
    return path


def write_text(path: str | Path, text: str) -> Path:
    """Atomically write UTF-8 ``text`` to ``path``."""
    data = text.encode("utf-8")
    return atomic_write(path, lambda f: f.write(data))


def write_json(path: str | Path, obj: Any, indent: int | None = 2) -> Path:
    """Atomically write ``obj`` as JSON (serialised before the file is opened, so a bad object leaves
    no trace)."""
    return write_text(path, json.dumps(obj, indent=indent))


def save_figure(fig: Any, path: str | Path, dpi: int = 100) -> Path:
    """Atomically save a matplotlib figure as PNG and close it (also when the write fails)."""
    import matplotlib.pyplot as plt

    try:
        return atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=dpi))
    finally:
        plt.close(fig)
