"""What every figure shares: the style, one save (PNG and SVG, with the commit and the tables
drawn in their metadata, checked for overlapping text), tables read for drawing, arm colours,
95% intervals, titles that say what the results rest on, and legends under the panels."""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use(os.environ.get("MPLBACKEND", "Agg"))

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
import yaml  # noqa: E402

from studylib.comparisons import probe_top1, read_table, t_quantile_975  # noqa: E402
from studylib.experiment import AnalysisConfig, ClaimPlan  # noqa: E402
from studylib.findings import CLAIMS  # noqa: E402
from studylib.io import atomic_write, git_sha  # noqa: E402
from studylib.paths import REPO_ROOT, figures_dir, results_dir  # noqa: E402
from studylib.registry import ARMS  # noqa: E402

FORMATS = ("png", "svg")


def arms(table: pd.DataFrame) -> tuple[pd.DataFrame, list[str], dict[str, str]]:
    """`table` with each arm named by its label (figures are for people), then the labels of the
    arms it holds in the registry's order (the legend's order) and their colours."""
    present = [arm for name, arm in ARMS.items() if name in set(table.arm.dropna())]
    labelled = table.assign(arm=table.arm.map({a.name: a.label for a in present}))
    return labelled, [a.label for a in present], {a.label: a.color for a in present}


def relative_path(path: Path) -> str:
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
                f, format=fmt, bbox_inches="tight", dpi=150, metadata=file_metadata(fmt)
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
        "sources": [relative_path(results_dir(key) / f"{s}.csv") for s in sources],
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


def file_metadata(fmt: str) -> dict:
    # SVGs without a date: reruns of the same results match
    return {"Date": None} if fmt == "svg" else {}


class NothingToDraw(LookupError):
    """A table without the rows a figure draws (say, a model-size table of one arm)."""


def probe_rows(table: pd.DataFrame) -> pd.DataFrame:
    probes = probe_top1(table)
    if probes.empty:
        raise NothingToDraw("no linear-probe top-1 rows in its table")
    return probes


def seeds_text(table: pd.DataFrame) -> str:
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


def arm_hues(order: list[str], palette: dict) -> dict:
    """seaborn's keywords for one colour per arm, in registry order (each plot names its own
    error bars)."""
    return {"hue": "arm", "hue_order": order, "palette": palette}


def legend_below(fig: plt.Figure, entries: dict[str, Any], columns: int) -> None:
    """One legend under all of `fig`'s panels: `entries` (label -> handle), `columns` a row."""
    fig.legend(
        entries.values(),
        entries.keys(),
        loc="upper center",
        ncol=min(len(entries), columns),
        frameon=False,
        bbox_to_anchor=(0.5, 0.0),
        fontsize=8,
    )


def setting(key: str, model: bool = True) -> str:
    """What the results rest on, for titles: the model, the pool and the precision
    (results/<key>/experiment.yaml)."""
    exp = recorded_experiment(key)
    data = exp.get("data") or {}
    if not exp:
        return "setting not recorded"
    share = f" x {data.get('pretrain_fraction'):g}" if data.get("pretrain_fraction", 1) != 1 else ""
    pool = (
        f"pool {Path(str(data.get('pretrain'))).name}{share}, "
        f"{precision_text(key) or exp.get('precision')}"
    )
    return f"ViT-{exp.get('model')}, {pool}" if model else pool


def recorded_experiment(key: str) -> dict:
    """The resolved experiment that results/<key>/experiment.yaml records ({} where there is
    none)."""
    path = results_dir(key) / "experiment.yaml"
    return (
        ((yaml.safe_load(path.read_text()) or {}).get("experiment") or {}) if path.exists() else {}
    )


def precision_text(key: str) -> str:
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
    claims = recorded_experiment(key).get("analysis")
    if not claims:
        return AnalysisConfig()
    return AnalysisConfig(alpha=claims["alpha"], **{c: ClaimPlan(**claims[c]) for c in CLAIMS})


def finish(fig: plt.Figure, axes: Sequence[plt.Axes], title: str) -> plt.Figure:
    """`fig`, its panels done: one legend under them (legend_from_axes), its title, laid out."""
    legend_from_axes(fig, list(axes))
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def legend_from_axes(fig: plt.Figure, axes: Sequence[plt.Axes]) -> None:
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
    legend_below(fig, entries, columns=6)
