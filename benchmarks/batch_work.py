"""The useful work of a study batch per minute of its wall time, from its committed tables.

    STUDYLIB_DATA=../shared/data python benchmarks/batch_work.py --minutes 87.1 [--preset cpu]

Useful work: the training FLOPs of every MAE and WSP run (the tables' train_flops, each run once
however many studies share it) plus every linear probe's feature images (its dataset's training
images the probe keeps and its test images) at one forward pass of its model. Divided by the
batch's wall time (`--minutes`, from its log), for the whole machine.
"""

from __future__ import annotations

import argparse
import sys

import pandas as pd
import torch

from studylib.config import load_experiment
from studylib.data import load_dataset
from studylib.models import VIT_SIZES, count_flops, vit
from studylib.paths import results_dir
from studylib.stages.probe import kept_per_class

STUDIES = ("explore", "default", "model_size", "data_size", "wsp_epochs", "transfer")


def feature_images(exp, dataset: str) -> int:
    """The images a probe of `dataset` extracts features of: its kept training images and its test
    images."""
    data = load_dataset(dataset, exp.data)
    train = len(data.train_labels)
    if per_class := kept_per_class(exp, data.num_classes):
        train = len(data.per_class(per_class, exp.data.subset_seed))
    return train + len(data.test_labels)


def work(key: str, exp) -> dict[str, float]:
    """The batch's training FLOPs and probe forward FLOPs, each run counted once."""
    tables = [results_dir(key) / f"{study}.csv" for study in STUDIES]
    table = pd.concat([pd.read_csv(path) for path in tables if path.exists()])
    trained = table[table.stage.isin(["mae", "wsp"]) & (table.metric == "train_flops")]
    training = trained.drop_duplicates("run").value.sum()
    probes = table[(table.stage == "probe") & (table.metric == "top1")].drop_duplicates("run")
    forward = {}
    for size in probes.model.fillna(exp.model).unique():
        with torch.device("meta"):
            forward[size] = count_flops(vit(size), VIT_SIZES[size]["img_size"])
    images = {name: feature_images(exp, name) for name in probes.dataset.unique()}
    probing = sum(
        forward[row.model if isinstance(row.model, str) else exp.model] * images[row.dataset]
        for row in probes.itertuples()
    )
    return {"training_flops": training, "probe_flops": probing, "probes": len(probes)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--minutes", type=float, required=True, help="the batch's wall time")
    args = parser.parse_args()
    exp = load_experiment(args.preset)
    found = work(exp.results_key, exp)
    total = found["training_flops"] + found["probe_flops"]
    print(
        f"training {found['training_flops'] / 1e15:.2f} PFLOP, {found['probes']} probes "
        f"{found['probe_flops'] / 1e15:.2f} PFLOP, in {args.minutes:.1f} min: "
        f"{total / (args.minutes * 60) / 1e9:.1f} GFLOP/s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
