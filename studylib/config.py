"""One config path: experiments.yaml -> validated dataclasses -> one hash per run.

The dataclasses below hold every default, once: a preset of experiments.yaml changes some of them,
then `--set key=value` overrides change any. Every value is checked once, here; a bad one raises
ConfigError with the file, the key and the allowed values, and nothing has been written yet.
`studylib config --preset NAME` prints a preset resolved. This module imports neither torch nor
timm.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import math
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from studylib.errors import ConfigError, shown
from studylib.registry import ARMS, CORRUPTIONS, STUDIES, TASKS, VIT_SIZES

PACKAGE = Path(__file__).resolve().parent
# Run from a clone (experiments.yaml and pyproject.toml beside the package): its folders (data,
# runs, results, figures, output) and its presets. Installed from a wheel: those folders where the
# command runs, and the presets packaged with it (studylib/experiments.yaml, a link to the clone's
# file).
IN_CLONE = all((PACKAGE.parent / name).is_file() for name in ("experiments.yaml", "pyproject.toml"))
REPO_ROOT = PACKAGE.parent if IN_CLONE else Path.cwd()
DEFAULT_CONFIG_FILE = (REPO_ROOT if IN_CLONE else PACKAGE) / "experiments.yaml"
BUILTIN_DATASETS = ("cifar10", "cifar100", "synthetic")
INT_LIMIT = 2**31 - 1  # no int setting is larger: seeds, sizes and epochs stay far below it
MAX_EPOCHS = 10_000
PRESET_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")


def data_dir() -> Path:
    """Where datasets live (and where torchvision downloads them): $STUDYLIB_DATA, default
    <repo>/data."""
    return Path(os.environ.get("STUDYLIB_DATA", REPO_ROOT / "data"))


def folder_from(variable: str, default: Path) -> Path:
    value = os.environ.get(variable)
    if value is None:
        return default
    if not value.strip():
        raise ConfigError(
            f"{variable} is set but empty; allowed: a folder path, or unset for {default}"
        )
    return Path(value).expanduser()


PATH_VARIABLES = (
    "STUDYLIB_DATA",
    "STUDYLIB_RUNS",
    "STUDYLIB_RESULTS",
    "STUDYLIB_FIGURES",
    "STUDYLIB_CACHE",
    "STUDYLIB_OUTPUT",
)


def absolute_paths() -> None:
    """Each STUDYLIB_* path given relative to where the command was typed, made absolute once, at
    the entry (the command, launch.run): kernels and jobs that start elsewhere (papermill runs a
    notebook in notebooks/) then read and write the same folders."""
    for name in PATH_VARIABLES:
        value = os.environ.get(name)
        if value and value.strip() and not Path(value).expanduser().is_absolute():
            os.environ[name] = str(Path(value).expanduser().absolute())


def runs_dir() -> Path:
    """Where run folders live: $STUDYLIB_RUNS, default <repo>/runs."""
    return folder_from("STUDYLIB_RUNS", REPO_ROOT / "runs")


def cache_dir() -> Path:
    """Where derived data is kept to save time (decoded image folders, shard tag counts):
    $STUDYLIB_CACHE, default $XDG_CACHE_HOME/studylib (~/.cache/studylib). Deleting it costs time,
    never results."""
    home = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return folder_from("STUDYLIB_CACHE", home / "studylib")


def results_dir(key: str) -> Path:
    """Where study tables go: $STUDYLIB_RESULTS/<key>, default <repo>/results/<key>; the key is the
    preset, or the preset and the hash of its overrides (`results_key`)."""
    return folder_from("STUDYLIB_RESULTS", REPO_ROOT / "results") / key


def figures_dir(key: str) -> Path:
    """Where figures go: $STUDYLIB_FIGURES/<key>, default <repo>/figures/<key>."""
    return folder_from("STUDYLIB_FIGURES", REPO_ROOT / "figures") / key


def check_output_places(key: str) -> None:
    """Before anything trains: every folder a command may write (runs, results/<key>, the cache,
    figures/<key>) is, or can be made, a writable folder."""
    for variable, folder in (
        ("STUDYLIB_RUNS", runs_dir()),
        ("STUDYLIB_RESULTS", results_dir(key)),
        ("STUDYLIB_CACHE", cache_dir()),
        ("STUDYLIB_FIGURES", figures_dir(key)),
    ):
        check_folder(variable, folder)


# system folders that take writes as root but store nothing (os.access says yes to root there)
NOT_STORAGE = (Path("/proc"), Path("/sys"), Path("/dev"))


def check_folder(label: str, folder: Path, empty: bool = False) -> Path:
    """The one check of a place a command writes, before any work: `folder` is, or can be made, a
    writable folder on storage (with `empty`, a new or empty one); else a one-line ConfigError that
    names `label` (a variable or an option). Returns it absolute."""
    absolute = folder.expanduser().absolute()
    if any(absolute.resolve().is_relative_to(system) for system in NOT_STORAGE):
        raise ConfigError(
            f"{label}: {folder} is inside {', '.join(map(str, NOT_STORAGE))}, which store "
            "nothing; allowed: a folder on a disk"
        )
    existing = next(p for p in (absolute, *absolute.parents) if p.exists() or p.is_symlink())
    if not existing.is_dir():
        kind = "a dangling link" if existing.is_symlink() and not existing.exists() else "a file"
        raise ConfigError(
            f"{label}: {existing} is {kind}, where {folder} should be; allowed: a folder"
        )
    if empty and existing == absolute and any(absolute.iterdir()):
        raise ConfigError(
            f"{label}: {folder} is not an empty folder; allowed: a new or empty folder"
        )
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(
            f"{label}: {existing} is not writable, so {folder} cannot be written; allowed: a "
            "writable folder"
        )
    return absolute


def _check(
    allowed: str, ok: typing.Callable[[Any], bool], extra: dict | None = None, **kwargs: Any
) -> Any:
    return field(metadata={"allowed": allowed, "ok": ok, **(extra or {})}, **kwargs)


def _positive(**kwargs: Any) -> Any:
    return _check("> 0", lambda v: v > 0, **kwargs)


def _at_least_zero(**kwargs: Any) -> Any:
    return _check(">= 0", lambda v: v >= 0, **kwargs)


def _probability(**kwargs: Any) -> Any:
    return _check("in [0, 1]", lambda v: 0 <= v <= 1, **kwargs)


def _one_of(choices: typing.Iterable[str], **kwargs: Any) -> Any:
    choices = list(choices)
    return _check(f"one of {choices}", lambda v: v in choices, **kwargs)


def _list_of(choices: typing.Collection[str], **kwargs: Any) -> Any:
    """A non-empty list of names in `choices`, read when checked (a registry may grow after
    import)."""
    return field(
        metadata={
            "allowed": lambda: f"a non-empty list of {list(choices)}",
            "ok": lambda v: len(v) > 0 and all(x in choices for x in v),
        },
        **kwargs,
    )


def _dataset_name(name: str) -> bool:
    """A built-in dataset, an existing image folder, or several of them joined by '+'."""
    if "+" in name:
        return all(_dataset_name(part) for part in name.split("+"))
    return name in BUILTIN_DATASETS or ("/" in name and Path(name).expanduser().is_dir())


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
    pretrain: str = _check(
        f"one of {BUILTIN_DATASETS} or the path of an existing image folder",
        _dataset_name,
        default="cifar100",
    )
    pretrain_fraction: float = _check("in (0, 1]", lambda v: 0 < v <= 1, default=1.0)
    probe: list[str] = _check(
        f"a list of {BUILTIN_DATASETS} or paths of existing image folders",
        lambda v: len(v) > 0 and all(_dataset_name(n) for n in v),
        default_factory=lambda: ["cifar10", "cifar100"],
    )
    # size of the generated `synthetic` dataset (3 KB an image, held in memory)
    synthetic_train: int = _check("in [1, 1000000]", lambda v: 1 <= v <= 1_000_000, default=2000)
    synthetic_test: int = _check("in [1, 1000000]", lambda v: 1 <= v <= 1_000_000, default=500)
    # the draw of every subset of images (the pool's share, the images per class of probes and
    # fine-tuning, robustness's test images), the same for every seed of studies.seeds: a seed then
    # varies training only (init, order, masks, crops), and a difference paired by seed does not
    # carry the data's draw too
    subset_seed: int = _at_least_zero(default=0)
    # stream an image-folder pool (data.pretrain: root/train/<class>/<image>, any image sizes) from
    # disk, decoded and cropped in DataLoader workers, instead of holding it in memory; a folder of
    # shards always streams
    stream: bool = _check("true or false", lambda v: isinstance(v, bool), default=False)
    # a streamed pool (shards, or an image folder with data.stream): WSP's classes are its this many
    # most frequent tags (part of a WSP run's identity there, and only there)
    tag_vocabulary: int = _positive(default=1000)


@dataclass(kw_only=True)
class TagsConfig:
    """The simulated hashtags (see studylib.weak_labels for what each knob does)."""

    seed: int = _at_least_zero(default=0)
    synonyms_per_class: int = _at_least_zero(default=2)
    context_tags_per_superclass: int = _at_least_zero(default=3)
    noise_vocab: int = _at_least_zero(default=300)
    p_true: float = _probability(default=0.8)
    p_wrong: float = _probability(default=0.05)
    p_superclass: float = _probability(default=0.4)
    p_synonym: float = _probability(default=0.25)
    p_context: float = _probability(default=0.5)
    noise_tags_mean: float = _at_least_zero(default=1.5)
    zipf_exponent: float = _positive(default=1.1)


@dataclass(kw_only=True)
class TrainConfig:
    """What the engine reads. Each stage's section below sets its own recipe with `_recipe`."""

    epochs: int = _check(f"in [1, {MAX_EPOCHS}]", lambda v: 1 <= v <= MAX_EPOCHS, default=1)
    batch_size: int = _positive(default=256)
    base_lr: float = _positive(default=1e-3)  # lr = base_lr * batch_size / 256
    min_lr: float = _at_least_zero(default=0.0)
    warmup_epochs: float = _at_least_zero(default=0.0)
    weight_decay: float = _at_least_zero(default=0.05)
    clip_grad: float = _at_least_zero(default=1.0)  # 0: no clipping
    # torch.compile: +27% for B/16 on an H200
    compile: bool = field(default=False, metadata=SPEED_ONLY)
    # memory: recompute each transformer block's activations in the backward pass instead
    # of keeping them
    activation_checkpointing: bool = field(default=False, metadata=SPEED_ONLY)
    # in a job of several tasks: ddp (every rank holds the whole model and optimizer) or fsdp
    # (FSDP2: weights, gradients and AdamW moments sharded over the ranks, each block's weights
    # gathered while it computes)
    sharding: str = _one_of(["ddp", "fsdp"], default="ddp", extra=SPEED_ONLY)
    # checkpoints as one file of whole tensors gathered on rank 0 (checkpoint.pth), or sharded: a
    # folder (checkpoint.dcp/) where every rank writes its own shards with
    # torch.distributed.checkpoint, resumable on any number of ranks
    checkpoint_format: str = _one_of(["whole", "sharded"], default="whole", extra=SPEED_ONLY)
    # checkpoint.pth also every this many steps and/or minutes inside an epoch (0: at epoch ends
    # only), holding the data position and random state, so a resumed run goes on with exactly the
    # batches it would have seen
    checkpoint_every_steps: int = _at_least_zero(default=0, extra=SPEED_ONLY)
    checkpoint_every_min: float = _at_least_zero(default=0.0, extra=SPEED_ONLY)


