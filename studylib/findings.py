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

import pandas as pd

from studylib.comparisons import Comparison, compare, comparisons, probe_top1, read_table
from studylib.errors import DataError
from studylib.experiment import AnalysisConfig, config_hash
from studylib.io import atomic_write
from studylib.paths import results_dir
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
            c = compare(
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
