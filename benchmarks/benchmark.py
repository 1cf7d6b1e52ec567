"""Training-step speed against this device's own limit and a stock timm reference, in one run.

    python benchmarks/benchmark.py              # CPU: micro and tiny, fp32 and bf16, cpu preset
    python benchmarks/benchmark.py --preset paper --models B/16 --batch 256 --precisions bf16 \
        --compile

Measures the matmul peak (fp32 and bf16); for each model size the MAE step and the WSP step in
images per second and as model-FLOPs utilisation (MFU: 3x forward FLOPs per image, counted by torch,
over the measured peak of the same dtype); a stock timm `VisionTransformer` classification step at
the same size, batch and dtype as the reference; and the augmented data pipeline. Prints a table and
writes JSON (--out).

Every step is the engine's own `train_step` (fused AdamW, the preset's gradient clipping, autocast)
on the model the stage builds under --preset (the MAE with that preset's decoder), so the figures
are those of training; the stock reference differs only in its model (stock timm attention) and
loss.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer

from studylib.batches import Batches, ImageTransform
from studylib.config import load_experiment
from studylib.data import synthetic
from studylib.distributed import native_bf16, resolve_device
from studylib.engine import optimizer_for, train_step
from studylib.experiment import Experiment
from studylib.io import git_sha
from studylib.models import VIT_SIZES, choose_attention, count_flops, vit
from studylib.schema import TrainConfig
from studylib.stages import mae
from studylib.stages.wsp import wsp_loss

VOCAB = 680  # the cpu preset's hashtag vocabulary


def timed(
    step: Callable[[], None], device: torch.device, min_seconds: float, warmup: int = 2
) -> float:
    """Seconds per call of `step`, after warm-up, averaged over at least `min_seconds`."""
    for _ in range(warmup):
        step()
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    start, calls = time.perf_counter(), 0
    while time.perf_counter() - start < min_seconds or calls < 3:
        step()
        calls += 1
    sync()
    return (time.perf_counter() - start) / calls


def best_times(
    steps: dict[str, Callable[[], None]], device: torch.device, rounds: int, min_seconds: float
) -> dict[str, float]:
    """Seconds per call of each step: the best of `rounds` timings, the steps taking turns, so that
    a busy spell of the machine (on this shared 2-core VM single timings vary by 20%) hits none
    unfairly."""
    best = {name: timed(step, device, min_seconds) for name, step in steps.items()}
    for _ in range(rounds - 1):
        for name, step in steps.items():
            best[name] = min(best[name], timed(step, device, min_seconds, warmup=0))
    return best


MATMUL_SIZE = {"cuda": 8192, "cpu": 2048}  # large enough to reach each device's peak


def matmul(device: torch.device, dtype: torch.dtype, n: int) -> Callable[[], None]:
    a, b = (
        torch.randn(n, n, device=device, dtype=dtype),
        torch.randn(n, n, device=device, dtype=dtype),
    )
    return lambda: a @ b


def stage_step(
    model: torch.nn.Module,
    loss_fn: Callable,
    images: torch.Tensor,
    targets: torch.Tensor,
    config: TrainConfig,
    dtype: torch.dtype | None,
    stock: bool = False,
) -> Callable[[], None]:
    """The engine's training step of `model` as its stage trains it (a stock model keeps its
    attention)."""
    model.to(images.device).train()
    if not stock:
        choose_attention(model, images.device)
    optimizer = optimizer_for(model, config)
    forward = torch.compile(model) if config.compile else model
    return lambda: train_step(forward, loss_fn, images, targets, optimizer, config, dtype)


def stock_timm(name: str) -> VisionTransformer:
    return VisionTransformer(**VIT_SIZES[name], num_classes=VOCAB)


def stock_loss(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(model(images), labels)


STEPS = {"wsp": wsp_loss, "timm-stock": stock_loss, "mae": mae.mae_loss}


def build_model(step_name: str, exp: Experiment) -> torch.nn.Module:
    if step_name == "wsp":
        return vit(exp.model, num_classes=VOCAB)
    return stock_timm(exp.model) if step_name == "timm-stock" else mae.build(exp)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--preset", default="cpu", help="whose MAE decoder and optimiser settings to use"
    )
    parser.add_argument("--models", nargs="+", default=["micro", "tiny"], choices=list(VIT_SIZES))
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument(
        "--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"]
    )
    parser.add_argument("--device", default="auto")
    parser.add_argument("--compile", action="store_true", help="torch.compile the models")
    parser.add_argument("--seconds", type=float, default=2.0, help="timing window per measurement")
    parser.add_argument(
        "--rounds", type=int, default=3, help="timings per measurement; the best one counts"
    )
    parser.add_argument(
        "--matmul-size",
        type=int,
        default=None,
        help=f"side of the square matmul that measures the peak (default: {MATMUL_SIZE})",
    )
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    args = parser.parse_args()
    device = resolve_device(args.device)
    exp = load_experiment(args.preset)
    dtypes = {"fp32": None, "bf16": torch.bfloat16}
    side = args.matmul_size or MATMUL_SIZE[device.type]
    matmuls = {p: matmul(device, dtypes[p] or torch.float32, side) for p in args.precisions}
    matmul_seconds = best_times(matmuls, device, args.rounds, args.seconds)
    peaks = {p: 2 * side**3 / seconds for p, seconds in matmul_seconds.items()}
    name = torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or "cpu"
    print(
        f"device: {name} ({device}), torch {torch.__version__}, threads {torch.get_num_threads()}"
    )
    for p, peak in peaks.items():
        print(f"matmul peak {p}: {peak / 1e9:,.0f} GFLOP/s")
    if "bf16" in peaks and device.type == "cpu" and not native_bf16():
        print(
            "note: this CPU has neither AMX nor avx512_bf16; torch emulates bf16, so its bf16 "
            "'peak' and MFU are not comparable with fp32's"
        )

    rows = []
    header = f"{'model':6s} {'step':10s} {'dtype':5s} {'batch':>5s} {'img/s':>9s} {'MFU':>6s}"
    print(header + "\n" + "-" * len(header))
    for model_name in args.models:
        size = VIT_SIZES[model_name]["img_size"]
        images = torch.randn(args.batch, 3, size, size, device=device)
        tags = torch.randint(0, VOCAB, (args.batch, 4), device=device)
        labels = tags[:, 0]
        sized = dataclasses.replace(exp, model=model_name)
        wsp_config = dataclasses.replace(exp.wsp, compile=args.compile)
        mae_config = dataclasses.replace(exp.mae, compile=args.compile)
        encoder_flops = count_flops(vit(model_name), size)
        mae_flops = count_flops(mae.build(sized), size)
        for precision in args.precisions:
            steps = {
                step: stage_step(
                    build_model(step, sized),
                    loss_fn,
                    images,
                    tags if step == "wsp" else labels,
                    mae_config if step == "mae" else wsp_config,
                    dtypes[precision],
                    stock=step == "timm-stock",
                )
                for step, loss_fn in STEPS.items()
            }
            for step_name, seconds in best_times(steps, device, args.rounds, args.seconds).items():
                flops = mae_flops if step_name == "mae" else encoder_flops
                mfu = 3 * flops * args.batch / seconds / peaks[precision]
                rows.append(
                    {
                        "model": model_name,
                        "step": step_name,
                        "precision": precision,
                        "batch": args.batch,
                        "images_per_s": args.batch / seconds,
                        "mfu": mfu,
                        "compile": args.compile,
                    }
                )
                print(
                    f"{model_name:6s} {step_name:10s} {precision:5s} {args.batch:5d} "
                    f"{args.batch / seconds:9.0f} {mfu:6.1%}",
                    flush=True,
                )
            del steps

    data = synthetic(4096, 16)
    batches = Batches(data.train_images, data.train_labels, 256, device, ImageTransform(32, 0.35))
    seconds = best_times(
        {"data": lambda: [None for _ in batches]}, device, args.rounds, args.seconds
    )["data"]
    pipeline = len(batches) * 256 / seconds
    fastest = max(r["images_per_s"] for r in rows)
    print(
        f"data pipeline (crop + flip + normalise, 32 px): {pipeline:,.0f} img/s = "
        f"{pipeline / fastest:.0f}x the fastest step"
    )
    if args.out:
        with open(args.out, "w") as f:
            json.dump(
                {
                    "device": name,
                    "torch": torch.__version__,
                    "commit": git_sha(),
                    "preset": args.preset,
                    "peaks": peaks,
                    "native_bf16": device.type == "cuda" or native_bf16(),
                    "rows": rows,
                    "data_pipeline_images_per_s": pipeline,
                    "date": time.strftime("%Y-%m-%d"),
                },
                f,
                indent=2,
            )


if __name__ == "__main__":
    main()
