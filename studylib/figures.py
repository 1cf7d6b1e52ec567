"""The study's figures (studylib.registry.FIGURES), made from the tables under results/<key>/ only,
in one seaborn style; arms in the registry's order, colours and labels.

Each figure is saved as PNG and SVG in figures/<key>/ (or $STUDYLIB_FIGURES/<key>/) with a
provenance file beside it: preset, overrides, git SHA, the runs whose results it shows, its source
tables and the date. The key is the preset, or the preset and its overrides' hash (see
Experiment.results_key). Points are means over seeds with their 95% t-interval (the findings'
interval); every title states the number of seeds n; one seed draws no bar.
"""

from __future__ import annotations

import json
import math
import os
import textwrap
import time
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use(os.environ.get("MPLBACKEND", "Agg"))

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
import yaml  # noqa: E402

from studylib.config import (  # noqa: E402
    REPO_ROOT,
    AnalysisConfig,
    ClaimPlan,
    figures_dir,
    load_experiment,
    results_dir,
)
from studylib.errors import one_line_in_notebooks  # noqa: E402
from studylib.findings import (  # noqa: E402
    CLAIMS,
    Comparison,
    analyse,
    comparisons,
    counterparts,
    probe_top1,
    read_table,
    t_quantile_975,
)
from studylib.io import atomic_write, git_sha  # noqa: E402
from studylib.registry import ARMS, FIGURES, STUDIES, call, compared_pairs  # noqa: E402

FORMATS = ("png", "svg")


def arms(table: pd.DataFrame) -> tuple[pd.DataFrame, list[str], dict[str, str]]:
    """`table` with each arm named by its label (figures are for people), then the labels of the
    arms it holds in the registry's order (the legend's order) and their colours."""
    present = [arm for name, arm in ARMS.items() if name in set(table.arm.dropna())]
    labelled = table.assign(arm=table.arm.map({a.name: a.label for a in present}))
    return labelled, [a.label for a in present], {a.label: a.color for a in present}


def _relative(path: Path) -> str:
    """`path` relative to the repository where it lies inside it: provenance that reads the same
    anywhere."""
    try:
        return str(path.resolve().relative_to(REPO_ROOT))
    except ValueError:
        return str(path)


def style() -> None:
    # SVG text as text: searchable, and small
    sns.set_theme(
        context="notebook",
        style="whitegrid",
        font_scale=0.95,
        rc={
            "figure.dpi": 110,
            "svg.hashsalt": "studylib",  # fixed SVG ids: same results, same file
            "svg.fonttype": "none",
        },
    )


def read(key: str, study: str) -> pd.DataFrame:
    """A study's table, which the figure needs (read_table)."""
    table = read_table(key, study)
    if table is None:
        raise FileNotFoundError(
            f"{results_dir(key) / f'{study}.csv'}: no results yet; run the study first "
            f"(studylib study {study})"
        )
    return table


