"""Data too large for memory, streamed: WebDataset tar shards in img2dataset's layout (written here
too), and image folders in ImageNet's layout.

A shard folder holds `00000.tar`, `00001.tar`, ... and `shards.json` (each shard's name and sample
count). Each sample is `<key>.jpg` (the image), `<key>.json` (`{"tags": [...], "label": int,
"caption": str}`) and `<key>.txt` (the caption), as img2dataset writes them. `write_shards` makes
such a folder from an in-memory dataset, or from a streamed image folder by copying its JPEGs, with
simulated hashtags (`studylib shards`), so the code that reads a web dataset on a cluster runs here
on CIFAR; `index_shards` writes shards.json for tars made elsewhere.

A shard folder can be the pool that MAE and WSP stream (`data.pretrain: /path/to/shards`,
`ShardBatches`): WSP's classes are then the pool's `data.tag_vocabulary` most frequent tags
(`vocabulary`, counted once and cached).

An image folder (`root/train/<class>/<image>`, or `root/<class>/<image>`; images of any size)
streams the same way (`ImageFiles`): its file list, read once and cached in $STUDYLIB_CACHE
(`file_index`), is cut in a fixed shuffle into units of 1,000 files that play the part of shards,
each read in an order drawn per epoch; an image's one tag is its class name. With `data.stream:
true`, such a folder is the pool that MAE and WSP stream.

`ShardStream` reads a folder back, one rank's share of one epoch, in batches. Its order is a
function of (seed, epoch, rank) and the shards' sample counts only, never of the DataLoader's
workers or their timing: a rank's shards are dealt to a fixed number of lanes (`LANES`), the stream
takes a batch from each lane in turn (`_lanes`), the workers each read some lanes, and the main
process puts their samples back in the stream's order (`_in_order`). So any number of workers gives
the same batches, and an epoch resumed at a step, on any worker count, starts there without decoding
what comes before it. Crops are drawn from (seed, epoch, sample key). Every rank takes the same
steps an epoch (the full batches of its floor(shards / ranks) smallest shards); a sample that cannot
be used is skipped, counted, and replaced by a usable one of its batch, up to `max_skipped`.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import io
import itertools
import json
import math
import os
import random
import shutil
import tarfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import simplejpeg
import torch
from PIL import Image
from torchcodec.decoders import decode_jpeg
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2.functional import resized_crop

from studylib import distributed, pixels, tars
from studylib.config import cache_dir
from studylib.data import IMAGE_SUFFIXES, ImageDataset, ImageTransform, file_stat
from studylib.errors import DataError
from studylib.io import atomic_write, named_write_failures, sha256
from studylib.weak_labels import Hashtags

# a loader worker crops on its own core: the loader's parallelism is its workers
cv2.setNumThreads(1)

INDEX = "shards.json"
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


def is_shard_folder(name: str) -> bool:
    """Whether the dataset name `name` is a folder of shards (it holds shards.json)."""
    return "/" in name and (Path(name).expanduser() / INDEX).is_file()


def tag_counts(folder: Path) -> tuple[Counter, int]:
    """How many images of a streamed folder carry each tag, and how many images there are: of the
    shards' metadata (one pass over every shard's .json members, cached in $STUDYLIB_CACHE under the
    folder's fingerprint), or of an image folder's file index (an image's tag is its class)."""
    if not (folder / INDEX).is_file():
        classes, files = file_index(folder)
        return Counter(classes[label] for _, label in files), len(files)
    cache = cache_dir() / f"tag_counts-{shard_fingerprint(folder)}.json"
    if cache.is_file():
        saved = json.loads(cache.read_text())
        return Counter(saved["counts"]), saved["images"]
    counts: Counter[str] = Counter()
    images = 0
    for shard in read_index(folder):
        with tarfile.open(folder / shard["name"]) as tar:
            for member in tar:
                if member.name.endswith(".json"):
                    try:
                        tags = json.loads(tar.extractfile(member).read())["tags"]
                    except (ValueError, KeyError, TypeError, AttributeError):
                        continue  # training skips and counts such a sample (ShardStream)
                    counts.update(
                        set(checked_tags(tags, f"{folder / shard['name']}: sample {member.name}"))
                    )
                    images += 1
    if not counts:
        raise DataError(
            f'{folder}: no tags in any sample\'s .json; allowed: shards whose .json hold "tags": '
            "[...]"
        )
    atomic_write(cache, lambda f: f.write(json.dumps({"images": images, "counts": counts})))
    return counts, images


def checked_tags(tags: object, where: str) -> list[str]:
    """A sample's tags: a list of strings, else a DataError naming the sample."""
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        raise DataError(
            f'{where}: tags are {str(tags)[:60]}; allowed: a list of strings, e.g. ["cat", "pet"]'
        )
    return tags


def vocabulary(counts: Counter, size: int) -> list[str]:
    """The `size` most frequent tags of a streamed folder's `counts` (tag_counts), ties broken by
    name."""
    return sorted(counts, key=lambda t: (-counts[t], t))[:size]


def read_index(folder: Path) -> list[dict]:
    """The shards of `folder` and their sample counts, from its shards.json, checked: each name a
    plain file name of a regular file in the folder, listed once; each count a positive integer."""
    path = folder / INDEX
    try:
        shards = json.loads(path.read_text())["shards"]
        index = [{"name": s["name"], "samples": s["samples"]} for s in shards]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise DataError(
            f"{path}: not a shard index ({type(err).__name__}); allowed: the shards.json that "
            '`studylib shards` writes, {"shards": [{"name": ..., "samples": ...}, ...]}'
        ) from None
    seen = set()
    for shard in index:
        name, samples = shard["name"], shard["samples"]
        plain = (
            isinstance(name, str)
            and name not in ("", ".", "..")
            and "/" not in name
            and "\\" not in name
        )
        if (
            not plain
            or name in seen
            or not (folder / name).is_file()
            or (folder / name).is_symlink()
        ):
            why = (
                "not a plain file name in the folder"
                if not plain
                else "listed twice"
                if name in seen
                else "not a regular file there"
            )
            raise DataError(
                f"{path}: shard {str(name)[:80]!r} is {why}; allowed: each tar of {folder} once, "
                "by its file name"
            )
        if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
            raise DataError(
                f"{path}: shard {name!r} has samples {str(samples)[:40]}; allowed: an integer >= 1 "
                "(`studylib shards --index` counts them)"
            )
        seen.add(name)
    return index


def shard_fingerprint(folder: Path) -> str:
    """What a run's identity holds of a shard folder: its index and the bytes of every tar it lists
    (each tar read once: its hash and sample count cached under its path, size, mtime_ns and
    inode)."""
    digest = hashlib.sha256()
    for shard in read_index(folder):
        digest.update(
            f"{shard['name']} {shard['samples']} "
            f"{_tar_digest(folder / shard['name'], shard['samples'])}\n".encode()
        )
    return digest.hexdigest()[:16]


def _tar_digest(path: Path, samples: int) -> str:
    """A listed tar's sha256, its sample count checked against the index's."""
    stat = path.stat()
    key = f"{path.resolve()} {stat.st_size} {stat.st_mtime_ns} {stat.st_ino}"
    cache = cache_dir() / "tars" / f"{hashlib.sha256(key.encode()).hexdigest()[:24]}.json"
    try:
        saved = json.loads(cache.read_text())
    except (OSError, ValueError):
        saved = {"sha256": sha256(path), "samples": _count_samples(path)}
        atomic_write(cache, lambda f: json.dump(saved, f))
    if saved["samples"] != samples:
        raise DataError(
            f"{path}: holds {saved['samples']} samples, shards.json lists {samples}; allowed: the "
            "count "
            f"the tar holds (`studylib shards --index {path.parent}` rewrites the index)"
        )
    return saved["sha256"]


def _count_samples(path: Path) -> int:
    """The samples of a tar: the keys with a .jpg member; a tar that is not one, holds none, or
    repeats a member's name is a DataError naming it."""
    names = []
    try:
        with tarfile.open(path) as tar:
            names = [m.name for m in tar if m.isfile()]
    except (OSError, tarfile.TarError) as err:
        raise DataError(
            f"{path}: not a readable tar ({type(err).__name__}); allowed: WebDataset tars"
        ) from None
    repeated = next((n for n, count in Counter(names).items() if count > 1), None)
    if repeated is not None:
        raise DataError(
            f"{path}: member {repeated[:80]!r} appears twice; allowed: one member per key and "
            "extension"
        )
    samples = len({n.rsplit(".", 1)[0] for n in names if n.lower().endswith(".jpg")})
    if not samples:
        raise DataError(
            f"{path}: no samples (no .jpg member); allowed: tars of <key>.jpg with <key>.json"
        )
    return samples


class TarShards:
    """A folder of tar shards, listed in its shards.json."""

    def __init__(self, folder: Path) -> None:
        self.folder, self.units = folder, read_index(folder)

    def read(self, units: list[dict], seed: int, skip: int = 0) -> Iterator[dict]:
        """The samples of `units`, shard after shard, each in its written order, less the first
        `skip` (whole shards among them not opened)."""
        while units and skip >= units[0]["samples"]:
            skip, units = skip - units[0]["samples"], units[1:]
        urls = [str(self.folder / unit["name"]) for unit in units]
        yield from itertools.islice(tars.samples(urls), skip, None)


def file_index(root: Path) -> tuple[list[str], list[tuple[str, int]]]:
    """The classes of an image folder and its training images (path relative to `root`, class),
    sorted; cached in $STUDYLIB_CACHE under the folder's path and every class folder's modification
    time (which an added, removed or renamed image changes), so a folder of a million images is
    listed once; each file stat'ed once per process (index_fingerprint), which lists it again where
    an image is gone."""
    index_fingerprint(root)
    return _read_file_index(_index_file(root))


def index_fingerprint(root: Path) -> str:
    """What a run's identity holds of a streamed image folder: its resolved path and every image's
    name, class, size and mtime_ns (a stat per file, not its bytes: about 2 s for a million files);
    a listed image gone since the index was cached (a class folder's mtime restored by rsync -a, cp
    -a or tar) lists the folder again."""
    root = root.expanduser().resolve()
    index = _index_file(root)
    return _stat_fingerprint(root, index, _hash_file(index))


@functools.lru_cache(maxsize=4)
def _stat_fingerprint(root: Path, index: Path, _index_hash: str) -> str:
    digest = hashlib.sha256(str(root).encode())
    try:
        for name, label in _read_file_index(index)[1]:
            stat = file_stat(root / name, relist_if_gone=True)
            digest.update(f"{name} {label} {stat.st_size} {stat.st_mtime_ns}\n".encode())
    except FileNotFoundError:
        index.unlink(missing_ok=True)  # stale: listed again, once
        _read_file_index.cache_clear(), _hash_file.cache_clear()
        return _stat_fingerprint(root, _index_file(root), "relisted")
    return digest.hexdigest()[:16]


def _index_file(root: Path) -> Path:
    """The cached file index of `root` in $STUDYLIB_CACHE, listed and written first where there is
    none."""
    root = root.expanduser().resolve()
    train = root / "train" if (root / "train").is_dir() else root
    try:
        folders = sorted(d for d in train.iterdir() if d.is_dir())
        key = [str(root)] + [f"{d.name} {d.stat().st_mtime_ns}" for d in folders]
    except OSError as err:
        raise DataError(f"image folder {train}: cannot list it ({err.strerror})") from None
    if len(folders) < 2:
        raise DataError(
            f"image folder {root}: {len(folders)} class folder(s); allowed: at least 2 classes, as "
            f"{root}/train/<class>/<image> or {root}/<class>/<image> (as an in-memory folder needs)"
        )
    cache = (
        cache_dir()
        / f"file_index-{hashlib.sha256(chr(10).join(key).encode()).hexdigest()[:16]}.json"
    )
    if cache.is_file():
        return cache
    files = []
    for label, folder in enumerate(folders):
        found = sorted(
            e.name for e in os.scandir(folder) if Path(e.name).suffix.lower() in IMAGE_SUFFIXES
        )
        if not found:
            raise DataError(
                f"{folder}: no images in this class folder ({', '.join(sorted(IMAGE_SUFFIXES))}); "
                "allowed: at least one image in every class folder"
            )
        files += [(str(folder.relative_to(root) / name), label) for name in found]
    index = {"root": str(root), "classes": [d.name for d in folders], "files": files}
    atomic_write(cache, lambda f: f.write(json.dumps(index)))
    return cache


@functools.lru_cache(maxsize=4)
def _read_file_index(path: Path) -> tuple[list[str], list[tuple[str, int]]]:
    """A cached file index, parsed once per process (a file's content never changes under its name,
    which holds the folder's key)."""
    index = json.loads(path.read_text())
    return index["classes"], [tuple(f) for f in index["files"]]


@functools.lru_cache(maxsize=4)
def _hash_file(path: Path) -> str:
    return sha256(path)[:16]


class ImageFiles:
    """An image folder as units of `per_unit` files (the last may hold fewer) of its file index in a
    fixed shuffle; a sample's key is its path in the folder, its one tag its class name."""

    def __init__(self, root: Path, per_unit: int = 1000) -> None:
        self.root = root
        self.classes, files = file_index(root)
        files = list(files)
        random.Random(0).shuffle(files)
        self.units = [
            {
                "name": f"files{i // per_unit:05d}",
                "samples": len(files[i : i + per_unit]),
                "files": files[i : i + per_unit],
            }
            for i in range(0, len(files), per_unit)
        ]

    def read(self, units: list[dict], seed: int, skip: int = 0) -> Iterator[dict]:
        """The samples of `units`, each unit's files in an order drawn from (seed, unit), less the
        first `skip` (not read)."""
        for unit in units:
            files = list(unit["files"])
            random.Random(f"{seed}:{unit['name']}").shuffle(files)
            for path, label in files[skip:]:
                sample = {"__key__": path, "json": json.dumps({"tags": [self.classes[label]]})}
                with contextlib.suppress(OSError):  # unreadable: skipped and counted as "no jpg"
                    sample["jpg"] = (self.root / path).read_bytes()
                yield sample
            skip = max(0, skip - len(files))


def open_folder(folder: Path) -> TarShards | ImageFiles:
    """A folder of shards (it holds shards.json), else an image folder."""
    return TarShards(folder) if (folder / INDEX).is_file() else ImageFiles(folder)


def epoch_shards(index: list[dict], seed: int, epoch: int, rank: int, world: int) -> list[dict]:
    """This rank's shards in an epoch: the list shuffled by (seed, epoch), dealt round-robin to the
    ranks."""
    order = list(index)
    random.Random(seed * 1_000_003 + epoch).shuffle(order)
    return order[rank::world]


def crop_box(
    width: int, height: int, crop_min: float | None, rng: random.Random
) -> tuple[int, int, int, int]:
    """A random resized crop's window (left, top, right, bottom): torchvision's rule, a share of the
    area in [crop_min, 1] and an aspect ratio in [3/4, 4/3], ten tries, else the centre square; with
    crop_min None, the centre square."""
    for _ in range(10 if crop_min is not None else 0):
        area = width * height * rng.uniform(crop_min, 1.0)
        ratio = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
        w, h = round(math.sqrt(area * ratio)), round(math.sqrt(area / ratio))
        if 0 < w <= width and 0 < h <= height:
            left, top = rng.randint(0, width - w), rng.randint(0, height - h)
            return left, top, left + w, top + h
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    return left, top, left + side, top + side


def decoding_device(device: torch.device) -> torch.device | None:
    """Where a run on `device` decodes its streamed JPEGs: batched on a CUDA device, else None (one
    by one in the loader workers)."""
    return device if device.type == "cuda" else None


def decoder(device: torch.device) -> str:
    """What turns a streamed sample into pixels for a run on `device`: part of a streamed pool's
    identity, since another decoder gives other pixels (nvJPEG's IDCT is not libjpeg-turbo's)."""
    if decoding_device(device) is not None:
        return (
            "torchcodec decode_jpeg batched on the GPU (nvJPEG), bicubic antialiased crop there; "
            f"{pixels.RULE}"
        )
    return (
        "simplejpeg in the loader workers, OpenCV crop: area where it shrinks 2x, else bicubic; "
        f"{pixels.RULE}"
    )


# what a sample's decoding raises where it cannot be used (PIL, simplejpeg, torchcodec: truncated,
# not an image, a decompression bomb, which is no OSError; json; tags)
UNUSABLE = (
    OSError,
    ValueError,
    TypeError,
    SyntaxError,
    RuntimeError,
    DataError,
    Image.DecompressionBombError,
)


def _why(err: Exception) -> str:
    """An unusable sample's reason, as the epoch's skip list records it."""
    return f"{type(err).__name__}: {err}"[:200]


@dataclass
class Encoded:
    """A JPEG a worker leaves undecoded, with its crop: the main process decodes a batch of them on
    the GPU in one call (decode_on)."""

    blob: bytes
    box: tuple[int, int, int, int]


def _decode(
    sample: dict, size: int, crop_min: float | None = None, seed: int = 0, defer: bool = False
) -> tuple[torch.Tensor | Encoded | None, str, list[str] | str]:
    """(uint8 image (3, size, size), key, tags): the sample's image cropped by `crop_box` (drawn
    from (seed, key)) and resized; or (None, key, why) for a sample that cannot be used. With
    `defer`, an RGB or greyscale JPEG comes back Encoded (header checked, not decoded)."""
    key = sample.get("__key__", "?")
    try:
        tags = checked_tags(json.loads(sample["json"])["tags"], key)
        blob = sample["jpg"]
        # the header: size, format, and PIL's decompression-bomb check before anything is decoded
        with Image.open(io.BytesIO(blob)) as opened:
            turn = pixels.orientation(opened)  # 5-8 turn the image a quarter
            width, height = opened.size if turn < 5 else opened.size[::-1]
            jpeg = opened.format == "JPEG" and opened.mode in ("RGB", "L")
            other = None if jpeg else pixels.rgb(opened)
        box = crop_box(width, height, crop_min, random.Random(f"{seed}:{key}"))
        if jpeg and defer and turn == 1:
            return Encoded(blob, box), key, tags
        if jpeg:
            other = np.ascontiguousarray(pixels.upright(simplejpeg.decode_jpeg(blob, "RGB"), turn))
        return _crop(other, box, size), key, tags
    except KeyError as err:
        return None, key, f"no {err.args[0]}"
    except UNUSABLE as err:
        return None, key, _why(err)


def _crop(pixels: np.ndarray, box: tuple[int, int, int, int], size: int) -> torch.Tensor:
    """`box` of (H, W, 3) `pixels` resized to (3, size, size) by OpenCV: bicubic, or its area resize
    where the box shrinks 2x or more on both sides (bicubic would alias there; area is free of moire
    but slow at other ratios). 3x faster than torch's antialiased bicubic on uint8, within 0.3 of
    255 of it on 256 px photos (benchmarks/RESULTS.md: decoders)."""
    left, top, right, bottom = box
    halves = min(right - left, bottom - top) >= 2 * size
    how = cv2.INTER_AREA if halves else cv2.INTER_CUBIC
    resized = cv2.resize(pixels[top:bottom, left:right], (size, size), interpolation=how)
    return torch.from_numpy(resized).permute(2, 0, 1)


def _crop_decoded(pixels: torch.Tensor, box: tuple[int, int, int, int], size: int) -> torch.Tensor:
    """A batched decode's (3, H, W) `pixels` cropped where they lie: torchvision's bicubic
    antialiased crop on the GPU, the workers' `_crop` on the CPU (so that it gives their pixels)."""
    if pixels.device.type == "cpu":
        return _crop(np.ascontiguousarray(pixels.permute(1, 2, 0).numpy()), box, size)
    left, top, right, bottom = box
    bicubic = InterpolationMode.BICUBIC
    return resized_crop(pixels, top, left, bottom - top, right - left, [size, size], bicubic, True)


def decode_batch(batch: list[tuple], size: int, device: torch.device) -> list[tuple]:
    """`batch` (a stream's samples, from workers that deferred their JPEGs) on `device`: its Encoded
    JPEGs decoded there in one call (one at a time if the call fails, so that a bad JPEG is one
    unusable sample) and cropped there, its other images moved there."""
    encoded = [i for i, sample in enumerate(batch) if isinstance(sample[0], Encoded)]
    blobs = [batch[i][0].blob for i in encoded]
    try:
        decoded = decode_jpeg(blobs, device=device) if blobs else []
    except RuntimeError:
        decoded = [_decode_one(blob, device) for blob in blobs]
    out = [(im.to(device) if isinstance(im, torch.Tensor) else im, k, t) for im, k, t in batch]
    for i, picture in zip(encoded, decoded, strict=True):
        image, key, tags = batch[i]
        if isinstance(picture, torch.Tensor):
            out[i] = (_crop_decoded(picture, image.box, size), key, tags)
        else:
            out[i] = (None, key, picture)  # why it could not be decoded
    return out


def _decode_one(blob: bytes, device: torch.device) -> torch.Tensor | str:
    try:
        return decode_jpeg(blob, device=device)
    except RuntimeError as err:
        return _why(err)


# a rank's shards are dealt to this many lanes (fewer with fewer shards), whatever the workers
LANES = 16


@dataclass(eq=False)
class _Samples(torch.utils.data.IterableDataset):
    """The decoded samples of a rank's `chunks` (lane, first position, length), each tagged with its
    lane and position; worker w reads the chunks of lanes w, w + workers, ..., each lane a
    sequential reader that passes over the samples before its first chunk undecoded."""

    source: TarShards | ImageFiles
    lanes: list[list[dict]]
    chunks: list[tuple[int, int, int]]
    size: int
    crop_min: float | None
    seed: int
    defer: bool = False  # JPEGs left Encoded, for the main process to decode on the GPU

    def __iter__(
        self,
    ) -> Iterator[tuple[int, int, tuple[torch.Tensor | None, str, list[str] | str]]]:
        worker = torch.utils.data.get_worker_info()
        mine = [c for c in self.chunks if worker is None or c[0] % worker.num_workers == worker.id]
        readers: dict[int, Iterator[dict]] = {}
        for lane, first, length in mine:
            if lane not in readers:
                readers[lane] = self.source.read(self.lanes[lane], self.seed, first)
            for position in range(first, first + length):
                sample = next(readers[lane], None)
                yield (
                    lane,
                    position,
                    (None, "?", "missing")
                    if sample is None
                    else _decode(sample, self.size, self.crop_min, self.seed, self.defer),
                )


def _lanes(
    units: list[dict], batch_size: int, start: int
) -> tuple[list[list[dict]], list[tuple[int, int, int]]]:
    """A rank's units dealt round-robin to min(LANES, units) lanes, and the rank's sample stream
    from sample `start` on as chunks (lane, first position in the lane, length): a batch of
    `batch_size` samples from each lane in turn (a lane that has run out drops out). The order
    follows from the lanes' sample counts alone, not from the DataLoader's workers, so any number of
    workers gives the same stream."""
    lanes = [units[k :: min(LANES, len(units))] for k in range(min(LANES, len(units)))]
    left = [sum(unit["samples"] for unit in lane) for lane in lanes]
    done, chunks, lane = [0] * len(lanes), [], 0
    while any(left):
        taken = min(batch_size, left[lane])
        if taken:
            skip = min(taken, max(0, start))
            start -= skip
            if taken > skip:
                chunks.append((lane, done[lane] + skip, taken - skip))
            done[lane], left[lane] = done[lane] + taken, left[lane] - taken
        lane = (lane + 1) % len(lanes)
    return lanes, chunks


@dataclass(eq=False)
class ShardStream:
    """One rank's batches of a shard folder or image folder, epoch by epoch: (uint8 images (B, 3,
    size, size), keys, tags), random-resized-cropped where `crop_min` is set, else
    centre-cropped."""

    folder: Path
    batch_size: int
    size: int
    seed: int = 0
    workers: int = 2
    rank: int | None = None  # None: this process's place in the job
    world: int | None = None
    max_skipped: float = 0.01
    shards: int = 0  # > 0: the first shards only
    crop_min: float | None = None
    # None: JPEGs decoded in the loader workers; a device: batched there by the main process
    decode_on: torch.device | None = None

    def __post_init__(self) -> None:
        self.rank = distributed.rank() if self.rank is None else self.rank
        self.world = distributed.world_size() if self.world is None else self.world
        self.skipped: list[tuple[str, str]] = []  # (key, why) of the last epoch's unusable samples
        self.repeats = 0  # samples repeated to fill the last epoch's steps
        self.source = open_folder(self.folder)
        self.index = self.source.units[: self.shards or None]
        if len(self.index) < self.world:
            raise DataError(
                f"{self.folder}: {len(self.index)} shards for {self.world} ranks; allowed: at "
                "least one shard a rank"
            )
        if not self.steps():
            raise DataError(
                f"{self.folder}: each of {self.world} ranks reads too few samples for one batch of "
                f"{self.batch_size}; allowed: a batch size a rank of at most {self._least()}"
            )

    def steps(self) -> int:
        """Steps of every rank in every epoch: the full batches of `_least()` samples."""
        return self._least() // self.batch_size

    def _least(self) -> int:
        """The samples of the floor(shards / ranks) smallest shards, which any rank's share of any
        shuffle holds at least."""
        return sum(sorted(s["samples"] for s in self.index)[: len(self.index) // self.world])

    def epoch(
        self, epoch: int, start: int = 0
    ) -> Iterator[tuple[torch.Tensor, list[str], list[list[str]]]]:
        """This rank's `steps()` batches of `epoch`, from step `start` on (the samples before it are
        not decoded). Batch i holds samples i*B to (i+1)*B - 1 of the rank's stream, an unusable one
        replaced by a usable one of the same batch, so where a step starts does not depend on which
        samples are unusable."""
        mine = epoch_shards(self.index, self.seed, epoch, self.rank, self.world)
        listed = sum(s["samples"] for s in mine)
        lanes, chunks = _lanes(mine, self.batch_size, start * self.batch_size)
        seed, defer = self.seed * 1_000_003 + epoch, self.decode_on is not None
        samples = _Samples(self.source, lanes, chunks, self.size, self.crop_min, seed, defer)
        workers = min(self.workers, len(lanes))
        loader = torch.utils.data.DataLoader(
            samples,
            batch_size=self.batch_size,
            collate_fn=list,
            num_workers=workers,
            generator=torch.Generator(),
        )
        stream = _in_order(iter(loader), chunks)
        self.skipped, self.repeats = [], 0
        per_batch = self.batch_size
        for _ in range(start, self.steps()):
            batch = list(itertools.islice(stream, per_batch))
            if len(batch) < per_batch:
                raise DataError(
                    f"{self.folder}: rank {self.rank} read fewer samples in epoch {epoch} than "
                    "its shards are listed with; allowed: shards that hold what shards.json says"
                )
            if self.decode_on is not None:
                batch = decode_batch(batch, self.size, self.decode_on)
            good = [sample for sample in batch if sample[0] is not None]
            self.skipped += [sample[1:] for sample in batch if sample[0] is None]
            if len(self.skipped) > self.max_skipped * listed or not good:
                raise DataError(
                    f"{self.folder}: {len(self.skipped)} of rank {self.rank}'s {listed} samples in "
                    f"epoch {epoch} cannot be used (first: {self.skipped[0][0]}, "
                    f"{self.skipped[0][1]}); "
                    f"allowed: at most {self.max_skipped:.1%} (max_skipped)"
                )
            self.repeats += per_batch - len(good)
            batch = [
                good[i % len(good)] if sample[0] is None else sample
                for i, sample in enumerate(batch)
            ]
            yield torch.stack([b[0] for b in batch]), [b[1] for b in batch], [b[2] for b in batch]


def _in_order(parts: Iterator[list], chunks: list[tuple[int, int, int]]) -> Iterator[tuple]:
    """The workers' tagged samples in the stream's order (the chunks'), held back until their turn:
    each worker reads its lanes in that order, so at most about a batch per worker waits."""
    waiting: dict[tuple[int, int], tuple] = {}
    for lane, first, length in chunks:
        for position in range(first, first + length):
            while (lane, position) not in waiting:
                part = next(parts, None)
                if part is None:
                    return
                waiting.update({(k, p): sample for k, p, sample in part})
            yield waiting.pop((lane, position))


class ShardBatches:
    """A streamed folder as the engine's batches (like studylib.data.Batches): one epoch per
    iteration, each rank `batch_size / ranks` images a step, random-resized-cropped in the
    DataLoader workers (crop_min set; on a CUDA device the JPEGs are decoded and cropped there, in
    one batched call a step), then flipped and normalised on `device`. The epoch's seed
    (shard order, crops) and the flips are drawn from torch's global generator, which the engine
    seeds per epoch, so a resumed run redraws them; a resumed epoch starts at `start_step` (set by
    the engine) without reading the samples before it. Targets: the tags' indices in `tags` (-1
    padded; a tag outside it is dropped), or zeros without `tags` (MAE)."""

    def __init__(
        self,
        folder: Path,
        batch_size: int,
        device: torch.device,
        image_size: int,
        crop_min: float | None,
        tags: list[str] | None = None,
        workers: int = 1,
        shards: int = 0,
    ) -> None:
        world = distributed.world_size()
        self.stream = ShardStream(
            folder,
            batch_size // world,
            image_size,
            workers=workers,
            shards=shards,
            crop_min=crop_min,
            decode_on=decoding_device(device),
        )
        self.device, self.normalise = device, ImageTransform(image_size)
        self.flip = crop_min is not None
        self.ids = {tag: i for i, tag in enumerate(tags or [])}
        self.start_step = 0  # where the next epoch starts (once)

    def __len__(self) -> int:
        return self.stream.steps()

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        self.stream.seed = int(torch.randint(2**31 - 1, ()).item())  # now, not at the first batch
        start, self.start_step = self.start_step, 0
        return self._batches(start)

    def _batches(self, start: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for images, _keys, tags in self.stream.epoch(0, start):
            ids = [[self.ids[t] for t in sample if t in self.ids] for sample in tags]
            targets = torch.full((len(ids), max(1, *map(len, ids))), -1, dtype=torch.long)
            for row, found in enumerate(ids):
                targets[row, : len(found)] = torch.tensor(found, dtype=torch.long)
            images = images.to(self.device)
            if self.flip:
                flipped = torch.rand(len(images), 1, 1, 1, device=self.device) < 0.5
                images = torch.where(flipped, images.flip(-1), images)
            yield self.normalise(images), targets.to(self.device)
