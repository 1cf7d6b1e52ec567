"""Linear probe: a BatchNorm (no affine) and a linear layer on frozen encoder features, as in MAE.

Features are extracted once (no augmentation), then the head trains on them with the engine.
"""

from __future__ import annotations

import time

import torch
from torch import nn

from studylib.config import Experiment
from studylib.data import Batches, ImageTransform, load_dataset
from studylib.distributed import device_and_dtype
from studylib.engine import train
from studylib.errors import DataError
from studylib.models import vit
from studylib.runs import Run, train_once
from studylib.stages import data_identity, load_encoder_from


@torch.no_grad()
def extract_features(encoder: nn.Module, images: torch.Tensor, device: torch.device,
                     dtype: torch.dtype | None, batch_size: int = 512) -> torch.Tensor:
    """`encoder`'s outputs for uint8 `images`, in order, as float32 on `device`: class-token features
    for a bare encoder, logits for a classifier."""
    encoder.to(device).eval()
    transform = ImageTransform(encoder.patch_embed.img_size[0])
    if len(images) == 0:
        raise DataError("this dataset has no images in one of its splits; a probe needs train/ and test/")
    batches = Batches(images, torch.zeros(len(images)), batch_size, device, transform, shuffle=False,
                      drop_last=False, shard=False)
    features = []
    for x, _ in batches:
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            features.append(encoder(x).float())
    return torch.cat(features)


def frozen_encoder(exp: Experiment, encoder_run: Run) -> nn.Module:
    encoder = vit(exp.model)
    load_encoder_from(encoder_run, encoder)
    return encoder.requires_grad_(False)


def classification_loss(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return nn.functional.cross_entropy(model(inputs).float(), labels)


def run_for(exp: Experiment, encoder_run: Run, dataset: str) -> Run:
    """The run folder of a linear probe of `encoder_run` on `dataset`."""
    return Run(exp, "probe", {"encoder": encoder_run.name, "data": data_identity(exp, dataset)})


def rows(exp: Experiment, encoder_run: Run, dataset: str) -> list[dict]:
    run = probe(exp, encoder_run, dataset)
    return [{"dataset": dataset, "metric": "top1", "value": run.results()["top1"], "run": run.name}]


def probe(exp: Experiment, encoder_run: Run, dataset: str) -> Run:
    """Top-1 of a linear classifier on `encoder_run`'s frozen features, on `dataset`'s test set."""
    run = run_for(exp, encoder_run, dataset)

    def work() -> dict:
        data = load_dataset(dataset, exp.data)
        train_images, train_labels = data.train_images, data.train_labels
        if exp.probe.train_per_class:
            keep = data.per_class(exp.probe.train_per_class, exp.seed)
            train_images, train_labels = train_images[keep], train_labels[keep]
        device, dtype = device_and_dtype(exp)
        encoder = frozen_encoder(exp, encoder_run)
        start = time.perf_counter()
        train_features = extract_features(encoder, train_images, device, dtype)
        test_features = extract_features(encoder, data.test_images, device, dtype)
        feature_seconds = time.perf_counter() - start

        torch.manual_seed(exp.seed)
        head = nn.Sequential(nn.BatchNorm1d(encoder.embed_dim, affine=False, eps=1e-6),
                             nn.Linear(encoder.embed_dim, data.num_classes))
        batches = Batches(train_features, train_labels, exp.probe.batch_size, device)
        summary = train(run, head, classification_loss, batches, exp.probe, device, None, exp.seed)
        head.eval()
        with torch.no_grad():
            predictions = head(test_features).argmax(1).cpu()
        top1 = (predictions == data.test_labels).float().mean().item() * 100
        n_images = len(train_images) + len(data.test_images)
        return {**summary, "top1": top1, "dataset": dataset, "encoder": encoder_run.name,
                "feature_seconds": feature_seconds, "feature_images_per_s": n_images / feature_seconds,
                "wall_time_s": summary["wall_time_s"] + feature_seconds}

    return train_once(run, work)