def save(
    fig: plt.Figure, name: str, key: str, sources: list[str], table: pd.DataFrame
) -> list[Path]:
    """Write `fig` in every format and its provenance; returns the paths written."""
    folder = figures_dir(key)
    for clash in overlaps(fig):
        print(f"warning: figure {name}: {clash}")
    paths = [folder / f"{name}.{fmt}" for fmt in FORMATS]
    for path in paths:
        atomic_write(
            path,
            lambda f, fmt=path.suffix[1:]: fig.savefig(
                f, format=fmt, bbox_inches="tight", dpi=150, metadata=_metadata(fmt)
            ),
            mode="wb",
        )
    runs = sorted({r for r in table.get("run", pd.Series(dtype=str)).dropna().unique()})
    record = results_dir(key) / "experiment.yaml"
    recorded = yaml.safe_load(record.read_text()) if record.exists() else {}
    provenance = {
        "figure": name,
        "results_key": key,
        "preset": recorded.get("preset", key),
        "overrides": recorded.get("overrides", {}),
        "git_sha": git_sha(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "sources": [_relative(results_dir(key) / f"{s}.csv") for s in sources],
        "runs": runs,
    }
    atomic_write(folder / f"{name}.json", lambda f: json.dump(provenance, f, indent=2))
    plt.close(fig)
    return [*paths, folder / f"{name}.json"]


def overlaps(fig: plt.Figure) -> list[str]:
    """What collides in `fig` as drawn: tick labels of one axis that overlap each other, texts
    (annotations, titles) that overlap each other, and legends that cover plotted points. Empty for
    a clean figure."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    found = []

    def boxes(texts: list) -> list:
        return [
            (t.get_text(), t.get_window_extent(renderer))
            for t in texts
            if t.get_visible() and t.get_text()
        ]

    def clashes(named: list, what: str) -> None:
        for i, (a, box_a) in enumerate(named):
            for b, box_b in named[i + 1 :]:
                if box_a.overlaps(box_b):
                    found.append(f"{what}: {a!r} and {b!r}")

    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            clashes(boxes(axis.get_ticklabels()), f"{ax.get_title() or 'axes'} tick labels")
        clashes(boxes([*ax.texts, ax.title]), f"{ax.get_title() or 'axes'} texts")
        legend = ax.get_legend()
        if legend is not None and legend.get_visible():
            box = legend.get_window_extent(renderer)
            points = [
                ax.transData.transform(line.get_xydata())
                for line in ax.lines
                if len(line.get_xydata())
            ]
            points += [
                ax.transData.transform(c.get_offsets())
                for c in ax.collections
                if len(c.get_offsets())
            ]
            covered = sum(
                box.contains(x, y) for xy in points for x, y in xy if np.isfinite([x, y]).all()
            )
            if covered:
                found.append(
                    f"{ax.get_title() or 'axes'}: the legend covers {covered} plotted points"
                )
    return found


def _metadata(fmt: str) -> dict:
    # SVGs without a date: reruns of the same results match
    return {"Date": None} if fmt == "svg" else {}


class NothingToDraw(LookupError):
    """A table without the rows a figure draws (say, a model-size table of one arm)."""


def _probes(table: pd.DataFrame) -> pd.DataFrame:
    probes = probe_top1(table)
    if probes.empty:
        raise NothingToDraw("no linear-probe top-1 rows in its table")
    return probes


def _seeds(table: pd.DataFrame) -> str:
    n = table.seed.nunique()
    return f"n = {n} seed{'s' if n > 1 else ''}" + (
        ", mean and 95% t-interval" if n > 1 else ", no interval"
    )


def interval95(values: pd.Series) -> tuple[float, float]:
    """The mean's 95% t-interval over seeds (a single value has none): every figure's error bars."""
    mean, n = values.mean(), len(values)
    if n < 2:
        return mean, mean
    half = t_quantile_975(n - 1) * values.std() / math.sqrt(n)
    return mean - half, mean + half


def default(key: str) -> list[Path]:
    """Linear-probe top-1 of every arm on every probe dataset."""
    table = read(key, "default")
    probes, order, palette = arms(_probes(table))
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
        **_arm_hues(order, palette),
    )
    ax.set(
        xlabel="probe dataset",
        ylabel="linear-probe top-1 (%)",
        title=f"Every arm, linear probe (higher is better)\n{setting(key)}\n{_seeds(table)}",
    )
    ax.legend(title=None, fontsize=8)
    fig.tight_layout()
    return save(fig, "default", key, ["default"], table)


def _arm_hues(order: list[str], palette: dict) -> dict:
    """seaborn's keywords for one colour per arm, in registry order (each plot names its own
    error bars)."""
    return {"hue": "arm", "hue_order": order, "palette": palette}


def setting(key: str, model: bool = True) -> str:
    """What the results rest on, for titles: the model, the pool and the precision
    (results/<key>/experiment.yaml)."""
    exp = _recorded(key)
    data = exp.get("data") or {}
    if not exp:
        return "setting not recorded"
    share = f" x {data.get('pretrain_fraction'):g}" if data.get("pretrain_fraction", 1) != 1 else ""
    pool = (
        f"pool {Path(str(data.get('pretrain'))).name}{share}, "
        f"{_precision(key) or exp.get('precision')}"
    )
    return f"ViT-{exp.get('model')}, {pool}" if model else pool


def _recorded(key: str) -> dict:
    """The resolved experiment that results/<key>/experiment.yaml records ({} where there is
    none)."""
    path = results_dir(key) / "experiment.yaml"
    return (
        ((yaml.safe_load(path.read_text()) or {}).get("experiment") or {}) if path.exists() else {}
    )


def _precision(key: str) -> str:
    """The precision the tables of results/<key>/ resolved to ('' where none records it)."""
    for path in sorted(results_dir(key).glob("*.csv")):
        try:
            found = pd.read_csv(path, usecols=["precision"])["precision"].dropna()
        except ValueError:  # a table without the column
            continue
        if len(found):
            return str(found.iloc[0])
    return ""


def plan_of(key: str) -> AnalysisConfig:
    """The analysis plan that results/<key>/ was run under (its experiment.yaml), else the default
    plan."""
    claims = _recorded(key).get("analysis")
    if not claims:
        return AnalysisConfig()
    return AnalysisConfig(alpha=claims["alpha"], **{c: ClaimPlan(**claims[c]) for c in CLAIMS})


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
        _verdict_panel(ax, c, target, first=k % columns == 0)
    for ax in list(axes.flat)[len(shown) :]:
        ax.set_axis_off()
    entries = {}
    for ax in axes.flat:
        for handle, text in zip(*ax.get_legend_handles_labels(), strict=True):
            entries.setdefault(text, handle)
    fig.legend(
        entries.values(),
        entries.keys(),
        loc="upper center",
        ncol=min(len(entries), 3),
        frameon=False,
        bbox_to_anchor=(0.5, 0.0),
        fontsize=8,
    )
    fig.suptitle(f"Each claim's primary comparisons, paired by seed\n{setting(key)}", fontsize=10)
    fig.tight_layout()
    return save(
        fig,
        "verdicts",
        key,
        ["default", "wsp_epochs", "model_size", "data_size"],
        read(key, "default"),
    )


def _verdict_panel(ax: plt.Axes, c: Comparison, target: float, first: bool) -> None:
    """One comparison: every seed's difference, the mean with the verdict's interval, the band of
    +-the planned half-width around zero (target; 0: none) and the zero line."""
    ax.axhline(0, color="black", lw=0.8)
    ax.scatter(
        np.linspace(-0.12, 0.12, c.n), c.differences, color="grey", s=14, zorder=3, label="one seed"
    )
    if c.n > 1:
        ax.errorbar(
            [0.35],
            [c.mean],
            yerr=[[c.holm_half_width]],
            fmt="o",
            color=ARMS[compared_pairs()[0][0]].color,
            capsize=4,
            label="mean, the verdict's interval (Holm-adjusted)",
        )
    if target and c.n > 1:
        ax.axhspan(
            -target,
            target,
            color="0.88",
            zorder=0,
            label="± the planned half-width: no effect beyond it where the interval lies inside",
        )
    what = textwrap.fill(c.what, 26, max_lines=4)
    ax.set(
        xlim=(-0.4, 0.75),
        xticks=[],
        ylabel="paired difference (top-1 points)" if first else "",
        title=f"({c.claim}) {c.role}\n{what}\nn = {c.n}: {c.answer(target)}",
    )
    ax.title.set_fontsize(8)


def _legend_below(fig: plt.Figure, axes: Sequence[plt.Axes]) -> None:
    """One legend for the figure, under its axes (where it covers no data), holding every entry of
    the axes' own legends once; those are removed."""
    entries = {}
    for ax in axes:
        legend = ax.get_legend()
        if legend is not None:
            for handle, text in zip(legend.legend_handles, legend.get_texts(), strict=True):
                if text.get_text() not in ("arm", "dataset"):  # seaborn's section titles
                    entries.setdefault(text.get_text(), handle)
            legend.remove()
    fig.legend(
        entries.values(),
        entries.keys(),
        loc="upper center",
        ncol=min(len(entries), 6),
        frameon=False,
        bbox_to_anchor=(0.5, 0.0),
        fontsize=8,
    )


