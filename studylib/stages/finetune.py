"""Full fine-tuning of a pretrained encoder on a labelled dataset, after MAE's recipe: AdamW with
layer-wise lr decay, stochastic depth, label smoothing (not its mixup/cutmix, nor its global
pooling: the class token is kept, as the encoder was pretrained with it).

With `head_from_probe` (LP-FT, Kumar et al. 2022) the head starts as the converged linear probe of
the same training images rather than at random: a few hundred steps from a random head first spend
the encoder's features on fitting the head, and at this scale ended 3 to 9 points below the probe.

The fine-tuned classifier (model.pth) is also what the robustness task evaluates.
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import nn

from studylib.batches import ImageTransform
from studylib.data import data_identity, load_dataset
from studylib.distributed import device_and_dtype, is_main
from studylib.engine import train
from studylib.evaluation import classifier_top1, fit_head, frozen_encoder
from studylib.experiment import Experiment
from studylib.features import extract_features
from studylib.models import VIT_SIZES, full_state, vit
from studylib.runs import Run, load_encoder_from, train_once


def run_for(exp: Experiment, encoder_run: Run, dataset: str) -> Run:
    """The run folder of fine-tuning `encoder_run` on `dataset`."""
    return Run(
        exp, "finetune", {"encoder": encoder_run.name, "data": data_identity(exp.data, dataset)}
    )


def rows(exp: Experiment, encoder_run: Run, dataset: str) -> list[dict]:
    run = finetune(exp, encoder_run, dataset)
    results = run.results()
    return [
        {"dataset": dataset, "metric": metric, "value": results[metric], "run": run.name}
        for metric in ("top1", "steps")
        if metric in results
    ]


def finetune(exp: Experiment, encoder_run: Run, dataset: str) -> Run:
    """Fine-tune every weight of `encoder_run`'s encoder with a new head on `dataset`; top-1 on its
    test set."""
    config = exp.transfer.finetune
    run = run_for(exp, encoder_run, dataset)

    def loss(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(
            model(images).float(), labels, label_smoothing=config.label_smoothing
        )

    def make_results() -> dict:
        data = load_dataset(dataset, exp.data)
        device, dtype = device_and_dtype(exp)
        transform = ImageTransform(VIT_SIZES[exp.model]["img_size"], config.crop_min)
        batches = data.train_batches(
            config.batch_size, device, transform, config.train_per_class, exp.data.subset_seed
        )
        torch.manual_seed(exp.seed)
        model = vit(exp.model, num_classes=data.num_classes, drop_path=config.drop_path)
        load_encoder_from(encoder_run, model)
        if config.head_from_probe:
            encoder = frozen_encoder(exp, encoder_run)
            features = extract_features(encoder, batches.inputs, device, dtype)
            head, _ = fit_head(
                features, batches.targets, data.num_classes, exp.probe, exp.data.subset_seed
            )
            model.head.load_state_dict(head.state_dict())
        epochs = max(config.epochs, math.ceil(config.min_steps / len(batches)))
        summary = train(
            run,
            model,
            loss,
            batches,
            dataclasses.replace(config, epochs=epochs),
            device,
            dtype,
            exp.seed,
        )
        state = full_state(model)  # on every rank: FSDP2's shards are gathered
        if is_main():
            run.save("model.pth", state)
        return {
            **summary,
            "top1": classifier_top1(model, data.test_images, data.test_labels, device, dtype),
            "dataset": dataset,
            "encoder": encoder_run.name,
            "train_images": len(batches.inputs),
            "steps": epochs * len(batches),
        }

    return train_once(run, make_results)
