"""CIFAR-100 and CIFAR-10 read from the data directory ($STUDYLIB_DATA): `cifar100.npz` or an image
folder `cifar10/` (the layouts of ../shared/data/README.md), else torchvision's download folder,
downloading into it when the data directory is the default one and nothing is there yet.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import pickle
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from studylib.errors import DataError, shown
from studylib.images import ImageDataset, nhwc
from studylib.paths import data_dir


@contextlib.contextmanager
def _download_lock(root: Path) -> Iterator[None]:
    """One download at a time into `root` (array jobs may all start by loading CIFAR)."""
    with open(root / ".download.lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def cifar_source(name: str, ours: str, downloaded: str) -> Path:
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


def read_cifar100(path: Path) -> ImageDataset:
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
            nhwc(arrays["x_train"]),
            _labels(path, "y_train", arrays["y_train"]),
            nhwc(arrays["x_test"]),
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


def read_cifar10_download(path: Path) -> ImageDataset:
    from torchvision.datasets import CIFAR10

    train, test = CIFAR10(str(path.parent), train=True), CIFAR10(str(path.parent), train=False)
    return ImageDataset(
        "cifar10",
        nhwc(train.data),
        torch.tensor(train.targets),
        nhwc(test.data),
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
