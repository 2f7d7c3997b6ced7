"""``anchorlab.train``: one call from a notebook or script to a trained run folder.

Config values are keyword arguments with ``__`` for each dot of the key (``train__iterations=10`` sets
``train.iterations``; ``model__backbone__name="resnet50"``), given as Python values (not YAML strings).
The other keyword arguments are the run's options: ``out``, ``resume``, ``exist_ok``, ``evaluate``,
``show_progress``.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from anchorlab.config import Config, ConfigError, _set, config_from_dict, load_config
from anchorlab.engine.callbacks import Callback

__all__ = ["resolve_config", "train"]


def resolve_config(config_or_path: str | Path | Config | Mapping[str, Any], **overrides: Any) -> Config:
    """A :class:`Config` from a YAML path, a ``Config`` or a config dict, with ``section__key=value``
    overrides applied; ``train.out`` defaults to ``runs/<YAML file stem>`` when neither sets it."""
    if isinstance(config_or_path, Config):
        tree, source = config_or_path.model_dump(mode="json"), "config"
    elif isinstance(config_or_path, Mapping):
        tree, source = copy.deepcopy(dict(config_or_path)), "config dict"
    else:
        path = Path(config_or_path)
        base = load_config(path)
        tree, source = base.model_dump(mode="json"), str(path)
        if "out" not in base.train.model_fields_set:
            tree["train"]["out"] = str(Path("runs") / path.stem)
    for name, value in overrides.items():
        if "__" not in name:
            raise ConfigError(
                f"unknown argument {name!r}: config values are section__key=value "
                "(e.g. train__iterations=10); run options are out, resume, exist_ok, evaluate, show_progress"
            )
        _set(tree, name.replace("__", "."), value)
    return config_from_dict(tree, source).pin({name.replace("__", ".") for name in overrides})


def train(
    config_or_path: str | Path | Config | Mapping[str, Any],
    callbacks: Sequence[Callback] | None = None,
    *,
    out: str | Path | None = None,
    resume: bool = False,
    exist_ok: bool = False,
    evaluate: bool = True,
    show_progress: bool = True,
    **overrides: Any,
) -> dict[str, Any]:
    """Train from a YAML config path (or a ``Config`` / config dict) and return the run summary (the
    dict ``summary.json`` holds: ``checkpoint`` = ``last.pt``, ``best_checkpoint``, ``metrics``, ...).

    ``overrides``: ``section__key=value`` config values, e.g. ``train__iterations=10``. ``out``: the run
    folder (default: the config's ``train.out``, else ``runs/<config file stem>``). ``callbacks``:
    :class:`~anchorlab.engine.callbacks.Callback` objects. A folder that already holds a run is refused
    (:class:`~anchorlab.engine.run_folder.RunFolderExists`) unless ``resume`` or ``exist_ok``.

    Example::

        import anchorlab
        summary = anchorlab.train("configs/retinanet_r18_fpn_quick.yaml", out="runs/nb", train__epochs=5)
    """
    from anchorlab.engine.train import train as run_train

    cfg = resolve_config(config_or_path, **overrides)
    if out is not None:
        cfg.train.out = str(out)
    return run_train(
        cfg,
        resume=resume,
        exist_ok=exist_ok,
        evaluate=evaluate,
        show_progress=show_progress,
        callbacks=list(callbacks or []),
    )
