"""Training-step speed against this device's own limit and a stock timm reference, in one run.

    python benchmarks/benchmark.py                      # CPU: micro and tiny, fp32 and bf16
    python benchmarks/benchmark.py --models B/16 --batch 128 --precisions bf16 --compile

Measures the matmul peak (fp32 and bf16); for each model size the MAE step and the WSP step in
images per second and as model-FLOPs utilisation (MFU: 3x forward FLOPs per image, counted by torch,
over the measured peak of the same dtype); a stock timm `VisionTransformer` classification step at
the same size, batch and dtype as the reference; and the augmented data pipeline. Prints a table and
writes JSON (--out).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer

from studylib.data import Batches, ImageTransform, synthetic
from studylib.engine import resolve_device
from studylib.models import MAE, VIT_SIZES, count_flops, vit
from studylib.stages.mae import mae_loss
from studylib.stages.wsp import wsp_loss

VOCAB = 680  # the cpu preset's hashtag vocabulary


def timed(step: Callable[[], None], device: torch.device, min_seconds: float, warmup: int = 2) -> float:
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


def matmul_peak(device: torch.device, dtype: torch.dtype, min_seconds: float) -> float:
    n = 8192 if device.type == "cuda" else 2048
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    return 2 * n**3 / timed(lambda: a @ b, device, min_seconds)


def train_step(model: torch.nn.Module, loss_of: Callable, images: torch.Tensor, targets: torch.Tensor,
               dtype: torch.dtype | None, compile_model: bool) -> Callable[[], None]:
    model.to(images.device).train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, fused=None)
    forward = torch.compile(model) if compile_model else model

    def step() -> None:
        with torch.autocast(images.device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = loss_of(forward, images, targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def stock_timm(name: str) -> VisionTransformer:
    return VisionTransformer(**VIT_SIZES[name], num_classes=VOCAB)


def stock_loss(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(model(images), labels)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=["micro", "tiny"], choices=list(VIT_SIZES))
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--compile", action="store_true", help="torch.compile the models")
    parser.add_argument("--seconds", type=float, default=4.0, help="timing window per measurement")
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    args = parser.parse_args()
    device = resolve_device(args.device)
    dtypes = {"fp32": None, "bf16": torch.bfloat16}
    peaks = {p: matmul_peak(device, dtypes[p] or torch.float32, args.seconds) for p in args.precisions}
    name = torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or "cpu"
    print(f"device: {name} ({device}), torch {torch.__version__}, threads {torch.get_num_threads()}")
    for p, peak in peaks.items():
        print(f"matmul peak {p}: {peak / 1e9:,.0f} GFLOP/s")

    rows = []
    header = f"{'model':6s} {'step':10s} {'dtype':5s} {'batch':>5s} {'img/s':>9s} {'MFU':>6s}"
    print(header + "\n" + "-" * len(header))
    for model_name in args.models:
        size = VIT_SIZES[model_name]["img_size"]
        images = torch.randn(args.batch, 3, size, size, device=device)
        tags = torch.randint(0, VOCAB, (args.batch, 4), device=device)
        labels = tags[:, 0]
        encoder_flops = count_flops(vit(model_name), size)
        mae_flops = count_flops(MAE(model_name), size)
        for precision in args.precisions:
            cases = (("wsp", vit(model_name, num_classes=VOCAB), wsp_loss, tags, encoder_flops),
                     ("timm-stock", stock_timm(model_name), stock_loss, labels, encoder_flops),
                     ("mae", MAE(model_name), mae_loss, labels, mae_flops))
            for step_name, model, loss_of, targets, flops in cases:
                step = train_step(model, loss_of, images, targets, dtypes[precision], args.compile)
                seconds = timed(step, device, args.seconds)
                mfu = 3 * flops * args.batch / seconds / peaks[precision]
                rows.append({"model": model_name, "step": step_name, "precision": precision, "batch": args.batch,
                             "images_per_s": args.batch / seconds, "mfu": mfu, "compile": args.compile})
                print(f"{model_name:6s} {step_name:10s} {precision:5s} {args.batch:5d} {args.batch / seconds:9.0f} "
                      f"{mfu:6.1%}", flush=True)
                del model, step

    data = synthetic(4096, 16)
    batches = Batches(data.train_images, data.train_labels, 256, device, ImageTransform(32, 0.35))
    seconds = timed(lambda: [None for _ in batches], device, args.seconds, warmup=1)
    pipeline = len(batches) * 256 / seconds
    fastest = max(r["images_per_s"] for r in rows)
    print(f"data pipeline (crop + flip + normalise, 32 px): {pipeline:,.0f} img/s = {pipeline / fastest:.0f}x the "
          f"fastest step")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"device": name, "torch": torch.__version__, "peaks": peaks, "rows": rows,
                       "data_pipeline_images_per_s": pipeline, "date": time.strftime("%Y-%m-%d")}, f, indent=2)


if __name__ == "__main__":
    main()
