"""The evaluation toolkit the transfer stages share: a finished run's frozen encoder or fine-tuned
classifier, top-1, and the linear probe's solver (frozen features: studylib.features).

The probe is L2-regularised multinomial logistic regression on standardised class-token features
(MAE's BatchNorm without affine), convex, so solved to convergence, full batch, by L-BFGS on the
training device rather than trained for some epochs: it then measures the features, not the
optimiser. Its L2 strength is the one of probe.weight_decays that scores best on a held-out part of
the training images; the head is then refit on all of them. Low-shot uses the same solver.
Full-batch L-BFGS needs the features on one device: ImageNet-1k's 1.28 M x 768 floats of B/16 are
3.9 GB.
"""

from __future__ import annotations

import torch
from torch import nn

from studylib.errors import RunFolderError
from studylib.experiment import Experiment
from studylib.features import extract_features
from studylib.models import vit
from studylib.runs import Run, load_encoder_from
from studylib.schema import ProbeConfig


def frozen_encoder(exp: Experiment, encoder_run: Run) -> nn.Module:
    encoder = vit(exp.model)
    load_encoder_from(encoder_run, encoder)
    return encoder.requires_grad_(False)


def objective(
    head: nn.Linear, features: torch.Tensor, labels: torch.Tensor, weight_decay: float
) -> torch.Tensor:
    """Mean cross-entropy plus weight_decay times the squared norm of the weights (the bias is
    free)."""
    return (
        nn.functional.cross_entropy(head(features), labels)
        + weight_decay * head.weight.square().sum()
    )


def fit_logistic(
    features: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    weight_decay: float,
    max_iter: int = 1000,
    tolerance: float = 1e-4,
    start: nn.Linear | None = None,
) -> nn.Linear:
    """The minimiser of `objective`, by L-BFGS with a strong-Wolfe line search from zero weights (or
    from `start`'s, a warm start); stops when the gradient's largest entry falls below `tolerance`
    (1e-4: the objective within 1e-3 nats per image of its optimum, tests/test_probe.py), when the
    step stalls, or after `max_iter` iterations."""
    head = nn.Linear(features.shape[1], num_classes).to(features.device)
    with torch.no_grad():
        head.weight.copy_(start.weight if start is not None else torch.zeros_like(head.weight))
        head.bias.copy_(start.bias if start is not None else torch.zeros_like(head.bias))
    solver = torch.optim.LBFGS(
        head.parameters(),
        max_iter=max_iter,
        history_size=20,
        tolerance_grad=tolerance,
        tolerance_change=tolerance * 1e-2,
        line_search_fn="strong_wolfe",
    )

    def closure() -> torch.Tensor:
        solver.zero_grad()
        loss = objective(head, features, labels, weight_decay)
        loss.backward()
        return loss

    with torch.enable_grad():
        solver.step(closure)
    return head.requires_grad_(False)


def top1(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 accuracy (%) of class `scores` (one row per image) against `labels`: every task's one
    metric."""
    return (scores.argmax(1) == labels.to(scores.device)).float().mean().item() * 100


@torch.no_grad()
def accuracy(head: nn.Linear, features: torch.Tensor, labels: torch.Tensor) -> float:
    return top1(head(features), labels)


def choose_weight_decay(
    features: torch.Tensor, labels: torch.Tensor, num_classes: int, config: ProbeConfig, seed: int
) -> tuple[float, nn.Linear, dict[str, float]]:
    """The L2 strength of config.weight_decays with the best top-1 on a held-out part
    (config.holdout_fraction) of the training features when fit on the rest, from the strongest
    penalty down, each fit warm-started from the one before (ties go to the stronger penalty); also
    its head and every strength's score."""
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed)).to(
        features.device
    )
    held = max(1, int(len(labels) * config.holdout_fraction))
    fit, check = order[held:], order[:held]
    scores, heads, head = {}, {}, None
    for weight_decay in sorted(config.weight_decays, reverse=True):
        head = fit_logistic(
            features[fit],
            labels[fit],
            num_classes,
            weight_decay,
            config.max_iter,
            config.tolerance,
            start=head,
        )
        scores[f"{weight_decay:g}"], heads[weight_decay] = (
            accuracy(head, features[check], labels[check]),
            head,
        )
    best = float(max(scores, key=scores.get))  # the first best: the strongest penalty among equals
    return best, heads[best], scores


def fit_head(
    features: torch.Tensor, labels: torch.Tensor, num_classes: int, config: ProbeConfig, seed: int
) -> tuple[nn.Linear, dict]:
    """The converged probe head on raw `features`: features standardised with their own statistics,
    the L2 strength chosen on a held-out part, the head refit on all of them, and the
    standardisation folded into the returned head (so it applies to raw features, and can be a
    classifier's head). Also what the fit found: the strength, each strength's held-out top-1, the
    final objective and its gradient."""
    mean, std = features.mean(0), features.std(0) + 1e-6
    standard = (features - mean) / std
    weight_decay, held_out_fit, holdout = choose_weight_decay(
        standard, labels, num_classes, config, seed
    )
    head = fit_logistic(
        standard,
        labels,
        num_classes,
        weight_decay,
        config.max_iter,
        config.tolerance,
        start=held_out_fit,
    )
    with torch.enable_grad():
        final = objective(head.requires_grad_(True), standard, labels, weight_decay)
        final.backward()
    found = {
        "weight_decay": weight_decay,
        "holdout_top1": holdout,
        "final_loss": final.item(),
        "final_grad_max": max(p.grad.abs().max().item() for p in head.parameters()),
    }
    folded = nn.Linear(features.shape[1], num_classes).to(features.device).requires_grad_(False)
    folded.weight.copy_(head.weight / std)
    folded.bias.copy_(head.bias - (head.weight * (mean / std)).sum(1))
    return folded, found


def classifier_top1(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    device: torch.device,
    dtype: torch.dtype | None,
) -> float:
    """Top-1 accuracy (%) of a classifier on uint8 `images`."""
    return top1(extract_features(model, images, device, dtype), labels)


def load_finetuned(exp: Experiment, run: Run, num_classes: int) -> nn.Module:
    """The classifier a finished fine-tuning run saved."""
    state = run.load("model.pth")
    if state is None:
        raise RunFolderError(
            f"{run.path / 'model.pth'}: missing or corrupt; delete {run.path} to fine-tune again"
        )
    model = vit(exp.model, num_classes=num_classes)
    model.load_state_dict(state)
    return model
