"""Findings are computed from the tables by the stated rule, never typed."""

import json
import math
import re
import statistics
from pathlib import Path

import pandas as pd
import pytest

from studylib import comparisons, findings
from studylib.config import load_experiment
from studylib.errors import DataError
from studylib.experiment import AnalysisConfig, ClaimPlan
from studylib.paths import REPO_ROOT

REPO = Path(__file__).resolve().parent.parent


def test_interval_is_students_t_and_the_rule_gives_each_verdict():
    c = comparisons.Comparison("a", "k", "x", [1.0, 2.0, 3.0])
    # mean 2, sd 1, n 3: half width t(0.975, 2) / sqrt(3) = 4.303 / 1.732
    assert c.mean == 2 and c.half_width == pytest.approx(4.303 / math.sqrt(3), rel=1e-4)
    assert c.verdict == "inconclusive"  # [-0.48, +4.48] holds 0
    assert comparisons.Comparison("a", "k", "x", [2.0, 2.1, 1.9, 2.0]).verdict == "holds"
    assert comparisons.Comparison("a", "k", "x", [-2.0, -2.1, -1.9]).verdict == "contradicted"
    # one seed: no interval
    assert comparisons.Comparison("a", "k", "x", [5.0]).verdict == "inconclusive"
    # every seed the same difference: no t-test, so the corrected-p rule cannot say "holds"
    same = comparisons.Comparison("a", "k", "x", [2.0, 2.0], role="primary")
    assert same.verdict == "inconclusive" and math.isnan(same.p)
    assert "sd 0): no t-test, no verdict" in same.sentence()
    big = comparisons.Comparison("a", "k", "x", [float(i % 7) for i in range(50)])
    assert big.half_width == pytest.approx(
        2.0096 * statistics.stdev(big.differences) / math.sqrt(50), rel=1e-4
    )


def test_p_value_and_holm_agree_with_their_definitions():
    """The paired t-test's p against the t distribution by hand, and Holm's step-down by hand."""
    from scipy import stats

    c = comparisons.Comparison("a", "k", "x", [0.5, 1.5, 1.0, 2.0])
    t = c.mean / (c.sd / math.sqrt(c.n))
    assert c.p == pytest.approx(2 * stats.t.sf(t, c.n - 1))
    plan = AnalysisConfig(a=ClaimPlan(primary="k1", secondary=["k*"]))
    found = [
        comparisons.Comparison("a", f"k{i}", "x", d, runs=(str(i),))
        for i, d in enumerate(([0.5, 1.5, 1.0, 2.0], [0.1, -0.2, 0.3, 0.0], [3.0, 3.2, 2.9, 3.1]))
    ]
    analysed = findings.analyse(found, plan)
    ps = sorted((c.p, c.key) for c in analysed)
    by_hand = {}
    running = 0.0
    for rank, (p, key) in enumerate(ps):  # Holm: (m - rank) p, made monotone, capped at 1
        running = max(running, min(1.0, (len(ps) - rank) * p))
        by_hand[key] = running
    assert {c.key: c.p_holm for c in analysed} == pytest.approx(by_hand)
    assert [c.role for c in analysed] == ["secondary", "primary", "secondary"]
    assert analysed[2].verdict == "holds" and analysed[1].verdict == "inconclusive"
    # the primary's, whatever the secondaries say
    assert findings.claim_verdict(analysed) == "inconclusive"
    # held before Holm
    assert analysed[0].p < 0.05 < analysed[0].p_holm and analysed[0].verdict == "inconclusive"
    # an answer of no effect: the primary's Holm-adjusted interval inside +-the planned half-width
    primary = analysed[1]  # mean 0.05, sd 0.21, n 4
    reach = abs(primary.mean) + primary.holm_half_width
    answer = findings.claim_verdict(analysed, target=reach + 0.01)
    assert answer == f"no effect beyond ±{reach + 0.01:g}"
    assert findings.claim_verdict(analysed, target=reach - 0.01) == "inconclusive"
    assert findings.claim_verdict(analysed, target=0.0) == "inconclusive"


