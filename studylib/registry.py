"""Every named concept of the study, declared once. Everything else derives from these tables: the
config's allowed values, the run identity, study tables, figure order, colours and labels, the CLI's
choices, the job targets, the notebook checks and the README's tables (`studylib readme`).

    STAGES       what trains or evaluates, and the config sections that decide its result
    ARMS         pretraining recipes that end in an encoder: random init, MAE only, WSP, MAE→WSP
    TASKS        transfer tasks run on an arm's encoder
    STUDIES      the paper's studies: the function, its notebook and figures, the arms it compares
    DATASETS     datasets known by name (an image folder is known by its path instead)
    VIT_SIZES    model sizes;  CORRUPTIONS  the robustness task's corruptions

Functions are named 'module:function' and imported on first call, so this module imports nothing
heavy and the config can check names against it. To add an arm, a task or a study, declare it here
(or call `register` from your own code) with the function that runs it; nothing else needs editing.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

Ref = str | Callable[..., Any]  # 'module:function', or the function itself


def call(ref: Ref, *args: Any, **kwargs: Any) -> Any:
    """Call a declared function, importing its module first when it is given by name."""
    if isinstance(ref, str):
        module, _, name = ref.partition(":")
        ref = getattr(importlib.import_module(module), name)
    return ref(*args, **kwargs)


@dataclass(frozen=True)
class Stage:
    """A kind of run folder. `sections` are the config sections (dotted for nested ones) that decide
    its result: each is hashed whole into the run's identity, with the data and runs it reads."""

    name: str
    sections: tuple[str, ...]
    summary: str


@dataclass(frozen=True)
class Arm:
    """A pretraining recipe: `pretrain(exp)` returns the chain of runs it trains (or reuses), the
    last holding the encoder; the chain's training FLOPs add up to the arm's cost."""

    name: str
    label: str  # for figures and tables shown to people
    color: str
    pretrain: Ref
    summary: str
    # the arms this one is claimed to beat: the findings test each pair, paired by seed
    beats: tuple[str, ...] = ()


@dataclass(frozen=True)
class Task:
    """A transfer task: `rows(exp, run, dataset)` returns its table rows (dataset None for a task on
    the pretraining pool, per_dataset False); `run` is the encoder run, or what `takes(exp,
    encoder_run, dataset)` makes of it (another task's run: robustness takes the fine-tuned one)."""

    name: str
    label: str
    rows: Ref
    per_dataset: bool
    summary: str
    takes: Ref | None = None


@dataclass(frozen=True)
class Study:
    """A study: `run(exp)` returns its tidy table; `figures` draw it from the saved table; `arms`
    are the arms it compares (None: every registered arm)."""

    name: str
    run: Ref
    summary: str
    notebook: str | None = None
    figures: tuple[str, ...] = ()  # names in FIGURES
    arms: tuple[str, ...] | None = None  # () for a study of no arm: no findings
    shown: Ref = "studylib.study:top1_text"  # table -> the text printed when the study ends


@dataclass(frozen=True)
class Figure:
    name: str
    draw: Ref  # draw(results_key) -> list of paths written
    study: str  # the study whose table it reads
    caption: Ref | None = None  # caption(results_key, table) -> its caption, from the table


@dataclass(frozen=True)
class Dataset:
    """A dataset known by name: `load(name, data_config)` returns it in memory (a
    `studylib.images.ImageDataset`), `fingerprint(name, data_config)` what the identity of every run
    that reads it holds (a hash of its files, or the sizes it is generated at)."""

    name: str
    load: Ref
    fingerprint: Ref
    summary: str


STAGES: dict[str, Stage] = {}
ARMS: dict[str, Arm] = {}
TASKS: dict[str, Task] = {}
STUDIES: dict[str, Study] = {}
FIGURES: dict[str, Figure] = {}
DATASETS: dict[str, Dataset] = {}
_TABLES = {
    Stage: STAGES,
    Arm: ARMS,
    Task: TASKS,
    Study: STUDIES,
    Figure: FIGURES,
    Dataset: DATASETS,
}
Item = Stage | Arm | Task | Study | Figure | Dataset


