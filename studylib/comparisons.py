"""A study's tables, read and checked, and the paired comparisons they hold: each a `Comparison`
of two arms' values by seed (same seed, data and head initialisation for both arms; low-shot draws
averaged within a seed first), with a stable key such as `probe/cifar100`, its mean difference,
95% interval, paired t-test p-value (scipy) and, once studylib.findings has applied a claim's
Holm correction, its verdict.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from studylib.errors import DataError, shown
from studylib.paths import results_dir
from studylib.registry import compared_pairs, labels


@dataclass
class Comparison:
    claim: str
    key: str  # stable name, the one the analysis plan uses
    what: str
    differences: list[float]
    runs: tuple[str, ...] = ()  # the runs it pairs: the same runs in two claims are one result
    role: str = ""  # primary, secondary, descriptive (n < 2), or 'repeat of (x) KEY'
    study: str = ""  # the study whose table holds it
    declared_descriptive: bool = False  # its claim's plan says descriptive: no verdict word
    p_holm: float = math.nan  # p after Holm's correction within the claim (nan: not tested)
    alpha: float = 0.05

    @property
    def n(self) -> int:
        return len(self.differences)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.differences)

    @property
    def sd(self) -> float:
        return statistics.stdev(self.differences) if self.n > 1 else math.nan

    @property
    def half_width(self) -> float:
        """Half the 95% t-interval of the mean difference (nan for n < 2)."""
        return t_quantile_975(self.n - 1) * self.sd / math.sqrt(self.n) if self.n > 1 else math.nan

    @property
    def p(self) -> float:
        """Two-sided p of the paired t-test against no difference (nan for n < 2 or no spread)."""
        if self.n < 2 or self.sd == 0:
            return math.nan
        from scipy import stats

        return float(stats.ttest_1samp(self.differences, 0.0).pvalue)

    @property
    def verdict(self) -> str:
        """By the corrected p where the claim's family tested it, else by the 95% interval alone."""
        if self.role.startswith("repeat"):
            return self.role
        if self.declared_descriptive:
            return "descriptive"
        if self.role == "descriptive" or self.n < 2 or not self.sd > 0:
            return "inconclusive"  # no spread: no t-test, no interval to decide by
        if not math.isnan(self.p_holm):
            significant = self.p_holm < self.alpha
        else:
            significant = not math.isnan(self.half_width) and abs(self.mean) > self.half_width
        return "inconclusive" if not significant else "holds" if self.mean > 0 else "contradicted"

    def answer(self, target: float) -> str:
        """The verdict; for an inconclusive one whose interval (the Holm-adjusted one the verdict
        used) lies inside +-target, the planned half-width: no effect beyond it."""
        bounded = self.n > 1 and abs(self.mean) + self.holm_half_width <= target
        if self.verdict == "inconclusive" and target > 0 and bounded:
            return f"no effect beyond ±{target:g}"
        return self.verdict

    @property
    def holm_half_width(self) -> float:
        """Half the t-interval that the verdict used: at two-sided level alpha / k, k = p_holm / p
        (Holm's factor for this comparison), so it excludes 0 exactly when p_holm < alpha; the 95%
        one where the claim's family did not test it."""
        if self.n < 2 or math.isnan(self.p_holm) or not self.p > 0:
            return self.half_width
        from scipy import stats

        level = self.alpha * self.p / self.p_holm
        return float(stats.t.ppf(1 - level / 2, self.n - 1)) * self.sd / math.sqrt(self.n)

    def interval(self) -> str:
        if self.n < 2:
            return "no interval (n = 1)"
        return f"[{self.mean - self.half_width:+.2f}, {self.mean + self.half_width:+.2f}]"

    def sentence(self) -> str:
        """The comparison in words, with its n, interval and corrected p."""
        p = f", Holm-corrected p = {self.p_holm:.2g}" if not math.isnan(self.p_holm) else ""
        if self.n > 1 and self.sd == 0:
            p = ", every seed the same difference (sd 0): no t-test, no verdict"
        return (
            f"{self.what}: {self.mean:+.2f} points, 95% interval {self.interval()}, n = {self.n}{p}"
        )


def t_quantile_975(df: int) -> float:
    """Student's t quantile of a two-sided 95% interval (scipy)."""
    from scipy import stats

    return float(stats.t.ppf(0.975, df))


