"""Simulated Instagram hashtags on top of a labelled image dataset (CIFAR-100 in the study).

The paper's WSP data is billions of public images with the hashtags their posters chose: a
vocabulary far larger than any class list, long-tailed, noisy, and often without the tag that
names what is in the picture. This module draws such tags, seeded, for every training image:

- the fine-class tag (`#apple`) with probability `p_true`; so about 1 - p_true of the images miss
  their true tag;
- a wrong class's tag with probability `p_wrong`;
- the superclass tag (`#fruit_and_vegetables`) with probability `p_superclass`;
- `synonyms_per_class` synonyms (`#applelove`, ...), each with probability `p_synonym` times the
  class's popularity; popularity falls along a Zipf law over a random order of the classes, so
  popular classes carry many more tags than rare ones;
- one co-occurring context tag of the superclass (`#fruit_and_vegetables_life`, ...) with
  probability `p_context`, Zipf-distributed among that superclass's `context_tags_per_superclass`;
- Poisson(`noise_tags_mean`) generic tags (`#instagood`, ...) from a Zipf-distributed vocabulary of
  `noise_vocab` tags, unrelated to the image.

Every image keeps at least one tag. WSP trains on multi-hot targets normalised to sum 1, with
softmax cross-entropy, as the paper does.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from studylib.images import ImageDataset
from studylib.schema import TagsConfig

SYNONYM_SUFFIXES = ("love", "daily", "gram", "pic", "photo", "lover", "life", "world")
CONTEXT_SUFFIXES = ("life", "vibes", "world", "time", "day", "mood", "scene", "moments")
GENERIC_TAGS = tuple(
    "instagood photooftheday love fashion beautiful happy cute tbt like4like followme picoftheday "
    "follow me selfie summer art instadaily friends repost nature girl fun style smile food".split()
)


@dataclass
class Hashtags:
    vocab: list[str]
    tags: torch.Tensor  # (N, max_tags) int64 tag indices, -1 padded
    # (N,) the class each image really shows (its tag index is the class index)
    labels: torch.Tensor

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def stats(self) -> dict[str, float]:
        valid = self.tags >= 0
        per_image = valid.sum(1).float()
        has_true = (self.tags == self.labels[:, None]).any(1)
        counts = (
            torch.bincount(self.tags[valid], minlength=self.vocab_size).sort(descending=True).values
        )
        head = max(1, self.vocab_size // 10)
        return {
            "images": len(self.labels),
            "vocab_size": self.vocab_size,
            "tags_per_image_mean": per_image.mean().item(),
            "tags_per_image_max": int(per_image.max().item()),
            "missing_true_tag": 1 - has_true.float().mean().item(),
            "top10pct_tag_share": (counts[:head].sum() / counts.sum()).item(),
            "tags_used_under_10_times": int((counts < 10).sum().item()),
        }

    def captions(self, index: torch.Tensor | None = None) -> list[str]:
        """Each image's tags as one text (vocabulary order)."""
        rows = self.tags if index is None else self.tags[index]
        return [" ".join(self.vocab[t] for t in row if t >= 0) for row in rows.tolist()]