_TRAIN_FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}


def _recipe(name: str, default: Any) -> Any:
    """TrainConfig's field `name`, with its check, and this section's default."""
    return field(default=default, metadata=_TRAIN_FIELDS[name].metadata)


@dataclass(kw_only=True)
class ImageTrainConfig(TrainConfig):
    """A stage that trains on augmented images (not on cached features)."""

    # random-resized-crop area
    crop_min: float = _check("in (0, 1]", lambda v: 0 < v <= 1, default=0.35)
    # memory: each optimizer step sums the gradients of this many equal slices of its batch_size
    # images (losses that are means over images: the same step as one batch, up to float rounding)
    accumulation_steps: int = _positive(default=1, extra=SPEED_ONLY)


@dataclass(kw_only=True)
class MAEConfig(ImageTrainConfig):
    """MAE's recipe: AdamW(0.9, 0.95), wd 0.05, mask 75%, normalised-pixel loss."""

    epochs: int = _recipe("epochs", 10)
    # MAE's 1.5e-4 is for 800+ epochs; short schedules need more
    base_lr: float = _recipe("base_lr", 1.5e-3)
    warmup_epochs: float = _recipe("warmup_epochs", 1.0)
    clip_grad: float = _recipe("clip_grad", 0.0)
    crop_min: float = _check("in (0, 1]", lambda v: 0 < v <= 1, default=0.2)
    # MAE's own images: "pretrain" (the WSP pool) or a dataset (names joined by '+' are taken
    # together), and the share of them taken: of the pool, or of that whole dataset. The data-size
    # study varies these.
    data: str = _check(
        f"'pretrain', one of {BUILTIN_DATASETS}, the path of an existing image folder, or such "
        "names joined by '+'",
        lambda v: v == "pretrain" or _dataset_name(v),
        default="pretrain",
    )
    data_fraction: float = _check("in (0, 1]", lambda v: 0 < v <= 1, default=1.0)
    # images drawn per epoch (0: one pass over MAE's images); the data-size study sets the pool's
    # size, so MAE takes the same steps on sets of every size
    epoch_images: int = _at_least_zero(default=0)
    mask_ratio: float = _check("in (0, 1)", lambda v: 0 < v < 1, default=0.75)
    # light: at 32 px the decoder sees 4x the encoder's tokens
    decoder_dim: int = _positive(default=64)
    decoder_depth: int = _positive(default=2)
    decoder_heads: int = _positive(default=4)
    norm_pix_loss: bool = True


