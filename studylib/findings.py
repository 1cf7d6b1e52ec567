"""The paper's claims, checked against a study's tables by an analysis plan declared before the runs
(`analysis` in experiments.yaml): `studylib findings --preset cpu` writes results/<key>/findings.md
and findings.csv, and `--readme` puts the same text, prose included, into the README.

Every comparison is paired by seed (same seed, data and head initialisation for both arms; low-shot
draws averaged within a seed first) and has a stable key, e.g. `probe/cifar100`. Each claim has one
primary comparison, which decides it, and secondary ones; a paired t-test (scipy) gives each a
p-value, and Holm's correction (statsmodels) runs over the claim's primary and secondaries with n >=
2. A secondary comparison that pairs the same runs as one of an earlier claim is that result again:
shown, not counted twice (a primary is always its own claim's test). One-seed comparisons are
descriptive only.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import math
import statistics
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from studylib.config import AnalysisConfig, config_hash, results_dir
from studylib.errors import DataError, shown
from studylib.io import atomic_write
from studylib.registry import compared_pairs, labels

RULE = (
    "each comparison is a paired t-test over seeds; within a claim, Holm's correction over its "
    "primary and secondary comparisons with n >= 2; a comparison holds if its corrected p < "
    "alpha and the mean difference is above 0, is contradicted if p < alpha and below 0, and is "
    "inconclusive otherwise (or with n < 2); a claim's verdict is its primary comparison's, or, "
    "where the plan names several (a claim at every size: an intersection-union test), holds "
    "only if each holds and is contradicted if any is; an inconclusive claim whose primary "
    "intervals (Holm-adjusted) lie inside +-its planned half-width answers 'no effect beyond' "
    "it; a claim the plan declared descriptive before its confirmation gets no verdict word"
)

CLAIMS = {
    "a": "MAE→WSP beats WSP in transfer",
    "b": "MAE→WSP converges faster (per WSP epoch; per training FLOP, MAE's counted)",
    "c": "MAE→WSP beats WSP at every model size",
    "d": "more pre-pretraining data helps MAE",
}


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


def _compare(claim: str, key: str, what: str, part: pd.DataFrame, a: str, b: str) -> Comparison:
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
            _compare(
                "a", key, f"{task} {variant} on {dataset}{note}".replace("  ", " "), part, a, b
            )
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
            found.append(
                _compare("a", f"probe/{dataset}", f"linear probe on {dataset}", part, a, b)
            )
    if (transfer := tables["transfer"]) is not None:
        found += _transfer(transfer, a, b)
    if (epochs := tables["wsp_epochs"]) is not None:
        for (wsp_epochs, dataset), part in probe_top1(epochs).groupby(
            ["wsp_epochs", "dataset"], sort=True
        ):
            found.append(
                _compare(
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
            found.append(_compare("c", f"{model}/{dataset}", f"{model}, {dataset}", part, a, b))
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
                _compare(
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


def analyse(found: list[Comparison], plan: AnalysisConfig) -> list[Comparison]:
    """Give each comparison its role by the plan and Holm's corrected p within its claim."""
    from statsmodels.stats.multitest import multipletests

    counted: dict[tuple[str, ...], Comparison] = {}
    for claim in CLAIMS:
        rules: dict = dataclasses.asdict(getattr(plan, claim))
        family = []
        for c in (c for c in found if c.claim == claim and c.n):
            c.alpha = plan.alpha
            earlier = counted.get(c.runs) if c.runs else None
            if c.key == rules["primary"] or c.key in rules["every"]:
                c.role = "primary"  # a claim's own test, even where an earlier claim has its runs
            elif earlier is not None and earlier.claim != claim:
                c.role = f"repeat of ({earlier.claim}) {earlier.key}"
            elif any(fnmatch.fnmatchcase(c.key, p) for p in rules["secondary"]):
                c.role = "secondary"
            else:
                continue
            if c.n < 2 and c.role == "secondary":
                c.role = "descriptive"
            c.declared_descriptive = bool(rules["descriptive"])
            if c.role in ("primary", "secondary"):
                family.append(c)
                counted.setdefault(c.runs, c) if c.runs else None
        tested = [c for c in family if not math.isnan(c.p)]
        if tested:
            corrected = multipletests([c.p for c in tested], alpha=plan.alpha, method="holm")[1]
            for c, p in zip(tested, corrected, strict=True):
                c.p_holm = float(p)
    return [c for c in found if c.role]


