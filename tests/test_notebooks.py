"""The study notebooks in batch (papermill, real kernel, submitit local jobs) on smoke.

This test shares the session's run folders with the nbval run of the same notebooks (conftest), so
whichever comes second reuses the first one's finished runs."""

import json
from pathlib import Path

import nbformat
import pytest

from studylib.errors import ConfigError
from studylib.notebooks import notebooks, run_notebooks, select
from studylib.plotting import FORMATS
from studylib.registry import FIGURES

REPO = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture
def session_dirs(monkeypatch: pytest.MonkeyPatch) -> Path:
    from conftest import SESSION

    for name in ("RUNS", "RESULTS", "FIGURES"):
        monkeypatch.setenv(f"STUDYLIB_{name}", str(SESSION / name.lower()))
    return SESSION


def test_every_notebook_has_a_parameters_cell_and_stays_small():
    assert len(notebooks()) == 8
    for path in notebooks():
        book = nbformat.read(path, as_version=4)
        tagged = [c for c in book.cells if "parameters" in c.metadata.get("tags", [])]
        assert len(tagged) == 1 and 'preset = "smoke"' in tagged[0].source, path
        assert path.stat().st_size < 20_000, f"{path}: commit notebooks without bulky outputs"
        assert all(
            o.get("output_type") != "display_data" for c in book.cells for o in c.get("outputs", [])
        )


def test_all_studies_in_batch_make_every_figure_then_rerun_trains_nothing(session_dirs, tmp_path):
    executed = run_notebooks("smoke", output=tmp_path / "executed")
    assert [p.name for p in executed] == [p.name for p in notebooks()]
    figures = session_dirs / "figures" / "smoke"
    for name in FIGURES:
        for suffix in (*FORMATS, "json"):
            assert (figures / f"{name}.{suffix}").stat().st_size > 0, f"{name}.{suffix} missing"
        provenance = json.loads((figures / f"{name}.json").read_text())
        assert provenance["preset"] == "smoke" and provenance["git_sha"] and provenance["runs"]
    finished = {
        p: p.stat().st_mtime_ns for p in (session_dirs / "runs" / "smoke").glob("*/results.json")
    }
    run_notebooks("smoke", only=["wsp", "transfer"], output=tmp_path / "again")
    assert {
        p: p.stat().st_mtime_ns for p in (session_dirs / "runs" / "smoke").glob("*/results.json")
    } == finished


def test_unknown_notebook_names_the_allowed_ones():
    with pytest.raises(ConfigError, match="allowed: .*model_size"):
        select(["modelsize"])
    assert [p.stem for p in select(["explore", "08_figures"])] == ["01_explore", "08_figures"]


def test_relative_paths_reach_the_kernels_and_a_failed_notebook_is_one_line(tmp_path):
    """`studylib notebooks` typed in a folder with relative STUDYLIB_* paths: the kernel (which runs
    in notebooks/) writes where the user meant, and a studylib error in a cell reaches the terminal
    as its line."""
    import os
    import subprocess
    import sys

    env = {
        **os.environ,
        "STUDYLIB_RESULTS": "rel/results",
        "STUDYLIB_RUNS": "rel/runs",
        "STUDYLIB_FIGURES": "rel/figures",
        "STUDYLIB_OUTPUT": "rel/out",
        "STUDYLIB_DATA": "missing",
    }
    # the default study's pool is synthetic (it is submitted), its probe set is read from
    # STUDYLIB_DATA, which is missing: the notebook's job fails
    command = [
        sys.executable,
        "-m",
        "studylib",
        "notebooks",
        "--preset",
        "smoke",
        "--only",
        "wsp",
        "--set",
        "data.probe=[cifar10]",
    ]
    failed = subprocess.run(
        command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    last = failed.stderr.strip().splitlines()[-1]
    assert failed.returncode == 2, failed.stderr[-2000:]
    assert "without encryption" not in failed.stderr  # the kernel talks over local sockets, not TCP
    assert last.startswith("studylib: notebook failed: 03_wsp.ipynb, cell [")
    # the kernel, running in notebooks/, looked where the user typed the command; the copy
    # went there too
    assert f"STUDYLIB_DATA={tmp_path / 'missing'}: data directory does not exist" in last
    assert (tmp_path / "rel" / "out" / "notebooks" / "smoke" / "03_wsp.ipynb").exists()
    assert (tmp_path / "rel" / "runs" / "smoke" / "jobs").is_dir() and not (
        REPO / "notebooks" / "rel"
    ).exists()
