"""An image folder in memory (`root/train/<class>/*.jpg` and `root/test/<class>/*.jpg`, or
`root/<class>/*.jpg` for a training set alone): every image upright and 8-bit (studylib.pixels),
decoded once and cached in $STUDYLIB_CACHE for later processes.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from studylib.errors import DataError, cut
from studylib.images import ImageDataset
from studylib.paths import cache_dir

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp"}


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
        splits[split] = (read_images(files), torch.tensor(labels))
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


def cached_image_folder(root: Path) -> ImageDataset:
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


def read_images(files: list[Path]) -> torch.Tensor:
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
