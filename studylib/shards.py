"""Web-scale data as WebDataset tar shards in img2dataset's layout, written and streamed.

A shard folder holds `00000.tar`, `00001.tar`, ... and `shards.json` (each shard's name and sample count).
Each sample is `<key>.jpg` (the image), `<key>.json` (`{"tags": [...], "label": int, "caption": str}`) and
`<key>.txt` (the caption), as img2dataset writes them. `write_shards` makes such a folder from an in-memory
dataset with its simulated hashtags (`studylib shards`), so the code that reads a web dataset on a cluster
runs here on CIFAR.

`ShardStream` reads a folder back, one rank's share of one epoch, in batches:
- the shard list is shuffled by (seed, epoch), dealt round-robin to the ranks, and each rank's shards to
  its DataLoader workers, which read and decode them (the `webdataset` library reads the tars);
- every sample is read at most once per epoch, and exactly once except the drop: every rank takes the same
  number of steps, the fewest full batches any rank's samples fill; the samples past them are dropped;
- the order is a function of (seed, epoch, rank) only, not of timing: the DataLoader takes its workers'
  batches in turn, and batches are re-cut to `batch_size` in the main process.
"""

from __future__ import annotations

import io
import json
import random
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from studylib import distributed
from studylib.data import ImageDataset
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


def _decode(sample: dict, size: int) -> tuple[torch.Tensor, str, list[str]]:
    image = Image.open(io.BytesIO(sample["jpg"])).convert("RGB")
    if image.size != (size, size):
        image = image.resize((size, size), Image.BICUBIC)
    meta = json.loads(sample["json"])
    return torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1), sample["__key__"], meta["tags"]


class _Samples(torch.utils.data.IterableDataset):
    """The decoded samples of some shards, each DataLoader worker reading its round-robin share of them."""

    def __init__(self, urls: list[str], size: int) -> None:
        self.urls, self.size = urls, size

    def __iter__(self) -> Iterator[tuple[torch.Tensor, str, list[str]]]:
        import webdataset as wds

        worker = torch.utils.data.get_worker_info()
        mine = self.urls[worker.id::worker.num_workers] if worker else self.urls
        if not mine:
            return
        reader = wds.WebDataset(mine, shardshuffle=False, nodesplitter=None, workersplitter=None, empty_check=False)
        for sample in reader:
            yield _decode(sample, self.size)


def _collate(samples: list) -> tuple[torch.Tensor, list[str], list[list[str]]]:
    images, keys, tags = zip(*samples, strict=True)
    return torch.stack(images), list(keys), list(tags)


class ShardStream:
    """One rank's batches of a shard folder, epoch by epoch: (uint8 images (B, 3, size, size), keys, tags)."""

    def __init__(self, folder: Path, batch_size: int, size: int, seed: int = 0, workers: int = 2,
                 rank: int | None = None, world: int | None = None) -> None:
        self.folder, self.batch_size, self.size, self.seed, self.workers = folder, batch_size, size, seed, workers
        self.rank = distributed.rank() if rank is None else rank  # default: this process's place in the job
        self.world = distributed.world_size() if world is None else world
        self.index = read_index(folder)
        if len(self.index) < self.world:
            raise DataError(f"{folder}: {len(self.index)} shards for {self.world} ranks; allowed: at least one shard "
                            "a rank")

    def steps(self, epoch: int) -> int:
        """Steps of every rank in `epoch`: the fewest full batches any rank's shards hold."""
        return min(sum(s["samples"] for s in epoch_shards(self.index, self.seed, epoch, r, self.world))
                   for r in range(self.world)) // self.batch_size

    def epoch(self, epoch: int) -> Iterator[tuple[torch.Tensor, list[str], list[list[str]]]]:
        """This rank's `steps(epoch)` batches of `epoch`."""
        urls = [str(self.folder / s["name"]) for s in epoch_shards(self.index, self.seed, epoch, self.rank, self.world)]
        loader = torch.utils.data.DataLoader(_Samples(urls, self.size), batch_size=self.batch_size,
                                             num_workers=min(self.workers, len(urls)), collate_fn=_collate)
        parts, images, keys, tags = iter(loader), [], [], []
        size = self.batch_size
        for _ in range(self.steps(epoch)):
            while len(keys) < size:
                more = next(parts, None)
                if more is None:
                    raise DataError(f"{self.folder}: rank {self.rank} read fewer samples in epoch {epoch} than "
                                    f"{INDEX} lists for its shards; allowed: shards that hold what the index says")
                images.append(more[0])
                keys, tags = keys + more[1], tags + more[2]
            batch = torch.cat(images)
            yield batch[:size], keys[:size], tags[:size]
            images, keys, tags = [batch[size:]], keys[size:], tags[size:]
