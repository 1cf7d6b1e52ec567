"""Datasets by name, held in memory as uint8 tensors (studylib.images), and what names them.

Names: those of `registry.DATASETS` (`cifar100`, `cifar10` from studylib.cifar, `synthetic`
generated here for tests, and any a user registers), or a path to an image folder
(studylib.image_folder); names joined by `+` (`cifar10+cifar100`) are those datasets together,
classes kept apart. A dataset read from files is loaded once per process and source, and known in
a run's identity by its fingerprint.
"""

from __future__ import annotations

import functools
import hashlib
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from studylib.cifar import cifar_source, read_cifar10_download, read_cifar100
from studylib.errors import DataError
from studylib.image_folder import cached_image_folder
from studylib.images import ImageDataset, check
from studylib.io import sha256
from studylib.registry import DATASETS, call
from studylib.schema import DataConfig


def load_dataset(name: str, config: DataConfig | None = None) -> ImageDataset:
    """A dataset by name (see the module docstring); one read from files is loaded once per process
    and source."""
    config = config or DataConfig()
    if "+" in name:
        return combined([load_dataset(part, config) for part in name.split("+")])
    if name in DATASETS:
        return check(call(DATASETS[name].load, name, config), name)
    return read_named(name, config)


def combined(parts: list[ImageDataset]) -> ImageDataset:
    """Datasets of one image size as one: each part's classes follow the last part's (labels
    shifted)."""
    sizes = {tuple(part.train_images.shape[1:]) for part in parts}
    if len(sizes) > 1:
        raise DataError(
            f"{'+'.join(p.name for p in parts)}: images of different sizes {sorted(sizes)}; "
            "allowed: datasets of one image size"
        )
    offsets = np.cumsum([0] + [part.num_classes for part in parts])

    def joined(split: str) -> tuple[torch.Tensor, torch.Tensor]:
        images = torch.cat([getattr(part, f"{split}_images") for part in parts])
        labels = [
            getattr(part, f"{split}_labels") + int(o)
            for part, o in zip(parts, offsets[:-1], strict=True)
        ]
        return images, torch.cat(labels)

    return ImageDataset(
        "+".join(p.name for p in parts),
        *joined("train"),
        *joined("test"),
        [f"{part.name}:{c}" for part in parts for c in part.classes],
    )


def source(name: str) -> Path:
    """The file or folder that the dataset `name` is read from, resolved: cifar100.npz or cifar10/
    in the data directory (else torchvision's download folder, downloaded first where that is
    allowed), or the image folder `name` itself."""
    if name == "cifar100":
        return cifar_source("cifar100", "cifar100.npz", "cifar-100-python")
    if name == "cifar10":
        return cifar_source("cifar10", "cifar10", "cifar-10-batches-py")
    path = Path(name).expanduser()
    if not path.is_dir():
        raise DataError(
            f"dataset {name!r}: no such image folder; allowed: {', '.join(DATASETS)}, or a "
            "folder path"
        )
    return path.resolve()


def read_named(name: str, _config: DataConfig) -> ImageDataset:
    """CIFAR or an image folder, read from `source(name)` once per process and source."""
    path = source(name)
    if (path / "shards.json").is_file():
        raise DataError(
            f"{path}: a folder of shards (shards.json), which MAE and WSP stream as data.pretrain; "
            "allowed here (probes, transfer, the explore study): a built-in dataset or an image "
            "folder"
        )
    stat = path.stat()
    return _load(name, str(path), stat.st_mtime_ns, stat.st_size)


def fingerprint(name: str, config: DataConfig | None = None) -> str:
    """What a run's identity holds of its data (see `files_fingerprint`, `generated_fingerprint`
    and the dataset's entry in registry.DATASETS); names joined by '+' joined the same way."""
    config = config or DataConfig()
    if "+" in name:
        return "+".join(fingerprint(part, config) for part in name.split("+"))
    if name in DATASETS:
        return call(DATASETS[name].fingerprint, name, config)
    return files_fingerprint(name, config)


