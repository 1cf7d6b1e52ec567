"""The paper's claims, checked against a study's tables by a stated rule: `studylib findings --preset cpu`
writes results/<key>/findings.md and findings.csv, and the README's findings table comes from them.

Every comparison is paired by seed: the same seed, data and head initialisation for both arms, so the
difference at each seed is one observation (low-shot draws are averaged within a seed first: they share
one pretraining, so they say nothing about how a pretraining varies from seed to seed). Over n pairs:
the mean difference, its 95% t-interval, and a verdict by the rule

    holds          the interval lies above 0
    contradicted   the interval lies below 0
    inconclusive   the interval holds 0, or n < 2 (no interval from one seed)

A claim made of several comparisons holds when every one holds, is contradicted when every one is
contradicted, is mixed when some hold and others are contradicted, and is inconclusive otherwise.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from studylib.config import results_dir
from studylib.errors import DataError, shown
from studylib.registry import labels
from studylib.runs import atomic_write

RULE = ("verdict per comparison: holds if the 95% interval of the paired difference lies above 0, contradicted if "
        "below 0, inconclusive if it holds 0 or n < 2; a claim holds if all its comparisons hold, is contradicted "
        "if all are contradicted, mixed if some hold and some are contradicted, inconclusive otherwise")


@dataclass
class Comparison:
    claim: str
    what: str
    differences: list[float]

    @property
    def n(self) -> int:
        return len(self.differences)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.differences)

    @property
    def half_width(self) -> float:
        """Half the 95% t-interval of the mean difference (nan for n < 2)."""
        if self.n < 2:
            return math.nan
        return t_quantile_975(self.n - 1) * statistics.stdev(self.differences) / math.sqrt(self.n)

    @property
    def verdict(self) -> str:
        if self.n < 2 or math.isnan(self.half_width):
            return "inconclusive"
        if self.mean - self.half_width > 0:
            return "holds"
        if self.mean + self.half_width < 0:
            return "contradicted"
        return "inconclusive"

    def interval(self) -> str:
        if self.n < 2:
            return "no interval (n = 1)"
        return f"[{self.mean - self.half_width:+.2f}, {self.mean + self.half_width:+.2f}]"


# Two-sided 95% quantiles of Student's t by degrees of freedom; beyond 30, the normal's 1.96 is within 2%.
_T975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
         2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042]


def t_quantile_975(df: int) -> float:
    return _T975[df - 1] if df <= len(_T975) else 1.96


def claim_verdict(verdicts: list[str]) -> str:
    if verdicts and all(v == "holds" for v in verdicts):
        return "holds"
    if verdicts and all(v == "contradicted" for v in verdicts):
        return "contradicted"
    if "holds" in verdicts and "contradicted" in verdicts:
        return "mixed"
    return "inconclusive"


def paired(table: pd.DataFrame, a: str = "mae_wsp", b: str = "wsp") -> list[float]:
    """Differences a - b of `value` (averaged within a seed), one per seed that both arms have."""
    wide = table.pivot_table(index="seed", columns="arm", values="value", aggfunc="mean")
    if a not in wide or b not in wide:
        return []
    return (wide[a] - wide[b]).dropna().tolist()


def _probe_top1(table: pd.DataFrame) -> pd.DataFrame:
    return table[(table.stage == "probe") & (table.metric == "top1")]


def _read(key: str, study: str) -> pd.DataFrame | None:
    path = results_dir(key) / f"{study}.csv"
    return table_from(path) if path.exists() else None


def table_from(path: Path) -> pd.DataFrame:
    """A study's table as written by studylib.study; a file that is not one is a DataError naming it."""
    try:
        table = pd.read_csv(path)
    except (ValueError, OSError, UnicodeDecodeError) as err:  # pandas' ParserError is a ValueError
        raise DataError(f"{path}: not a readable study table ({shown(' '.join(str(err).split()), 100)}); "
                        "allowed: the CSV a study writes (rerun the study)") from None
    missing = [c for c in ("arm", "stage", "metric", "value", "seed") if c not in table]
    if missing or not pd.api.types.is_numeric_dtype(table["value"]):
        found = f"no column {missing[0]!r}" if missing else "a value that is not a number"
        raise DataError(f"{path}: not a study table ({found}); allowed: the CSV a study writes (rerun the study)")
    return table


