"""One config path: experiments.yaml -> validated dataclasses -> one hash per run.

A preset is the `defaults` block of experiments.yaml with the preset's own keys on top, then any
`--set key=value` overrides. Every value is checked once, here; a bad one raises ConfigError with
the file, the key and the allowed values, and nothing has been written yet.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import math
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from studylib.models import VIT_SIZES

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG_FILE = REPO_ROOT / "experiments.yaml"
BUILTIN_DATASETS = ("cifar10", "cifar100", "synthetic")


class ConfigError(ValueError):
    """A bad setting. The message names where it came from, the key and what is allowed."""


def data_dir() -> Path:
    """Where datasets live (and where torchvision downloads them): $STUDYLIB_DATA, default <repo>/data."""
    return Path(os.environ.get("STUDYLIB_DATA", REPO_ROOT / "data"))


def runs_dir() -> Path:
    """Where run folders live: $STUDYLIB_RUNS, default <repo>/runs."""
    return Path(os.environ.get("STUDYLIB_RUNS", REPO_ROOT / "runs"))


def results_dir(preset: str) -> Path:
    """Where study tables go: $STUDYLIB_RESULTS/<preset>, default <repo>/results/<preset>."""
    return Path(os.environ.get("STUDYLIB_RESULTS", REPO_ROOT / "results")) / preset


def _check(allowed: str, ok: typing.Callable[[Any], bool], **kwargs: Any) -> Any:
    return field(metadata={"allowed": allowed, "ok": ok}, **kwargs)


def _positive(**kwargs: Any) -> Any:
    return _check("> 0", lambda v: v > 0, **kwargs)


def _at_least_zero(**kwargs: Any) -> Any:
    return _check(">= 0", lambda v: v >= 0, **kwargs)


def _probability(**kwargs: Any) -> Any:
    return _check("in [0, 1]", lambda v: 0 <= v <= 1, **kwargs)


def _dataset_name(name: str) -> bool:
    return name in BUILTIN_DATASETS or ("/" in name and Path(name).expanduser().is_dir())


@dataclass(kw_only=True)
class DataConfig:
    pretrain: str = _check(f"one of {BUILTIN_DATASETS} or the path of an existing image folder", _dataset_name,
                           default="cifar100")
    pretrain_fraction: float = _check("in (0, 1]", lambda v: 0 < v <= 1, default=1.0)
    probe: list[str] = _check(f"a list of {BUILTIN_DATASETS} or paths of existing image folders",
                              lambda v: len(v) > 0 and all(_dataset_name(n) for n in v),
                              default_factory=lambda: ["cifar10", "cifar100"])
    probe_train_per_class: int = _at_least_zero(default=0)  # 0: every training image
    synthetic_train: int = _positive(default=2000)  # size of the generated `synthetic` dataset
    synthetic_test: int = _positive(default=500)


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
    epochs: int = _positive(default=1)
    batch_size: int = _positive(default=256)
    base_lr: float = _positive(default=1e-3)  # lr = base_lr * batch_size / 256
    min_lr: float = _at_least_zero(default=0.0)
    warmup_epochs: float = _at_least_zero(default=0.0)
    weight_decay: float = _at_least_zero(default=0.05)
    clip_grad: float = _at_least_zero(default=1.0)  # 0: no clipping
    crop_min: float = _check("in (0, 1]", lambda v: 0 < v <= 1, default=0.35)  # random-resized-crop area
    compile: bool = False  # torch.compile the model: +27% for B/16 on an H200, slower for the 32 px sizes


@dataclass(kw_only=True)
class MAEConfig(TrainConfig):
    # MAE's own images: "pretrain" (the WSP pool, data.pretrain) or another dataset, and the share of
    # them taken (times data.pretrain_fraction, as for the pool): the data-size study varies these
    data: str = _check(f"'pretrain', one of {BUILTIN_DATASETS} or the path of an existing image folder",
                       lambda v: v == "pretrain" or _dataset_name(v), default="pretrain")
    data_fraction: float = _check("in (0, 1]", lambda v: 0 < v <= 1, default=1.0)
    mask_ratio: float = _check("in (0, 1)", lambda v: 0 < v < 1, default=0.75)
    decoder_dim: int = _positive(default=128)
    decoder_depth: int = _positive(default=2)
    decoder_heads: int = _positive(default=4)
    norm_pix_loss: bool = True


@dataclass(kw_only=True)
class WSPConfig(TrainConfig):
    pass


@dataclass(kw_only=True)
class ProbeConfig(TrainConfig):
    pass


@dataclass(kw_only=True)
class FinetuneConfig(TrainConfig):
    layer_decay: float = _check("in (0, 1]", lambda v: 0 < v <= 1, default=0.75)  # block lr x decay^(blocks above)
    drop_path: float = _check("in [0, 1)", lambda v: 0 <= v < 1, default=0.1)  # stochastic depth rate
    train_per_class: int = _at_least_zero(default=0)  # 0: every training image
    label_smoothing: float = _check("in [0, 1)", lambda v: 0 <= v < 1, default=0.1)


@dataclass(kw_only=True)
class LowShotConfig:
    shots: list[int] = _check("a non-empty list of ints > 0", lambda v: len(v) > 0 and min(v) > 0,
                              default_factory=lambda: [1, 5, 10])
    draws: int = _positive(default=5)  # random draws of the k examples per class
    weight_decay: float = _at_least_zero(default=1e-3)  # L2 penalty of the logistic regression


@dataclass(kw_only=True)
class LiTConfig(TrainConfig):
    """Locked-image tuning: the image tower frozen, a text tower trained on hashtag captions."""

    text_dim: int = _positive(default=128)
    text_depth: int = _positive(default=2)
    text_heads: int = _positive(default=4)
    max_tokens: int = _positive(default=16)
    templates: list[str] = _check("a non-empty list of texts, each with one {}",
                                  lambda v: len(v) > 0 and all(t.count("{}") == 1 for t in v),
                                  default_factory=lambda: ["{}", "#{}", "a photo of a {}.", "a picture of the {}."])


@dataclass(kw_only=True)
class RobustnessConfig:
    corruptions: list[str] = _check("a non-empty list of studylib.corruptions.CORRUPTIONS",
                                    lambda v: len(v) > 0 and all(c in _corruptions() for c in v),
                                    default_factory=lambda: list(_corruptions()))
    test_per_class: int = _at_least_zero(default=0)  # 0: the whole test set


TRANSFER_TASKS = ("finetune", "linear", "lowshot", "zeroshot", "robustness")


@dataclass(kw_only=True)
class TransferConfig:
    tasks: list[str] = _check(f"a non-empty list of {list(TRANSFER_TASKS)}",
                              lambda v: len(v) > 0 and all(t in TRANSFER_TASKS for t in v),
                              default_factory=lambda: list(TRANSFER_TASKS))
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    lowshot: LowShotConfig = field(default_factory=LowShotConfig)
    lit: LiTConfig = field(default_factory=LiTConfig)
    robustness: RobustnessConfig = field(default_factory=RobustnessConfig)


def _mae_data_point(text: str) -> bool:
    name, sep, fraction = text.rpartition(":")
    try:
        return bool(sep) and (name == "pretrain" or _dataset_name(name)) and 0 < float(fraction) <= 1
    except ValueError:
        return False


@dataclass(kw_only=True)
class StudiesConfig:
    """What the scaling studies sweep (studylib.study); each point is a set of ordinary runs."""

    seeds: list[int] = _check("a non-empty list of ints >= 0", lambda v: len(v) > 0 and min(v) >= 0,
                              default_factory=lambda: [0])
    model_sizes: list[str] = _check(f"a non-empty list of {list(VIT_SIZES)}",
                                    lambda v: len(v) > 0 and all(m in VIT_SIZES for m in v),
                                    default_factory=lambda: ["nano", "micro"])
    # MAE's images as DATASET:FRACTION, DATASET 'pretrain' (the pool) or a dataset; MAE takes as many
    # steps at every point as on the whole pool (its epochs scale with pool size / its images)
    mae_data: list[str] = _check("a non-empty list of 'pretrain:F' or 'DATASET:F', F in (0, 1]",
                                 lambda v: len(v) > 0 and all(_mae_data_point(p) for p in v),
                                 default_factory=lambda: ["pretrain:0.2", "pretrain:1", "cifar10:1"])
    wsp_epochs: list[int] = _check("a non-empty list of ints > 0", lambda v: len(v) > 0 and min(v) > 0,
                                   default_factory=lambda: [1, 2, 4])


def _corruptions() -> tuple[str, ...]:
    from studylib.corruptions import CORRUPTIONS

    return CORRUPTIONS


@dataclass(kw_only=True)
class LaunchConfig:
    """Where jobs run (studylib.launch); none of it changes a run's result or its hash."""

    executor: str = _check("one of ['auto', 'local', 'debug', 'slurm']",
                           lambda v: v in ("auto", "local", "debug", "slurm"), default="auto")  # auto: slurm if sbatch
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


