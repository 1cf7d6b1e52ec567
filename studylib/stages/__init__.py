"""The stages, each a short module with its model head and loss, all trained by studylib.engine.train:
`mae` (pre-pretraining), `wsp` (weakly-supervised pretraining), `init` (a random encoder), and the
transfer tasks `probe`, `finetune`, `lowshot`, `zeroshot`, `robustness`. studylib.registry.STAGES
declares the config sections that decide each one's result."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from studylib import distributed
from studylib.config import Experiment, ImageTrainConfig
from studylib.data import ImageDataset, fingerprint, load_dataset
from studylib.distributed import is_main
from studylib.errors import DataError, RunFolderError
from studylib.models import VIT_SIZES, encoder_state, load_encoder
from studylib.runs import Run
from studylib.shards import ShardBatches, index_fingerprint, is_shard_folder, open_folder, shard_fingerprint


def data_identity(exp: Experiment, dataset: str, fraction: float = 1.0) -> dict[str, Any]:
    """What a run's identity holds of the data it reads: the dataset, its fingerprint and the share of
    its training images, and the seed of every subset drawn from it."""
    return {"dataset": dataset, "fingerprint": fingerprint(dataset, exp.data), "fraction": fraction,
            "subset_seed": exp.data.subset_seed}


def _pretrain_source(exp: Experiment, dataset: str | None, fraction: float) -> tuple[str, float]:
    """The dataset and share of it: `fraction` of the pool (data.pretrain_fraction of data.pretrain) when
    `dataset` is None, else `fraction` of the whole `dataset`."""
    if dataset is None:
        return exp.data.pretrain, exp.data.pretrain_fraction * fraction
    return dataset, fraction


def pool_identity(exp: Experiment, dataset: str | None = None, fraction: float = 1.0) -> dict[str, Any]:
    """What a run's identity holds of its pretraining images (see _pretrain_source); a streamed image folder is
    known by its file index (names, not bytes: a million files are not read to name a run)."""
    if dataset is None and exp.data.stream:
        fingerprint = index_fingerprint(Path(exp.data.pretrain).expanduser())
        return {"dataset": exp.data.pretrain, "fingerprint": fingerprint, "stream": True,
                "fraction": exp.data.pretrain_fraction * fraction, "subset_seed": exp.data.subset_seed}
    if dataset is None and is_shard_folder(exp.data.pretrain):  # known by its tars' bytes, not their sizes
        return {**data_identity(exp, exp.data.pretrain, exp.data.pretrain_fraction * fraction),
                "fingerprint": shard_fingerprint(Path(exp.data.pretrain).expanduser())}
    return data_identity(exp, *_pretrain_source(exp, dataset, fraction))


def pretrain_images(exp: Experiment, dataset: str | None = None, fraction: float = 1.0) -> ImageDataset:
    """The pretraining images (see _pretrain_source), nested: a smaller fraction of a dataset is a subset of
    a larger one (and the pool of every fraction of data.pretrain above its own)."""
    if dataset is None and exp.data.stream:
        raise DataError(f"data.pretrain {exp.data.pretrain} is streamed (data.stream), never held in memory; "
                        "allowed for the explore study: an in-memory pool (data.stream false)")
    name, share = _pretrain_source(exp, dataset, fraction)
    return load_dataset(name, exp.data).subset(share, exp.data.subset_seed)


def streamed_pool(exp: Experiment) -> Path | None:
    """The pool's folder where it is streamed, never held in memory: a folder of shards, or an image folder
    with data.stream."""
    streamed = exp.data.stream or is_shard_folder(exp.data.pretrain)
    return Path(exp.data.pretrain).expanduser() if streamed else None


def units_taken(exp: Experiment, fraction: float = 1.0) -> list[dict]:
    """The streamed pool's shards (or units of files) that a stage reads: the first data.pretrain_fraction x
    fraction of them."""
    units = open_folder(streamed_pool(exp)).units
    return units[: max(distributed.world_size(), round(len(units) * exp.data.pretrain_fraction * fraction))]


def pretrain_count(exp: Experiment, dataset: str | None = None, fraction: float = 1.0) -> int:
    """How many pretraining images (see _pretrain_source) there are, without reading a shard pool's images."""
    if dataset is None and streamed_pool(exp):
        return sum(unit["samples"] for unit in units_taken(exp, fraction))
    return len(pretrain_images(exp, dataset, fraction).train_labels)


def loader_workers(exp: Experiment) -> int:
    """DataLoader workers of a streamed pool: all but one of launch.cpus_per_task (that one trains)."""
    return max(1, exp.launch.cpus_per_task - 1)


def pool_batches(exp: Experiment, config: ImageTrainConfig, device: torch.device, tags: list[str] | None = None,
                 fraction: float = 1.0) -> ShardBatches:
    """The streamed pool's batches for a stage trained with `config` (see units_taken), read by loader_workers."""
    return ShardBatches(streamed_pool(exp), config.batch_size, device, VIT_SIZES[exp.model]["img_size"],
                        config.crop_min, tags, workers=loader_workers(exp),
                        shards=len(units_taken(exp, fraction)))


def save_encoder(run: Run, model: torch.nn.Module) -> None:
    """The encoder (a ViT without its head) that the next stage starts from: <run>/encoder.pth."""
    state = encoder_state(model)  # on every rank: FSDP2's shards are gathered
    if is_main():
        run.save("encoder.pth", state)


def load_encoder_from(run: Run, model: torch.nn.Module) -> None:
    path = run.path / "encoder.pth"
    state = run.load("encoder.pth")
    if state is None:
        raise RunFolderError(f"{path}: missing or corrupt encoder weights; delete {run.path} to retrain it")
    try:
        load_encoder(model, state)
    except (ValueError, RuntimeError) as err:
        raise RunFolderError(f"{path}: weights of another model than {model.__class__.__name__} "
                             f"{model.embed_dim}d x {len(model.blocks)} blocks: {str(err).splitlines()[0]}") from None


def train_flops(forward: float, images_seen: int) -> float:
    """Training FLOPs: 3x the forward FLOPs per image (forward + backward; models.count_flops, called before
    training, as a model sharded by FSDP2 cannot be copied) per image seen."""
    return 3.0 * forward * images_seen
