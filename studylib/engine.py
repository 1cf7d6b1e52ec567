"""The one training loop that every stage (MAE, WSP, probes, fine-tuning, LiT) runs.

AdamW with per-step linear warmup then cosine decay, lr = base_lr * batch_size / 256, bf16
autocast where the device supports it, gradient clipping. After every epoch the model, optimizer
and metric history go into the run's single checkpoint.pth (atomically), and a later call with
the same run resumes from the epoch after it: a crash costs at most the epoch in progress.

What you can watch: a tqdm bar in a terminal; elsewhere (a job's log, which `studylib.launch.watch`
reads) a progress line every PROGRESS_EVERY_S seconds with the step, loss, images/s and the run's ETA;
and TensorBoard scalars in <run>/tensorboard/ (per LOG_EVERY_STEPS steps: loss, lr, gradient norm,
images/s; per epoch: the epoch's loss) for `tensorboard --logdir runs`.
"""

from __future__ import annotations

import math
import shutil
import time
from collections.abc import Callable, Iterable
from typing import Any

import torch
from timm.optim import param_groups_layer_decay, param_groups_weight_decay
from torch import nn
from tqdm.auto import tqdm

from studylib import distributed
from studylib.config import TrainConfig
from studylib.errors import DivergedError, RunFolderError
from studylib.models import choose_attention
from studylib.runs import Run

LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]
PROGRESS_EVERY_S = 10.0
LOG_EVERY_STEPS = 10


