"""Low-shot transfer: k labelled images per class (k in transfer.lowshot.shots), several random
draws, a logistic regression on frozen features, top-1 on the whole test set.

The classifier is the linear probe's (studylib.evaluation.fit_logistic), solved to convergence on
the full (tiny) training set with the fixed L2 strength transfer.lowshot.weight_decay: with 1
example per class there is nothing to hold out for choosing it.
"""

from __future__ import annotations

import statistics

import torch
from torch import nn

from studylib.data import data_identity, load_dataset
from studylib.distributed import device_and_dtype
from studylib.evaluation import fit_logistic, frozen_encoder, top1
from studylib.experiment import Experiment
from studylib.features import extract_features
from studylib.images import ImageDataset
from studylib.runs import Run, train_once


def draw_seed(exp: Experiment, draw: int) -> int:
    return exp.seed * 1000 + draw


def draw_indices(data: ImageDataset, shots: int, seed: int) -> torch.Tensor:
    """Training indices of `shots` images of every class, drawn with `seed`."""
    return data.per_class(shots, seed)


def normalise(features: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
    return nn.functional.normalize(features - mean, dim=1)


def run_for(exp: Experiment, encoder_run: Run, dataset: str) -> Run:
    return Run(
        exp, "lowshot", {"encoder": encoder_run.name, "data": data_identity(exp.data, dataset)}
    )


def rows(exp: Experiment, encoder_run: Run, dataset: str) -> list[dict]:
    """Top-1 of every draw of every k, each row with its draw's seed."""
    run = lowshot(exp, encoder_run, dataset)
    return [
        {
            "dataset": dataset,
            "variant": f"{k}-shot",
            "metric": "top1",
            "value": a,
            "draw": draw_seed(exp, d),
            "run": run.name,
        }
        for k, accuracies in run.results()["top1"].items()
        for d, a in enumerate(accuracies)
    ]


def lowshot(exp: Experiment, encoder_run: Run, dataset: str) -> Run:
    """Top-1 for every k in shots and every draw; results hold the list per k and its mean and
    std."""
    config = exp.transfer.lowshot
    run = run_for(exp, encoder_run, dataset)

    def make_results() -> dict:
        data = load_dataset(dataset, exp.data)
        device, dtype = device_and_dtype(exp)
        encoder = frozen_encoder(exp, encoder_run)
        picks = {
            (k, d): draw_indices(data, k, draw_seed(exp, d))
            for k in config.shots
            for d in range(config.draws)
        }
        needed = torch.cat(list(picks.values())).unique()  # sorted: extract each image once
        features = extract_features(encoder, data.train_images[needed], device, dtype)
        test = extract_features(encoder, data.test_images, device, dtype)
        results: dict = {"dataset": dataset, "encoder": encoder_run.name, "top1": {}}
        for k in config.shots:
            accuracies = []
            for d in range(config.draws):
                rows = torch.searchsorted(needed, picks[k, d])
                x, y = features[rows], data.train_labels[picks[k, d]].to(device)
                mean = x.mean(0)
                head = fit_logistic(normalise(x, mean), y, data.num_classes, config.weight_decay)
                with torch.no_grad():
                    accuracies.append(top1(head(normalise(test, mean)), data.test_labels))
            results["top1"][str(k)] = accuracies
            results[f"top1_{k}shot_mean"] = statistics.mean(accuracies)
            results[f"top1_{k}shot_std"] = (
                statistics.stdev(accuracies) if len(accuracies) > 1 else 0.0
            )
        return results

    return train_once(run, make_results)
