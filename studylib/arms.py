"""The pretraining arms of studylib.registry.ARMS: each returns the chain of runs it trains (or
reuses), the last holding the encoder that probes and transfer tasks take; with train=False, the
same chain's run folders, nothing trained (`studylib config` prints their names)."""

from __future__ import annotations

import dataclasses
import math

import torch

from studylib import pool
from studylib.experiment import Experiment
from studylib.models import VIT_SIZES, count_flops, vit
from studylib.pool import open_pool
from studylib.runs import Run
from studylib.stages import init, mae, wsp


def random_init(exp: Experiment, train: bool = True) -> list[Run]:
    return [init.random_encoder(exp) if train else init.run_for(exp)]


def mae_only(exp: Experiment, train: bool = True) -> list[Run]:
    return [mae.pretrain(exp) if train else mae.run_for(exp)]


def wsp_from_scratch(exp: Experiment, train: bool = True) -> list[Run]:
    return [wsp.pretrain(exp) if train else wsp.run_for(exp)]


def mae_then_wsp(exp: Experiment, train: bool = True) -> list[Run]:
    mae_run = mae.pretrain(exp) if train else mae.run_for(exp)
    return [mae_run, wsp.pretrain(exp, init=mae_run) if train else wsp.run_for(exp, mae_run)]


def wsp_at_equal_flops(exp: Experiment, train: bool = True) -> list[Run]:
    """WSP from scratch given MAE→WSP's training FLOPs, the baseline of the paper's per-FLOP
    claim: wsp.epochs plus MAE's FLOPs in WSP epochs, as whole epochs of fewer images each (whole
    batches), so the FLOPs match to half a batch an epoch; on a streamed pool (one pass an epoch),
    the nearest whole number of epochs."""
    extra = mae_in_wsp_epochs(exp)
    images = open_pool(exp)
    if images.streamed:
        epochs, per_epoch = exp.wsp.epochs + round(extra), 0
    else:
        epochs, batch = exp.wsp.epochs + math.ceil(extra), exp.wsp.batch_size
        per_epoch = batch * round(pool.count(exp) * (exp.wsp.epochs + extra) / epochs / batch)
    wsp_config = dataclasses.replace(exp.wsp, epochs=epochs, epoch_images=per_epoch)
    return wsp_from_scratch(dataclasses.replace(exp, wsp=wsp_config), train)


def mae_in_wsp_epochs(exp: Experiment) -> float:
    """MAE's training FLOPs over those of one WSP epoch on the pool: forward FLOPs per image (the
    encoder's for WSP: its tag head, under 1% at the preset sizes, left out) times the images each
    sees."""
    img_size = VIT_SIZES[exp.model]["img_size"]
    with torch.device("meta"):
        per_mae_image = count_flops(mae.build(exp), img_size)
        per_wsp_image = count_flops(vit(exp.model), img_size)
    mae_images = exp.mae.epoch_images or pool.count(exp, *mae.image_source(exp))
    return per_mae_image * mae_images * exp.mae.epochs / (per_wsp_image * pool.count(exp))
