"""The training loop: ``train`` wires the pieces, ``Trainer`` runs them; read it top to bottom.

``train(cfg)`` builds the data, model, optimizer and schedule from one config and runs
``train.iterations`` iterations (or ``train.epochs`` epochs, or until ``train.max_minutes`` runs out, or
until ``train.patience`` evaluations bring no better AP). Into the run folder ``train.out``
(:mod:`anchorlab.engine.run_folder`: locked, never mixed with an earlier run) it writes ``log.jsonl``,
the resumable ``last.pt`` (atomic, every ``train.checkpoint_every`` iterations, at the end and on
Ctrl-C), and, with a val split, an evaluation every epoch (``train.eval_every``): ``results.csv``,
``metrics.json`` and ``best.pt`` (the weights of the best AP). ``resume=True`` continues exactly where
``last.pt`` left off: model, optimizer, schedule, RNG states, the data loader's position, the training
clock and the best-AP tracker are all restored.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from torch.nn.parallel import DistributedDataParallel

from anchorlab import distributed as dist_utils
from anchorlab.config import Config, dump_config
from anchorlab.console import make_console
from anchorlab.data.batch import size_divisor
from anchorlab.data.loader import DetectionDataset, InfiniteLoader, build_loader
from anchorlab.data.mosaic import Mosaic
from anchorlab.data.transforms import build_transforms
from anchorlab.engine import rng
from anchorlab.engine.callbacks import Callback, CallbackList
from anchorlab.engine.checkpoint import (
    BEST,
    FORMAT,
    LAST,
    CheckpointError,
    load_checkpoint,
    resumable_checkpoint,
    save_checkpoint,
)
from anchorlab.engine.clock import RunClock
from anchorlab.engine.common import (
    environment,
    move_targets,
    prepare_data,
    resolve_amp,
    resolve_device,
    seed_everything,
    write_json,
)
from anchorlab.engine.ema import ModelEMA
from anchorlab.engine.run_folder import RunFolder, truncate_log
from anchorlab.engine.schedule import build_optimizer, build_scheduler
from anchorlab.engine.tb import TensorBoardCallback
from anchorlab.engine.tracker import EvalTracker
from anchorlab.io import write_text
from anchorlab.models import build_detector
from anchorlab.models.init_from import apply_init_from

__all__ = ["Checkpointer", "Trainer", "TrainingError", "build_train_loader", "train"]


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. a non-finite loss); the message names the iteration and the loss part."""


def build_train_loader(cfg: Config, dataset, *, rank: int = 0, world_size: int = 1) -> InfiniteLoader:
    d = cfg.data
    transforms = build_transforms(
        True,
        min_size=d.min_size,
        max_size=d.max_size,
        hflip=d.hflip,
        scale_jitter=d.scale_jitter,
        photometric=d.photometric,
    )
    if d.mosaic > 0:
        dataset = DetectionDataset(dataset, transforms, mosaic=Mosaic(d.mosaic))
    return build_loader(
        dataset,
        transforms=transforms,
        batch_size=cfg.train.batch_size // world_size,  # train.batch_size is the global batch
        train=True,
        infinite=True,
        workers=cfg.train.workers,
        seed=cfg.train.seed,
        size_divisible=size_divisor(2**cfg.model.fpn.max_level),
        device=resolve_device(cfg.train.device),
        rank=rank,
        world_size=world_size,
    )


