"""Web-scale data as WebDataset tar shards in img2dataset's layout, written and streamed.

A shard folder holds `00000.tar`, `00001.tar`, ... and `shards.json` (each shard's name and sample count).
Each sample is `<key>.jpg` (the image), `<key>.json` (`{"tags": [...], "label": int, "caption": str}`) and
`<key>.txt` (the caption), as img2dataset writes them. `write_shards` makes such a folder from an in-memory
dataset with its simulated hashtags (`studylib shards`), so the code that reads a web dataset on a cluster
runs here on CIFAR.

A shard folder can be the pool that MAE and WSP stream (`data.pretrain: /path/to/shards`, `ShardBatches`): WSP's
classes are then the pool's `data.tag_vocabulary` most frequent tags (`vocabulary`, counted once and cached).

`ShardStream` reads a folder back, one rank's share of one epoch, in batches:
- the shard list is shuffled by (seed, epoch), dealt round-robin to the ranks, and each rank's shards to
  its DataLoader workers, which read and decode them (the `webdataset` library reads the tars);
- every sample is read at most once per epoch, and exactly once except the drop: every rank takes the same
  number of steps in every epoch, the full batches that the floor(shards / ranks) smallest shards fill
  (what the rank dealt the fewest samples holds at least); the samples past them are dropped;
- the order is a function of (seed, epoch, rank) only, not of timing: the DataLoader takes its workers'
  batches in turn, and batches are re-cut to `batch_size` in the main process;
- a sample that cannot be used (an image that does not decode, a truncated JPEG, metadata missing or not
  JSON) is skipped and counted in `skipped`; the rank's last batch is then filled up with repeats of its
  epoch's first samples (counted in `repeats`), so ranks still take equal steps without talking to each
  other. More than `max_skipped` of a rank's samples skipped in an epoch stops it with a DataError.
"""

from __future__ import annotations

import io
import json
import os
import random
import tarfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from studylib import distributed
from studylib.config import cache_dir
from studylib.data import ImageDataset, ImageTransform, fingerprint
from studylib.errors import DataError
from studylib.weak_labels import Hashtags

INDEX = "shards.json"


def write_shards(dataset: ImageDataset, hashtags: Hashtags, folder: Path, per_shard: int = 1000,
                 quality: int = 95) -> list[dict]:
    """Write the training images of `dataset` with their hashtags as JPEG shards of `per_shard` samples
    (the last may hold fewer) into `folder`; returns the index it writes to shards.json."""
    import webdataset as wds

    folder.mkdir(parents=True, exist_ok=True)
    index = []
    for start in range(0, len(dataset.train_labels), per_shard):
        name = f"{len(index):05d}.tar"
        stop = min(start + per_shard, len(dataset.train_labels))
        with wds.TarWriter(str(folder / name)) as sink:
            for i in range(start, stop):
                tags = [hashtags.vocab[t] for t in hashtags.tags[i].tolist() if t >= 0]
                caption = " ".join(tags)
                buffer = io.BytesIO()
                Image.fromarray(dataset.train_images[i].permute(1, 2, 0).numpy()).save(buffer, "JPEG", quality=quality)
                sink.write({"__key__": f"{i:09d}", "jpg": buffer.getvalue(), "txt": caption,
                            "json": {"tags": tags, "label": int(dataset.train_labels[i]), "caption": caption}})
        index.append({"name": name, "samples": stop - start})
    (folder / INDEX).write_text(json.dumps({"shards": index}, indent=1))
    return index


def is_shard_folder(name: str) -> bool:
    """Whether the dataset name `name` is a folder of shards (it holds shards.json)."""
    return "/" in name and (Path(name).expanduser() / INDEX).is_file()


