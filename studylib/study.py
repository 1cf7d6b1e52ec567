"""The paper's studies, each a function of an Experiment that runs (or reuses) ordinary stage runs and
returns one tidy table, also written to results/<preset>/<study>.csv:

    default      MAE -> WSP against WSP from scratch at the same WSP epochs, linear probes
    model_size   the default study at every size of studies.model_sizes
    data_size    MAE on part of the pool, the whole pool, another dataset (studies.mae_data), then WSP
    wsp_epochs   both pretrainings at every WSP length of studies.wsp_epochs (convergence, and per FLOP)
    transfer     the whole transfer suite on both pretrainings
    explore      hashtag statistics and MAE reconstructions (results/<preset>/reconstructions.npz)

Every point runs once per seed of studies.seeds. Every stage is a run folder keyed by its config
hash, so rerunning a study trains only what is missing or unfinished.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np
import pandas as pd
import torch

from studylib.config import Experiment, results_dir, runs_dir
from studylib.data import MEAN, STD, ImageTransform
from studylib.distributed import is_main
from studylib.models import VIT_SIZES, count_flops, count_params, patchify, vit
from studylib.runs import Run, atomic_write, load_weights
from studylib.stages import mae, pretrain_images, probe, wsp
from studylib.transfer import transfer_suite
from studylib.weak_labels import simulate

PRETRAINING_NAMES = {"scratch": "WSP", "mae": "MAE→WSP"}
COLUMNS = ["study", "model", "seed", "pretraining", "mae_data", "wsp_epochs", "stage", "dataset", "variant",
           "metric", "value", "run"]


def with_values(exp: Experiment, **sections: dict) -> Experiment:
    """`exp` with some values of its sections replaced, e.g. with_values(exp, mae={"epochs": 16})."""
    changed = {name: dataclasses.replace(getattr(exp, name), **values) for name, values in sections.items()}
    return dataclasses.replace(exp, **changed)


def train_flops(exp: Experiment, stage: str, run: Run) -> float:
    """Training FLOPs of a finished MAE or WSP run: 3x the forward FLOPs (forward + backward) per image seen."""
    with torch.device("meta"):
        if stage == "mae":
            model = mae.build(exp)
        else:
            model = vit(exp.model, num_classes=run.results()["vocab_size"])
    images = sum(r["images_per_s"] * r["seconds"] for r in run.metrics())
    return 3.0 * count_flops(model, VIT_SIZES[exp.model]["img_size"]) * images


def _rows(run: Run, stage: str, **columns: object) -> list[dict]:
    results = run.results()
    metrics = {k: results[k] for k in ("final_loss", "top1", "wall_time_s", "images_per_s") if k in results}
    if "feature_images_per_s" in results:
        metrics["images_per_s"] = results["feature_images_per_s"]
    return [{**columns, "stage": stage, "metric": k, "value": v, "run": run.name} for k, v in metrics.items()]


def pretrain_and_probe(exp: Experiment, mae_run: Run | None, init_names: tuple[str, ...] = ("scratch", "mae"),
                       **columns: object) -> list[dict]:
    """WSP from scratch and/or from `mae_run`, linear probes on each; rows carry `columns` and the
    pretraining's total training FLOPs (MAE's included for MAE -> WSP)."""
    rows = []
    mae_flops = train_flops(exp, "mae", mae_run) if mae_run else 0.0
    for init_name in init_names:
        wsp_run = wsp.pretrain(exp, init=mae_run if init_name == "mae" else None)
        flops = train_flops(exp, "wsp", wsp_run) + (mae_flops if init_name == "mae" else 0.0)
        where = {**columns, "pretraining": PRETRAINING_NAMES[init_name]}
        rows += _rows(wsp_run, "wsp", **where, dataset=exp.data.pretrain)
        rows.append({**where, "stage": "wsp", "dataset": exp.data.pretrain, "metric": "train_flops", "value": flops,
                     "run": wsp_run.name})
        for dataset in exp.data.probe:
            rows += _rows(probe.linear_probe(exp, wsp_run, dataset), "linear_probe", **where, dataset=dataset)
    return rows


def _per_seed(exp: Experiment, point: Callable[[Experiment], list[dict]]) -> list[dict]:
    return [{**row, "seed": seed} for seed in exp.studies.seeds
            for row in point(dataclasses.replace(exp, seed=seed))]


def _table(exp: Experiment, study: str, rows: list[dict]) -> pd.DataFrame:
    table = pd.DataFrame(rows).assign(study=study)
    table = table.reindex(columns=COLUMNS + [c for c in table.columns if c not in COLUMNS])
    table["model"] = table["model"].astype(object).fillna(exp.model)  # all-NaN (float) when no point sets it
    if is_main():
        atomic_write(results_dir(exp.preset) / f"{study}.csv", lambda f: table.to_csv(f, index=False))
    return table


def default_point(exp: Experiment) -> list[dict]:
    """One seed of the default study: MAE, WSP from scratch and from MAE, linear probes of both."""
    mae_run = mae.pretrain(exp)
    return _rows(mae_run, "mae", pretraining="MAE", dataset=exp.data.pretrain) + pretrain_and_probe(exp, mae_run)


def default_study(exp: Experiment) -> pd.DataFrame:
    """MAE -> WSP against WSP from scratch, then linear probes on every probe dataset."""
    return _table(exp, "default", _per_seed(exp, default_point))


def model_size_study(exp: Experiment) -> pd.DataFrame:
    """The default study at every size of studies.model_sizes, with parameters and FLOPs per image."""
    def point(e: Experiment) -> list[dict]:
        rows = []
        for size in exp.studies.model_sizes:
            sized = dataclasses.replace(e, model=size)
            with torch.device("meta"):
                encoder = vit(size)
            rows.append({"model": size, "stage": "model", "metric": "params", "value": count_params(encoder)})
            rows.append({"model": size, "stage": "model", "metric": "gflops_per_image",
                         "value": count_flops(encoder, VIT_SIZES[size]["img_size"]) / 1e9})
            rows += pretrain_and_probe(sized, mae.pretrain(sized), model=size)
        return rows

    return _table(exp, "model_size", _per_seed(exp, point))


def parse_mae_data(text: str) -> tuple[str, float]:
    """'pretrain:0.2' -> ('pretrain', 0.2)."""
    name, _, fraction = text.rpartition(":")
    return name, float(fraction)


def data_size_study(exp: Experiment) -> pd.DataFrame:
    """MAE on each images point of studies.mae_data (as many MAE steps at every point as on the whole
    pool), then MAE -> WSP and linear probes; WSP from scratch as the reference."""
    def point(e: Experiment) -> list[dict]:
        rows = [{**row, "mae_data": "none"} for row in pretrain_and_probe(e, None, ("scratch",))]
        pool = len(pretrain_images(e).train_labels)
        for text in exp.studies.mae_data:
            dataset, fraction = parse_mae_data(text)
            point = with_values(e, mae={"data": dataset, "data_fraction": fraction})
            images = len(pretrain_images(point, *mae.images(point)).train_labels)
            sized = with_values(point, mae={"epochs": max(1, round(e.mae.epochs * pool / images))})
            mae_run = mae.pretrain(sized)
            rows.append({"mae_data": text, "stage": "mae", "metric": "images", "value": images, "run": mae_run.name})
            rows += _rows(mae_run, "mae", mae_data=text, pretraining="MAE", dataset=dataset)
            rows += pretrain_and_probe(sized, mae_run, ("mae",), mae_data=text)
        return rows

    return _table(exp, "data_size", _per_seed(exp, point))


def wsp_epochs_study(exp: Experiment) -> pd.DataFrame:
    """Both pretrainings at every WSP length of studies.wsp_epochs (each a full schedule)."""
    def point(e: Experiment) -> list[dict]:
        mae_run = mae.pretrain(e)
        return [row for epochs in exp.studies.wsp_epochs
                for row in pretrain_and_probe(with_values(e, wsp={"epochs": epochs}), mae_run, wsp_epochs=epochs)]

    return _table(exp, "wsp_epochs", _per_seed(exp, point))


def transfer_study(exp: Experiment) -> pd.DataFrame:
    """The transfer suite on WSP from scratch and on MAE -> WSP."""
    def point(e: Experiment) -> list[dict]:
        rows = []
        for init_name, init in (("scratch", None), ("mae", mae.pretrain(e))):
            table = transfer_suite(e, wsp.pretrain(e, init=init)).rename(columns={"task": "stage"})
            rows += table.drop(columns=["encoder", "seed"]).assign(pretraining=PRETRAINING_NAMES[init_name],
                                                                   draw_seed=table.seed).to_dict("records")
        return rows

    return _table(exp, "transfer", _per_seed(exp, point))


@torch.no_grad()
def reconstructions(exp: Experiment, mae_run: Run, count: int = 8) -> dict[str, np.ndarray]:
    """Test images, their masked versions and MAE's reconstructions (visible patches pasted back), as
    uint8 (count, H, W, 3) arrays."""
    data = pretrain_images(exp, *mae.images(exp))
    model = mae.build(exp).eval()
    model.load_state_dict(load_weights(mae_run.checkpoint)["model"])
    x = ImageTransform(VIT_SIZES[exp.model]["img_size"])(data.test_images[:count])
    torch.manual_seed(exp.seed)
    _, pred, mask = model(x)
    target = patchify(x, model.patch)
    if model.norm_pix_loss:  # predictions are per-patch normalised: give them each patch's own statistics
        pred = pred * (target.var(-1, keepdim=True) + 1e-6) ** 0.5 + target.mean(-1, keepdim=True)
    hidden = mask.unsqueeze(-1).bool()
    out = {"original": x, "masked": _unpatches(torch.where(hidden, 0.0, target), model.patch, x),
           "reconstruction": _unpatches(torch.where(hidden, pred, target), model.patch, x)}
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    return {k: ((v * std + mean).clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).numpy() for k, v in out.items()}


def _unpatches(patches: torch.Tensor, patch: int, like: torch.Tensor) -> torch.Tensor:
    b, c, h, w = like.shape
    x = patches.reshape(b, h // patch, w // patch, patch, patch, c)
    return torch.einsum("bhwpqc->bchpwq", x).reshape(b, c, h, w)


def explore_study(exp: Experiment) -> pd.DataFrame:
    """Hashtag statistics of the pool and tag frequencies; MAE reconstructions saved beside the tables."""
    hashtags = simulate(pretrain_images(exp), exp.tags)
    rows = [{"stage": "hashtags", "metric": k, "value": v} for k, v in hashtags.stats().items()]
    counts = torch.bincount(hashtags.tags[hashtags.tags >= 0], minlength=hashtags.vocab_size)
    rows += [{"stage": "tag_count", "dataset": hashtags.vocab[i], "metric": "count", "value": int(counts[i])}
             for i in counts.argsort(descending=True).tolist()]
    mae_run = mae.pretrain(exp)
    if is_main():
        images = reconstructions(exp, mae_run)
        path = results_dir(exp.preset) / "reconstructions.npz"
        atomic_write(path, lambda f: np.savez(f, **images, run=mae_run.name), mode="wb")
    rows += _rows(mae_run, "mae", pretraining="MAE", dataset=exp.data.pretrain)
    return _table(exp, "explore", [{**row, "seed": exp.seed} for row in rows])


STUDIES: dict[str, Callable[[Experiment], pd.DataFrame]] = {
    "explore": explore_study, "default": default_study, "model_size": model_size_study,
    "data_size": data_size_study, "wsp_epochs": wsp_epochs_study, "transfer": transfer_study,
}


def run_metrics(preset: str, run_name: str) -> pd.DataFrame:
    """The per-epoch metrics of a run folder of `preset`."""
    return pd.DataFrame(Run.metrics_of(runs_dir() / preset / run_name))


def summary_text(table: pd.DataFrame) -> str:
    """The default study's headline numbers as plain text."""
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
