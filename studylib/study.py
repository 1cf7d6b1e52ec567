"""The paper's studies (studylib.registry.STUDIES), each a function of an Experiment that runs (or
reuses) ordinary stage runs and returns one tidy table, also written to results/<key>/<study>.csv,
where the key is the preset, or the preset and a hash of its overrides (Experiment.results_key).

Every study compares the arms of studylib.registry.ARMS that it and studies.arms name, once per seed
of studies.seeds. Every stage is a run folder keyed by its identity, so rerunning a study trains
only what is missing or unfinished.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml

from studylib import pool, preflight
from studylib.data import load_dataset
from studylib.distributed import is_main, precision_name
from studylib.errors import ConfigError, RunFolderError
from studylib.experiment import Experiment, parse_mae_data
from studylib.io import atomic_write, warn
from studylib.models import VIT_SIZES, count_flops, count_params, vit
from studylib.paths import results_dir
from studylib.pool import is_shard_folder, open_pool
from studylib.registry import ARMS, STUDIES, Arm, call, labels
from studylib.runs import Run, trained_with
from studylib.stages import mae, probe
from studylib.transfer import transfer_suite
from studylib.workers import run_seeds

COLUMNS = (
    "study model seed arm mae_data wsp_epochs stage dataset variant metric value draw run"
).split()
RESULT_METRICS = ("final_loss", "top1", "wall_time_s", "images_per_s", "train_flops")


def with_values(exp: Experiment, **sections: dict) -> Experiment:
    """`exp` with some values of its sections replaced, e.g. with_values(exp, mae={"epochs":
    16})."""
    changed = {
        name: dataclasses.replace(getattr(exp, name), **values) for name, values in sections.items()
    }
    return dataclasses.replace(exp, **changed)


def _rows(run: Run, **columns: object) -> list[dict]:
    """A finished run's headline results, one row per metric."""
    results = run.results()
    metrics = {k: results[k] for k in RESULT_METRICS if k in results}
    if "feature_images_per_s" in results:
        metrics["images_per_s"] = results["feature_images_per_s"]
    dataset = results.get("dataset") or run.identity.get("data", {}).get("dataset")
    return [
        {
            "dataset": dataset,
            **columns,
            "stage": run.stage,
            "metric": k,
            "value": v,
            "run": run.name,
        }
        for k, v in metrics.items()
    ]


def arms_of(exp: Experiment, study: str) -> list[Arm]:
    """The arms `study` compares: those of studies.arms that the study takes, in registry order."""
    taken = STUDIES[study].arms
    return [
        arm
        for name, arm in ARMS.items()
        if name in exp.studies.arms and (taken is None or name in taken)
    ]


def pretrain_arm(exp: Experiment, arm: Arm, **columns: object) -> tuple[Run, list[dict]]:
    """Train (or reuse) an arm's chain of runs; its encoder run and rows for every run of the chain
    and the arm's total training FLOPs (MAE's included for MAE→WSP)."""
    chain: list[Run] = call(arm.pretrain, exp)
    where = {**columns, "arm": arm.name}
    rows = [row for run in chain for row in _rows(run, **where)]
    rows.append(
        {
            **where,
            "stage": "pretraining",
            "metric": "train_flops",
            "run": chain[-1].name,
            "value": sum(_recorded_train_flops(run) for run in chain),
        }
    )
    return chain[-1], rows


def _recorded_train_flops(run: Run) -> float:
    """A finished pretraining run's training FLOPs; a results.json without them is refused, not read
    as 0."""
    flops = run.results().get("train_flops")
    if not isinstance(flops, int | float) or flops < 0:
        raise RunFolderError(
            f"{run.path / 'results.json'}: train_flops is {str(flops)[:40]}; allowed: a number "
            ">= 0 (delete the file to finish the run again)"
        )
    return float(flops)


