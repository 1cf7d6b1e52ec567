"""Datasets by name, held in memory as uint8 tensors, and batches augmented on the training device.

Names: `cifar100`, `cifar10`, `synthetic` (generated here, for tests), or a path to an image folder
(`root/train/<class>/*.jpg` and `root/test/<class>/*.jpg`, or `root/<class>/*.jpg` for a training
set alone); names joined by `+` (`cifar10+cifar100`) are those datasets together, classes kept
apart. CIFAR is read from the data directory ($STUDYLIB_DATA): `cifar100.npz` or an image
folder `cifar10/` (the layouts of ../shared/data/README.md), else torchvision's download folder,
downloading into it when the data directory is the default one and nothing is there yet.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import json
import math
import os
import pickle
import shutil
import zipfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from studylib import distributed
from studylib.config import DataConfig, cache_dir, data_dir
from studylib.errors import ConfigError, DataError, cut, shown
from studylib.io import sha256

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp"}
MEAN = (0.485, 0.456, 0.406)  # ImageNet statistics, as timm and MAE use
STD = (0.229, 0.224, 0.225)


@dataclass
class ImageDataset:
    name: str
    train_images: torch.Tensor  # (N, 3, H, W) uint8
    train_labels: torch.Tensor  # (N,) int64
    test_images: torch.Tensor
    test_labels: torch.Tensor
    classes: list[str]
    fine_to_coarse: torch.Tensor | None = None  # (classes,) superclass of each class, where known
    coarse_classes: list[str] | None = None

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def subset(self, fraction: float, seed: int) -> ImageDataset:
        """The first `fraction` of the training set in a seeded shuffle; the test set stays
        whole."""
        if fraction >= 1:
            return self
        keep = torch.randperm(len(self.train_labels), generator=torch.Generator().manual_seed(seed))
        keep = keep[: max(1, int(len(keep) * fraction))].sort().values
        return ImageDataset(
            self.name,
            self.train_images[keep],
            self.train_labels[keep],
            self.test_images,
            self.test_labels,
            self.classes,
            self.fine_to_coarse,
            self.coarse_classes,
        )

    def per_class(self, k: int, seed: int, split: str = "train") -> torch.Tensor:
        """Indices of `k` images of every class (all of a class that has fewer) in `split`, seeded;
        for one seed, the k images are the first k of the same shuffle, so smaller k are subsets."""
        labels = self.train_labels if split == "train" else self.test_labels
        gen = torch.Generator().manual_seed(seed)
        picks = []
        for c in range(self.num_classes):
            idx = (labels == c).nonzero().flatten()
            picks.append(idx[torch.randperm(len(idx), generator=gen)[:k]])
        return torch.cat(picks).sort().values


def load_dataset(name: str, config: DataConfig | None = None) -> ImageDataset:
    """A dataset by name (see the module docstring); loaded once per process and source."""
    config = config or DataConfig()
    if "+" in name:
        return combined([load_dataset(part, config) for part in name.split("+")])
    if name == "synthetic":
        return synthetic(config.synthetic_train, config.synthetic_test)
    path = source(name)
    if (path / "shards.json").is_file():
        raise DataError(
            f"{path}: a folder of shards (shards.json), which MAE and WSP stream as data.pretrain; "
            "allowed here (probes, transfer, the explore study): a built-in dataset or an image "
            "folder"
        )
    stat = path.stat()
    return _load(name, str(path), stat.st_mtime_ns, stat.st_size)


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
        return _cifar_source("cifar100", "cifar100.npz", "cifar-100-python")
    if name == "cifar10":
        return _cifar_source("cifar10", "cifar10", "cifar-10-batches-py")
    path = Path(name).expanduser()
    if not path.is_dir():
        raise DataError(
            f"dataset {name!r}: no such image folder; allowed: cifar10, cifar100, synthetic, "
            "or a folder path"
        )
    return path.resolve()


def fingerprint(name: str, config: DataConfig | None = None) -> str:
    """What a run's identity holds of its data: a hash of the file's bytes (cifar100.npz), of the
    download folder's files, or of an image folder's manifest (its resolved path, every file's name
    and size); the sizes of generated data. Cached per source, size and modification time."""
    config = config or DataConfig()
    if "+" in name:
        return "+".join(fingerprint(part, config) for part in name.split("+"))
    if name == "synthetic":
        return f"synthetic-{config.synthetic_train}-{config.synthetic_test}"
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
        return check(_cifar100(source_path), path)
    dataset = (
        _image_folder_cached(source_path)
        if source_path.name != "cifar-10-batches-py"
        else _cifar10_download(source_path)
    )
    if name == "cifar10":
        dataset.name = "cifar10"
    return check(dataset, path)


@contextlib.contextmanager
def _download_lock(root: Path) -> Iterator[None]:
    """One download at a time into `root` (array jobs may all start by loading CIFAR)."""
    with open(root / ".download.lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def _cifar_source(name: str, ours: str, downloaded: str) -> Path:
    """The data directory's copy of CIFAR in this project's layout (../shared/data/README.md) or
    torchvision's; downloads torchvision's into the default data directory when neither is there."""
    root = data_dir()
    if "STUDYLIB_DATA" in os.environ and not root.is_dir():
        raise DataError(f"STUDYLIB_DATA={root}: data directory does not exist (needed for {name})")
    for candidate in (root / ours, root / downloaded):
        if candidate.exists():
            return candidate.resolve()
    if "STUDYLIB_DATA" in os.environ:
        raise DataError(
            f"STUDYLIB_DATA={root}: has neither {ours} nor {downloaded}/; "
            f"unset STUDYLIB_DATA to download {name} into the default data folder"
        )
    root.mkdir(parents=True, exist_ok=True)
    from torchvision.datasets import CIFAR10, CIFAR100

    try:
        with _download_lock(root):
            (CIFAR100 if name == "cifar100" else CIFAR10)(str(root), download=True)
    except (OSError, RuntimeError) as err:  # no network (URLError is an OSError), a bad archive
        raise DataError(
            f"{root}: no {ours} or {downloaded}/ there and downloading {name} failed "
            f"({shown(str(err), 100)}); allowed: set STUDYLIB_DATA to a folder that holds {ours}"
        ) from None
    finally:
        (root / ".download.lock").unlink(missing_ok=True)
    return (root / downloaded).resolve()


NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test", "classes", "fine_to_coarse", "coarse_classes")


def _cifar100(path: Path) -> ImageDataset:
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as f:
                missing = [k for k in NPZ_KEYS if k not in f.files]
                if missing:
                    raise DataError(
                        f"{path}: no key {missing[0]!r}; allowed: an .npz with {list(NPZ_KEYS)} "
                        "(../shared/data/README.md)"
                    )
                arrays = {k: f[k] for k in NPZ_KEYS}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
            raise DataError(
                f"{path}: not a readable .npz ({shown(str(err), 100)}); allowed: numpy.savez "
                f"output with {list(NPZ_KEYS)}"
            ) from None
        for key in ("x_train", "x_test"):
            x = arrays[key]
            if x.dtype != np.uint8 or x.ndim != 4 or x.shape[-1] != 3:
                raise DataError(
                    f"{path}: {key} is {x.dtype} of shape {x.shape}; allowed: uint8 pixels 0..255 "
                    "of shape (N, H, W, 3)"
                )
        return ImageDataset(
            "cifar100",
            _nhwc(arrays["x_train"]),
            _labels(path, "y_train", arrays["y_train"]),
            _nhwc(arrays["x_test"]),
            _labels(path, "y_test", arrays["y_test"]),
            [str(c) for c in arrays["classes"]],
            _labels(path, "fine_to_coarse", arrays["fine_to_coarse"]),
            [str(c) for c in arrays["coarse_classes"]],
        )
    splits = {
        s: pickle.load(open(path / s, "rb"), encoding="latin1") for s in ("train", "test", "meta")
    }
    fine_to_coarse = torch.zeros(100, dtype=torch.long)
    fine_to_coarse[torch.tensor(splits["train"]["fine_labels"])] = torch.tensor(
        splits["train"]["coarse_labels"]
    )
    images = {
        s: torch.from_numpy(splits[s]["data"].reshape(-1, 3, 32, 32)) for s in ("train", "test")
    }
    return ImageDataset(
        "cifar100",
        images["train"],
        torch.tensor(splits["train"]["fine_labels"]),
        images["test"],
        torch.tensor(splits["test"]["fine_labels"]),
        splits["meta"]["fine_label_names"],
        fine_to_coarse,
        splits["meta"]["coarse_label_names"],
    )


def _cifar10_download(path: Path) -> ImageDataset:
    from torchvision.datasets import CIFAR10

    train, test = CIFAR10(str(path.parent), train=True), CIFAR10(str(path.parent), train=False)
    return ImageDataset(
        "cifar10",
        _nhwc(train.data),
        torch.tensor(train.targets),
        _nhwc(test.data),
        torch.tensor(test.targets),
        list(train.classes),
    )


def _labels(path: Path, key: str, array: np.ndarray) -> torch.Tensor:
    if array.ndim != 1 or not np.issubdtype(array.dtype, np.integer):
        raise DataError(
            f"{path}: {key} is {array.dtype} of shape {array.shape}; allowed: integers of shape "
            "(N,)"
        )
    return torch.from_numpy(array.astype(np.int64))


def check(dataset: ImageDataset, where: str) -> ImageDataset:
    """`dataset` if it holds what training assumes: uint8 (N, 3, H, W) images, as many labels, each
    one a class index, at least two classes and a training image; else a DataError naming
    `where`."""
    for split in ("train", "test"):
        images, labels = getattr(dataset, f"{split}_images"), getattr(dataset, f"{split}_labels")
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
            raise DataError(
                f"{where}: {split} images are {images.dtype} of shape {tuple(images.shape)}; "
                "allowed: uint8 (N, 3, H, W)"
            )
        if len(labels) != len(images):
            raise DataError(
                f"{where}: {len(images)} {split} images but {len(labels)} labels; allowed: one each"
            )
        if len(labels) and not (0 <= int(labels.min()) and int(labels.max()) < dataset.num_classes):
            raise DataError(
                f"{where}: {split} labels span {int(labels.min())}..{int(labels.max())}; allowed: "
                f"0..{dataset.num_classes - 1} (one per class of {dataset.num_classes})"
            )
    if dataset.num_classes < 2 or not len(dataset.train_labels):
        raise DataError(
            f"{where}: {dataset.num_classes} class(es), {len(dataset.train_labels)} training "
            "images; allowed: at least 2 classes and 1 image"
        )
    return dataset


def _nhwc(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(array.transpose(0, 3, 1, 2)))


def image_folder(root: Path) -> ImageDataset:
    """Read `root/train/<class>/<image>` with `root/test/` (or ImageNet's `root/val/`) as the test
    split where there is one, or `root/<class>/<image>` (training only), images of one size, into
    memory. A pool needs no test split; a probe dataset does (studylib.preflight.check_sizes)."""
    split_roots = {"train": root / "train"}
    held_out = next((root / name for name in ("test", "val") if (root / name).is_dir()), None)
    if held_out is not None:
        split_roots["test"] = held_out
    if not split_roots["train"].is_dir():
        split_roots = {"train": root}
    try:
        classes = sorted(d.name for d in split_roots["train"].iterdir() if d.is_dir())
    except OSError as err:
        raise DataError(
            f"image folder {split_roots['train']}: cannot list it ({err.strerror})"
        ) from None
    if not classes:
        raise DataError(
            f"image folder {root}: no class folders; expected {root}/train/<class>/<image> "
            f"or {root}/<class>/<image>"
        )
    splits = {}
    for split, split_root in split_roots.items():
        files, labels = [], []
        for label, name in enumerate(classes):
            folder = split_root / name
            if not os.access(folder, os.R_OK | os.X_OK) and folder.exists():
                raise DataError(
                    f"{folder}: cannot read this class folder (permissions); allowed: a readable "
                    "folder"
                )
            found = sorted(p for p in folder.glob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
            if not found and split == "train":
                raise DataError(
                    f"{folder}: no images in this class folder "
                    f"({', '.join(sorted(IMAGE_SUFFIXES))}); "
                    "allowed: at least one image in every class folder"
                )
            files += found
            labels += [label] * len(found)
        if not files:
            raise DataError(
                f"image folder {split_root}: no images ({', '.join(sorted(IMAGE_SUFFIXES))}) "
                f"in its class folders {classes[:5]}"
            )
        splits[split] = (_read_images(files), torch.tensor(labels))
    empty = (
        torch.zeros(0, *splits["train"][0].shape[1:], dtype=torch.uint8),
        torch.zeros(0, dtype=torch.long),
    )
    test = splits.get("test", empty)
    return ImageDataset(str(root), *splits["train"], *test, classes)


def file_stat(path: Path, relist_if_gone: bool = False) -> os.stat_result:
    """`os.stat(path)` of an image, or one line naming it: a link that loops or reaches nothing, no
    permission (with relist_if_gone, a file that is gone raises FileNotFoundError as it is)."""
    try:
        return os.stat(path)
    except OSError as err:
        if relist_if_gone and isinstance(err, FileNotFoundError):
            raise
        raise DataError(
            f"{path}: cannot read this file ({err.strerror}); allowed: an image file, or a link "
            "that reaches one"
        ) from None


def _image_folder_cached(root: Path) -> ImageDataset:
    """`image_folder(root)`, decoded once: later processes read the pixels from
    $STUDYLIB_CACHE/image_folder-<key>/*.npy (CIFAR-10's 60,000 JPEGs take 25 s to decode on 2
    cores, 0.2 s to read back). The key hashes the folder's path and every image's name, size and
    modification time, so a changed, added or removed image means a fresh decode."""
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    from studylib import pixels

    manifest = [str(root), pixels.RULE]
    for path in files:
        stat = file_stat(path)
        manifest.append(f"{path.relative_to(root)} {stat.st_size} {stat.st_mtime_ns}")
    key = hashlib.sha256("\n".join(manifest).encode()).hexdigest()[:16]
    cache = cache_dir() / f"image_folder-{key}"
    parts = ("train_images", "train_labels", "test_images", "test_labels")
    try:
        arrays = {part: torch.from_numpy(np.load(cache / f"{part}.npy")) for part in parts}
        return ImageDataset(
            str(root), *arrays.values(), json.loads((cache / "classes.json").read_text())
        )
    except (OSError, ValueError):
        pass
    dataset = image_folder(root)
    tmp = cache.with_name(f"{cache.name}.{os.getpid()}.tmp")
    try:
        tmp.mkdir(parents=True, exist_ok=True)
        for part in parts:
            np.save(tmp / f"{part}.npy", getattr(dataset, part).numpy())
        (tmp / "classes.json").write_text(json.dumps(dataset.classes))
        os.replace(tmp, cache)
    # read-only, full, or written meanwhile by another process: only slower next time
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
    return dataset


def _read_images(files: list[Path]) -> torch.Tensor:
    from PIL import Image

    from studylib import pixels

    def read(path: Path) -> np.ndarray:
        try:
            with Image.open(path) as image:
                return pixels.rgb(image)
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
            raise DataError(
                f"{path}: not a readable image ({type(err).__name__}: {cut(str(err), 120)})"
            ) from None

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        arrays = list(pool.map(read, files))
    size = arrays[0].shape[:2]
    for path, array in zip(files, arrays, strict=True):
        if array.shape[:2] != size:
            raise DataError(
                f"{path}: {array.shape[1]}x{array.shape[0]} pixels, but {files[0].name} is "
                f"{size[1]}x{size[0]}; allowed: images of one size in memory (resize them first)"
            )
    return torch.stack([torch.from_numpy(a).permute(2, 0, 1) for a in arrays])


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


class ImageTransform:
    """uint8 batch -> normalised float batch at `image_size`, with random resized crop and flip
    (one `affine_grid`/`grid_sample` for the whole batch, on its device) when `crop_min` is set."""

    def __init__(self, image_size: int, crop_min: float | None = None) -> None:
        self.image_size = image_size
        self.crop_min = crop_min

    def __call__(self, images: torch.Tensor, part: slice = slice(None)) -> torch.Tensor:
        """Transform `images[part]`; the random crops and flips are drawn for the whole batch, so a
        rank that transforms its part gets what one process transforming everything would."""
        x = images[part].float().div_(255)
        if self.crop_min is not None:
            x = F.grid_sample(
                x,
                self._random_crop_grid(len(images), x.device)[part],
                mode="bilinear",
                padding_mode="reflection",
                align_corners=False,
            )
        elif x.shape[-2:] != (self.image_size, self.image_size):
            x = F.interpolate(
                x, size=self.image_size, mode="bilinear", antialias=True, align_corners=False
            )
        mean = torch.tensor(MEAN, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(STD, device=x.device).view(1, 3, 1, 1)
        return (x - mean) / std

    def _random_crop_grid(self, n: int, dev: torch.device) -> torch.Tensor:
        """Sampling grids of `n` random resized crops with random horizontal flips."""
        area = torch.empty(n, device=dev).uniform_(self.crop_min, 1.0)
        log_ratio = torch.empty(n, device=dev).uniform_(math.log(3 / 4), math.log(4 / 3))
        ratio = log_ratio.exp()
        w = (area * ratio).sqrt().clamp(max=1.0)  # crop width and height as fractions of the image
        h = (area / ratio).sqrt().clamp(max=1.0)
        cx = (torch.rand(n, device=dev) * 2 - 1) * (1 - w)  # centre, in [-1, 1] coordinates
        cy = (torch.rand(n, device=dev) * 2 - 1) * (1 - h)
        flip = torch.where(torch.rand(n, device=dev) < 0.5, -1.0, 1.0)
        theta = torch.zeros(n, 2, 3, device=dev)
        theta[:, 0, 0], theta[:, 0, 2] = w * flip, cx
        theta[:, 1, 1], theta[:, 1, 2] = h, cy
        return F.affine_grid(theta, [n, 3, self.image_size, self.image_size], align_corners=False)


class Batches:
    """Batches of in-memory tensors on the training device: one shuffled pass per iteration.

    Randomness (order, crops, flips) comes from torch's global generator, which the engine seeds at
    every epoch, so a resumed run sees exactly the batches an uninterrupted one would. In a job of
    several tasks, `batch_size` is the global batch: every rank draws it the same way and keeps its
    own slice, so the ranks together see what one process would. shard=False gives every rank the
    whole batch (feature extraction). `images_per_epoch` makes an iteration draw that many images
    instead of one pass: shuffled passes end to end, cut where the count is reached (the data-size
    study trains MAE the same steps on sets of every size).
    """

    def __init__(
        self,
        inputs: torch.Tensor,
        targets: torch.Tensor,
        batch_size: int,
        device: torch.device,
        transform: ImageTransform | None = None,
        shuffle: bool = True,
        drop_last: bool = True,
        shard: bool = True,
        images_per_epoch: int = 0,
    ) -> None:
        self.rank, self.world = (distributed.rank(), distributed.world_size()) if shard else (0, 1)
        if batch_size % self.world:
            raise ConfigError(
                f"batch_size {batch_size} does not split over {self.world} tasks; "
                f"allowed: multiples of {self.world}"
            )
        self.inputs = inputs.to(device)
        self.targets = targets.to(device)
        self.batch_size = min(batch_size, len(inputs)) if drop_last else batch_size
        self.transform = transform
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.images = images_per_epoch or len(inputs)
        if self.images != len(inputs) and not shuffle:
            raise ValueError("images_per_epoch needs shuffle=True")

    def __len__(self) -> int:
        return (
            self.images // self.batch_size
            if self.drop_last
            else math.ceil(self.images / self.batch_size)
        )

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = len(self.inputs)
        order = None
        if self.shuffle:
            passes = [
                torch.randperm(n, device=self.inputs.device)
                for _ in range(math.ceil(self.images / n))
            ]
            order = torch.cat(passes)[: self.images]
        for i in range(len(self)):
            sl = slice(i * self.batch_size, (i + 1) * self.batch_size)
            idx = order[sl] if order is not None else sl
            x, y = self.inputs[idx], self.targets[idx]
            share = len(x) // self.world
            part = (
                slice(self.rank * share, (self.rank + 1) * share) if self.world > 1 else slice(None)
            )
            yield (self.transform(x, part) if self.transform else x[part]), y[part]