def test_a_result_shared_by_two_claims_is_counted_once_and_one_seed_is_descriptive():
    plan = AnalysisConfig(a=ClaimPlan(primary="probe/c"), b=ClaimPlan(primary="epochs2/c"))
    shared = ("probe-1", "probe-2")
    found = [
        comparisons.Comparison("a", "probe/c", "x", [1.0, 1.2, 1.1], runs=shared),
        comparisons.Comparison("a", "finetune/c", "x", [2.0]),
        comparisons.Comparison("b", "epochs2/c", "x", [0.5, 0.7, 0.6], runs=("probe-3", "probe-4")),
        comparisons.Comparison("b", "epochs8/c", "x", [1.0, 1.2, 1.1], runs=shared),
    ]
    roles = {(c.claim, c.key): c.role for c in findings.analyse(found, plan)}
    assert roles == {
        ("a", "probe/c"): "primary",
        ("a", "finetune/c"): "descriptive",
        ("b", "epochs2/c"): "primary",
        ("b", "epochs8/c"): "repeat of (a) probe/c",
    }
    assert math.isnan(found[3].p_holm) and math.isnan(found[1].p_holm)


def test_a_claim_at_every_size_holds_only_if_each_size_holds():
    """analysis.X.every: an intersection-union test; one size inconclusive leaves the claim so, one
    contradicted contradicts it."""
    clear, flat, against = [2.0, 2.2, 1.9, 2.1], [0.1, -0.2, 0.3, 0.0], [-3.0, -3.2, -2.9, -3.1]
    plan = AnalysisConfig(c=ClaimPlan(primary="pico/d", every=["nano/d", "micro/d"], secondary=[]))
    for nano, verdict in ((clear, "holds"), (flat, "inconclusive"), (against, "contradicted")):
        found = [
            comparisons.Comparison("c", key, key, d, runs=(key,))
            for key, d in (("pico/d", clear), ("nano/d", nano), ("micro/d", clear))
        ]
        analysed = findings.analyse(found, plan)
        assert [c.role for c in analysed] == ["primary"] * 3
        assert findings.claim_verdict(analysed) == verdict
        lines = findings.summary("none", analysed, plan)
        assert f"**{verdict}**" in lines[2] and "Primary comparisons (each must hold)" in lines[2]


def test_a_claim_declared_descriptive_shows_its_interval_its_reason_and_no_verdict_word():
    plan = AnalysisConfig(d=ClaimPlan(primary="mae/d", descriptive="MAE too short to show it"))
    found = [comparisons.Comparison("d", "mae/d", "MAE: more images", [2.0, 2.2, 1.9, 2.1])]
    analysed = findings.analyse(found, plan)
    assert analysed[0].p_holm < 0.05 and analysed[0].verdict == "descriptive"
    assert findings.claim_verdict(analysed) == "descriptive"
    line = findings.summary("none", analysed, plan)[3]
    assert "**descriptive** (declared before the confirmation: MAE too short to show it)" in line
    assert "95% interval [+" in line and "holds" not in line.split("Secondary")[0]


def _default_table(gaps: dict[str, float], seeds: int = 3) -> pd.DataFrame:
    rows = []
    for seed in range(seeds):
        for arm, value in gaps.items():
            rows.append(
                {
                    "seed": seed,
                    "arm": arm,
                    "stage": "probe",
                    "metric": "top1",
                    "dataset": "cifar100",
                    "value": value + 0.1 * seed * (1 if arm == "mae_wsp" else 0.5),
                    "run": f"{arm}-{seed}",
                    "precision": "fp32",
                }
            )
    return pd.DataFrame(rows)


def test_report_from_tables_pairs_by_seed_and_flags_arms_below_random(isolated_dirs):
    folder = isolated_dirs / "results" / "mine"
    folder.mkdir(parents=True)
    _default_table({"random": 20.0, "mae": 19.0, "wsp": 25.0, "mae_wsp": 27.0}).to_csv(
        folder / "default.csv"
    )
    text = findings.write("mine")
    (row,) = [
        c
        for c in findings.analyse(comparisons.comparisons("mine"), AnalysisConfig())
        if c.claim == "a"
    ]
    assert (
        row.differences == pytest.approx([2.0, 2.05, 2.1])
        and row.verdict == "holds"
        and row.role == "primary"
    )
    assert "| **(a) MAE→WSP beats WSP in transfer** | **claim** | | | | | | **holds** |" in text
    assert "- (a) MAE→WSP beats WSP in transfer: **holds**." in text  # the prose, computed
    assert "Precision: fp32" in text and "Seeds: 0, 1, 2, confirmation seeds" in text
    assert "Premise, WSP − random init on cifar100: +5.00 points" in text
    assert "MAE on cifar100: 19.05 < random init 20.05" in text  # means over seeds
    assert "(c) MAE→WSP beats WSP at every model size | not studied in these results" in text
    saved = pd.read_csv(folder / "findings.csv")
    assert (
        saved.verdict.tolist() == ["holds"]
        and saved.n.tolist() == [3]
        and saved.role.tolist() == ["primary"]
    )


