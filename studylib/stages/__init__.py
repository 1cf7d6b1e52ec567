"""The paper's stages, each a short module with its model head and loss, all trained by
studylib.engine.train: `mae` (pre-pretraining), `wsp` (weakly-supervised pretraining) and
`probe` (linear probe on frozen features)."""

from __future__ import annotations

from typing import Any

import torch

from studylib.config import Experiment
from studylib.data import ImageDataset, load_dataset
from studylib.engine import resolve_device, resolve_precision


def pretrain_identity(exp: Experiment) -> dict[str, Any]:
    """What decides a pretraining run's result: model, seed and pretraining images."""
    data = {"dataset": exp.data.pretrain, "fraction": exp.data.pretrain_fraction}
    if exp.data.pretrain == "synthetic":
        data["size"] = [exp.data.synthetic_train, exp.data.synthetic_test]
    return {"model": exp.model, "seed": exp.seed, "data": data}


def pretrain_images(exp: Experiment) -> ImageDataset:
    return load_dataset(exp.data.pretrain, exp.data).subset(exp.data.pretrain_fraction, exp.seed)


def device_and_dtype(exp: Experiment) -> tuple[torch.device, torch.dtype | None]:
    device = resolve_device(exp.device)
    return device, resolve_precision(exp.precision, device)
