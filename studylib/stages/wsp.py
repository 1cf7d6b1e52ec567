"""Weakly-supervised pretraining on simulated hashtags, from random init or from an MAE encoder.

The head predicts the whole tag vocabulary; the loss is softmax cross-entropy against the image's
multi-hot tags normalised to sum 1, as in the paper.
"""

from __future__ import annotations

from dataclasses import asdict

import torch

from studylib.config import Experiment
from studylib.data import Batches, ImageTransform
from studylib.engine import train
from studylib.models import VIT_SIZES, vit
from studylib.runs import Run, train_once
from studylib.stages import (
    device_and_dtype,
    load_encoder_from,
    pretrain_identity,
    pretrain_images,
    save_encoder,
    settings,
)
from studylib.weak_labels import multi_hot, simulate


def wsp_loss(model: torch.nn.Module, images: torch.Tensor, tags: torch.Tensor) -> torch.Tensor:
    logits = model(images).float()
    targets = multi_hot(tags, logits.shape[1])
    return -(targets * logits.log_softmax(dim=1)).sum(dim=1).mean()


def run_for(exp: Experiment, init: Run | None = None) -> Run:
    """The run folder of WSP under `exp` from `init` (an MAE run) or from scratch (None)."""
    return Run(exp, "wsp", {**pretrain_identity(exp), "tags": asdict(exp.tags), "wsp": settings(exp.wsp),
                            "init": init.name if init else "scratch"})


def pretrain(exp: Experiment, init: Run | None = None) -> Run:
    """WSP from random init (init=None) or from the encoder of a finished MAE run."""
    run = run_for(exp, init)

    def work() -> dict:
        data = pretrain_images(exp)
        hashtags = simulate(data, exp.tags)
        device, dtype = device_and_dtype(exp)
        torch.manual_seed(exp.seed)
        model = vit(exp.model, num_classes=hashtags.vocab_size)
        if init is not None:
            load_encoder_from(init, model)
        transform = ImageTransform(VIT_SIZES[exp.model]["img_size"], exp.wsp.crop_min)
        batches = Batches(data.train_images, hashtags.tags, exp.wsp.batch_size, device, transform)
        summary = train(run, model, wsp_loss, batches, exp.wsp, device, dtype, exp.seed)
        save_encoder(run, model)
        return {**summary, "init": run.identity["init"], "vocab_size": hashtags.vocab_size}

    return train_once(run, work)
