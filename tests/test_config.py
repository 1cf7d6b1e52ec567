import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from studylib.cli import main
from studylib.config import load_experiment
from studylib.errors import ConfigError
from studylib.experiment import Experiment, config_hash

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("preset", ["smoke", "cpu", "gpu", "paper"])
def test_every_preset_is_valid(preset):
    exp = load_experiment(preset)
    written = yaml.safe_load((REPO / "experiments.yaml").read_text())["presets"][preset]
    assert exp.preset == preset and exp.model == written.get("model", Experiment().model)
    for stage in ("mae", "wsp"):  # what the preset writes, else the dataclass default
        expected = written.get(stage, {}).get("epochs", getattr(Experiment(), stage).epochs)
        assert getattr(exp, stage).epochs == expected


def test_overrides_change_values_and_the_hash():
    base = load_experiment("smoke")
    changed = load_experiment(
        "smoke", ["mae.epochs=7", "mae.mask_ratio=0.6", "data.probe=[synthetic]"]
    )
    assert changed.mae.epochs == 7 and changed.mae.mask_ratio == 0.6
    assert config_hash(changed.to_dict()) != config_hash(base.to_dict())
    assert config_hash(load_experiment("smoke").to_dict()) == config_hash(base.to_dict())


@pytest.mark.parametrize(
    "overrides, expected",
    [
        (["mae.mask_ratio=1.5"], "override mae.mask_ratio: 1.5 is not allowed; must be in (0, 1)"),
        (["mae.epochs=-1"], "override mae.epochs: -1 is not allowed; must be in [1, 10000]"),
        (["mae.epochs=three"], "override mae.epochs: expected int, got 'three'"),
        (["mae.mask_ration=0.5"], "unknown key 'mask_ration' (did you mean 'mask_ratio'?)"),
        (
            ["model=huge"],
            "override model: 'huge' is not allowed; must be one of ['pico', 'nano', 'micro'",
        ),
        (["data.pretrain=imagenet"], "override data.pretrain: 'imagenet' is not allowed"),
        (["device=tpu"], "must be one of ['auto', 'cpu', 'cuda']"),
        (["mae=3"], "override mae: expected a mapping"),
        (["novalue"], "expected KEY=VALUE"),
    ],
)
def test_bad_values_get_a_clear_error(overrides, expected):
    with pytest.raises(ConfigError) as err:
        load_experiment("smoke", overrides)
    assert expected in str(err.value)


def test_errors_name_the_file_and_preset(tmp_path):
    config = tmp_path / "experiments.yaml"
    config.write_text(yaml.safe_dump({"presets": {"mine": {"wsp": {"batch_size": 0}}}}))
    with pytest.raises(
        ConfigError, match=r"experiments.yaml: presets.mine.wsp.batch_size: 0 is not allowed"
    ):
        load_experiment("mine", config_file=config)
    with pytest.raises(
        ConfigError, match=r"unknown preset 'mien' \(did you mean 'mine'\?\); allowed: \['mine'\]"
    ):
        load_experiment("mien", config_file=config)


def test_cli_exits_2_with_one_line_and_writes_nothing(tmp_path):
    env = {
        "STUDYLIB_RUNS": str(tmp_path / "runs"),
        "STUDYLIB_RESULTS": str(tmp_path / "results"),
        "PATH": "/usr/bin:/bin",
    }
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "studylib",
            "study",
            "--preset",
            "smoke",
            "--set",
            "mae.mask_ratio=0",
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "studylib: error: override mae.mask_ratio: 0.0 is not allowed; must be in (0, 1)"
    ]
    assert not (tmp_path / "runs").exists() and not (tmp_path / "results").exists()


def test_floats_in_exponent_form_are_read_as_numbers():
    # YAML reads 1e-3 as text
    assert load_experiment("smoke", ["wsp.base_lr=1e-3"]).wsp.base_lr == 0.001


def test_run_hash_ignores_speed_and_launch_settings_only():
    from studylib.stages import mae

    base = mae.run_for(load_experiment("smoke")).name
    same = [
        "mae.compile=true",
        "launch.executor=slurm",
        "launch.nodes=4",
        "device=cpu",
        "wsp.epochs=9",
    ]
    assert mae.run_for(load_experiment("smoke", same)).name == base
    for changed in (
        ["mae.mask_ratio=0.6"],
        ["seed=1"],
        ["model=tiny"],
        ["data.pretrain_fraction=0.5"],
    ):
        assert mae.run_for(load_experiment("smoke", changed)).name != base, changed


def test_mae_data_fraction_is_a_share_of_the_named_dataset_not_of_the_pool():
    from studylib.pool import open_pool

    exp = load_experiment("smoke", ["data.pretrain_fraction=0.5"])
    total = exp.data.synthetic_train
    assert len(open_pool(exp).images.train_labels) == total // 2  # the pool
    # 'pretrain:0.5': half the pool
    assert len(open_pool(exp, None, 0.5).images.train_labels) == total // 4
    assert (
        len(open_pool(exp, "synthetic", 1.0).images.train_labels) == total
    )  # 'synthetic:1': all of it
    assert open_pool(exp, "synthetic", 1.0).identity()["fraction"] == 1.0
    in_pool = set(open_pool(exp).images.train_images[:, 0, 0, 0].tolist())
    larger = set(open_pool(exp, "synthetic", 0.75).images.train_images[:, 0, 0, 0].tolist())
    assert len(in_pool) > 1 and in_pool <= larger  # nested


def test_every_command_shows_examples_that_parse_and_name_valid_keys(capsys):
    import shlex

    from studylib import cli

    for command, examples in cli.EXAMPLES.items():
        with pytest.raises(SystemExit):
            cli.parser().parse_args([command, "--help"])
        assert "examples:\n" + examples in capsys.readouterr().out
        for line in examples.splitlines():
            args = cli.parser().parse_args(shlex.split(line)[1:])
            if hasattr(args, "preset"):
                # every --set of an example is a real key
                load_experiment(args.preset, args.overrides)


def _leaves(value: object, prefix: str = "") -> list[str]:
    import dataclasses

    keys = []
    for f in dataclasses.fields(value):
        if f.metadata.get("internal"):
            continue
        item = getattr(value, f.name)
        keys += (
            _leaves(item, f"{prefix}{f.name}.")
            if dataclasses.is_dataclass(item)
            else [f"{prefix}{f.name}"]
        )
    return keys


def test_config_explain_reads_the_schema_and_agrees_with_the_identity_code(capsys):
    """`studylib config --explain KEY`: the comment above the setting in the schema, its allowed
    values and defaults; and for every setting, whether it names runs as the identity code says
    (result_settings keeps it, or leaves it out)."""
    from studylib.experiment import result_settings
    from studylib.explain import explain

    assert main(["config", "--preset", "cpu", "--explain", "wsp.epoch_images"]) == 0
    out = capsys.readouterr().out
    assert "images drawn per epoch (0: one pass over the pool" in out  # its comment in the schema
    assert "allowed: >= 0" in out and "when set away from its default" in out
    exp = load_experiment("smoke")
    kept = result_settings(exp)
    for key in _leaves(exp):
        value = kept
        for part in key.split("."):
            value = value.get(part, KeyError) if isinstance(value, dict) else KeyError
        said = explain(exp, key).split("in a run's identity: ")[1]
        if value is KeyError:  # speed-only, the plan, launch, or a when-set value at its default
            assert said.startswith(("no:", "when set")), key
        else:
            assert said.startswith(("yes:", "when set")), key
    assert main(["config", "--preset", "cpu", "--explain", "wsp.nope"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "allowed: epochs, batch_size" in err
