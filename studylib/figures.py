"""The study's figures, made from the tables under results/<preset>/ only, in one seaborn style.

Each figure is saved as PNG and SVG in figures/<preset>/ (or $STUDYLIB_FIGURES/<preset>/) with a
provenance file beside it: preset, git SHA, the runs whose results it shows, its source tables
and the date. Where a preset has several seeds, points show the mean and error bars one standard
deviation.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import matplotlib

matplotlib.use(os.environ.get("MPLBACKEND", "Agg"))

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from studylib.config import REPO_ROOT, results_dir  # noqa: E402
from studylib.runs import atomic_write, git_sha  # noqa: E402

PALETTE = {"WSP": "#4C72B0", "MAE→WSP": "#DD8452", "MAE": "#55A868"}
ORDER = ["WSP", "MAE→WSP"]
FORMATS = ("png", "svg")


def figures_dir(preset: str) -> Path:
    return Path(os.environ.get("STUDYLIB_FIGURES", REPO_ROOT / "figures")) / preset


def style() -> None:
    sns.set_theme(context="notebook", style="whitegrid", font_scale=0.95,
                  rc={"figure.dpi": 110, "svg.hashsalt": "studylib"})  # fixed SVG ids: same results, same file


def read(preset: str, study: str) -> pd.DataFrame:
    path = results_dir(preset) / f"{study}.csv"
    if not path.exists():
        raise FileNotFoundError(f"{path}: no results yet; run the {study} study first (studylib studies)")
    return pd.read_csv(path)


def save(fig: plt.Figure, name: str, preset: str, sources: list[str], table: pd.DataFrame) -> list[Path]:
    """Write `fig` in every format and its provenance; returns the paths written."""
    folder = figures_dir(preset)
    paths = [folder / f"{name}.{fmt}" for fmt in FORMATS]
    for path in paths:
        atomic_write(path, lambda f, fmt=path.suffix[1:]: fig.savefig(f, format=fmt, bbox_inches="tight",
                                                                       dpi=150, metadata=_metadata(fmt)), mode="wb")
    runs = sorted({r for r in table.get("run", pd.Series(dtype=str)).dropna().unique()})
    provenance = {"figure": name, "preset": preset, "git_sha": git_sha(), "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                  "sources": [str(results_dir(preset) / f"{s}.csv") for s in sources], "runs": runs}
    atomic_write(folder / f"{name}.json", lambda f: json.dump(provenance, f, indent=2))
    plt.close(fig)
    return [*paths, folder / f"{name}.json"]


def _metadata(fmt: str) -> dict:
    return {"Date": None} if fmt == "svg" else {}  # SVGs without a date: reruns of the same results match


def _probes(table: pd.DataFrame) -> pd.DataFrame:
    return table[(table.stage == "linear_probe") & (table.metric == "top1")]


def convergence(preset: str) -> list[Path]:
    """Linear-probe top-1 against WSP epochs and against total training FLOPs (MAE's included)."""
    table = read(preset, "wsp_epochs")
    flops = table[table.metric == "train_flops"][["pretraining", "wsp_epochs", "seed", "value"]]
    probes = _probes(table).merge(flops.rename(columns={"value": "train_flops"}), on=["pretraining", "wsp_epochs",
                                                                                      "seed"])
    datasets = list(probes.dataset.unique())
    fig, axes = plt.subplots(2, len(datasets), figsize=(4.6 * len(datasets), 7), squeeze=False)
    for col, dataset in enumerate(datasets):
        part = probes[probes.dataset == dataset]
        for row, x in enumerate(("wsp_epochs", "train_flops")):
            ax = axes[row, col]
            sns.lineplot(part, x=x, y="value", hue="pretraining", hue_order=ORDER, palette=PALETTE, marker="o",
                         errorbar="sd", ax=ax)
            ax.set(ylabel=f"{dataset} linear-probe top-1 (%)",
                   xlabel="WSP epochs" if row == 0 else "total training FLOPs (MAE included)")
            if row == 1:
                ax.set_xscale("log")
    fig.suptitle("Convergence: MAE→WSP against WSP from scratch")
    fig.tight_layout()
    return save(fig, "convergence", preset, ["wsp_epochs"], table)


def model_size(preset: str) -> list[Path]:
    """Linear-probe top-1 against encoder parameters, both pretrainings."""
    table = read(preset, "model_size")
    params = table[table.metric == "params"][["model", "value"]].drop_duplicates("model")
    probes = _probes(table).merge(params.rename(columns={"value": "params"}), on="model")
    datasets = list(probes.dataset.unique())
    fig, axes = plt.subplots(1, len(datasets), figsize=(4.6 * len(datasets), 3.8), squeeze=False)
    for ax, dataset in zip(axes[0], datasets, strict=True):
        sns.lineplot(probes[probes.dataset == dataset], x="params", y="value", hue="pretraining", hue_order=ORDER,
                     palette=PALETTE, marker="o", errorbar="sd", ax=ax)
        for name, count in zip(params.model, params.value, strict=True):
            ax.annotate(name, (count, ax.get_ylim()[0]), textcoords="offset points", xytext=(2, 4), fontsize=8,
                        color="grey")
        ax.set(xscale="log", xlabel="encoder parameters", ylabel=f"{dataset} linear-probe top-1 (%)")
    fig.suptitle("Model size: MAE→WSP against WSP")
    fig.tight_layout()
    return save(fig, "model_size", preset, ["model_size"], table)


def data_size(preset: str) -> list[Path]:
    """Linear-probe top-1 of MAE→WSP for each MAE data point; WSP from scratch as a dashed line."""
    table = read(preset, "data_size")
    probes = _probes(table)
    datasets = list(probes.dataset.unique())
    fig, axes = plt.subplots(1, len(datasets), figsize=(4.6 * len(datasets), 3.8), squeeze=False)
    for ax, dataset in zip(axes[0], datasets, strict=True):
        part = probes[probes.dataset == dataset]
        mae_points = part[part.pretraining == "MAE→WSP"]
        sns.barplot(mae_points, x="mae_data", y="value", color=PALETTE["MAE→WSP"], errorbar="sd", ax=ax)
        baseline = part[part.pretraining == "WSP"]["value"].mean()
        ax.axhline(baseline, ls="--", color=PALETTE["WSP"], label=f"WSP from scratch ({baseline:.1f})")
        low = min(baseline, mae_points["value"].min())
        ax.set_ylim(max(0, low - 5), None)
        ax.set(xlabel="MAE's images (dataset:fraction of the pool)", ylabel=f"{dataset} linear-probe top-1 (%)")
        ax.legend(loc="lower right")
    fig.suptitle("Pre-pretraining data: MAE on part of the pool, the pool, another dataset")
    fig.tight_layout()
    return save(fig, "data_size", preset, ["data_size"], table)


def transfer(preset: str) -> list[Path]:
    """Every transfer task, both pretrainings: fine-tune and linear; low-shot; zero-shot; robustness."""
    table = read(preset, "transfer")
    fig, axes = plt.subplots(1, 4, figsize=(19, 4.2))
    top1 = table[table.metric == "top1"]
    whole = top1[top1.stage.isin(["finetune", "linear"])].assign(task=lambda t: t.stage + " " + t.dataset)
    sns.barplot(whole, x="task", y="value", hue="pretraining", hue_order=ORDER, palette=PALETTE, errorbar="sd",
                ax=axes[0])
    axes[0].set(title="fine-tune and linear probe", xlabel="", ylabel="top-1 (%)")
    axes[0].tick_params(axis="x", rotation=20)
    low = top1[top1.stage == "lowshot"].assign(shots=lambda t: t.variant.str.split("-").str[0].astype(int))
    sns.lineplot(low, x="shots", y="value", hue="pretraining", hue_order=ORDER, style="dataset", palette=PALETTE,
                 marker="o", errorbar="sd", err_style="bars", ax=axes[1])
    axes[1].set(title="low-shot (mean ± sd over draws)", xlabel="labelled images per class", ylabel="top-1 (%)",
                xscale="log", xticks=sorted(low.shots.unique()), xticklabels=sorted(low.shots.unique()))
    zero = table[table.stage == "zeroshot"]
    sns.barplot(zero[zero.metric == "top1"], x="variant", y="value", hue="pretraining", hue_order=ORDER,
                palette=PALETTE, errorbar="sd", ax=axes[2])
    for i, chance in enumerate(zero[zero.metric == "chance"].drop_duplicates("variant")["value"]):
        axes[2].hlines(chance, i - 0.4, i + 0.4, color="black", ls=":", label="chance" if i == 0 else None)
    axes[2].set(title=f"zero-shot (LiT) on {zero.dataset.iloc[0]}", xlabel="class names", ylabel="top-1 (%)")
    axes[2].legend()
    robust = top1[(top1.stage == "robustness") & top1.variant.str.contains("/")]
    robust = robust.assign(severity=robust.variant.str.split("/").str[1].astype(int))
    clean = top1[(top1.stage == "robustness") & (top1.variant == "clean")].assign(severity=0)
    sns.lineplot(pd.concat([clean, robust]), x="severity", y="value", hue="pretraining", hue_order=ORDER,
                 style="dataset", palette=PALETTE, marker="o", errorbar=None, ax=axes[3])
    axes[3].set(title="robustness: mean over corruptions", xlabel="severity (0: clean)", ylabel="top-1 (%)")
    fig.tight_layout()
    return save(fig, "transfer", preset, ["transfer"], table)


def reconstructions(preset: str) -> list[Path]:
    """MAE's reconstructions of test images: original, the 25% it sees, its reconstruction."""
    path = results_dir(preset) / "reconstructions.npz"
    if not path.exists():
        raise FileNotFoundError(f"{path}: no reconstructions yet; run the explore study first")
    with np.load(path) as f:
        rows = {k: f[k] for k in ("original", "masked", "reconstruction")}
        run = str(f["run"])
    count = len(rows["original"])
    fig, axes = plt.subplots(3, count, figsize=(1.3 * count, 4.2))
    for r, (label, images) in enumerate(rows.items()):
        for c in range(count):
            axes[r, c].imshow(images[c])
            axes[r, c].set_xticks([]), axes[r, c].set_yticks([])
        axes[r, 0].set_ylabel(label, fontsize=9)
    fig.suptitle(f"MAE reconstructions ({run})")
    fig.tight_layout()
    return save(fig, "reconstructions", preset, ["explore"], pd.DataFrame({"run": [run]}))


def hashtags(preset: str) -> list[Path]:
    """How often each simulated hashtag is used, by rank: the long tail WSP learns from."""
    table = read(preset, "explore")
    counts = table[table.stage == "tag_count"].sort_values("value", ascending=False).reset_index(drop=True)
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    ax.loglog(np.arange(1, len(counts) + 1), counts["value"], marker=".", ls="none", color=PALETTE["WSP"])
    for i in range(min(5, len(counts))):
        ax.annotate(counts.dataset[i], (i + 1, counts.value[i]), fontsize=8, xytext=(4, 0), textcoords="offset points")
    stats = table[table.stage == "hashtags"].set_index("metric")["value"]
    ax.set(xlabel="tag rank", ylabel="images with the tag",
           title=f"{int(stats['vocab_size'])} hashtags, {stats['tags_per_image_mean']:.1f} per image, "
                 f"{stats['missing_true_tag'] * 100:.0f}% miss the true one")
    fig.tight_layout()
    return save(fig, "hashtags", preset, ["explore"], table)


FIGURES: dict[str, Callable[[str], list[Path]]] = {
    "hashtags": hashtags, "reconstructions": reconstructions, "convergence": convergence,
    "model_size": model_size, "data_size": data_size, "transfer": transfer,
}


def make_all(preset: str) -> dict[str, list[Path]]:
    """Every figure whose results exist; the others are reported and skipped."""
    style()
    made = {}
    for name, make in FIGURES.items():
        try:
            made[name] = make(preset)
        except FileNotFoundError as err:
            print(f"skipping {name}: {err}")
    return made
