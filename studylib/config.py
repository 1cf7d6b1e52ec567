"""One config path: experiments.yaml -> validated dataclasses -> one hash per run.

The dataclasses (studylib.schema, studylib.experiment) hold every default, once: a preset of
experiments.yaml changes some of them, then `--set key=value` overrides change any. Every value is
checked once, here, by the allowed values its field declares, then across fields; a bad one raises
ConfigError with the file, the key and the allowed values, and nothing has been written yet.
`studylib config --preset NAME` prints a preset resolved. This module imports neither torch nor
timm.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from studylib.errors import ConfigError, shown
from studylib.experiment import Experiment, result_settings
from studylib.paths import DEFAULT_CONFIG_FILE
from studylib.registry import DATASETS, VIT_SIZES
from studylib.schema import INT_LIMIT

PRESET_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")


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
            "(defaults live in studylib/schema.py and studylib/experiment.py)"
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
    if exp.data.stream and (exp.data.pretrain in DATASETS or "+" in exp.data.pretrain):
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