def probe_arms(exp: Experiment, study: str, **columns: object) -> list[dict]:
    """Every arm of `study`, then a linear probe of its encoder on every dataset of data.probe."""
    rows = []
    for arm in arms_of(exp, study):
        encoder, arm_rows = pretrain_arm(exp, arm, **columns)
        rows += arm_rows
        for dataset in exp.data.probe:
            rows += _rows(probe.probe(exp, encoder, dataset), **columns, arm=arm.name)
    return rows


def _per_seed(
    exp: Experiment,
    one_seed: Callable[[Experiment], list[dict]],
    datasets: tuple[str, ...] = (),
    study: str = "",
) -> list[dict]:
    """`one_seed` once per seed the study runs (studies.seeds_of: the confirmation seeds, or the
    pilot seeds). Every dataset the study reads (the pool, MAE's images, the probe datasets and
    `datasets`) is loaded first, so bad data stops it before anything trains."""
    streamed = [exp.data.pretrain] if open_pool(exp).streamed else []  # read as it trains
    for name in dict.fromkeys([exp.data.pretrain, exp.mae.data, *exp.data.probe, *datasets]):
        if name != "pretrain" and name not in streamed and not is_shard_folder(name):
            load_dataset(name, exp.data)
    preflight.check_sizes(exp)
    seeds = exp.studies.seeds_of(study, exp.pilot)
    if not seeds:
        raise ConfigError(
            "studies.pilot_seeds: [] has no seed to run --pilot with; allowed: a non-empty list"
        )
    return run_seeds(exp, one_seed, seeds, study)


def _table(exp: Experiment, study: str, rows: list[dict]) -> pd.DataFrame:
    """The study's table, written to results/<key>/<study>.csv beside experiment.yaml, which records
    the preset, its overrides, the whole resolved experiment and the package versions its runs were
    trained with."""
    table = pd.DataFrame(rows).assign(study=study)
    table = table.reindex(columns=COLUMNS + [c for c in table.columns if c not in COLUMNS])
    # all-NaN (float) when no point sets it
    table["model"] = table["model"].astype(object).fillna(exp.model)
    # resolved on this machine: auto is bf16 on some CPUs, fp32 on others
    table["precision"] = precision_name(exp)
    if is_main():
        folder = results_dir(exp.results_key)
        _say_if_precision_changes(
            folder / f"{study}.csv", table["precision"].iloc[0] if len(table) else ""
        )
        record = {
            "preset": exp.preset,
            "overrides": exp.overrides,
            "experiment": exp.to_dict(),
            "trained_with": _trained_with(folder / "experiment.yaml", study, exp.preset, table),
        }
        atomic_write(
            folder / "experiment.yaml", lambda f: yaml.safe_dump(record, f, sort_keys=False)
        )
        atomic_write(folder / f"{study}.csv", lambda f: table.to_csv(f, index=False))
    return table


def _trained_with(record: Path, study: str, preset: str, table: pd.DataFrame) -> dict[str, list]:
    """Per study, the package versions its table's runs were trained with (their meta.json): this
    study's now, the others' as `record` had them."""
    try:
        earlier = (yaml.safe_load(record.read_text()) or {}).get("trained_with")
    except (OSError, yaml.YAMLError, AttributeError):
        earlier = None
    earlier = earlier if isinstance(earlier, dict) else {}
    runs = [name for name in table.get("run", []) if isinstance(name, str)]
    return {**earlier, study: trained_with(preset, runs)}


def _say_if_precision_changes(path: Path, precision: str) -> None:
    """One line where a table of another precision is replaced (precision auto is bf16 on some CPUs,
    fp32 on others): the folder's other tables keep theirs until their studies rerun, and findings
    refuse to mix them."""
    try:
        old = (
            set(pd.read_csv(path, usecols=["precision"])["precision"].dropna())
            if path.exists()
            else set()
        )
    except (ValueError, OSError):
        return
    if old and old != {precision}:
        warn(
            f"{path}: replacing its {'/'.join(sorted(old))} results with {precision} ones (what "
            "precision resolves to here); findings will not pair them with "
            f"{'/'.join(sorted(old))} tables left in {path.parent}"
        )


