"""The transfer suite: every task of transfer.tasks (studylib.registry.TASKS) on one pretrained
encoder, one tidy table.

Every task is a run folder of its own, so a rerun skips what finished. The table (task, dataset,
variant, metric, value, draw, run, encoder) goes to <encoder run>/transfer.csv.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from studylib.distributed import is_main
from studylib.errors import ConfigError
from studylib.experiment import Experiment
from studylib.io import atomic_write, sha256
from studylib.registry import TASKS, call
from studylib.runs import Run, train_once


def import_checkpoint(exp: Experiment, path: str | Path, layout: str = "auto") -> Run:
    """An outside checkpoint (timm, official MAE or MAWS layout) as a finished run holding
    encoder.pth for `exp.model`, so that every task can take it like one of this project's own
    runs."""
    from studylib.external_weights import load_external

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such checkpoint file")
    digest = sha256(path)
    run = Run(exp, "import", {"sha256": digest, "layout": layout})

    def make_results() -> dict:
        state = load_external(path, layout, size=exp.model)
        if is_main():
            run.save("encoder.pth", state)
        return {
            "source": str(path.resolve()),
            "sha256": digest,
            "layout": layout,
            "model": exp.model,
        }

    return train_once(run, make_results)


def transfer_suite(exp: Experiment, encoder_run: Run) -> pd.DataFrame:
    """Run (or reuse) every task of exp.transfer.tasks on `encoder_run`; one row per
    (task, dataset, variant, metric, draw)."""
    rows = []
    for name in exp.transfer.tasks:
        task = TASKS[name]
        for dataset in exp.data.probe if task.per_dataset else [None]:
            run = call(task.takes, exp, encoder_run, dataset) if task.takes else encoder_run
            rows += [
                {"task": name, "variant": "", **row} for row in call(task.rows, exp, run, dataset)
            ]
    table = pd.DataFrame(rows).assign(encoder=encoder_run.name)
    if is_main():
        atomic_write(encoder_run.path / "transfer.csv", lambda f: table.to_csv(f, index=False))
    return table


def summary(table: pd.DataFrame) -> pd.DataFrame:
    """One line per (task, dataset, variant): mean and std over draws, n."""
    headline = table[(table.metric != "chance") & ~table.variant.fillna("").str.contains("/")]
    grouped = headline.groupby(["encoder", "task", "dataset", "variant", "metric"], sort=False)[
        "value"
    ]
    return grouped.agg(["mean", "std", "count"]).round(2)