def train(
    cfg: Config,
    *,
    resume: bool = False,
    exist_ok: bool = False,
    evaluate: bool = True,
    console: Console | None = None,
    show_progress: bool = True,
    callbacks: list[Callback] | None = None,
) -> dict[str, Any]:
    """Train the configured detector into ``cfg.train.out``; returns the run summary (iterations, timings,
    final losses, ``checkpoint`` = ``last.pt``, ``best_checkpoint``, val ``metrics``).

    ``resume``: continue ``last.pt`` exactly. A fresh run into a folder that holds a run raises
    :class:`~anchorlab.engine.run_folder.RunFolderExists` unless ``exist_ok`` (the earlier run's files
    are then replaced once this run writes its first checkpoint). ``evaluate=False``: no evaluation at
    all. ``callbacks``: :class:`~anchorlab.engine.callbacks.Callback` objects, called on rank 0.
    Under ``torchrun`` (``WORLD_SIZE`` > 1) every rank trains on its share of each global batch of
    ``train.batch_size`` images with ``DistributedDataParallel``; only rank 0 writes files.
    """
    console = console or make_console(stderr=True)
    rank, world, device = dist_utils.init_from_env(cfg.train.device)
    main = rank == 0
    if cfg.train.batch_size % world:
        raise ValueError(f"train.batch_size {cfg.train.batch_size} is not divisible by {world} processes")
    builtin = [TensorBoardCallback()] if cfg.train.tensorboard else []  # a missing package fails here
    hooks = CallbackList([*builtin, *(callbacks or [])] if main else [])
    folder = RunFolder(cfg.train.out, resume=resume, exist_ok=exist_ok) if main else None
    seed_everything(cfg.train.seed)
    threads_before = torch.get_num_threads()
    if device.type == "cpu":
        share = (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        torch.set_num_threads(cfg.train.threads or max(1, share))
    try:
        if folder is not None:
            folder.open()
        trainer = Trainer(cfg, device, rank, world, folder, hooks, console, show_progress, evaluate)
        trainer.setup(resume)
        trainer.run()
        return trainer.finish()
    finally:
        torch.set_num_threads(threads_before)
        hooks.close()
        if folder is not None:
            folder.close()


def _progress(console: Console) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
        console=console,
        transient=False,
    )


class Checkpointer:
    """Writes ``last.pt`` and ``best.pt`` into the run folder (rank 0 only): the first write of a run
    staged by ``--exist-ok`` replaces the earlier run's files; each write is reported to the callbacks."""

    def __init__(self, folder: RunFolder | None, hooks: CallbackList) -> None:
        self.folder, self.hooks = folder, hooks

    @property
    def last_path(self) -> Path | None:
        return None if self.folder is None else self.folder.final_path(LAST)

    def save(self, kind: str, state: dict[str, Any]) -> None:
        """Write ``state`` as ``last.pt`` (``kind="last"``) or ``best.pt`` (``"best"``)."""
        if self.folder is None:
            return
        name = LAST if kind == "last" else BEST
        save_checkpoint(self.folder.path(name), state)  # module lookup: tests replace it
        self.folder.promote()
        self.hooks.on_checkpoint(self.folder.final_path(name), kind, int(state["iteration"]))  # type: ignore[arg-type]


def _weights_entries(cfg: Config, classes, iteration: int, metrics: dict[str, float]) -> dict[str, Any]:
    """The entries every checkpoint holds besides ``model`` (see :mod:`anchorlab.engine.checkpoint`)."""
    return {
        "format": FORMAT,
        "config": cfg.model_dump(mode="json"),
        "categories": [{"id": int(c.id), "name": str(c.name)} for c in classes],
        "iteration": int(iteration),
        "metrics": dict(metrics),
    }


def _check_resumable(path: Path, state: dict[str, Any], cfg: Config) -> None:
    """One-line errors for a checkpoint this config cannot continue (another detector, class count or
    optimizer)."""
    saved = state.get("config") or {}
    pairs = (
        ("model.detector", saved.get("model", {}).get("detector"), cfg.model.detector),
        ("model.num_classes", saved.get("model", {}).get("num_classes"), cfg.model.num_classes),
        ("train.optimizer", saved.get("train", {}).get("optimizer"), cfg.train.optimizer),
    )
    for key, was, now in pairs:
        if was is not None and was != now:
            raise CheckpointError(
                f"cannot resume {path}: it was trained with {key}={was}, this config has {key}={now} "
                "(train a fresh run instead: --exist-ok or another --out)"
            )


