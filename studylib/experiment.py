"""The Experiment: the result-deciding sections (studylib.schema), the studies' sweeps and seeds,
the declared analysis plan and where jobs run, and the identity rule: which of its values name a
run (`result_settings`, `config_hash`). No torch, no timm.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from studylib.registry import ARMS, STUDIES, VIT_SIZES
from studylib.schema import (
    MAX_EPOCHS,
    SPEED_ONLY,
    DataConfig,
    MAEConfig,
    ProbeConfig,
    TagsConfig,
    TransferConfig,
    WSPConfig,
    at_least_zero,
    checked_field,
    is_dataset_name,
    list_of,
    one_of,
    positive,
)


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
    return (name == "pretrain" or bool(is_dataset_name(name))) and 0 < fraction <= 1


@dataclass(kw_only=True)
class StudiesConfig:
    """What the scaling studies sweep (studylib.study); each point is a set of ordinary runs, once
    per seed."""

    seeds: list[int] = checked_field(
        "a non-empty list of ints >= 0",
        lambda v: len(v) > 0 and min(v) >= 0,
        default_factory=lambda: [0],
    )
    model_sizes: list[str] = list_of(VIT_SIZES, default_factory=lambda: ["nano", "micro"])
    # MAE's images as DATASET:FRACTION: that share of the pool ('pretrain') or of a
    # whole dataset (names joined by '+' are taken together); MAE takes the same steps
    # at every point (mae.epoch_images)
    mae_data: list[str] = checked_field(
        "a non-empty list of 'pretrain:F' or 'DATASET:F', F in (0, 1]",
        lambda v: len(v) > 0 and all(_mae_data_point(p) for p in v),
        default_factory=lambda: ["pretrain:0.2", "pretrain:1", "cifar10:1"],
    )
    wsp_epochs: list[int] = checked_field(
        f"a non-empty list of ints in [1, {MAX_EPOCHS}]",
        lambda v: len(v) > 0 and 1 <= min(v) and max(v) <= MAX_EPOCHS,
        default_factory=lambda: [1, 2, 4],
    )
    arms: list[str] = list_of(ARMS, default_factory=lambda: list(ARMS))  # arms the studies compare
    # seeds that chose a setting (pilot seeds: `studylib study --pilot`, `studylib plan`); the
    # verdicts come from `seeds`, fresh confirmation seeds that chose nothing
    pilot_seeds: list[int] = checked_field(
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
    half_width: float = checked_field("in [0, 100]", lambda v: 0 <= v <= 100, default=0.0)
    secondary_half_width: float = checked_field("in [0, 100]", lambda v: 0 <= v <= 100, default=0.0)


@dataclass(kw_only=True)
class AnalysisConfig:
    """The analysis plan of the paper's four claims (keys: `studylib findings` lists every
    comparison's)."""

    alpha: float = checked_field("in (0, 0.5]", lambda v: 0 < v <= 0.5, default=0.05)
    a: ClaimPlan = field(default_factory=lambda: ClaimPlan(primary="probe/cifar100"))
    b: ClaimPlan = field(default_factory=lambda: ClaimPlan(primary="epochs2/cifar100"))
    c: ClaimPlan = field(default_factory=lambda: ClaimPlan(primary="micro/cifar100"))
    d: ClaimPlan = field(default_factory=lambda: ClaimPlan(primary="mae/cifar10"))


@dataclass(kw_only=True)
class LaunchConfig:
    """Where jobs run (studylib.launch); none of it changes a run's result, its hash or its
    table."""

    # auto: slurm where sbatch exists
    executor: str = one_of(["auto", "local", "debug", "slurm"], default="auto")
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    nodes: int = positive(default=1)
    tasks_per_node: int = positive(default=1)  # one per GPU for DDP
    gpus_per_node: int = at_least_zero(default=0)
    cpus_per_task: int = positive(default=2)
    mem_gb: int = positive(default=16)
    timeout_min: int = positive(default=120)
    max_requeues: int = at_least_zero(default=3)  # after preemption or time-out
    array_parallelism: int = positive(default=16)
    # a study's seeds as this many concurrent processes of one job, its CPU threads shared out
    # among them (one rank only): small models keep 2 cores busier as 2 x 1 thread than as 1 x 2
    seed_workers: int = positive(default=1)


# field metadata: set by load_experiment, never by a config file or --set
INTERNAL = {"internal": True}


@dataclass(kw_only=True)
class Experiment:
    preset: str = field(default="", metadata=INTERNAL)
    # what differs from the preset
    overrides: dict[str, Any] = field(default_factory=dict, metadata=INTERNAL)
    model: str = one_of(VIT_SIZES, default="micro")
    seed: int = at_least_zero(default=0)  # of single runs; studies run every seed of studies.seeds
    device: str = field(
        default="auto", metadata={**one_of(["auto", "cpu", "cuda"]).metadata, **SPEED_ONLY}
    )
    # auto: bf16 where native: GPU, AMX, avx512_bf16
    precision: str = one_of(["auto", "bf16", "fp32"], default="auto")
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


def names_runs(f: dataclasses.Field) -> bool | str:
    """The identity rule of one setting: True (it enters the identity of the runs it shapes), False
    (speed, place, the analysis plan, or set by load_experiment), or "when set" (only away from its
    default, so the runs made before it existed keep their names)."""
    if f.metadata.get("internal"):
        return False
    return f.metadata.get("identity", True)


def result_settings(value: Any) -> Any:
    """A config section as it decides results: its values without the speed-only ones."""
    if not dataclasses.is_dataclass(value):
        return value
    return {
        f.name: result_settings(getattr(value, f.name))
        for f in dataclasses.fields(value)
        if names_runs(f) is True
        or (names_runs(f) == "when set" and getattr(value, f.name) != f.default)
    }


def config_hash(obj: Any) -> str:
    """Eight hex digits that change whenever anything in `obj` (a JSON-able value) changes."""
    text = json.dumps(obj, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:8]