def paired(table: pd.DataFrame, a: str, b: str) -> tuple[list[float], tuple[str, ...]]:
    """Differences a - b of `value` (averaged within a seed), one per seed that both arms have, and
    the runs."""
    wide = table.pivot_table(index="seed", columns="arm", values="value", aggfunc="mean")
    if a not in wide or b not in wide:
        return [], ()
    both = table[table.arm.isin([a, b]) & table.seed.isin(wide[[a, b]].dropna().index)]
    runs = tuple(sorted(both["run"].dropna().astype(str))) if "run" in both else ()
    return (wide[a] - wide[b]).dropna().tolist(), runs


def probe_top1(table: pd.DataFrame) -> pd.DataFrame:
    """The linear-probe top-1 rows of a study table."""
    return table[(table.stage == "probe") & (table.metric == "top1")]


def read_table(key: str, study: str) -> pd.DataFrame | None:
    """results/<key>/<study>.csv (see table_from), or None where the study has not run."""
    path = results_dir(key) / f"{study}.csv"
    return table_from(path) if path.exists() else None


def table_from(path: Path) -> pd.DataFrame:
    """A study's table as written by studylib.study; a file that is not one is a DataError naming
    it."""
    try:
        table = pd.read_csv(path)
    except (ValueError, OSError, UnicodeDecodeError) as err:  # pandas' ParserError is a ValueError
        raise DataError(
            f"{path}: not a readable study table ({shown(' '.join(str(err).split()), 100)}); "
            "allowed: the CSV a study writes (rerun the study)"
        ) from None
    needed = ("arm", "stage", "metric", "value", "seed", *STUDY_COLUMNS.get(path.stem, ()))
    missing = [c for c in needed if c not in table]
    if missing or not pd.api.types.is_numeric_dtype(table["value"]):
        found = f"no column {missing[0]!r}" if missing else "a value that is not a number"
        raise DataError(
            f"{path}: not a study table ({found}); allowed: the CSV a study writes (rerun the "
            "study)"
        )
    _check_rows(path, table)
    table = table.reindex(columns=[*table.columns, *(c for c in OPTIONAL if c not in table)])
    if "precision" in table and table["precision"].nunique() > 1:
        raise DataError(
            f"{path}: rows of precisions {sorted(table['precision'].dropna().unique())} in one "
            "table; allowed: one precision (rerun the study with --set precision=...)"
        )
    return table


# what each study's comparisons read beside arm, stage, metric, value and seed
STUDY_COLUMNS = {
    "default": ("dataset",),
    "transfer": ("dataset", "variant"),
    "wsp_epochs": ("dataset", "wsp_epochs"),
    "model_size": ("dataset", "model"),
    "data_size": ("dataset", "mae_data"),
}
OPTIONAL = ("model", "mae_data", "wsp_epochs", "dataset", "variant", "run")  # blank where absent


def _check_rows(path: Path, table: pd.DataFrame) -> None:
    """Rows the comparisons can pair: whole-number seeds (or none), registered arms, a dataset on
    every top-1."""
    seeds = pd.to_numeric(table.seed, errors="coerce")
    bad = table.seed[table.seed.notna() & (seeds.isna() | (seeds != seeds.round()))]
    arms = set(table.arm.dropna().astype(str)) - set(labels())
    top1 = table[table.metric == "top1"]
    blank = "dataset" in table and top1.dataset.isna().any()
    if len(bad) or arms or blank:
        found = (
            f"seed {shown(bad.iloc[0], 20)} is not a whole number"
            if len(bad)
            else f"arm {sorted(arms)[0]!r} is not a registered arm ({sorted(labels())})"
            if arms
            else "a top1 row without its dataset"
        )
        raise DataError(
            f"{path}: {found}; allowed: the CSV a study writes (rerun the study, or fix that row)"
        )


def compare(claim: str, key: str, what: str, part: pd.DataFrame, a: str, b: str) -> Comparison:
    differences, runs = paired(part, a, b)
    study = {"b": "wsp_epochs", "c": "model_size", "d": "data_size"}.get(claim, "")
    study = study or ("default" if key.startswith("probe/") else "transfer")
    return Comparison(claim, key, what, differences, runs, study=study)


