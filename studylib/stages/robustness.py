"""Robustness: the fine-tuned classifier on test images under common corruptions (studylib.corruptions)
at severities 1 to 5, computed on the fly with fixed seeds; mean corruption accuracy and its drop
from clean accuracy on the same images."""

from __future__ import annotations

import statistics
from dataclasses import asdict

from studylib.config import Experiment
from studylib.corruptions import SEVERITIES, corrupt
from studylib.data import load_dataset
from studylib.runs import Run, train_once
from studylib.stages import dataset_run, device_and_dtype
from studylib.stages.finetune import load_finetuned, top1


def run_for(exp: Experiment, finetune_run: Run, dataset: str) -> Run:
    return dataset_run(exp, "robustness", dataset, {"finetuned": finetune_run.name,
                                                    "robustness": asdict(exp.transfer.robustness)})


def robustness(exp: Experiment, finetune_run: Run, dataset: str) -> Run:
    """Top-1 of `finetune_run`'s classifier on clean and corrupted test images of `dataset`."""
    config = exp.transfer.robustness
    run = run_for(exp, finetune_run, dataset)

    def work() -> dict:
        data = load_dataset(dataset, exp.data)
        images, labels = data.test_images, data.test_labels
        if config.test_per_class:
            keep = data.per_class(config.test_per_class, exp.seed, split="test")
            images, labels = images[keep], labels[keep]
        device, dtype = device_and_dtype(exp)
        model = load_finetuned(exp, finetune_run, data.num_classes)
        clean = top1(model, images, labels, device, dtype)
        accuracy = {name: [top1(model, corrupt(images, name, severity, seed=exp.seed), labels, device, dtype)
                           for severity in SEVERITIES]
                    for name in config.corruptions}
        mean = statistics.mean(a for per_severity in accuracy.values() for a in per_severity)
        return {"dataset": dataset, "finetuned": finetune_run.name, "test_images": len(images),
                "top1_clean": clean, "top1_corrupted": accuracy, "mean_corruption_top1": mean,
                "drop_from_clean": clean - mean}

    return train_once(run, work)
