"""Every bad input gets one clear line naming the file or key and what is allowed, exit code 2, and
nothing written. Each case runs the real `studylib` command in-process."""

import subprocess

import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from studylib.cli import main
from studylib.config import load_experiment
from studylib.errors import ConfigError, RunFolderError
from studylib.models import vit
from studylib.runs import Run, load_encoder_from

CASES = [
    # (id, extra arguments, expected words in the one-line error)
    (
        "unknown top-level key",
        ["--set", "modle=micro"],
        ["override modle: unknown key", "did you mean 'model'"],
    ),
    (
        "unknown nested key",
        ["--set", "mae.mask_ration=0.5"],
        ["mae.mask_ration", "did you mean 'mask_ratio'"],
    ),
    (
        "unknown section",
        ["--set", "finetune.epochs=3"],
        ["unknown key", "allowed: ['analysis', 'data', 'device'"],
    ),
    ("int as text", ["--set", "mae.epochs=three"], ["mae.epochs", "expected int, got 'three'"]),
    ("float as text", ["--set", "wsp.base_lr=fast"], ["wsp.base_lr", "expected float"]),
    ("float for int", ["--set", "wsp.epochs=2.5"], ["wsp.epochs", "expected int, got 2.5"]),
    (
        "bool for int",
        ["--set", "wsp.batch_size=true"],
        ["wsp.batch_size", "expected int, got True"],
    ),
    ("text for bool", ["--set", "mae.norm_pix_loss=maybe"], ["mae.norm_pix_loss", "expected bool"]),
    ("mask ratio 0", ["--set", "mae.mask_ratio=0"], ["mae.mask_ratio", "must be in (0, 1)"]),
    ("mask ratio 1", ["--set", "mae.mask_ratio=1"], ["mae.mask_ratio", "must be in (0, 1)"]),
    (
        "mask ratio above 1",
        ["--set", "mae.mask_ratio=1.5"],
        ["mae.mask_ratio", "must be in (0, 1)"],
    ),
    ("negative epochs", ["--set", "mae.epochs=-2"], ["mae.epochs", "must be in [1, 10000]"]),
    ("zero batch", ["--set", "wsp.batch_size=0"], ["wsp.batch_size", "must be > 0"]),
    ("negative lr", ["--set", "wsp.base_lr=-0.1"], ["wsp.base_lr", "must be > 0"]),
    ("probability above 1", ["--set", "tags.p_true=1.2"], ["tags.p_true", "must be in [0, 1]"]),
    ("fraction 0", ["--set", "data.pretrain_fraction=0"], ["data.pretrain_fraction", "in (0, 1]"]),
    (
        "unknown model",
        ["--set", "model=gigantic"],
        ["model", "'gigantic' is not allowed", "'micro'"],
    ),
    (
        "unknown dataset",
        ["--set", "data.pretrain=imagenet"],
        ["data.pretrain", "'imagenet'", "existing image folder"],
    ),
    ("unknown probe dataset", ["--set", "data.probe=[cifar10, svhn]"], ["data.probe", "cifar100"]),
    ("empty probe list", ["--set", "data.probe=[]"], ["data.probe", "is not allowed"]),
    ("text for list", ["--set", "data.probe=cifar10"], ["data.probe", "expected a list of str"]),
    ("unknown device", ["--set", "device=tpu"], ["device", "['auto', 'cpu', 'cuda']"]),
    ("unknown precision", ["--set", "precision=fp8"], ["precision", "['auto', 'bf16', 'fp32']"]),
    ("mapping for value", ["--set", "model={a: 1}"], ["model", "expected str"]),
    ("value for mapping", ["--set", "wsp=3"], ["override wsp: expected a mapping"]),
    ("override without =", ["--set", "mae.epochs"], ["expected KEY=VALUE"]),
    (
        "unknown preset",
        ["--preset", "smok"],
        ["unknown preset 'smok'", "did you mean 'smoke'", "allowed:"],
    ),
    (
        "infinite float",
        ["--set", "wsp.warmup_epochs=.inf"],
        ["wsp.warmup_epochs", "must be a finite number"],
    ),
    ("negative seed", ["--set", "tags.seed=-1"], ["tags.seed", "must be >= 0"]),
    (
        "missing probe folder",
        ["--set", "data.probe=[/no/such/folder]"],
        ["data.probe", "existing image folders"],
    ),
    (
        "mask hides every patch",
        ["--set", "mae.mask_ratio=0.999"],
        ["mae.mask_ratio", "hides no patch or every patch"],
    ),
]


def _run(capsys, args):
    code = main(["study", *args])
    err = capsys.readouterr().err.strip().splitlines()
    return code, err


