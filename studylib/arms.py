"""The pretraining arms of studylib.registry.ARMS: each returns the chain of runs it trains (or
reuses), the last holding the encoder that probes and transfer tasks take; with train=False, the
same chain's run folders, nothing trained (`studylib config` prints their names)."""

from __future__ import annotations

import dataclasses

import torch

from studylib import pool
from studylib.config import Experiment
from studylib.models import VIT_SIZES, count_flops, vit
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
    """WSP from scratch for wsp.epochs plus MAE's training FLOPs in WSP epochs: MAE→WSP's
    compute, the baseline the paper's per-FLOP claim is measured against."""
    longer = dataclasses.replace(
        exp, wsp=dataclasses.replace(exp.wsp, epochs=exp.wsp.epochs + mae_in_wsp_epochs(exp))
    )
    return wsp_from_scratch(longer, train)


def mae_in_wsp_epochs(exp: Experiment) -> int:
    """MAE's training FLOPs over those of one WSP epoch on the pool, rounded to the nearest: forward
    FLOPs per image (the encoder's for WSP: its tag head is under 1% at every size) times the
    images each sees."""
    img_size = VIT_SIZES[exp.model]["img_size"]
    with torch.device("meta"):
        per_mae_image = count_flops(mae.build(exp), img_size)
        per_wsp_image = count_flops(vit(exp.model), img_size)
    mae_images = exp.mae.epoch_images or pool.count(exp, *mae.image_source(exp))
    ratio = per_mae_image * mae_images * exp.mae.epochs / (per_wsp_image * pool.count(exp))
    return round(ratio)
