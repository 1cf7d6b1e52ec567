"""The pretraining pool: the images MAE and WSP train on (data.pretrain, data.pretrain_fraction of
it), held in memory (a built-in dataset or an image folder: `MemoryPool`) or streamed (a folder of
shards, or an image folder with data.stream: `StreamedPool`). `open_pool` is the one door: both
kinds answer the same questions (what a run's identity holds of them, their count, their tags,
their batches, zero-shot's captioned features), so a stage never asks which kind it holds and
never builds batches or tags itself.

`dataset` and `fraction` of `open_pool`: `fraction` of the pool where `dataset` is None, else
`fraction` of the whole `dataset` (MAE's images of the data-size study), always held in memory.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import torch

from studylib import distributed
from studylib.batches import Batches, ImageTransform
from studylib.data import data_identity, load_dataset
from studylib.decode import decoder
from studylib.errors import DataError
from studylib.experiment import Experiment
from studylib.features import extract_features, forward
from studylib.images import ImageDataset
from studylib.models import VIT_SIZES
from studylib.schema import ImageTrainConfig
from studylib.shards import (
    INDEX,
    index_fingerprint,
    open_folder,
    shard_fingerprint,
    tag_counts,
    vocabulary,
)
from studylib.stream import ShardBatches, ShardStream
from studylib.weak_labels import Hashtags, simulate

if TYPE_CHECKING:
    from torch import nn


def count(exp: Experiment, dataset: str | None = None, fraction: float = 1.0) -> int:
    """How many images `open_pool(exp, dataset, fraction)` holds, without reading a streamed
    pool's images."""
    return open_pool(exp, dataset, fraction).count()


@dataclass
class PoolTags:
    """WSP's classes of a pool: the tag vocabulary, how many images carry each of its tags, and how
    many images there are."""

    vocab: list[str]
    carried: torch.Tensor
    images: int


class Pool(Protocol):
    """What every kind of pool answers (MemoryPool, StreamedPool)."""

    streamed: bool
    images: ImageDataset  # in memory only: a streamed pool raises DataError
    hashtags: Hashtags  # simulated on `images`, as images

    def identity(self) -> dict[str, Any]: ...
    def tag_identity(self) -> dict[str, Any]: ...
    def test_identity(self) -> dict[str, Any]: ...
    def count(self) -> int: ...
    def tags(self) -> PoolTags: ...
    def batches(
        self, config: ImageTrainConfig, device: torch.device, tags: list[str] | None = None
    ) -> Batches | ShardBatches: ...
    def skipped(self, batches: Any) -> dict[str, int]: ...
    def test_images(self) -> torch.Tensor | None: ...
    def test_set(self) -> ImageDataset: ...
    def captioned_features(
        self, encoder: nn.Module, device: torch.device, dtype: torch.dtype | None
    ) -> tuple[torch.Tensor, list[str]]: ...


def is_shard_folder(name: str) -> bool:
    """Whether the dataset name `name` is a folder of shards (it holds shards.json)."""
    return "/" in name and (Path(name).expanduser() / INDEX).is_file()


def open_pool(exp: Experiment, dataset: str | None = None, fraction: float = 1.0) -> Pool:
    """The pool a stage reads: streamed where data.pretrain is (and `dataset` is None)."""
    if dataset is None and (exp.data.stream or is_shard_folder(exp.data.pretrain)):
        return StreamedPool(exp, fraction)
    return MemoryPool(exp, dataset, fraction)


@dataclass
class MemoryPool:
    """A pool held in memory, nested: a smaller fraction of a dataset is a subset of a larger one
    (and the pool of every fraction of data.pretrain above its own). Its tags are simulated
    hashtags (studylib.weak_labels)."""

    exp: Experiment
    dataset: str | None = None
    fraction: float = 1.0
    streamed = False

    def _source(self) -> tuple[str, float]:
        if self.dataset is None:
            return self.exp.data.pretrain, self.exp.data.pretrain_fraction * self.fraction
        return self.dataset, self.fraction

    def identity(self) -> dict[str, Any]:
        return data_identity(self.exp.data, *self._source())

    def tag_identity(self) -> dict[str, Any]:
        """What a WSP run's identity holds of the tags beyond the images: nothing (the tag draw is
        the tags config's)."""
        return {}

    def test_identity(self) -> dict[str, Any]:
        """What zero-shot's identity holds of its test set beyond the pool: nothing (its own)."""
        return {}

    @functools.cached_property
    def images(self) -> ImageDataset:
        name, share = self._source()
        return load_dataset(name, self.exp.data).subset(share, self.exp.data.subset_seed)

    @functools.cached_property
    def hashtags(self) -> Hashtags:
        return simulate(self.images, self.exp.tags)

    def count(self) -> int:
        return len(self.images.train_labels)

    def tags(self) -> PoolTags:
        tags = self.hashtags.tags
        carried = torch.bincount(tags[tags >= 0], minlength=self.hashtags.vocab_size)
        return PoolTags(self.hashtags.vocab, carried, len(tags))

    def batches(
        self, config: ImageTrainConfig, device: torch.device, tags: list[str] | None = None
    ) -> Batches:
        """The batches of a stage trained with `config`: images with their hashtags where `tags`
        is given (the vocabulary of `tags()`), else with their labels (MAE ignores them)."""
        crop = ImageTransform(VIT_SIZES[self.exp.model]["img_size"], config.crop_min)
        targets = self.hashtags.tags if tags is not None else self.images.train_labels
        return Batches(
            self.images.train_images,
            targets,
            config.batch_size,
            device,
            crop,
            images_per_epoch=config.epoch_images,
        )

    def skipped(self, _batches: Batches) -> dict[str, int]:
        """What a run's results hold of the samples it could not use: none in memory."""
        return {}

    def test_images(self) -> torch.Tensor:
        return self.images.test_images

    def test_set(self) -> ImageDataset:
        """Zero-shot's test set: the pool dataset's own."""
        return self.images

    def captioned_features(
        self, encoder: nn.Module, device: torch.device, dtype: torch.dtype | None
    ) -> tuple[torch.Tensor, list[str]]:
        """Every training image's features under the frozen `encoder` and its hashtags as text."""
        features = extract_features(encoder, self.images.train_images, device, dtype)
        return features, self.hashtags.captions()