def vocabulary(folder: Path, size: int) -> list[str]:
    """The `size` most frequent tags of the shards' metadata, ties broken by name, cached in
    $STUDYLIB_CACHE under the folder's fingerprint (one pass over every shard's .json members)."""
    cache = cache_dir() / f"vocabulary-{fingerprint(str(folder))}-{size}.json"
    if cache.is_file():
        return json.loads(cache.read_text())
    counts: Counter[str] = Counter()
    for shard in read_index(folder):
        with tarfile.open(folder / shard["name"]) as tar:
            for member in tar:
                if member.name.endswith(".json"):
                    try:
                        counts.update(str(t) for t in json.loads(tar.extractfile(member).read())["tags"])
                    except (ValueError, KeyError, TypeError, AttributeError):
                        pass  # training skips and counts such a sample (ShardStream)
    if not counts:
        raise DataError(f"{folder}: no tags in any sample's .json; allowed: shards whose .json hold \"tags\": [...]")
    tags = sorted(counts, key=lambda t: (-counts[t], t))[:size]
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_name(f"{cache.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(tags))
    os.replace(tmp, cache)
    return tags


def read_index(folder: Path) -> list[dict]:
    """The shards of `folder` and their sample counts, from its shards.json."""
    path = folder / INDEX
    try:
        shards = json.loads(path.read_text())["shards"]
        return [{"name": str(s["name"]), "samples": int(s["samples"])} for s in shards]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise DataError(f"{path}: not a shard index ({type(err).__name__}); allowed: the shards.json that "
                        "`studylib shards` writes, {\"shards\": [{\"name\": ..., \"samples\": ...}, ...]}") from None


def epoch_shards(index: list[dict], seed: int, epoch: int, rank: int, world: int) -> list[dict]:
    """This rank's shards in an epoch: the list shuffled by (seed, epoch), dealt round-robin to the ranks."""
    order = list(index)
    random.Random(seed * 1_000_003 + epoch).shuffle(order)
    return order[rank::world]


def _decode(sample: dict, size: int) -> tuple[torch.Tensor | None, str, list[str] | str]:
    """(image, key, tags), or (None, key, why) for a sample that cannot be used."""
    key = sample.get("__key__", "?")
    try:
        meta = json.loads(sample["json"])
        tags = [str(t) for t in meta["tags"]]
        with Image.open(io.BytesIO(sample["jpg"])) as opened:
            image = opened.convert("RGB")
    except KeyError as err:
        return None, key, f"no {err.args[0]}"
    except (OSError, ValueError, TypeError, SyntaxError) as err:  # PIL: truncated or not an image; json
        return None, key, f"{type(err).__name__}: {err}"[:200]
    if image.size != (size, size):
        image = image.resize((size, size), Image.BICUBIC)
    return torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1), key, tags


class _Samples(torch.utils.data.IterableDataset):
    """The decoded samples of some shards, each DataLoader worker reading its round-robin share of them."""

    def __init__(self, urls: list[str], size: int) -> None:
        self.urls, self.size = urls, size

    def __iter__(self) -> Iterator[tuple[torch.Tensor | None, str, list[str] | str]]:
        import webdataset as wds

        worker = torch.utils.data.get_worker_info()
        mine = self.urls[worker.id::worker.num_workers] if worker else self.urls
        if not mine:
            return
        reader = wds.WebDataset(mine, shardshuffle=False, nodesplitter=None, workersplitter=None, empty_check=False)
        for sample in reader:
            yield _decode(sample, self.size)


def _collate(samples: list) -> tuple[list[torch.Tensor], list[str], list[list[str]], list[tuple[str, str]]]:
    good = [s for s in samples if s[0] is not None]
    return [s[0] for s in good], [s[1] for s in good], [s[2] for s in good], [s[1:] for s in samples if s[0] is None]


