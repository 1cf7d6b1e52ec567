"""The `gpu` preset's whole notebook batch, rehearsed on the CPU at toy size: every study, model
size, WSP schedule point, data point and analysis key of the preset, on a tiny CIFAR pair the test
writes, with `--set` overrides that shrink only images, batches, epochs and seeds. No GPU has been
lent to run the preset itself, so a broken key or study shows here first."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from studylib.notebooks import run_notebooks

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

TOY = [
    "device=cpu",
    "precision=fp32",
    "data.probe=[cifar10,cifar100]",
    "data.pretrain_fraction=0.2",
    "probe.train_images=0",
    "mae.epochs=2",
    "mae.batch_size=8",
    "wsp.epochs=2",
    "wsp.batch_size=8",
    "studies.seeds=[3,4]",
    "studies.wsp_epochs=[2,5,10,20]",
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


def _toy_cifar(data: Path) -> None:
    """cifar100.npz with 10 classes of 20 training images (2 superclasses; the pool takes 0.2 of
    them) and a cifar10/ image folder of 2 classes: what the loaders read, small."""
    rng = np.random.default_rng(0)
    data.mkdir()
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
                Image.fromarray(pixels).save(folder / f"{k}.png")


def test_the_gpu_preset_s_whole_batch_runs_on_the_cpu_at_toy_size(tmp_path, monkeypatch):
    _toy_cifar(tmp_path / "data")
    for name in ("DATA", "RUNS", "RESULTS", "FIGURES", "CACHE", "OUTPUT"):
        monkeypatch.setenv(f"STUDYLIB_{name}", str(tmp_path / name.lower()))
    executed = run_notebooks("gpu", overrides=TOY)
    assert len(executed) == 8
    key = next((tmp_path / "results").iterdir()).name  # gpu+<hash of the overrides>
    found = pd.read_csv(tmp_path / "results" / key / "findings.csv")
    plan_keys = {"probe/cifar10", "mae_wsp-wsp_flops/epochs5/cifar10", "micro/cifar10"}
    plan_keys |= {"tiny/cifar10", "small/cifar10", "mae/cifar10"}
    assert plan_keys <= set(found.key)  # every primary of the gpu plan was computed
    assert set(found[found.key.isin(plan_keys)].n) == {2}
    drawn = {p.stem for p in (tmp_path / "figures" / key).glob("*.png")}
    assert {"verdicts", "convergence", "model_size", "data_size", "transfer"} <= drawn
