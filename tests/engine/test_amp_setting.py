"""``train.amp: auto``: mixed precision where the hardware runs it natively, float32 elsewhere."""

from __future__ import annotations

import pytest
import torch

from anchorlab.config import ConfigError, load_config
from anchorlab.engine import common


@pytest.mark.parametrize("native", [True, False])
def test_auto_follows_native_bf16_on_cpu(monkeypatch, native: bool) -> None:
    monkeypatch.setattr(common, "cpu_has_native_bf16", lambda: native)
    assert common.resolve_amp("auto", torch.device("cpu")) is native
    assert common.resolve_amp("auto", torch.device("cuda")) is True
    assert common.resolve_amp(True, torch.device("cpu")) is True
    assert common.resolve_amp(False, torch.device("cuda")) is False


def test_config_accepts_auto_and_rejects_other_words() -> None:
    assert load_config(None, ["train.amp=auto"]).train.amp == "auto"
    assert load_config(None, ["train.amp=true"]).train.amp is True
    with pytest.raises(ConfigError, match=r"train\.amp"):
        load_config(None, ["train.amp=sometimes"])
