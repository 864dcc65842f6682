"""The training loop: one model, one resolution, read top to bottom.

``train(config)`` loads the records, splits them by patient, builds the model and runs
the protocol of :mod:`training.config`: AdamW, BCE, LR / 10 after ``lr_patience`` epochs
without validation-loss improvement (or, with ``lr_schedule="cosine"``, warm-up then cosine
decay over the run), early stop after ``early_stop_patience``, the best checkpoint by
validation AUROC (or, with ``keep="last"``, the last). Mixed precision on CUDA,
channels-last on CUDA and CPU, gradient checkpointing at high resolution,
DistributedDataParallel under ``torchrun`` (one process per GPU; ``gloo`` on CPU),
resumable from ``out_dir/last.pt``.

Checkpoints (``best.pt``, ``last.pt``) are dicts that carry everything needed to rebuild,
resume, evaluate and export: ``model_state``, ``model_config`` (``build_model`` kwargs +
``resolution`` + ``labels``), ``train_config``, ``epoch``, ``threshold`` (Youden's J on the
validation split), ``val`` metrics, ``history``, and the optimiser/scheduler state.
"""

from __future__ import annotations

import logging
import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

from cxrmodel.checkpoint import load_checkpoint, save_checkpoint, use_channels_last
from cxrmodel.networks import build_model
from training.config import TrainConfig
from training.data import label_names, load_records, split_records
from training.datasets import Augment, CXRDataset, PreprocessCache
from training.evaluate import Predictions, mean_auroc, predict, youden_threshold
from training.schedule import CosineSchedule

logger = logging.getLogger(__name__)


@dataclass
class TrainResult:
    out_dir: Path
    best_checkpoint: Path
    best_val_auroc: float
    best_epoch: int
    threshold: float
    epochs_run: int
    stopped_because: str
    history: list[dict[str, float]] = field(default_factory=list)


# ------------------------------------------------------------------------ setup helpers
def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' requested but no CUDA GPU is available")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _distributed() -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's environment; (0, 1, 0) otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, 0
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend=backend)
    return dist.get_rank(), world, int(os.environ.get("LOCAL_RANK", "0"))


def _loader(
    dataset: CXRDataset, batch_size: int, *, shuffle: bool, workers: int, seed: int,
    world: int, rank: int,
) -> DataLoader:  # fmt: skip
    sampler = (
        DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=shuffle, seed=seed)
        if world > 1
        else None
    )
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle and sampler is None,
        sampler=sampler,
        num_workers=workers,
        persistent_workers=workers > 0,
        pin_memory=torch.cuda.is_available(),
        generator=torch.Generator().manual_seed(seed),
        drop_last=shuffle and len(dataset) > batch_size,
    )


def _better(auroc: float, loss: float, best_auroc: float, best_loss: float) -> bool:
    """Best by validation AUROC; by loss while AUROC is undefined (one class only)."""
    if math.isnan(auroc):
        return math.isnan(best_auroc) and loss < best_loss
    return math.isnan(best_auroc) or auroc > best_auroc


def _budget_left(budget_s: float | None, started: float) -> str:
    """``", 42 s of the 60 s budget left"`` for a log line; empty without a budget."""
    if budget_s is None:
        return ""
    left = max(0.0, budget_s - (time.monotonic() - started))
    return f", {left:.0f} s of the {budget_s:.0f} s budget left"


