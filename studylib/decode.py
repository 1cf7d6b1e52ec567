"""A streamed sample's decoding: its JPEG (or other image) upright, random-resized-cropped or
centre-cropped to the model's size, in a loader worker (simplejpeg, OpenCV's resize) or, on a CUDA
device, batched on the GPU (`decode_batch`); a sample that cannot be used comes back as the reason
why. `decoder` names the path, which enters a streamed pool's identity.
"""

from __future__ import annotations

import io
import json
import math
import random
from dataclasses import dataclass

import cv2
import numpy as np
import simplejpeg
import torch
from PIL import Image
from torchcodec.decoders import decode_jpeg
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2.functional import resized_crop

from studylib import pixels
from studylib.errors import DataError

# a loader worker crops on its own core: the loader's parallelism is its workers
cv2.setNumThreads(1)


def checked_tags(tags: object, where: str) -> list[str]:
    """A sample's tags: a list of strings, else a DataError naming the sample."""
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        raise DataError(
            f'{where}: tags are {str(tags)[:60]}; allowed: a list of strings, e.g. ["cat", "pet"]'
        )
    return tags


def crop_box(
    width: int, height: int, crop_min: float | None, rng: random.Random
) -> tuple[int, int, int, int]:
    """A random resized crop's window (left, top, right, bottom): torchvision's rule, a share of the
    area in [crop_min, 1] and an aspect ratio in [3/4, 4/3], ten tries, else the centre square; with
    crop_min None, the centre square."""
    for _ in range(10 if crop_min is not None else 0):
        area = width * height * rng.uniform(crop_min, 1.0)
        ratio = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
        w, h = round(math.sqrt(area * ratio)), round(math.sqrt(area / ratio))
        if 0 < w <= width and 0 < h <= height:
            left, top = rng.randint(0, width - w), rng.randint(0, height - h)
            return left, top, left + w, top + h
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    return left, top, left + side, top + side


def decoding_device(device: torch.device) -> torch.device | None:
    """Where a run on `device` decodes its streamed JPEGs: batched on a CUDA device, else None (one
    by one in the loader workers)."""
    return device if device.type == "cuda" else None


def decoder(device: torch.device) -> str:
    """What turns a streamed sample into pixels for a run on `device`: part of a streamed pool's
    identity, since another decoder gives other pixels (nvJPEG's IDCT is not libjpeg-turbo's)."""
    if decoding_device(device) is not None:
        return (
            "torchcodec decode_jpeg batched on the GPU (nvJPEG), bicubic antialiased crop there; "
            f"{pixels.RULE}"
        )
    return (
        "simplejpeg in the loader workers, OpenCV crop: area where it shrinks 2x, else bicubic; "
        f"{pixels.RULE}"
    )


# what a sample's decoding raises where it cannot be used (PIL, simplejpeg, torchcodec: truncated,
# not an image, a decompression bomb, which is no OSError; json; tags)
UNUSABLE = (
    OSError,
    ValueError,
    TypeError,
    SyntaxError,
    RuntimeError,
    DataError,
    Image.DecompressionBombError,
)


def _why(err: Exception) -> str:
    """An unusable sample's reason, as the epoch's skip list records it."""
    return f"{type(err).__name__}: {err}"[:200]


@dataclass
class Encoded:
    """A JPEG a worker leaves undecoded, with its crop: the main process decodes a batch of them on
    the GPU in one call (decode_on)."""

    blob: bytes
    box: tuple[int, int, int, int]