def convergence(key: str) -> list[Path]:
    """Linear-probe top-1 against WSP epochs and against total training FLOPs (MAE's included)."""
    table = read(key, "wsp_epochs")
    flops = table[(table.stage == "pretraining") & (table.metric == "train_flops")]
    flops = flops[["arm", "wsp_epochs", "seed", "value"]].rename(columns={"value": "train_flops"})
    probes, order, palette = arms(_probes(table).merge(flops, on=["arm", "wsp_epochs", "seed"]))
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
                **_arm_hues(order, palette),
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
    _legend_below(fig, list(axes.flat))
    fig.suptitle(
        f"Every arm after full WSP schedules of each length, one run per length and seed\n"
        f"{setting(key)}; {_seeds(table)}"
    )
    fig.tight_layout()
    return save(fig, "convergence", key, ["wsp_epochs"], table)


def _paired_panel(ax: plt.Axes, diffs: pd.DataFrame, x: str, style: dict, ylabel: str) -> None:
    """The paired view: each seed's difference (dots) and their mean with its 95% t-interval, on
    categorical `x`, a dashed line at no difference."""
    dodge = "hue" in style
    sns.stripplot(
        diffs, x=x, y="diff", dodge=dodge, alpha=0.4, size=3, ax=ax, legend=False, **style
    )
    sns.pointplot(
        diffs, x=x, y="diff", dodge=0.4 if dodge else False, errorbar=interval95, ax=ax, **style
    )
    ax.axhline(0, color="0.4", linewidth=0.8, linestyle="--")
    ax.set(ylabel=ylabel)