def _transfer(transfer: pd.DataFrame, a: str, b: str) -> list[Comparison]:
    """Transfer tasks but the probe (the default study's): robustness as the drop from clean
    accuracy."""
    top1 = transfer[(transfer.metric == "top1") & ~transfer.variant.fillna("").str.contains("/")]
    top1 = top1[top1.stage != "probe"].assign(variant=top1.variant.fillna(""))
    robust = top1[top1.stage == "robustness"].pivot_table(
        index=["arm", "seed", "dataset"], columns="variant", values="value"
    )
    found = []
    for (task, dataset, variant), part in top1.groupby(["stage", "dataset", "variant"], sort=False):
        if task == "robustness":
            if variant != "mean":
                continue
            drop = (robust["mean"] - robust["clean"]).rename("value").reset_index()
            part = drop[drop.dataset == dataset].assign(run=None)
            variant = "drop from clean"
        key = "/".join(x for x in (task, variant.replace(" ", "_"), dataset) if x)
        note = (
            " (in-distribution: its class names are WSP's hashtags)" if task == "zeroshot" else ""
        )
        found.append(
            compare("a", key, f"{task} {variant} on {dataset}{note}".replace("  ", " "), part, a, b)
        )
    return found


def comparisons(key: str) -> list[Comparison]:
    """Every comparison the tables under results/<key>/ allow, claim by claim, for each pair of arms
    the registry declares (Arm.beats); the first pair's keys are bare, another's start with
    'ARM-BASELINE/'."""
    studies = ("default", "transfer", "wsp_epochs", "model_size", "data_size")
    tables = {study: read_table(key, study) for study in studies}
    found: list[Comparison] = []
    for k, (a, b) in enumerate(compared_pairs()):
        mine = _comparisons_of(tables, a, b)
        if k:
            named = f"{labels().get(a, a)} − {labels().get(b, b)}: "
            mine = [
                dataclasses.replace(c, key=f"{a}-{b}/{c.key}", what=named + c.what) for c in mine
            ]
        found += mine
    if (data := tables["data_size"]) is not None:  # within an arm: once, not once per pair
        found += _data_size(data, list(dict.fromkeys(a for a, _ in compared_pairs())))
    return found


def _comparisons_of(tables: dict[str, pd.DataFrame | None], a: str, b: str) -> list[Comparison]:
    """Arm `a` against arm `b` in every table there is."""
    found: list[Comparison] = []
    if (default := tables["default"]) is not None:
        for dataset, part in probe_top1(default).groupby("dataset", sort=False):
            found.append(compare("a", f"probe/{dataset}", f"linear probe on {dataset}", part, a, b))
    if (transfer := tables["transfer"]) is not None:
        found += _transfer(transfer, a, b)
    if (epochs := tables["wsp_epochs"]) is not None:
        for (wsp_epochs, dataset), part in probe_top1(epochs).groupby(
            ["wsp_epochs", "dataset"], sort=True
        ):
            found.append(
                compare(
                    "b",
                    f"epochs{int(wsp_epochs)}/{dataset}",
                    f"after {int(wsp_epochs)} WSP epochs, {dataset}",
                    part,
                    a,
                    b,
                )
            )
    if (sizes := tables["model_size"]) is not None:
        for (model, dataset), part in probe_top1(sizes).groupby(["model", "dataset"], sort=False):
            found.append(compare("c", f"{model}/{dataset}", f"{model}, {dataset}", part, a, b))
    return found


def _data_size(table: pd.DataFrame, arms: list[str]) -> list[Comparison]:
    """MAE alone and each of `arms` with the most pre-pretraining images against the fewest."""
    images = (
        table[(table.stage == "mae") & (table.metric == "images")]
        .groupby("mae_data")["value"]
        .mean()
    )
    if len(images) < 2:
        return []
    fewest, most = images.idxmin(), images.idxmax()
    found = []
    probes = probe_top1(table)
    for arm in dict.fromkeys(["mae", *arms]):
        for dataset, part in probes[probes.arm == arm].groupby("dataset", sort=False):
            part = part[part.mae_data.isin([most, fewest])].assign(arm=part.mae_data)
            found.append(
                compare(
                    "d",
                    f"{arm}/{dataset}",
                    f"{labels()[arm]}: MAE on {images[most]:,.0f} images vs "
                    f"{images[fewest]:,.0f}, {dataset}",
                    part,
                    most,
                    fewest,
                )
            )
    return found
