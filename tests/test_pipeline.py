import json

import pandas as pd
import pytest
import torch

from studylib import engine
from studylib.config import load_experiment
from studylib.models import vit
from studylib.paths import results_dir
from studylib.stages import mae, probe, wsp
from studylib.study import default_study, summary_text


def test_default_study_end_to_end_on_smoke(smoke):
    table = default_study(smoke)
    csv = pd.read_csv(results_dir("smoke") / "default.csv")
    assert len(csv) == len(table)
    top1 = csv.query("metric == 'top1'").set_index("arm")["value"]
    # every arm, in the registry's order
    assert list(top1.index) == ["random", "mae", "wsp", "mae_wsp", "wsp_flops"]
    assert (top1 > 100 / 10).all()  # all beat chance on 10 synthetic classes
    flops = csv.query("stage == 'pretraining'").set_index("arm")["value"]
    assert flops["random"] == 0 and flops["mae_wsp"] == pytest.approx(flops["mae"] + flops["wsp"])
    text = summary_text(table)
    assert (
        "MAE final loss" in text
        and "Linear-probe top-1" in text
        and "images_per_s" in text
        and "MAE→WSP" in text
    )
    run_folders = {
        p.name.split("-")[0]
        for p in (results_dir("smoke").parent.parent / "runs" / "smoke").iterdir()
    }
    assert run_folders == {"init", "mae", "wsp", "probe"}


def test_bf16_on_cpu_trains_every_block_with_explicit_attention_and_fused_adamw(smoke, monkeypatch):
    seen = {}
    real_step = engine.train_step

    def capture(model, *args, **kwargs):
        seen["attention"] = {m.fused_attn for m in model.modules() if hasattr(m, "fused_attn")}
        seen["fused_adamw"] = args[3].defaults["fused"]
        return real_step(model, *args, **kwargs)

    monkeypatch.setattr(engine, "train_step", capture)
    # small: some CPUs emulate bf16
    run = wsp.pretrain(load_experiment("smoke", ["precision=bf16", "model=pico"]))
    assert seen == {"attention": {False}, "fused_adamw": True}
    losses = [r["loss"] for r in run.metrics()]
    assert losses[-1] < losses[0]


def test_run_folder_records_config_sha_versions_and_metrics(smoke):
    run = mae.pretrain(smoke)
    files = {p.name for p in run.path.iterdir()}
    assert {
        "config.yaml",
        "meta.json",
        "metrics.jsonl",
        "checkpoint.pth",
        "results.json",
        "encoder.pth",
    } <= files
    (attempt,) = json.loads((run.path / "meta.json").read_text())["attempts"]
    # the values themselves: this checkout's commit, the torch and timm that ran
    import timm
    import torch

    from studylib.io import git_sha

    assert attempt["git_sha"] == git_sha() and len(attempt["git_sha"].split("-")[0]) == 40
    assert attempt["versions"]["torch"] == torch.__version__.split("+")[0]  # no local tag
    assert attempt["versions"]["timm"] == timm.__version__ and attempt["argv"]
    assert [r["epoch"] for r in run.metrics()] == [1, 2]
    assert run.hash in run.name


def test_a_finished_run_is_never_trained_again(smoke):
    first = mae.pretrain(smoke)
    stamp = (first.path / "results.json").stat().st_mtime_ns
    again = mae.pretrain(smoke)
    assert again.path == first.path
    assert (again.path / "results.json").stat().st_mtime_ns == stamp
    other = mae.pretrain(load_experiment("smoke", ["mae.mask_ratio=0.5"]))
    assert other.path != first.path


def test_wsp_from_mae_loads_every_encoder_weight(smoke, monkeypatch):
    mae_run = mae.pretrain(smoke)
    mae_encoder = mae_run.load("encoder.pth")
    seen = {}
    real_train = wsp.train

    def capture(run, model, *args, **kwargs):
        seen.update({k: v.clone() for k, v in model.state_dict().items()})
        return real_train(run, model, *args, **kwargs)

    monkeypatch.setattr(wsp, "train", capture)
    wsp.pretrain(smoke, init=mae_run)
    assert set(mae_encoder) == {k for k in seen if not k.startswith("head.")}
    for key, value in mae_encoder.items():
        assert torch.equal(seen[key], value), key
    scratch = vit(smoke.model)
    assert not torch.equal(
        scratch.blocks[0].attn.qkv.weight, mae_encoder["blocks.0.attn.qkv.weight"]
    )


def test_an_interrupted_run_resumes_at_the_next_epoch(smoke, monkeypatch, capsys, tmp_path):
    exp = load_experiment("smoke", ["wsp.epochs=3"])
    uninterrupted = wsp.pretrain(exp).results()
    # the same run again, from nothing
    monkeypatch.setenv("STUDYLIB_RUNS", str(tmp_path / "crashed"))
    steps = {"n": 0}
    real_loss = wsp.wsp_loss

    def crash_in_epoch_2(model, images, tags):
        steps["n"] += 1
        if steps["n"] == 8 + 3:  # 8 steps per epoch (512 images / 64): a crash mid-epoch 2
            raise KeyboardInterrupt
        return real_loss(model, images, tags)

    monkeypatch.setattr(wsp, "wsp_loss", crash_in_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        wsp.pretrain(exp)
    crashed = wsp.run_for(exp)
    assert [r["epoch"] for r in crashed.metrics()] == [1] and not crashed.done
    monkeypatch.setattr(wsp, "wsp_loss", real_loss)
    capsys.readouterr()
    resumed = wsp.pretrain(exp)
    out = capsys.readouterr().out
    assert "resuming after epoch 1/3" in out and "epoch 1/3 loss" not in out
    assert [r["epoch"] for r in resumed.metrics()] == [1, 2, 3]
    assert len(json.loads((resumed.path / "meta.json").read_text())["attempts"]) == 2
    assert resumed.results()["final_loss"] == pytest.approx(uninterrupted["final_loss"], rel=1e-6)


def test_linear_probe_learns_separable_features(smoke):
    encoder_run = mae.pretrain(smoke)
    result = probe.probe(smoke, encoder_run, "synthetic").results()
    assert result["top1"] > 25  # chance is 10%
    assert result["dataset"] == "synthetic" and result["encoder"] == encoder_run.name
