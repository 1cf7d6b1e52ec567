"""Each concept is declared once, in studylib.registry: an arm or a study registered from here alone
shows up in the study table, the figures, the CLI's choices and the job targets."""

import math
import re
from pathlib import Path

import pandas as pd
import pytest

from studylib import registry
from studylib.cli import main, parser
from studylib.comparisons import comparisons
from studylib.config import load_experiment
from studylib.figures import make_all
from studylib.notebooks import notebooks
from studylib.registry import targets
from studylib.stages import mae
from studylib.study import _table, default_study, with_values

REPO = Path(__file__).resolve().parent.parent


def mae_one_epoch(exp):
    return [mae.pretrain(with_values(exp, mae={"epochs": 1}))]


def count_arms(exp):
    """A study of the test's own: how many arms the experiment compares."""
    return _table(
        exp, "arm_count", [{"stage": "count", "metric": "arms", "value": len(exp.studies.arms)}]
    )


def draw_arm_count(key):
    from studylib import figures, plotting

    table = plotting.read(key, "arm_count")
    fig = figures.plt.figure()
    fig.gca().bar(["arms"], table.value)
    return plotting.save(fig, "arm_count", key, ["arm_count"], table)


@pytest.fixture
def registered():
    items = [
        registry.Arm(
            "mae_short",
            "MAE (1 epoch)",
            "#9467BD",
            mae_one_epoch,
            "MAE for one epoch",
            beats=("random",),
        ),
        registry.Study("arm_count", count_arms, "how many arms", figures=("arm_count",)),
        registry.Figure("arm_count", draw_arm_count, "arm_count"),
    ]
    for item in items:
        registry.register(item)
    yield items
    for item in items:
        registry.unregister(item)


def test_a_new_arm_and_study_from_test_code_show_up_everywhere(registered, capsys, isolated_dirs):
    # every registered arm, by default
    assert load_experiment("smoke").studies.arms[-1] == "mae_short"
    exp = load_experiment("smoke", ["studies.arms=[random, mae_short]"])
    table = default_study(exp)
    top1 = table.query("stage == 'probe' and metric == 'top1'")
    assert list(top1.arm) == ["random", "mae_short"] and (top1.value > 10).all()
    svg = make_all(exp.results_key, ["default"])["default"][1].read_text()
    assert "MAE (1 epoch)" in svg and "random init" in svg  # the legend, with the registry's labels
    # its pair (Arm.beats) enters the findings
    found = {c.key: c for c in comparisons(exp.results_key)}
    mine = found["mae_short-random/probe/synthetic"]
    assert mine.differences == pytest.approx([top1.value.iloc[1] - top1.value.iloc[0]])
    assert mine.what.startswith("MAE (1 epoch) − random init: linear probe")
    # the paper's pair: no arm here
    assert "probe/synthetic" in found and found["probe/synthetic"].n == 0

    assert main(["study", "arm_count", "--preset", "smoke"]) == 0  # the study, then its own figure
    assert pd.read_csv(isolated_dirs / "results" / "smoke" / "arm_count.csv").value.item() == 6
    drawn = isolated_dirs / "figures" / "smoke" / "arm_count.png"
    assert drawn.stat().st_size > 0
    drawn.unlink()
    assert "arm_count" in make_all("smoke") and drawn.stat().st_size > 0

    assert {"mae_short", "arm_count"} <= set(targets())
    help_text = {
        name: sub.format_help()
        for name, sub in parser()._subparsers._group_actions[0].choices.items()
    }
    assert "arm_count" in help_text["study"] and "arm_count" in help_text["submit"]
    assert "mae_short" in help_text["transfer"] and "mae_short" in help_text["submit"]