def _weights_mismatch(model: torch.nn.Module, state: dict[str, Any]) -> str | None:
    """What keeps ``state`` from loading into ``model`` (missing, unexpected, reshaped entries), if any."""
    mine = model.state_dict()
    missing = [k for k in mine if k not in state]
    unexpected = [k for k in state if k not in mine]
    reshaped = [k for k in mine if k in state and tuple(mine[k].shape) != tuple(state[k].shape)]
    if not (missing or unexpected or reshaped):
        return None
    example = (missing or unexpected or reshaped)[0]
    return (
        f"{len(missing)} missing, {len(unexpected)} unexpected and {len(reshaped)} differently shaped "
        f"weights, e.g. {example!r}"
    )


def _load_state(module: Any, state: Any, path: Path, what: str) -> None:
    """``module.load_state_dict(state)`` with a one-line :class:`CheckpointError` when it does not fit."""
    if isinstance(module, torch.nn.Module) and isinstance(state, dict):
        problem = _weights_mismatch(module, state)
        if problem is not None:
            raise CheckpointError(f"cannot resume {path}: its {what} does not fit this config ({problem})")
    try:
        module.load_state_dict(state)
    except (RuntimeError, ValueError, KeyError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"cannot resume {path}: its {what} does not fit this config ({first})"
        ) from None


