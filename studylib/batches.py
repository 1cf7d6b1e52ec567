"""Batches of in-memory images on the training device: `ImageTransform` (random resized crop,
flip, normalisation, for a whole batch at once) and `Batches` (one shuffled pass per iteration).
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F

from studylib import distributed
from studylib.errors import ConfigError

MEAN = (0.485, 0.456, 0.406)  # ImageNet statistics, as timm and MAE use
STD = (0.229, 0.224, 0.225)


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
        self.start_step = 0  # where the next epoch starts (once): a resumed epoch's step

    def __len__(self) -> int:
        return (
            self.images // self.batch_size
            if self.drop_last
            else math.ceil(self.images / self.batch_size)
        )

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The epoch's order is drawn here, when iteration starts; the batches follow from
        `start_step` (a resumed epoch's, then 0 again)."""
        n = len(self.inputs)
        order = None
        if self.shuffle:
            passes = [
                torch.randperm(n, device=self.inputs.device)
                for _ in range(math.ceil(self.images / n))
            ]
            order = torch.cat(passes)[: self.images]
        start, self.start_step = self.start_step, 0
        return self._batches(order, start)

    def _batches(
        self, order: torch.Tensor | None, start: int
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for i in range(start, len(self)):
            sl = slice(i * self.batch_size, (i + 1) * self.batch_size)
            idx = order[sl] if order is not None else sl
            x, y = self.inputs[idx], self.targets[idx]
            share = len(x) // self.world
            part = (
                slice(self.rank * share, (self.rank + 1) * share) if self.world > 1 else slice(None)
            )
            yield (self.transform(x, part) if self.transform else x[part]), y[part]