def register(item: Item) -> Any:
    """Add `item` to its table; returns it. A name already taken is refused (unregister it
    first)."""
    table = _TABLES[type(item)]
    if item.name in table:
        raise ValueError(
            f"{type(item).__name__} {item.name!r} is registered already; allowed: a new name, "
            f"not one of {sorted(table)}"
        )
    table[item.name] = item
    return item


def unregister(item: Item) -> None:
    """Take `item`'s name out of its table (a test's or a notebook's own entries)."""
    _TABLES[type(item)].pop(item.name, None)


def study_arms(study: Study) -> list[Arm]:
    return [ARMS[name] for name in study.arms] if study.arms is not None else list(ARMS.values())


def compared_pairs() -> list[tuple[str, str]]:
    """(arm, an arm it is claimed to beat), in declaration order: the first is the paper's claim
    per WSP epoch, the second at equal training FLOPs."""
    return [(arm.name, beaten) for arm in ARMS.values() for beaten in arm.beats]


def targets() -> dict[str, str]:
    """What a job can run, name -> what it is: every study (its table) and every arm (its chain of
    runs)."""
    return {
        **{name: f"study: {s.summary}" for name, s in STUDIES.items()},
        **{name: f"arm: {a.summary}" for name, a in ARMS.items() if name not in STUDIES},
    }


def labels() -> dict[str, str]:
    """Arm name -> label, in declaration order (the order of every figure's legend)."""
    return {arm.name: arm.label for arm in ARMS.values()}


