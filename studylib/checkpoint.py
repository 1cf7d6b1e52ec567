"""A run's checkpoint, in one place: what it holds (the state dicts of the model, of AdamW and of
the `TrainState`: the finished epochs' history and, inside an epoch, the position reached with the
random state there; the batches start at that step themselves), when it is written
(after every epoch; every `checkpoint_every_steps` steps or `checkpoint_every_min` minutes; at a
preemption signal), its form (checkpoint.pth from rank 0, or checkpoint.dcp/ with a shard from every
rank) and how a run resumes from it. The checkpoint before is kept as the fallback until the run
finishes."""

from __future__ import annotations

import os
import shutil
import signal
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from studylib import distributed
from studylib.errors import RunFolderError, shown
from studylib.io import warn
from studylib.models import full_state
from studylib.runs import SHARDED, SHARDED_PREVIOUS, WHOLE, Run
from studylib.schema import TrainConfig

# ranks decide together whether to checkpoint (clocks and signals differ by rank)
AGREE_EVERY_STEPS = 10


def check_free_disk(run: Run, model: nn.Module) -> None:
    """Fail before training when the run's disk cannot hold what it writes at its peak: three
    checkpoints (current, previous and the one being written) of weights and AdamW moments, plus the
    encoder."""
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    needed = 3 * 3 * weights + weights + (64 << 20)
    folder = next(p for p in (run.path, *run.path.parents) if p.exists())
    free = shutil.disk_usage(folder).free
    if free < needed:
        raise RunFolderError(
            f"{folder}: too little free disk for the checkpoints of {run.name}: "
            f"needs {needed / 2**30:.2f} GiB, has {free / 2**30:.2f} GiB"
        )


def whole_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The model's and optimizer's state with whole tensors (FSDP2's shards gathered: every rank
    must call it), so a checkpoint resumes under any sharding and any number of ranks."""
    from torch.distributed.tensor import DTensor

    saved = optimizer.state_dict()
    saved["state"] = {
        i: {k: v.full_tensor() if isinstance(v, DTensor) else v for k, v in moments.items()}
        for i, moments in saved["state"].items()
    }
    return {"model": full_state(model), "optimizer": saved}


def load_whole_state(
    model: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]
) -> None:
    """whole_state's tensors into `model` and `optimizer`, sharded again where they are."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    def like(value: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
        if isinstance(reference, DTensor) and not isinstance(value, DTensor):
            return distribute_tensor(
                value.to(reference.dtype), reference.device_mesh, reference.placements
            )
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


class EpochBatches(Protocol):
    """What the engine trains on (batches.Batches, stream.ShardBatches): an epoch's batches at every
    iteration, its order drawn when the iteration starts, from `start_step` (a resumed epoch's
    step, used once)."""

    start_step: int

    def __len__(self) -> int: ...

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]: ...


@dataclass
class TrainState:
    """Where training is: the finished epochs' `history` and, inside an epoch, the `position`
    reached (step, images, seconds, loss sum, first bad step) with the random state after it. The
    checkpoint holds it beside the model and the optimizer, each through its own `state_dict`."""

    history: list[dict] = field(default_factory=list)
    position: dict[str, Any] | None = None

    def reach(self, position: dict[str, Any], device: torch.device) -> None:
        """Inside an epoch, at `position`: the random state is taken with it."""
        cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
        self.position = {**position, "rng": torch.get_rng_state(), "cuda_rng": cuda}

    def finish_epoch(self, record: dict[str, Any]) -> None:
        self.history.append(record)
        self.position = None

    def state_dict(self) -> dict[str, Any]:
        return {"history": self.history, **({"position": self.position} if self.position else {})}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.history, self.position = state["history"], state.get("position")


