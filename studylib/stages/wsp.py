"""Weakly-supervised pretraining on simulated hashtags, from random init or from an MAE encoder.

The head predicts the whole tag vocabulary; the loss is softmax cross-entropy against the image's
multi-hot tags normalised to sum 1, as in the paper.
"""

from __future__ import annotations

import torch

from studylib.config import Experiment
from studylib.data import Batches, ImageTransform
from studylib.distributed import device_and_dtype
from studylib.engine import train
from studylib.models import VIT_SIZES, vit
from studylib.runs import Run, train_once
from studylib.stages import load_encoder_from, pool_identity, pretrain_images, save_encoder, train_flops
from studylib.weak_labels import multi_hot, simulate


def wsp_loss(model: torch.nn.Module, images: torch.Tensor, tags: torch.Tensor) -> torch.Tensor:
    logits = model(images).float()
    targets = multi_hot(tags, logits.shape[1])
    return -(targets * logits.log_softmax(dim=1)).sum(dim=1).mean()


def run_for(exp: Experiment, init: Run | None = None) -> Run:
    """The run folder of WSP under `exp` from `init` (an encoder run) or from scratch (None)."""
    return Run(exp, "wsp", {"data": pool_identity(exp), "init": init.name if init else "scratch"})


def pretrain(exp: Experiment, init: Run | None = None) -> Run:
    """WSP from random init (init=None) or from the encoder of a finished run."""
    run = run_for(exp, init)

    def work() -> dict:
        data = pretrain_images(exp)
        hashtags = simulate(data, exp.tags)
        device, dtype = device_and_dtype(exp)
        torch.manual_seed(exp.seed)
        model = vit(exp.model, num_classes=hashtags.vocab_size)
        if init is not None:
            load_encoder_from(init, model)
        img_size = VIT_SIZES[exp.model]["img_size"]
        batches = Batches(data.train_images, hashtags.tags, exp.wsp.batch_size, device,
                          ImageTransform(img_size, exp.wsp.crop_min))
        summary = train(run, model, wsp_loss, batches, exp.wsp, device, dtype, exp.seed)
        save_encoder(run, model)
        return {**summary, "init": run.identity["init"], "vocab_size": hashtags.vocab_size,
                "train_flops": train_flops(model, img_size, summary["images_seen"])}

    return train_once(run, work)
