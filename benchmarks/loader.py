"""How fast one DataLoader worker turns JPEGs into 224 px images, from shards and from an image folder, and how many
workers a GPU then needs (issue 16's loader benchmark).

    python benchmarks/loader.py --images 512 --out benchmarks/results/loader_<commit>.json

It writes `--images` photo-sized JPEGs (500 x 375, ImageNet's typical size, quality 90: CIFAR-10 test images
upscaled, with fine noise so they do not compress like flat colour) once as WebDataset shards and once as an image
folder, then times, in this process (one worker's work): reading and decoding each sample and resizing it to 224 px
(`studylib.shards._decode`, what each ShardStream worker runs; and PIL on the folder's files), and the device side,
random-resized crop + flip + normalise of 224 px batches (`studylib.data.ImageTransform`). Workers per GPU = the
recorded GPU step rate (benchmarks/RESULTS.md) / one worker's decode rate.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from studylib.data import ImageTransform, load_dataset
from studylib.shards import _decode

# img/s recorded in benchmarks/RESULTS.md (bf16, batch 256, compiled): WSP and MAE steps of B/16
GPU_RATES = {"H100 B/16 WSP": 3243, "H100 B/16 MAE": 8637, "H200 B/16 WSP": 3432, "H200 B/16 MAE": 9527}


def photos(count: int) -> list[bytes]:
    """`count` 500 x 375 JPEGs at quality 90 made from CIFAR-10 test images."""
    images = load_dataset("cifar10").test_images[:count]
    rng = np.random.default_rng(0)
    out = []
    for image in images:
        big = Image.fromarray(image.permute(1, 2, 0).numpy()).resize((500, 375), Image.BICUBIC)
        noisy = np.clip(np.asarray(big, np.int16) + rng.integers(-12, 13, (375, 500, 3)), 0, 255).astype(np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(noisy).save(buffer, "JPEG", quality=90)
        out.append(buffer.getvalue())
    return out


def timed(work, repeats: int = 3) -> float:
    """The best of `repeats` timings of `work()`, in seconds."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(1)  # one worker's share of the CPU
    blobs = photos(args.images)
    with tempfile.TemporaryDirectory() as tmp:
        import webdataset as wds

        shard = Path(tmp) / "00000.tar"
        with wds.TarWriter(str(shard)) as sink:
            for i, blob in enumerate(blobs):
                sink.write({"__key__": f"{i:09d}", "jpg": blob, "json": {"tags": ["a", "b"]}})
        folder = Path(tmp) / "folder" / "class"
        folder.mkdir(parents=True)
        for i, blob in enumerate(blobs):
            (folder / f"{i:09d}.jpg").write_bytes(blob)

        def from_shards() -> None:
            for sample in wds.WebDataset(str(shard), shardshuffle=False, empty_check=False):
                _decode(sample, 224)

        def from_folder() -> None:
            for path in sorted(folder.iterdir()):
                with Image.open(path) as opened:
                    np.asarray(opened.convert("RGB").resize((224, 224), Image.BICUBIC))

        shards_s, folder_s = timed(from_shards), timed(from_folder)
    batch = torch.randint(0, 256, (256, 3, 224, 224), dtype=torch.uint8)
    transform = ImageTransform(224, crop_min=0.08)
    crop_s = timed(lambda: transform(batch))
    per_worker = {"shards": args.images / shards_s, "folder": args.images / folder_s}
    result = {
        "cpu": platform.processor() or platform.machine(), "torch": torch.__version__, "images": args.images,
        "jpeg_kb_mean": sum(map(len, blobs)) / len(blobs) / 1024,
        "decode_resize_img_s_per_worker": per_worker,
        "device_crop_flip_normalise_img_s_1_thread": 256 / crop_s,
        "workers_per_gpu": {name: {src: rate / r for src, r in per_worker.items()} for name, rate in GPU_RATES.items()},
        "cores": os.cpu_count(),
    }
    print(json.dumps(result, indent=1))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