@pytest.mark.parametrize("args, expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_override_or_preset(args, expected, capsys, isolated_dirs):
    code, err = _run(capsys, ["--preset", "smoke", *args] if "--preset" not in args else args)
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith("studylib: error: ")
    for words in expected:
        assert words in err[0]
    assert not (isolated_dirs / "runs").exists() and not (isolated_dirs / "results").exists()


def _config(tmp_path, text):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    "text, expected",
    [
        ("presets: {smoke: {model: micro}\n", "not valid YAML"),
        ("- just\n- a list\n", "expected a mapping with a 'presets' key"),
        ("presets: {smoke: {}}\nextras: 1\n", "unknown top-level key 'extras'"),
        ("presets: {smoke: [1, 2]}\n", "presets.smoke: expected a mapping"),
        (
            "presets: {smoke: {mae: {epochs: 0}}}\n",
            "presets.smoke.mae.epochs: 0 is not allowed; must be in [1, 10000]",
        ),
        (
            "defaults: {wsp: {crop_min: 0}}\npresets: {smoke: {}}\n",
            "unknown top-level key 'defaults'",
        ),
    ],
)
def test_bad_config_file(text, expected, tmp_path, capsys, isolated_dirs):
    code, err = _run(capsys, ["--preset", "smoke", "--config", str(_config(tmp_path, text))])
    assert code == 2 and len(err) == 1 and expected in err[0], err
    assert not (isolated_dirs / "runs").exists()


def test_missing_config_file(tmp_path, capsys):
    code, err = _run(capsys, ["--config", str(tmp_path / "nope.yaml")])
    assert code == 2 and "nope.yaml: cannot read the config file" in err[0]


def test_missing_data_directory(tmp_path, capsys, monkeypatch, isolated_dirs):
    monkeypatch.setenv("STUDYLIB_DATA", str(tmp_path / "no-such-dir"))
    code, err = _run(capsys, ["--preset", "cpu"])
    assert code == 2 and len(err) == 1 and "no-such-dir: data directory does not exist" in err[0]
    assert not (isolated_dirs / "runs").exists()


def test_image_folder_without_images(tmp_path, capsys, isolated_dirs):
    (tmp_path / "pics" / "train" / "cat").mkdir(parents=True)
    code, err = _run(capsys, ["--preset", "smoke", "--set", f"data.pretrain={tmp_path / 'pics'}"])
    assert code == 2 and "no images" in err[0] and "pics" in err[0]
    assert not (isolated_dirs / "runs").exists()


def test_corrupt_image(tmp_path, capsys, isolated_dirs):
    cat = tmp_path / "pics" / "cat"
    cat.mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(cat / "ok.png")
    (cat / "broken.png").write_bytes(b"\x89PNG not really")
    code, err = _run(capsys, ["--preset", "smoke", "--set", f"data.pretrain={tmp_path / 'pics'}"])
    assert code == 2 and "broken.png: not a readable image" in err[0]
    assert not (isolated_dirs / "runs").exists()


def test_checkpoint_of_another_model_size(smoke, tmp_path):
    run = Run(smoke, "mae", {"fake": 1})
    run.save("encoder.pth", vit("micro").state_dict())
    with pytest.raises(RunFolderError, match=r"encoder.pth: weights of another model"):
        load_encoder_from(run, vit("tiny"))


def test_too_little_free_disk(tmp_path, capsys, monkeypatch):
    small = tmp_path / "small"
    small.mkdir()
    if (
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(small)], capture_output=True
        ).returncode
        != 0
    ):
        pytest.skip("needs root to mount a small tmpfs")
    try:
        monkeypatch.setenv("STUDYLIB_RUNS", str(small / "runs"))
        code, err = _run(capsys, ["--preset", "smoke"])
        assert code == 2 and len(err) == 1
        assert "too little free disk" in err[0] and "needs" in err[0] and "GiB" in err[0]
        assert not (small / "runs" / "smoke").exists() or not any(
            (small / "runs" / "smoke").iterdir()
        )
    finally:
        subprocess.run(["umount", str(small)], check=True)


class Exploit:
    """A pickle that would run a command when loaded without weights_only."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return subprocess.call, (["touch", str(self.marker)],)


def test_unsafe_pickles_are_refused(smoke, tmp_path, capsys):
    run = Run(smoke, "mae", {"fake": 2})
    run.save("encoder.pth", {"weights": torch.zeros(1), "code": Exploit(tmp_path / "pwned")})
    with pytest.raises(RunFolderError, match="encoder.pth: missing or corrupt encoder weights"):
        load_encoder_from(run, vit("micro"))
    assert "Weights only load failed" in capsys.readouterr().err  # the warning that skipped it
    assert not (tmp_path / "pwned").exists()


keys = st.sampled_from(
    [
        "model",
        "seed",
        "device",
        "precision",
        "mae.epochs",
        "mae.mask_ratio",
        "wsp.base_lr",
        "data.probe",
        "data.pretrain",
        "tags.p_true",
        "probe.max_iter",
        "mae",
        "nonsense",
        "mae.bogus",
        "data.pretrain_fraction",
        "wsp.clip_grad",
    ]
)
values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 5000),
    st.floats(allow_nan=True),
    st.text(max_size=8),
    st.lists(st.sampled_from(["cifar10", "x", "synthetic"]), max_size=3),
    st.dictionaries(st.sampled_from(["epochs", "a"]), st.integers(), max_size=2),
)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.dictionaries(keys, values, max_size=4))
def test_any_config_is_valid_or_a_clear_error(overrides):
    texts = [
        f"{k}={yaml.safe_dump(v, default_flow_style=True).strip().removesuffix('...').strip()}"
        for k, v in overrides.items()
    ]
    try:
        exp = load_experiment("smoke", texts)
    except ConfigError as err:
        assert str(err) and "\n" not in str(err).strip()
    else:
        assert 0 < exp.mae.mask_ratio < 1 and exp.mae.epochs > 0
