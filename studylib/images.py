"""A dataset held in memory (`ImageDataset`: uint8 images, labels, class names) and the check that
one holds what training assumes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from studylib.batches import Batches, ImageTransform
from studylib.errors import DataError


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

    def train_batches(
        self,
        batch_size: int,
        device: torch.device,
        transform: ImageTransform,
        per_class: int = 0,
        seed: int = 0,
    ) -> Batches:
        """Shuffled, augmented batches of the training images (on `device`, in `.inputs` and
        `.targets`): all of them, or `per_class` of each class drawn by `seed`."""
        images, labels = self.train_images, self.train_labels
        if per_class:
            keep = self.per_class(per_class, seed)
            images, labels = images[keep], labels[keep]
        return Batches(images, labels, batch_size, device, transform)


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


def nhwc(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(array.transpose(0, 3, 1, 2)))