def claim_verdict(mine: list[Comparison], target: float = 0.0) -> str:
    """The primary's verdict; with several primaries (analysis.X.every), holds only if each
    holds, contradicted if any is. An inconclusive claim whose every primary interval (the
    Holm-adjusted one its verdict used) lies inside +-target, the planned half-width, answers:
    no effect beyond it."""
    primary = [c for c in mine if c.role == "primary"]
    verdicts = {c.verdict for c in primary}
    if not verdicts:
        return "no primary comparison in these results"
    verdict = (
        verdicts.pop()
        if len(verdicts) == 1
        else "contradicted"
        if "contradicted" in verdicts
        else "inconclusive"
    )
    answers = {c.answer(target) for c in primary}
    return answers.pop() if verdict == "inconclusive" and len(answers) == 1 else verdict


def below_random(key: str) -> str:
    """The arms whose mean linear-probe top-1 in the default study is below the random-init
    arm's."""
    default = read_table(key, "default")
    if default is None or "random" not in set(default.arm):
        return "not known: no random-init arm in these results"
    means = probe_top1(default).groupby(["dataset", "arm"])["value"].mean()
    below = [
        f"{labels()[arm]} on {dataset}: {value:.2f} < random init {means[dataset, 'random']:.2f}"
        for (dataset, arm), value in means.items()
        if arm != "random" and value < means[dataset, "random"]
    ]
    return "; ".join(below) or "none"


def premise(key: str) -> list[Comparison]:
    """The paper's premise, paired by seed in the default study: WSP beats random init, and WSP
    beats MAE alone."""
    default = read_table(key, "default")
    if default is None:
        return []
    found = []
    for dataset, part in probe_top1(default).groupby("dataset", sort=False):
        for other in ("random", "mae"):
            c = _compare(
                "premise",
                f"wsp-{other}/{dataset}",
                f"WSP − {labels().get(other, other)} on {dataset}",
                part,
                "wsp",
                other,
            )
            found += [c] if c.n else []
    return found


def finetune_against_probe(key: str) -> list[Comparison]:
    """Per arm and dataset: the fine-tuned encoder's top-1 minus the linear probe's on the same
    encoder (transfer study against default study, paired by seed). Fine-tuning should come out
    ahead."""
    transfer, default = read_table(key, "transfer"), read_table(key, "default")
    if transfer is None or default is None:
        return []
    tuned = transfer[(transfer.stage == "finetune") & (transfer.metric == "top1")]
    probes = probe_top1(default)
    found = []
    for (arm, dataset), part in tuned.groupby(["arm", "dataset"], sort=False):
        mine = part.groupby("seed")["value"].mean().rename("tuned")
        theirs = (
            probes[(probes.arm == arm) & (probes.dataset == dataset)]
            .groupby("seed")["value"]
            .mean()
        )
        # the seeds that have both
        both = pd.concat([mine, theirs.rename("probe")], axis=1, join="inner")
        seeds = ("seed " if len(both) == 1 else "seeds ") + ", ".join(str(s) for s in both.index)
        found.append(
            Comparison(
                "finetune",
                f"finetune-probe/{arm}/{dataset}",
                f"{labels()[arm]} on {dataset} ({seeds}): fine-tune {both.tuned.mean():.2f} vs "
                f"linear probe {both.probe.mean():.2f}",
                (both.tuned - both.probe).tolist(),
            )
        )
    return found


