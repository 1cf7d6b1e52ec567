"""The schema of what decides a run's result: data, simulated tags and each stage's recipe, every
default once, in dataclasses; each field's allowed values in its metadata (checked by
studylib.config when a preset is loaded), and a comment above it that `studylib config --explain`
prints. No torch, no timm.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from studylib.registry import CORRUPTIONS, DATASETS, TASKS

BUILTIN_DATASETS = tuple(DATASETS)  # those this package registers, for messages
INT_LIMIT = 2**31 - 1  # no int setting is larger: seeds, sizes and epochs stay far below it
MAX_EPOCHS = 10_000


def checked_field(
    allowed: str, ok: typing.Callable[[Any], bool], extra: dict | None = None, **kwargs: Any
) -> Any:
    return field(metadata={"allowed": allowed, "ok": ok, **(extra or {})}, **kwargs)


def positive(**kwargs: Any) -> Any:
    return checked_field("> 0", lambda v: v > 0, **kwargs)


def at_least_zero(**kwargs: Any) -> Any:
    return checked_field(">= 0", lambda v: v >= 0, **kwargs)


def probability(**kwargs: Any) -> Any:
    return checked_field("in [0, 1]", lambda v: 0 <= v <= 1, **kwargs)


def one_of(choices: typing.Iterable[str], **kwargs: Any) -> Any:
    choices = list(choices)
    return checked_field(f"one of {choices}", lambda v: v in choices, **kwargs)


def list_of(choices: typing.Collection[str], **kwargs: Any) -> Any:
    """A non-empty list of names in `choices`, read when checked (a registry may grow after
    import)."""
    return field(
        metadata={
            "allowed": lambda: f"a non-empty list of {list(choices)}",
            "ok": lambda v: len(v) > 0 and all(x in choices for x in v),
        },
        **kwargs,
    )


def is_dataset_name(name: str) -> bool:
    """A dataset known by name (registry.DATASETS), an existing image folder, or several of them
    joined by '+'."""
    if "+" in name:
        return all(is_dataset_name(part) for part in name.split("+"))
    return name in DATASETS or ("/" in name and Path(name).expanduser().is_dir())


# field metadata: changes speed, never the recipe, so no run hash or table. Like thread counts and
# kernels, such a setting may change the last bits of floats, which training grows
# (benchmarks/RESULTS.md)
SPEED_ONLY = {"identity": False}
# field metadata of a setting added after runs existed: in a run's identity only where it is not the
# default, so the runs made before it keep their hashes
WHEN_SET = {"identity": "when set"}


@dataclass(kw_only=True)
class DataConfig:
    # images for MAE and, with simulated hashtags, for WSP: the pool
    pretrain: str = checked_field(
        f"one of {BUILTIN_DATASETS} or the path of an existing image folder",
        is_dataset_name,
        default="cifar100",
    )
    pretrain_fraction: float = checked_field("in (0, 1]", lambda v: 0 < v <= 1, default=1.0)
    probe: list[str] = checked_field(
        f"a list of {BUILTIN_DATASETS} or paths of existing image folders",
        lambda v: len(v) > 0 and all(is_dataset_name(n) for n in v),
        default_factory=lambda: ["cifar10", "cifar100"],
    )
    # size of the generated `synthetic` dataset (3 KB an image, held in memory)
    synthetic_train: int = checked_field(
        "in [1, 1000000]", lambda v: 1 <= v <= 1_000_000, default=2000
    )
    synthetic_test: int = checked_field(
        "in [1, 1000000]", lambda v: 1 <= v <= 1_000_000, default=500
    )
    # the draw of every subset of images (the pool's share, the images per class of probes and
    # fine-tuning, robustness's test images), the same for every seed of studies.seeds: a seed then
    # varies training only (init, order, masks, crops), and a difference paired by seed does not
    # carry the data's draw too
    subset_seed: int = at_least_zero(default=0)
    # stream an image-folder pool (data.pretrain: root/train/<class>/<image>, any image sizes) from
    # disk, decoded and cropped in DataLoader workers, instead of holding it in memory; a folder of
    # shards always streams
    stream: bool = checked_field("true or false", lambda v: isinstance(v, bool), default=False)
    # a streamed pool (shards, or an image folder with data.stream): WSP's classes are its this many
    # most frequent tags (part of a WSP run's identity there, and only there)
    tag_vocabulary: int = positive(default=1000)


@dataclass(kw_only=True)
class TagsConfig:
    """The simulated hashtags (see studylib.weak_labels for what each knob does)."""

    seed: int = at_least_zero(default=0)
    synonyms_per_class: int = at_least_zero(default=2)
    context_tags_per_superclass: int = at_least_zero(default=3)
    noise_vocab: int = at_least_zero(default=300)
    p_true: float = probability(default=0.8)
    p_wrong: float = probability(default=0.05)
    p_superclass: float = probability(default=0.4)
    p_synonym: float = probability(default=0.25)
    p_context: float = probability(default=0.5)
    noise_tags_mean: float = at_least_zero(default=1.5)
    zipf_exponent: float = positive(default=1.1)


@dataclass(kw_only=True)
class TrainConfig:
    """What the engine reads. Each stage's section below sets its own recipe with `_recipe`."""

    epochs: int = checked_field(f"in [1, {MAX_EPOCHS}]", lambda v: 1 <= v <= MAX_EPOCHS, default=1)
    batch_size: int = positive(default=256)
    base_lr: float = positive(default=1e-3)  # lr = base_lr * batch_size / 256
    min_lr: float = at_least_zero(default=0.0)
    warmup_epochs: float = at_least_zero(default=0.0)
    weight_decay: float = at_least_zero(default=0.05)
    clip_grad: float = at_least_zero(default=1.0)  # 0: no clipping
    # torch.compile: +27% for B/16 on an H200
    compile: bool = field(default=False, metadata=SPEED_ONLY)
    # memory: recompute each transformer block's activations in the backward pass instead
    # of keeping them
    activation_checkpointing: bool = field(default=False, metadata=SPEED_ONLY)
    # in a job of several tasks: ddp (every rank holds the whole model and optimizer) or fsdp
    # (FSDP2: weights, gradients and AdamW moments sharded over the ranks, each block's weights
    # gathered while it computes)
    sharding: str = one_of(["ddp", "fsdp"], default="ddp", extra=SPEED_ONLY)
    # checkpoints as one file of whole tensors gathered on rank 0 (checkpoint.pth), or sharded: a
    # folder (checkpoint.dcp/) where every rank writes its own shards with
    # torch.distributed.checkpoint, resumable on any number of ranks
    checkpoint_format: str = one_of(["whole", "sharded"], default="whole", extra=SPEED_ONLY)
    # checkpoint.pth also every this many steps and/or minutes inside an epoch (0: at epoch ends
    # only), holding the data position and random state, so a resumed run goes on with exactly the
    # batches it would have seen
    checkpoint_every_steps: int = at_least_zero(default=0, extra=SPEED_ONLY)
    checkpoint_every_min: float = at_least_zero(default=0.0, extra=SPEED_ONLY)


