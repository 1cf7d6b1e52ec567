"""The linear probe solves its logistic regression to convergence: scikit-learn is the oracle."""

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression

from studylib import evaluation
from studylib.config import load_experiment
from studylib.stages import init, probe


def _features(n: int = 600, dim: int = 24, classes: int = 6, seed: int = 0):
    """Overlapping Gaussian classes: the optimum is not at infinity, so the L2 strength matters."""
    gen = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, dim, generator=gen)
    labels = torch.arange(n) % classes
    return centres[labels] + 1.5 * torch.randn(n, dim, generator=gen), labels


@pytest.mark.parametrize("weight_decay", [1e-4, 1e-2])
def test_objective_reaches_scikit_learns_optimum(weight_decay):
    x, y = _features()
    # the default, and a tight one
    ours, tight = (
        evaluation.objective(
            evaluation.fit_logistic(x, y, 6, weight_decay, tolerance=tol), x, y, weight_decay
        ).item()
        for tol in (1e-4, 1e-7)
    )
    # mean CE + wd |W|^2  is  (sum CE + n wd |W|^2) / n: scikit-learn's C sum CE + |W|^2 / 2 with C
    # = 1 / (2 n wd)
    oracle = LogisticRegression(C=1 / (2 * len(y) * weight_decay), tol=1e-10, max_iter=10_000).fit(
        x.numpy(), y.numpy()
    )
    reference = torch.nn.Linear(24, 6)
    with torch.no_grad():
        reference.weight.copy_(torch.from_numpy(oracle.coef_))
        reference.bias.copy_(torch.from_numpy(oracle.intercept_))
    best = evaluation.objective(reference, x, y, weight_decay).item()
    # the default within 1e-3 nats per image of the optimum, a tight tolerance within 1e-5
    # of it, relative
    assert ours == pytest.approx(best, abs=1e-3) and tight == pytest.approx(best, rel=1e-5), (
        ours,
        tight,
        best,
    )
    head = evaluation.fit_logistic(x, y, 6, weight_decay)
    agree = (head(x).argmax(1).numpy() == oracle.predict(x.numpy())).mean()
    assert agree >= 0.99


def test_weight_decay_is_chosen_on_held_out_images_of_the_grid():
    x, y = _features(n=400, dim=64)
    config = load_experiment("smoke").probe
    chosen, head, scores = evaluation.choose_weight_decay(x, y, 6, config, seed=0)
    assert chosen in config.weight_decays and set(scores) == {
        f"{w:g}" for w in config.weight_decays
    }
    assert scores[f"{chosen:g}"] == max(scores.values())
    assert all(0 <= s <= 100 for s in scores.values())
    warm = evaluation.fit_logistic(
        x, y, 6, chosen, start=head
    )  # the refit on all images, warm-started
    cold = evaluation.fit_logistic(x, y, 6, chosen)
    assert evaluation.objective(warm, x, y, chosen).item() == pytest.approx(
        evaluation.objective(cold, x, y, chosen).item(), rel=1e-5
    )


def test_fitted_head_applies_to_raw_features_with_the_standardisation_folded_in():
    x, y = _features(n=400, dim=16)
    x = 3.0 + 5.0 * x  # far from standard: the fold has work to do
    config = load_experiment("smoke").probe
    head, found = evaluation.fit_head(x, y, 6, config, seed=0)
    standard = (x - x.mean(0)) / (x.std(0) + 1e-6)
    direct = evaluation.fit_logistic(standard, y, 6, found["weight_decay"], tolerance=1e-7)
    assert torch.allclose(head(x), direct(standard), atol=1e-2)
    assert found["final_grad_max"] <= config.tolerance * 10


def test_fine_tuning_starts_from_the_probe_head(smoke, monkeypatch):
    """LP-FT: with no training steps, the fine-tuned classifier is the encoder under the probe's
    head."""
    from studylib.stages import finetune

    exp = load_experiment(
        "smoke", ["transfer.finetune.epochs=1", "transfer.finetune.base_lr=1e-12"]
    )
    encoder = init.random_encoder(exp)
    tuned = finetune.finetune(exp, encoder, "synthetic").results()["top1"]
    probed = probe.probe(exp, encoder, "synthetic").results()["top1"]
    # drop path and one tiny step aside, the same classifier
    assert tuned == pytest.approx(probed, abs=2.0)
    assert probed > 30  # well above chance (10 classes): a random head would not be


def test_probe_run_records_a_converged_fit(smoke):
    run = probe.probe(smoke, init.random_encoder(smoke), "synthetic")
    result = run.results()
    assert result["final_grad_max"] < 1e-3 and result["weight_decay"] in smoke.probe.weight_decays
    # 10 classes: chance is 10
    assert result["top1"] > 10 and result["train_top1"] >= result["top1"] - 20
    assert np.isfinite(result["final_loss"])