@dataclass(kw_only=True)
class Experiment:
    preset: str
    model: str = _check(f"one of {list(VIT_SIZES)}", lambda v: v in VIT_SIZES, default="micro")
    seed: int = _at_least_zero(default=0)
    device: str = _check("one of ['auto', 'cpu', 'cuda']", lambda v: v in ("auto", "cpu", "cuda"),
                         default="auto")
    precision: str = _check("one of ['auto', 'bf16', 'fp32']", lambda v: v in ("auto", "bf16", "fp32"),
                            default="auto")
    data: DataConfig = field(default_factory=DataConfig)
    tags: TagsConfig = field(default_factory=TagsConfig)
    mae: MAEConfig = field(default_factory=MAEConfig)
    wsp: WSPConfig = field(default_factory=WSPConfig)
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    transfer: TransferConfig = field(default_factory=TransferConfig)
    studies: StudiesConfig = field(default_factory=StudiesConfig)
    launch: LaunchConfig = field(default_factory=LaunchConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def config_hash(obj: Any) -> str:
    """Eight hex digits that change whenever anything in `obj` (a JSON-able value) changes."""
    text = json.dumps(obj, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def parse_override(text: str) -> tuple[str, Any]:
    """'mae.epochs=3' -> ('mae.epochs', 3); the value is read as YAML."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {text!r}: expected KEY=VALUE, for example mae.epochs=3")
    try:
        return key.strip(), yaml.safe_load(value) if value.strip() else None
    except yaml.YAMLError:
        raise ConfigError(f"override {key.strip()}: value {value!r} is not valid YAML") from None


def load_experiment(preset: str, overrides: list[str] | tuple[str, ...] = (),
                    config_file: str | Path | None = None) -> Experiment:
    """The validated Experiment of `preset` in `config_file`, with `overrides` ('key=value') on top."""
    path = Path(config_file) if config_file is not None else DEFAULT_CONFIG_FILE
    try:
        document = yaml.safe_load(path.read_text())
    except OSError as err:
        raise ConfigError(f"{path}: cannot read the config file ({err.strerror})") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {' '.join(str(err).split())}") from None
    if not isinstance(document, dict) or not isinstance(document.get("presets"), dict):
        raise ConfigError(f"{path}: expected a mapping with a 'presets' key")
    presets = document["presets"]
    if preset not in presets:
        raise ConfigError(f"{path}: unknown preset {preset!r}{_suggest(preset, presets)}; "
                          f"allowed: {sorted(presets)}")
    unknown_top = set(document) - {"defaults", "presets"}
    if unknown_top:
        raise ConfigError(f"{path}: unknown top-level key {sorted(unknown_top)[0]!r}; "
                          "allowed: ['defaults', 'presets']")

    values: dict[str, Any] = {}
    origins: dict[str, str] = {}
    _merge(values, origins, document.get("defaults") or {}, f"{path}: defaults")
    _merge(values, origins, presets[preset] or {}, f"{path}: presets.{preset}")
    for text in overrides:
        key, value = parse_override(text)
        nested: Any = value
        for part in reversed(key.split(".")):
            nested = {part: nested}
        _merge(values, origins, nested, "override")
    exp = _build(Experiment, {**values, "preset": preset}, origins, prefix="")
    _check_together(exp, origins)
    return exp


def _check_together(exp: Experiment, origins: dict[str, str]) -> None:
    """Checks of several values at once, which single fields cannot make."""
    lit = exp.transfer.lit
    for key, dim, heads in (("mae.decoder_dim", exp.mae.decoder_dim, exp.mae.decoder_heads),
                            ("transfer.lit.text_dim", lit.text_dim, lit.text_heads)):
        if dim % heads:
            raise ConfigError(f"{_where(origins, key)}: {dim} does not split into {heads} heads; "
                              f"allowed: multiples of {key.rsplit('_', 1)[0]}_heads = {heads}")
    for key, values in (("studies.seeds", exp.studies.seeds), ("studies.model_sizes", exp.studies.model_sizes),
                        ("studies.mae_data", exp.studies.mae_data), ("studies.wsp_epochs", exp.studies.wsp_epochs),
                        ("transfer.lowshot.shots", exp.transfer.lowshot.shots)):
        if len(set(values)) < len(values):
            raise ConfigError(f"{_where(origins, key)}: {values} repeats a value; allowed: distinct values")


def _merge(values: dict, origins: dict, new: Any, origin: str, prefix: str = "") -> None:
    if not isinstance(new, dict):
        raise ConfigError(f"{origin}{'.' + prefix.rstrip('.') if prefix else ''}: expected a mapping, "
                          f"got {new!r}")
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
    origin = origins.get(key, "config")
    if origin == "override":
        return f"override {key}"
    return f"{origin}.{key}"


def _suggest(name: str, choices: typing.Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _build(cls: type, values: dict[str, Any], origins: dict[str, str], prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        full = prefix + key
        if key not in known:
            raise ConfigError(f"{_where(origins, full)}: unknown key{_suggest(key, known)}; "
                              f"allowed: {sorted(known)}")
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            if not isinstance(value, dict):
                raise ConfigError(f"{_where(origins, full)}: expected a mapping of {sorted(f.name for f in dataclasses.fields(hint))}, got {value!r}")  # noqa: E501
            kwargs[key] = _build(hint, value, origins, full + ".")
            continue
        value = _coerce(value, hint, _where(origins, full))
        meta = known[key].metadata
        if "ok" in meta and not meta["ok"](value):
            raise ConfigError(f"{_where(origins, full)}: {value!r} is not allowed; must be {meta['allowed']}")
        kwargs[key] = value
    return cls(**kwargs)


def _coerce(value: Any, hint: Any, where: str) -> Any:
    """Check `value` against a field's type; ints are accepted where floats are asked for."""
    if hint is float and not isinstance(value, bool) and isinstance(value, int | float | str):
        try:  # YAML reads 1e-3 (no dot) as text
            number = float(value)
        except ValueError:
            raise ConfigError(f"{where}: expected float, got {value!r}") from None
        if not math.isfinite(number):
            raise ConfigError(f"{where}: {value!r} is not allowed; must be a finite number")
        return number
    if hint in (int, float, str, bool):
        if isinstance(value, hint) and not (hint is int and isinstance(value, bool)):
            return value
        raise ConfigError(f"{where}: expected {hint.__name__}, got {value!r}")
    origin = typing.get_origin(hint)
    if origin is list:
        (item,) = typing.get_args(hint)
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list of {item.__name__}, got {value!r}")
        return [_coerce(v, item, where) for v in value]
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(hint):
            if option is type(None) and value is None:
                return None
            try:
                return _coerce(value, option, where)
            except ConfigError:
                continue
        raise ConfigError(f"{where}: expected {hint}, got {value!r}")
    raise TypeError(f"unsupported config type {hint}")
