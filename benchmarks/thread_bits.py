"""What a thread count changes in a run's numbers: the same MAE and MAE→WSP runs trained at one
thread and at two, each in its own process and runs folder, compared weight by weight.

    STUDYLIB_DATA=../shared/data python benchmarks/thread_bits.py [--preset cpu] [--epochs 1]

Thread counts, like the other speed-only settings, are not in a run's identity (config.SPEED_ONLY):
this measures what that rule lets differ between two machines or two layouts of one batch.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

TRAIN = """
import json, sys, torch
torch.set_num_threads(int(sys.argv[1]))
from studylib.config import load_experiment
from studylib.stages import mae, wsp
exp = load_experiment(sys.argv[2], sys.argv[3:])
first = mae.pretrain(exp)
second = wsp.pretrain(exp, first)
print(json.dumps({r.stage: [str(r.path), r.results()["final_loss"]] for r in (first, second)}))
"""


def trained(threads: int, preset: str, overrides: list[str], runs: Path) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", TRAIN, str(threads), preset, *overrides],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "STUDYLIB_RUNS": str(runs)},
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--epochs", type=int, default=1)
    args = parser.parse_args()
    overrides = [f"mae.epochs={args.epochs}", f"wsp.epochs={args.epochs}", "seed=99"]
    with tempfile.TemporaryDirectory() as tmp:
        one = trained(1, args.preset, overrides, Path(tmp) / "one")
        two = trained(2, args.preset, overrides, Path(tmp) / "two")
        for stage in one:
            a = torch.load(Path(one[stage][0]) / "encoder.pth")["state"]
            b = torch.load(Path(two[stage][0]) / "encoder.pth")["state"]
            worst = max((a[k].float() - b[k].float()).abs().max().item() for k in a)
            print(
                f"{stage}: largest weight difference {worst:.2g}; final loss "
                f"{one[stage][1]:.6f} (1 thread) vs {two[stage][1]:.6f} (2 threads)"
            )


if __name__ == "__main__":
    main()
