"""torch.distributed for jobs of several tasks: one task per GPU (nccl), or per CPU slot (gloo).

Under SLURM, submitit's job environment says who is who; torchrun's variables work too. Every rank
sees its own share of each batch; only rank 0 writes files.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


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


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()
