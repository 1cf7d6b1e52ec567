"""Writing shard folders (`studylib shards`): from an in-memory dataset, or from a streamed image
folder by copying its JPEGs, with simulated hashtags, so the code that reads a web dataset on a
cluster runs here on CIFAR; `index_shards` writes shards.json for tars made elsewhere. A folder is
written into `<out>.partial` (claimed by a marker file and a lock) and renamed when whole.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import json
import os
import shutil
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from studylib import pixels
from studylib.errors import DataError
from studylib.images import ImageDataset
from studylib.io import atomic_write, named_write_failures
from studylib.shards import INDEX, file_index
from studylib.weak_labels import Hashtags

PARTIAL_MARKER = ".studylib-partial"  # in a <out>.partial folder that `studylib shards` is writing


def write_shards(
    dataset: ImageDataset,
    hashtags: Hashtags,
    folder: Path,
    *,
    per_shard: int = 1000,
    quality: int = 95,
    source: Path | None = None,
    max_size: int = 0,
) -> list[dict]:
    """Write the training images of `dataset` with their hashtags as JPEG shards of `per_shard`
    samples (the last may hold fewer) into `folder`; returns the index it writes to shards.json.
    With `source` (an image folder: `dataset` is then folder_labels(source)), each image is that
    folder's file, a JPEG copied as it is, or with `max_size` resized to that short side (aspect
    kept, as img2dataset does) where it is larger. The shards are written into `<folder>.partial`
    and renamed to `folder` when all are written, so a failed or interrupted command leaves no
    half-written folder (a `.partial` left by a killed one is written again)."""
    partial = folder.with_name(folder.name + ".partial")
    with _claimed(partial), named_write_failures(folder):
        try:
            index = _write(dataset, hashtags, partial, per_shard, quality, source, max_size)
            (partial / INDEX).write_text(json.dumps({"shards": index}, indent=1))
            (partial / PARTIAL_MARKER).unlink()  # the finished pool holds no marker
            if folder.exists():
                folder.rmdir()  # empty: checked by the command
            partial.rename(folder)
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
    return index


@contextlib.contextmanager
def _claimed(partial: Path) -> Iterator[None]:
    """`partial` made, marked as this program's and locked while the shards are written. A
    `.partial` of this program that no process holds (a killed writer's) is removed first; anything
    else is refused before a byte is written: a file or a link, a folder without the marker (not
    this program's), or one another writer holds."""
    out = partial.with_name(partial.name.removesuffix(".partial"))
    if partial.is_symlink() or (partial.exists() and not partial.is_dir()):
        raise DataError(
            f"{partial}: a file or link where `studylib shards --out {out}` keeps its unfinished "
            "shards; allowed: nothing there (move it away)"
        )
    if partial.exists():
        marker = partial / PARTIAL_MARKER
        if marker.is_symlink() or not marker.is_file():
            raise DataError(
                f"{partial}: a folder studylib did not make (no {PARTIAL_MARKER} in it), where "
                f"`studylib shards --out {out}` keeps its unfinished shards; allowed: move it away"
            )
        with open(marker) as held:
            _lock_or_refuse(held, out)
            shutil.rmtree(partial)  # a killed writer's
    # made aside, marked and locked, then renamed into place: no other writer sees it unmarked
    claim = partial.with_name(f"{partial.name}.{os.getpid()}")
    claim.mkdir(parents=True)
    with open(claim / PARTIAL_MARKER, "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        held.write(f"studylib shards, pid {os.getpid()}\n")
        held.flush()
        try:
            claim.rename(partial)
        except OSError:
            shutil.rmtree(claim, ignore_errors=True)
            raise DataError(f"--out {out}: another `studylib shards` began writing it") from None
        yield


def _lock_or_refuse(held: Any, out: Path) -> None:
    try:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise DataError(
            f"--out {out}: another `studylib shards` is writing it ({held.read().strip()}); "
            "allowed: wait for it to end, or another --out"
        ) from None


def _write(
    dataset: ImageDataset,
    hashtags: Hashtags,
    folder: Path,
    per_shard: int,
    quality: int,
    source: Path | None,
    max_size: int,
) -> list[dict]:
    import webdataset as wds

    files = file_index(source)[1] if source else []
    index = []
    for start in range(0, len(dataset.train_labels), per_shard):
        name = f"{len(index):05d}.tar"
        stop = min(start + per_shard, len(dataset.train_labels))
        with wds.TarWriter(str(folder / name)) as sink:
            for i in range(start, stop):
                tags = [hashtags.vocab[t] for t in hashtags.tags[i].tolist() if t >= 0]
                caption = " ".join(tags)
                jpeg = _jpeg(dataset, i, quality, source, files, max_size)
                sink.write(
                    {
                        "__key__": f"{i:09d}",
                        "jpg": jpeg,
                        "txt": caption,
                        "json": {
                            "tags": tags,
                            "label": int(dataset.train_labels[i]),
                            "caption": caption,
                        },
                    }
                )
        index.append({"name": name, "samples": stop - start})
    return index


def _jpeg(
    dataset: ImageDataset,
    i: int,
    quality: int,
    source: Path | None,
    files: list[tuple[str, int]],
    max_size: int = 0,
) -> bytes:
    """Image i as JPEG bytes: a JPEG file of `source` as it is where no resize is asked for, else
    decoded, resized to `max_size` on its short side where it is larger, and encoded. A source file
    that is not an image is a DataError naming it."""
    path = source / files[i][0] if source else None
    try:
        if path is not None and not max_size and path.suffix.lower() in (".jpg", ".jpeg"):
            return path.read_bytes()
        if path is not None:
            with Image.open(path) as opened:
                image = Image.fromarray(pixels.rgb(opened))
        else:
            image = Image.fromarray(dataset.train_images[i].permute(1, 2, 0).numpy())
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        raise DataError(
            f"{path}: not an image that can be read ({type(err).__name__}); allowed: JPEG, PNG or "
            "another image PIL reads (remove or replace the file)"
        ) from None
    short = min(image.size)
    if max_size and short > max_size:
        image = image.resize(
            (round(image.size[0] * max_size / short), round(image.size[1] * max_size / short)),
            Image.BICUBIC,
        )
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def folder_labels(root: Path) -> ImageDataset:
    """An image folder's classes and labels from its file index, without its pixels (images of 0 x 0
    x 0), for simulating hashtags on a folder too large or too varied to hold in memory."""
    classes, files = file_index(root)
    labels = torch.tensor([label for _, label in files], dtype=torch.long)
    nothing = torch.zeros(len(files), 0, 0, 0, dtype=torch.uint8)
    return ImageDataset(str(root), nothing, labels, nothing[:0], labels[:0], classes)


def index_shards(folder: Path) -> list[dict]:
    """Write shards.json for a folder of tars written elsewhere (img2dataset's output): each `*.tar`
    and its samples, counted as the keys that have a .jpg member; returns the index."""
    tars = sorted(folder.glob("*.tar")) if folder.is_dir() else []
    if not tars:
        raise DataError(
            f"--index {folder}: no .tar files there; allowed: a folder of WebDataset tars"
        )
    index = []
    for path in tars:
        try:
            with tarfile.open(path) as tar:
                keys = {
                    m.name.rsplit(".", 1)[0]
                    for m in tar
                    if m.isfile() and m.name.lower().endswith(".jpg")
                }
        except (OSError, tarfile.TarError) as err:
            raise DataError(
                f"{path}: not a readable tar ({type(err).__name__}); allowed: WebDataset tars"
            ) from None
        index.append({"name": path.name, "samples": len(keys)})
    atomic_write(folder / INDEX, lambda f: f.write(json.dumps({"shards": index}, indent=1)))
    return index