_TRAIN_FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}


def _recipe(name: str, default: Any) -> Any:
    """TrainConfig's field `name`, with its check, and this section's default."""
    return field(default=default, metadata=_TRAIN_FIELDS[name].metadata)


@dataclass(kw_only=True)
class ImageTrainConfig(TrainConfig):
    """A stage that trains on augmented images (not on cached features)."""

    # random-resized-crop area
    crop_min: float = checked_field("in (0, 1]", lambda v: 0 < v <= 1, default=0.35)
    # memory: each optimizer step sums the gradients of this many equal slices of its batch_size
    # images (losses that are means over images: the same step as one batch, up to float rounding)
    accumulation_steps: int = positive(default=1, extra=SPEED_ONLY)


@dataclass(kw_only=True)
class MAEConfig(ImageTrainConfig):
    """MAE's recipe: AdamW(0.9, 0.95), wd 0.05, mask 75%, normalised-pixel loss."""

    epochs: int = _recipe("epochs", 10)
    # MAE's 1.5e-4 is for 800+ epochs; short schedules need more
    base_lr: float = _recipe("base_lr", 1.5e-3)
    warmup_epochs: float = _recipe("warmup_epochs", 1.0)
    clip_grad: float = _recipe("clip_grad", 0.0)
    crop_min: float = checked_field("in (0, 1]", lambda v: 0 < v <= 1, default=0.2)
    # MAE's own images: "pretrain" (the WSP pool) or a dataset (names joined by '+' are taken
    # together), and the share of them taken: of the pool, or of that whole dataset. The data-size
    # study varies these.
    data: str = checked_field(
        f"'pretrain', one of {BUILTIN_DATASETS}, the path of an existing image folder, or such "
        "names joined by '+'",
        lambda v: v == "pretrain" or is_dataset_name(v),
        default="pretrain",
    )
    data_fraction: float = checked_field("in (0, 1]", lambda v: 0 < v <= 1, default=1.0)
    # images drawn per epoch (0: one pass over MAE's images); the data-size study sets the pool's
    # size, so MAE takes the same steps on sets of every size
    epoch_images: int = at_least_zero(default=0)
    mask_ratio: float = checked_field("in (0, 1)", lambda v: 0 < v < 1, default=0.75)
    # light: at 32 px the decoder sees 4x the encoder's tokens
    decoder_dim: int = positive(default=64)
    decoder_depth: int = positive(default=2)
    decoder_heads: int = positive(default=4)
    norm_pix_loss: bool = True


