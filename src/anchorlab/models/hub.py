"""torchvision's published weights through torch's hub cache, opt-in, checksum-verified.

Files live in ``torch.hub.get_dir()/checkpoints`` (``$TORCH_HOME/hub/checkpoints``, by default
``~/.cache/torch/hub/checkpoints``) under the URL's file name, e.g. ``resnet50-11ad3fa6.pth``. The digits
after the last ``-`` are the first hex digits of the file's SHA-256: a download is verified against
them by ``torch.hub.load_state_dict_from_url(..., check_hash=True)``, and a file found in the cache
(e.g. copied there by hand on an offline machine) is verified here before it is read. Files are read
with ``torch.load(weights_only=True)``: nothing in them executes.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlparse

import torch

__all__ = ["WeightsDownloadError", "cache_dir", "hub_state_dict", "read_state_dict"]


class WeightsDownloadError(OSError):
    """Published weights that could not be fetched or verified; one line naming the cache file."""


def cache_dir() -> Path:
    """Where torch's hub keeps downloaded weights (honours ``TORCH_HOME``)."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def _verify(path: Path, url: str) -> None:
    match = torch.hub.HASH_REGEX.search(path.name)
    if match is None:
        return
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    if not digest.hexdigest().startswith(match.group(1)):
        raise WeightsDownloadError(
            f"{path} does not match the SHA-256 prefix {match.group(1)} in its name (truncated or wrong "
            f"file): delete it and retry, or place the file from {url} there"
        )


def hub_state_dict(url: str, what: str) -> dict[str, torch.Tensor]:
    """The state dict published at ``url`` (``what`` names it in errors), from the hub cache or downloaded.

    Raises ``WeightsDownloadError`` (one line: the URL, the cache folder and the file name to place there
    by hand) when offline, behind a proxy that refuses it, or when the checksum does not match.
    """
    name = os.path.basename(urlparse(url).path)
    folder = cache_dir()
    cached = folder / name
    if cached.is_file():
        _verify(cached, url)
    try:
        state = torch.hub.load_state_dict_from_url(
            url, progress=False, check_hash=True, map_location="cpu", weights_only=True
        )
    except Exception as exc:  # URLError, proxy errors, hash mismatch, a cache folder we cannot write
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise WeightsDownloadError(
            f"could not download the {what} weights from {url} ({reason}); offline, download that file "
            f"elsewhere and place it in {folder} as {name} (the torch hub cache; TORCH_HOME moves it)"
        ) from None
    if not isinstance(state, Mapping):
        raise WeightsDownloadError(f"{cached} does not hold a state dict (got {type(state).__name__})")
    return dict(state)


def read_state_dict(path: str | Path, what: str) -> dict[str, torch.Tensor]:
    """The tensors of a local state dict file, read with ``weights_only=True``: a plain state dict or one
    under ``model`` / ``state_dict`` (an anchorlab checkpoint). ``what`` names the setting in errors."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} file {path} does not exist")
    from anchorlab.engine.checkpoint import CheckpointError, safe_torch_load

    try:  # weights_only: a file that needs pickled code is refused, never run
        state = safe_torch_load(path, map_location="cpu")
    except CheckpointError as exc:
        raise ValueError(f"{what}: {exc}") from None
    if isinstance(state, Mapping):
        for wrapper in ("model", "state_dict"):
            inner = state.get(wrapper)
            if isinstance(inner, Mapping):
                state = inner
                break
    tensors = (
        {k: v for k, v in state.items() if isinstance(v, torch.Tensor)} if isinstance(state, Mapping) else {}
    )
    if not tensors:
        raise ValueError(
            f"{what} file {path} does not hold a state dict (a mapping of names to tensors); "
            f"got {type(state).__name__}"
        )
    return tensors