for _item in (
    Dataset(
        "cifar10",
        "studylib.data:read_named",
        "studylib.data:files_fingerprint",
        "CIFAR-10: 50,000 + 10,000 images of 32 px, 10 classes",
    ),
    Dataset(
        "cifar100",
        "studylib.data:read_named",
        "studylib.data:files_fingerprint",
        "CIFAR-100: 50,000 + 10,000 images of 32 px, 100 classes in 20 superclasses",
    ),
    Dataset(
        "synthetic",
        "studylib.data:generated",
        "studylib.data:generated_fingerprint",
        "gratings in colour pairs, 10 classes in 5 superclasses, data.synthetic_train/test images",
    ),
    Stage("init", ("model", "seed"), "a randomly initialised encoder, saved as it is"),
    Stage("mae", ("model", "seed", "mae"), "MAE pre-pretraining on the pool (or mae.data)"),
    Stage(
        "wsp",
        ("model", "seed", "tags", "wsp"),
        "weakly-supervised pretraining on the pool's hashtags",
    ),
    Stage(
        "probe",
        ("seed", "probe"),
        "linear probe: L2 logistic regression on frozen features, to convergence",
    ),
    Stage(
        "finetune",
        ("model", "seed", "transfer.finetune"),
        "full fine-tuning with layer-wise lr decay",
    ),
    Stage("lowshot", ("seed", "transfer.lowshot"), "k labelled images per class, several draws"),
    Stage(
        "zeroshot",
        ("model", "seed", "tags", "transfer.zeroshot"),
        "LiT: a text tower trained on hashtag captions against the frozen encoder",
    ),
    Stage(
        "robustness",
        ("seed", "transfer.robustness"),
        "the fine-tuned model under common corruptions",
    ),
    Stage("import", ("model",), "an outside checkpoint (timm, MAE, MAWS) as an encoder run"),
    Arm(
        "random", "random init", "#8C8C8C", "studylib.arms:random_init", "no pretraining: the floor"
    ),
    Arm("mae", "MAE", "#55A868", "studylib.arms:mae_only", "MAE pre-pretraining alone"),
    Arm(
        "wsp",
        "WSP",
        "#4C72B0",
        "studylib.arms:wsp_from_scratch",
        "WSP from random init: the paper's baseline",
    ),
    Arm(
        "mae_wsp",
        "MAE→WSP",
        "#DD8452",
        "studylib.arms:mae_then_wsp",
        "WSP from the MAE encoder: the paper's recipe",
        beats=("wsp", "wsp_flops"),
    ),
    Arm(
        "wsp_flops",
        "WSP at MAE→WSP's FLOPs",
        "#8172B3",
        "studylib.arms:wsp_at_equal_flops",
        "WSP from random init, given MAE→WSP's training FLOPs (MAE's counted) as more WSP epochs",
    ),
    Task("finetune", "fine-tune", "studylib.stages.finetune:rows", True, "full fine-tuning, top-1"),
    Task("probe", "linear probe", "studylib.stages.probe:rows", True, "linear probe, top-1"),
    Task(
        "lowshot",
        "low-shot",
        "studylib.stages.lowshot:rows",
        True,
        "1/5/10 images per class, top-1 per draw",
    ),
    Task(
        "zeroshot",
        "zero-shot",
        "studylib.stages.zeroshot:rows",
        False,
        "LiT zero-shot on the pool's test set, fine and coarse class names",
    ),
    Task(
        "robustness",
        "robustness",
        "studylib.stages.robustness:rows",
        True,
        "the fine-tuned model on corrupted test images, top-1 per corruption and severity",
        takes="studylib.stages.finetune:finetune",
    ),
    Study(
        "explore",
        "studylib.study:explore_study",
        "hashtag statistics, the tags' long tail, MAE reconstructions",
        "01_explore",
        ("hashtags", "reconstructions"),
        arms=(),
        shown="studylib.study:hashtags_text",
    ),
    Study(
        "default",
        "studylib.study:default_study",
        "every arm, linear probes on every probe dataset",
        "03_wsp",
        ("default", "verdicts"),
        shown="studylib.study:summary_text",
    ),
    Study(
        "model_size",
        "studylib.study:model_size_study",
        "WSP and MAE→WSP at every size of studies.model_sizes",
        "04_model_size",
        ("model_size",),
        arms=("wsp", "mae_wsp"),
    ),
    Study(
        "data_size",
        "studylib.study:data_size_study",
        "MAE's images at each point of studies.mae_data (same MAE steps): MAE, MAE→WSP",
        "05_data_size",
        ("data_size",),
        arms=("mae", "mae_wsp"),
    ),
    Study(
        "wsp_epochs",
        "studylib.study:wsp_epochs_study",
        "each WSP arm at each WSP length of studies.wsp_epochs (MAE alone beside): convergence, "
        "per WSP epoch and at equal training FLOPs",
        "06_wsp_epochs",
        ("convergence",),
        arms=("mae", "wsp", "mae_wsp", "wsp_flops"),
    ),
    Study(
        "transfer",
        "studylib.study:transfer_study",
        "every task of transfer.tasks on WSP and MAE→WSP",
        "07_transfer",
        ("transfer",),
        arms=("wsp", "mae_wsp"),
    ),
    *(
        Figure(name, f"studylib.figures:{name}", study, f"studylib.captions:{name}")
        for name, study in (
            ("default", "default"),
            ("verdicts", "default"),
            ("convergence", "wsp_epochs"),
            ("model_size", "model_size"),
            ("data_size", "data_size"),
            ("transfer", "transfer"),
            ("reconstructions", "explore"),
            ("hashtags", "explore"),
        )
    ),
):
    register(_item)


# name -> timm VisionTransformer arguments. The 32 px sizes (patch 4, 64 patches) are for CPU and
# single-GPU studies on CIFAR; the others are the paper's, at 224 px.
VIT_SIZES: dict[str, dict] = {
    "pico": dict(img_size=32, patch_size=4, embed_dim=32, depth=4, num_heads=2),
    "nano": dict(img_size=32, patch_size=4, embed_dim=64, depth=4, num_heads=2),
    "micro": dict(img_size=32, patch_size=4, embed_dim=128, depth=6, num_heads=4),
    "tiny": dict(img_size=32, patch_size=4, embed_dim=192, depth=12, num_heads=3),
    "small": dict(img_size=32, patch_size=4, embed_dim=384, depth=12, num_heads=6),
    "base": dict(img_size=32, patch_size=4, embed_dim=768, depth=12, num_heads=12),
    "B/16": dict(img_size=224, patch_size=16, embed_dim=768, depth=12, num_heads=12),
    "L/16": dict(img_size=224, patch_size=16, embed_dim=1024, depth=24, num_heads=16),
    "H/14": dict(img_size=224, patch_size=14, embed_dim=1280, depth=32, num_heads=16),
    "2B/14": dict(img_size=224, patch_size=14, embed_dim=2560, depth=24, num_heads=32),
}

