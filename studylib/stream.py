"""Reading a streamed folder back (studylib.shards: shard folders and image folders), one rank's
share of one epoch, in batches.

`ShardStream`'s order is a function of (seed, epoch, rank) and the shards' sample counts only,
never of the DataLoader's workers or their timing: a rank's shards are dealt to a fixed number of
lanes (`LANES`), the stream takes a batch from each lane in turn (`_lanes`), the workers each read
some lanes, and the main process puts their samples back in the stream's order (`_in_order`). So
any number of workers gives the same batches, and an epoch resumed at a step, on any worker count,
starts there without decoding what comes before it. Crops are drawn from (seed, epoch, sample key).
Every rank takes the same steps an epoch (the full batches of its floor(shards / ranks) smallest
shards); a sample that cannot be used is skipped, counted, and replaced by a usable one of its
batch, up to `max_skipped`. `ShardBatches` is such a stream as the engine's batches.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from studylib import distributed
from studylib.batches import ImageTransform
from studylib.decode import decode_batch, decode_sample, decoding_device
from studylib.errors import DataError
from studylib.shards import ImageFiles, TarShards, open_folder


def epoch_shards(index: list[dict], seed: int, epoch: int, rank: int, world: int) -> list[dict]:
    """This rank's shards in an epoch: the list shuffled by (seed, epoch), dealt round-robin to the
    ranks."""
    order = list(index)
    random.Random(seed * 1_000_003 + epoch).shuffle(order)
    return order[rank::world]


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
                    else decode_sample(sample, self.size, self.crop_min, self.seed, self.defer),
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
    """A streamed folder as the engine's batches (like studylib.batches.Batches): one epoch per
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
