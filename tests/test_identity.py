"""A run's identity covers what decides its result, including the data itself; an override never
replaces the preset's table; weights are bound to their run; defaults have one source."""

import ast
import dataclasses
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from studylib.cli import main
from studylib.config import load_experiment
from studylib.errors import ConfigError, RunFolderError
from studylib.experiment import Experiment, result_settings
from studylib.registry import STAGES
from studylib.runs import RUN_VERSION, Run
from studylib.stages import mae
from studylib.study import default_study

REPO = Path(__file__).resolve().parent.parent


def _cifar100_npz(path: Path, seed: int) -> None:
    """A tiny file in the layout of ../shared/data/README.md."""
    rng = np.random.default_rng(seed)
    path.mkdir(parents=True, exist_ok=True)
    np.savez(
        path / "cifar100.npz",
        x_train=rng.integers(0, 255, (200, 32, 32, 3), dtype=np.uint8),
        y_train=np.arange(200) % 100,
        y_train_coarse=np.arange(200) % 20,
        x_test=rng.integers(0, 255, (100, 32, 32, 3), dtype=np.uint8),
        y_test=np.arange(100),
        y_test_coarse=np.arange(100) % 20,
        classes=np.array([f"c{i}" for i in range(100)]),
        coarse_classes=np.array([f"g{i}" for i in range(20)]),
        fine_to_coarse=np.arange(100) % 20,
    )


def test_another_dataset_file_under_the_same_name_is_another_run(tmp_path, monkeypatch):
    for name, seed in (("a", 0), ("b", 1), ("a_copy", 0)):
        _cifar100_npz(tmp_path / name, seed)
    names = {}
    for name in ("a", "b", "a_copy"):
        monkeypatch.setenv("STUDYLIB_DATA", str(tmp_path / name))
        names[name] = mae.run_for(load_experiment("cpu")).name
    assert names["a"] != names["b"]  # other bytes in cifar100.npz
    assert names["a"] == names["a_copy"]  # the same bytes elsewhere: the same run


def _image_folder(root: Path, colour: int, count: int = 8) -> None:
    for label in ("cat", "dog"):
        (root / label).mkdir(parents=True)
        for i in range(count):
            image = Image.new("RGB", (32, 32), (colour, 40 * i % 255, 0 if label == "cat" else 200))
            image.save(root / label / f"{i}.png")


def test_two_image_folders_at_the_same_relative_path_are_two_runs(tmp_path, monkeypatch):
    overrides = ["data.pretrain=./pics", "mae.epochs=1", "mae.batch_size=8"]
    runs = []
    for place, colour in (("one", 10), ("two", 240)):
        _image_folder(tmp_path / place / "pics", colour)
        monkeypatch.chdir(tmp_path / place)
        runs.append(mae.pretrain(load_experiment("smoke", overrides)))
    # the second one trained too
    assert runs[0].path != runs[1].path and all(run.done for run in runs)
    assert [run.identity["data"]["fingerprint"] for run in runs][0] != runs[1].identity["data"][
        "fingerprint"
    ]


def test_an_overrides_table_lands_beside_the_presets_and_records_them(tmp_path, isolated_dirs):
    config = tmp_path / "experiments.yaml"
    yaml.safe_dump(
        {
            "presets": {
                "tiny": yaml.safe_load((REPO / "experiments.yaml").read_text())["presets"]["smoke"]
                | {"studies": {"arms": ["random"]}}
            }
        },
        config.open("w"),
    )
    results = isolated_dirs / "results"
    default_study(load_experiment("tiny", config_file=config))
    own = (results / "tiny" / "default.csv").read_bytes()
    for overrides in (
        ["launch.executor=debug", "mae.compile=true", "device=cpu", "launch.seed_workers=2"],
        ["probe.max_iter=500"],
    ):
        exp = load_experiment("tiny", overrides, config_file=config)
        default_study(exp)
    assert (
        results / "tiny" / "default.csv"
    ).read_bytes() == own  # speed-only overrides share it; others don't
    (other,) = [p for p in results.iterdir() if p.name.startswith("tiny+")]
    assert other.name == exp.results_key and (other / "default.csv").exists()
    assert yaml.safe_load((other / "experiment.yaml").read_text())["overrides"] == {
        "probe.max_iter": 500
    }
    assert yaml.safe_load((results / "tiny" / "experiment.yaml").read_text())["overrides"] == {}


def test_a_seed_on_the_command_line_is_the_seed_the_studies_run(isolated_dirs, capsys):
    exp = load_experiment("smoke", ["seed=5"])
    assert exp.studies.seeds == [5] and exp.results_key != "smoke"
    assert load_experiment("smoke", ["seed=1", "studies.seeds=[0,1]"]).studies.seeds == [0, 1]
    with pytest.raises(ConfigError, match=r"override seed: 5 is not among studies.seeds \[0\]"):
        load_experiment("smoke", ["seed=5", "studies.seeds=[0]"])
    assert (
        main(["study", "--preset", "smoke", "--set", "seed=5", "--set", "studies.arms=[random]"])
        == 0
    )
    (table,) = (isolated_dirs / "results").glob("smoke+*/default.csv")
    assert set(pd.read_csv(table).seed) == {5}


