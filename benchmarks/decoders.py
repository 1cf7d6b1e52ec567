"""The JPEG decoders a loader worker could use, each against its own limit (decoding alone), one
thread.

    python benchmarks/decoders.py --images 256 --out benchmarks/results/decoders_<commit>.json

On photo-sized JPEGs (500 x 375, quality 90, made as benchmarks/loader.py makes them) and on the
same photos resized to a 256 px short side (what `studylib shards --max-size 256` writes), best of 5
passes, the passes interleaved (each round times every path once):

- decode only: the whole JPEG to RGB pixels, the limit of that decoder;
- decode + crop: WSP's random-resized crop (crop_min 0.08, the boxes of `studylib.decode.crop_box`,
  the same for every decoder) resized to 224 px. PIL with `draft` (DCT-domain scaling to the
  smallest scale that still covers the crop; the worker's path until b71808d), simplejpeg with the
  same DCT-domain scaling (`min_width`/`min_height`) then PIL's resize, torchvision's deprecated
  `decode_jpeg` and torchcodec's `decode_jpeg` (whole image, then torchvision's antialiased
  `resized_crop`: the worker's path before), and simplejpeg's whole-image decode then OpenCV's
  resize (`studylib.decode.crop_resized`: the worker's `studylib.decode.decode_sample` path now).

Each path's crops are compared with PIL's: the mean absolute difference in pixel values (0-255).
"""

from __future__ import annotations

import argparse
import io
import json
import platform
import random
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from studylib.decode import crop_box, crop_resized

SIZE, CROP_MIN = 224, 0.08


def photos(count: int, short_side: int | None = None) -> list[bytes]:
    """`count` 500 x 375 JPEGs at quality 90 (CIFAR-10 test images upscaled, with fine noise), or
    the same photos resized to `short_side`."""
    from loader import photos as full_size  # benchmarks/loader.py, beside this script
    from loader import resized

    blobs = full_size(count)
    return resized(blobs, short_side) if short_side else blobs


def boxes(blobs: list[bytes]) -> list[tuple[int, int, int, int]]:
    found = []
    for i, blob in enumerate(blobs):
        with Image.open(io.BytesIO(blob)) as image:
            found.append(crop_box(*image.size, CROP_MIN, random.Random(f"0:{i}")))
    return found


def _scaled_box(box: tuple, width: int, height: int, decoded: tuple[int, int]) -> tuple[float, ...]:
    sx, sy = decoded[0] / width, decoded[1] / height
    return box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy


