"""The one training loop that every stage (MAE, WSP, probes, fine-tuning, LiT) runs.

AdamW with per-step linear warmup then cosine decay, lr = base_lr * batch_size / 256, bf16
autocast where the device supports it, gradient clipping. After every epoch the model, optimizer
and metric history go into the run's single checkpoint.pth (atomically), and a later call with
the same run resumes from the epoch after it: a crash costs at most the epoch in progress.
With `checkpoint_every_steps` or `checkpoint_every_min`, checkpoint.pth is also written inside an
epoch, holding the step reached and the random state: a resumed run redraws the epoch's order from
its seed, passes the batches already trained and goes on with exactly the batches, crops and masks
an uninterrupted run would have drawn. In a SLURM job, the preemption signal (submitit's USR2) is
acted on at the end of the step in progress: a checkpoint there, then submitit requeues the job.
With `checkpoint_format: sharded` the checkpoint is a folder, checkpoint.dcp/, that every rank writes its
own shards into (torch.distributed.checkpoint), read back resharded to any number of ranks.

Memory, not results: `accumulation_steps` slices every batch and adds up the slices' gradients
before one optimizer step; `activation_checkpointing` recomputes each transformer block's
activations in the backward pass (torch's checkpoint wrapper, which keeps the state dict's keys).

What you can watch: a tqdm bar in a terminal; elsewhere (a job's log, which `studylib.launch.watch`
reads) a progress line every PROGRESS_EVERY_S seconds with the step, loss, images/s and the run's ETA;
and TensorBoard scalars in <run>/tensorboard/ (per LOG_EVERY_STEPS steps: loss, lr, gradient norm,
images/s; per epoch: the epoch's loss) for `tensorboard --logdir runs`.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import signal
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
from timm.optim import param_groups_layer_decay, param_groups_weight_decay
from torch import nn
from tqdm.auto import tqdm

from studylib import distributed
from studylib.config import TrainConfig
from studylib.errors import DivergedError, RunFolderError, shown
from studylib.models import choose_attention, full_state
from studylib.runs import Run, warn

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
    """One optimisation step, its gradients summed over `accumulation_steps` slices of the batch (DDP
    reduces them once, after the last); returns the loss, still on the device (no sync)."""
    slices = getattr(config, "accumulation_steps", 1)  # only image stages have it: LiT's loss is not a mean
    parts = list(zip(inputs.chunk(slices), targets.chunk(slices), strict=True))
    optimizer.zero_grad(set_to_none=True)
    total = torch.zeros((), device=inputs.device)
    for k, (x, y) in enumerate(parts):
        share = len(x) / len(inputs)  # the slice's weight in the batch's mean loss
        deferred = k < len(parts) - 1 and hasattr(model, "no_sync")
        with model.no_sync() if deferred else contextlib.nullcontext():
            with torch.autocast(inputs.device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
                loss = loss_fn(model, x, y)
            (loss * share if len(parts) > 1 else loss).backward()
        total += loss.detach().float() * share
    if config.clip_grad:
        nn.utils.clip_grad_norm_(model.parameters(), config.clip_grad)  # frozen ones have no grad: skipped
    optimizer.step()
    return total


def grad_norm(model: nn.Module) -> float:
    """The L2 norm of the gradient the last step used (after clipping); with FSDP2 every rank must call it."""
    from torch.distributed.tensor import DTensor

    grads = [p.grad for p in model.parameters() if p.grad is not None]
    squares = [(g.to_local() if isinstance(g, DTensor) else g).detach().float().square().sum() for g in grads]
    total = torch.stack(squares).sum() if squares else torch.zeros(())
    if any(isinstance(g, DTensor) for g in grads):
        torch.distributed.all_reduce(total)
    return total.sqrt().item()


def shard(model: nn.Module, dtype: torch.dtype | None) -> None:
    """FSDP2, in place: every transformer block, then the rest, sharded over the job's ranks; weights
    gathered in `dtype` (bf16 where the run computes in it) and gradients reduced in fp32."""
    from timm.models.vision_transformer import Block
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    policy = MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32)
    for block in [m for m in model.modules() if isinstance(m, Block)]:
        fully_shard(block, mp_policy=policy)
    fully_shard(model, mp_policy=policy)


def checkpoint_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The model's and optimizer's state with whole tensors (FSDP2's shards gathered: every rank must call
    it), so a checkpoint resumes under any sharding and any number of ranks."""
    from torch.distributed.tensor import DTensor

    saved = optimizer.state_dict()
    saved["state"] = {i: {k: v.full_tensor() if isinstance(v, DTensor) else v for k, v in moments.items()}
                      for i, moments in saved["state"].items()}
    return {"model": full_state(model), "optimizer": saved}


