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
from studylib.models import VIT_SIZES, encoder_state, load_encoder, vit
from studylib.runs import Run, atomic_write
from studylib.stages import device_and_dtype, pretrain_identity, pretrain_images
from studylib.weak_labels import multi_hot, simulate


def wsp_loss(model: torch.nn.Module, images: torch.Tensor, tags: torch.Tensor) -> torch.Tensor:
    logits = model(images).float()
    targets = multi_hot(tags, logits.shape[1])
    return -(targets * logits.log_softmax(dim=1)).sum(dim=1).mean()


def pretrain(exp: Experiment, init: Run | None = None) -> Run:
    """WSP from random init (init=None) or from the encoder of a finished MAE run."""
    identity = {**pretrain_identity(exp), "tags": asdict(exp.tags), "wsp": asdict(exp.wsp),
                "init": init.name if init else "scratch"}
    run = Run(exp, "wsp", identity)
    if run.done:
        return run
    data = pretrain_images(exp)
    hashtags = simulate(data, exp.tags)
    run.start()
    device, dtype = device_and_dtype(exp)
    torch.manual_seed(exp.seed)
    model = vit(exp.model, num_classes=hashtags.vocab_size)
    if init is not None:
        load_encoder(model, torch.load(init.path / "encoder.pth", map_location="cpu", weights_only=True))
    transform = ImageTransform(VIT_SIZES[exp.model]["img_size"], exp.wsp.crop_min)
    batches = Batches(data.train_images, hashtags.tags, exp.wsp.batch_size, device, transform)
    summary = train(run, model, wsp_loss, batches, exp.wsp, device, dtype, exp.seed)
    atomic_write(run.path / "encoder.pth", lambda f: torch.save(encoder_state(model), f), mode="wb")
    run.finish({**summary, "init": identity["init"], "vocab_size": hashtags.vocab_size})
    return run