def files_fingerprint(name: str, _config: DataConfig) -> str:
    """A hash of the file's bytes (cifar100.npz), of the download folder's files, or of an image
    folder's manifest (its resolved path, every file's name and size). Cached per source, size and
    modification time."""
    path = source(name)
    stat = path.stat()
    return _fingerprint(str(path), stat.st_mtime_ns, stat.st_size)


def data_identity(config: DataConfig, dataset: str, fraction: float = 1.0) -> dict[str, Any]:
    """What a run's identity holds of the data it reads: the dataset, its fingerprint and the share
    of its training images, and the seed of every subset drawn from it."""
    return {
        "dataset": dataset,
        "fingerprint": fingerprint(dataset, config),
        "fraction": fraction,
        "subset_seed": config.subset_seed,
    }


@functools.lru_cache(maxsize=16)
def _fingerprint(path: str, _mtime_ns: int, _size: int) -> str:
    root = Path(path)
    if root.is_file():
        return sha256(root)[:16]
    digest = hashlib.sha256()
    files = sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith("."))
    manifest = [str(root)] + [f"{p.relative_to(root)} {p.stat().st_size}" for p in files]
    digest.update("\n".join(manifest).encode())
    return digest.hexdigest()[:16]


@functools.lru_cache(maxsize=4)
def _load(name: str, path: str, _mtime_ns: int, _size: int) -> ImageDataset:
    source_path = Path(path)
    if name == "cifar100":
        return read_cifar100(source_path)
    dataset = (
        cached_image_folder(source_path)
        if source_path.name != "cifar-10-batches-py"
        else read_cifar10_download(source_path)
    )
    if name == "cifar10":
        dataset.name = "cifar10"
    return check(dataset, path)


def generated(_name: str, config: DataConfig) -> ImageDataset:
    """The `synthetic` dataset at the config's sizes."""
    return synthetic(config.synthetic_train, config.synthetic_test)


def generated_fingerprint(_name: str, config: DataConfig) -> str:
    return f"synthetic-{config.synthetic_train}-{config.synthetic_test}"


@functools.lru_cache(maxsize=4)
def synthetic(
    num_train: int = 2000, num_test: int = 500, num_classes: int = 10, size: int = 32, seed: int = 0
) -> ImageDataset:
    """Structured images for tests: each class is a colour pair and an oriented grating.

    Every image has a random phase and pixel noise, so classes are easy to tell apart and masked
    patches are predictable from the visible ones: MAE's loss falls and a linear probe learns.
    Classes come in pairs under a superclass, so hashtags can be simulated on top.
    """
    gen = torch.Generator().manual_seed(seed)
    palette = torch.rand(num_classes, 2, 3, generator=gen)
    angle = torch.arange(num_classes) * math.pi / num_classes
    freq = 2.0 + (torch.arange(num_classes) % 3)

    def make(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        labels = torch.arange(n) % num_classes
        labels = labels[torch.randperm(n, generator=gen)]
        yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
        phase = torch.rand(n, 1, 1, generator=gen) * 2 * math.pi
        a, f = angle[labels, None, None], freq[labels, None, None]
        wave = torch.sin(2 * math.pi * f * (xx * torch.cos(a) + yy * torch.sin(a)) / size + phase)
        mix = (wave + 1)[:, None] / 2  # (n, 1, H, W) in [0, 1]
        lo, hi = palette[labels, 0, :, None, None], palette[labels, 1, :, None, None]
        images = lo * (1 - mix) + hi * mix + 0.05 * torch.randn(n, 3, size, size, generator=gen)
        return (images.clamp(0, 1) * 255).round().byte(), labels

    train, test = make(num_train), make(num_test)
    fine_to_coarse = torch.arange(num_classes) // 2
    return ImageDataset(
        "synthetic",
        *train,
        *test,
        [f"pattern{c}" for c in range(num_classes)],
        fine_to_coarse,
        [f"group{g}" for g in range(int(fine_to_coarse.max()) + 1)],
    )
