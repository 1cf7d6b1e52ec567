"""How many seeds each claim needs, from its pilot: `studylib plan --preset cpu` reads the pilot
seeds' tables (results/<key>/pilot/, written by `studylib study NAME --pilot`), and for every
comparison of the analysis plan with a target half-width gives the smallest n for which the
confirmation's 95% paired half-width, t(0.975, n - 1) * s / sqrt(n), meets the target with an 80%
chance (ASSURANCE) when the pilot's sd is the true one (s, the confirmation's own sd, varies from
batch to batch: a plan at the expected half-width alone meets its target about half the time); then
what that many seeds of each study cost in wall time, from the pilot's own runs on this machine. The
preset's seed counts are set from it.
"""

from __future__ import annotations

import dataclasses
import math

import pandas as pd

from studylib.comparisons import Comparison, comparisons, t_quantile_975
from studylib.experiment import Experiment
from studylib.findings import CLAIMS, analyse
from studylib.io import atomic_write
from studylib.paths import results_dir

# the chance, at the pilot's sd, that the confirmation's half-width meets its target
ASSURANCE = 0.8
SEARCHED = 200  # seeds_needed looks no further
# a WSP schedule is long enough where doubling it adds less than this (top-1 points, mean gain)
DOUBLING_GAIN = 0.5


def chance_met(sd: float, target: float, n: int) -> float:
    """The chance that the 95% paired t half-width of n seeds is at most `target` when the
    differences' true sd is `sd`: (n - 1) s^2 / sd^2 is chi-square with n - 1 degrees of freedom
    (scipy); nan where the pilot has no spread (sd 0 or nan), which sizes nothing."""
    from scipy import stats

    if not sd > 0 or n < 2:
        return math.nan
    # the sample sd that just meets the target, as a ratio to the true one
    ratio = target * math.sqrt(n) / t_quantile_975(n - 1) / sd
    return float(stats.chi2.cdf((n - 1) * min(ratio, 1e100) ** 2, n - 1))


def seeds_needed(
    sd: float, target: float, assurance: float = ASSURANCE, most: int = SEARCHED
) -> int | None:
    """The smallest n >= 2 whose half-width meets `target` with probability `assurance`; None where
    no n up to `most` does, or where the pilot has no spread to size by (sd 0 or nan)."""
    if not sd > 0:
        return None
    for n in range(2, most + 1):
        if chance_met(sd, target, n) >= assurance:
            return n
    return None


def needed_text(need: float | None, sd: float) -> str:
    """seeds_needed as the plan shows it (a table holds its None as nan)."""
    if need is not None and not math.isnan(need):
        return str(int(need))
    return "not sized (pilot sd 0)" if not sd > 0 else f"over {SEARCHED} (the search's cap)"


def minutes_per_seed(key: str, study: str) -> float:
    """Wall minutes of one seed of `study` in the pilot: the median over its seeds of their distinct
    runs' wall_time_s (a median, so a seed slowed by other work on the machine does not set the
    cost)."""
    path = results_dir(key) / f"{study}.csv"
    if not path.exists():
        return math.nan
    table = pd.read_csv(path)
    times = table[table.metric == "wall_time_s"].drop_duplicates("run")
    return float(times.groupby("seed").value.sum().median() / 60) if len(times) else math.nan


def rows(exp: Experiment) -> list[dict]:
    """One row per targeted comparison of the plan: pilot n, mean and sd, the seeds it needs, and
    the study's cost."""
    pilot = dataclasses.replace(exp, pilot=True).results_key
    found = analyse(comparisons(pilot), exp.analysis)
    out = []
    for claim in CLAIMS:
        rules = getattr(exp.analysis, claim)
        for c in (c for c in found if c.claim == claim and c.n > 1):
            target = {"primary": rules.half_width, "secondary": rules.secondary_half_width}.get(
                c.role, 0.0
            )
            if not target:
                continue
            study = c.study
            need = seeds_needed(c.sd, target)
            planned = len(exp.studies.seeds_of(study))
            out.append(
                {
                    "claim": claim,
                    "key": c.key,
                    "role": c.role,
                    "study": study,
                    "pilot_n": c.n,
                    "pilot_mean": c.mean,
                    "pilot_sd": c.sd,
                    "target_half_width": target,
                    "seeds_needed": need,
                    "seeds_planned": planned,
                    "chance_met_as_planned": chance_met(c.sd, target, planned),
                    "minutes_per_seed": minutes_per_seed(pilot, study),
                }
            )
    return out


def report(exp: Experiment) -> str:
    """plan.md: the table of `rows`, and the batch's cost at the seeds planned."""
    table = pd.DataFrame(rows(exp))
    if table.empty:
        return (
            "No pilot comparison with a target: run `studylib study NAME --pilot --preset "
            f"{exp.preset}` for "
            "the studies of each claim's primary comparison, and set half_width in `analysis`.\n"
        )
    lines = [
        f"**Seeds by plan for `{exp.results_key}`** (pilot seeds {exp.studies.pilot_seeds}; "
        f"seeds for a chance of {ASSURANCE:.0%} that the 95% paired half-width t(0.975, n-1) s / "
        "sqrt(n) meets the target, the pilot's sd taken as the true one)",
        "",
        "| claim | comparison | role | study | pilot n | pilot mean | pilot sd | target | seeds "
        "needed | seeds planned | chance met as planned | min per seed |",
        "|" + " --- |" * 12,
    ]
    for r in table.itertuples():
        lines.append(
            f"| ({r.claim}) | `{r.key}` | {r.role} | {r.study} | {r.pilot_n} | "
            f"{r.pilot_mean:+.2f} | {r.pilot_sd:.2f} | {r.target_half_width:.2f} | "
            f"{needed_text(r.seeds_needed, r.pilot_sd)} | {r.seeds_planned} | "
            f"{_percent(r.chance_met_as_planned)} | "
            f"{_shown(r.minutes_per_seed, '.1f')} |"
        )
    lines += _cost_lines(table) + _gap_lines(exp, table)
    return "\n".join(lines + schedule_lines(exp)) + "\n"


