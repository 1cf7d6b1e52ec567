"""The pretraining pool: the images MAE and WSP train on (data.pretrain, data.pretrain_fraction of
it), held in memory (a built-in dataset or an image folder) or streamed (a folder of shards, or an
image folder with data.stream). One interface for all three: what a run's identity holds of it, its
images or its count, its batches, and the tags of a streamed pool. The stages ask this module, never
`data` or `shards`.

`dataset` and `fraction` below: `fraction` of the pool where `dataset` is None, else `fraction` of
the whole `dataset` (MAE's images of the data-size study).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

from studylib import distributed
from studylib.config import Experiment, ImageTrainConfig
from studylib.data import ImageDataset, data_identity, load_dataset
from studylib.errors import DataError
from studylib.models import VIT_SIZES
from studylib.shards import (
    ShardBatches,
    ShardStream,
    decoder,
    index_fingerprint,
    is_shard_folder,
    open_folder,
    shard_fingerprint,
    tag_counts,
    vocabulary,
)

if TYPE_CHECKING:
    import torch


def _source(exp: Experiment, dataset: str | None, fraction: float) -> tuple[str, float]:
    if dataset is None:
        return exp.data.pretrain, exp.data.pretrain_fraction * fraction
    return dataset, fraction


def streamed(exp: Experiment) -> Path | None:
    """The pool's folder where it is streamed, never held in memory: a folder of shards, or an image
    folder with data.stream."""
    is_streamed = exp.data.stream or is_shard_folder(exp.data.pretrain)
    return Path(exp.data.pretrain).expanduser() if is_streamed else None


def identity(exp: Experiment, dataset: str | None = None, fraction: float = 1.0) -> dict[str, Any]:
    """What a run's identity holds of its pretraining images; a streamed image folder is known by
    its file index (names, not bytes: a million files are not read to name a run), shards by their
    tars' bytes; both by the decoder that turns their samples into pixels."""
    if dataset is None and exp.data.stream:
        fingerprint = index_fingerprint(Path(exp.data.pretrain).expanduser())
        return {
            "dataset": exp.data.pretrain,
            "fingerprint": fingerprint,
            "stream": True,
            "decoder": decoder(distributed.device_and_dtype(exp)[0]),
            "fraction": exp.data.pretrain_fraction * fraction,
            "subset_seed": exp.data.subset_seed,
        }
    if dataset is None and is_shard_folder(exp.data.pretrain):
        return {
            **data_identity(exp.data, exp.data.pretrain, exp.data.pretrain_fraction * fraction),
            "fingerprint": shard_fingerprint(Path(exp.data.pretrain).expanduser()),
            "decoder": decoder(distributed.device_and_dtype(exp)[0]),
        }
    return data_identity(exp.data, *_source(exp, dataset, fraction))


def images(exp: Experiment, dataset: str | None = None, fraction: float = 1.0) -> ImageDataset:
    """The pretraining images in memory, nested: a smaller fraction of a dataset is a subset of a
    larger one (and the pool of every fraction of data.pretrain above its own)."""
    if dataset is None and exp.data.stream:
        raise DataError(
            f"data.pretrain {exp.data.pretrain} is streamed (data.stream), never held in memory; "
            "allowed for the explore study: an in-memory pool (data.stream false)"
        )
    name, share = _source(exp, dataset, fraction)
    return load_dataset(name, exp.data).subset(share, exp.data.subset_seed)


def units(exp: Experiment, fraction: float = 1.0) -> list[dict]:
    """The streamed pool's shards (or units of files) that a stage reads: the first
    data.pretrain_fraction x fraction of them."""
    found = open_folder(streamed(exp)).units
    return found[
        : max(distributed.world_size(), round(len(found) * exp.data.pretrain_fraction * fraction))
    ]


def count(exp: Experiment, dataset: str | None = None, fraction: float = 1.0) -> int:
    """How many pretraining images there are, without reading a streamed pool's images."""
    if dataset is None and streamed(exp):
        return sum(unit["samples"] for unit in units(exp, fraction))
    return len(images(exp, dataset, fraction).train_labels)


def loader_workers(exp: Experiment) -> int:
    """DataLoader workers of a streamed pool: all but one of launch.cpus_per_task (that one
    trains)."""
    return max(1, exp.launch.cpus_per_task - 1)


def batches(
    exp: Experiment,
    config: ImageTrainConfig,
    device: torch.device,
    tags: list[str] | None = None,
    fraction: float = 1.0,
) -> ShardBatches:
    """The streamed pool's batches for a stage trained with `config` (see units), read by
    loader_workers."""
    return ShardBatches(
        streamed(exp),
        config.batch_size,
        device,
        VIT_SIZES[exp.model]["img_size"],
        config.crop_min,
        tags,
        workers=loader_workers(exp),
        shards=len(units(exp, fraction)),
    )


def samples(exp: Experiment, batch_size: int) -> ShardStream:
    """The streamed pool's samples, uncropped, `batch_size` a rank (zero-shot reads its tags as
    captions)."""
    return ShardStream(
        streamed(exp),
        batch_size,
        VIT_SIZES[exp.model]["img_size"],
        seed=exp.seed,
        workers=loader_workers(exp),
        shards=len(units(exp)),
    )


def streamed_tags(exp: Experiment) -> tuple[list[str], Counter, int]:
    """A streamed pool's tag vocabulary (its data.tag_vocabulary most frequent tags), how many
    images carry each tag, and how many images there are."""
    folder = streamed(exp)
    counts, total = tag_counts(folder)
    return vocabulary(counts, exp.data.tag_vocabulary), counts, total
