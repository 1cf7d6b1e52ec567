"""The `cpu` preset's own work, stage by stage, against two limits measured in the same run.

    python benchmarks/stages.py --old --out benchmarks/results/stages_COMMIT.json [--compile]

Each stage of one seed (the MAE step, the WSP step, probe features, the probe's fit, the fine-tuning
step) is timed as the preset runs it, for the whole machine in two layouts: one process with every
thread, and one process per core with one thread each (launch.seed_workers), whose rates add up.
Its GFLOP/s are set against the matmul peak (one large square matmul a process, the same layouts)
and the shape-limited peak: the matmul rate at the model's own shapes, every Linear's forward and
backward GEMMs at the batch the stage runs, measured the same way. `--old` also times probe features
with torch's fused attention, the path they took before; `--compile` torch.compiles every model
(inductor's caches on disk, so a second process compiles from them). LiT and the other transfer
tasks are timed end to end in the batch's transfer table, not here.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing
import os
import platform
import time
from collections.abc import Callable

import torch
from benchmark import best_times, matmul, stage_step
from torch import nn

from studylib import features
from studylib.config import load_experiment
from studylib.distributed import device_and_dtype
from studylib.evaluation import fit_head
from studylib.experiment import Experiment
from studylib.features import extract_features
from studylib.io import git_sha
from studylib.models import count_flops, vit
from studylib.stages import mae
from studylib.stages.wsp import wsp_loss

VOCAB, CLASSES = 680, 100  # the cpu preset's hashtag vocabulary; CIFAR-100's classes


def linear_shapes(model: nn.Module, step: Callable[[], None]) -> list[tuple[int, int, int]]:
    """(rows, in, out) of every Linear call during one call of `step`."""
    shapes, hooks = [], []
    for module in model.modules():
        if isinstance(module, nn.Linear):
            record = lambda m, inputs, _out: shapes.append(  # noqa: E731
                (inputs[0].numel() // m.in_features, m.in_features, m.out_features)
            )
            hooks.append(module.register_forward_hook(record))
    step()
    for hook in hooks:
        hook.remove()
    return shapes


def shaped_gemms(shapes: list[tuple[int, int, int]], dtype: torch.dtype, backward: bool):
    """A call that runs the GEMMs of `shapes` (forward; with `backward`, also the two of the
    backward pass), and their FLOPs."""
    cases = []
    for m, k, n in shapes:
        cases.append((torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)))
        if backward:  # grad of the input (m x n @ n x k) and of the weight (n x m @ m x k)
            cases.append((torch.randn(m, n, dtype=dtype), torch.randn(n, k, dtype=dtype)))
            cases.append((torch.randn(n, m, dtype=dtype), torch.randn(m, k, dtype=dtype)))
    flops = sum(2 * a.shape[0] * a.shape[1] * b.shape[1] for a, b in cases)
    return (lambda: [a @ b for a, b in cases]), flops


def configs(exp: Experiment) -> dict:
    return {"mae": exp.mae, "wsp": exp.wsp, "finetune": exp.transfer.finetune}


def stages(
    exp: Experiment, batch: int, images: int, compiled: bool
) -> dict[str, tuple[Callable[[], None], float, nn.Module]]:
    """Each stage's timed call, the images one call handles, and its model; probe features and fit
    on `images` images; torch.compile'd models where `compiled`."""
    device, dtype = device_and_dtype(exp)
    uint8 = torch.randint(0, 256, (images, 3, 32, 32), dtype=torch.uint8)
    fit_labels = torch.arange(images) % CLASSES
    images = torch.randn(batch, 3, 32, 32)
    tags = torch.randint(0, VOCAB, (batch, 4))
    labels = tags[:, 0] % CLASSES
    found: dict = {}
    mae_model = mae.build(exp)
    config = {name: dataclasses.replace(c, compile=compiled) for name, c in configs(exp).items()}
    found["mae"] = (
        stage_step(mae_model, mae.mae_loss, images, labels, config["mae"], dtype),
        batch,
    )
    wsp_model = vit(exp.model, num_classes=VOCAB)
    found["wsp"] = (stage_step(wsp_model, wsp_loss, images, tags, config["wsp"], dtype), batch)
    classifier = vit(exp.model, num_classes=CLASSES)
    finetune = config["finetune"]

    def ce(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(model(x).float(), y)

    found["finetune"] = (stage_step(classifier, ce, images, labels, finetune, dtype), batch)
    encoder = vit(exp.model).requires_grad_(False)
    features_of = torch.compile(encoder) if compiled else encoder
    found["probe_features"] = (
        lambda: extract_features(features_of, uint8, device, dtype),
        len(uint8),
    )
    # features of CIFAR-100's 100 classes, each class about its own centre
    centres = torch.randn(CLASSES, encoder.embed_dim)
    features = torch.randn(len(uint8), encoder.embed_dim) + centres[fit_labels]
    fit = (lambda: fit_head(features, fit_labels, CLASSES, exp.probe, 0), len(fit_labels))
    found["probe_fit"] = fit
    models = {"mae": mae_model, "wsp": wsp_model, "finetune": classifier}
    models.update(probe_features=encoder, probe_fit=None)
    return {name: (*found[name], models[name]) for name in found}


def measure(threads: int, args: argparse.Namespace, start: multiprocessing.Barrier | None) -> dict:
    """Every figure of one process at `threads` threads: images/s per stage, GFLOP/s of the peak
    matmul and of each stage's shaped GEMMs. With `start`, waits for its peers before each timing,
    so processes run each measurement together."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    exp = load_experiment(args.preset)
    _, dtype = device_and_dtype(exp)
    dtype = dtype or torch.float32
    device = torch.device("cpu")
    timed = {"matmul_peak": matmul(device, dtype, args.matmul_size)}
    flops = {"matmul_peak": 2 * args.matmul_size**3}
    per_call = {}
    for name, (call, images, model) in stages(exp, args.batch, args.images, args.compile).items():
        timed[name], per_call[name] = call, images
        if model is not None:
            shapes = linear_shapes(model, call)
            gemms, flops[f"{name}_shapes"] = shaped_gemms(shapes, dtype, name != "probe_features")
            timed[f"{name}_shapes"] = gemms
    if args.old:  # the attention probe features took before: torch's fused kernel
        uint8 = torch.randint(0, 256, (args.images, 3, 32, 32), dtype=torch.uint8)
        timed["probe_features_fused"] = lambda: fused_features(exp, uint8, dtype)
        per_call["probe_features_fused"] = args.images
    seconds = {}
    for name, call in timed.items():
        if start is not None:
            start.wait()
        seconds.update(best_times({name: call}, device, args.rounds, args.seconds))
    rates = {f"{k}_gflops": flops[k] / s / 1e9 for k, s in seconds.items() if k in flops}
    rates |= {f"{k}_images_per_s": per_call[k] / s for k, s in seconds.items() if k in per_call}
    return rates


def fused_features(exp: Experiment, uint8: torch.Tensor, dtype: torch.dtype) -> None:
    """`extract_features` as it ran before: torch's fused attention on the CPU too."""
    real = features.choose_attention
    features.choose_attention = lambda model, _device: real(model, torch.device("cuda"))
    try:
        encoder = vit(exp.model).requires_grad_(False)
        extract_features(encoder, uint8, torch.device("cpu"), dtype)
    finally:
        features.choose_attention = real


def _worker(threads: int, args: argparse.Namespace, start, queue) -> None:
    queue.put(measure(threads, args, start))


def together(processes: int, args: argparse.Namespace) -> dict:
    """`measure` in `processes` spawned processes of one thread, run side by side; rates summed."""
    context = multiprocessing.get_context("spawn")
    start, queue = context.Barrier(processes), context.Queue()
    workers = [
        context.Process(target=_worker, args=(1, args, start, queue)) for _ in range(processes)
    ]
    for worker in workers:
        worker.start()
    results = [queue.get() for _ in workers]
    for worker in workers:
        worker.join()
    return {k: sum(r[k] for r in results) for k in results[0]}


def model_flops(exp: Experiment) -> dict[str, float]:
    """FLOPs an image: 3x the forward for each trained stage, the forward for features."""
    encoder = count_flops(vit(exp.model), 32)
    return {
        "mae": 3 * count_flops(mae.build(exp), 32),
        "wsp": 3 * encoder,
        "finetune": 3 * encoder,
        "probe_features": encoder,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--matmul-size", type=int, default=1024)
    parser.add_argument("--images", type=int, default=4096, help="probe features and fit")
    parser.add_argument("--old", action="store_true", help="also the fused-attention features")
    parser.add_argument("--compile", action="store_true", help="torch.compile every model")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    cores = len(os.sched_getaffinity(0))
    exp = load_experiment(args.preset)
    layouts = {f"1x{cores}": measure(cores, args, None), f"{cores}x1": together(cores, args)}
    per_image = model_flops(exp)
    print(f"{platform.processor() or 'cpu'}, {cores} cores, torch {torch.__version__}")
    print(f"{'stage':22s} " + " ".join(f"{k + ' img/s':>12s} {'GFLOP/s':>8s}" for k in layouts))
    names = [k.removesuffix("_images_per_s") for k in layouts[f"1x{cores}"] if "images" in k]
    for name in names:
        cells = []
        for rates in layouts.values():
            speed = rates[f"{name}_images_per_s"]
            work = per_image.get(name.removesuffix("_fused"), 0) * speed / 1e9
            cells.append(f"{speed:12,.0f} {work:8.0f}")
        print(f"{name:22s} " + " ".join(cells))
    for key in [k for k in layouts[f"1x{cores}"] if k.endswith("_gflops")]:
        print(f"{key:22s} " + " ".join(f"{r[key]:21,.0f}" for r in layouts.values()))
    if args.out:
        record = {
            "cpu": platform.processor(),
            "cores": cores,
            "torch": torch.__version__,
            "commit": git_sha(),
            "preset": args.preset,
            "compile": args.compile,
            "precision": str(device_and_dtype(exp)[1]),
            "train_flops_per_image": per_image,
            "layouts": layouts,
            "date": time.strftime("%Y-%m-%d"),
        }
        with open(args.out, "w") as f:
            json.dump(record, f, indent=2)


if __name__ == "__main__":
    main()