def lr_at(step: int, total: int, warmup: int, peak: float, floor: float) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return floor + (peak - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def epoch_seed(seed: int, epoch: int) -> int:
    return seed * 100_003 + epoch


def check_free_disk(run: Run, model: nn.Module) -> None:
    """Fail before training when the run's disk cannot hold what it writes at its peak: three checkpoints
    (current, previous and the one being written) of weights and AdamW moments, plus the encoder."""
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    needed = 3 * 3 * weights + weights + (64 << 20)
    folder = next(p for p in (run.path, *run.path.parents) if p.exists())
    free = shutil.disk_usage(folder).free
    if free < needed:
        raise RunFolderError(f"{folder}: too little free disk for the checkpoints of {run.name}: "
                          f"needs {needed / 2**30:.2f} GiB, has {free / 2**30:.2f} GiB")


def param_groups(model: nn.Module, config: TrainConfig) -> list[dict[str, Any]]:
    """AdamW groups: no weight decay on biases, norms and the model's no_weight_decay() (class token,
    position embedding); for fine-tuning (a config with layer_decay < 1, as in MAE) each block's lr is
    also scaled by layer_decay ** (blocks above it + 1), the head's by 1."""
    skip = model.no_weight_decay() if hasattr(model, "no_weight_decay") else ()
    layer_decay = getattr(config, "layer_decay", 1.0)  # only FinetuneConfig has it
    if layer_decay < 1:
        return param_groups_layer_decay(model, config.weight_decay, skip, layer_decay=layer_decay)
    return param_groups_weight_decay(model, config.weight_decay, skip)


def optimizer_for(model: nn.Module, config: TrainConfig) -> torch.optim.AdamW:
    """MAE's AdamW (betas 0.9, 0.95), fused: one kernel per tensor instead of a dozen (4x faster on CPU)."""
    peak = config.base_lr * config.batch_size / 256
    return torch.optim.AdamW(param_groups(model, config), lr=peak, betas=(0.9, 0.95), fused=True)


def train_step(model: nn.Module, loss_fn: LossFn, inputs: torch.Tensor, targets: torch.Tensor,
               optimizer: torch.optim.Optimizer, config: TrainConfig, dtype: torch.dtype | None) -> torch.Tensor:
    """One optimisation step; returns the loss, still on the device (no sync)."""
    with torch.autocast(inputs.device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
        loss = loss_fn(model, inputs, targets)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if config.clip_grad:
        nn.utils.clip_grad_norm_(model.parameters(), config.clip_grad)  # frozen ones have no grad: skipped
    optimizer.step()
    return loss.detach()


def grad_norm(model: nn.Module) -> float:
    """The L2 norm of the gradient the last step used (after clipping)."""
    norms = [p.grad.detach().float().norm() for p in model.parameters() if p.grad is not None]
    return torch.stack(norms).norm().item() if norms else 0.0


def duration(seconds: float) -> str:
    """'1h02m', '3m05s', '12s'."""
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def tensorboard_writer(run: Run) -> Any:
    """A SummaryWriter into <run>/tensorboard/ (imported here: tensorboard is slow to import)."""
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(str(run.path / "tensorboard"))


def train(run: Run, model: nn.Module, loss_fn: LossFn, batches: Iterable, config: TrainConfig,
          device: torch.device, dtype: torch.dtype | None, seed: int) -> dict[str, Any]:
    """Train `model` for `config.epochs` on `batches` (re-iterated every epoch), resuming from the
    run's checkpoint. Returns the final loss, wall time and images per second over all epochs.

    In a job of several tasks, the model is wrapped in DistributedDataParallel, each rank trains on
    its share of every batch, and only rank 0 writes."""
    main = distributed.is_main()
    if main:
        check_free_disk(run, model)
    model.to(device)
    choose_attention(model, device)
    trained = model
    if distributed.world_size() > 1:
        device_ids = [torch.cuda.current_device()] if device.type == "cuda" else None
        trained = nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
    if config.compile:
        trained = torch.compile(trained)
    optimizer = optimizer_for(model, config)
    peak = optimizer.defaults["lr"]  # base_lr * batch_size / 256
    history: list[dict[str, Any]] = []
    state = run.load(run.checkpoint.name, map_location=device)
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        history = state["history"]
        if main:
            run.write_metrics(history)  # the checkpoint is the truth; drop lines of an unfinished epoch
            print(f"[{run.name}] resuming after epoch {len(history)}/{config.epochs}", flush=True)

    steps = len(batches)
    total, warmup = steps * config.epochs, int(config.warmup_epochs * steps)
    writer = tensorboard_writer(run) if main else None
    session_start, session_steps = time.perf_counter(), 0
    for epoch in range(len(history), config.epochs):
        torch.manual_seed(epoch_seed(seed, epoch))
        model.train()
        start = last_line = time.perf_counter()
        loss_sum = torch.zeros((), device=device)
        first_bad_step = torch.full((), -1, device=device)  # tracked on the device: no sync per step
        images = 0
        bar = tqdm(batches, desc=f"{run.name} {epoch + 1}/{config.epochs}", leave=False,
                   disable=None if main else True)
        for i, (inputs, targets) in enumerate(bar):
            step = epoch * steps + i
            lr = lr_at(step, total, warmup, peak, config.min_lr)
            for group in optimizer.param_groups:
                group["lr"] = lr * group.get("lr_scale", 1.0)
            loss = train_step(trained, loss_fn, inputs, targets, optimizer, config, dtype)
            loss_sum += loss.float()
            first_bad_step = torch.where((first_bad_step < 0) & ~torch.isfinite(loss), i + 1, first_bad_step)
            images += len(inputs) * distributed.world_size()
            session_steps += 1
            if not main or (i + 1) % LOG_EVERY_STEPS and i + 1 < steps:
                continue
            now, value = time.perf_counter(), loss.item()
            rate = images / (now - start)
            writer.add_scalar("train/loss", value, step + 1)
            writer.add_scalar("train/lr", lr, step + 1)
            writer.add_scalar("train/grad_norm", grad_norm(model), step + 1)
            writer.add_scalar("train/images_per_s", rate, step + 1)
            if not bar.disable:
                bar.set_postfix(loss=f"{value:.4f}", img_s=f"{rate:.0f}")
            elif now - last_line >= PROGRESS_EVERY_S:
                eta = (now - session_start) / session_steps * (total - step - 1)
                print(f"[{run.name}] epoch {epoch + 1}/{config.epochs} step {i + 1}/{steps} loss {value:.4f} "
                      f"{rate:.0f} img/s eta {duration(eta)}", flush=True)
                last_line = now
        epoch_loss = distributed.mean(loss_sum / steps).item()
        if not math.isfinite(epoch_loss):
            kept = f"the checkpoint of epoch {len(history)} is kept" if history else "no checkpoint was written"
            raise DivergedError(f"{run.path}: loss is {epoch_loss} at epoch {epoch + 1}, step "
                                f"{int(first_bad_step)}/{steps}; {kept}")
        seconds = time.perf_counter() - start
        history.append({"epoch": epoch + 1, "loss": epoch_loss, "lr": lr, "seconds": seconds,
                        "images_per_s": images / seconds})
        if not main:
            continue
        state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "history": history}
        run.save(run.checkpoint.name, state, keep_previous=True)
        run.write_metrics(history)
        writer.add_scalar("epoch/loss", epoch_loss, epoch + 1)
        writer.add_scalar("epoch/images_per_s", images / seconds, epoch + 1)
        writer.flush()
        print(f"[{run.name}] epoch {epoch + 1}/{config.epochs} loss {epoch_loss:.4f} lr {lr:.2e} "
              f"{images / seconds:.0f} img/s {seconds:.1f} s", flush=True)

    if writer is not None:
        writer.close()
    seconds = sum(r["seconds"] for r in history)
    images_seen = sum(r["images_per_s"] * r["seconds"] for r in history)
    return {"final_loss": history[-1]["loss"], "epochs": len(history), "wall_time_s": seconds,
            "images_per_s": images_seen / seconds, "images_seen": round(images_seen)}