def load_checkpoint_state(model: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """checkpoint_state's whole tensors into `model` and `optimizer`, sharded again where they are."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    def like(value: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
        if isinstance(reference, DTensor) and not isinstance(value, DTensor):
            return distribute_tensor(value.to(reference.dtype), reference.device_mesh, reference.placements)
        return value

    current = model.state_dict()
    model.load_state_dict({k: like(v, current[k]) for k, v in state["model"].items()})
    optimizer.load_state_dict(state["optimizer"])
    for group in optimizer.param_groups:
        for param in group["params"]:
            moments = optimizer.state.get(param, {})
            for key, value in moments.items():
                if torch.is_tensor(value) and value.shape == param.shape:
                    moments[key] = like(value, param)


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


def checkpoint_blocks(model: nn.Module) -> None:
    """Activation checkpointing of every transformer block in `model` (the MAE's encoder and decoder
    blocks too, which its forward_encoder calls directly), in place; the state dict's keys stay as they
    are. Dropout and drop path redraw the same numbers in the recomputation (torch keeps the RNG state)."""
    from timm.models.vision_transformer import Block
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import apply_activation_checkpointing

    apply_activation_checkpointing(model, check_fn=lambda module: isinstance(module, Block))


_preemption: dict[str, Any] = {"training": False, "pending": None, "handler": None}


def _preemption_signal() -> int:
    return getattr(signal, "SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2"))


def catch_preemption() -> None:
    """In a submitit job: take over its preemption signal (USR2 unless $SUBMITIT_PREEMPT_SIGNAL says
    otherwise). During training the signal waits for the end of the step in progress, where `train`
    writes a checkpoint and then calls submitit's handler, which requeues the job; outside training
    that handler runs at once, as before."""
    signum = _preemption_signal()
    _preemption["handler"] = signal.getsignal(signum)
    if not callable(_preemption["handler"]):
        return  # no job handler to defer to (not a submitit job)

    def on_signal(number: int, frame: Any) -> None:
        if _preemption["training"]:
            _preemption["pending"] = (number, frame)
        else:
            _preemption["handler"](number, frame)

    signal.signal(signum, on_signal)


def _act_on_preemption() -> None:
    """The deferred signal's handler, now that the checkpoint is written (on a rank that has not seen the
    signal yet, as if it had)."""
    number, frame = _preemption["pending"] or (_preemption_signal(), None)
    _preemption["pending"] = None
    handler = _preemption["handler"]
    print(f"preempted (signal {signal.Signals(number).name}): checkpoint written, handing over to the job's "
          "handler", flush=True)
    if callable(handler):
        handler(number, frame)  # submitit's: requeue the job, then exit
    raise SystemExit(f"preempted by signal {number}")  # a handler that returned: stop here all the same


SHARDED = "checkpoint.dcp"  # a run's sharded checkpoint folder; the one before it: checkpoint.prev.dcp


def save_checkpoint(run: Run, model: nn.Module, optimizer: torch.optim.Optimizer, progress: dict[str, Any],
                    config: TrainConfig) -> None:
    """The weights, optimizer and `progress` (the finished epochs' history, and inside an epoch the position) as
    config.checkpoint_format says, the previous checkpoint kept as the fallback. Called on every rank."""
    if config.checkpoint_format == "whole":
        state = {**checkpoint_state(model, optimizer), **progress}  # FSDP2's shards gathered
        if distributed.is_main():
            run.save(run.checkpoint.name, state, keep_previous=True)
        return
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_state, optimizer_state = get_state_dict(model, optimizer)
    new, folder, previous = run.path / f".{SHARDED}.tmp", run.path / SHARDED, run.path / "checkpoint.prev.dcp"
    if distributed.is_main():
        shutil.rmtree(new, ignore_errors=True)
    distributed.barrier()
    # a tuple is one object to DCP: the run's name and the progress, saved whole by one rank
    dcp.save({"model": model_state, "optimizer": optimizer_state, "progress": (run.name, progress)},
             checkpoint_id=new)
    if distributed.is_main():
        shutil.rmtree(previous, ignore_errors=True)
        if folder.exists():
            folder.rename(previous)
        new.rename(folder)
    distributed.barrier()


def load_checkpoint(run: Run, model: nn.Module, optimizer: torch.optim.Optimizer, config: TrainConfig,
                    device: torch.device) -> dict[str, Any] | None:
    """The progress of the run's checkpoint (history, position), its weights and optimizer state loaded; None
    where there is none. A sharded one is read by every rank, resharded to this job's ranks; where it cannot
    be read, the one before it."""
    if config.checkpoint_format == "whole":
        state = run.load(run.checkpoint.name, map_location=device)
        if state is not None:
            load_checkpoint_state(model, optimizer, state)
        return state
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    for folder in (run.path / SHARDED, run.path / "checkpoint.prev.dcp"):
        if not (folder / ".metadata").is_file():
            continue
        model_state, optimizer_state = get_state_dict(model, optimizer)
        state = {"model": model_state, "optimizer": optimizer_state, "progress": ()}
        try:
            dcp.load(state, checkpoint_id=folder)
        except (RuntimeError, OSError, ValueError, dcp.api.CheckpointException) as err:
            warn(f"{folder}: cannot be read ({shown(str(err), 120)}); trying the checkpoint before it")
            continue
        name, progress = state["progress"]
        if name != run.name:
            raise RunFolderError(f"{folder}: a checkpoint of run {name}, not of {run.name}; move it away or delete "
                                 f"{run.path}")
        set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])
        return progress
    return None


def save_inside_epoch(run: Run, model: nn.Module, optimizer: torch.optim.Optimizer, history: list[dict],
                      reached: dict[str, Any], device: torch.device, config: TrainConfig) -> None:
    """A checkpoint inside an epoch: the weights, the finished epochs' `history` and the position `reached` (step,
    images, seconds, loss sum, first bad step) with the random state after it. Called on every rank."""
    position = {**reached, "rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None}
    save_checkpoint(run, model, optimizer, {"history": history, "position": position}, config)


def resume_epoch(batches: Iterable, position: dict[str, Any], device: torch.device) -> Iterator:
    """The epoch's batches from the saved position's step on, with the random state as it was there. The epoch's
    order is drawn first, from the epoch's seed; batches with a `start_step` (streamed ones) start at the step
    themselves, others are passed over up to it."""
    if hasattr(batches, "start_step"):
        batches.start_step = position["step"]
    epoch_batches = iter(batches)
    for _ in range(0 if hasattr(batches, "start_step") else position["step"]):
        next(epoch_batches)
    torch.set_rng_state(position["rng"].cpu())
    if device.type == "cuda":
        torch.cuda.set_rng_state(position["cuda_rng"].cpu(), device)
    return epoch_batches


def train(run: Run, model: nn.Module, loss_fn: LossFn, batches: Iterable, config: TrainConfig,
          device: torch.device, dtype: torch.dtype | None, seed: int) -> dict[str, Any]:
    """Train `model` for `config.epochs` on `batches` (re-iterated every epoch), resuming from the
    run's checkpoint. Returns the final loss, wall time and images per second over all epochs.

    `batches` must draw each epoch's order when its iteration starts and all other randomness per batch
    from torch's global generator (as studylib.data.Batches does): that is what makes a resume inside
    an epoch exact (see resume_epoch). In a job of several tasks, the model is wrapped in
    DistributedDataParallel, each rank trains on its share of every batch, and only rank 0 writes."""
    main = distributed.is_main()
    if main:
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
    if config.compile:
        trained = torch.compile(trained)
    optimizer = optimizer_for(model, config)
    peak = optimizer.defaults["lr"]  # base_lr * batch_size / 256
    steps = len(batches)
    history: list[dict[str, Any]] = []
    position = None  # where a checkpoint inside an epoch left off
    state = load_checkpoint(run, model, optimizer, config, device)
    if state is not None:
        history, position = state["history"], state.get("position")
        if main:
            run.write_metrics(history)  # the checkpoint is the truth; drop lines of an unfinished epoch
            inside = f", step {position['step']}/{steps} of epoch {len(history) + 1}" if position else ""
            print(f"[{run.name}] resuming after epoch {len(history)}/{config.epochs}{inside}", flush=True)

    total, warmup = steps * config.epochs, int(config.warmup_epochs * steps)
    writer = tensorboard_writer(run) if main else None
    session_start, session_steps = time.perf_counter(), 0
    _preemption["training"] = True
    try:
        for epoch in range(len(history), config.epochs):
            torch.manual_seed(epoch_seed(seed, epoch))
            model.train()
            start = last_line = last_save = time.perf_counter()
            loss_sum = torch.zeros((), device=device)
            first_bad_step = torch.full((), -1, device=device)  # tracked on the device: no sync per step
            images, seconds_before, skip = 0, 0.0, 0
            if position is None:
                epoch_batches = iter(batches)  # draws the epoch's order, from the epoch's seed
            else:
                epoch_batches = resume_epoch(batches, position, device)
                skip, images, seconds_before = position["step"], position["images"], position["seconds"]
                loss_sum += position["loss_sum"]
                first_bad_step.fill_(position["first_bad_step"])
                position = None
            bar = tqdm(epoch_batches, desc=f"{run.name} {epoch + 1}/{config.epochs}", leave=False, total=steps,
                       initial=skip, disable=None if main else True)
            for i, (inputs, targets) in enumerate(bar, start=skip):
                step = epoch * steps + i
                lr = lr_at(step, total, warmup, peak, config.min_lr)
                for group in optimizer.param_groups:
                    group["lr"] = lr * group.get("lr_scale", 1.0)
                loss = train_step(trained, loss_fn, inputs, targets, optimizer, config, dtype)
                loss_sum += loss.float()
                first_bad_step = torch.where((first_bad_step < 0) & ~torch.isfinite(loss), i + 1, first_bad_step)
                images += len(inputs) * distributed.world_size()
                session_steps += 1
                now = time.perf_counter()
                timed = bool(config.checkpoint_every_min) and now - last_save >= 60 * config.checkpoint_every_min
                preempted = _preemption["pending"] is not None
                if distributed.world_size() > 1:  # clocks and signals differ by rank: decided together, every 10 steps
                    agreed = (i + 1) % LOG_EVERY_STEPS == 0
                    timed, preempted = distributed.any_rank([timed, preempted], device) if agreed else (False, False)
                every = config.checkpoint_every_steps
                if ((every and (i + 1) % every == 0) or timed or preempted) and i + 1 < steps:
                    reached = {"step": i + 1, "images": images, "seconds": seconds_before + now - start,
                               "loss_sum": loss_sum.item(), "first_bad_step": int(first_bad_step)}
                    save_inside_epoch(run, model, optimizer, history, reached, device, config)
                    last_save = now
                if preempted and i + 1 < steps:
                    _act_on_preemption()
                if (i + 1) % LOG_EVERY_STEPS and i + 1 < steps:
                    continue
                norm = grad_norm(model)  # every rank: a collective under FSDP2
                if not main:
                    continue
                value = loss.item()
                rate = (images - skip * len(inputs) * distributed.world_size()) / (now - start)
                writer.add_scalar("train/loss", value, step + 1)
                writer.add_scalar("train/lr", lr, step + 1)
                writer.add_scalar("train/grad_norm", norm, step + 1)
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
            seconds = seconds_before + time.perf_counter() - start
            history.append({"epoch": epoch + 1, "loss": epoch_loss, "lr": lr, "seconds": seconds,
                            "images_per_s": images / seconds})
            save_checkpoint(run, model, optimizer, {"history": history}, config)
            if main:
                run.write_metrics(history)
                writer.add_scalar("epoch/loss", epoch_loss, epoch + 1)
                writer.add_scalar("epoch/images_per_s", images / seconds, epoch + 1)
                writer.flush()
                print(f"[{run.name}] epoch {epoch + 1}/{config.epochs} loss {epoch_loss:.4f} lr {lr:.2e} "
                      f"{images / seconds:.0f} img/s {seconds:.1f} s", flush=True)
            if _preemption["pending"] is not None and epoch + 1 < config.epochs:
                _act_on_preemption()
    finally:
        _preemption["training"] = False
        if writer is not None:
            writer.close()
    if _preemption["pending"] is not None:  # it came during the last step: the run is complete, its job is not
        _act_on_preemption()
    seconds = sum(r["seconds"] for r in history)
    images_seen = sum(r["images_per_s"] * r["seconds"] for r in history)
    return {"final_loss": history[-1]["loss"], "epochs": len(history), "wall_time_s": seconds,
            "images_per_s": images_seen / seconds, "images_seen": round(images_seen)}