def test_unknown_names_are_refused_with_the_registered_ones(capsys):
    assert main(["study", "nonsense", "--preset", "smoke"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "study 'nonsense' is unknown; allowed: ['explore', 'default'" in err[0]
    assert main(["transfer", "--arm", "bogus", "--preset", "smoke"]) == 2
    assert "arm 'bogus' is unknown" in capsys.readouterr().err
    assert main(["study", "--preset", "smoke", "--set", "studies.arms=[wsp, bogus]"]) == 2
    assert (
        "studies.arms: ['wsp', 'bogus'] is not allowed; must be a non-empty list of ['random'"
        in capsys.readouterr().err
    )


def test_every_study_notebook_runs_its_registered_target():
    by_stem = {path.stem: path.read_text() for path in notebooks()}
    for study in registry.STUDIES.values():
        if study.notebook:
            assert f'launch.run(\\"{study.name}\\"' in by_stem.pop(study.notebook), study.name
    runs = {stem: re.findall(r'launch\.run\(\\"(\w+)\\"', text) for stem, text in by_stem.items()}
    assert all(set(found) <= set(targets()) for found in runs.values()), runs
    assert all(found or "figures.draw(" in by_stem[stem] for stem, found in runs.items()), runs


def test_readme_tables_are_the_registry():
    readme = (REPO / "README.md").read_text()
    block = readme.split("<!-- registry: begin -->\n")[1].split("<!-- registry: end -->")[0]
    assert block == registry.markdown(), (
        "run `studylib registry --readme` after changing the registry"
    )


def test_one_name_per_concept():
    """Tables use the registry's names; labels (with arrows) are for people only."""
    assert all(
        re.fullmatch(r"[a-z_]+", name)
        for table in (registry.ARMS, registry.TASKS, registry.STUDIES, registry.STAGES)
        for name in table
    )
    assert set(registry.TASKS) <= set(registry.STAGES)  # a task's runs are its stage's
    for study in registry.STUDIES.values():
        assert set(study.figures) <= set(registry.FIGURES)
        assert all(registry.FIGURES[f].study == study.name for f in study.figures)


def test_architecture_names_every_module_and_only_modules_that_exist():
    import importlib
    import re

    text = (REPO / "ARCHITECTURE.md").read_text()
    table = "\n".join(line for line in text.splitlines() if line.startswith("|"))
    named = set(re.findall(r"`([\w/*]+\.py)`", table))
    modules = {
        p.name
        for p in (REPO / "studylib").glob("*.py")
        if p.name not in ("__init__.py", "__main__.py")
    }
    assert named - {"stages/*.py"} == modules, "ARCHITECTURE.md's table and studylib/ differ"
    for name in re.findall(r"`(\w+)\.(\w+)`", text):  # module.function references
        module, function = name
        if (REPO / "studylib" / f"{module}.py").exists() and function not in ("py", "md"):
            assert hasattr(importlib.import_module(f"studylib.{module}"), function), name


def test_a_taken_name_is_refused():
    arm = registry.ARMS["wsp"]
    with pytest.raises(ValueError, match="Arm 'wsp' is registered already"):
        registry.register(arm)
    assert registry.ARMS["wsp"] is arm


def test_no_function_of_studylib_is_over_a_screen():
    import ast

    long = []
    for path in sorted((REPO / "studylib").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
                and node.end_lineno - node.lineno >= 60
            ):
                long.append(
                    f"{path.relative_to(REPO)}:{node.lineno} {node.name} "
                    f"({node.end_lineno - node.lineno + 1} lines)"
                )
    assert not long, long


def test_the_equal_flop_arm_is_wsp_given_mae_wsp_s_training_flops(isolated_dirs):
    """wsp_flops trains WSP from scratch for wsp.epochs plus MAE's FLOPs in WSP epochs (whole
    epochs of fewer images): its FLOPs are MAE→WSP's to 2%, and the findings pair the two."""
    from studylib import arms

    sets = ["studies.arms=[mae_wsp, wsp_flops]", "model=pico", "wsp.batch_size=16"]
    exp = load_experiment("smoke", sets)
    extra = arms.mae_in_wsp_epochs(exp)
    assert extra > 1  # pico's MAE with smoke's decoder costs more than a WSP image
    (run,) = arms.wsp_at_equal_flops(exp, train=False)
    table = default_study(exp)
    flops = table[table.metric == "train_flops"].pivot_table(
        index="arm", columns="stage", values="value"
    )
    one_epoch = flops.loc["mae_wsp", "wsp"] / exp.wsp.epochs
    matched = one_epoch * (exp.wsp.epochs + extra)  # to half a batch an epoch: 16 of 512 images
    assert flops.loc["wsp_flops", "wsp"] == pytest.approx(matched, rel=0.02)
    assert flops.loc["wsp_flops", "pretraining"] == pytest.approx(
        flops.loc["mae_wsp", "pretraining"], rel=0.02
    )
    assert run.results()["epochs"] == exp.wsp.epochs + math.ceil(extra)  # whole epochs
    found = {c.key: c for c in comparisons(exp.results_key)}
    assert found["mae_wsp-wsp_flops/probe/synthetic"].n == 1
    assert found["mae_wsp-wsp_flops/probe/synthetic"].what.startswith(
        "MAE→WSP − WSP at MAE→WSP's FLOPs: linear probe"
    )


def test_a_toy_stage_needs_only_what_architecture_md_lists_for_a_stage(isolated_dirs, capsys):
    """A stage from test code alone, as ARCHITECTURE.md says to add one: its loss and head, trained
    by engine.train on the pool's batches (pool.open_pool), registered with the config sections that
    decide its result. Its run folder is named by those sections and the pool, trained once, reused
    after, and a change to its section names another run."""
    import torch
    from torch import nn

    from studylib.distributed import device_and_dtype
    from studylib.engine import train
    from studylib.models import vit
    from studylib.pool import open_pool
    from studylib.runs import Run, train_once

    def toy_loss(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(model(images).float(), labels)

    def toy(exp) -> Run:
        images = open_pool(exp)
        run = Run(exp, "toy", {"data": images.identity()})

        def make_results() -> dict:
            device, dtype = device_and_dtype(exp)
            batches = images.batches(exp.wsp, device)
            torch.manual_seed(exp.seed)
            model = vit(exp.model, num_classes=int(images.images.train_labels.max()) + 1)
            return train(run, model, toy_loss, batches, exp.wsp, device, dtype, exp.seed)

        return train_once(run, make_results)

    stage = registry.register(registry.Stage("toy", ("model", "wsp"), "a test's own stage"))
    try:
        exp = load_experiment("smoke", ["wsp.epochs=1"])
        run = toy(exp)
        assert run.name.startswith("toy-") and run.results()["epochs"] == 1
        assert run.identity["wsp"]["epochs"] == 1 and "mae" not in run.identity
        assert "images_seen" in run.results() and (run.path / "metrics.jsonl").exists()
        again = toy(exp)
        assert again.name == run.name and "reused" in capsys.readouterr().out
        other = toy(load_experiment("smoke", ["wsp.epochs=1", "wsp.base_lr=0.002"]))
        assert other.name != run.name
    finally:
        registry.unregister(stage)


def test_a_toy_data_source_needs_only_what_architecture_md_lists_for_one(isolated_dirs):
    """A dataset from test code alone, as ARCHITECTURE.md says to add one: its load and fingerprint,
    registered by name. The config then takes the name as the pool and as a probe, MAE trains on its
    images, the probe reads it, and its fingerprint names the runs: a new version of the data (a
    new fingerprint) names new runs."""
    import dataclasses

    from studylib.data import synthetic
    from studylib.stages import probe

    version = {"v": "1"}

    def toy_load(name, config):
        return dataclasses.replace(synthetic(96, 40, num_classes=4, seed=7), name=name)

    def toy_fingerprint(name, config):
        return f"toy-v{version['v']}"

    toy = registry.register(registry.Dataset("toy", toy_load, toy_fingerprint, "a test's data"))
    try:
        settings = ["data.pretrain=toy", "data.probe=[toy]", "mae.epochs=1", "mae.batch_size=32"]
        exp = load_experiment("smoke", settings)
        encoder = mae.pretrain(exp)
        assert encoder.identity["data"]["fingerprint"] == "toy-v1"
        assert encoder.results()["images_seen"] == 96  # one epoch of the toy's training images
        top1 = probe.probe(exp, encoder, "toy")
        assert top1.identity["data"]["fingerprint"] == "toy-v1"
        results = top1.results()
        assert results["dataset"] == "toy" and results["train_images"] == 96
        assert results["top1"] > 25  # above chance on the toy's 4 classes
        version["v"] = "2"
        assert mae.run_for(exp).name != encoder.name
    finally:
        registry.unregister(toy)
    with pytest.raises(Exception, match="data.pretrain.*toy"):
        load_experiment("smoke", ["data.pretrain=toy"])


def test_a_table_records_per_study_the_versions_its_runs_were_trained_with():
    """experiment.yaml beside the tables says, per study, which package versions trained the runs of
    its table (each run's meta.json, every attempt), so the committed results name theirs."""
    import yaml

    from studylib.paths import results_dir
    from studylib.runs import versions

    exp = load_experiment("smoke", ["mae.epochs=1"])
    run = mae.pretrain(exp)
    _table(exp, "default", [{"stage": "mae", "metric": "x", "value": 1.0, "run": run.name}])
    _table(exp, "other", [{"stage": "mae", "metric": "x", "value": 1.0}])
    record = yaml.safe_load((results_dir(exp.results_key) / "experiment.yaml").read_text())
    assert record["trained_with"] == {"default": [{**versions(), "attempts": 1}], "other": []}