def decode_sample(
    sample: dict, size: int, crop_min: float | None = None, seed: int = 0, defer: bool = False
) -> tuple[torch.Tensor | Encoded | None, str, list[str] | str]:
    """(uint8 image (3, size, size), key, tags): the sample's image cropped by `crop_box` (drawn
    from (seed, key)) and resized; or (None, key, why) for a sample that cannot be used. With
    `defer`, an RGB or greyscale JPEG comes back Encoded (header checked, not decoded)."""
    key = sample.get("__key__", "?")
    try:
        tags = checked_tags(json.loads(sample["json"])["tags"], key)
        blob = sample["jpg"]
        # the header: size, format, and PIL's decompression-bomb check before anything is decoded
        with Image.open(io.BytesIO(blob)) as opened:
            turn = pixels.orientation(opened)  # 5-8 turn the image a quarter
            width, height = opened.size if turn < 5 else opened.size[::-1]
            jpeg = opened.format == "JPEG" and opened.mode in ("RGB", "L")
            other = None if jpeg else pixels.rgb(opened)
        box = crop_box(width, height, crop_min, random.Random(f"{seed}:{key}"))
        if jpeg and defer and turn == 1:
            return Encoded(blob, box), key, tags
        if jpeg:
            other = np.ascontiguousarray(pixels.upright(simplejpeg.decode_jpeg(blob, "RGB"), turn))
        return crop_resized(other, box, size), key, tags
    except KeyError as err:
        return None, key, f"no {err.args[0]}"
    except UNUSABLE as err:
        return None, key, _why(err)


def crop_resized(pixels: np.ndarray, box: tuple[int, int, int, int], size: int) -> torch.Tensor:
    """`box` of (H, W, 3) `pixels` resized to (3, size, size) by OpenCV: bicubic, or its area resize
    where the box shrinks 2x or more on both sides (bicubic would alias there; area is free of moire
    but slow at other ratios). 3x faster than torch's antialiased bicubic on uint8, within 0.3 of
    255 of it on 256 px photos (benchmarks/RESULTS.md: decoders)."""
    left, top, right, bottom = box
    halves = min(right - left, bottom - top) >= 2 * size
    how = cv2.INTER_AREA if halves else cv2.INTER_CUBIC
    resized = cv2.resize(pixels[top:bottom, left:right], (size, size), interpolation=how)
    return torch.from_numpy(resized).permute(2, 0, 1)


def _crop_decoded(pixels: torch.Tensor, box: tuple[int, int, int, int], size: int) -> torch.Tensor:
    """A batched decode's (3, H, W) `pixels` cropped where they lie: torchvision's bicubic
    antialiased crop on the GPU, the workers' `crop_resized` on the CPU (so that it gives their
    pixels)."""
    if pixels.device.type == "cpu":
        return crop_resized(np.ascontiguousarray(pixels.permute(1, 2, 0).numpy()), box, size)
    left, top, right, bottom = box
    bicubic = InterpolationMode.BICUBIC
    return resized_crop(pixels, top, left, bottom - top, right - left, [size, size], bicubic, True)


def decode_batch(batch: list[tuple], size: int, device: torch.device) -> list[tuple]:
    """`batch` (a stream's samples, from workers that deferred their JPEGs) on `device`: its Encoded
    JPEGs decoded there in one call (one at a time if the call fails, so that a bad JPEG is one
    unusable sample) and cropped there, its other images moved there."""
    encoded = [i for i, sample in enumerate(batch) if isinstance(sample[0], Encoded)]
    blobs = [batch[i][0].blob for i in encoded]
    try:
        decoded = decode_jpeg(blobs, device=device) if blobs else []
    except RuntimeError:
        decoded = [_decode_one(blob, device) for blob in blobs]
    out = [(im.to(device) if isinstance(im, torch.Tensor) else im, k, t) for im, k, t in batch]
    for i, picture in zip(encoded, decoded, strict=True):
        image, key, tags = batch[i]
        if isinstance(picture, torch.Tensor):
            out[i] = (_crop_decoded(picture, image.box, size), key, tags)
        else:
            out[i] = (None, key, picture)  # why it could not be decoded
    return out


def _decode_one(blob: bytes, device: torch.device) -> torch.Tensor | str:
    try:
        return decode_jpeg(blob, device=device)
    except RuntimeError as err:
        return _why(err)