def _minus(probes: pd.DataFrame, by: str, partner: dict) -> pd.DataFrame:
    """Each probe top-1 whose `by` is a key of `partner`, minus the same seed's and dataset's top-1
    where `by` is that key's value (pairs of the same run, unchanged by `by`, are left out)."""
    keys = ["seed", "dataset", *(c for c in ("model", "mae_data", "arm") if c != by)]
    base = probes[probes[by].isin(partner.values())][[*keys, by, "value", "run"]]
    paired = probes[probes[by].isin(partner)].assign(partner=lambda t: t[by].map(partner))
    paired = paired.merge(
        base.rename(columns={by: "partner", "value": "base", "run": "base_run"}),
        on=[*keys, "partner"],
    )
    paired = paired[paired.run != paired.base_run]
    return paired.assign(diff=paired.value - paired.base)


def model_size(key: str) -> list[Path]:
    """Linear-probe top-1 against encoder parameters, every arm; under it the paired view: MAE→WSP
    − WSP at each size, per seed."""
    table = read(key, "model_size")
    params = table[table.metric == "params"][["model", "value"]].drop_duplicates("model")
    probes, order, palette = arms(
        _probes(table).merge(params.rename(columns={"value": "params"}), on="model")
    )
    datasets = list(probes.dataset.unique())
    if not datasets:
        raise NothingToDraw("no model size with both its parameters and probes in model_size.csv")
    fig, axes = plt.subplots(2, len(datasets), figsize=(4.6 * len(datasets), 7), squeeze=False)
    sizes = params.sort_values("value").model.tolist()
    mae_wsp, wsp = ARMS["mae_wsp"].label, ARMS["wsp"].label
    diffs = _minus(probes, "arm", {mae_wsp: wsp}) if {wsp, mae_wsp} <= set(order) else None
    for col, dataset in enumerate(datasets):
        ax = axes[0, col]
        sns.lineplot(
            probes[probes.dataset == dataset],
            x="params",
            y="value",
            marker="o",
            errorbar=interval95,
            ax=ax,
            **_arm_hues(order, palette),
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
        _paired_panel(
            axes[1, col],
            diffs[diffs.dataset == dataset],
            "model",
            {"order": sizes, "color": palette[mae_wsp]},
            f"MAE→WSP − WSP, {dataset} (points)",
        )
    _legend_below(fig, list(axes.flat))
    fig.suptitle(
        f"Model size: every arm, and MAE→WSP − WSP paired by seed\n"
        f"{setting(key, model=False)}; {_seeds(table)}"
    )
    fig.tight_layout()
    return save(fig, "model_size", key, ["model_size"], table)


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
    probes, order, palette = arms(_probes(table).assign(images=lambda t: t.mae_data.map(images)))
    datasets = list(probes.dataset.unique())
    fewest = images.idxmin()
    diffs = _minus(probes, "mae_data", {point: fewest for point in images.index if point != fewest})
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
            **_arm_hues(order, palette),
        )
        ax.set_ylim(0, None)
        ax.set(
            xlabel="MAE's distinct images (same MAE steps at each)",
            ylabel=f"{dataset} linear-probe top-1 (%)",
        )
        ax.set_xticks(
            ax.get_xticks(), [f"{float(t.get_text()):,.0f}" for t in ax.get_xticklabels()]
        )
        _paired_panel(
            axes[1, col],
            diffs[diffs.dataset == dataset].assign(images=lambda t: t.images.map("{:,.0f}".format)),
            "images",
            _arm_hues(order, palette),
            f"minus {images[fewest]:,.0f} images, {dataset} (points)",
        )
        axes[1, col].set(xlabel="MAE's distinct images, paired by seed with the fewest")
    _legend_below(fig, list(axes.flat))
    fig.suptitle(
        f"Pre-pretraining data: MAE on more distinct images\n{setting(key)}; {_seeds(table)}"
    )
    fig.tight_layout()
    return save(fig, "data_size", key, ["data_size"], table)