@dataclass(kw_only=True)
class WSPConfig(ImageTrainConfig):
    epochs: int = _recipe("epochs", 3)
    warmup_epochs: float = _recipe("warmup_epochs", 0.5)
    weight_decay: float = _recipe("weight_decay", 0.1)
    # images drawn per epoch (0: one pass over the pool; an in-memory pool only): the arm at
    # MAE→WSP's FLOPs takes whole epochs of this many images to match them exactly
    epoch_images: int = _at_least_zero(default=0, extra=WHEN_SET)
    # MAE→WSP's own base_lr (0: base_lr), chosen on pilot seeds as WSP's is: a run from an MAE
    # encoder trains and is named as with base_lr set to it
    from_mae_base_lr: float = _at_least_zero(default=0.0, extra=WHEN_SET)
    # resampling of rare tags (SWAG, after Mahajan et al. 2018), by LVIS's repeat-factor rule: an
    # image counts max(1, sqrt(t / f)) times, f the share of the pool's images carrying its rarest
    # tag, t this threshold (0: off); applied as the image's weight in the loss, the expectation of
    # repeating it that often
    rare_tag_threshold: float = _check(
        "in [0, 1]", lambda v: 0 <= v <= 1, default=0.0, extra=WHEN_SET
    )


@dataclass(kw_only=True)
class ProbeConfig:
    """Linear probe: L2 logistic regression on cached features, solved to convergence
    (studylib.stages.probe)."""

    train_per_class: int = _at_least_zero(default=0)  # 0: every training image
    # at most this many training images in all, the same number of every class (0: no limit): a
    # dataset of many classes is probed on fewer images of each
    train_images: int = _at_least_zero(default=0, extra=WHEN_SET)
    # L2 strengths tried on a held-out part of the training images; the best one is refit on
    # all of them
    weight_decays: list[float] = _check(
        "a non-empty list of floats >= 0",
        lambda v: len(v) > 0 and min(v) >= 0,
        default_factory=lambda: [1e-5, 1e-4, 1e-3, 1e-2, 1e-1],
    )
    holdout_fraction: float = _check("in (0, 0.5]", lambda v: 0 < v <= 0.5, default=0.1)
    max_iter: int = _positive(default=1000)  # L-BFGS iterations at most
    # stop when the gradient's largest entry falls below it: the objective is then within 1e-3 nats
    # of its optimum
    tolerance: float = _positive(default=1e-4)