@dataclass
class StreamedPool:
    """A pool read as it trains, never held in memory: a folder of shards (known by its tars' bytes)
    or an image folder with data.stream (known by its file index: names, not bytes, so a million
    files are not read to name a run); both also by the decoder that turns their samples into
    pixels. A stage reads the first data.pretrain_fraction x `fraction` of its shards (or units of
    files). Its tags are the images' own: WSP's classes are the data.tag_vocabulary most
    frequent."""

    exp: Experiment
    fraction: float = 1.0
    streamed = True

    @property
    def folder(self) -> Path:
        return Path(self.exp.data.pretrain).expanduser()

    def identity(self) -> dict[str, Any]:
        data = self.exp.data
        fingerprint = index_fingerprint if data.stream else shard_fingerprint
        return {
            "dataset": data.pretrain,
            "fingerprint": fingerprint(self.folder),
            **({"stream": True} if data.stream else {}),
            "decoder": decoder(distributed.device_and_dtype(self.exp)[0]),
            "fraction": data.pretrain_fraction * self.fraction,
            "subset_seed": data.subset_seed,
        }

    def tag_identity(self) -> dict[str, Any]:
        """What a WSP run's identity holds of the tags beyond the images: how many classes."""
        return {"tag_vocabulary": self.exp.data.tag_vocabulary}

    def test_identity(self) -> dict[str, Any]:
        """Zero-shot's test set: the first probe dataset's (a streamed pool has none of its own)."""
        return {"evaluated_on": data_identity(self.exp.data, self.exp.data.probe[0])}

    @property
    def images(self) -> ImageDataset:
        raise DataError(
            f"data.pretrain {self.exp.data.pretrain} is streamed, never held in memory; allowed "
            "for the explore study: an in-memory pool (data.stream false, not a shard folder)"
        )

    hashtags = images

    @functools.cached_property
    def units(self) -> list[dict]:
        """The shards (or units of files) a stage reads."""
        found = open_folder(self.folder).units
        share = self.exp.data.pretrain_fraction * self.fraction
        return found[: max(distributed.world_size(), round(len(found) * share))]

    def count(self) -> int:
        """How many images there are, without reading them."""
        return sum(unit["samples"] for unit in self.units)

    def tags(self) -> PoolTags:
        counts, images = tag_counts(self.folder)
        vocab = vocabulary(counts, self.exp.data.tag_vocabulary)
        return PoolTags(vocab, torch.tensor([counts[tag] for tag in vocab]), images)

    def _workers(self) -> int:
        """DataLoader workers: all but one of launch.cpus_per_task (that one trains)."""
        return max(1, self.exp.launch.cpus_per_task - 1)

    def batches(
        self, config: ImageTrainConfig, device: torch.device, tags: list[str] | None = None
    ) -> ShardBatches:
        """The batches of a stage trained with `config`, read by `_workers()` processes; targets:
        the samples' tags in `tags`, or zeros without (MAE)."""
        return ShardBatches(
            self.folder,
            config.batch_size,
            device,
            VIT_SIZES[self.exp.model]["img_size"],
            config.crop_min,
            tags,
            workers=self._workers(),
            shards=len(self.units),
        )

    def skipped(self, batches: ShardBatches) -> dict[str, int]:
        """How many samples of the last epoch could not be used."""
        return {"skipped_samples": len(batches.stream.skipped)}

    def test_images(self) -> None:
        """None: a streamed pool has no test images of its own."""

    def test_set(self) -> ImageDataset:
        return load_dataset(self.exp.data.probe[0], self.exp.data)

    @torch.no_grad()
    def captioned_features(
        self, encoder: nn.Module, device: torch.device, dtype: torch.dtype | None
    ) -> tuple[torch.Tensor, list[str]]:
        """One pass of centre crops (each rank its shards, the stream's drop policy): the images'
        features under the frozen `encoder` and their tags as text, every rank's share gathered in
        rank order."""
        encoder.to(device).eval()
        stream = ShardStream(
            self.folder,
            64,
            VIT_SIZES[self.exp.model]["img_size"],
            seed=self.exp.seed,
            workers=self._workers(),
            shards=len(self.units),
        )
        normalise, features, captions = ImageTransform(stream.size), [], []
        for images, _keys, tags in stream.epoch(0):
            features.append(forward(encoder, normalise(images.to(device)), device, dtype))
            captions += [" ".join(sample) for sample in tags]
        if not features:
            raise DataError(
                f"{stream.folder}: fewer than 64 images a rank; allowed: a pool of at least 64 "
                "images a rank"
            )
        mine = torch.cat(features)
        gathered = distributed.gather_rows(mine, [len(mine)] * distributed.world_size())
        return gathered, distributed.gather_objects(captions)
