"""The one training loop that every stage (MAE, WSP, probes, fine-tuning, LiT) runs: AdamW with
linear warmup then cosine decay per step (lr = base_lr * batch_size / 256), bf16 autocast where the
device has it, gradient clipping, optional gradient accumulation and activation checkpointing
(memory, not results), DDP or FSDP2 over a job's ranks. Checkpoints and exact resume:
studylib.checkpoint. What a person watches (a bar, log lines with the ETA, TensorBoard scalars in
<run>/tensorboard/): Progress.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch
from timm.optim import param_groups_layer_decay, param_groups_weight_decay
from torch import nn
from tqdm.auto import tqdm

from studylib import distributed
from studylib.checkpoint import (
    Checkpointer,
    EpochBatches,
    TrainState,
    act_on_preemption,
    check_free_disk,
    preemption_pending,
    resume_epoch,
    set_training,
)
from studylib.errors import DivergedError
from studylib.io import duration
from studylib.models import choose_attention
from studylib.runs import Run
from studylib.schema import TrainConfig

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


def param_groups(model: nn.Module, config: TrainConfig) -> list[dict[str, Any]]:
    """AdamW groups: no weight decay on biases, norms and the model's no_weight_decay() (class
    token, position embedding); for fine-tuning (a config with layer_decay < 1, as in MAE) each
    block's lr is also scaled by layer_decay ** (blocks above it + 1), the head's by 1."""
    skip = model.no_weight_decay() if hasattr(model, "no_weight_decay") else ()
    layer_decay = getattr(config, "layer_decay", 1.0)  # only FinetuneConfig has it
    if layer_decay < 1:
        return param_groups_layer_decay(model, config.weight_decay, skip, layer_decay=layer_decay)
    return param_groups_weight_decay(model, config.weight_decay, skip)


def optimizer_for(model: nn.Module, config: TrainConfig) -> torch.optim.AdamW:
    """MAE's AdamW (betas 0.9, 0.95), fused: one kernel per tensor instead of a dozen (4x faster on
    CPU)."""
    peak = config.base_lr * config.batch_size / 256
    return torch.optim.AdamW(param_groups(model, config), lr=peak, betas=(0.9, 0.95), fused=True)


def train_step(
    model: nn.Module,
    loss_fn: LossFn,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    config: TrainConfig,
    dtype: torch.dtype | None,
) -> torch.Tensor:
    """One optimisation step, its gradients summed over `accumulation_steps` slices of the batch
    (DDP reduces them once, after the last); returns the loss, still on the device (no sync)."""
    # only image stages have it: LiT's loss is not a mean
    slices = getattr(config, "accumulation_steps", 1)
    parts = list(zip(inputs.chunk(slices), targets.chunk(slices), strict=True))
    optimizer.zero_grad(set_to_none=True)
    total = torch.zeros((), device=inputs.device)
    for k, (x, y) in enumerate(parts):
        share = len(x) / len(inputs)  # the slice's weight in the batch's mean loss
        deferred = k < len(parts) - 1 and hasattr(model, "no_sync")
        with model.no_sync() if deferred else contextlib.nullcontext():
            with torch.autocast(
                inputs.device.type, dtype=dtype or torch.float32, enabled=dtype is not None
            ):
                loss = loss_fn(model, x, y)
            (loss * share if len(parts) > 1 else loss).backward()
        total += loss.detach().float() * share
    if config.clip_grad:
        # frozen ones have no grad: skipped
        nn.utils.clip_grad_norm_(model.parameters(), config.clip_grad)
    optimizer.step()
    return total


def grad_norm(model: nn.Module) -> float:
    """The L2 norm of the gradient the last step used (after clipping); with FSDP2 every rank must
    call it."""
    from torch.distributed.tensor import DTensor

    grads = [p.grad for p in model.parameters() if p.grad is not None]
    squares = [
        (g.to_local() if isinstance(g, DTensor) else g).detach().float().square().sum()
        for g in grads
    ]
    total = torch.stack(squares).sum() if squares else torch.zeros(())
    if any(isinstance(g, DTensor) for g in grads):
        torch.distributed.all_reduce(total)
    return total.sqrt().item()


def shard(model: nn.Module, dtype: torch.dtype | None) -> None:
    """FSDP2, in place: every transformer block, then the rest, sharded over the job's ranks;
    weights gathered in `dtype` (bf16 where the run computes in it) and gradients reduced in
    fp32."""
    from timm.models.vision_transformer import Block
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    policy = MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32)
    for block in [m for m in model.modules() if isinstance(m, Block)]:
        fully_shard(block, mp_policy=policy)
    fully_shard(model, mp_policy=policy)


def tensorboard_writer(run: Run) -> Any:
    """A SummaryWriter into <run>/tensorboard/ (imported here: tensorboard is slow to import)."""
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(str(run.path / "tensorboard"))


def checkpoint_blocks(model: nn.Module) -> None:
    """Activation checkpointing of every transformer block in `model` (the MAE's encoder and decoder
    blocks too, which its forward_encoder calls directly), in place; the state dict's keys stay as
    they are. Dropout and drop path redraw the same numbers in the recomputation (torch keeps the
    RNG state)."""
    from timm.models.vision_transformer import Block
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import (
        apply_activation_checkpointing,
    )

    apply_activation_checkpointing(model, check_fn=lambda module: isinstance(module, Block))


def wrapped(
    run: Run, model: nn.Module, config: TrainConfig, device: torch.device, dtype: torch.dtype | None
) -> nn.Module:
    """`model` on `device`, ready to train: activation checkpointing, FSDP2 or DDP over the job's
    ranks and torch.compile as `config` asks. Returns what to call (`model` itself stays the one to
    save)."""
    if distributed.is_main():
        check_free_disk(run, model)
    model.to(device)
    choose_attention(model, device)
    if config.activation_checkpointing:
        checkpoint_blocks(model)
    trained = model
    if distributed.world_size() > 1 and config.sharding == "fsdp":
        shard(model, dtype)
    elif distributed.world_size() > 1:
        device_ids = [torch.cuda.current_device()] if device.type == "cuda" else None
        trained = nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
    return torch.compile(trained) if config.compile else trained


class Progress:
    """What a person watches: a tqdm bar in a terminal, elsewhere (a job's log) a line every
    PROGRESS_EVERY_S seconds with the run's ETA; TensorBoard scalars every LOG_EVERY_STEPS steps and
    every epoch. Rank 0 only."""

    def __init__(self, run: Run, epochs: int, steps: int) -> None:
        self.run, self.epochs, self.steps = run, epochs, steps
        self.main = distributed.is_main()
        self.writer = tensorboard_writer(run) if self.main else None
        self.start, self.first_step, self.last_line = time.perf_counter(), None, 0.0

    def bar(self, batches: Iterator, epoch: int, skip: int) -> tqdm:
        self.last_line = time.perf_counter()
        if self.first_step is None:  # where this process started: the ETA counts from here
            self.first_step = epoch * self.steps + skip
        return tqdm(
            batches,
            desc=f"{self.run.name} {epoch + 1}/{self.epochs}",
            leave=False,
            total=self.steps,
            initial=skip,
            disable=None if self.main else True,
        )

    def step(
        self, bar: tqdm, epoch: int, i: int, loss: torch.Tensor, lr: float, norm: float, rate: float
    ) -> None:
        step, value, now = epoch * self.steps + i + 1, loss.item(), time.perf_counter()
        for name, scalar in (
            ("loss", value),
            ("lr", lr),
            ("grad_norm", norm),
            ("images_per_s", rate),
        ):
            self.writer.add_scalar(f"train/{name}", scalar, step)
        if not bar.disable:
            bar.set_postfix(loss=f"{value:.4f}", img_s=f"{rate:.0f}")
        elif now - self.last_line >= PROGRESS_EVERY_S:
            done = step - self.first_step
            eta = (now - self.start) / done * (self.epochs * self.steps - step)
            print(
                f"[{self.run.name}] epoch {epoch + 1}/{self.epochs} step {i + 1}/{self.steps} "
                f"loss {value:.4f} {rate:.0f} img/s eta {duration(eta)}",
                flush=True,
            )
            self.last_line = now

    def epoch(self, record: dict[str, Any]) -> None:
        epoch, rate = record["epoch"], record["images_per_s"]
        self.writer.add_scalar("epoch/loss", record["loss"], epoch)
        self.writer.add_scalar("epoch/images_per_s", rate, epoch)
        self.writer.flush()
        print(
            f"[{self.run.name}] epoch {epoch}/{self.epochs} loss {record['loss']:.4f} lr "
            f"{record['lr']:.2e} {rate:.0f} img/s {record['seconds']:.1f} s",
            flush=True,
        )

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


class EpochLoop:
    """One epoch of training (MAE's train_one_epoch): the lr of every step, the step, the running
    loss, a checkpoint inside the epoch when one is due, and what Progress shows."""

    def __init__(
        self,
        model: nn.Module,
        trained: nn.Module,
        loss_fn: LossFn,
        optimizer: torch.optim.Optimizer,
        config: TrainConfig,
        device: torch.device,
        dtype: torch.dtype | None,
        checkpointer: Checkpointer,
        progress: Progress,
    ) -> None:
        self.model, self.trained, self.loss_fn, self.optimizer = model, trained, loss_fn, optimizer
        self.config, self.device, self.dtype = config, device, dtype
        self.checkpointer, self.progress = checkpointer, progress

    def set_lr(self, step: int, steps: int) -> float:
        """Linear warmup then cosine decay, per step; a group's lr_scale (layer decay) applied."""
        peak = self.optimizer.defaults["lr"]  # base_lr * batch_size / 256
        total, warmup = steps * self.config.epochs, int(self.config.warmup_epochs * steps)
        lr = lr_at(step, total, warmup, peak, self.config.min_lr)
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        return lr

    def run(
        self, epoch: int, batches: EpochBatches, state: TrainState, seed: int
    ) -> dict[str, Any]:
        """Epoch `epoch` (from the position `state` holds inside it, if any); its history line."""
        torch.manual_seed(epoch_seed(seed, epoch))
        self.model.train()
        start = last_save = time.perf_counter()
        loss_sum = torch.zeros((), device=self.device)
        # the first step with a non-finite loss, tracked on the device: no sync per step
        first_bad_step = torch.full((), -1, device=self.device)
        images, seconds_before, skip, steps = 0, 0.0, 0, len(batches)
        position, history = state.position, state.history
        if position is None:
            epoch_batches = iter(batches)  # draws the epoch's order, from the epoch's seed
        else:
            epoch_batches = resume_epoch(batches, position, self.device)
            skip, images, seconds_before = position["step"], position["images"], position["seconds"]
            loss_sum += position["loss_sum"]
            first_bad_step.fill_(position["first_bad_step"])
        bar = self.progress.bar(epoch_batches, epoch, skip)
        for i, (inputs, targets) in enumerate(bar, start=skip):
            lr = self.set_lr(epoch * steps + i, steps)
            loss = train_step(
                self.trained, self.loss_fn, inputs, targets, self.optimizer, self.config, self.dtype
            )
            loss_sum += loss.float()
            first_bad_step = torch.where(
                (first_bad_step < 0) & ~torch.isfinite(loss), i + 1, first_bad_step
            )
            images += len(inputs) * distributed.world_size()
            now = time.perf_counter()
            save, preempted = self.checkpointer.due(i + 1, steps, now - last_save)
            if save:
                reached = {
                    "step": i + 1,
                    "images": images,
                    "seconds": seconds_before + now - start,
                    "loss_sum": loss_sum.item(),
                    "first_bad_step": int(first_bad_step),
                }
                state.reach(reached, self.device)
                self.checkpointer.save(state)
                last_save = now
            if preempted and i + 1 < steps:
                act_on_preemption()
            if (i + 1) % LOG_EVERY_STEPS == 0 or i + 1 == steps:
                norm = grad_norm(self.model)  # every rank: a collective under FSDP2
                self.stop_if_diverged(loss_sum, first_bad_step, epoch, steps, history)
                rate = (images - skip * len(inputs) * distributed.world_size()) / (now - start)
                if distributed.is_main():
                    self.progress.step(bar, epoch, i, loss, lr, norm, rate)
        epoch_loss = distributed.mean(loss_sum / steps).item()  # finite: checked at the last step
        seconds = seconds_before + time.perf_counter() - start
        return {
            "epoch": epoch + 1,
            "loss": epoch_loss,
            "lr": lr,
            "seconds": seconds,
            "images_per_s": images / seconds,
        }

    def stop_if_diverged(
        self,
        loss_sum: torch.Tensor,
        first_bad_step: torch.Tensor,
        epoch: int,
        steps: int,
        history: list[dict],
    ) -> None:
        """Stop on a non-finite loss, seen at the first log point after it (every LOG_EVERY_STEPS
        steps, where the ranks sync already: they stop together), naming the first bad step and
        what was kept."""
        loss = distributed.mean(loss_sum).item()
        if math.isfinite(loss):
            return
        kept = f"the checkpoint of epoch {len(history)} is kept"
        raise DivergedError(
            f"{self.checkpointer.run.path}: loss is {loss} at epoch {epoch + 1}, step "
            f"{int(first_bad_step)}/{steps}; "
            f"{kept if history else 'no checkpoint was written'}"
        )


def train(
    run: Run,
    model: nn.Module,
    loss_fn: LossFn,
    batches: EpochBatches,
    config: TrainConfig,
    device: torch.device,
    dtype: torch.dtype | None,
    seed: int,
) -> dict[str, Any]:
    """Train `model` for `config.epochs` on `batches` (re-iterated every epoch), resuming from the
    run's checkpoint. Returns the final loss, wall time and images per second over all epochs.

    `batches` must draw each epoch's order when its iteration starts and all other randomness per
    batch from torch's global generator (as batches.Batches does): that is what makes a resume
    inside an epoch exact (checkpoint.resume_epoch). In a job of several tasks, each rank trains on
    its share of every batch (DDP or FSDP2) and only rank 0 writes."""
    trained = wrapped(run, model, config, device, dtype)
    optimizer = optimizer_for(model, config)
    checkpointer = Checkpointer(run, model, optimizer, config, device)
    state = checkpointer.load()
    history = state.history
    if (history or state.position) and distributed.is_main():
        run.write_metrics(history)  # the checkpoint is the truth; drop lines of an unfinished epoch
        _say_resuming(run, len(history), config.epochs, state.position, len(batches))
    progress = Progress(run, config.epochs, len(batches))
    loop = EpochLoop(
        model, trained, loss_fn, optimizer, config, device, dtype, checkpointer, progress
    )
    set_training(True)
    try:
        for epoch in range(len(history), config.epochs):
            state.finish_epoch(loop.run(epoch, batches, state, seed))
            checkpointer.save(state)
            if distributed.is_main():
                run.write_metrics(history)
                progress.epoch(history[-1])
            if preemption_pending() and epoch + 1 < config.epochs:
                act_on_preemption()
    finally:
        set_training(False)
        progress.close()
    if preemption_pending():  # it came during the last step: the run is complete, its job is not
        act_on_preemption()
    seconds = sum(r["seconds"] for r in history)
    images_seen = sum(r["images_per_s"] * r["seconds"] for r in history)
    return {
        "final_loss": history[-1]["loss"],
        "epochs": len(history),
        "wall_time_s": seconds,
        "images_per_s": images_seen / seconds,
        "images_seen": round(images_seen),
    }


def _say_resuming(run: Run, done: int, epochs: int, position: dict | None, steps: int) -> None:
    inside = f", step {position['step']}/{steps} of epoch {done + 1}" if position else ""
    print(f"[{run.name}] resuming after epoch {done}/{epochs}{inside}", flush=True)