@dataclass(kw_only=True)
class FinetuneConfig(ImageTrainConfig):
    """After MAE's recipe: layer-wise lr decay, stochastic depth, label smoothing, wd 0.05."""

    epochs: int = _recipe("epochs", 10)
    batch_size: int = _recipe("batch_size", 128)
    warmup_epochs: float = _recipe("warmup_epochs", 1.0)
    clip_grad: float = _recipe("clip_grad", 0.0)
    # block lr x decay^(blocks above)
    layer_decay: float = _check("in (0, 1]", lambda v: 0 < v <= 1, default=0.75)
    # stochastic depth rate
    drop_path: float = _check("in [0, 1)", lambda v: 0 <= v < 1, default=0.1)
    train_per_class: int = _at_least_zero(default=0)  # 0: every training image
    label_smoothing: float = _check("in [0, 1)", lambda v: 0 <= v < 1, default=0.1)
    # at least this many optimizer steps on every dataset: a small training set gets more epochs
    min_steps: int = _at_least_zero(default=0)
    head_from_probe: bool = True  # the head starts as the converged linear probe (LP-FT)


@dataclass(kw_only=True)
class LowShotConfig:
    shots: list[int] = _check(
        "a non-empty list of ints > 0",
        lambda v: len(v) > 0 and min(v) > 0,
        default_factory=lambda: [1, 5, 10],
    )
    draws: int = _positive(default=5)  # random draws of the k examples per class
    weight_decay: float = _at_least_zero(default=1e-3)  # L2 penalty of the logistic regression


@dataclass(kw_only=True)
class ZeroShotConfig(TrainConfig):
    """Locked-image tuning (LiT): the image tower frozen, a text tower trained on hashtag
    captions."""

    epochs: int = _recipe("epochs", 10)
    warmup_epochs: float = _recipe("warmup_epochs", 1.0)
    text_dim: int = _positive(default=128)
    text_depth: int = _positive(default=2)
    text_heads: int = _positive(default=4)
    max_tokens: int = _positive(default=16)
    templates: list[str] = _check(
        "a non-empty list of texts, each with one {}",
        lambda v: len(v) > 0 and all(t.count("{}") == 1 for t in v),
        default_factory=lambda: ["{}", "#{}", "a photo of a {}.", "a picture of the {}."],
    )


@dataclass(kw_only=True)
class RobustnessConfig:
    # severities 1-5
    corruptions: list[str] = _list_of(CORRUPTIONS, default_factory=lambda: list(CORRUPTIONS))
    # a class-balanced share of the test set, this many images (test_images // classes of
    # each); 0: all
    test_images: int = _at_least_zero(default=0)


@dataclass(kw_only=True)
class TransferConfig:
    """The transfer suite (studylib transfer): every task on each pretrained encoder."""

    tasks: list[str] = _list_of(TASKS, default_factory=lambda: list(TASKS))
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    lowshot: LowShotConfig = field(default_factory=LowShotConfig)
    zeroshot: ZeroShotConfig = field(default_factory=ZeroShotConfig)
    robustness: RobustnessConfig = field(default_factory=RobustnessConfig)


def parse_mae_data(text: str) -> tuple[str, float]:
    """A point of studies.mae_data: 'pretrain:0.2' -> ('pretrain', 0.2); ValueError if it is not
    one."""
    name, sep, fraction = text.rpartition(":")
    if not sep:
        raise ValueError(f"{text!r} has no ':FRACTION'")
    return name, float(fraction)


def _mae_data_point(text: str) -> bool:
    try:
        name, fraction = parse_mae_data(text)
    except ValueError:
        return False
    return (name == "pretrain" or bool(_dataset_name(name))) and 0 < fraction <= 1


