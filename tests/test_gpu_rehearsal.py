"""The prepared GPU scripts, rehearsed on the CPU at toy size, so that a removed key, a batch larger
than its images or a broken study fails here and not on a GPU machine. `benchmarks/gpu_studies.sh`
runs every study of the `gpu` preset (every model size, WSP schedule point, data point and analysis
key) on a tiny CIFAR pair packed as the script expects, with `--set` overrides that shrink only
images, batches, epochs and seeds; `GPU_CHECK_DEVICE=cpu benchmarks/gpu_check.sh` runs every
section."""

import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from studylib.config import load_experiment

pytestmark = pytest.mark.rehearsal  # `make rehearse`: outside `make test`'s 30 minutes

REPO = Path(__file__).resolve().parent.parent
TOY = [
    "device=cpu",
    "precision=fp32",
    "data.pretrain_fraction=0.2",
    "probe.train_images=0",
    "mae.epochs=1",
    "mae.batch_size=8",
    "wsp.epochs=1",
    "wsp.batch_size=8",
    "studies.seeds=[3]",
    "studies.seed_counts=[transfer:1]",
    "transfer.finetune.epochs=1",
    "transfer.finetune.batch_size=8",
    "transfer.finetune.min_steps=0",
    "transfer.zeroshot.epochs=1",
    "transfer.zeroshot.batch_size=8",
    "transfer.robustness.test_images=10",
    "transfer.lowshot.shots=[1]",
    "launch.gpus_per_node=0",
    "launch.seed_workers=1",
]


def toy_cifar(data: Path) -> None:
    """cifar100.npz with 10 classes of 20 training images (2 superclasses; the pool takes 0.2 of
    them) and a cifar10/ folder of JPEGs in 2 classes: the layouts the packer reads, small."""
    rng = np.random.default_rng(0)
    data.mkdir(parents=True)
    np.savez(
        data / "cifar100.npz",
        x_train=rng.integers(0, 256, (200, 32, 32, 3), dtype=np.uint8),
        y_train=np.arange(200) % 10,
        x_test=rng.integers(0, 256, (20, 32, 32, 3), dtype=np.uint8),
        y_test=np.arange(20) % 10,
        classes=np.array([f"class{k}" for k in range(10)]),
        coarse_classes=np.array(["even", "odd"]),
        fine_to_coarse=np.arange(10) % 2,
    )
    for split, count in (("train", 8), ("test", 5)):
        for name in ("cat", "ship"):
            folder = data / "cifar10" / split / name
            folder.mkdir(parents=True)
            for k in range(count):
                pixels = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{k}.jpg")


def script(name: str, *args: str, env: dict) -> str:
    done = subprocess.run(
        ["bash", str(REPO / "benchmarks" / name), *args],
        cwd=REPO,
        env={**os.environ, "PYTHON": sys.executable, **env},
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    return done.stdout


def test_gpu_studies_runs_every_study_of_the_gpu_preset_at_toy_size(tmp_path):
    toy_cifar(tmp_path / "cifar")
    packed = tmp_path / "packed"
    for dataset, folder in (("cifar10", "gpu10"), ("cifar100", "gpu100")):
        subprocess.run(
            [sys.executable, REPO / "benchmarks" / "gpu_data.py", "pack", dataset, packed / folder],
            env={**os.environ, "STUDYLIB_DATA": str(tmp_path / "cifar")},
            check=True,
        )
    places = {f"STUDYLIB_{n.upper()}": str(tmp_path / n) for n in ("results", "figures", "cache")}
    env = {
        "PACKED": str(packed),
        "ARCHIVE_DIR": str(tmp_path),
        "GPU_STUDIES_SETS": " ".join(f"--set {text}" for text in TOY),
        **places,
    }
    script("gpu_studies.sh", "unpack", env=env)
    out = script("gpu_studies.sh", "3600", env=env)
    for study in ("default", "wsp_epochs", "transfer", "model_size", "explore", "data_size"):
        assert f"== {study}: exit 0," in out
    key = load_experiment("gpu", TOY).results_key  # gpu+<hash of the overrides>
    found = pd.read_csv(tmp_path / "results" / key / "findings.csv")
    plan = load_experiment("gpu").analysis
    primaries = {getattr(plan, claim).primary for claim in "abcd"}
    assert primaries | {"tiny/cifar10", "small/cifar10"} <= set(found.key)  # every claim computed
    assert set(found[found.key.isin(primaries)].n) == {1}  # one seed: the keys, not the verdicts
    drawn = {p.stem for p in (tmp_path / "figures" / key).glob("*.png")}
    assert {"verdicts", "convergence", "model_size", "data_size", "transfer"} <= drawn
    with tarfile.open(tmp_path / "gpu.tgz") as archive:
        names = archive.getnames()
    assert f"results/{key}/findings.csv" in names and f"figures/{key}/verdicts.png" in names


def test_gpu_check_runs_every_section_on_the_cpu_at_toy_size(tmp_path):
    places = {f"STUDYLIB_{n.upper()}": str(tmp_path / n) for n in ("runs", "results", "figures")}
    out = script("gpu_check.sh", env={"GPU_CHECK_DEVICE": "cpu", **places})
    for study in ("explore", "default", "model_size", "data_size", "wsp_epochs", "transfer"):
        assert f"== {study} study, smoke preset, on cpu" in out
    for header in ("== default study, gpu preset", "== transfer suite", "== training-step speed"):
        assert header in out
    assert out.count('"images_per_s"') >= 4  # MAE and WSP, in memory and streamed from shards
