"""Weakly-supervised pretraining on hashtags, from random init or from an MAE encoder: simulated
ones on an in-memory pool, the images' own tags on a streamed pool (its data.tag_vocabulary most
frequent tags; an image folder's tag is the image's class).

The head predicts the whole tag vocabulary; the loss is softmax cross-entropy against the image's
multi-hot tags normalised to sum 1, as in the paper. With wsp.rare_tag_threshold, images with rare
tags weigh more (SWAG's resampling of rare tags, as a loss weight: LVIS's repeat factor of the
image's rarest tag, the batch's weights normalised to sum one, so a batch counts an image about as
often as repeating it would; with several ranks or accumulation slices, each normalises its own
share).
"""

from __future__ import annotations

import dataclasses
import functools

import torch

from studylib.distributed import device_and_dtype
from studylib.engine import train
from studylib.experiment import Experiment
from studylib.models import VIT_SIZES, count_flops, train_flops, vit
from studylib.pool import open_pool
from studylib.runs import Run, load_encoder_from, save_encoder, train_once
from studylib.weak_labels import multi_hot


def wsp_loss(
    model: torch.nn.Module,
    images: torch.Tensor,
    tags: torch.Tensor,
    tag_repeats: torch.Tensor | None = None,
) -> torch.Tensor:
    """The batch's mean cross-entropy; with `tag_repeats` (a repeat factor per tag, repeat_factors),
    a mean weighted by each image's largest factor over its tags (the batch's weights summing to
    one)."""
    logits = model(images).float()
    targets = multi_hot(tags, logits.shape[1])
    per_image = -(targets * logits.log_softmax(dim=1)).sum(dim=1)
    if tag_repeats is None:
        return per_image.mean()
    weights = tag_repeats[tags.clamp(min=0)].masked_fill(tags < 0, 1.0).amax(dim=1)
    return (weights * per_image).sum() / weights.sum()


def repeat_factors(counts: torch.Tensor, images: int, threshold: float) -> torch.Tensor:
    """LVIS's repeat factor of each tag, max(1, sqrt(threshold / f)), f = counts / images its share
    of the images."""
    return (threshold / (counts.double() / images).clamp(min=1e-12)).sqrt().clamp(min=1.0).float()


def recipe(exp: Experiment, init: Run | None) -> Experiment:
    """`exp` with WSP's recipe for this start: from an MAE encoder, wsp.from_mae_base_lr (where
    set) as base_lr. The field itself enters no run's identity: its runs are named as with
    base_lr set to it."""
    lr = exp.wsp.from_mae_base_lr if init is not None else 0.0
    return dataclasses.replace(
        exp, wsp=dataclasses.replace(exp.wsp, base_lr=lr or exp.wsp.base_lr, from_mae_base_lr=0.0)
    )


def run_for(exp: Experiment, init: Run | None = None) -> Run:
    """The run folder of WSP under `exp` from `init` (an encoder run) or from scratch (None)."""
    exp = recipe(exp, init)
    images = open_pool(exp)
    identity = {"data": images.identity(), "init": init.name if init else "scratch"}
    return Run(exp, "wsp", {**identity, **images.tag_identity()})


def pretrain(exp: Experiment, init: Run | None = None) -> Run:
    """WSP from random init (init=None) or from the encoder of a finished run."""
    exp = recipe(exp, init)
    run = run_for(exp, init)  # the recipe again: unchanged

    def make_results() -> dict:
        device, dtype = device_and_dtype(exp)
        img_size = VIT_SIZES[exp.model]["img_size"]
        images = open_pool(exp)
        tags = images.tags()
        batches = images.batches(exp.wsp, device, tags.vocab)
        loss = wsp_loss
        if exp.wsp.rare_tag_threshold:
            loss = functools.partial(
                wsp_loss,
                tag_repeats=repeat_factors(
                    tags.carried, tags.images, exp.wsp.rare_tag_threshold
                ).to(device),
            )
        torch.manual_seed(exp.seed)
        model = vit(exp.model, num_classes=len(tags.vocab))
        if init is not None:
            load_encoder_from(init, model)
        forward = count_flops(model, img_size)  # before training: FSDP2 shards the model in place
        summary = train(run, model, loss, batches, exp.wsp, device, dtype, exp.seed)
        save_encoder(run, model)
        return {
            **summary,
            "init": run.identity["init"],
            "vocab_size": len(tags.vocab),
            **images.skipped(batches),  # in the last epoch
            "train_flops": train_flops(forward, summary["images_seen"]),
        }

    return train_once(run, make_results)