# Common corruptions of the CIFAR-10-C kind (studylib.corruptions), with their five severities'
# parameters from Hendrycks' make_cifar_c.py.
CORRUPTIONS: dict[str, tuple] = {
    "gaussian_noise": (0.04, 0.06, 0.08, 0.09, 0.10),  # sigma on [0, 1]
    "shot_noise": (500, 250, 100, 75, 50),  # Poisson rate at full intensity
    "impulse_noise": (0.01, 0.02, 0.03, 0.05, 0.07),  # salt-and-pepper fraction
    "speckle_noise": (0.06, 0.1, 0.12, 0.16, 0.2),  # multiplicative sigma
    "gaussian_blur": (0.4, 0.6, 0.7, 0.8, 1.0),  # sigma in pixels
    # disk radius, alias blur
    "defocus_blur": (
        (0.3, 0.4),
        (0.4, 0.5),
        (0.5, 0.6),
        (1, 0.2),
        (1.5, 0.1),
    ),
    # zooms 1.00, 1.01, ...: np.arange(1, 1.06 ... 1.26, 0.01) lengths
    "zoom_blur": (
        7,
        12,
        16,
        21,
        26,
    ),
    "contrast": (0.75, 0.5, 0.4, 0.3, 0.15),  # factor about the per-channel mean
    "brightness": (0.05, 0.1, 0.15, 0.2, 0.3),  # added to HSV value
    "saturate": ((0.3, 0), (0.1, 0), (1.5, 0), (2, 0.1), (2.5, 0.2)),  # HSV saturation * a + b
    "jpeg_compression": (80, 65, 58, 50, 40),  # quality
    "pixelate": (0.95, 0.9, 0.85, 0.75, 0.65),  # box-downscale factor, then box-upscale back
}


def markdown() -> str:
    """The registries as the README's tables."""

    def table(header: list[str], rows: list[list[str]]) -> list[str]:
        return [
            "| " + " | ".join(header) + " |",
            "|" + " --- |" * len(header),
            *["| " + " | ".join(r) + " |" for r in rows],
            "",
        ]

    lines = ["**Arms** (`studylib.registry.ARMS`; in every figure's legend, in this order)", ""]
    lines += table(
        ["arm", "label", "claimed to beat (findings)", "what"],
        [
            [f"`{a.name}`", a.label, ", ".join(f"`{b}`" for b in a.beats), a.summary]
            for a in ARMS.values()
        ],
    )
    lines += ["**Studies** (`STUDIES`; `studylib study NAME`, `studylib submit NAME`)", ""]
    lines += table(
        ["study", "notebook", "arms", "figures", "what"],
        [
            [
                f"`{s.name}`",
                f"`{s.notebook}`" if s.notebook else "",
                ", ".join(a.name for a in study_arms(s)) or "none",
                ", ".join(s.figures),
                s.summary,
            ]
            for s in STUDIES.values()
        ],
    )
    lines += ["**Transfer tasks** (`TASKS`; `transfer.tasks`)", ""]
    lines += table(
        ["task", "per dataset", "what"],
        [[f"`{t.name}`", "yes" if t.per_dataset else "no", t.summary] for t in TASKS.values()],
    )
    lines += ["**Stages** (`STAGES`; run folders `runs/<preset>/<stage>-<hash>/`)", ""]
    lines += table(
        ["stage", "config sections in its identity", "what"],
        [
            [f"`{s.name}`", ", ".join(f"`{x}`" for x in s.sections), s.summary]
            for s in STAGES.values()
        ],
    )
    return "\n".join(lines).rstrip() + "\n"