@dataclass(kw_only=True)
class StudiesConfig:
    """What the scaling studies sweep (studylib.study); each point is a set of ordinary runs, once
    per seed."""

    seeds: list[int] = _check(
        "a non-empty list of ints >= 0",
        lambda v: len(v) > 0 and min(v) >= 0,
        default_factory=lambda: [0],
    )
    model_sizes: list[str] = _list_of(VIT_SIZES, default_factory=lambda: ["nano", "micro"])
    # MAE's images as DATASET:FRACTION: that share of the pool ('pretrain') or of a
    # whole dataset (names joined by '+' are taken together); MAE takes the same steps
    # at every point (mae.epoch_images)
    mae_data: list[str] = _check(
        "a non-empty list of 'pretrain:F' or 'DATASET:F', F in (0, 1]",
        lambda v: len(v) > 0 and all(_mae_data_point(p) for p in v),
        default_factory=lambda: ["pretrain:0.2", "pretrain:1", "cifar10:1"],
    )
    wsp_epochs: list[int] = _check(
        f"a non-empty list of ints in [1, {MAX_EPOCHS}]",
        lambda v: len(v) > 0 and 1 <= min(v) and max(v) <= MAX_EPOCHS,
        default_factory=lambda: [1, 2, 4],
    )
    arms: list[str] = _list_of(ARMS, default_factory=lambda: list(ARMS))  # arms the studies compare
    # seeds that chose a setting (pilot seeds: `studylib study --pilot`, `studylib plan`); the
    # verdicts come from `seeds`, fresh confirmation seeds that chose nothing
    pilot_seeds: list[int] = _check(
        "a list of ints >= 0", lambda v: not v or min(v) >= 0, default_factory=list
    )
    # 'STUDY:N': that study runs the first N of `seeds` only, where every seed costs too much (its
    # rows say n)
    seed_counts: list[str] = field(
        default_factory=list,
        metadata={
            "allowed": lambda: f"a list of 'STUDY:N', STUDY one of {list(STUDIES)}, N >= 1",
            "ok": lambda v: all(_seed_count(x) for x in v),
        },
    )

    def seeds_of(self, study: str, pilot: bool = False) -> list[int]:
        """The seeds `study` runs: every pilot seed, or the first N confirmation seeds of
        seed_counts."""
        if pilot:
            return list(self.pilot_seeds)
        counts = dict(text.split(":") for text in self.seed_counts)
        return self.seeds[: int(counts.get(study, len(self.seeds)))]


def _seed_count(text: str) -> bool:
    study, sep, count = text.partition(":")
    return bool(sep) and study in STUDIES and count.isdigit() and int(count) >= 1


@dataclass(kw_only=True)
class ClaimPlan:
    """One claim's analysis, declared before its confirmation runs (studylib.findings): the
    comparison that decides it, the others reported beside it (fnmatch patterns of comparison keys),
    Holm-corrected together, and the 95% half-widths that `studylib plan` sizes the seeds for (0: no
    target)."""

    primary: str = ""
    # a claim "at every size": more primary keys; the claim holds only if each primary holds (an
    # intersection-union test) and is contradicted if any is
    every: list[str] = field(default_factory=list)
    # why the claim is descriptive, declared before its confirmation: its comparisons are shown
    # with their intervals and no verdict word ("": the claim is tested)
    descriptive: str = ""
    secondary: list[str] = field(default_factory=lambda: ["*"])
    # points of top-1: 0 (no target) up to 100, the whole scale
    half_width: float = _check("in [0, 100]", lambda v: 0 <= v <= 100, default=0.0)
    secondary_half_width: float = _check("in [0, 100]", lambda v: 0 <= v <= 100, default=0.0)


@dataclass(kw_only=True)
class AnalysisConfig:
    """The analysis plan of the paper's four claims (keys: `studylib findings` lists every
    comparison's)."""

    alpha: float = _check("in (0, 0.5]", lambda v: 0 < v <= 0.5, default=0.05)
    a: ClaimPlan = field(default_factory=lambda: ClaimPlan(primary="probe/cifar100"))
    b: ClaimPlan = field(default_factory=lambda: ClaimPlan(primary="epochs2/cifar100"))
    c: ClaimPlan = field(default_factory=lambda: ClaimPlan(primary="micro/cifar100"))
    d: ClaimPlan = field(default_factory=lambda: ClaimPlan(primary="mae/cifar10"))


@dataclass(kw_only=True)
class LaunchConfig:
    """Where jobs run (studylib.launch); none of it changes a run's result, its hash or its
    table."""

    # auto: slurm where sbatch exists
    executor: str = _one_of(["auto", "local", "debug", "slurm"], default="auto")
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    nodes: int = _positive(default=1)
    tasks_per_node: int = _positive(default=1)  # one per GPU for DDP
    gpus_per_node: int = _at_least_zero(default=0)
    cpus_per_task: int = _positive(default=2)
    mem_gb: int = _positive(default=16)
    timeout_min: int = _positive(default=120)
    max_requeues: int = _at_least_zero(default=3)  # after preemption or time-out
    array_parallelism: int = _positive(default=16)
    # a study's seeds as this many concurrent processes of one job, its CPU threads shared out
    # among them (one rank only): small models keep 2 cores busier as 2 x 1 thread than as 1 x 2
    seed_workers: int = _positive(default=1)


# field metadata: set by load_experiment, never by a config file or --set
INTERNAL = {"internal": True}