class Trainer:
    """One training run: built by :meth:`setup`, run by :meth:`run` (which calls :meth:`train_one_step`
    per iteration), summarised by :meth:`finish`."""

    def __init__(
        self,
        cfg: Config,
        device: torch.device,
        rank: int,
        world: int,
        folder: RunFolder | None,
        hooks: CallbackList,
        console: Console,
        show_progress: bool,
        evaluate: bool,
    ) -> None:
        self.cfg, self.device, self.rank, self.world = cfg, device, rank, world
        self.main = rank == 0
        self.folder, self.hooks, self.console = folder, hooks, console
        self.show_progress, self.evaluate = show_progress, evaluate
        self.checkpointer = Checkpointer(folder, hooks)
        self.start = self.completed = 0
        self.images_seen = self.skipped_steps = 0
        self.last_losses: dict[str, float] = {}
        self.stop_reason: str | None = None
        self.clock = RunClock()

    # -- building ----------------------------------------------------------------------------------
    def setup(self, resume: bool) -> None:
        """Data, model, optimizer, loader, schedule, EMA; the resumed state; the run's config files."""
        cfg, main = self.cfg, self.main
        self.train_set, self.val_set = prepare_data(cfg)
        if cfg.model.fit_anchors:
            _fit_priors(cfg, self.train_set, self.folder, self.console if main else None)
        model = build_detector(cfg).to(self.device)
        report = None if self.folder is None else self.folder.path("init_from.json")
        apply_init_from(model, cfg, self.console if main else None, report)  # model.init_from, if set
        if self.world > 1 and self.device.type == "cuda" and cfg.model.backbone.norm == "bn":
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        self.model = model
        self.optimizer = build_optimizer(model, cfg.train)
        self.loader = build_train_loader(cfg, self.train_set, rank=self.rank, world_size=self.world)
        self.epoch_length = len(self.loader)
        if cfg.train.epochs is not None:
            cfg.train.iterations = cfg.train.epochs * self.epoch_length
        budget = cfg.train.max_minutes
        timed = None if budget is None else (lambda: self.clock.elapsed / (budget * 60))
        self.scheduler = build_scheduler(self.optimizer, cfg.train, timed)
        self.ema = ModelEMA(model, cfg.train.ema_decay, cfg.train.ema_tau) if cfg.train.ema else None
        self.eval_model = self.ema.module if self.ema is not None else model
        every = default_eval_every(self.epoch_length, cfg.train.iterations, cfg.train.eval_every)
        enabled = self.evaluate and self.val_set is not None
        self.tracker = EvalTracker(every, cfg.train.patience, enabled)
        if resume:
            self._restore()
        self._write_run_info()
        self._wrap()

    def _restore(self) -> None:
        """Continue the run folder's resumable checkpoint exactly."""
        path = resumable_checkpoint(self.cfg.train.out)
        state = load_checkpoint(path, map_location=self.device)
        _check_resumable(path, state, self.cfg)
        _load_state(self.model, state.get("train_model", state["model"]), path, "model")  # "model": EMA
        if self.ema is not None:
            self.ema.restore(state, self.model)
        _load_state(self.optimizer, state["optimizer"], path, "optimizer state")
        self.scheduler.load_state_dict(state["scheduler"])
        self.loader.load_state_dict(state["loader"])
        rng.restore(state["rng"])
        self.start = self.completed = int(state["iteration"])
        self.clock = RunClock(float(state.get("elapsed_s", 0.0)))
        self._scaler_state = state.get("scaler")
        csv_path = None if self.folder is None else self.folder.path("results.csv")
        self.tracker.load_state_dict(state.get("tracker"), csv_path, self.start)
        if self.folder is not None:
            truncate_log(self.folder.path("log.jsonl"), self.start)
            self.console.print(f"resuming {path} at iteration {self.start}")

    def _write_run_info(self) -> None:
        if self.folder is None:
            return
        cfg, device = self.cfg, self.device
        write_text(self.folder.path("config.yaml"), dump_config(cfg))
        env = {
            **environment(),
            "seed": cfg.train.seed,
            "device": str(device),
            "world_size": self.world,
            "amp": resolve_amp(cfg.train.amp, device),
        }
        write_json(self.folder.path("environment.json"), env)
        resume = self.start > 0 or self.folder.resume
        info = {"out": self.folder.work, "start": self.start, "resume": resume}
        self.hooks.on_start(
            {**info, "iterations": cfg.train.iterations, "config": cfg.model_dump(mode="json")}
        )

    def _wrap(self) -> None:
        """DDP, torch.compile, autocast and the gradient scaler."""
        cfg, device = self.cfg, self.device
        net: torch.nn.Module = self.model
        if self.world > 1:
            net = DistributedDataParallel(
                self.model,
                device_ids=[device] if device.type == "cuda" else None,
                # CenterNet's head reads P2 only: the FPN's coarser output convs get no gradient
                find_unused_parameters=cfg.model.detector == "centernet",
            )
        if cfg.train.compile:
            net = torch.compile(net)
        self.net = net
        self.amp = resolve_amp(cfg.train.amp, device)
        self.amp_dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.amp and device.type == "cuda")
        if getattr(self, "_scaler_state", None) and self.scaler.is_enabled():
            self.scaler.load_state_dict(self._scaler_state)

    # -- one step ----------------------------------------------------------------------------------
    def train_one_step(self, it: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Load a batch, forward, backward, optimizer (+ EMA) step, clock tick and lr step; returns the
        losses. A non-finite loss raises :class:`TrainingError` or skips the step (``on_nonfinite``)."""
        cfg, optimizer, scaler, ema = self.cfg, self.optimizer, self.scaler, self.ema
        batch, targets = next(self.loader)
        batch = batch.to(self.device, non_blocking=True)
        targets = move_targets(targets, self.device)
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp):
            losses = self.net(batch, targets)
        total = sum(losses.values())
        optimizer.zero_grad(set_to_none=True)
        if not torch.isfinite(total):
            self._non_finite(it, losses)
        else:
            scaler.scale(total).backward()
            if cfg.train.clip_grad:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.train.clip_grad)
            scale = scaler.get_scale() if ema is not None else 0.0
            scaler.step(optimizer)
            scaler.update()
            if ema is not None and scaler.get_scale() >= scale:  # a lowered scale: step skipped
                ema.update(self.model)
        self._tick()
        self.scheduler.step()
        self.images_seen += len(batch)
        return losses, total

    def _non_finite(self, it: int, losses: dict[str, torch.Tensor]) -> None:
        bad = [k for k, v in losses.items() if not torch.isfinite(v)]
        message = (
            f"iteration {it}: loss {', '.join(bad)} is not finite "
            f"({', '.join(f'{k}={float(losses[k].detach())}' for k in bad)})"
        )
        if self.cfg.train.on_nonfinite == "stop":
            raise TrainingError(f"{message}; the last good checkpoint {self.checkpointer.last_path} is kept")
        self.skipped_steps += 1
        if self.main:
            self.console.print(f"[yellow]warning:[/] {message}: step skipped ({self.skipped_steps} so far)")

    def _tick(self) -> None:
        """Read the clock once per iteration; with ``train.max_minutes`` every rank uses the mean elapsed
        time, so the time-based lr and the stop are the same on all of them."""
        self.clock.tick()
        if self.cfg.train.max_minutes is not None and dist_utils.is_distributed():
            elapsed = torch.tensor(self.clock.elapsed, dtype=torch.float64, device=self.device)
            self.clock.session = float(dist_utils.mean_across_ranks(elapsed)) - self.clock.offset

    # -- the loop ----------------------------------------------------------------------------------
    def run(self) -> None:
        """Iterate from ``start`` until ``train.iterations`` or a stop; Ctrl-C writes ``last.pt`` of the
        last completed iteration and re-raises."""
        total = self.cfg.train.iterations
        self.model.train()
        self.clock.restart()
        it = self.start
        snapshot = (self.loader.state_dict(), rng.capture())
        self.progress = _progress(self.console) if self.show_progress and self.main else None
        try:
            if self.progress:
                self.progress.start()
                self.task = self.progress.add_task(
                    "train", total=total, completed=self.start, rate="", info=""
                )
            for it in range(self.start, total):
                # Where this iteration started: an interrupt before its optimizer step resumes from here.
                snapshot = (self.loader.state_dict(), rng.capture())
                losses, loss = self.train_one_step(it)
                self.completed = it + 1
                if self._after_step(self.completed, losses, loss):
                    break
        except KeyboardInterrupt:
            self._interrupted(it, snapshot)
            raise
        finally:
            if self.progress:
                self.progress.stop()
            self.loader.close()

    def _after_step(self, done: int, losses: dict[str, torch.Tensor], loss: torch.Tensor) -> bool:
        """Log, evaluate, checkpoint; True when training stops here (time or patience)."""
        cfg, total = self.cfg.train, self.cfg.train.iterations
        budget = cfg.max_minutes
        out_of_time = budget is not None and self.clock.elapsed >= budget * 60
        if self.main and (done % cfg.log_every == 0 or done in (total, self.start + 1) or out_of_time):
            self._log(done, losses, loss)
        if self.progress:
            rate = f"{done - self.start} it / {self.clock.session:.0f}s"
            self.progress.update(self.task, completed=done, rate=rate)
        patience = False
        if self.tracker.due(done, total, out_of_time):
            patience = self._evaluate(done, losses, loss)
        if out_of_time and done < total:
            self.stop_reason = "time"
        elif patience and done < total:
            self.stop_reason = "patience"
        stop = self.stop_reason is not None
        if done % cfg.checkpoint_every == 0 or done == total or stop:
            self.save_last(done)
        return stop

    def _log(self, done: int, losses: dict[str, torch.Tensor], loss: torch.Tensor) -> None:
        self.last_losses = {k: round(float(v.detach()), 5) for k, v in losses.items()}
        elapsed = self.clock.session
        record = {
            "iteration": done,
            "loss": round(float(loss.detach()), 5),
            **self.last_losses,
            "lr": self.optimizer.param_groups[0]["lr"],
            "images_per_s": round(self.images_seen * self.world / max(elapsed, 1e-9), 3),
            "time": round(elapsed, 3),
            "skipped_steps": self.skipped_steps,
            "skipped_images": self.loader.skipped,
        }
        self._append_log(record)
        self.hooks.on_log(record)
        if self.progress:
            info = " ".join(f"{k.removeprefix('loss_')}={v:.3f}" for k, v in self.last_losses.items())
            self.progress.update(self.task, info=f"loss={record['loss']:.3f} {info} lr={record['lr']:.2e}")

    def _append_log(self, record: dict[str, Any]) -> None:
        if self.folder is not None:
            with self.folder.path("log.jsonl").open("a") as log:
                log.write(json.dumps(record) + "\n")

    def _interrupted(self, it: int, snapshot: tuple[dict, dict]) -> None:
        """Ctrl-C: write ``last.pt`` of the last completed iteration (none when a run staged by
        ``--exist-ok`` completed no iteration: the earlier run stays)."""
        if self.progress:
            self.progress.stop()
        if self.folder is not None and self.folder.staged and self.completed == self.start:
            self.console.print("interrupted before the first iteration: nothing written")
            return
        if self.completed == it + 1:
            self.save_last(self.completed)
        else:
            self.save_last(self.completed, *snapshot)
        if self.main:
            self.console.print(
                f"interrupted: checkpoint at iteration {self.completed} written to "
                f"{self.checkpointer.last_path}; continue with --resume"
            )

    # -- evaluation and checkpoints ------------------------------------------------------------------
    def _evaluate(self, done: int, losses: dict[str, torch.Tensor] | None, loss: torch.Tensor | None) -> bool:
        """Evaluate on the val split (every rank predicts its share; rank 0 scores and writes); the RNG
        states are restored afterwards, so evaluating never changes training. True when ``patience``
        evaluations in a row brought no better AP (on every rank)."""
        state = rng.capture()
        try:
            metrics = _evaluate_and_log(self.eval_model, self.cfg, self.val_set, self.console)
        finally:
            rng.restore(state)
            self.model.train()
        self.tracker.last_iteration = done  # on every rank: the final evaluation is decided alike
        self.metrics = {**metrics, "iteration": done} if metrics else {}
        if self.main:
            self._record_eval(done, metrics, losses, loss)
        if self.cfg.train.patience is None:
            return False
        flag = torch.tensor(float(self.tracker.exhausted), device=self.device)
        return bool(dist_utils.mean_across_ranks(flag) > 0)

    def _record_eval(self, done: int, metrics: dict[str, Any], losses, loss) -> None:
        """results.csv, metrics.json, best.pt and the ``on_eval`` callbacks of one evaluation (log.jsonl
        holds training records only)."""
        row: dict[str, Any] = {"iteration": done, "epoch": round(done / self.epoch_length, 3)}
        if losses is not None and loss is not None:
            row["loss"] = round(float(loss.detach()), 5)
            row.update({k: round(float(v.detach()), 5) for k, v in losses.items()})
        row["lr"] = self.optimizer.param_groups[0]["lr"]
        row["time"] = round(self.clock.elapsed, 3)
        best = self.tracker.update(done, metrics, row)
        assert self.folder is not None
        self.tracker.write_csv(self.folder.path("results.csv"))
        write_json(self.folder.path("metrics.json"), self.metrics)
        if best:
            state = {"model": self.eval_model.state_dict()}
            state.update(
                _weights_entries(self.cfg, self.train_set.categories, done, self.tracker.last_metrics)
            )
            self.checkpointer.save("best", state)
        self.hooks.on_eval({"iteration": done, "metrics": metrics, "best": best})

    def save_last(
        self, iteration: int, loader_state: dict | None = None, rng_state: dict | None = None
    ) -> None:
        """Write ``last.pt`` (rank 0): everything :meth:`_restore` needs to continue exactly."""
        if not self.main:
            return
        state: dict[str, Any] = {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "loader": loader_state or self.loader.state_dict(),
            "rng": rng.to_checkpoint(rng_state or rng.capture()),
            "elapsed_s": self.clock.elapsed,
            "tracker": self.tracker.state_dict(),
            "environment": environment(),
        }
        state.update(
            _weights_entries(self.cfg, self.train_set.categories, iteration, self.tracker.last_metrics)
        )
        if self.scaler.is_enabled():
            state["scaler"] = self.scaler.state_dict()
        if self.ema is not None:
            state.update(self.ema.checkpoint_entries(self.model))
        self.checkpointer.save("last", state)

    # -- the end -------------------------------------------------------------------------------------
    def _write_report(self) -> None:
        """The run's pictures and report.html; a failure there is a warning (the run itself is complete)."""
        from anchorlab.report.run import write_run_report

        try:
            write_run_report(self.cfg.train.out, device=str(self.device), console=self.console)
        except Exception as exc:  # the checkpoints and summary are written: never lose the run to a plot
            self.console.print(
                f"[yellow]warning:[/] the run report was not written: {escape(str(exc))}; "
                f"retry with: anchorlab report {escape(str(self.cfg.train.out))}"
            )

    def finish(self) -> dict[str, Any]:
        """The final evaluation (unless the last iteration was just evaluated), summary.json, ``on_end``."""
        train_time = self.clock.tick()
        if self.tracker.enabled and not hasattr(self, "metrics"):
            if self.tracker.last_iteration == self.completed:  # --resume of a finished run
                self.metrics = {**self.tracker.last_metrics, "iteration": self.completed}
            else:
                self._evaluate(self.completed, None, None)
        summary: dict[str, Any] = {
            "iterations": self.completed,
            "epochs": round(self.completed / self.epoch_length, 3),
            "stopped_by_time": self.stop_reason == "time",
            "stopped_early": self.stop_reason,
            "train_time_s": round(train_time, 2),
            "train_images_per_s": round(self.images_seen * self.world / max(train_time, 1e-9), 3),
            "final_losses": self.last_losses,
            "skipped_steps": self.skipped_steps,
            "skipped_images": self.loader.skipped,
            "checkpoint": str(Path(self.cfg.train.out) / LAST),
            "run_dir": str(self.cfg.train.out),
            "world_size": self.world,
        }
        if self.tracker.best_iteration is not None:
            summary["best_checkpoint"] = str(Path(self.cfg.train.out) / BEST)
            summary["best"] = {"iteration": self.tracker.best_iteration, "AP": self.tracker.best_ap}
        if self.world > 1:
            summary["ranks_in_sync"] = _ranks_in_sync(self.model)
        if self.tracker.enabled:
            summary["metrics"] = getattr(self, "metrics", {})
        if self.folder is not None:
            write_json(self.folder.path("summary.json"), summary)
            if self.tracker.enabled:
                self._write_report()
        self.hooks.on_end(summary)
        return summary


#: The default evaluation cadence (``train.eval_every: null``) evaluates at most this many times a run.
MAX_DEFAULT_EVALUATIONS = 50


def default_eval_every(epoch_length: int, iterations: int, eval_every: int | None) -> int:
    """Iterations between evaluations: ``eval_every`` when set (0 = only at the end); else every epoch,
    or every k-th epoch when the run has more than ``MAX_DEFAULT_EVALUATIONS`` epochs (a 30-image set
    trained for 200 epochs would otherwise spend much of its time evaluating)."""
    if eval_every is not None:
        return eval_every
    epochs = math.ceil(iterations / max(epoch_length, 1))
    return epoch_length * max(1, math.ceil(epochs / MAX_DEFAULT_EVALUATIONS))


def _ranks_in_sync(model: torch.nn.Module) -> bool:
    """Whether every rank holds bit-identical parameters (a cheap end-of-training check)."""
    if not dist_utils.is_distributed():
        return True
    sums = torch.stack([p.detach().double().sum() for p in model.parameters()]).cpu()
    return all(torch.equal(sums, other) for other in dist_utils.gather_objects(sums))


def _fit_priors(cfg: Config, train_set: Any, folder: RunFolder | None, console: Console | None) -> None:
    """``model.fit_anchors``: fit the priors to the training boxes, in ``cfg`` (every rank computes the
    same deterministic fit); the main process writes fit_anchors.json and prints one line."""
    from anchorlab.design.fit import apply_fit, fit_priors

    fit = fit_priors(cfg, train_set)
    apply_fit(cfg, fit)
    if console is not None and folder is not None:
        write_json(folder.path("fit_anchors.json"), fit.to_dict())
        console.print(fit.summary())


def _evaluate_and_log(model, cfg: Config, val_set, console: Console) -> dict[str, Any]:
    """COCO metrics of ``model`` on the val split (every rank predicts its share; ``{}`` off rank 0)."""
    from anchorlab.engine.evaluate import evaluate_model

    return evaluate_model(model, cfg, val_set, console=console)
