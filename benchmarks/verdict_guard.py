"""Does a change that moves numerics move a verdict? Each claim's primary comparison on a preset's
committed tables at a git revision (before) and on the tables in results/ now (after), same seeds.

    python benchmarks/verdict_guard.py --before b1d6b89 [--preset cpu] [--out guard.json]

The guard passes when claim (a)'s primary has the same verdict on both, and its mean paired
difference moved by less than its own 95% half-width before. The shift is also given per seed
(after - before, paired by seed) with its 95% t-interval. Exits 1 when the guard fails.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from studylib import comparisons, findings
from studylib.config import load_experiment
from studylib.paths import REPO_ROOT

STUDIES = ("default", "transfer", "wsp_epochs", "model_size", "data_size")


def primaries(key: str, plan) -> dict[str, comparisons.Comparison]:
    """Each claim's primary comparison on the tables under $STUDYLIB_RESULTS/<key>."""
    found = findings.analyse(comparisons.comparisons(key), plan)
    return {c.claim: c for c in found if c.role == "primary"}


def tables_at(revision: str, key: str, folder: Path) -> None:
    """The study tables of results/<key>/ as committed at `revision`, into folder/<key>/."""
    (folder / key).mkdir(parents=True)
    for study in STUDIES:
        shown = subprocess.run(
            ["git", "show", f"{revision}:results/{key}/{study}.csv"],
            cwd=REPO_ROOT,
            capture_output=True,
        )
        if shown.returncode == 0:
            (folder / key / f"{study}.csv").write_bytes(shown.stdout)


def shift(before: comparisons.Comparison, after: comparisons.Comparison) -> dict:
    """after - before: of the means, and per seed (both lists are in seed order) with its
    interval."""
    pairs = [a - b for a, b in zip(after.differences, before.differences, strict=True)]
    mean = statistics.fmean(pairs)
    half = (
        comparisons.t_quantile_975(len(pairs) - 1) * statistics.stdev(pairs) / math.sqrt(len(pairs))
        if len(pairs) > 1
        else math.nan
    )
    return {"shift": after.mean - before.mean, "per_seed_mean": mean, "per_seed_half_width": half}


def describe(c: comparisons.Comparison) -> dict:
    return {
        "key": c.key,
        "mean": c.mean,
        "half_width": c.half_width,
        "n": c.n,
        "p_holm": c.p_holm,
        "verdict": c.verdict,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--before", required=True, help="git revision of the reference tables")
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    exp = load_experiment(args.preset)
    key = exp.results_key
    after = primaries(key, exp.analysis)
    with tempfile.TemporaryDirectory() as folder:
        tables_at(args.before, key, Path(folder))
        os.environ["STUDYLIB_RESULTS"] = folder
        before = primaries(key, exp.analysis)
    rows = {}
    for claim in sorted(set(before) & set(after)):
        old, new = before[claim], after[claim]
        same_seeds = old.n == new.n
        rows[claim] = {
            "before": describe(old),
            "after": describe(new),
            **(shift(old, new) if same_seeds else {"shift": new.mean - old.mean}),
        }
        row = rows[claim]
        print(
            f"({claim}) {old.key}: before {old.mean:+.2f} {old.interval()} {old.verdict}, "
            f"after {new.mean:+.2f} {new.interval()} {new.verdict}; shift {row['shift']:+.2f}"
            + (
                f" (per seed {row['per_seed_mean']:+.2f} ± {row['per_seed_half_width']:.2f})"
                if same_seeds
                else ""
            )
        )
    a = rows.get("a")
    passed = bool(
        a
        and a["before"]["verdict"] == a["after"]["verdict"]
        and abs(a["shift"]) < a["before"]["half_width"]
    )
    print(f"guard on claim (a): {'passes' if passed else 'FAILS'}")
    if args.out:
        Path(args.out).write_text(json.dumps({"before": args.before, "claims": rows}, indent=2))
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
