"""The stages, each a short module with its model head and loss, all trained by studylib.engine.train:
`mae` (pre-pretraining), `wsp` (weakly-supervised pretraining), `init` (a random encoder), and the
transfer tasks `probe`, `finetune`, `lowshot`, `zeroshot`, `robustness`. studylib.registry.STAGES
declares the config sections that decide each one's result."""

from __future__ import annotations

from typing import Any

import torch

from studylib.config import Experiment
from studylib.data import ImageDataset, fingerprint, load_dataset
from studylib.distributed import is_main
from studylib.errors import RunFolderError
from studylib.models import count_flops, encoder_state, load_encoder
from studylib.runs import Run


def data_identity(exp: Experiment, dataset: str, fraction: float = 1.0) -> dict[str, Any]:
    """What a run's identity holds of the data it reads: the dataset, its fingerprint and the share of
    its training images, and the seed of every subset drawn from it."""
    return {"dataset": dataset, "fingerprint": fingerprint(dataset, exp.data), "fraction": fraction,
            "subset_seed": exp.data.subset_seed}


def _pretrain_source(exp: Experiment, dataset: str | None, fraction: float) -> tuple[str, float]:
    """The dataset and share of it: `fraction` of the pool (data.pretrain_fraction of data.pretrain) when
    `dataset` is None, else `fraction` of the whole `dataset`."""
    if dataset is None:
        return exp.data.pretrain, exp.data.pretrain_fraction * fraction
    return dataset, fraction


def pool_identity(exp: Experiment, dataset: str | None = None, fraction: float = 1.0) -> dict[str, Any]:
    """What a run's identity holds of its pretraining images (see _pretrain_source)."""
    return data_identity(exp, *_pretrain_source(exp, dataset, fraction))


def pretrain_images(exp: Experiment, dataset: str | None = None, fraction: float = 1.0) -> ImageDataset:
    """The pretraining images (see _pretrain_source), nested: a smaller fraction of a dataset is a subset of
    a larger one (and the pool of every fraction of data.pretrain above its own)."""
    name, share = _pretrain_source(exp, dataset, fraction)
    return load_dataset(name, exp.data).subset(share, exp.data.subset_seed)


def save_encoder(run: Run, model: torch.nn.Module) -> None:
    """The encoder (a ViT without its head) that the next stage starts from: <run>/encoder.pth."""
    if is_main():
        run.save("encoder.pth", encoder_state(model))


def load_encoder_from(run: Run, model: torch.nn.Module) -> None:
    path = run.path / "encoder.pth"
    state = run.load("encoder.pth")
    if state is None:
        raise RunFolderError(f"{path}: missing or corrupt encoder weights; delete {run.path} to retrain it")
    try:
        load_encoder(model, state)
    except (ValueError, RuntimeError) as err:
        raise RunFolderError(f"{path}: weights of another model than {model.__class__.__name__} "
                             f"{model.embed_dim}d x {len(model.blocks)} blocks: {str(err).splitlines()[0]}") from None


def train_flops(model: torch.nn.Module, img_size: int, images_seen: int) -> float:
    """Training FLOPs: 3x the forward FLOPs (forward + backward) per image seen."""
    return 3.0 * count_flops(model, img_size) * images_seen