def arm_table(key: str) -> list[str]:
    """Markdown rows: each arm's linear-probe top-1 in the default study per dataset, mean with its
    95% t-interval over seeds, n, and the per-seed values."""
    default = read_table(key, "default")
    if default is None:
        return []
    lines = [
        "| arm | dataset | mean top-1 | 95% interval | n | per seed |",
        "| --- | --- | ---: | --- | ---: | --- |",
    ]
    for (dataset, arm), part in probe_top1(default).groupby(["dataset", "arm"], sort=False):
        values = part.sort_values("seed")["value"].tolist()
        spread = Comparison("", "", "", values)
        lines.append(
            f"| {labels()[arm]} | {dataset} | {spread.mean:.2f} | "
            f"{spread.interval().replace('+', '')} | "
            f"{spread.n} | {', '.join(f'{v:.2f}' for v in values)} |"
        )
    return lines


def provenance(key: str, plan: AnalysisConfig) -> str:
    """What the results rest on: their seeds (pilot or confirmation), precision and the plan's
    hash."""
    tables = [
        t
        for t in (
            read_table(key, s)
            for s in ("default", "wsp_epochs", "model_size", "data_size", "transfer")
        )
        if t is not None
    ]
    seeds = sorted({int(s) for t in tables for s in t.seed.dropna()})
    kinds = {str(p) for t in tables if "precision" in t for p in t.precision.dropna()}
    if len(kinds) > 1:
        raise DataError(
            f"{results_dir(key)}: tables of precisions {sorted(kinds)}; allowed: one precision "
            "in one finding (rerun the studies at one precision)"
        )
    phase = (
        "pilot seeds (they chose settings: no verdict rests on them)"
        if key.endswith("/pilot")
        else "confirmation seeds (they chose nothing)"
    )
    return (
        f"Seeds: {', '.join(map(str, seeds)) or 'none'}, {phase}. Precision: "
        f"{kinds.pop() if kinds else 'not recorded'}. Analysis plan "
        f"`{config_hash(dataclasses.asdict(plan))}` "
        f"(`analysis` of the preset in experiments.yaml), alpha {plan.alpha}."
    )


def summary(key: str, found: list[Comparison], plan: AnalysisConfig | None = None) -> list[str]:
    """The results in prose, every number and verdict computed: each claim's primary comparisons,
    the count of secondary ones that hold, and the baselines."""
    lines = []
    for claim, text in CLAIMS.items():
        mine = [c for c in found if c.claim == claim]
        primary = [c for c in mine if c.role == "primary"]
        if not primary:
            lines.append(
                f"- ({claim}) {text}: not studied in these results (no primary comparison)."
            )
            continue
        secondary = [c for c in mine if c.role == "secondary"]
        why = getattr(plan, claim).descriptive if plan else ""
        tally = (
            "shown in the table, without verdicts"
            if why
            else ", ".join(
                f"{sum(c.verdict == v for c in secondary)} {v}"
                for v in ("holds", "contradicted", "inconclusive")
            )
        )
        target = getattr(plan, claim).half_width if plan else 0.0
        verdict = claim_verdict(mine, target)
        declared = f" (declared before the confirmation: {why})" if why else ""
        against = " This contradicts the paper." if verdict == "contradicted" else ""
        sentences = " ".join(f"{c.sentence()}.{_met(c, target)}" for c in primary)
        named = "Primary comparisons (each must hold)" if len(primary) > 1 else "Primary comparison"
        lines.append(
            f"- ({claim}) {text}: **{verdict}**{declared}.{against} {named}, MAE→WSP − WSP "
            f"unless named: {sentences}{_at_equal_flops(mine, primary)} Secondary "
            f"({len(secondary)}): {tally}."
        )
    for c in premise(key):
        lines.append(
            f"- Premise, {c.what}: {c.mean:+.2f} points, 95% interval {c.interval()}, n = {c.n} "
            f"({c.verdict} by the interval alone)."
        )
    return lines


def _at_equal_flops(mine: list[Comparison], primary: list[Comparison]) -> str:
    """The primary's counterparts against the other arms MAE→WSP is claimed to beat (the
    compute-matched WSP), each with its interval and verdict."""
    return "".join(f" {c.sentence()}: {c.verdict}." for c in counterparts(mine, primary))


def counterparts(found: list[Comparison], primary: list[Comparison]) -> list[Comparison]:
    """The comparisons of `found` that are `primary`'s against the other arms the first arm is
    claimed to beat (keys 'ARM-BASELINE/<primary key>')."""
    pairs = [f"{a}-{b}/" for a, b in compared_pairs()[1:]]
    keys = {f"{pair}{c.key}" for pair in pairs for c in primary}
    return [c for c in found if c.key in keys]