def test_weights_from_another_run_are_refused_with_one_line(smoke, capsys):
    short = mae.pretrain(load_experiment("smoke", ["mae.epochs=1"]))
    target = mae.run_for(smoke)
    target.path.mkdir(parents=True)
    for name in ("checkpoint.pth", "checkpoint.pth.sha256"):
        shutil.copy(short.path / name, target.path / name)  # an intact checkpoint of another run
    with pytest.raises(
        RunFolderError, match=f"checkpoint.pth: weights of run {short.name}, not of {target.name}"
    ):
        mae.pretrain(smoke)
    assert main(["study", "--preset", "smoke", "--set", "studies.arms=[mae]"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("studylib: error: ") and short.name in err[0]


def test_identity_holds_every_declared_section_whole_and_the_precision(smoke):
    for stage in STAGES.values():
        identity = Run(smoke, stage.name, {}).identity
        assert identity["version"] == RUN_VERSION and identity["precision"] == "fp32"
        for section in stage.sections:
            assert identity[section] == result_settings(smoke.section(section))
    assert "compile" not in Run(smoke, "mae", {}).identity["mae"]  # speed only
    bf16 = load_experiment("smoke", ["precision=bf16"])
    assert (
        Run(bf16, "mae", {}).identity["precision"] == "bf16"
        and Run(bf16, "mae", {}).hash != Run(smoke, "mae", {}).hash
    )


def test_auto_precision_takes_bf16_only_where_the_cpu_computes_it(monkeypatch):
    from studylib import distributed

    exp = load_experiment("cpu")
    for native, expected in ((True, "bf16"), (False, "fp32")):
        monkeypatch.setattr(distributed, "native_bf16", lambda native=native: native)
        assert distributed.precision_name(exp) == expected
        assert distributed.precision_name(load_experiment("cpu", ["precision=fp32"])) == "fp32"
        # pinned: tests match on every CPU
        assert distributed.precision_name(load_experiment("smoke")) == "fp32"


def test_defaults_have_one_source(tmp_path):
    assert "defaults" not in yaml.safe_load((REPO / "experiments.yaml").read_text())
    config = tmp_path / "bare.yaml"
    config.write_text("presets: {bare: {}}\n")
    assert load_experiment("bare", config_file=config) == dataclasses.replace(
        Experiment(), preset="bare"
    )
    # it did nothing: it is gone
    with pytest.raises(ConfigError, match="probe.crop_min: unknown key"):
        load_experiment("smoke", ["probe.crop_min=0.5"])


def heavy_imports(modules: str, heavy: tuple[str, ...]) -> list[str]:
    """The packages of `heavy` that importing `modules` (comma-separated) loads, in a fresh
    interpreter."""
    code = (
        f"import sys, {modules}; print(sorted({{m.split('.')[0] for m in sys.modules}} & "
        f"{set(heavy)!r}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    ).stdout
    return ast.literal_eval(out)


def test_leaf_modules_and_the_command_import_nothing_heavy():
    """So that `studylib` answers bad input or --help at once: torch is imported by the commands
    that need it."""
    modules = "studylib.config, studylib.errors, studylib.registry, studylib.cli"
    assert heavy_imports(modules, ("torch", "timm", "numpy", "pandas")) == []


def test_modules_that_read_tables_import_no_torch():
    """findings, figures and the plan read CSVs and draw: they compute nothing with torch, so import
    none."""
    modules = "studylib.io, studylib.findings, studylib.figures, studylib.plan"
    assert heavy_imports(modules, ("torch", "timm", "torchvision")) == []
    # the check sees torch where it is
    assert heavy_imports("studylib.runs", ("torch",)) == ["torch"]


def test_no_module_imports_torch_without_computing_with_it():
    """A module that only names torch in type hints imports it under TYPE_CHECKING (layers stay
    light)."""
    for path in sorted((REPO / "studylib").rglob("*.py")):
        tree = ast.parse(path.read_text())
        names = set()
        for node in tree.body:  # the module's own imports, at its top
            if isinstance(node, ast.Import):
                names |= {
                    a.asname or a.name.split(".")[0]
                    for a in node.names
                    if a.name.split(".")[0] == "torch"
                }
            elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "torch":
                names |= {a.asname or a.name for a in node.names}
        if not names:
            continue
        hints = [
            n.annotation
            for n in ast.walk(tree)
            if isinstance(n, ast.arg | ast.AnnAssign) and n.annotation
        ]
        hints += [n.returns for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.returns]
        in_hints = {id(n) for hint in hints for n in ast.walk(hint)}
        used = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and id(n) not in in_hints}
        assert names & used, f"{path.relative_to(REPO)} imports {sorted(names)} for type hints only"


def test_mae_wsp_s_own_lr_names_only_its_runs_as_base_lr_would():
    """wsp.from_mae_base_lr: MAE→WSP's WSP run is the run base_lr set to it makes; WSP from
    scratch keeps its name; the chain's runs differ from the plain recipe's."""
    from studylib import arms

    plain = load_experiment("smoke")
    own = load_experiment("smoke", ["wsp.from_mae_base_lr=0.0005"])
    as_base = load_experiment("smoke", ["wsp.base_lr=0.0005"])
    chain = [r.name for r in arms.mae_then_wsp(own, train=False)]
    assert chain == [r.name for r in arms.mae_then_wsp(as_base, train=False)]
    assert chain != [r.name for r in arms.mae_then_wsp(plain, train=False)]
    scratch = arms.wsp_from_scratch(own, train=False)[0].name
    assert scratch == arms.wsp_from_scratch(plain, train=False)[0].name