def schedule_lines(exp: Experiment) -> list[str]:
    """From the pilot's wsp_epochs table: each WSP arm's linear-probe gain from each doubling of its
    schedule (paired by seed, mean and 95% interval), and the shortest length whose next doubling
    adds under DOUBLING_GAIN points (mean), or none among those piloted."""
    path = results_dir(dataclasses.replace(exp, pilot=True).results_key) / "wsp_epochs.csv"
    if not path.exists():
        return ["", "No pilot wsp_epochs table: the WSP schedule is not chosen by this plan."]
    table = pd.read_csv(path)
    probes = table[(table.stage == "probe") & (table.metric == "top1") & table.wsp_epochs.notna()]
    wide = probes.pivot_table(
        index=["arm", "dataset", "seed"], columns="wsp_epochs", values="value"
    )
    lines = [
        "",
        f"WSP's schedule by the pilot (linear-probe gain of each doubling, paired by seed; long "
        f"enough where the next doubling adds under {DOUBLING_GAIN} point):",
        "",
    ]
    for (arm, dataset), part in wide.groupby(level=["arm", "dataset"], sort=False):
        lengths = sorted(part.columns[part.notna().all()])
        gains = [
            (short, Comparison("", "", "", (part[long] - part[short]).tolist()))
            for short, long in zip(lengths, lengths[1:], strict=False)
            if long == 2 * short
        ]
        if not gains or arm not in ("wsp", "mae_wsp", "wsp_flops"):
            continue
        said = "; ".join(
            f"{int(short)}→{int(2 * short)}: {c.mean:+.2f} {c.interval()}" for short, c in gains
        )
        enough = next((int(s) for s, c in gains if c.mean < DOUBLING_GAIN), None)
        verdict = f"long enough at {enough}" if enough else f"still gaining at {int(lengths[-1])}"
        lines.append(f"- {arm}, {dataset} (n = {gains[0][1].n}): {said}; {verdict}.")
    return lines


def _cost_lines(table: pd.DataFrame) -> list[str]:
    """What the sized targets' seeds cost, study by study."""
    sized = table.dropna(subset=["seeds_needed"])
    need = sized.groupby("study").agg(
        seeds=("seeds_needed", "max"), per_seed=("minutes_per_seed", "first")
    )
    cost = ", ".join(
        f"{s} {int(r.seeds)} seeds x {_shown(r.per_seed, '.1f')} min" for s, r in need.iterrows()
    )
    return [
        "",
        f"Per study, the most seeds any sized target needs: {cost or 'none'}; "
        f"{_shown((need.seeds * need.per_seed).sum(min_count=1), '.0f')} minutes if no run were "
        "shared between studies.",
    ]


def _gap_lines(exp: Experiment, table: pd.DataFrame) -> list[str]:
    """Per claim, what the plan cannot size: declared descriptive, no target, no pilot table, no
    pilot spread; then the targets planned short."""
    lines = []
    keys = set(table.key) if len(table) else set()
    for claim in CLAIMS:
        rules = getattr(exp.analysis, claim)
        primaries = [k for k in (rules.primary, *rules.every) if k]
        named = ", ".join(f"`{k}`" for k in primaries) or "no primary"
        if rules.descriptive:
            lines.append(f"- ({claim}) {named}: descriptive by plan ({rules.descriptive})")
        elif not rules.half_width:
            lines.append(f"- ({claim}) {named}: no target half-width, not sized")
        elif missing := [k for k in primaries if k not in keys]:
            shown = ", ".join(f"`{k}`" for k in missing)
            lines.append(f"- ({claim}) {shown}: no pilot table holds it, not sized")
    unsized = table[table.seeds_needed.isna()] if len(table) else table
    lines += [
        f"- ({r.claim}) `{r.key}`: {needed_text(None, r.pilot_sd)}" for r in unsized.itertuples()
    ]
    sized = table.dropna(subset=["seeds_needed"]) if len(table) else table
    short = sized[sized.seeds_planned < sized.seeds_needed] if len(sized) else sized
    short_text = ", ".join(
        f"`{r.key}` ({r.seeds_planned} of {int(r.seeds_needed)})" for r in short.itertuples()
    )
    verdict = (
        f"Planned with fewer seeds than the pilot asks for: {short_text}."
        if len(short)
        else "Every sized target is planned with enough seeds"
        + ("; the claims above are not sized." if lines else ".")
    )
    return (["", "Not sized by this plan:", "", *lines] if lines else []) + ["", verdict]


def _percent(chance: float) -> str:
    return _shown(chance, ".0%")


def _shown(value: float, spec: str) -> str:
    """`value` formatted, or n/a where it is nan (a pilot without spread or without wall times)."""
    return "n/a" if math.isnan(value) else format(value, spec)


def write(exp: Experiment) -> str:
    text = report(exp)
    atomic_write(results_dir(exp.results_key) / "plan.md", lambda f: f.write(text))
    return text
