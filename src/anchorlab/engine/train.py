"""The training loop: read it top to bottom.

``train(cfg)`` builds the data, model, optimizer and schedule from one config, runs a fixed number of
iterations, logs to ``OUT/log.jsonl``, writes atomic checkpoints (``OUT/checkpoint.pt``) every
``train.checkpoint_every`` iterations, at the end and on Ctrl-C, and evaluates on the val split at the end
(``OUT/metrics.json``). ``resume=True`` continues exactly where the checkpoint left off: model, optimizer,
schedule, RNG states and the data loader's position are all restored.
"""

from __future__ import annotations

import json
import os
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
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
from anchorlab.data.batch import size_divisor
from anchorlab.data.loader import DetectionDataset, InfiniteLoader, build_loader
from anchorlab.data.mosaic import Mosaic
from anchorlab.data.transforms import build_transforms
from anchorlab.engine.checkpoint import load_checkpoint, save_checkpoint
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
from anchorlab.engine.schedule import build_optimizer, build_scheduler
from anchorlab.engine.tb import TensorBoardLogger, tensorboard_logger
from anchorlab.io import write_text
from anchorlab.models import build_detector
from anchorlab.models.init_from import apply_init_from

__all__ = ["TrainingError", "train"]


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. a non-finite loss); the message names the iteration and the loss part."""


def _rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


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


def _checkpoint_state(
    model, optimizer, scheduler, loader_state: dict, rng_state: dict, iteration: int, cfg: Config, classes
) -> dict:
    return {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "loader": loader_state,
        "rng": rng_state,
        "iteration": iteration,
        "config": cfg.model_dump(mode="json"),
        "categories": [{"id": c.id, "name": c.name} for c in classes],
        "environment": environment(),
    }


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


def _ranks_in_sync(model: torch.nn.Module) -> bool:
    """Whether every rank holds bit-identical parameters (a cheap end-of-training check)."""
    if not dist_utils.is_distributed():
        return True
    sums = torch.stack([p.detach().double().sum() for p in model.parameters()]).cpu()
    return all(torch.equal(sums, other) for other in dist_utils.gather_objects(sums))


def train(
    cfg: Config,
    *,
    resume: bool = False,
    evaluate: bool = True,
    console: Console | None = None,
    show_progress: bool = True,
) -> dict[str, Any]:
    """Train the configured detector; returns a summary with the final losses, timings and val metrics.

    Under ``torchrun`` (``WORLD_SIZE`` > 1) every rank trains on its share of each global batch of
    ``train.batch_size`` images with ``DistributedDataParallel``; only rank 0 writes files.
    """
    console = console or Console(stderr=True)
    rank, world, device = dist_utils.init_from_env(cfg.train.device)
    main = rank == 0
    if cfg.train.batch_size % world:
        raise ValueError(f"train.batch_size {cfg.train.batch_size} is not divisible by {world} processes")
    tb = tensorboard_logger(cfg.train.tensorboard, cfg.train.out, main=main)  # a missing package fails here
    out = Path(cfg.train.out)
    if main:
        out.mkdir(parents=True, exist_ok=True)
    seed_everything(cfg.train.seed)
    threads_before = torch.get_num_threads()
    if device.type == "cpu":
        share = (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        torch.set_num_threads(cfg.train.threads or max(1, share))
    try:
        return _train(cfg, resume, evaluate, console, show_progress, rank, world, device, tb)
    finally:
        torch.set_num_threads(threads_before)
        if tb is not None:
            tb.close()


def _train(
    cfg: Config,
    resume: bool,
    evaluate: bool,
    console: Console,
    show_progress: bool,
    rank: int,
    world: int,
    device: torch.device,
    tb: TensorBoardLogger | None = None,
) -> dict[str, Any]:
    main = rank == 0
    out = Path(cfg.train.out)
    train_set, val_set = prepare_data(cfg)
    if cfg.model.fit_anchors:
        _fit_priors(cfg, train_set, out, console if main else None)
    model = build_detector(cfg).to(device)
    apply_init_from(model, cfg, console if main else None)  # model.init_from: load what fits, report
    if world > 1 and device.type == "cuda" and cfg.model.backbone.norm == "bn":
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    optimizer = build_optimizer(model, cfg.train)
    scheduler = build_scheduler(optimizer, cfg.train)
    loader = build_train_loader(cfg, train_set, rank=rank, world_size=world)
    ckpt_path = out / "checkpoint.pt"
    ema = ModelEMA(model, cfg.train.ema_decay, cfg.train.ema_tau) if cfg.train.ema else None
    eval_model = ema.module if ema is not None else model

    start = 0
    if resume:
        state = load_checkpoint(ckpt_path, map_location=device)
        model.load_state_dict(state.get("train_model", state["model"]))  # "model" is the EMA if any
        if ema is not None:
            ema.restore(state, model)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        loader.load_state_dict(state["loader"])
        _set_rng_state(state["rng"])
        start = int(state["iteration"])
        if main:
            console.print(f"resuming {ckpt_path} at iteration {start}")
    elif main:
        (out / "log.jsonl").unlink(missing_ok=True)
    if main:
        write_text(out / "config.yaml", dump_config(cfg))
        env = {
            **environment(),
            "seed": cfg.train.seed,
            "device": str(device),
            "world_size": world,
            "amp": resolve_amp(cfg.train.amp, device),
        }
        write_json(out / "environment.json", env)
    if tb is not None:
        tb.open(start, resume=resume)
    net: torch.nn.Module = model
    if world > 1:
        net = DistributedDataParallel(
            model,
            device_ids=[device] if device.type == "cuda" else None,
            # CenterNet's head reads P2 only: the FPN's coarser output convs get no gradient
            find_unused_parameters=cfg.model.detector == "centernet",
        )
    if cfg.train.compile:
        net = torch.compile(net)
    amp = resolve_amp(cfg.train.amp, device)
    amp_dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    scaler = torch.amp.GradScaler(device.type, enabled=amp and device.type == "cuda")

    def save(iteration: int, loader_state: dict | None = None, rng_state: dict | None = None) -> None:
        if not main:
            return
        state = _checkpoint_state(
            model,
            optimizer,
            scheduler,
            loader_state or loader.state_dict(),
            rng_state or _rng_state(),
            iteration,
            cfg,
            train_set.categories,
        )
        if ema is not None:
            state.update(ema.checkpoint_entries(model))
        save_checkpoint(ckpt_path, state)

    total_iters = cfg.train.iterations
    log = (out / "log.jsonl").open("a") if main else None
    model.train()
    images_seen, skipped_steps, t_start, last_losses = 0, 0, time.perf_counter(), {}
    it = completed = start
    snapshot = (loader.state_dict(), _rng_state())
    progress = _progress(console) if show_progress and main else None
    try:
        if progress:
            progress.start()
            task = progress.add_task("train", total=total_iters, completed=start, rate="", info="")
        for it in range(start, total_iters):
            # Where this iteration started: an interrupt before its optimizer step resumes from here.
            snapshot = (loader.state_dict(), _rng_state())
            batch, targets = next(loader)
            batch = batch.to(device, non_blocking=True)
            targets = move_targets(targets, device)
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp):
                losses = net(batch, targets)
            total = sum(losses.values())
            optimizer.zero_grad(set_to_none=True)
            if not torch.isfinite(total):
                bad = [k for k, v in losses.items() if not torch.isfinite(v)]
                message = (
                    f"iteration {it}: loss {', '.join(bad)} is not finite "
                    f"({', '.join(f'{k}={float(losses[k].detach())}' for k in bad)})"
                )
                if cfg.train.on_nonfinite == "stop":
                    raise TrainingError(f"{message}; the last good checkpoint {ckpt_path} is kept")
                skipped_steps += 1
                if main:
                    console.print(f"[yellow]warning:[/] {message}: step skipped ({skipped_steps} so far)")
            else:
                scaler.scale(total).backward()
                if cfg.train.clip_grad:
                    scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.clip_grad)
                scale = scaler.get_scale() if ema is not None else 0.0
                scaler.step(optimizer)
                scaler.update()
                if ema is not None and scaler.get_scale() >= scale:  # a lowered scale: step skipped
                    ema.update(model)
            scheduler.step()
            completed = done = it + 1
            images_seen += len(batch)
            out_of_time = _out_of_time(cfg.train.max_minutes, t_start, device)
            if main and (done % cfg.train.log_every == 0 or done in (total_iters, start + 1) or out_of_time):
                last_losses = {k: round(float(v.detach()), 5) for k, v in losses.items()}
                elapsed = time.perf_counter() - t_start
                record = {
                    "iteration": done,
                    "loss": round(float(total.detach()), 5),
                    **last_losses,
                    "lr": optimizer.param_groups[0]["lr"],
                    "images_per_s": round(images_seen * world / elapsed, 3),
                    "time": round(elapsed, 3),
                    "skipped_steps": skipped_steps,
                    "skipped_images": loader.skipped,
                }
                log.write(json.dumps(record) + "\n")
                log.flush()
                if tb is not None:
                    tb.log_train(done, {k: record[k] for k in ("loss", *last_losses, "lr", "images_per_s")})
                if progress:
                    info = " ".join(f"{k.removeprefix('loss_')}={v:.3f}" for k, v in last_losses.items())
                    progress.update(task, info=f"loss={record['loss']:.3f} {info} lr={record['lr']:.2e}")
            if progress:
                rate = f"{done - start} it / {time.perf_counter() - t_start:.0f}s"
                progress.update(task, completed=done, rate=rate)
            if done % cfg.train.checkpoint_every == 0 or done == total_iters or out_of_time:
                save(done)
            if out_of_time:
                break
            if cfg.train.eval_every and done % cfg.train.eval_every == 0 and done < total_iters and val_set:
                _evaluate_and_log(eval_model, cfg, val_set, out, done, log, console, tb)
                model.train()
    except KeyboardInterrupt:
        if progress:
            progress.stop()
        if completed == it + 1:
            save(completed)
        else:
            save(completed, *snapshot)
        if main:
            console.print(
                f"interrupted: checkpoint at iteration {completed} written to {ckpt_path}; "
                "continue with --resume"
            )
        raise
    finally:
        if progress:
            progress.stop()
        if log is not None:
            log.close()
        loader.close()

    train_time = time.perf_counter() - t_start
    summary: dict[str, Any] = {
        "iterations": completed,
        "stopped_by_time": completed < total_iters,
        "train_time_s": round(train_time, 2),
        "train_images_per_s": round(images_seen * world / max(train_time, 1e-9), 3),
        "final_losses": last_losses,
        "skipped_steps": skipped_steps,
        "skipped_images": loader.skipped,
        "checkpoint": str(ckpt_path),
        "world_size": world,
    }
    if world > 1:
        summary["ranks_in_sync"] = _ranks_in_sync(model)
    if evaluate and val_set is not None:
        summary["metrics"] = _evaluate_and_log(eval_model, cfg, val_set, out, completed, None, console, tb)
    if main:
        write_json(out / "summary.json", summary)
    return summary


def _fit_priors(cfg: Config, train_set: Any, out: Path, console: Console | None) -> None:
    """``model.fit_anchors``: fit the priors to the training boxes, in ``cfg`` (every rank computes the
    same deterministic fit); the main process writes OUT/fit_anchors.json and prints one line."""
    from anchorlab.design.fit import apply_fit, fit_priors

    fit = fit_priors(cfg, train_set)
    apply_fit(cfg, fit)
    if console is not None:
        write_json(out / "fit_anchors.json", fit.to_dict())
        console.print(fit.summary())


def _out_of_time(max_minutes: float | None, t_start: float, device: torch.device) -> bool:
    """Whether the wall budget ``train.max_minutes`` counted from ``t_start`` has run out (on any rank, so
    every rank stops after the same iteration)."""
    if max_minutes is None:
        return False
    late = torch.tensor(float(time.perf_counter() - t_start >= max_minutes * 60), device=device)
    return bool(dist_utils.mean_across_ranks(late) > 0)


def _evaluate_and_log(
    model, cfg, val_set, out: Path, iteration: int, log, console: Console, tb: TensorBoardLogger | None = None
) -> dict:
    """Evaluate on the val split (every rank predicts its share; rank 0 scores and writes)."""
    from anchorlab.engine.evaluate import evaluate_model

    metrics = evaluate_model(model, cfg, val_set, console=console)
    if not dist_utils.is_main():
        return metrics
    metrics["iteration"] = iteration
    write_json(out / "metrics.json", metrics)
    if tb is not None:
        tb.log_eval(iteration, metrics)
    if log is not None:
        log.write(
            json.dumps({"iteration": iteration, "eval": {k: metrics[k] for k in ("AP", "AP50", "AP75")}})
            + "\n"
        )
        log.flush()
    return metrics
