"""The default study: MAE -> WSP against WSP from scratch at the same WSP epochs, then linear probes.

Every stage is a run folder keyed by its config hash, so rerunning the study trains only what is
missing or unfinished.
"""

from __future__ import annotations

import pandas as pd

from studylib.config import Experiment, results_dir
from studylib.distributed import is_main
from studylib.runs import Run, atomic_write
from studylib.stages import mae, probe, wsp

PRETRAINING_NAMES = {"scratch": "WSP", "mae": "MAE→WSP"}


def _stage_rows(run: Run, stage: str, pretraining: str, dataset: str) -> list[dict]:
    results = run.results()
    metrics = {k: results[k] for k in ("final_loss", "top1", "wall_time_s", "images_per_s") if k in results}
    if "feature_images_per_s" in results:
        metrics["images_per_s"] = results["feature_images_per_s"]
    return [{"stage": stage, "pretraining": pretraining, "dataset": dataset, "metric": k, "value": v,
             "run": run.name} for k, v in metrics.items()]


def default_study(exp: Experiment) -> pd.DataFrame:
    """Run (or reuse) every stage and return one tidy table: stage, pretraining, dataset, metric, value, run."""
    mae_run = mae.pretrain(exp)
    rows = _stage_rows(mae_run, "mae", "MAE", exp.data.pretrain)
    for init_name, init in (("scratch", None), ("mae", mae_run)):
        wsp_run = wsp.pretrain(exp, init=init)
        rows += _stage_rows(wsp_run, "wsp", PRETRAINING_NAMES[init_name], exp.data.pretrain)
        for dataset in exp.data.probe:
            probe_run = probe.linear_probe(exp, wsp_run, dataset)
            rows += _stage_rows(probe_run, "linear_probe", PRETRAINING_NAMES[init_name], dataset)
    table = pd.DataFrame(rows)
    if is_main():
        atomic_write(results_dir(exp.preset) / "default_study.csv", lambda f: table.to_csv(f, index=False))
    return table


def summary_text(table: pd.DataFrame) -> str:
    """The study's headline numbers as plain text."""
    lines = []
    mae_loss = table.query("stage == 'mae' and metric == 'final_loss'")["value"]
    lines.append(f"MAE final loss: {mae_loss.iloc[0]:.4f}")
    top1 = table.query("metric == 'top1'").pivot_table(index="pretraining", columns="dataset", values="value")
    lines += ["", "Linear-probe top-1 (%):", top1.round(2).to_string()]
    speed = table[table.metric.isin(["wall_time_s", "images_per_s"])].pivot_table(
        index=["stage", "pretraining", "dataset"], columns="metric", values="value", sort=False)
    lines += ["", "Wall time and throughput per stage:", speed.round(1).to_string(),
              "", f"Total wall time: {speed['wall_time_s'].sum() / 60:.1f} min"]
    return "\n".join(lines)