def default_one_seed(exp: Experiment) -> list[dict]:
    """One seed of the default study: every arm, linear probes of each."""
    return probe_arms(exp, "default")


def default_study(exp: Experiment) -> pd.DataFrame:
    """Every arm, then linear probes on every probe dataset."""
    return _table(exp, "default", _per_seed(exp, default_one_seed, study="default"))


def model_size_study(exp: Experiment) -> pd.DataFrame:
    """The default study at every size of studies.model_sizes, with parameters and FLOPs per
    image."""
    return _table(exp, "model_size", _per_seed(exp, model_size_one_seed, study="model_size"))


def model_size_one_seed(exp: Experiment) -> list[dict]:
    """One seed of the model-size study: each size's parameters, FLOPs and arms."""
    rows = []
    for size in exp.studies.model_sizes:
        with torch.device("meta"):
            encoder = vit(size)
        flops = count_flops(encoder, VIT_SIZES[size]["img_size"]) / 1e9
        rows.append(
            {"model": size, "stage": "model", "metric": "params", "value": count_params(encoder)}
        )
        rows.append({"model": size, "stage": "model", "metric": "gflops_per_image", "value": flops})
        rows += probe_arms(dataclasses.replace(exp, model=size), "model_size", model=size)
    return rows


def data_size_study(exp: Experiment) -> pd.DataFrame:
    """Every arm with MAE's images at each point of studies.mae_data, 'DATASET:FRACTION' (that share
    of the whole dataset; 'pretrain' is the pool), probed on the datasets outside every point
    (outside_mae_data). MAE takes the same steps at every point: each of its epochs draws as many
    images as the pool holds. The arms without MAE are the same runs at every point."""
    one_seed = functools.partial(data_size_one_seed, probes=tuple(outside_mae_data(exp)))
    datasets = tuple(parse_mae_data(text)[0] for text in exp.studies.mae_data)
    return _table(exp, "data_size", _per_seed(exp, one_seed, datasets, "data_size"))


def data_size_one_seed(exp: Experiment, probes: tuple[str, ...]) -> list[dict]:
    """One seed of the data-size study, probed on `probes`."""
    rows = []
    for text, at, images in data_size_points(with_values(exp, data={"probe": list(probes)})):
        rows.append({"mae_data": text, "stage": "mae", "metric": "images", "value": images})
        rows += probe_arms(at, "data_size", mae_data=text)
    return rows


def data_size_points(exp: Experiment) -> list[tuple[str, Experiment, int]]:
    """Each point of studies.mae_data: its text, the experiment MAE runs under there and MAE's
    images."""
    points, pool_images = [], pool.count(exp)
    for text in exp.studies.mae_data:
        dataset, fraction = parse_mae_data(text)
        at = with_values(exp, mae={"data": dataset, "data_fraction": fraction})
        images = pool.count(at, *mae.image_source(at))
        if images != pool_images:  # else the very run of the other studies
            at = with_values(at, mae={"epoch_images": pool_images})
        points.append((text, at, images))
    return points


def outside_mae_data(exp: Experiment) -> list[str]:
    """The probe datasets that no point of studies.mae_data pre-pretrains on: a probe that fits on
    images MAE saw would measure memory, not features."""
    names = [parse_mae_data(text)[0] for text in exp.studies.mae_data]
    seen = {
        part
        for name in names
        for part in (exp.data.pretrain if name == "pretrain" else name).split("+")
    }
    probes = [name for name in exp.data.probe if name not in seen]
    if not probes:
        warn(
            f"studies.mae_data: every probe dataset of data.probe {exp.data.probe} is inside a "
            "pre-pretraining set, so the data-size study probes images MAE saw (add a "
            "data.probe dataset outside them)"
        )
    return probes or list(exp.data.probe)


def wsp_epochs_study(exp: Experiment) -> pd.DataFrame:
    """Every arm at every WSP length of studies.wsp_epochs (each a full schedule); the arms without
    WSP are the same runs at every length."""
    return _table(exp, "wsp_epochs", _per_seed(exp, wsp_epochs_one_seed, study="wsp_epochs"))