def test_tables_of_two_precisions_are_never_one_finding(isolated_dirs):
    folder = isolated_dirs / "results" / "mine"
    folder.mkdir(parents=True)
    _default_table({"wsp": 25.0, "mae_wsp": 27.0}).to_csv(folder / "default.csv")
    _default_table({"wsp": 25.0, "mae_wsp": 27.0}).assign(
        stage="finetune", variant="", precision="bf16"
    ).to_csv(folder / "transfer.csv")
    with pytest.raises(DataError, match=r"precisions \['bf16', 'fp32'\]"):
        findings.write("mine")


def test_fine_tuning_is_compared_with_the_probe_of_the_same_encoder_and_seed(isolated_dirs):
    folder = isolated_dirs / "results" / "mine"
    folder.mkdir(parents=True)
    _default_table({"wsp": 25.0, "mae_wsp": 27.0}).to_csv(folder / "default.csv")
    tuned = _default_table({"wsp": 30.0, "mae_wsp": 26.0}).assign(stage="finetune", variant="")
    tuned.to_csv(folder / "transfer.csv")
    checks = {c.what.split(" (")[0]: c for c in findings.finetune_against_probe("mine")}
    assert checks["WSP on cifar100"].differences == pytest.approx([5.0, 5.0, 5.0])
    # the same +5 at every seed: no spread, so no test and no verdict (the rule needs a p-value)
    assert checks["WSP on cifar100"].verdict == "inconclusive"
    assert checks["MAE→WSP on cifar100"].differences == pytest.approx([-1.0] * 3)
    report = findings.write("mine")
    assert (
        "| MAE→WSP on cifar100 (seeds 0, 1, 2): fine-tune 26.10 vs linear probe 27.10 | -1.00 | 3 |"
        in report
    )

    tuned[tuned.seed == 0].to_csv(folder / "transfer.csv")  # fine-tuned at the first seed only
    check = {c.what.split(" (")[0]: c for c in findings.finetune_against_probe("mine")}[
        "WSP on cifar100"
    ]
    # seed 0's probe, not the mean
    assert check.what.endswith("(seed 0): fine-tune 30.00 vs linear probe 25.00")


def test_readme_findings_are_generated_from_the_committed_cpu_results(monkeypatch):
    monkeypatch.setenv("STUDYLIB_RESULTS", str(REPO_ROOT / "results"))
    committed = (REPO_ROOT / "results" / "cpu" / "findings.md").read_text()
    plan = load_experiment("cpu").analysis
    assert findings.report("cpu", plan) == committed, (
        "run `studylib findings --preset cpu --readme`"
    )
    readme = (REPO / "README.md").read_text()
    assert (
        readme.split("<!-- findings: begin -->\n")[1].split("<!-- findings: end -->")[0]
        == committed
    )


def test_readme_captions_are_computed_from_the_committed_tables(monkeypatch):
    """Every caption under a README figure is the one its table gives (studylib.captions): a
    changed seed count, schedule or size in the tables fails here until the README is rewritten."""
    from studylib import captions
    from studylib.registry import FIGURES

    monkeypatch.setenv("STUDYLIB_RESULTS", str(REPO_ROOT / "results"))
    monkeypatch.setenv("STUDYLIB_FIGURES", str(REPO_ROOT / "figures"))
    readme = (REPO / "README.md").read_text()
    blocks = {"verdicts-figure": ["verdicts"], "figures": [n for n in FIGURES if n != "verdicts"]}
    for block, names in blocks.items():
        written = readme.split(f"<!-- {block}: begin -->\n")[1].split(f"<!-- {block}: end -->")[0]
        assert written == captions.readme_block("cpu", names), "run `studylib findings --readme`"
        assert written.count("![") == len(names)  # every figure of the cpu results is shown
    presets = readme.split("<!-- presets: begin -->\n")[1].split("<!-- presets: end -->")[0]
    assert presets == captions.presets_table(), "run `studylib findings --readme`"
    made = readme.split("<!-- made: begin -->\n")[1].split("<!-- made: end -->")[0]
    assert made == captions.how_made("cpu"), "run `studylib findings --readme`"
    minutes = (REPO_ROOT / "results" / "cpu" / "studies_log.txt").read_text().split("notebooks: ")
    assert f"every study: {minutes[-1].split()[0]} min" in presets  # the cpu batch's own log
    seeds = pd.read_csv(REPO_ROOT / "results" / "cpu" / "default.csv").seed.nunique()
    assert f"over {seeds} confirmation seeds" in readme.split("<!-- figures: begin -->")[1]