def pil_draft(blob: bytes, box: tuple) -> np.ndarray:
    with Image.open(io.BytesIO(blob)) as image:
        width, height = image.size
        image.draft("RGB", (width * SIZE // (box[2] - box[0]), height * SIZE // (box[3] - box[1])))
        scaled = _scaled_box(box, width, height, image.size)
        return np.asarray(image.convert("RGB").resize((SIZE, SIZE), Image.BICUBIC, box=scaled))


def simplejpeg_scaled(blob: bytes, box: tuple) -> np.ndarray:
    import simplejpeg

    width, height = simplejpeg.decode_jpeg_header(blob)[1::-1]
    pixels = simplejpeg.decode_jpeg(
        blob,
        "RGB",
        min_width=width * SIZE // (box[2] - box[0]),
        min_height=height * SIZE // (box[3] - box[1]),
    )
    scaled = _scaled_box(box, width, height, (pixels.shape[1], pixels.shape[0]))
    return np.asarray(Image.fromarray(pixels).resize((SIZE, SIZE), Image.BICUBIC, box=scaled))


def _resized_crop(pixels: torch.Tensor, box: tuple, size: int) -> np.ndarray:
    from torchvision.transforms.v2 import InterpolationMode
    from torchvision.transforms.v2.functional import resized_crop

    left, top, right, bottom = box
    bicubic = InterpolationMode.BICUBIC
    crop = resized_crop(pixels, top, left, bottom - top, right - left, [size, size], bicubic, True)
    return crop.permute(1, 2, 0).numpy()


def torchvision_whole(blob: bytes, box: tuple) -> np.ndarray:
    from torchvision.io import decode_jpeg

    pixels = decode_jpeg(torch.frombuffer(bytearray(blob), dtype=torch.uint8))
    return _resized_crop(pixels, box, SIZE)


def torchcodec_whole(blob: bytes, box: tuple, size: int = SIZE) -> np.ndarray:
    from torchcodec.decoders import decode_jpeg

    return _resized_crop(decode_jpeg(blob), box, size)


def worker(blob: bytes, box: tuple, size: int = SIZE) -> np.ndarray:
    import simplejpeg

    return crop_resized(simplejpeg.decode_jpeg(blob, "RGB"), box, size).permute(1, 2, 0).numpy()


def decode_only() -> dict[str, Callable[[bytes], object]]:
    import simplejpeg
    from torchcodec.decoders import decode_jpeg as torchcodec
    from torchvision.io import decode_jpeg

    def pil(blob: bytes) -> np.ndarray:
        with Image.open(io.BytesIO(blob)) as image:
            return np.asarray(image.convert("RGB"))

    return {
        "PIL": pil,
        "simplejpeg": lambda blob: simplejpeg.decode_jpeg(blob, "RGB"),
        "torchvision": lambda blob: decode_jpeg(
            torch.frombuffer(bytearray(blob), dtype=torch.uint8)
        ),
        "torchcodec": torchcodec,
    }


# each decode + crop path: (the decoder whose decode-only rate is its limit, the path)
PATHS = {
    "PIL with draft (the worker's path until b71808d)": ("PIL", pil_draft),
    "simplejpeg, DCT-domain scaling, PIL resize": ("simplejpeg", simplejpeg_scaled),
    "torchvision decode_jpeg + resized_crop": ("torchvision", torchvision_whole),
    "torchcodec decode_jpeg + resized_crop (the worker's path before)": (
        "torchcodec",
        torchcodec_whole,
    ),
    "simplejpeg + OpenCV resize (studylib.shards._decode, the worker's path)": (
        "simplejpeg",
        worker,
    ),
}


def rates(works: dict[str, Callable[[], object]], count: int, rounds: int = 5) -> dict:
    """Images a second of each `works[name]()` over `count` images: the best of `rounds` passes,
    the passes interleaved (every work once a round), so that a neighbour's load on the machine
    falls on all of them alike."""
    best = dict.fromkeys(works, float("inf"))
    for _ in range(rounds):
        for name, work in works.items():
            start = time.perf_counter()
            work()
            best[name] = min(best[name], time.perf_counter() - start)
    return {name: count / seconds for name, seconds in best.items()}


def measure(blobs: list[bytes]) -> dict:
    crops = boxes(blobs)
    pairs = list(zip(blobs, crops, strict=True))
    reference = [pil_draft(b, c) for b, c in pairs]
    decoders = decode_only()
    works = {name: lambda d=decode: [d(b) for b in blobs] for name, decode in decoders.items()}
    works |= {
        path: lambda c=crop: [c(b, box) for b, box in pairs] for path, (_, crop) in PATHS.items()
    }
    measured = rates(works, len(blobs))
    limits = {name: measured[name] for name in decoders}
    out = {"decode_only_img_s": limits}
    for path, (decoder, crop) in PATHS.items():
        made = [crop(b, c) for b, c in pairs]
        compared = zip(made, reference, strict=True)
        difference = [np.abs(m.astype(np.int16) - r).mean() for m, r in compared]
        out[path] = {
            "decode_crop_224_img_s": measured[path],
            "decoder_limit_over_it": limits[decoder] / measured[path],
            "fastest_limit_over_it": max(limits.values()) / measured[path],
            "mean_abs_pixel_difference_vs_PIL": float(np.mean(difference)),
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(1)  # one worker's share of the CPU
    full, small = photos(args.images), photos(args.images, short_side=256)
    result = {
        "cpu": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "images": args.images,
        "kb_mean": {
            "500x375": sum(map(len, full)) / len(full) / 1024,
            "256px": sum(map(len, small)) / len(small) / 1024,
        },
        "500x375": measure(full),
        "256px": measure(small),
    }
    print(json.dumps(result, indent=1))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
