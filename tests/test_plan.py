"""Pilot seeds size the confirmation: `studylib plan` from the pilot's paired sd and its runs' wall
time."""

import math
import re

import numpy as np
import pandas as pd
import pytest

from studylib import plan
from studylib.cli import main
from studylib.comparisons import t_quantile_975
from studylib.config import load_experiment
from studylib.errors import ConfigError
from studylib.paths import results_dir


def test_seeds_needed_is_the_smallest_n_whose_half_width_meets_the_target_with_the_asked_chance():
    for sd, target in ((1.0, 1.0), (1.7, 1.5), (0.3, 1.0), (3.3, 1.5)):
        n = plan.seeds_needed(sd, target)
        assert plan.chance_met(sd, target, n) >= 0.8 and (
            n == 2 or plan.chance_met(sd, target, n - 1) < 0.8
        )
        # at least the expected half-width's n
        assert t_quantile_975(n - 1) * sd / math.sqrt(n) <= target
    # 7 seeds meet 1.0 at the expected sd, but only 68% of the time
    assert plan.seeds_needed(1.0, 1.0) == 8


def test_the_chance_of_meeting_the_target_is_what_simulated_batches_give():
    rng = np.random.default_rng(0)
    for sd, target, n in ((1.0, 1.0, 6), (1.3, 1.5, 7), (0.8, 1.0, 4)):
        draws = rng.normal(0.0, sd, (40_000, n))
        half_widths = t_quantile_975(n - 1) * draws.std(axis=1, ddof=1) / math.sqrt(n)
        assert plan.chance_met(sd, target, n) == pytest.approx(
            (half_widths <= target).mean(), abs=0.01
        )


def test_pilot_and_confirmation_seeds_are_apart_and_each_study_takes_its_count():
    exp = load_experiment(
        "smoke",
        [
            "studies.pilot_seeds=[0, 1]",
            "studies.seeds=[2, 3, 4]",
            "studies.seed_counts=['transfer:1', 'model_size:2']",
        ],
    )
    assert exp.studies.seeds_of("default") == [2, 3, 4] and exp.studies.seeds_of("transfer") == [2]
    assert exp.studies.seeds_of("model_size") == [2, 3] and exp.studies.seeds_of(
        "default", pilot=True
    ) == [0, 1]
    with pytest.raises(ConfigError, match="seed 2 is also a confirmation seed"):
        load_experiment("smoke", ["studies.pilot_seeds=[2]", "studies.seeds=[2, 3]"])
    with pytest.raises(ConfigError, match="STUDY:N"):
        load_experiment("smoke", ["studies.seed_counts=['nothing:1']"])


def test_plan_reads_the_pilot_tables_and_says_what_the_seeds_cost(isolated_dirs, capsys):
    overrides = [
        "studies.pilot_seeds=[0, 1, 2]",
        "studies.seeds=[3, 4]",
        "analysis.a.half_width=0.5",
    ]
    exp = load_experiment("smoke", overrides)
    # paired sd 1.0: 0.5 needs n = 22 for an 80% chance (18 at the expected sd)
    gaps = {0: 1.0, 1: 2.0, 2: 3.0}
    _pilot(exp, gaps)
    folder = results_dir(exp.results_key) / "pilot"
    rows = pd.read_csv(folder / "default.csv").to_dict("records")
    # seed 2 slowed by other work: the median holds
    rows += [
        {
            "seed": s,
            "arm": "wsp",
            "stage": "wsp",
            "metric": "wall_time_s",
            "run": f"w{s}",
            "value": 600.0 if s == 2 else 120.0,
        }
        for s in gaps
    ]
    pd.DataFrame(rows).to_csv(folder / "default.csv", index=False)
    (row,) = plan.rows(exp)
    assert (
        row["key"] == "probe/synthetic"
        and row["role"] == "primary"
        and row["pilot_sd"] == pytest.approx(1.0)
    )
    assert (
        row["seeds_needed"] == 22
        and row["seeds_planned"] == 2
        and row["minutes_per_seed"] == pytest.approx(2.0)
    )
    assert row["chance_met_as_planned"] == pytest.approx(plan.chance_met(1.0, 0.5, 2))
    assert main(["plan", "--preset", "smoke", *[f"--set={o}" for o in overrides]]) == 0
    out = capsys.readouterr().out
    assert "default 22 seeds x 2.0 min" in out and "`probe/synthetic` (2 of 22)" in out
    assert (results_dir(exp.results_key) / "plan.md").read_text() in out


def _pilot(exp, gaps: dict[int, float]) -> None:
    """A pilot default table whose MAE→WSP − WSP difference at seed s is gaps[s]."""
    folder = results_dir(exp.results_key) / "pilot"
    folder.mkdir(parents=True)
    rows = [
        {
            "seed": s,
            "arm": arm,
            "stage": "probe",
            "metric": "top1",
            "dataset": "synthetic",
            "run": f"p{arm}{s}",
            "value": 50 + (gap if arm == "mae_wsp" else 0),
        }
        for s, gap in gaps.items()
        for arm in ("wsp", "mae_wsp")
    ]
    pd.DataFrame(rows).to_csv(folder / "default.csv", index=False)


def test_a_pilot_without_spread_or_beyond_the_search_says_so(isolated_dirs, capsys):
    assert plan.seeds_needed(0.0, 1.0) is None and plan.seeds_needed(math.nan, 1.0) is None
    assert math.isnan(plan.chance_met(0.0, 1.0, 5)) and math.isnan(plan.chance_met(1.0, 1.0, 1))
    assert plan.seeds_needed(100.0, 0.01) is None  # thousands: past the search's 200
    assert plan.needed_text(None, 100.0) == "over 200 (the search's cap)"
    assert plan.needed_text(math.nan, 0.0) == "not sized (pilot sd 0)"
    assert plan.chance_met(1.0, 100.0, 3) == 1.0  # a huge target: no overflow
    for gaps, said in (
        ({0: 2.0, 1: 2.0, 2: 2.0}, "not sized (pilot sd 0)"),
        ({0: 1, 1: 90}, "over 200 (the search's cap)"),
    ):
        overrides = ["studies.pilot_seeds=[0, 1, 2]", "analysis.a.half_width=0.01"]
        overrides.append(f"studies.seeds=[{len(gaps) + 7}]")
        exp = load_experiment("smoke", overrides)
        _pilot(exp, gaps)
        assert main(["plan", "--preset", "smoke", *[f"--set={o}" for o in overrides]]) == 0
        out = capsys.readouterr().out
        assert said in out and f"- (a) `probe/synthetic`: {said}" in out
        assert "(b) `epochs1/synthetic`: no target half-width, not sized" in out
        assert not re.search(r"\bnan\b", out)


def test_an_absurd_target_is_refused_in_one_line(capsys):
    assert main(["plan", "--preset", "smoke", "--set", "analysis.a.half_width=1e300"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "analysis.a.half_width" in err[0] and "in [0, 100]" in err[0]
