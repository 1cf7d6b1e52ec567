"""The transfer suite: every task of the paper's evaluation on one pretrained encoder, one tidy table.

    finetune    full fine-tuning with layer-wise lr decay        (per dataset in data.probe)
    linear      linear probe on frozen features                  (per dataset)
    lowshot     1/5/10 examples per class, several draws         (per dataset)
    robustness  the fine-tuned model on corrupted test images    (per dataset; fine-tunes first)
    zeroshot    LiT text tower on hashtag captions, class names  (on the pool dataset)

Every task is a run folder of its own, so a rerun skips what finished. The table (task, dataset,
variant, metric, value, seed, encoder, run) goes to <encoder run>/transfer.csv.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from studylib.config import ConfigError, Experiment
from studylib.distributed import is_main
from studylib.runs import Run, atomic_write, save_weights, sha256, train_once
from studylib.stages import finetune, lit, lowshot, probe, robustness


def import_checkpoint(exp: Experiment, path: str | Path, layout: str = "auto") -> Run:
    """An outside checkpoint (timm, official MAE or MAWS layout) as a finished run holding encoder.pth
    for `exp.model`, so that every task can take it like one of this project's own runs."""
    from studylib.checkpoints import load_external

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such checkpoint file")
    digest = sha256(path)
    run = Run(exp, "import", {"sha256": digest, "layout": layout, "model": exp.model})

    def work() -> dict:
        state = load_external(path, layout, size=exp.model)
        if is_main():
            save_weights(run.path / "encoder.pth", state)
        return {"source": str(path.resolve()), "sha256": digest, "layout": layout, "model": exp.model}

    return train_once(run, work)


def _row(task: str, dataset: str, variant: str, metric: str, value: float, seed: int, run: Run) -> dict:
    return {"task": task, "dataset": dataset, "variant": variant, "metric": metric, "value": value, "seed": seed,
            "run": run.name}


def transfer_suite(exp: Experiment, encoder_run: Run) -> pd.DataFrame:
    """Run (or reuse) every task of exp.transfer.tasks on `encoder_run`; one row per
    (task, dataset, variant, metric, seed)."""
    tasks, seed, rows = exp.transfer.tasks, exp.seed, []
    for dataset in exp.data.probe:
        if "finetune" in tasks or "robustness" in tasks:
            run = finetune.finetune(exp, encoder_run, dataset)
            rows.append(_row("finetune", dataset, "", "top1", run.results()["top1"], seed, run))
        if "robustness" in tasks:
            rob = robustness.robustness(exp, run, dataset)
            result = rob.results()
            rows.append(_row("robustness", dataset, "clean", "top1", result["top1_clean"], seed, rob))
            for name, per_severity in result["top1_corrupted"].items():
                rows += [_row("robustness", dataset, f"{name}/{s}", "top1", a, seed, rob)
                         for s, a in enumerate(per_severity, 1)]
            rows.append(_row("robustness", dataset, "mean", "top1", result["mean_corruption_top1"], seed, rob))
            rows.append(_row("robustness", dataset, "mean", "drop", result["drop_from_clean"], seed, rob))
        if "linear" in tasks:
            run = probe.linear_probe(exp, encoder_run, dataset)
            rows.append(_row("linear", dataset, "", "top1", run.results()["top1"], seed, run))
        if "lowshot" in tasks:
            run = lowshot.lowshot(exp, encoder_run, dataset)
            for k, accuracies in run.results()["top1"].items():
                rows += [_row("lowshot", dataset, f"{k}-shot", "top1", a, lowshot.draw_seed(exp, d), run)
                         for d, a in enumerate(accuracies)]
    if "zeroshot" in tasks:
        run = lit.zero_shot(exp, encoder_run)
        result = run.results()
        for level in ("fine", "coarse"):
            if f"top1_{level}" in result:
                rows.append(_row("zeroshot", result["dataset"], level, "top1", result[f"top1_{level}"], seed, run))
                rows.append(_row("zeroshot", result["dataset"], level, "chance", result[f"chance_{level}"], seed, run))
    table = pd.DataFrame(rows).assign(encoder=encoder_run.name)
    if is_main():
        atomic_write(encoder_run.path / "transfer.csv", lambda f: table.to_csv(f, index=False))
    return table


def summary(table: pd.DataFrame) -> pd.DataFrame:
    """One line per (task, dataset, variant): mean and std over seeds (low-shot draws), n."""
    headline = table[(table.metric != "chance") & ~table.variant.str.contains("/")]
    grouped = headline.groupby(["encoder", "task", "dataset", "variant", "metric"], sort=False)["value"]
    return grouped.agg(["mean", "std", "count"]).round(2)
