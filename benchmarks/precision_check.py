"""Does bf16 autocast change what a short run learns? The default study's stages in fp32 and in
bf16.

    STUDYLIB_DATA=../shared/data python benchmarks/precision_check.py  # cpu preset, short schedule
    python benchmarks/precision_check.py --preset smoke --set          # seconds, synthetic data

For each precision and seed: every arm of the preset's studies.arms, a linear probe of each on every
probe dataset. Prints top-1 per precision (mean and sd over seeds), the bf16 - fp32 difference, and
each arm's training throughput; writes JSON (--out). The resolved precision is part of every run's
identity, so the two precisions never share a run folder.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

import pandas as pd

from studylib.comparisons import t_quantile_975
from studylib.config import load_experiment
from studylib.io import git_sha
from studylib.registry import compared_pairs
from studylib.study import default_one_seed

SHORT = ["data.pretrain_fraction=0.2", "mae.epochs=4", "wsp.epochs=2"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="cpu")
    parser.add_argument(
        "--set",
        nargs="*",
        default=SHORT,
        dest="overrides",
        metavar="KEY=VALUE",
        help=f"overrides of the preset (default: {' '.join(SHORT)})",
    )
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--out", default=None, help="write the table as JSON here")
    args = parser.parse_args()

    rows = []
    for precision in ("fp32", "bf16"):
        exp = load_experiment(args.preset, [*args.overrides, f"precision={precision}"])
        for seed in args.seeds:
            rows += [
                {**row, "precision": precision, "seed": seed}
                for row in default_one_seed(dataclasses.replace(exp, seed=seed))
            ]
    table = pd.DataFrame(rows)

    top1 = table[table.metric == "top1"].pivot_table(
        index=["arm", "dataset"], columns="precision", values="value", aggfunc=["mean", "std"]
    )
    top1[("bf16 - fp32", "")] = top1[("mean", "bf16")] - top1[("mean", "fp32")]
    loss = table[table.metric == "final_loss"].pivot_table(
        index=["stage", "arm", "dataset"],
        columns="precision",
        values="value",
        aggfunc=["mean", "std"],
    )
    speed = table[table.metric == "images_per_s"].pivot_table(
        index=["stage", "arm"], columns="precision", values="value", aggfunc="mean"
    )
    speed["bf16 / fp32"] = speed["bf16"] / speed["fp32"]
    print(f"{args.preset} {' '.join(args.overrides)}, seeds {args.seeds}")
    print("linear-probe top-1 (%): mean and sd over seeds\n" + top1.round(2).to_string())
    print("MAE→WSP − WSP, paired by seed: mean [95% t-interval]\n" + paired(table).to_string())
    print("final training loss: mean and sd over seeds\n" + loss.round(4).to_string())
    print("training images/s, mean over seeds\n" + speed.round(2).to_string())
    if args.out:
        with open(args.out, "w") as f:
            json.dump(
                {
                    "preset": args.preset,
                    "overrides": args.overrides,
                    "seeds": args.seeds,
                    "commit": git_sha(),
                    "date": time.strftime("%Y-%m-%d"),
                    "rows": rows,
                },
                f,
                indent=2,
            )


def paired(table: pd.DataFrame) -> pd.DataFrame:
    """The paper's claim (the registry's first compared pair) in each precision, and bf16's minus
    fp32's, paired by seed, with 95% t-intervals."""
    a, b = compared_pairs()[0]
    top1 = table[(table.metric == "top1") & table.arm.isin([a, b])]
    wide = top1.pivot_table(index=["dataset", "seed"], columns=["precision", "arm"], values="value")
    rows = []
    for dataset, per_seed in wide.groupby(level="dataset"):
        gaps = {p: per_seed[(p, a)] - per_seed[(p, b)] for p in ("fp32", "bf16")}
        gaps["bf16 - fp32"] = gaps["bf16"] - gaps["fp32"]
        for name, gap in gaps.items():
            half = t_quantile_975(len(gap) - 1) * gap.std() / len(gap) ** 0.5
            mean = gap.mean()
            interval = f"[{mean - half:+.2f}, {mean + half:+.2f}]"
            rows.append(
                dict(dataset=dataset, of=name, n=len(gap), mean=round(mean, 2), interval=interval)
            )
    return pd.DataFrame(rows)


if __name__ == "__main__":
    main()
