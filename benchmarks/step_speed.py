"""Images per second and model-FLOPs utilisation of the MAE and WSP training steps.

    python benchmarks/step_speed.py --models micro tiny --batch 256 [--device cuda] [--precision bf16]

The peak is measured here too (a large square matmul in the same dtype), so the utilisation is
against this device's own limit. Prints a table and writes JSON (--out).
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from studylib.engine import resolve_device
from studylib.models import MAE, VIT_SIZES, count_flops, vit
from studylib.stages.wsp import wsp_loss


def matmul_peak(device: torch.device, dtype: torch.dtype, n: int) -> float:
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    return 2 * n**3 / _seconds(lambda: a @ b, device)


def _seconds(step, device: torch.device, warmup: int = 2, repeat: int = 5) -> float:
    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeat):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeat


def step_seconds(model: torch.nn.Module, loss_of, batch: int, size: int, device: torch.device,
                 dtype: torch.dtype | None) -> float:
    model.to(device).train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    images = torch.randn(batch, 3, size, size, device=device)

    def step() -> None:
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = loss_of(model, images)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return _seconds(step, device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=["micro"], choices=list(VIT_SIZES))
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    device = resolve_device(args.device)
    dtype = torch.bfloat16 if args.precision == "bf16" else None
    peak = matmul_peak(device, dtype or torch.float32, 8192 if device.type == "cuda" else 2048)
    print(f"device {device}, {args.precision}, matmul peak {peak / 1e12:.2f} TFLOP/s")
    rows = []
    for name in args.models:
        size = VIT_SIZES[name]["img_size"]
        tags = torch.zeros(args.batch, 1, dtype=torch.long, device=device)
        wsp_model = vit(name, num_classes=1000)
        mae_model = MAE(name)
        forward_flops = count_flops(vit(name), size)  # per image, encoder on every patch
        for stage, model, loss_of in (
            ("wsp", wsp_model, lambda m, x: wsp_loss(m, x, tags)),
            ("mae", mae_model, lambda m, x: m(x)[0]),
        ):
            seconds = step_seconds(model, loss_of, args.batch, size, device, dtype)
            flops = count_flops(mae_model, size) if stage == "mae" else forward_flops
            mfu = 3 * flops * args.batch / seconds / peak  # training = forward + 2x backward
            rows.append({"model": name, "stage": stage, "batch": args.batch, "precision": args.precision,
                         "images_per_s": args.batch / seconds, "mfu": mfu})
            print(f"{name:6s} {stage:4s} batch {args.batch:4d} {args.batch / seconds:9.0f} img/s  MFU {mfu:6.1%}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"device": str(device), "peak_flops": peak, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