def multi_hot(tags: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """(B, T) -1 padded tag indices -> (B, vocab_size) targets, each row summing to 1 (or all 0 for
    an image with no tag in the vocabulary, which then adds no loss)."""
    padded = torch.where(tags >= 0, tags, vocab_size)
    hot = torch.zeros(tags.shape[0], vocab_size + 1, device=tags.device).scatter_(1, padded, 1.0)[
        :, :vocab_size
    ]
    return hot / hot.sum(1, keepdim=True).clamp(min=1)


def _zipf(n: int, exponent: float) -> np.ndarray:
    p = 1.0 / np.arange(1, n + 1) ** exponent
    return p / p.sum()


def _tag_name(name: str) -> str:
    return "#" + name.lower().replace(" ", "_").replace("-", "_")


def simulate(dataset: ImageDataset, config: TagsConfig) -> Hashtags:
    """Draw hashtags for every training image of `dataset` (see the module docstring)."""
    rng = np.random.default_rng(config.seed)
    labels = dataset.train_labels.numpy()
    n, num_classes = len(labels), dataset.num_classes
    image = np.arange(n)
    vocab = [_tag_name(c) for c in dataset.classes]
    pairs: list[tuple[np.ndarray, np.ndarray]] = []

    def draw(p: float | np.ndarray) -> np.ndarray:
        return rng.random(n) < p

    keep = draw(config.p_true)
    pairs.append((image[keep], labels[keep]))
    wrong = draw(config.p_wrong)
    other = (labels + rng.integers(1, num_classes, n)) % num_classes
    pairs.append((image[wrong], other[wrong]))

    popularity = _zipf(num_classes, config.zipf_exponent)[rng.permutation(num_classes)]
    popularity = popularity / popularity.max()
    base = len(vocab)
    for k in range(config.synonyms_per_class):
        suffix = SYNONYM_SUFFIXES[k % len(SYNONYM_SUFFIXES)] + (
            str(k // len(SYNONYM_SUFFIXES)) if k >= 8 else ""
        )
        vocab += [_tag_name(c) + suffix for c in dataset.classes]
        hit = draw(config.p_synonym * popularity[labels])
        pairs.append((image[hit], base + k * num_classes + labels[hit]))
        base = len(vocab)

    if dataset.fine_to_coarse is not None and dataset.coarse_classes:
        coarse = dataset.fine_to_coarse.numpy()[labels]
        vocab += [_tag_name(c) for c in dataset.coarse_classes]
        hit = draw(config.p_superclass)
        pairs.append((image[hit], base + coarse[hit]))
        base = len(vocab)
        per = config.context_tags_per_superclass
        if per:
            vocab += _context_tags(dataset.coarse_classes, per)
            which = rng.choice(per, size=n, p=_zipf(per, config.zipf_exponent))
            hit = draw(config.p_context)
            pairs.append((image[hit], base + coarse[hit] * per + which[hit]))
            base = len(vocab)

    if config.noise_vocab:
        vocab += [
            "#" + GENERIC_TAGS[i] if i < len(GENERIC_TAGS) else f"#tag{i}"
            for i in range(config.noise_vocab)
        ]
        counts = rng.poisson(config.noise_tags_mean, n)
        holders = np.repeat(image, counts)
        popular = _zipf(config.noise_vocab, config.zipf_exponent)
        pairs.append((holders, base + rng.choice(config.noise_vocab, size=len(holders), p=popular)))

    tags = _tag_table(pairs, n, len(vocab), rng)
    return Hashtags(vocab, torch.from_numpy(tags), dataset.train_labels.clone())


def _context_tags(coarse_classes: list[str], per: int) -> list[str]:
    """`per` context tags for each superclass: '#vehicles_1_life', '#vehicles_1_vibes', ..."""
    return [
        f"{_tag_name(c)}_{CONTEXT_SUFFIXES[j % len(CONTEXT_SUFFIXES)]}{j if j >= 8 else ''}"
        for c in coarse_classes
        for j in range(per)
    ]


def _tag_table(
    pairs: list[tuple[np.ndarray, np.ndarray]], n: int, vocab_size: int, rng: np.random.Generator
) -> np.ndarray:
    """The (image, tag) pairs as one row of distinct tags per image, padded with -1; an image
    without any gets one tag drawn at random (every image keeps at least one)."""
    image = np.arange(n)
    images_of = np.concatenate([p[0] for p in pairs])
    tags_of = np.concatenate([p[1] for p in pairs])
    untagged = np.setdiff1d(image, images_of)
    images_of = np.concatenate([images_of, untagged])
    tags_of = np.concatenate([tags_of, rng.integers(0, vocab_size, len(untagged))])
    key = np.unique(images_of.astype(np.int64) * vocab_size + tags_of)
    images_of, tags_of = key // vocab_size, key % vocab_size
    per_image = np.bincount(images_of, minlength=n)
    start = np.concatenate([[0], np.cumsum(per_image)[:-1]])
    slot = np.arange(len(key)) - start[images_of]
    tags = np.full((n, per_image.max()), -1, dtype=np.int64)
    tags[images_of, slot] = tags_of
    return tags
