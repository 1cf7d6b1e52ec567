"""Robustness: the fine-tuned classifier on test images under common corruptions
(studylib.corruptions) at severities 1 to 5, computed on the fly with fixed seeds; mean corruption
accuracy and its drop from clean accuracy on the same images."""

from __future__ import annotations

import statistics

from studylib.corruptions import SEVERITIES, corrupt
from studylib.data import data_identity, load_dataset
from studylib.distributed import device_and_dtype
from studylib.evaluation import classifier_top1, load_finetuned
from studylib.experiment import Experiment
from studylib.runs import Run, train_once


def run_for(exp: Experiment, finetune_run: Run, dataset: str) -> Run:
    return Run(
        exp,
        "robustness",
        {"finetuned": finetune_run.name, "data": data_identity(exp.data, dataset)},
    )


def rows(exp: Experiment, finetune_run: Run, dataset: str) -> list[dict]:
    """Clean, every corruption at every severity, and the mean and drop, of the classifier that
    `finetune_run` fine-tuned on `dataset` (the registry's Task.takes)."""
    run = robustness(exp, finetune_run, dataset)
    result = run.results()
    found = [("clean", "top1", result["top1_clean"])]
    found += [
        (f"{name}/{s}", "top1", a)
        for name, per_severity in result["top1_corrupted"].items()
        for s, a in enumerate(per_severity, 1)
    ]
    found += [
        ("mean", "top1", result["mean_corruption_top1"]),
        ("mean", "drop", result["drop_from_clean"]),
    ]
    return [
        {"dataset": dataset, "variant": v, "metric": m, "value": x, "run": run.name}
        for v, m, x in found
    ]


def robustness(exp: Experiment, finetune_run: Run, dataset: str) -> Run:
    """Top-1 of `finetune_run`'s classifier on clean and corrupted test images of `dataset`."""
    config = exp.transfer.robustness
    run = run_for(exp, finetune_run, dataset)

    def make_results() -> dict:
        data = load_dataset(dataset, exp.data)
        images, labels = data.test_images, data.test_labels
        if config.test_images:
            keep = data.per_class(
                max(1, config.test_images // data.num_classes), exp.data.subset_seed, split="test"
            )
            images, labels = images[keep], labels[keep]
        device, dtype = device_and_dtype(exp)
        model = load_finetuned(exp, finetune_run, data.num_classes)
        clean = classifier_top1(model, images, labels, device, dtype)
        accuracy = {
            name: [
                classifier_top1(
                    model, corrupt(images, name, severity, seed=exp.seed), labels, device, dtype
                )
                for severity in SEVERITIES
            ]
            for name in config.corruptions
        }
        mean = statistics.mean(a for per_severity in accuracy.values() for a in per_severity)
        return {
            "dataset": dataset,
            "finetuned": finetune_run.name,
            "test_images": len(images),
            "top1_clean": clean,
            "top1_corrupted": accuracy,
            "mean_corruption_top1": mean,
            "drop_from_clean": clean - mean,
        }

    return train_once(run, make_results)
