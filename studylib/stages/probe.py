"""Linear probe: the evaluation toolkit's logistic regression (studylib.evaluation) on an encoder's
frozen class-token features, solved to convergence, top-1 on the dataset's test set."""

from __future__ import annotations

import time

from studylib.data import data_identity, load_dataset
from studylib.distributed import device_and_dtype
from studylib.evaluation import accuracy, fit_head, frozen_encoder
from studylib.experiment import Experiment
from studylib.features import extract_features
from studylib.runs import Run, train_once


def run_for(exp: Experiment, encoder_run: Run, dataset: str) -> Run:
    """The run folder of a linear probe of `encoder_run` on `dataset`."""
    return Run(
        exp, "probe", {"encoder": encoder_run.name, "data": data_identity(exp.data, dataset)}
    )


def kept_per_class(exp: Experiment, num_classes: int) -> int:
    """The training images of each class a probe keeps (0: every image): the smaller of
    probe.train_per_class and probe.train_images shared equally."""
    limits = [exp.probe.train_per_class, exp.probe.train_images // num_classes]
    return min((k for k in limits if k), default=0)


def rows(exp: Experiment, encoder_run: Run, dataset: str) -> list[dict]:
    run = probe(exp, encoder_run, dataset)
    return [{"dataset": dataset, "metric": "top1", "value": run.results()["top1"], "run": run.name}]


def probe(exp: Experiment, encoder_run: Run, dataset: str) -> Run:
    """Top-1 of the converged logistic regression on `encoder_run`'s frozen features, on `dataset`'s
    test set."""
    run = run_for(exp, encoder_run, dataset)

    def make_results() -> dict:
        data = load_dataset(dataset, exp.data)
        train_images, train_labels = data.train_images, data.train_labels
        per_class = kept_per_class(exp, data.num_classes)
        if per_class:
            keep = data.per_class(per_class, exp.data.subset_seed)
            train_images, train_labels = train_images[keep], train_labels[keep]
        device, dtype = device_and_dtype(exp)
        encoder = frozen_encoder(exp, encoder_run)
        start = time.perf_counter()
        n_images = len(train_images) + len(data.test_images)
        print(f"[{run.name}] {dataset}: features of {n_images:,} images", flush=True)
        train_features = extract_features(encoder, train_images, device, dtype)
        test_features = extract_features(encoder, data.test_images, device, dtype)
        feature_seconds = time.perf_counter() - start
        print(f"[{run.name}] features in {feature_seconds:.1f} s; fitting the head", flush=True)

        fit_start = time.perf_counter()
        labels = train_labels.to(device)
        head, found = fit_head(
            train_features, labels, data.num_classes, exp.probe, exp.data.subset_seed
        )
        fit_seconds = time.perf_counter() - fit_start
        return {
            "top1": accuracy(head, test_features, data.test_labels),
            "train_top1": accuracy(head, train_features, labels),
            "dataset": dataset,
            "encoder": encoder_run.name,
            "train_images": len(train_images),
            **found,
            "feature_seconds": feature_seconds,
            "feature_images_per_s": n_images / feature_seconds,
            "fit_seconds": fit_seconds,
            "wall_time_s": feature_seconds + fit_seconds,
        }

    return train_once(run, make_results)
