"""MAE pre-pretraining: reconstruct 75% masked patches from the rest, no labels."""

from __future__ import annotations

import torch

from studylib.config import Experiment
from studylib.data import Batches, ImageTransform
from studylib.distributed import device_and_dtype
from studylib.engine import train
from studylib.models import MAE, VIT_SIZES
from studylib.runs import Run, train_once
from studylib.stages import pool_identity, pretrain_images, save_encoder, train_flops


def build(exp: Experiment) -> MAE:
    c = exp.mae
    return MAE(exp.model, c.mask_ratio, c.decoder_dim, c.decoder_depth, c.decoder_heads, c.norm_pix_loss)


def mae_loss(model: MAE, images: torch.Tensor, _labels: torch.Tensor) -> torch.Tensor:
    return model(images)[0]


def images(exp: Experiment) -> tuple[str | None, float]:
    """MAE's dataset (None: the pool) and fraction."""
    return (None if exp.mae.data == "pretrain" else exp.mae.data), exp.mae.data_fraction


def run_for(exp: Experiment) -> Run:
    """The run folder of MAE pre-pretraining under `exp`."""
    return Run(exp, "mae", {"data": pool_identity(exp, *images(exp))})


def pretrain(exp: Experiment) -> Run:
    """Pre-pretrain the encoder with MAE; the run's encoder.pth holds the encoder weights."""
    run = run_for(exp)

    def work() -> dict:
        data = pretrain_images(exp, *images(exp))
        device, dtype = device_and_dtype(exp)
        torch.manual_seed(exp.seed)
        model = build(exp)
        img_size = VIT_SIZES[exp.model]["img_size"]
        batches = Batches(data.train_images, data.train_labels, exp.mae.batch_size, device,
                          ImageTransform(img_size, exp.mae.crop_min), images_per_epoch=exp.mae.epoch_images)
        summary = train(run, model, mae_loss, batches, exp.mae, device, dtype, exp.seed)
        save_encoder(run, model.encoder)
        return {**summary, "train_flops": train_flops(model, img_size, summary["images_seen"])}

    return train_once(run, work)
