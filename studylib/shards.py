"""Shard folders and streamed image folders: what they hold and what names them.

A shard folder holds `00000.tar`, `00001.tar`, ... and `shards.json` (each shard's name and sample
count). Each sample is `<key>.jpg` (the image), `<key>.json` (`{"tags": [...], "label": int,
"caption": str}`) and `<key>.txt` (the caption), as img2dataset writes them (studylib.shard_writer
writes such folders). A shard folder can be the pool that MAE and WSP stream (`data.pretrain:
/path/to/shards`): WSP's classes are then the pool's `data.tag_vocabulary` most frequent tags
(`vocabulary`, counted once and cached).

An image folder (`root/train/<class>/<image>`, or `root/<class>/<image>`; images of any size)
streams the same way (`ImageFiles`): its file list, read once and cached in $STUDYLIB_CACHE
(`file_index`), is cut in a fixed shuffle into units of 1,000 files that play the part of shards,
each read in an order drawn per epoch; an image's one tag is its class name. With `data.stream:
true`, such a folder is the pool that MAE and WSP stream. A shard folder is known by its tars'
bytes (`shard_fingerprint`), an image folder by its file index (`index_fingerprint`);
studylib.stream reads either back.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import itertools
import json
import os
import random
import tarfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from studylib import tars
from studylib.decode import checked_tags
from studylib.errors import DataError
from studylib.image_folder import IMAGE_SUFFIXES, file_stat
from studylib.io import atomic_write, sha256
from studylib.paths import cache_dir

INDEX = "shards.json"


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
