"""Exported encoders leave the project in timm's Hub layout and load there to the same features."""

import json

import pytest
import timm
import torch
import yaml

from studylib.cli import main
from studylib.config import load_experiment
from studylib.evaluation import frozen_encoder
from studylib.export import load
from studylib.stages import init


def test_an_exported_encoder_loads_in_timm_and_gives_the_same_features(tmp_path, capsys):
    exp = load_experiment("smoke", ["model=nano"])
    run = init.random_encoder(exp)
    out = tmp_path / "exported"
    assert main(["export", run.name, "--preset", "smoke", "--out", str(out)]) == 0
    assert "hf upload USER/NAME" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == [
        "README.md",
        "config.json",
        "model.safetensors",
    ]
    config = json.loads((out / "config.json").read_text())
    assert config["model_args"]["embed_dim"] == 64 and config["pretrained_cfg"]["input_size"] == [
        3,
        32,
        32,
    ]
    card = (out / "README.md").read_text()
    assert "library_name: timm" in card and run.name in card and "fingerprint" in card
    metadata = yaml.safe_load(card.split("---")[1])  # the Hub's front matter
    assert metadata["license"] == "mit" and metadata["tags"][0] == "init"  # the run's own stage
    images = torch.randn(5, 3, 32, 32)
    theirs = load(out).eval()
    ours = frozen_encoder(exp, run).eval()
    local = timm.create_model(f"local-dir:{out}", pretrained=True).eval()  # as the README loads it
    with torch.no_grad():
        assert torch.allclose(theirs(images), ours(images), atol=1e-6)
        assert torch.equal(local(images), theirs(images))
    # not an empty folder
    assert main(["export", run.name, "--preset", "smoke", "--out", str(out)]) == 2
    assert "not an empty folder" in capsys.readouterr().err
    assert main(["export", "mae-00000000", "--preset", "smoke", "--out", str(tmp_path / "x")]) == 2


@pytest.mark.parametrize("size", ["pico", "B/16"])
def test_the_timm_config_of_every_size_builds_that_vit(size):
    from studylib.export import timm_config
    from studylib.models import vit

    config = timm_config(size)
    import timm

    with torch.device("meta"):
        model = timm.create_model(config["architecture"], pretrained=False, **config["model_args"])
        ours = vit(size)
    assert {k: v.shape for k, v in model.state_dict().items()} == {
        k: v.shape for k, v in ours.state_dict().items()
    }


def test_runs_lists_the_finished_runs_and_export_takes_an_arm_at_a_seed(
    isolated_dirs, tmp_path, capsys
):
    exp = load_experiment("smoke", ["model=nano", "seed=3"])
    run = init.random_encoder(exp)
    assert main(["runs", "--preset", "smoke"]) == 0
    (line,) = [row for row in capsys.readouterr().out.splitlines() if run.name in row]
    assert line.split()[1:5] == ["init", "nano", "3", "fp32"]
    out = tmp_path / "by-arm"
    sets = ["--set", "model=nano", "--set", "seed=3"]
    assert main(["export", "random", "--preset", "smoke", *sets, "--out", str(out)]) == 0
    card = (out / "README.md").read_text()
    assert run.name in card  # the arm's encoder run at that seed
    # the one command that trains it again, found through the identity code
    assert "studylib submit random --preset smoke --set model=nano --set seed=3" in card
    assert "Linear probes" not in card  # none ran on it
    probe = run.path.parent / "probe-0000000a"  # a probe run's results.json, as the stage writes it
    probe.mkdir()
    (probe / "results.json").write_text(
        json.dumps({"top1": 51.234, "dataset": "cifar10", "encoder": run.name, "train_images": 100})
    )
    assert main(["export", run.name, "--preset", "smoke", "--out", str(tmp_path / "probed")]) == 0
    card = (tmp_path / "probed" / "README.md").read_text()
    assert "| cifar10 | 51.23 | 100 | probe-0000000a |" in card
    assert main(["export", "mae", "--preset", "smoke", *sets, "--out", str(tmp_path / "no")]) == 2