@dataclass(kw_only=True)
class Experiment:
    preset: str = field(default="", metadata=INTERNAL)
    # what differs from the preset
    overrides: dict[str, Any] = field(default_factory=dict, metadata=INTERNAL)
    model: str = _one_of(VIT_SIZES, default="micro")
    seed: int = _at_least_zero(default=0)  # of single runs; studies run every seed of studies.seeds
    device: str = field(
        default="auto", metadata={**_one_of(["auto", "cpu", "cuda"]).metadata, **SPEED_ONLY}
    )
    # auto: bf16 where native: GPU, AMX, avx512_bf16
    precision: str = _one_of(["auto", "bf16", "fp32"], default="auto")
    data: DataConfig = field(default_factory=DataConfig)
    tags: TagsConfig = field(default_factory=TagsConfig)
    mae: MAEConfig = field(default_factory=MAEConfig)
    wsp: WSPConfig = field(default_factory=WSPConfig)
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    transfer: TransferConfig = field(default_factory=TransferConfig)
    studies: StudiesConfig = field(default_factory=StudiesConfig)
    # decides findings, not tables: not part of any run or results key (findings.md
    # records its hash)
    analysis: AnalysisConfig = field(default_factory=AnalysisConfig, metadata={"identity": False})
    launch: LaunchConfig = field(default_factory=LaunchConfig, metadata=SPEED_ONLY)
    # `studylib study --pilot`: studies.pilot_seeds
    pilot: bool = field(default=False, metadata=INTERNAL)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def section(self, name: str) -> Any:
        """A section (dotted for nested ones: 'transfer.finetune') or a top-level value."""
        value: Any = self
        for part in name.split("."):
            value = getattr(value, part)
        return value

    @property
    def results_key(self) -> str:
        """Where this experiment's study tables and figures go: the preset's own folder, or, with
        overrides that change results, `<preset>+<hash of the overrides>`, so neither replaces the
        other; pilot seeds' tables in its `pilot/` folder."""
        key = self.preset if not self.overrides else f"{self.preset}+{config_hash(self.overrides)}"
        return f"{key}/pilot" if self.pilot else key


def result_settings(value: Any) -> Any:
    """A config section as it decides results: its values without the speed-only ones."""
    if not dataclasses.is_dataclass(value):
        return value
    return {
        f.name: result_settings(getattr(value, f.name))
        for f in dataclasses.fields(value)
        if f.metadata.get("identity", True)
        and not f.metadata.get("internal")
        and not (f.metadata.get("identity") == "when set" and getattr(value, f.name) == f.default)
    }


def config_hash(obj: Any) -> str:
    """Eight hex digits that change whenever anything in `obj` (a JSON-able value) changes."""
    text = json.dumps(obj, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:8]


MAX_CONFIG_BYTES = 1 << 20  # a config file, read no further (/dev/zero is endless)
MAX_CONFIG_DEPTH = 32  # nesting of mappings and lists (a config needs 4)


class _StrictLoader(yaml.SafeLoader):
    """YAML without its traps for a config: a key given twice, an alias (*name), a key that is a
    list or mapping, or nesting past MAX_CONFIG_DEPTH is an error, not the last one silently
    winning, a billion-fold expansion, a TypeError or a RecursionError."""

    depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        mark = self.peek_event().start_mark
        if self.check_event(yaml.AliasEvent):
            raise yaml.YAMLError(
                f"line {mark.line + 1}: aliases (*name) are not allowed in a config"
            )
        if self.depth >= MAX_CONFIG_DEPTH:
            raise yaml.YAMLError(
                f"line {mark.line + 1}: nested more than {MAX_CONFIG_DEPTH} levels deep"
            )
        self.depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen = set()
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                raise yaml.YAMLError(
                    f"line {key_node.start_mark.line + 1}: a key that is a list or a mapping; "
                    "allowed: a name"
                )
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.YAMLError(
                    f"line {key_node.start_mark.line + 1}: key {shown(key)} is given twice"
                )
            seen.add(key)
        return super().construct_mapping(node, deep)


def _yaml(text: str) -> Any:
    return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 (a SafeLoader)