def test_figures_draw_the_same_95_interval_and_state_n(isolated_dirs):
    from studylib import figures, plotting

    low, high = plotting.interval95(pd.Series([1.0, 2.0, 3.0]))
    assert (low + high) / 2 == 2 and (high - low) / 2 == pytest.approx(
        4.303 / math.sqrt(3), rel=1e-4
    )
    assert plotting.interval95(pd.Series([4.0])) == (4.0, 4.0)
    folder = isolated_dirs / "results" / "mine"
    folder.mkdir(parents=True)
    _default_table({"wsp": 25.0, "mae_wsp": 27.0}).to_csv(folder / "default.csv")
    svg = figures.default("mine")[1].read_text()
    assert "n = 3 seeds, mean and 95% t-interval" in svg and "MAE→WSP" in svg


def test_committed_figures_have_no_colliding_labels_or_legends_over_data(monkeypatch):
    """Every figure drawn from the committed cpu tables, checked with matplotlib's renderer: no tick
    labels or texts overlap, no legend covers a plotted point, and none is wider than 1,600 px
    (README width)."""
    from studylib import figures, plotting

    monkeypatch.setenv("STUDYLIB_RESULTS", str(REPO_ROOT / "results"))
    checked = {}

    def check(fig, name, *_):
        checked[name] = plotting.overlaps(fig), fig.get_size_inches()[0] * 150
        figures.plt.close(fig)
        return []

    monkeypatch.setattr(figures, "save", check)
    plotting.style()
    names = (
        "default",
        "verdicts",
        "convergence",
        "model_size",
        "data_size",
        "transfer",
        "hashtags",
    )
    table_of = {"convergence": "wsp_epochs", "verdicts": "default", "hashtags": "explore"}
    names = [
        n for n in names if (REPO_ROOT / "results" / "cpu" / f"{table_of.get(n, n)}.csv").exists()
    ]
    for name in names:
        getattr(figures, name)("cpu")
    assert {name: clashes for name, (clashes, _) in checked.items() if clashes} == {}
    assert max(width for _, width in checked.values()) <= 1600
    assert len(checked) == len(names)


def test_the_layout_check_sees_overlapping_labels_and_a_legend_over_data():
    from studylib import figures, plotting

    fig, ax = figures.plt.subplots(figsize=(2, 2))
    ax.plot([0, 1], [0, 1], marker="o", label="a line")
    ax.set_xticks([0, 0.02], ["a long tick label", "another long one"])
    ax.legend(loc="upper right", bbox_to_anchor=(1.05, 1.05))
    found = plotting.overlaps(fig)
    assert any("tick labels" in f for f in found) and any("legend covers" in f for f in found)
    figures.plt.close(fig)


def test_a_table_of_another_precision_is_replaced_with_one_line_and_findings_refuse_to_mix(
    isolated_dirs, smoke, capsys
):
    from studylib.study import _table

    folder = isolated_dirs / "results" / "smoke"
    folder.mkdir(parents=True)
    _default_table({"wsp": 25.0, "mae_wsp": 27.0}).assign(precision="bf16").to_csv(
        folder / "default.csv"
    )
    _default_table({"wsp": 25.0, "mae_wsp": 27.0}).assign(
        stage="finetune", variant="", precision="bf16"
    ).to_csv(folder / "transfer.csv")
    rows = (
        _default_table({"wsp": 24.0, "mae_wsp": 26.0}).drop(columns="precision").to_dict("records")
    )
    _table(smoke, "default", rows)  # smoke runs fp32
    assert "replacing its bf16 results with fp32 ones" in capsys.readouterr().err
    assert set(pd.read_csv(folder / "default.csv").precision) == {"fp32"}
    with pytest.raises(DataError, match="tables of precisions"):
        findings.write("smoke")


