"""The panels the figures are built from: a claim's paired differences with the interval its
verdict used, a paired-difference panel per size or data point, and the transfer tasks' panels."""

from __future__ import annotations

import os
import textwrap

import matplotlib

matplotlib.use(os.environ.get("MPLBACKEND", "Agg"))

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from studylib.comparisons import Comparison  # noqa: E402
from studylib.plotting import interval95  # noqa: E402
from studylib.registry import ARMS, compared_pairs  # noqa: E402


def verdict_panel(ax: plt.Axes, c: Comparison, target: float, first: bool) -> None:
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


def paired_panel(ax: plt.Axes, diffs: pd.DataFrame, x: str, style: dict, ylabel: str) -> None:
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


def paired_minus(probes: pd.DataFrame, by: str, partner: dict) -> pd.DataFrame:
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


def whole_panel(ax: plt.Axes, top1: pd.DataFrame, style: dict) -> None:
    whole = top1[top1.stage.isin(["finetune", "probe"])].assign(
        task=lambda t: t.stage + " " + t.dataset
    )
    sns.barplot(whole, x="task", y="value", errorbar=interval95, ax=ax, **style)
    ax.set(title="fine-tune and linear probe", xlabel="", ylabel="top-1 (%)")
    ax.set_xticks(ax.get_xticks(), [t.get_text().replace(" ", "\n") for t in ax.get_xticklabels()])


def lowshot_panel(ax: plt.Axes, top1: pd.DataFrame, style: dict) -> None:
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


def zeroshot_panel(ax: plt.Axes, zero: pd.DataFrame, style: dict) -> None:
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


def robustness_panel(ax: plt.Axes, top1: pd.DataFrame, style: dict) -> None:
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