def parse_override(text: str) -> tuple[str, Any]:
    """'mae.epochs=3' -> ('mae.epochs', 3); the value is read as YAML."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {shown(text)}: expected KEY=VALUE, for example mae.epochs=3")
    try:
        return key.strip(), _yaml(value) if value.strip() else None
    except yaml.YAMLError as err:
        raise ConfigError(
            f"override {key.strip()[:80]}: value {shown(value)} is not valid YAML "
            f"({shown(' '.join(str(err).split()), 120)})"
        ) from None


def load_experiment(
    preset: str, overrides: list[str] | tuple[str, ...] = (), config_file: str | Path | None = None
) -> Experiment:
    """The validated Experiment of `preset` in `config_file`, with `overrides` ('key=value') on
    top."""
    path = Path(config_file) if config_file is not None else DEFAULT_CONFIG_FILE
    presets = _read_presets(path, preset)
    values: dict[str, Any] = {}
    origins: dict[str, str] = {}
    _merge(values, origins, presets[preset] or {}, f"{path}: presets.{preset}")
    own = _build(Experiment, values, origins, prefix="")
    set_by_override = set()
    for text in overrides:
        key, value = parse_override(text)
        set_by_override.add(key)
        nested: Any = value
        for part in reversed(key.split(".")):
            nested = {part: nested}
        _merge(values, origins, nested, "override")
    exp = _build(Experiment, values, origins, prefix="")
    if "seed" in set_by_override:
        _run_the_seed(exp, seeds_set="studies.seeds" in set_by_override)
    _check_together(exp, origins)
    exp.preset = preset
    mine, theirs = flatten(result_settings(exp)), flatten(result_settings(own))
    exp.overrides = {k: v for k, v in mine.items() if theirs.get(k) != v}
    return exp


def _run_the_seed(exp: Experiment, seeds_set: bool) -> None:
    """A seed asked for on the command line is the seed the studies run."""
    if not seeds_set:
        exp.studies.seeds = [exp.seed]
        exp.studies.pilot_seeds = [s for s in exp.studies.pilot_seeds if s != exp.seed]
    elif exp.seed not in exp.studies.seeds:
        raise ConfigError(
            f"override seed: {exp.seed} is not among studies.seeds {exp.studies.seeds}, "
            "which the studies run; allowed: one of them, or leave seed out"
        )


def _read_presets(path: Path, preset: str) -> dict[str, Any]:
    """The `presets` mapping of the config file at `path`, which must hold `preset`."""
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_CONFIG_BYTES + 1)
        if len(raw) > MAX_CONFIG_BYTES:
            raise ConfigError(
                f"{path}: larger than {MAX_CONFIG_BYTES >> 20} MiB; allowed: a YAML config file "
                "under 1 MiB"
            )
        document = _yaml(raw.decode("utf-8"))
    except OSError as err:
        raise ConfigError(f"{path}: cannot read the config file ({err.strerror})") from None
    except UnicodeDecodeError as err:
        raise ConfigError(
            f"{path}: not UTF-8 text (byte {err.start}); allowed: a UTF-8 YAML file"
        ) from None
    except yaml.YAMLError as err:
        raise ConfigError(
            f"{path}: not valid YAML: {shown(' '.join(str(err).split()), 200)}"
        ) from None
    if not PRESET_NAME.fullmatch(preset):
        raise ConfigError(
            f"preset {shown(preset)}: not a preset name; allowed: letters, digits, '_' and '-' "
            "(it names folders under STUDYLIB_RUNS and STUDYLIB_RESULTS)"
        )
    if not isinstance(document, dict) or not isinstance(document.get("presets"), dict):
        raise ConfigError(f"{path}: expected a mapping with a 'presets' key")
    presets = document["presets"]
    if preset not in presets:
        raise ConfigError(
            f"{path}: unknown preset {preset!r}{_suggest(preset, presets)}; "
            f"allowed: {sorted(presets)}"
        )
    bad = [name for name in presets if not PRESET_NAME.fullmatch(str(name))]
    if bad:
        raise ConfigError(
            f"{path}: preset name {shown(bad[0])} is not allowed; "
            "must be letters, digits, '_' and '-'"
        )
    unknown_top = set(document) - {"presets"}
    if unknown_top:
        raise ConfigError(
            f"{path}: unknown top-level key {sorted(unknown_top)[0]!r}; allowed: ['presets'] "
            "(defaults live in studylib/config.py)"
        )
    return presets


def flatten(settings: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested settings as dotted keys: {'wsp': {'epochs': 2}} -> {'wsp.epochs': 2}."""
    flat = {}
    for key, value in settings.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = value
    return flat


def _check_together(exp: Experiment, origins: dict[str, str]) -> None:
    """Checks of several values at once, which single fields cannot make."""
    _check_shapes(exp, origins)
    _check_sources_and_seeds(exp, origins)
    _check_distinct(exp, origins)


