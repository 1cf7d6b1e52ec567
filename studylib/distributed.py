"""Where computation runs: the device, the precision, and torch.distributed for jobs of several
tasks: one task per GPU (nccl), or per CPU slot (gloo).

Under SLURM, submitit's job environment says who is who; torchrun's variables work too. Every rank
sees its own share of each batch; only rank 0 writes files.
"""

from __future__ import annotations

import functools
import os

import torch
import torch.distributed as dist

from studylib.errors import ConfigError
from studylib.experiment import Experiment


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            "device: 'cuda' asked for, but torch sees no CUDA device; allowed here: auto, cpu"
        )
    return torch.device(name)


def resolve_precision(name: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for plain fp32. 'auto' takes bf16 where the hardware computes it:
    a GPU that supports it, a CPU with AMX or avx512_bf16 (elsewhere torch emulates bf16, slower
    than fp32)."""
    if name == "fp32":
        return None
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    return torch.bfloat16 if name == "bf16" or native_bf16() else None


@functools.lru_cache(maxsize=1)
def native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AMX or avx512_bf16); elsewhere torch emulates it
    slowly."""
    try:
        flags = open("/proc/cpuinfo").read()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def device_and_dtype(exp: Experiment) -> tuple[torch.device, torch.dtype | None]:
    device = resolve_device(exp.device)
    return device, resolve_precision(exp.precision, device)


def precision_name(exp: Experiment) -> str:
    """The precision `exp` resolves to here: 'bf16' or 'fp32' (part of every run's identity)."""
    return "bf16" if device_and_dtype(exp)[1] is torch.bfloat16 else "fp32"


def init() -> None:
    """Join the job's process group when it has several tasks; a no-op for one process."""
    if dist.is_initialized():
        return
    if int(os.environ.get("SLURM_NTASKS", "1")) > 1 and "SUBMITIT_FOLDER" in os.environ:
        from submitit.helpers import TorchDistributedEnvironment

        TorchDistributedEnvironment().export(set_cuda_visible_devices=False, overwrite=True)
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def is_main() -> bool:
    return rank() == 0


def mean(value: torch.Tensor) -> torch.Tensor:
    """The mean of `value` over all ranks (itself for one process)."""
    if dist.is_initialized():
        value = value.clone()
        dist.all_reduce(value)
        value /= dist.get_world_size()
    return value


def agree(flag: bool) -> bool:
    """Rank 0's `flag`, on every rank."""
    if not dist.is_initialized():
        return flag
    box = [flag]
    dist.broadcast_object_list(box, src=0)
    return bool(box[0])


def any_rank(flags: list[bool], device: torch.device) -> list[bool]:
    """Each flag, true where it is true on any rank (one small all-reduce; `flags` itself for one
    process)."""
    if not dist.is_initialized():
        return flags
    box = torch.tensor(flags, dtype=torch.int32, device=device)
    dist.all_reduce(box, op=dist.ReduceOp.MAX)
    return [bool(v) for v in box.tolist()]


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def gather_rows(part: torch.Tensor, counts: list[int]) -> torch.Tensor:
    """Every rank's `part` (its first counts[rank] rows; all parts the same shape), concatenated in
    rank order, on every rank; `part` itself for one process."""
    if not dist.is_initialized():
        return part[: counts[0]]
    parts = [torch.empty_like(part) for _ in counts]
    dist.all_gather(parts, part.contiguous())
    return torch.cat([p[:n] for p, n in zip(parts, counts, strict=True)])


def gather_objects(part: list) -> list:
    """Every rank's list `part`, concatenated in rank order, on every rank; `part` itself for one
    process."""
    if not dist.is_initialized():
        return part
    parts = [None] * dist.get_world_size()
    dist.all_gather_object(parts, part)
    return [item for p in parts for item in p]