def wsp_epochs_one_seed(exp: Experiment) -> list[dict]:
    return [
        row
        for epochs in exp.studies.wsp_epochs
        for row in probe_arms(
            with_values(exp, wsp={"epochs": epochs}), "wsp_epochs", wsp_epochs=epochs
        )
    ]


def transfer_study(exp: Experiment) -> pd.DataFrame:
    """The transfer suite on the encoder of every arm the study takes."""
    return _table(exp, "transfer", _per_seed(exp, transfer_one_seed, study="transfer"))


def transfer_one_seed(exp: Experiment) -> list[dict]:
    rows = []
    for arm in arms_of(exp, "transfer"):
        encoder, _ = pretrain_arm(exp, arm)
        table = transfer_suite(exp, encoder).rename(columns={"task": "stage"})
        rows += table.drop(columns=["encoder"]).assign(arm=arm.name).to_dict("records")
    return rows


def explore_study(exp: Experiment) -> pd.DataFrame:
    """Hashtag statistics of the pool and tag frequencies; MAE reconstructions saved beside the
    tables."""
    hashtags = open_pool(exp).hashtags
    rows = [{"stage": "hashtags", "metric": k, "value": v} for k, v in hashtags.stats().items()]
    counts = torch.bincount(hashtags.tags[hashtags.tags >= 0], minlength=hashtags.vocab_size)
    rows += [
        {
            "stage": "tag_count",
            "dataset": hashtags.vocab[i],
            "metric": "count",
            "value": int(counts[i]),
        }
        for i in counts.argsort(descending=True).tolist()
    ]
    mae_run = mae.pretrain(exp)
    if is_main():
        images = mae.reconstructions(exp, mae_run)
        path = results_dir(exp.results_key) / "reconstructions.npz"
        atomic_write(path, lambda f: np.savez(f, **images, run=mae_run.name), mode="wb")
    rows += _rows(mae_run, arm="mae")
    return _table(exp, "explore", [{**row, "seed": exp.seed} for row in rows])


def top1_text(table: pd.DataFrame) -> str:
    """A study's top-1 (%) as plain text, by the columns the study varies, one column per
    dataset."""
    top1 = table[
        (table.metric == "top1") & ~table.variant.astype("string").fillna("").str.contains("/")
    ]
    columns = ("model", "mae_data", "wsp_epochs", "stage", "variant", "arm")
    index = [c for c in columns if c in top1 and top1[c].notna().any()]
    return top1.pivot_table(index=index, columns="dataset", values="value").round(2).to_string()


def hashtags_text(table: pd.DataFrame) -> str:
    """The explore study's hashtag statistics as plain text."""
    return table[table.stage == "hashtags"][["metric", "value"]].to_string(index=False)


def summary_text(table: pd.DataFrame) -> str:
    """The default study's headline numbers as plain text, arms by their labels."""
    table = table.assign(arm=table.arm.map(labels()).fillna(table.arm))
    lines = []
    for loss in (
        table.query("stage == 'mae' and metric == 'final_loss'").drop_duplicates("run").itertuples()
    ):
        lines.append(f"MAE final loss: {loss.value:.4f} (seed {loss.seed})")
    top1 = table.query("metric == 'top1'").pivot_table(
        index="arm", columns="dataset", values="value", sort=False
    )
    lines += ["", "Linear-probe top-1 (%), mean over seeds:", top1.round(2).to_string()]
    speed = (
        table[table.metric.isin(["wall_time_s", "images_per_s"])]
        .drop_duplicates(["run", "metric"])
        .pivot_table(
            index=["stage", "dataset", "run"], columns="metric", values="value", sort=False
        )
    )
    lines += [
        "",
        "Wall time and throughput of every run:",
        speed.round(1).to_string(),
        "",
        f"Total wall time: {speed['wall_time_s'].sum() / 60:.1f} min",
    ]
    return "\n".join(lines)