def _check_shapes(exp: Experiment, origins: dict[str, str]) -> None:
    """Heads that split their width, slices that split a batch, a mask that hides some patches."""
    zeroshot = exp.transfer.zeroshot
    for key, dim, heads in (
        ("mae.decoder_dim", exp.mae.decoder_dim, exp.mae.decoder_heads),
        ("transfer.zeroshot.text_dim", zeroshot.text_dim, zeroshot.text_heads),
    ):
        heads_key = key.rsplit("_", 1)[0] + "_heads"
        if dim % heads and origins.get(heads_key) == "override" and origins.get(key) != "override":
            raise ConfigError(
                f"{_where(origins, heads_key)}: {heads} heads do not split {key} = {dim}; "
                f"allowed: divisors of {dim}"
            )
        if dim % heads:
            raise ConfigError(
                f"{_where(origins, key)}: {dim} does not split into {heads} heads; "
                f"allowed: multiples of {heads_key} = {heads}"
            )
    for key, section in (
        ("mae", exp.mae),
        ("wsp", exp.wsp),
        ("transfer.finetune", exp.transfer.finetune),
    ):
        per_step = section.batch_size // exp.launch.nodes // exp.launch.tasks_per_node
        if per_step % section.accumulation_steps:
            raise ConfigError(
                f"{_where(origins, key + '.accumulation_steps')}: {section.accumulation_steps} "
                f"slices do not split {key}.batch_size {section.batch_size} "
                f"({per_step} images per task); allowed: divisors of {per_step}"
            )
    for size in dict.fromkeys([exp.model, *exp.studies.model_sizes]):
        spec = VIT_SIZES[size]
        patches = (spec["img_size"] // spec["patch_size"]) ** 2
        if not 0 < round(patches * (1 - exp.mae.mask_ratio)) < patches:
            raise ConfigError(
                f"{_where(origins, 'mae.mask_ratio')}: {exp.mae.mask_ratio} hides no patch or "
                f"every patch of {size}'s {patches}; "
                f"allowed: in ({0.5 / patches:.3f}, {1 - 0.5 / patches:.3f})"
            )


def _check_sources_and_seeds(exp: Experiment, origins: dict[str, str]) -> None:
    streamed = exp.data.stream or (Path(exp.data.pretrain).expanduser() / "shards.json").is_file()
    if streamed and exp.mae.epoch_images and exp.mae.data == "pretrain":
        raise ConfigError(
            f"{_where(origins, 'mae.epoch_images')}: {exp.mae.epoch_images} on a streamed pool, "
            "which reads each image once an epoch; allowed: 0 (set mae.epochs instead)"
        )
    if streamed and exp.wsp.epoch_images:
        raise ConfigError(
            f"{_where(origins, 'wsp.epoch_images')}: {exp.wsp.epoch_images} on a streamed pool, "
            "which reads each image once an epoch; allowed: 0 (set wsp.epochs instead)"
        )
    shared = sorted(set(exp.studies.pilot_seeds) & set(exp.studies.seeds))
    if shared:
        raise ConfigError(
            f"{_where(origins, 'studies.pilot_seeds')}: seed {shared[0]} is also a confirmation "
            "seed (studies.seeds); allowed: pilot seeds apart from the seeds that decide the "
            "verdicts"
        )
    if exp.data.stream and (exp.data.pretrain in BUILTIN_DATASETS or "+" in exp.data.pretrain):
        raise ConfigError(
            f"{_where(origins, 'data.stream')}: data.pretrain {exp.data.pretrain} cannot be "
            "streamed; allowed: data.stream true with data.pretrain an image folder path, "
            "else false"
        )


def _check_distinct(exp: Experiment, origins: dict[str, str]) -> None:
    for key, values in (
        ("studies.seeds", exp.studies.seeds),
        ("studies.pilot_seeds", exp.studies.pilot_seeds),
        ("studies.model_sizes", exp.studies.model_sizes),
        ("studies.mae_data", exp.studies.mae_data),
        ("studies.wsp_epochs", exp.studies.wsp_epochs),
        ("studies.arms", exp.studies.arms),
        ("transfer.tasks", exp.transfer.tasks),
        ("probe.weight_decays", exp.probe.weight_decays),
        ("transfer.lowshot.shots", exp.transfer.lowshot.shots),
    ):
        if len(set(values)) < len(values):
            raise ConfigError(
                f"{_where(origins, key)}: {values} repeats a value; allowed: distinct values"
            )


def _merge(values: dict, origins: dict, new: Any, origin: str, prefix: str = "") -> None:
    if not isinstance(new, dict):
        raise ConfigError(
            f"{origin}{'.' + prefix.rstrip('.') if prefix else ''}: expected a mapping, "
            f"got {shown(new)}"
        )
    for key, value in new.items():
        key = str(key)
        if isinstance(value, dict):
            values.setdefault(key, {})
            if not isinstance(values[key], dict):
                values[key] = {}
            _merge(values[key], origins, value, origin, f"{prefix}{key}.")
        else:
            values[key] = value
            origins[prefix + key] = origin


def _where(origins: dict[str, str], key: str) -> str:
    """Where `key` was set: a file's preset or an override; for a section, where a key inside it was
    set (that key named in full when it came from an override)."""
    inside = [k for k in origins if k.startswith(key + ".")]
    if key not in origins and inside:
        key = next((k for k in inside if origins[k] == "override"), key)
    origin = origins.get(key) or (origins[inside[0]] if inside else "config")
    if origin == "override":
        return f"override {key}"
    return f"{origin}.{key}"


def _suggest(name: str, choices: typing.Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _build(cls: type, values: dict[str, Any], origins: dict[str, str], prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("internal")}
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        full = prefix + key
        if key not in known:
            raise ConfigError(
                f"{_where(origins, full)}: unknown key {shown(key)}{_suggest(key, known)}; "
                f"allowed: {sorted(known)}"
            )
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            if not isinstance(value, dict):
                raise ConfigError(
                    f"{_where(origins, full)}: expected a mapping of "
                    f"{sorted(f.name for f in dataclasses.fields(hint))}, got {shown(value)}"
                )
            kwargs[key] = _build(hint, value, origins, full + ".")
            continue
        value = _coerce(value, hint, _where(origins, full))
        meta = known[key].metadata
        if "ok" in meta and not meta["ok"](value):
            allowed = meta["allowed"]() if callable(meta["allowed"]) else meta["allowed"]
            raise ConfigError(
                f"{_where(origins, full)}: {shown(value)} is not allowed; must be {allowed}"
            )
        kwargs[key] = value
    return cls(**kwargs)


def _coerce(value: Any, hint: Any, where: str) -> Any:
    """Check `value` against a field's type; ints are accepted where floats are asked for."""
    if hint is float and not isinstance(value, bool) and isinstance(value, int | float | str):
        try:  # YAML reads 1e-3 (no dot) as text
            number = float(value)
        except ValueError:
            raise ConfigError(f"{where}: expected float, got {shown(value)}") from None
        if not math.isfinite(number):
            raise ConfigError(f"{where}: {shown(value)} is not allowed; must be a finite number")
        return number
    if hint in (int, float, str, bool):
        if not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
            raise ConfigError(f"{where}: expected {hint.__name__}, got {shown(value)}")
        if hint is int and not -INT_LIMIT <= value <= INT_LIMIT:
            raise ConfigError(
                f"{where}: {shown(value)} is not allowed; must be at most {INT_LIMIT} in size"
            )
        return value
    origin = typing.get_origin(hint)
    if origin is list:
        (item,) = typing.get_args(hint)
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list of {item.__name__}, got {shown(value)}")
        return [_coerce(v, item, where) for v in value]
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(hint):
            if option is type(None):
                if value is None:
                    return None
                continue
            try:
                return _coerce(value, option, where)
            except ConfigError:
                continue
        raise ConfigError(f"{where}: expected {hint}, got {shown(value)}")
    raise TypeError(f"unsupported config type {hint}")
