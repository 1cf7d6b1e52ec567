"""Does the loader worker's crop move a probe? The same trained encoders probed on CIFAR-10 images
made by the worker's path before (torchcodec's decode, torchvision's antialiased bicubic resize) and
now (simplejpeg's decode, `studylib.decode.crop_resized`'s OpenCV resize).

    python benchmarks/decoder_probe.py --out benchmarks/results/decoder_probe_<commit>.json

CIFAR-10's probe images (the `cpu` preset's 1,000 a class, and the 10,000 test images) are upscaled
(PIL bicubic) to a source side, saved as JPEGs at quality 90 as a web pool holds them, and brought
back to 32 px by each path with the whole image as the crop: 63 px sources are the new path's worst
case (a shrink just under 2x: bicubic, not antialiased), 256 px sources take its area resize. The
`cpu` preset's MAE and MAE->WSP encoders of `--seed` (trained first if not there yet, in
$STUDYLIB_RUNS) are probed on each version by the project's probe (`fit_head`, then top-1 on the
test images). The difference now - before is paired over the 10,000 test images, with its 95%
interval; rule: the probe does not move when that interval holds 0.
"""

from __future__ import annotations

import argparse
import io
import json
import platform
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from decoders import torchcodec_whole, worker  # benchmarks/decoders.py, beside this script
from PIL import Image
from scipy import stats
from torch import nn

from studylib import arms
from studylib.config import load_experiment
from studylib.data import load_dataset
from studylib.distributed import device_and_dtype, precision_name
from studylib.evaluation import fit_head, frozen_encoder
from studylib.experiment import Experiment
from studylib.features import extract_features

SIZE = 32
# the worker's path before (torchcodec, torchvision's antialiased bicubic), now (simplejpeg, OpenCV)
PATHS = {"before": torchcodec_whole, "now": worker}


def jpegs(images: torch.Tensor, side: int) -> list[bytes]:
    """uint8 (N, 3, H, W) `images` upscaled to side x side and saved as JPEGs at quality 90."""
    out = []
    for image in images:
        pil = Image.fromarray(image.permute(1, 2, 0).numpy()).resize((side, side), Image.BICUBIC)
        buffer = io.BytesIO()
        pil.save(buffer, "JPEG", quality=90)
        out.append(buffer.getvalue())
    return out


def made_by(path: Callable, blobs: list[bytes], side: int) -> torch.Tensor:
    """uint8 (N, 3, SIZE, SIZE): `blobs` (side x side JPEGs) brought to SIZE px by `path`, the
    whole image the crop."""
    whole = (0, 0, side, side)
    pixels = np.stack([path(blob, whole, SIZE) for blob in blobs])
    return torch.from_numpy(pixels).permute(0, 3, 1, 2).contiguous()


def correct(
    encoder: nn.Module, exp: Experiment, train: torch.Tensor, test: torch.Tensor, labels: tuple
) -> torch.Tensor:
    """Which `test` images the probe fit on `train`'s features gets right; `labels` of both."""
    device, dtype = device_and_dtype(exp)
    train_features = extract_features(encoder, train, device, dtype)
    head, _ = fit_head(train_features, labels[0], 10, exp.probe, exp.data.subset_seed)
    scores = head(extract_features(encoder, test, device, dtype))
    return (scores.argmax(1).cpu() == labels[1]).float()


def paired(now_right: torch.Tensor, before_right: torch.Tensor) -> dict:
    """Top-1 now - before (points) with its 95% t-interval over the paired test images."""
    differences = (now_right - before_right).numpy() * 100
    mean, error = differences.mean(), stats.sem(differences)
    half = stats.t.ppf(0.975, len(differences) - 1) * error
    return {
        "difference": float(mean),
        "interval95": [float(mean - half), float(mean + half)],
        "moves": bool(mean - half > 0 or mean + half < 0),
        "images_that_differ": int((now_right != before_right).sum()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("--sides", type=int, nargs="+", default=[63, 256])
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    exp = load_experiment("cpu", [f"seed={args.seed}"])
    mae_run, wsp_run = arms.mae_then_wsp(exp)
    data = load_dataset("cifar10", exp.data)
    keep = data.per_class(exp.probe.train_per_class, exp.data.subset_seed)
    train, train_labels = data.train_images[keep], data.train_labels[keep]
    result = {
        "cpu": platform.processor() or platform.machine(),
        "precision": precision_name(exp),
        "sides": {},
    }
    for side in args.sides:
        blobs = jpegs(train, side), jpegs(data.test_images, side)
        made = {name: [made_by(path, part, side) for part in blobs] for name, path in PATHS.items()}
        pixels = (made["now"][1].int() - made["before"][1].int()).abs().float().mean().item()
        out = {"mean_abs_pixel_difference": pixels}
        for arm, run in (("mae", mae_run), ("mae_wsp", wsp_run)):
            encoder = frozen_encoder(exp, run)
            right = {
                name: correct(encoder, exp, tr, te, (train_labels, data.test_labels))
                for name, (tr, te) in made.items()
            }
            out[arm] = {
                "run": run.name,
                "top1_before": right["before"].mean().item() * 100,
                "top1_now": right["now"].mean().item() * 100,
                **paired(right["now"], right["before"]),
            }
        result["sides"][side] = out
        print(side, json.dumps(out, indent=1), flush=True)
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