def comparisons(key: str) -> list[Comparison]:
    """Every comparison the tables under results/<key>/ allow, claim by claim."""
    found: list[Comparison] = []
    default = _read(key, "default")
    if default is not None:
        for dataset, part in _probe_top1(default).groupby("dataset", sort=False):
            found.append(Comparison("a", f"linear probe on {dataset}", paired(part)))
    transfer = _read(key, "transfer")
    if transfer is not None:
        top1 = transfer[(transfer.metric == "top1") & ~transfer.variant.fillna("").str.contains("/")]
        top1 = top1[~((top1.stage == "robustness") & (top1.variant == "clean"))]
        for (task, dataset, variant), part in top1.groupby(["stage", "dataset", top1.variant.fillna("")], sort=False):
            if task == "probe" and default is not None:
                continue  # the default study's probe, above
            found.append(Comparison("a", f"{task} {variant} on {dataset}".replace("  ", " "), paired(part)))
    epochs = _read(key, "wsp_epochs")
    if epochs is not None:
        probes = _probe_top1(epochs)
        for (wsp_epochs, dataset), part in probes.groupby(["wsp_epochs", "dataset"], sort=True):
            found.append(Comparison("b", f"after {int(wsp_epochs)} WSP epochs, {dataset}", paired(part)))
        found += _per_flop(epochs)
    sizes = _read(key, "model_size")
    if sizes is not None:
        for (model, dataset), part in _probe_top1(sizes).groupby(["model", "dataset"], sort=False):
            found.append(Comparison("c", f"{model}, {dataset}", paired(part)))
    data = _read(key, "data_size")
    if data is not None:
        found += _data_size(data)
    return found


def _per_flop(table: pd.DataFrame) -> list[Comparison]:
    """MAE→WSP against WSP at matched training compute (MAE's FLOPs counted): each MAE→WSP point paired with
    the WSP point whose FLOPs are closest, when the two are within a factor 1.5 of each other."""
    flops = table[(table.stage == "pretraining") & (table.metric == "train_flops")]
    mean_flops = flops.groupby(["arm", "wsp_epochs"])["value"].mean()
    if "mae_wsp" not in mean_flops or "wsp" not in mean_flops:
        return []
    found = []
    probes = _probe_top1(table)
    for mae_epochs, compute in mean_flops["mae_wsp"].items():
        wsp_epochs, wsp_compute = min(mean_flops["wsp"].items(), key=lambda kv: abs(math.log(kv[1] / compute)))
        if max(compute, wsp_compute) / min(compute, wsp_compute) > 1.5:
            continue
        for dataset, part in probes.groupby("dataset", sort=False):
            mine = part[(part.arm == "mae_wsp") & (part.wsp_epochs == mae_epochs)].set_index("seed")["value"]
            theirs = part[(part.arm == "wsp") & (part.wsp_epochs == wsp_epochs)].set_index("seed")["value"]
            found.append(Comparison("b", f"per FLOP: MAE→WSP with {int(mae_epochs)} WSP epochs ({compute:.2g} FLOPs) "
                                         f"vs WSP {int(wsp_epochs)} epochs ({wsp_compute:.2g}), {dataset}",
                                    (mine - theirs).dropna().tolist()))
    return found


def _data_size(table: pd.DataFrame) -> list[Comparison]:
    """MAE→WSP (and MAE alone, where studied) with the most pre-pretraining images against the fewest."""
    images = table[(table.stage == "mae") & (table.metric == "images")].groupby("mae_data")["value"].mean()
    if len(images) < 2:
        return []
    fewest, most = images.idxmin(), images.idxmax()
    found = []
    probes = _probe_top1(table)
    for arm in ("mae", "mae_wsp"):
        for dataset, part in probes[probes.arm == arm].groupby("dataset", sort=False):
            wide = part.pivot_table(index="seed", columns="mae_data", values="value")
            if most in wide and fewest in wide:
                found.append(Comparison(
                    "d", f"{labels()[arm]}: MAE on {most} ({images[most]:.0f} images) vs {fewest} "
                         f"({images[fewest]:.0f}), {dataset}", (wide[most] - wide[fewest]).dropna().tolist()))
    return found


def below_random(key: str) -> str:
    """The arms whose mean linear-probe top-1 in the default study is below the random-init arm's."""
    default = _read(key, "default")
    if default is None or "random" not in set(default.arm):
        return "not known: no random-init arm in these results"
    means = _probe_top1(default).groupby(["dataset", "arm"])["value"].mean()
    below = [f"{labels()[arm]} on {dataset}: {value:.2f} < random init {means[dataset, 'random']:.2f}"
             for (dataset, arm), value in means.items() if arm != "random" and value < means[dataset, "random"]]
    return "; ".join(below) or "none"


CLAIMS = {"a": "MAE→WSP beats WSP in transfer", "b": "MAE→WSP converges faster (per WSP epoch; per training FLOP, "
          "MAE's counted)", "c": "MAE→WSP beats WSP at every model size", "d": "more pre-pretraining data helps MAE"}