def test_a_figure_with_nothing_to_draw_is_skipped_in_one_line(isolated_dirs, capsys):
    from studylib import figures

    folder = isolated_dirs / "results" / "mine"
    folder.mkdir(parents=True)
    # one arm's probes, no parameter rows: no size has anything to draw against
    _default_table({"wsp": 25.0}).assign(model="nano").to_csv(folder / "model_size.csv")
    assert figures.make_all("mine", ["model_size"]) == {}
    assert "skipping model_size: " in capsys.readouterr().out


def test_the_readme_s_first_screen_times_are_the_committed_log_s():
    """The first command's minutes are the default study's in the committed cpu batch log (03_wsp,
    to the nearest 5 minutes), and the smoke run, the quick first try, is on the first screen."""
    first = (REPO / "README.md").read_text().split("```")[1]
    said = re.search(r"make study .*about (\d+) minutes", first)
    log = (REPO_ROOT / "results" / "cpu" / "studies_log.txt").read_text()
    seconds = float(re.search(r"^03_wsp\.ipynb: ([\d.]+) s", log, re.M).group(1))
    assert said and int(said.group(1)) == 5 * round(seconds / 300)
    assert "PRESET=smoke make study" in (REPO / "README.md").read_text()[:1500]


def test_the_readme_s_bf16_against_fp32_numbers_are_the_committed_check_s():
    """The README's precision sentence: claim (a)'s mean difference per precision and dataset, as
    benchmarks/precision_check.py recorded them."""
    record = REPO_ROOT / "benchmarks" / "results" / "precision_cpu_seeds13-15.json"
    rows = pd.DataFrame(json.loads(record.read_text())["rows"])
    top1 = rows[(rows.stage == "probe") & (rows.metric == "top1")]
    wide = top1.pivot_table(index=["precision", "dataset", "seed"], columns="arm", values="value")
    gap = (wide["mae_wsp"] - wide["wsp"]).groupby(["precision", "dataset"]).mean()
    readme = (REPO / "README.md").read_text()
    for dataset, name in (("cifar10", "CIFAR-10"), ("cifar100", "CIFAR-100")):
        fp32, bf16 = gap["fp32", dataset], gap["bf16", dataset]
        assert fp32 > bf16 > 0  # "the same sign and larger in fp32"
        assert f"{fp32:+.2f} against {bf16:+.2f} on {name}" in " ".join(readme.split())


@pytest.mark.parametrize("preset", ["cpu", "gpu"])
def test_every_key_an_analysis_plan_names_is_one_its_studies_make(preset):
    """A primary or secondary that no study of the preset can produce (a removed schedule point or
    size, a misspelt dataset) would leave its claim untested without a word: the keys the preset's
    studies make, per WSP epoch and at equal FLOPs, hold every key of its plan."""
    from studylib.registry import compared_pairs

    exp = load_experiment(preset)
    studies, datasets = exp.studies, exp.data.probe
    bare = {f"probe/{d}" for d in datasets}
    bare |= {f"epochs{e}/{d}" for e in studies.wsp_epochs for d in datasets}
    bare |= {f"{size}/{d}" for size in studies.model_sizes for d in datasets}
    bare |= {f"{arm}/{d}" for arm in ("mae", "mae_wsp") for d in datasets}
    made = bare | {f"{a}-{b}/{key}" for a, b in compared_pairs()[1:] for key in bare}
    for claim in "abcd":
        plan = getattr(exp.analysis, claim)
        named = [plan.primary, *plan.every, *(k for k in plan.secondary if k != "*")]
        assert set(named) <= made, (claim, sorted(set(named) - made))


def test_the_paired_views_subtract_the_same_seed_and_leave_out_a_run_paired_with_itself():
    from studylib import panels

    probes = pd.DataFrame(
        [
            dict(seed=s, dataset="d", model="nano", mae_data=point, arm=arm, value=v, run=run)
            for s in (0, 1)
            for point, arm, v, run in (
                ("small", "MAE", 40.0 + s, f"probe-mae-small-{s}"),
                ("large", "MAE", 43.0 + 2 * s, f"probe-mae-large-{s}"),
                ("small", "WSP", 45.0, f"probe-wsp-{s}"),  # WSP: one run at every point
                ("large", "WSP", 45.0, f"probe-wsp-{s}"),
            )
        ]
    )
    diffs = panels.paired_minus(probes, "mae_data", {"large": "small"})
    assert set(diffs.arm) == {"MAE"} and list(diffs.sort_values("seed")["diff"]) == [3.0, 4.0]