def transfer(key: str) -> list[Path]:
    """Every transfer task, every arm of the study: fine-tune and linear; low-shot; zero-shot;
    robustness."""
    table, order, palette = arms(read(key, "transfer").fillna({"variant": ""}))
    fig, grid = plt.subplots(2, 2, figsize=(10, 8))
    axes = list(grid.flat)
    top1 = table[table.metric == "top1"]
    style = _arm_hues(order, palette)
    _whole_panel(axes[0], top1, style)
    _lowshot_panel(axes[1], top1, style)
    _zeroshot_panel(axes[2], table[table.stage == "zeroshot"], style)
    _robustness_panel(axes[3], top1, style)
    _legend_below(fig, axes)
    draws = "seeds and draws" if table.seed.nunique() > 1 else "draws"
    fig.suptitle(
        f"Transfer ({setting(key)}; {_seeds(table)}; low-shot: sd over {draws}; higher is better)"
    )
    fig.tight_layout()
    return save(fig, "transfer", key, ["transfer"], table)


def _whole_panel(ax: plt.Axes, top1: pd.DataFrame, style: dict) -> None:
    whole = top1[top1.stage.isin(["finetune", "probe"])].assign(
        task=lambda t: t.stage + " " + t.dataset
    )
    sns.barplot(whole, x="task", y="value", errorbar=interval95, ax=ax, **style)
    ax.set(title="fine-tune and linear probe", xlabel="", ylabel="top-1 (%)")
    ax.set_xticks(ax.get_xticks(), [t.get_text().replace(" ", "\n") for t in ax.get_xticklabels()])


def _lowshot_panel(ax: plt.Axes, top1: pd.DataFrame, style: dict) -> None:
    low = top1[top1.stage == "lowshot"].assign(
        shots=lambda t: t.variant.str.split("-").str[0].astype(int)
    )
    sns.lineplot(
        low,
        x="shots",
        y="value",
        style="dataset",
        marker="o",
        errorbar="sd",
        err_style="bars",
        ax=ax,
        **style,
    )
    ax.set(
        title="low-shot (mean ± sd over draws)",
        xlabel="labelled images per class",
        ylabel="top-1 (%)",
        xscale="log",
        xticks=sorted(low.shots.unique()),
        xticklabels=sorted(low.shots.unique()),
    )


def _zeroshot_panel(ax: plt.Axes, zero: pd.DataFrame, style: dict) -> None:
    sns.barplot(
        zero[zero.metric == "top1"], x="variant", y="value", errorbar=interval95, ax=ax, **style
    )
    for i, chance in enumerate(zero[zero.metric == "chance"].drop_duplicates("variant")["value"]):
        ax.hlines(
            chance, i - 0.4, i + 0.4, color="black", ls=":", label="chance" if i == 0 else None
        )
    ax.set(
        title=f"zero-shot (LiT) on {zero.dataset.iloc[0]}", xlabel="class names", ylabel="top-1 (%)"
    )
    ax.legend()


def _robustness_panel(ax: plt.Axes, top1: pd.DataFrame, style: dict) -> None:
    robust = top1[(top1.stage == "robustness") & top1.variant.str.contains("/")]
    robust = robust.assign(severity=robust.variant.str.split("/").str[1].astype(int))
    clean = top1[(top1.stage == "robustness") & (top1.variant == "clean")].assign(severity=0)
    sns.lineplot(
        pd.concat([clean, robust]),
        x="severity",
        y="value",
        style="dataset",
        marker="o",
        errorbar=None,
        ax=ax,
        **style,
    )
    ax.set(
        title="robustness: mean over corruptions", xlabel="severity (0: clean)", ylabel="top-1 (%)"
    )


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