def finetune_against_probe(key: str) -> list[Comparison]:
    """Per arm and dataset: the fine-tuned encoder's top-1 minus the linear probe's on the same encoder
    (transfer study against default study, paired by seed). Fine-tuning should come out ahead."""
    transfer, default = _read(key, "transfer"), _read(key, "default")
    if transfer is None or default is None:
        return []
    tuned = transfer[(transfer.stage == "finetune") & (transfer.metric == "top1")]
    probes = _probe_top1(default)
    found = []
    for (arm, dataset), part in tuned.groupby(["arm", "dataset"], sort=False):
        mine = part.groupby("seed")["value"].mean().rename("tuned")
        theirs = probes[(probes.arm == arm) & (probes.dataset == dataset)].groupby("seed")["value"].mean()
        both = pd.concat([mine, theirs.rename("probe")], axis=1, join="inner")  # the seeds that have both
        seeds = ("seed " if len(both) == 1 else "seeds ") + ", ".join(str(s) for s in both.index)
        found.append(Comparison("finetune", f"{labels()[arm]} on {dataset} ({seeds}): fine-tune "
                                            f"{both.tuned.mean():.2f} vs linear probe {both.probe.mean():.2f}",
                                (both.tuned - both.probe).tolist()))
    return found


def arm_table(key: str) -> list[str]:
    """Markdown rows: each arm's linear-probe top-1 in the default study per dataset, mean with its 95%
    t-interval over seeds, n, and the per-seed values."""
    default = _read(key, "default")
    if default is None:
        return []
    lines = ["| arm | dataset | mean top-1 | 95% interval | n | per seed |", "| --- | --- | ---: | --- | ---: | --- |"]
    probes = _probe_top1(default)
    for (dataset, arm), part in probes.groupby(["dataset", "arm"], sort=False):
        values = part.sort_values("seed")["value"].tolist()
        spread = Comparison("", "", values)
        interval = spread.interval() if spread.n > 1 else "no interval (n = 1)"
        lines.append(f"| {labels()[arm]} | {dataset} | {spread.mean:.2f} | {interval.replace('+', '')} | {spread.n} "
                     f"| {', '.join(f'{v:.2f}' for v in values)} |")
    return lines


def report(key: str, found: list[Comparison] | None = None) -> str:
    """findings.md: each arm's linear-probe top-1, then each claim's comparisons (difference, n, 95%
    interval, verdict) and its verdict."""
    found = comparisons(key) if found is None else found
    lines = [f"**Findings of `{key}`**", ""]
    arms = arm_table(key)
    if arms:
        lines += ["Linear-probe top-1 (%) of every arm, default study:", "", *arms, ""]
    lines += [f"Differences are paired, in top-1 points. Rule: {RULE}.", ""]
    lines += ["| claim | comparison | difference | n | 95% interval | verdict |",
              "| --- | --- | ---: | ---: | --- | --- |"]
    for claim, text in CLAIMS.items():
        mine = [c for c in found if c.claim == claim and c.n]
        if not mine:
            lines.append(f"| ({claim}) {text} | not studied in these results | | | | |")
            continue
        lines.append(f"| **({claim}) {text}** | **claim** | | | | **{claim_verdict([c.verdict for c in mine])}** |")
        lines += [f"| | {c.what} | {c.mean:+.2f} | {c.n} | {c.interval()} | {c.verdict} |" for c in mine]
    checks = [c for c in finetune_against_probe(key) if c.n]
    if checks:
        lines += ["", "Fine-tuning against the linear probe of the same encoder (same rule; it should hold):", "",
                  "| encoder and dataset | difference | n | 95% interval | verdict |",
                  "| --- | ---: | ---: | --- | --- |"]
        lines += [f"| {c.what} | {c.mean:+.2f} | {c.n} | {c.interval()} | {c.verdict} |" for c in checks]
        if any(c.mean <= 0 for c in checks):
            lines += ["", "Where fine-tuning is not ahead: it starts from the linear probe's head (LP-FT) and trains "
                      "every weight on the probe's own training images, so it ends below the probe only when its "
                      "steps (transfer.finetune) overfit those few images or move the encoder off what the probe "
                      "read; it is not a failed optimisation from a random head."]
    lines += ["", f"Arms below the random-init baseline (default study, linear probe): {below_random(key)}"]
    return "\n".join(lines) + "\n"


def write(key: str) -> str:
    """Write results/<key>/findings.md and findings.csv; returns the markdown."""
    found = comparisons(key)
    text = report(key, found)
    rows = [{"claim": c.claim, "comparison": c.what, "difference": c.mean, "n": c.n, "half_width_95": c.half_width,
             "verdict": c.verdict} for c in found if c.n]
    folder = results_dir(key)
    atomic_write(folder / "findings.md", lambda f: f.write(text))
    atomic_write(folder / "findings.csv", lambda f: pd.DataFrame(rows).to_csv(f, index=False))
    return text