class ShardStream:
    """One rank's batches of a shard folder, epoch by epoch: (uint8 images (B, 3, size, size), keys, tags)."""

    def __init__(self, folder: Path, batch_size: int, size: int, seed: int = 0, workers: int = 2,
                 rank: int | None = None, world: int | None = None, max_skipped: float = 0.01,
                 shards: int = 0) -> None:
        self.folder, self.batch_size, self.size, self.seed, self.workers = folder, batch_size, size, seed, workers
        self.rank = distributed.rank() if rank is None else rank  # default: this process's place in the job
        self.world = distributed.world_size() if world is None else world
        self.max_skipped = max_skipped
        self.skipped: list[tuple[str, str]] = []  # (key, why) of the last epoch's unusable samples
        self.repeats = 0  # samples repeated to fill the last epoch's steps
        self.index = read_index(folder)[: shards or None]  # shards > 0: the first ones only
        if len(self.index) < self.world:
            raise DataError(f"{folder}: {len(self.index)} shards for {self.world} ranks; allowed: at least one shard "
                            "a rank")

    def steps(self) -> int:
        """Steps of every rank in every epoch: the full batches of the floor(shards / ranks) smallest shards,
        which any rank's share of any shuffle holds at least."""
        smallest = sorted(s["samples"] for s in self.index)[: len(self.index) // self.world]
        return sum(smallest) // self.batch_size

    def epoch(self, epoch: int) -> Iterator[tuple[torch.Tensor, list[str], list[list[str]]]]:
        """This rank's `steps()` batches of `epoch`."""
        mine = epoch_shards(self.index, self.seed, epoch, self.rank, self.world)
        listed = sum(s["samples"] for s in mine)
        loader = torch.utils.data.DataLoader(_Samples([str(self.folder / s["name"]) for s in mine], self.size),
                                             batch_size=self.batch_size, num_workers=min(self.workers, len(mine)),
                                             collate_fn=_collate)
        parts, images, keys, tags, first = iter(loader), [], [], [], []
        self.skipped, self.repeats = [], 0
        size = self.batch_size
        for _ in range(self.steps()):
            while len(keys) < size:
                more = next(parts, None)
                if more is None and not self.skipped:
                    raise DataError(f"{self.folder}: rank {self.rank} read fewer samples in epoch {epoch} than "
                                    f"{INDEX} lists for its shards; allowed: shards that hold what the index says")
                if more is None:  # short by the skipped samples: repeat the epoch's first ones
                    image, key, tag = first[self.repeats % len(first)]
                    more, self.repeats = ([image], [key], [tag], []), self.repeats + 1
                self.skipped += more[3]
                if len(self.skipped) > self.max_skipped * listed:
                    raise DataError(f"{self.folder}: {len(self.skipped)} of rank {self.rank}'s {listed} samples in "
                                    f"epoch {epoch} cannot be used (first: {self.skipped[0][0]}, {self.skipped[0][1]});"
                                    f" allowed: at most {self.max_skipped:.1%} (max_skipped)")
                first += list(zip(more[0], more[1], more[2], strict=True))[: size - len(first)]
                images += more[0]
                keys, tags = keys + more[1], tags + more[2]
            yield torch.stack(images[:size]), keys[:size], tags[:size]
            images, keys, tags = images[size:], keys[size:], tags[size:]


class ShardBatches:
    """A shard folder as the engine's batches (like studylib.data.Batches): one epoch per iteration, each
    rank `batch_size / ranks` images a step, random-resized-cropped, flipped and normalised on `device`.
    The epoch's shard order is drawn from torch's global generator, which the engine seeds per epoch, so
    a resumed run redraws it. Targets: the tags' indices in `tags` (-1 padded; a tag outside it is
    dropped), or zeros without `tags` (MAE)."""

    def __init__(self, folder: Path, batch_size: int, device: torch.device, transform: ImageTransform,
                 tags: list[str] | None = None, workers: int = 1, shards: int = 0) -> None:
        world = distributed.world_size()
        self.stream = ShardStream(folder, batch_size // world, transform.image_size, workers=workers, shards=shards)
        self.device, self.transform = device, transform
        self.ids = {tag: i for i, tag in enumerate(tags or [])}

    def __len__(self) -> int:
        return self.stream.steps()

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        self.stream.seed = int(torch.randint(2**31 - 1, ()).item())
        for images, _keys, tags in self.stream.epoch(0):
            ids = [[self.ids[t] for t in sample if t in self.ids] for sample in tags]
            targets = torch.full((len(ids), max(1, *map(len, ids))), -1, dtype=torch.long)
            for row, found in enumerate(ids):
                targets[row, : len(found)] = torch.tensor(found, dtype=torch.long)
            yield self.transform(images.to(self.device)), targets.to(self.device)