@dataclass(kw_only=True)
class WSPConfig(ImageTrainConfig):
    epochs: int = _recipe("epochs", 3)
    warmup_epochs: float = _recipe("warmup_epochs", 0.5)
    weight_decay: float = _recipe("weight_decay", 0.1)
    # images drawn per epoch (0: one pass over the pool; an in-memory pool only): the arm at
    # MAE→WSP's FLOPs takes whole epochs of this many images to match them exactly
    epoch_images: int = at_least_zero(default=0, extra=WHEN_SET)
    # MAE→WSP's own base_lr (0: base_lr), chosen on pilot seeds as WSP's is: a run from an MAE
    # encoder trains and is named as with base_lr set to it
    from_mae_base_lr: float = at_least_zero(default=0.0, extra=WHEN_SET)
    # resampling of rare tags (SWAG, after Mahajan et al. 2018), by LVIS's repeat-factor rule: an
    # image counts max(1, sqrt(t / f)) times, f the share of the pool's images carrying its rarest
    # tag, t this threshold (0: off); applied as the image's weight in the loss, the expectation of
    # repeating it that often
    rare_tag_threshold: float = checked_field(
        "in [0, 1]", lambda v: 0 <= v <= 1, default=0.0, extra=WHEN_SET
    )


@dataclass(kw_only=True)
class ProbeConfig:
    """Linear probe: L2 logistic regression on cached features, solved to convergence
    (studylib.stages.probe)."""

    train_per_class: int = at_least_zero(default=0)  # 0: every training image
    # at most this many training images in all, the same number of every class (0: no limit): a
    # dataset of many classes is probed on fewer images of each
    train_images: int = at_least_zero(default=0, extra=WHEN_SET)
    # L2 strengths tried on a held-out part of the training images; the best one is refit on
    # all of them
    weight_decays: list[float] = checked_field(
        "a non-empty list of floats >= 0",
        lambda v: len(v) > 0 and min(v) >= 0,
        default_factory=lambda: [1e-5, 1e-4, 1e-3, 1e-2, 1e-1],
    )
    holdout_fraction: float = checked_field("in (0, 0.5]", lambda v: 0 < v <= 0.5, default=0.1)
    max_iter: int = positive(default=1000)  # L-BFGS iterations at most
    # stop when the gradient's largest entry falls below it: the objective is then within 1e-3 nats
    # of its optimum
    tolerance: float = positive(default=1e-4)


@dataclass(kw_only=True)
class FinetuneConfig(ImageTrainConfig):
    """After MAE's recipe: layer-wise lr decay, stochastic depth, label smoothing, wd 0.05."""

    epochs: int = _recipe("epochs", 10)
    batch_size: int = _recipe("batch_size", 128)
    warmup_epochs: float = _recipe("warmup_epochs", 1.0)
    clip_grad: float = _recipe("clip_grad", 0.0)
    # block lr x decay^(blocks above)
    layer_decay: float = checked_field("in (0, 1]", lambda v: 0 < v <= 1, default=0.75)
    # stochastic depth rate
    drop_path: float = checked_field("in [0, 1)", lambda v: 0 <= v < 1, default=0.1)
    train_per_class: int = at_least_zero(default=0)  # 0: every training image
    label_smoothing: float = checked_field("in [0, 1)", lambda v: 0 <= v < 1, default=0.1)
    # at least this many optimizer steps on every dataset: a small training set gets more epochs
    min_steps: int = at_least_zero(default=0)
    head_from_probe: bool = True  # the head starts as the converged linear probe (LP-FT)


@dataclass(kw_only=True)
class LowShotConfig:
    shots: list[int] = checked_field(
        "a non-empty list of ints > 0",
        lambda v: len(v) > 0 and min(v) > 0,
        default_factory=lambda: [1, 5, 10],
    )
    draws: int = positive(default=5)  # random draws of the k examples per class
    weight_decay: float = at_least_zero(default=1e-3)  # L2 penalty of the logistic regression


@dataclass(kw_only=True)
class ZeroShotConfig(TrainConfig):
    """Locked-image tuning (LiT): the image tower frozen, a text tower trained on hashtag
    captions."""

    epochs: int = _recipe("epochs", 10)
    warmup_epochs: float = _recipe("warmup_epochs", 1.0)
    text_dim: int = positive(default=128)
    text_depth: int = positive(default=2)
    text_heads: int = positive(default=4)
    max_tokens: int = positive(default=16)
    templates: list[str] = checked_field(
        "a non-empty list of texts, each with one {}",
        lambda v: len(v) > 0 and all(t.count("{}") == 1 for t in v),
        default_factory=lambda: ["{}", "#{}", "a photo of a {}.", "a picture of the {}."],
    )


@dataclass(kw_only=True)
class RobustnessConfig:
    # severities 1-5
    corruptions: list[str] = list_of(CORRUPTIONS, default_factory=lambda: list(CORRUPTIONS))
    # a class-balanced share of the test set, this many images (test_images // classes of
    # each); 0: all
    test_images: int = at_least_zero(default=0)


@dataclass(kw_only=True)
class TransferConfig:
    """The transfer suite (studylib transfer): every task on each pretrained encoder."""

    tasks: list[str] = list_of(TASKS, default_factory=lambda: list(TASKS))
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    lowshot: LowShotConfig = field(default_factory=LowShotConfig)
    zeroshot: ZeroShotConfig = field(default_factory=ZeroShotConfig)
    robustness: RobustnessConfig = field(default_factory=RobustnessConfig)