# ------------------------------------------------------------------------ the loop
def train(cfg: TrainConfig, *, trial: Any = None) -> TrainResult:
    """Train one model; ``trial`` is an optional Optuna trial (reports AUROC, may prune)."""
    cfg.validate()
    rank, world, local_rank = _distributed()
    is_main = rank == 0
    device = resolve_device(cfg.device)
    if device.type == "cuda" and world > 1:
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    seed_everything(cfg.seed + rank)
    out_dir = Path(cfg.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()

    # ---- data: records -> patient-level split -> datasets (cached model inputs)
    records = load_records(cfg)
    train_records, val_records = split_records(cfg, records)
    labels = label_names(cfg)
    cache = PreprocessCache(Path(cfg.cache_dir) if cfg.cache_dir else None)
    augment = (
        Augment(strength=cfg.augment_strength, gamma=cfg.augment_gamma)
        if cfg.augment_strength > 0
        else None
    )
    train_set = CXRDataset(train_records, cfg.resolution, augment=augment, cache=cache)
    val_set = CXRDataset(val_records, cfg.resolution, cache=cache)
    batch = cfg.effective_batch_size
    workers = cfg.num_workers
    train_loader = _loader(train_set, batch, shuffle=True, workers=workers, seed=cfg.seed,
                           world=world, rank=rank)  # fmt: skip
    val_loader = _loader(val_set, batch, shuffle=False, workers=workers, seed=cfg.seed,
                         world=1, rank=0)  # fmt: skip
    if is_main:
        logger.info(
            "%d px data: %d training and %d validation images, labels %s",
            cfg.resolution, len(train_set), len(val_set), ", ".join(labels),
            extra={"train": len(train_set), "val": len(val_set), "labels": labels},
        )  # fmt: skip

    # ---- model, optimiser, schedule
    model = build_model(
        architecture=cfg.architecture,
        downsample=cfg.downsample,
        num_classes=len(labels),
        pretrained=cfg.pretrained,
    )
    if cfg.init_from:
        # Fully convolutional + global pooling: weights transfer across input resolutions.
        model.load_state_dict(load_checkpoint(cfg.init_from)["model_state"])
    model.set_gradient_checkpointing(cfg.checkpointing_enabled())
    model.to(device)
    use_cuda_extras = device.type == "cuda"
    if cfg.channels_last:
        use_channels_last(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode="min", factor=cfg.lr_factor, patience=cfg.lr_patience
    )
    cosine = cfg.lr_schedule == "cosine"
    if cosine and world > 1 and cfg.time_budget_s is not None:
        # Ranks' clocks differ and must not steer their LRs apart; steps agree everywhere.
        raise ValueError("under torchrun the cosine schedule is sized by --max-epochs; "
                         "drop --time-budget-s or use --lr-schedule plateau")  # fmt: skip
    steps_per_epoch = len(train_loader)
    if cfg.max_train_batches is not None:
        steps_per_epoch = min(steps_per_epoch, cfg.max_train_batches)
    amp = cfg.amp and use_cuda_extras
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    net: torch.nn.Module = (
        DistributedDataParallel(model, device_ids=[device] if use_cuda_extras else None)
        if world > 1
        else model
    )

    # ---- resume
    start_epoch, best_auroc, best_loss, bad_epochs = 0, math.nan, math.inf, 0
    resumed_progress = 0.0
    best_epoch, threshold = -1, 0.5
    history: list[dict[str, float]] = []
    last_path, best_path = out_dir / "last.pt", out_dir / "best.pt"
    if cfg.resume and last_path.exists():
        state = load_checkpoint(last_path)
        model.load_state_dict(state["model_state"])
        optimizer.load_state_dict(state["optimizer_state"])
        scheduler.load_state_dict(state["scheduler_state"])
        start_epoch = int(state["epoch"]) + 1
        best_auroc, best_loss = state["best_val_auroc"], state["best_val_loss"]
        bad_epochs, best_epoch = state["bad_epochs"], state["best_epoch"]
        threshold, history = state["threshold"], state["history"]
        resumed_progress = float(state.get("schedule", {}).get("progress", 0.0))
        if is_main:
            logger.info(
                "%d px: resumed at epoch %d from %s",
                cfg.resolution,
                start_epoch,
                last_path,
                extra={"epoch": start_epoch, "from": str(last_path)},
            )

    model_config = {**model.config(), "resolution": cfg.resolution, "labels": labels}

    def over_budget() -> bool:
        return cfg.time_budget_s is not None and time.monotonic() - started > cfg.time_budget_s

    schedule = CosineSchedule(cfg.lr, cfg.warmup_fraction, cfg.max_epochs * steps_per_epoch,
                              cfg.time_budget_s, started, resumed_progress)  # fmt: skip

    stopped = "max_epochs"
    epochs_run = 0
    for epoch in range(start_epoch, cfg.max_epochs):
        if bad_epochs >= cfg.early_stop_patience:
            stopped = "early_stop"
            break
        epochs_run += 1
        if isinstance(train_loader.sampler, DistributedSampler):
            train_loader.sampler.set_epoch(epoch)
        net.train()
        running, seen = 0.0, 0
        bar = tqdm(train_loader, desc=f"epoch {epoch} {cfg.resolution}px", leave=False,
                   disable=not (cfg.progress and is_main))  # fmt: skip
        for step, item in enumerate(bar):
            if cfg.max_train_batches is not None and step >= cfg.max_train_batches:
                break
            # A budget is a wall-clock promise: at 1024 px on a CPU one epoch can take
            # minutes, so a single process also stops mid-epoch (then validates as usual).
            # Under DDP only rank 0's end-of-epoch decision counts, to keep ranks in step.
            if world == 1 and step > 0 and over_budget():
                break
            if cosine:
                lr_now = schedule.lr(epoch * steps_per_epoch + step)
                for group in optimizer.param_groups:
                    group["lr"] = lr_now
            images = item["image"].to(device, non_blocking=True)
            target = item["label"].to(device)
            known = ~torch.isnan(target)
            with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
                logits = net(images)
            loss = torch.nn.functional.binary_cross_entropy_with_logits(
                logits.float()[known], target[known]
            )
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            running += float(loss.detach()) * images.shape[0]
            seen += images.shape[0]
            bar.set_postfix(loss=f"{running / max(seen, 1):.4f}")

        # ---- validation (rank 0 evaluates the whole split; others wait)
        val: Predictions | None = predict(model, val_loader, device) if is_main else None
        stats = {"epoch": float(epoch), "train_loss": running / max(seen, 1)}
        if val is not None:
            val_auroc = mean_auroc(val)
            stats.update(val_loss=val.loss, val_auroc=val_auroc, lr=optimizer.param_groups[0]["lr"])
            if not cosine:
                scheduler.step(val.loss)
            bad_epochs = 0 if val.loss < best_loss - 1e-6 else bad_epochs + 1
            if cfg.keep == "last" or _better(val_auroc, val.loss, best_auroc, best_loss):
                best_auroc, best_epoch = val_auroc, epoch
                threshold = youden_threshold(val.labels[:, 0], val.probabilities[:, 0])
                save_checkpoint(best_path, {
                    "model_state": model.state_dict(), "model_config": model_config,
                    "train_config": cfg.to_dict(), "epoch": epoch, "threshold": threshold,
                    "val": {"auroc": val_auroc, "loss": val.loss, "n": len(val_set)},
                })  # fmt: skip
            best_loss = min(best_loss, val.loss)
            history.append(stats)
            save_checkpoint(last_path, {
                "model_state": model.state_dict(), "model_config": model_config,
                "train_config": cfg.to_dict(), "epoch": epoch,
                "optimizer_state": optimizer.state_dict(),
                "scheduler_state": scheduler.state_dict(), "schedule": schedule.state(),
                "best_val_auroc": best_auroc,
                "best_val_loss": best_loss, "bad_epochs": bad_epochs, "best_epoch": best_epoch,
                "threshold": threshold, "history": history,
            })  # fmt: skip
            logger.info(
                "%d px epoch %d: train loss %.4f, validation loss %.4f, validation AUROC %.3f, "
                "lr %.1e%s", cfg.resolution, epoch, stats["train_loss"], val.loss, val_auroc,
                stats["lr"], _budget_left(cfg.time_budget_s, started), extra=stats,
            )  # fmt: skip
            if cfg.progress:
                tqdm.write(
                    f"epoch {epoch}: train {stats['train_loss']:.4f} val {val.loss:.4f} "
                    f"AUROC {val_auroc:.3f} lr {stats['lr']:.1e}"
                )
            if trial is not None:
                trial.report(val_auroc if not math.isnan(val_auroc) else 0.0, epoch)
                if trial.should_prune():
                    stopped = "pruned"
                    break
        if world > 1:
            # Every rank follows rank 0's validation: the same LR schedule, the same stop.
            shared = torch.tensor(
                [val.loss if val is not None else 0.0, float(bad_epochs), float(over_budget())],
                device=device if use_cuda_extras else "cpu",
            )
            dist.broadcast(shared, src=0)
            bad_epochs = int(shared[1].item())
            if not is_main and not cosine:
                scheduler.step(float(shared[0].item()))
            budget_spent = bool(shared[2].item())
        else:
            budget_spent = over_budget()
        if budget_spent:
            stopped = "time_budget"
            break
    else:
        stopped = "max_epochs" if bad_epochs < cfg.early_stop_patience else "early_stop"

    if world > 1:
        dist.barrier()
    return TrainResult(
        out_dir=out_dir,
        best_checkpoint=best_path,
        best_val_auroc=best_auroc,
        best_epoch=best_epoch,
        threshold=threshold,
        epochs_run=epochs_run,
        stopped_because=stopped,
        history=history,
    )
