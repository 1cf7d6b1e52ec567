"""MAE pre-pretraining: reconstruct 75% masked patches from the rest, no labels."""

from __future__ import annotations

import torch

from studylib.config import ConfigError, Experiment
from studylib.data import Batches, ImageTransform
from studylib.engine import train
from studylib.models import MAE, VIT_SIZES
from studylib.runs import Run, train_once
from studylib.stages import device_and_dtype, pretrain_identity, pretrain_images, save_encoder, settings


def build(exp: Experiment) -> MAE:
    c = exp.mae
    model = MAE(exp.model, c.mask_ratio, c.decoder_dim, c.decoder_depth, c.decoder_heads, c.norm_pix_loss)
    patches = model.encoder.patch_embed.num_patches
    if not 0 < round(patches * (1 - c.mask_ratio)) < patches:
        raise ConfigError(f"mae.mask_ratio: {c.mask_ratio} hides no patch or every patch of {exp.model}'s "
                          f"{patches}; allowed: in ({0.5 / patches:.3f}, {1 - 0.5 / patches:.3f})")
    return model


def mae_loss(model: MAE, images: torch.Tensor, _labels: torch.Tensor) -> torch.Tensor:
    return model(images)[0]


def images(exp: Experiment) -> tuple[str | None, float]:
    """MAE's dataset (None: the pool) and fraction."""
    return (None if exp.mae.data == "pretrain" else exp.mae.data), exp.mae.data_fraction


def run_for(exp: Experiment) -> Run:
    """The run folder of MAE pre-pretraining under `exp`."""
    mae_settings = settings(exp.mae)
    for key in ("data", "data_fraction"):  # in the identity's data section
        mae_settings.pop(key)
    return Run(exp, "mae", {**pretrain_identity(exp, *images(exp)), "mae": mae_settings})


def pretrain(exp: Experiment) -> Run:
    """Pre-pretrain the encoder with MAE; the run's encoder.pth holds the encoder weights."""
    run = run_for(exp)

    def work() -> dict:
        data = pretrain_images(exp, *images(exp))
        device, dtype = device_and_dtype(exp)
        torch.manual_seed(exp.seed)
        model = build(exp)
        transform = ImageTransform(VIT_SIZES[exp.model]["img_size"], exp.mae.crop_min)
        batches = Batches(data.train_images, data.train_labels, exp.mae.batch_size, device, transform)
        summary = train(run, model, mae_loss, batches, exp.mae, device, dtype, exp.seed)
        save_encoder(run, model.encoder)
        return summary

    return train_once(run, work)
