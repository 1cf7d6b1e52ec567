import dataclasses

import pandas as pd
import pytest
import torch
from torch import nn

from studylib.batches import Batches
from studylib.config import load_experiment
from studylib.data import synthetic
from studylib.engine import param_groups, train
from studylib.models import vit
from studylib.runs import Run
from studylib.stages import finetune, lowshot, mae, wsp, zeroshot
from studylib.transfer import import_checkpoint, summary, transfer_suite


@pytest.fixture(scope="module")
def suite(tmp_path_factory: pytest.TempPathFactory) -> tuple:
    """The whole suite on smoke, once for this module: MAE -> WSP, then every task."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("STUDYLIB_RUNS", str(tmp_path_factory.mktemp("runs")))
        exp = load_experiment("smoke")
        encoder_run = wsp.pretrain(exp, init=mae.pretrain(exp))
        yield exp, encoder_run, transfer_suite(exp, encoder_run)


@pytest.fixture
def suite_runs(suite, monkeypatch: pytest.MonkeyPatch) -> tuple:
    """The suite, with this test's runs folder set to the suite's (not a fresh, empty one)."""
    monkeypatch.setenv("STUDYLIB_RUNS", str(suite[1].path.parent.parent))
    return suite


def test_suite_writes_one_table_with_every_task(suite):
    exp, encoder_run, table = suite
    # registry order
    assert list(table.task.unique()) == [
        "finetune",
        "probe",
        "lowshot",
        "zeroshot",
        "robustness",
    ]
    saved = pd.read_csv(encoder_run.path / "transfer.csv")
    columns = set("task dataset variant metric value draw run".split())
    assert len(saved) == len(table) and set(saved.columns) >= columns
    assert not table.duplicated(["task", "dataset", "variant", "metric", "draw"]).any()
    lines = summary(table)
    draws = lines.loc[(encoder_run.name, "lowshot", "synthetic", "5-shot", "top1"), "count"]
    assert draws == exp.transfer.lowshot.draws


def test_rerun_skips_every_finished_task(suite_runs):
    exp, encoder_run, table = suite_runs
    stamps = {
        run: (encoder_run.path.parent / run / "results.json").stat().st_mtime_ns
        for run in set(table.run)
    }
    again = transfer_suite(exp, encoder_run)
    pd.testing.assert_frame_equal(again, table)
    assert stamps == {
        run: (encoder_run.path.parent / run / "results.json").stat().st_mtime_ns for run in stamps
    }


def test_engine_scales_each_groups_lr_by_its_layer_decay(smoke):
    config = dataclasses.replace(smoke.transfer.finetune, epochs=1, layer_decay=0.5)
    model = vit("micro", num_classes=10)
    data = synthetic(64, 32)
    run = Run(smoke, "finetune", {"test": "layer decay"})
    batches = Batches(data.train_images.float(), data.train_labels, 32, torch.device("cpu"))
    train(
        run,
        model,
        lambda m, x, y: nn.functional.cross_entropy(m(x), y),
        batches,
        config,
        torch.device("cpu"),
        None,
        0,
    )
    groups = run.load(run.checkpoint.name)["optimizer"]["param_groups"]
    last_lr = max(g["lr"] for g in groups)
    assert {round(g["lr"] / last_lr, 6) for g in groups} == {round(0.5**k, 6) for k in range(8)}
    assert all(g["lr"] == pytest.approx(last_lr * g["lr_scale"]) for g in groups)


def test_finetuning_learns_and_uses_layer_decay(suite):
    exp, _, table = suite
    tuned = table.query("task == 'finetune'").set_index("metric")["value"]
    top1 = tuned["top1"]
    assert tuned["steps"] >= 1  # the steps it ran are recorded beside its accuracy
    assert top1 > 50  # 10 synthetic classes: chance is 10
    groups = param_groups(vit("micro", num_classes=10), exp.transfer.finetune)
    scales = {round(g["lr_scale"], 6) for g in groups}
    decay, depth = exp.transfer.finetune.layer_decay, 6
    assert scales == {round(decay ** (depth + 1 - i), 6) for i in range(depth + 2)}


def test_corruption_accuracy_falls_as_severity_rises(suite):
    _, _, table = suite
    rob = table.query("task == 'robustness' and variant.str.contains('/')", engine="python")
    parts = rob.variant.str.split("/")
    rob = rob.assign(corruption=parts.str[0], severity=parts.str[1].astype(int))
    by_severity = rob.groupby("severity")["value"].mean()
    clean = table.query("task == 'robustness' and variant == 'clean'")["value"].item()
    assert by_severity[5] < clean
    at = rob.pivot_table(index="corruption", columns="severity", values="value")
    assert (
        at[5] < at[1]
    ).any()  # a synthetic class is a colour pair: some corruptions cannot touch it
    drop = table.query("task == 'robustness' and metric == 'drop'")["value"].item()
    mean = table.query("task == 'robustness' and variant == 'mean' and metric == 'top1'")[
        "value"
    ].item()
    assert drop == pytest.approx(clean - mean)


def test_zeroshot_beats_chance_on_separable_synthetic_data(suite):
    _, _, table = suite
    zero = table.query("task == 'zeroshot'").pivot_table(
        index="variant", columns="metric", values="value"
    )
    assert (zero["top1"] > 2 * zero["chance"]).all(), zero
    assert set(zero.index) == {"fine", "coarse"}


def test_lowshot_draws_exactly_k_per_class_and_draws_differ():
    data = synthetic(512, 256)
    for k in (1, 5, 10):
        picks = lowshot.draw_indices(data, k, seed=3)
        assert torch.bincount(data.train_labels[picks], minlength=10).tolist() == [k] * 10
    assert set(lowshot.draw_indices(data, 1, 3).tolist()) <= set(
        lowshot.draw_indices(data, 5, 3).tolist()
    )
    assert not torch.equal(lowshot.draw_indices(data, 5, 1), lowshot.draw_indices(data, 5, 2))


def test_lowshot_rows_are_one_per_draw_and_learn(suite):
    exp, _, table = suite
    rows = table.query("task == 'lowshot'")
    assert rows.query("variant == '10-shot'")["value"].mean() > 2 * 100 / 10  # 10 classes
    assert sorted(rows.variant.unique()) == sorted(f"{k}-shot" for k in exp.transfer.lowshot.shots)
    assert rows.groupby("variant")["draw"].nunique().eq(exp.transfer.lowshot.draws).all()


def test_logistic_regression_separates_separable_features():
    gen = torch.Generator().manual_seed(0)
    centres = torch.randn(4, 16, generator=gen) * 5
    labels = torch.arange(40) % 4
    features = centres[labels] + torch.randn(40, 16, generator=gen)
    head = lowshot.fit_logistic(features, labels, 4, weight_decay=1e-3)
    assert (head(features).argmax(1) == labels).all()


def test_tokenizer_splits_hashtags_and_maps_unknown_words():
    tokenizer = zeroshot.Tokenizer(["#aquarium_fish #fish_daily", "#apple"])
    assert tokenizer.vocab == ["apple", "aquarium", "daily", "fish"]
    ids = tokenizer(["a photo of a aquarium fish."], max_tokens=6)
    unknown = zeroshot.UNKNOWN
    assert ids.tolist() == [
        [
            zeroshot.CLS,
            unknown,
            unknown,
            unknown,
            unknown,
            tokenizer.ids["aquarium"],
            tokenizer.ids["fish"],
        ]
    ]
    assert tokenizer(["apple"], max_tokens=3).tolist() == [
        [zeroshot.CLS, tokenizer.ids["apple"], zeroshot.PAD, zeroshot.PAD]
    ]


def test_outside_timm_checkpoint_runs_through_the_suite(tmp_path, smoke):
    source = vit("micro", num_classes=7)
    torch.save({"state_dict": source.state_dict()}, tmp_path / "timm_vit.pth")
    run = import_checkpoint(smoke, tmp_path / "timm_vit.pth")
    assert run.done and (run.path / "encoder.pth").exists()
    exp = load_experiment("smoke", ["transfer.tasks=[probe]"])
    table = transfer_suite(exp, run)
    assert table.task.tolist() == ["probe"] and 0 <= table.value.item() <= 100
    model = finetune.vit("micro")
    finetune.load_encoder_from(run, model)
    x = torch.randn(2, 3, 32, 32)
    source.eval(), model.eval()
    torch.testing.assert_close(
        model(x), source.forward_head(source.forward_features(x), pre_logits=True)
    )