class Checkpointer:
    """The checkpoint of one run's training: the model's, the optimizer's and the `TrainState`'s
    state dicts in one file (or one DCP folder); every method is called on every rank."""

    def __init__(
        self,
        run: Run,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        config: TrainConfig,
        device: torch.device,
    ) -> None:
        self.run, self.model, self.optimizer = run, model, optimizer
        self.config, self.device = config, device

    def save(self, train: TrainState) -> None:
        if self.config.checkpoint_format == "whole":
            # FSDP2's shards gathered
            state = {**whole_state(self.model, self.optimizer), **train.state_dict()}
            if distributed.is_main():
                self.run.save(WHOLE, state, keep_previous=True)
        else:
            self._save_sharded(train.state_dict())

    def _save_sharded(self, progress: dict[str, Any]) -> None:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_state_dict

        model_state, optimizer_state = get_state_dict(self.model, self.optimizer)
        path = self.run.path
        new, folder, previous = path / f".{SHARDED}.tmp", path / SHARDED, path / SHARDED_PREVIOUS
        if distributed.is_main():
            shutil.rmtree(new, ignore_errors=True)
        distributed.barrier()
        # a tuple is one object to DCP: the run's name and the progress, saved whole by one rank
        dcp.save(
            {
                "model": model_state,
                "optimizer": optimizer_state,
                "progress": (self.run.name, progress),
            },
            checkpoint_id=new,
        )
        if distributed.is_main():
            shutil.rmtree(previous, ignore_errors=True)
            if folder.exists():
                folder.rename(previous)
            new.rename(folder)
        distributed.barrier()

    def load(self) -> TrainState:
        """The saved `TrainState`, its weights and optimizer state loaded; a fresh one where there
        is none. A sharded one is resharded to this job's ranks; where it cannot be read, the one
        before it."""
        train = TrainState()
        if self.config.checkpoint_format == "whole":
            state = self.run.load(WHOLE, map_location=self.device)
            if state is not None:
                load_whole_state(self.model, self.optimizer, state)
                train.load_state_dict(state)
            return train
        for folder in (self.run.path / SHARDED, self.run.path / SHARDED_PREVIOUS):
            if (folder / ".metadata").is_file() and (
                progress := self._load_sharded(folder)
            ) is not None:
                train.load_state_dict(progress)
                break
        return train

    def _load_sharded(self, folder: Path) -> dict[str, Any] | None:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

        model_state, optimizer_state = get_state_dict(self.model, self.optimizer)
        state = {"model": model_state, "optimizer": optimizer_state, "progress": ()}
        try:
            dcp.load(state, checkpoint_id=folder)
        except (RuntimeError, OSError, ValueError, dcp.api.CheckpointException) as err:
            warn(
                f"{folder}: cannot be read ({shown(str(err), 120)}); trying the checkpoint before "
                "it"
            )
            return None
        name, progress = state["progress"]
        if name != self.run.name:
            raise RunFolderError(
                f"{folder}: a checkpoint of run {name}, not of {self.run.name}; move it away or "
                f"delete {self.run.path}"
            )
        set_state_dict(
            self.model,
            self.optimizer,
            model_state_dict=state["model"],
            optim_state_dict=state["optimizer"],
        )
        return progress

    def due(self, step: int, steps: int, since_save_s: float) -> tuple[bool, bool]:
        """Whether to checkpoint after `step` (counted from 1) of an epoch of `steps` (every
        checkpoint_every_steps, after checkpoint_every_min minutes, or at a preemption signal), and
        whether a preemption signal came, as decided with the other ranks."""
        every, minutes = self.config.checkpoint_every_steps, self.config.checkpoint_every_min
        timed = bool(minutes) and since_save_s >= 60 * minutes
        preempted = preemption_pending()
        if distributed.world_size() > 1:  # decided together, every AGREE_EVERY_STEPS steps
            agreed = step % AGREE_EVERY_STEPS == 0
            timed, preempted = (
                distributed.any_rank([timed, preempted], self.device) if agreed else (False, False)
            )
        save = bool((every and step % every == 0) or timed or preempted) and step < steps
        return save, preempted


def resume_epoch(batches: EpochBatches, position: dict[str, Any], device: torch.device) -> Iterator:
    """The epoch's batches from the saved position's step on, with the random state as it was there.
    The batches draw the epoch's order when their iteration starts (from the epoch's seed) and
    start at their `start_step`; the random state is restored after that."""
    batches.start_step = position["step"]
    epoch_batches = iter(batches)
    torch.set_rng_state(position["rng"].cpu())
    if device.type == "cuda":
        torch.cuda.set_rng_state(position["cuda_rng"].cpu(), device)
    return epoch_batches


# Preemption: submitit's signal (USR2) is held during training until the step in progress ends and
# is checkpointed; then submitit's own handler requeues the job.
_preemption: dict[str, Any] = {"training": False, "pending": None, "handler": None}


def _preemption_signal() -> int:
    return getattr(signal, "SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2"))


def catch_preemption() -> None:
    """In a submitit job: take over its preemption signal (USR2 unless $SUBMITIT_PREEMPT_SIGNAL says
    otherwise). During training it waits for the end of the step in progress (see `training`);
    outside training the job's handler runs at once."""
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


def set_training(training: bool) -> None:
    """Whether a preemption signal now waits for a checkpoint (during training) or acts at once."""
    _preemption["training"] = training


def preemption_pending() -> bool:
    return _preemption["pending"] is not None


def act_on_preemption() -> None:
    """The deferred signal's handler, now that the checkpoint is written (on a rank that has not
    seen the signal yet, as if it had)."""
    number, frame = _preemption["pending"] or (_preemption_signal(), None)
    _preemption["pending"] = None
    handler = _preemption["handler"]
    print(
        f"preempted (signal {signal.Signals(number).name}): checkpoint written, handing over to "
        "the job's handler",
        flush=True,
    )
    if callable(handler):
        handler(number, frame)  # submitit's: requeue the job, then exit
    # a handler that returned: stop here all the same
    raise SystemExit(f"preempted by signal {number}")
