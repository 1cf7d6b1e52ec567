"""The study's figures (studylib.registry.FIGURES), made from the tables under results/<key>/ only,
in one seaborn style; arms in the registry's order, colours and labels.

Each figure is saved as PNG and SVG in figures/<key>/ (or $STUDYLIB_FIGURES/<key>/) with a
provenance file beside it: preset, overrides, git SHA, the runs whose results it shows, its source
tables and the date. The key is the preset, or the preset and its overrides' hash (see
Experiment.results_key). Points are means over seeds with their 95% t-interval (the findings'
interval); every title states the number of seeds n; one seed draws no bar.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use(os.environ.get("MPLBACKEND", "Agg"))

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from studylib.comparisons import comparisons  # noqa: E402
from studylib.config import load_experiment  # noqa: E402
from studylib.errors import one_line_in_notebooks  # noqa: E402
from studylib.findings import analyse, counterparts  # noqa: E402
from studylib.panels import (  # noqa: E402
    lowshot_panel,
    paired_minus,
    paired_panel,
    robustness_panel,
    verdict_panel,
    whole_panel,
    zeroshot_panel,
)
from studylib.paths import results_dir  # noqa: E402
from studylib.plotting import (  # noqa: E402
    NothingToDraw,
    arm_hues,
    arms,
    finish,
    interval95,
    legend_below,
    plan_of,
    probe_rows,
    read,
    save,
    seeds_text,
    setting,
    style,
)
from studylib.registry import ARMS, FIGURES, STUDIES, call  # noqa: E402


def default(key: str) -> list[Path]:
    """Linear-probe top-1 of every arm on every probe dataset."""
    table = read(key, "default")
    probes, order, palette = arms(probe_rows(table))
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    dodge = 0.4 if len(order) > 1 else False
    sns.pointplot(
        probes,
        x="dataset",
        y="value",
        dodge=dodge,
        linestyle="none",
        errorbar=interval95,
        ax=ax,
        **arm_hues(order, palette),
    )
    ax.set(
        xlabel="probe dataset",
        ylabel="linear-probe top-1 (%)",
        title=f"Every arm, linear probe (higher is better)\n{setting(key)}\n{seeds_text(table)}",
    )
    ax.legend(title=None, fontsize=8)
    fig.tight_layout()
    return save(fig, "default", key, ["default"], table)


def verdicts(key: str) -> list[Path]:
    """Each claim's primary comparisons as the findings test them, and their counterparts at equal
    training FLOPs: the paired difference at every seed, the mean with the interval the verdict
    used (Holm-adjusted), the planned half-width, the zero line and the verdict; one y-scale."""
    plan = plan_of(key)
    found = analyse(comparisons(key), plan)
    primary = [c for c in found if c.role == "primary"]
    shown = primary + [c for c in counterparts(found, primary) if c.n]
    if not primary:
        raise FileNotFoundError(
            f"{results_dir(key)}: no primary comparison of the analysis plan in these results"
        )
    columns = min(len(shown), 4)  # rows of 4 panels: the README's width
    rows = math.ceil(len(shown) / columns)
    fig, axes = plt.subplots(
        rows,
        columns,
        figsize=(2.5 * columns + 0.6, 4.2 * rows),
        squeeze=False,
        sharey=True,
    )
    for k, (ax, c) in enumerate(zip(axes.flat, shown, strict=False)):
        target = getattr(plan, c.claim).half_width if c.role == "primary" else 0.0
        verdict_panel(ax, c, target, first=k % columns == 0)
    for ax in list(axes.flat)[len(shown) :]:
        ax.set_axis_off()
    entries = {}
    for ax in axes.flat:
        for handle, text in zip(*ax.get_legend_handles_labels(), strict=True):
            entries.setdefault(text, handle)
    legend_below(fig, entries, columns=3)
    fig.suptitle(f"Each claim's primary comparisons, paired by seed\n{setting(key)}", fontsize=10)
    fig.tight_layout()
    return save(
        fig,
        "verdicts",
        key,
        ["default", "wsp_epochs", "model_size", "data_size"],
        read(key, "default"),
    )


def convergence(key: str) -> list[Path]:
    """Linear-probe top-1 against WSP epochs and against total training FLOPs (MAE's included)."""
    table = read(key, "wsp_epochs")
    flops = table[(table.stage == "pretraining") & (table.metric == "train_flops")]
    flops = flops[["arm", "wsp_epochs", "seed", "value"]].rename(columns={"value": "train_flops"})
    probes, order, palette = arms(probe_rows(table).merge(flops, on=["arm", "wsp_epochs", "seed"]))
    datasets = list(probes.dataset.unique())
    fig, axes = plt.subplots(2, len(datasets), figsize=(4.6 * len(datasets), 7), squeeze=False)
    for col, dataset in enumerate(datasets):
        part = probes[probes.dataset == dataset]
        for row, x in enumerate(("wsp_epochs", "train_flops")):
            ax = axes[row, col]
            points = part[part.train_flops > 0] if row == 1 else part
            sns.lineplot(
                points,
                x=x,
                y="value",
                marker="o",
                errorbar=interval95,
                ax=ax,
                **arm_hues(order, palette),
            )
            ax.set(
                ylabel=f"{dataset} linear-probe top-1 (%)",
                xlabel="WSP epochs" if row == 0 else "total training FLOPs (MAE included)",
            )
            if row == 1:
                ax.set_xscale("log")
                # 1, 2, 5 x 10^n
                ax.xaxis.set_major_locator(matplotlib.ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
                ax.xaxis.set_major_formatter(
                    matplotlib.ticker.LogFormatterSciNotation(labelOnlyBase=False)
                )
                # no crowded minor labels
                ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    title = (
        f"Every arm after full WSP schedules of each length, one run per length and seed\n"
        f"{setting(key)}; {seeds_text(table)}"
    )
    return save(finish(fig, axes.flat, title), "convergence", key, ["wsp_epochs"], table)


def model_size(key: str) -> list[Path]:
    """Linear-probe top-1 against encoder parameters, every arm; under it the paired view: MAE→WSP
    − WSP at each size, per seed."""
    table = read(key, "model_size")
    params = table[table.metric == "params"][["model", "value"]].drop_duplicates("model")
    probes, order, palette = arms(
        probe_rows(table).merge(params.rename(columns={"value": "params"}), on="model")
    )
    datasets = list(probes.dataset.unique())
    if not datasets:
        raise NothingToDraw("no model size with both its parameters and probes in model_size.csv")
    fig, axes = plt.subplots(2, len(datasets), figsize=(4.6 * len(datasets), 7), squeeze=False)
    sizes = params.sort_values("value").model.tolist()
    mae_wsp, wsp = ARMS["mae_wsp"].label, ARMS["wsp"].label
    diffs = paired_minus(probes, "arm", {mae_wsp: wsp}) if {wsp, mae_wsp} <= set(order) else None
    for col, dataset in enumerate(datasets):
        ax = axes[0, col]
        sns.lineplot(
            probes[probes.dataset == dataset],
            x="params",
            y="value",
            marker="o",
            errorbar=interval95,
            ax=ax,
            **arm_hues(order, palette),
        )
        for name, count in zip(params.model, params.value, strict=True):
            ax.annotate(
                name,
                (count, ax.get_ylim()[0]),
                textcoords="offset points",
                xytext=(2, 4),
                fontsize=8,
                color="grey",
            )
        ax.set(
            xscale="log", xlabel="encoder parameters", ylabel=f"{dataset} linear-probe top-1 (%)"
        )
        if diffs is None:
            axes[1, col].set_axis_off()
            continue
        paired_panel(
            axes[1, col],
            diffs[diffs.dataset == dataset],
            "model",
            {"order": sizes, "color": palette[mae_wsp]},
            f"MAE→WSP − WSP, {dataset} (points)",
        )
    title = (
        f"Model size: every arm, and MAE→WSP − WSP paired by seed\n"
        f"{setting(key, model=False)}; {seeds_text(table)}"
    )
    return save(finish(fig, axes.flat, title), "model_size", key, ["model_size"], table)


def data_size(key: str) -> list[Path]:
    """Linear-probe top-1 of every arm at each point of MAE's images (the arms without MAE are the
    same runs at every point): points with error bars on an axis from zero; under them the paired
    view: each arm at each point minus the same arm and seed with MAE's fewest images."""
    table = read(key, "data_size")
    images = (
        table[(table.stage == "mae") & (table.metric == "images")]
        .groupby("mae_data")["value"]
        .mean()
    )
    probes, order, palette = arms(probe_rows(table).assign(images=lambda t: t.mae_data.map(images)))
    datasets = list(probes.dataset.unique())
    fewest = images.idxmin()
    diffs = paired_minus(
        probes, "mae_data", {point: fewest for point in images.index if point != fewest}
    )
    fig, axes = plt.subplots(2, len(datasets), figsize=(4.6 * len(datasets), 7), squeeze=False)
    for col, dataset in enumerate(datasets):
        ax = axes[0, col]
        dodge = 0.3 if len(order) > 1 else False
        sns.pointplot(
            probes[probes.dataset == dataset],
            x="images",
            y="value",
            dodge=dodge,
            errorbar=interval95,
            ax=ax,
            **arm_hues(order, palette),
        )
        ax.set_ylim(0, None)
        ax.set(
            xlabel="MAE's distinct images (same MAE steps at each)",
            ylabel=f"{dataset} linear-probe top-1 (%)",
        )
        ax.set_xticks(
            ax.get_xticks(), [f"{float(t.get_text()):,.0f}" for t in ax.get_xticklabels()]
        )
        paired_panel(
            axes[1, col],
            diffs[diffs.dataset == dataset].assign(images=lambda t: t.images.map("{:,.0f}".format)),
            "images",
            arm_hues(order, palette),
            f"minus {images[fewest]:,.0f} images, {dataset} (points)",
        )
        axes[1, col].set(xlabel="MAE's distinct images, paired by seed with the fewest")
    title = (
        f"Pre-pretraining data: MAE on more distinct images\n{setting(key)}; {seeds_text(table)}"
    )
    return save(finish(fig, axes.flat, title), "data_size", key, ["data_size"], table)


def transfer(key: str) -> list[Path]:
    """Every transfer task, every arm of the study: fine-tune and linear; low-shot; zero-shot;
    robustness."""
    table, order, palette = arms(read(key, "transfer").fillna({"variant": ""}))
    fig, grid = plt.subplots(2, 2, figsize=(10, 8))
    axes = list(grid.flat)
    top1 = table[table.metric == "top1"]
    style = arm_hues(order, palette)
    whole_panel(axes[0], top1, style)
    lowshot_panel(axes[1], top1, style)
    zeroshot_panel(axes[2], table[table.stage == "zeroshot"], style)
    robustness_panel(axes[3], top1, style)
    draws = "seeds and draws" if table.seed.nunique() > 1 else "draws"
    title = (
        f"Transfer ({setting(key)}; {seeds_text(table)}; low-shot: sd over {draws}; "
        "higher is better)"
    )
    return save(finish(fig, axes, title), "transfer", key, ["transfer"], table)


def reconstructions(key: str) -> list[Path]:
    """MAE's reconstructions of test images: original, the 25% it sees, its reconstruction."""
    path = results_dir(key) / "reconstructions.npz"
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
    fig.suptitle(f"MAE reconstructions of test images ({setting(key)}, run {run})")
    fig.tight_layout()
    return save(fig, "reconstructions", key, ["explore"], pd.DataFrame({"run": [run]}))


def hashtags(key: str) -> list[Path]:
    """How often each simulated hashtag is used, by rank: the long tail WSP learns from."""
    table = read(key, "explore")
    counts = (
        table[table.stage == "tag_count"]
        .sort_values("value", ascending=False)
        .reset_index(drop=True)
    )
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    ax.loglog(
        np.arange(1, len(counts) + 1),
        counts["value"],
        marker=".",
        ls="none",
        color=ARMS["wsp"].color,
    )
    top = "\n".join(f"{i + 1}. {counts.dataset[i]}" for i in range(min(5, len(counts))))
    ax.text(
        0.97, 0.97, f"most used:\n{top}", transform=ax.transAxes, ha="right", va="top", fontsize=8
    )
    stats = table[table.stage == "hashtags"].set_index("metric")["value"]
    ax.set(
        xlabel="tag rank",
        ylabel="images with the tag",
        title=f"{int(stats['vocab_size'])} hashtags, {stats['tags_per_image_mean']:.1f} per image, "
        f"{stats['missing_true_tag'] * 100:.0f}% miss the true one",
    )
    fig.tight_layout()
    return save(fig, "hashtags", key, ["explore"], table)


def make_all(key: str, names: Sequence[str] | None = None) -> dict[str, list[Path]]:
    """The figures `names` (default: every figure of the registry) whose results exist under
    results/<key>/; the others are reported and skipped."""
    style()
    made = {}
    for name in names if names is not None else FIGURES:
        try:
            made[name] = call(FIGURES[name].draw, key)
        except (FileNotFoundError, NothingToDraw) as err:
            print(f"skipping {name}: {err}")
    return made


def draw(
    preset: str, overrides: Sequence[str] = (), study: str | None = None
) -> dict[str, list[Path]]:
    """What a notebook calls: the figures of `study` (default: all) for a preset and its
    overrides."""
    one_line_in_notebooks()
    key = load_experiment(preset, list(overrides)).results_key
    return make_all(key, STUDIES[study].figures if study else None)