def _met(c: Comparison, target: float) -> str:
    if not target or c.n < 2:
        return ""
    met = "met" if c.half_width <= target else "not met"
    return f" Its half-width {c.half_width:.2f} against the planned {target:.2f}: {met}."


def _claim_rows(found: list[Comparison], plan: AnalysisConfig | None) -> list[str]:
    lines = [
        "| claim | comparison (key) | role | difference | n | 95% interval | Holm p | verdict |",
        "| --- | --- | --- | ---: | ---: | --- | ---: | --- |",
    ]
    for claim, text in CLAIMS.items():
        mine = [c for c in found if c.claim == claim and c.role != "descriptive"]
        if not mine:
            lines.append(f"| ({claim}) {text} | not studied in these results | | | | | | |")
            continue
        verdict = claim_verdict(mine, getattr(plan, claim).half_width if plan else 0.0)
        lines.append(f"| **({claim}) {text}** | **claim** | | | | | | **{verdict}** |")
        for c in mine:
            p = f"{c.p_holm:.2g}" if not math.isnan(c.p_holm) else ""
            lines.append(
                f"| | {c.what} (`{c.key}`) | {c.role} | {c.mean:+.2f} | {c.n} | {c.interval()} | "
                f"{p} | {c.verdict} |"
            )
    return lines


def report(
    key: str, plan: AnalysisConfig | None = None, found: list[Comparison] | None = None
) -> str:
    """findings.md: provenance, the results in prose, each arm's probe, the claims' comparisons by
    role, the one-seed results, fine-tuning against the probe."""
    plan = plan or AnalysisConfig()
    found = analyse(comparisons(key), plan) if found is None else found
    lines = [
        f"**Findings of `{key}`**",
        "",
        provenance(key, plan),
        "",
        *summary(key, found, plan),
        "",
    ]
    arms = arm_table(key)
    if arms:
        lines += ["Linear-probe top-1 (%) of every arm, default study:", "", *arms, ""]
    rule = f"Differences are paired, in top-1 points. Rule: {RULE}."
    lines += [rule, "", *_claim_rows(found, plan)]
    single = [c for c in found if c.role == "descriptive"]
    if single:
        lines += [
            "",
            "One seed only: descriptive, in no verdict:",
            "",
            "| claim | comparison | difference | n |",
            "| --- | --- | ---: | ---: |",
            *[f"| ({c.claim}) | {c.what} | {c.mean:+.2f} | 1 |" for c in single],
        ]
    checks = [c for c in finetune_against_probe(key) if c.n]
    if checks:
        lines += [
            "",
            "Fine-tuning against the linear probe of the same encoder (by the 95% interval; it "
            "should hold):",
            "",
            "| encoder and dataset | difference | n | 95% interval | verdict |",
            "| --- | ---: | ---: | --- | --- |",
        ]
        lines += [
            f"| {c.what} | {c.mean:+.2f} | {c.n} | {c.interval()} | {c.verdict} |" for c in checks
        ]
    lines += [
        "",
        f"Arms below the random-init baseline (default study, linear probe): {below_random(key)}",
    ]
    return "\n".join(lines) + "\n"


def write(key: str, plan: AnalysisConfig | None = None) -> str:
    """Write results/<key>/findings.md and findings.csv; returns the markdown."""
    plan = plan or AnalysisConfig()
    found = analyse(comparisons(key), plan)
    text = report(key, plan, found)
    rows = [
        {
            "claim": c.claim,
            "key": c.key,
            "comparison": c.what,
            "role": c.role,
            "difference": c.mean,
            "n": c.n,
            "sd": c.sd,
            "half_width_95": c.half_width,
            "p_holm": c.p_holm,
            "verdict": c.verdict,
        }
        for c in found
    ]
    folder = results_dir(key)
    atomic_write(folder / "findings.md", lambda f: f.write(text))
    atomic_write(folder / "findings.csv", lambda f: pd.DataFrame(rows).to_csv(f, index=False))
    return text
