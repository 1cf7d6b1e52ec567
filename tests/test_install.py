"""studylib as a package: a wheel built from the clone installs into a fresh virtual environment and
runs a study from another folder, with the presets packaged inside it."""

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parent.parent
TINY = ["model=nano", "data.synthetic_train=128", "data.synthetic_test=64", "mae.epochs=1"]


def test_a_wheel_installs_in_a_fresh_venv_and_runs_a_study_from_another_folder(tmp_path):
    source, wheels = tmp_path / "source", tmp_path / "wheels"
    ignore = shutil.ignore_patterns("__pycache__")
    shutil.copytree(REPO / "studylib", source / "studylib", symlinks=True, ignore=ignore)
    for name in ("pyproject.toml", "README.md", "LICENSE", "experiments.yaml"):
        shutil.copy2(REPO / name, source / name)  # the build writes build/ here, not in the clone
    pip = [sys.executable, "-m", "pip", "-q", "--disable-pip-version-check"]
    # no index here: built with this venv's setuptools, its dependencies taken from this venv
    subprocess.run(
        [*pip, "wheel", str(source), "--no-deps", "--no-build-isolation", "-w", str(wheels)],
        check=True,
        capture_output=True,
    )
    (wheel,) = wheels.glob("studylib-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = Path(
        subprocess.check_output(
            [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], text=True
        ).strip()
    )
    # torch, timm and the rest from this venv, after the wheel's own studylib (a path a .pth adds
    # runs no .pth of its own: this venv's editable studylib stays out)
    (site / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([*pip, "--python", str(python), "install", "--no-deps", str(wheel)], check=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STUDYLIB_", "PYTHON"))}
    where = subprocess.check_output(
        [python, "-c", "import studylib.paths as c; print(c.PACKAGE, c.DEFAULT_CONFIG_FILE)"],
        cwd=elsewhere,
        env=env,
        text=True,
    ).split()
    assert where[0].startswith(str(site)) and Path(where[1]).is_file()  # the installed copy
    sets = [part for text in TINY for part in ("--set", text)]
    done = subprocess.run(
        [venv / "bin" / "studylib", "study", "--preset", "smoke", *sets],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    (table,) = (elsewhere / "results").glob("smoke+*/default.csv")
    probes = pd.read_csv(table).query("stage == 'probe' and metric == 'top1'")
    assert set(probes.arm) == {"random", "mae", "wsp", "mae_wsp", "wsp_flops"}
    assert (elsewhere / "runs" / "smoke").is_dir()
    assert not (REPO / "results" / table.parent.name).exists()  # nothing written into the clone


def test_the_lock_file_pins_the_versions_the_committed_cpu_results_were_trained_with():
    """requirements.lock (`make lock`) is the environment behind results/cpu: its pins of the
    packages a run records equal those every study's runs were trained with."""
    import yaml

    record = yaml.safe_load((REPO / "results" / "cpu" / "experiment.yaml").read_text())
    recorded = [found for study in record["trained_with"].values() for found in study]
    assert len(record["trained_with"]) == 6 and recorded  # every study of the batch
    lock = (REPO / "requirements.lock").read_text()
    pins = dict(line.split("==", 1) for line in lock.splitlines() if "==" in line)
    for found in recorded:
        assert {k: pins[k] for k in ("torch", "torchvision", "timm", "numpy")} == {
            k: found[k] for k in ("torch", "torchvision", "timm", "numpy")
        }
        assert f"(Python {found['python']})" in lock.splitlines()[0]
