"""The paper's stages, each a short module with its model head and loss, all trained by
studylib.engine.train: `mae` (pre-pretraining), `wsp` (weakly-supervised pretraining) and
`probe` (linear probe on frozen features)."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import torch

from studylib.config import ConfigError, Experiment, TrainConfig
from studylib.data import ImageDataset, load_dataset
from studylib.distributed import is_main
from studylib.engine import resolve_device, resolve_precision
from studylib.models import encoder_state, load_encoder
from studylib.runs import Run, load_weights, save_weights


def pretrain_identity(exp: Experiment, dataset: str | None = None, fraction: float = 1.0) -> dict[str, Any]:
    """What decides a pretraining run's result: model, seed and pretraining images (by default the
    pool, data.pretrain; MAE may take `fraction` of it or of another `dataset`)."""
    dataset = dataset or exp.data.pretrain
    data = {"dataset": dataset, "fraction": exp.data.pretrain_fraction * fraction}
    if dataset == "synthetic":
        data["size"] = [exp.data.synthetic_train, exp.data.synthetic_test]
    return {"model": exp.model, "seed": exp.seed, "data": data}


def dataset_run(exp: Experiment, stage: str, dataset: str, identity: dict[str, Any]) -> Run:
    """The run folder of `stage` on a downstream `dataset`: `identity` plus the dataset, the seed and,
    for generated data, its size."""
    identity = {**identity, "dataset": dataset, "seed": exp.seed}
    if dataset == "synthetic":
        identity["size"] = [exp.data.synthetic_train, exp.data.synthetic_test]
    return Run(exp, stage, identity)


def settings(section: TrainConfig) -> dict[str, Any]:
    """A stage's settings as they enter its run hash: all but `compile`, which changes speed, not results."""
    values = asdict(section)
    values.pop("compile")
    return values


def pretrain_images(exp: Experiment, dataset: str | None = None, fraction: float = 1.0) -> ImageDataset:
    """The pool's training images (or `dataset`'s), `fraction` of them, nested: a smaller fraction
    is a subset of a larger one."""
    return load_dataset(dataset or exp.data.pretrain, exp.data).subset(exp.data.pretrain_fraction * fraction,
                                                                       exp.seed)


def device_and_dtype(exp: Experiment) -> tuple[torch.device, torch.dtype | None]:
    device = resolve_device(exp.device)
    return device, resolve_precision(exp.precision, device)


def save_encoder(run: Run, model: torch.nn.Module) -> None:
    """The encoder (a ViT without its head) that the next stage starts from: <run>/encoder.pth."""
    if is_main():
        save_weights(run.path / "encoder.pth", encoder_state(model))


def load_encoder_from(run: Run, model: torch.nn.Module) -> None:
    path = run.path / "encoder.pth"
    state = load_weights(path)
    if state is None:
        raise ConfigError(f"{path}: missing or corrupt encoder weights; delete {run.path} to retrain it")
    try:
        load_encoder(model, state)
    except (ValueError, RuntimeError) as err:
        raise ConfigError(f"{path}: weights of another model than {model.__class__.__name__} "
                          f"{model.embed_dim}d x {len(model.blocks)} blocks: {str(err).splitlines()[0]}") from None
