"""Findings are computed from the tables by the stated rule, never typed."""

import math
import statistics
from pathlib import Path

import pandas as pd
import pytest

from studylib import findings
from studylib.config import REPO_ROOT

REPO = Path(__file__).resolve().parent.parent


def test_interval_is_students_t_and_the_rule_gives_each_verdict():
    c = findings.Comparison("a", "x", [1.0, 2.0, 3.0])
    # mean 2, sd 1, n 3: half width t(0.975, 2) / sqrt(3) = 4.303 / 1.732
    assert c.mean == 2 and c.half_width == pytest.approx(4.303 / math.sqrt(3), rel=1e-4)
    assert c.verdict == "inconclusive"  # [-0.48, +4.48] holds 0
    assert findings.Comparison("a", "x", [2.0, 2.1, 1.9, 2.0]).verdict == "holds"
    assert findings.Comparison("a", "x", [-2.0, -2.1, -1.9]).verdict == "contradicted"
    assert findings.Comparison("a", "x", [5.0]).verdict == "inconclusive"  # one seed: no interval
    big = findings.Comparison("a", "x", [float(i % 7) for i in range(50)])
    assert big.half_width == pytest.approx(1.96 * statistics.stdev(big.differences) / math.sqrt(50))
    verdict = findings.claim_verdict
    assert verdict(["holds", "holds"]) == "holds" and verdict(["contradicted"]) == "contradicted"
    assert verdict(["holds", "contradicted"]) == "mixed" and verdict(["holds", "inconclusive"]) == "inconclusive"


def _default_table(gaps: dict[str, float], seeds: int = 3) -> pd.DataFrame:
    rows = []
    for seed in range(seeds):
        for arm, value in gaps.items():
            rows.append({"seed": seed, "arm": arm, "stage": "probe", "metric": "top1", "dataset": "cifar100",
                         "value": value + 0.1 * seed * (1 if arm == "mae_wsp" else 0.5)})
    return pd.DataFrame(rows)


def test_report_from_tables_pairs_by_seed_and_flags_arms_below_random(isolated_dirs):
    folder = isolated_dirs / "results" / "mine"
    folder.mkdir(parents=True)
    _default_table({"random": 20.0, "mae": 19.0, "wsp": 25.0, "mae_wsp": 27.0}).to_csv(folder / "default.csv")
    text = findings.write("mine")
    (row,) = [c for c in findings.comparisons("mine") if c.claim == "a"]
    assert row.differences == pytest.approx([2.0, 2.05, 2.1]) and row.verdict == "holds"
    assert "| **(a) MAE→WSP beats WSP in transfer** | **claim** | | | | **holds** |" in text
    assert "MAE on cifar100: 19.05 < random init 20.05" in text  # means over seeds
    assert "(c) MAE→WSP beats WSP at every model size | not studied in these results" in text
    saved = pd.read_csv(folder / "findings.csv")
    assert saved.verdict.tolist() == ["holds"] and saved.n.tolist() == [3]


def test_fine_tuning_is_compared_with_the_probe_of_the_same_encoder_and_seed(isolated_dirs):
    folder = isolated_dirs / "results" / "mine"
    folder.mkdir(parents=True)
    _default_table({"wsp": 25.0, "mae_wsp": 27.0}).to_csv(folder / "default.csv")
    tuned = _default_table({"wsp": 30.0, "mae_wsp": 26.0}).assign(stage="finetune", variant="")
    tuned.to_csv(folder / "transfer.csv")
    checks = {c.what.split(" (")[0]: c for c in findings.finetune_against_probe("mine")}
    assert checks["WSP on cifar100"].differences == pytest.approx([5.0, 5.0, 5.0])
    assert checks["WSP on cifar100"].verdict == "holds"
    assert checks["MAE→WSP on cifar100"].differences == pytest.approx([-1.0] * 3)
    report = findings.write("mine")
    assert "| MAE→WSP on cifar100 (seeds 0, 1, 2): fine-tune 26.10 vs linear probe 27.10 | -1.00 | 3 |" in report
    assert "Where fine-tuning is not ahead" in report

    tuned[tuned.seed == 0].to_csv(folder / "transfer.csv")  # fine-tuned at the first seed only
    check = {c.what.split(" (")[0]: c for c in findings.finetune_against_probe("mine")}["WSP on cifar100"]
    assert check.what.endswith("(seed 0): fine-tune 30.00 vs linear probe 25.00")  # seed 0's probe, not the mean


def test_readme_findings_are_generated_from_the_committed_cpu_results(monkeypatch):
    monkeypatch.setenv("STUDYLIB_RESULTS", str(REPO_ROOT / "results"))
    committed = (REPO_ROOT / "results" / "cpu" / "findings.md").read_text()
    assert findings.report("cpu") == committed, "run `studylib findings --preset cpu --readme`"
    readme = (REPO / "README.md").read_text()
    assert readme.split("<!-- findings: begin -->\n")[1].split("<!-- findings: end -->")[0] == committed


def test_figures_draw_the_same_95_interval_and_state_n(isolated_dirs):
    from studylib import figures

    low, high = figures.interval95(pd.Series([1.0, 2.0, 3.0]))
    assert (low + high) / 2 == 2 and (high - low) / 2 == pytest.approx(4.303 / math.sqrt(3), rel=1e-4)
    assert figures.interval95(pd.Series([4.0])) == (4.0, 4.0)
    folder = isolated_dirs / "results" / "mine"
    folder.mkdir(parents=True)
    _default_table({"wsp": 25.0, "mae_wsp": 27.0}).to_csv(folder / "default.csv")
    svg = figures.default("mine")[1].read_text()
    assert "n = 3 seeds, mean and 95% t-interval" in svg and "MAE→WSP" in svg


def test_committed_figures_have_no_colliding_labels_or_legends_over_data(monkeypatch):
    """Every figure drawn from the committed cpu tables, checked with matplotlib's renderer: no tick labels
    or texts overlap, no legend covers a plotted point, and none is wider than 1,600 px (README width)."""
    from studylib import figures

    monkeypatch.setenv("STUDYLIB_RESULTS", str(REPO_ROOT / "results"))
    checked = {}

    def check(fig, name, *_):
        checked[name] = figures.overlaps(fig), fig.get_size_inches()[0] * 150
        figures.plt.close(fig)
        return []

    monkeypatch.setattr(figures, "save", check)
    figures.style()
    for name in ("default", "convergence", "model_size", "data_size", "transfer", "hashtags"):
        getattr(figures, name)("cpu")
    assert {name: clashes for name, (clashes, _) in checked.items() if clashes} == {}
    assert max(width for _, width in checked.values()) <= 1600
    assert len(checked) == 6


def test_the_layout_check_sees_overlapping_labels_and_a_legend_over_data():
    from studylib import figures

    fig, ax = figures.plt.subplots(figsize=(2, 2))
    ax.plot([0, 1], [0, 1], marker="o", label="a line")
    ax.set_xticks([0, 0.02], ["a long tick label", "another long one"])
    ax.legend(loc="upper right", bbox_to_anchor=(1.05, 1.05))
    found = figures.overlaps(fig)
    assert any("tick labels" in f for f in found) and any("legend covers" in f for f in found)
    figures.plt.close(fig)
