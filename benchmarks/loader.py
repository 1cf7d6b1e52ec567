"""How fast one DataLoader worker turns JPEGs into 224 px images, from shards and from an image
folder, and how many workers a GPU then needs.

    python benchmarks/loader.py --images 512 --out benchmarks/results/loader_<commit>.json
    python benchmarks/loader.py --images 512 --short-side 256 --out ...  # as shards --max-size 256

It writes `--images` photo-sized JPEGs (500 x 375, ImageNet's typical size, quality 90: CIFAR-10
test images upscaled, with fine noise so they do not compress like flat colour) once as WebDataset
shards and once as an image folder, then times, in this process (one worker's work), what each
ShardStream worker runs: reading each sample (`TarShards.read`, `ImageFiles.read`), decoding it and
random-resized-cropping it to 224 px (`studylib.decode.decode_sample`: WSP's crop_min 0.08,
simplejpeg's decode and OpenCV's resize); beside it, reading the shard alone (its share of the time;
and by webdataset, the reader before studylib.tars), simplejpeg's decode alone (the worker's limit),
and an old way, PIL decoding the whole JPEG then resizing it to 224 px; and the device side, flip +
normalise of 224 px batches (what ShardBatches does after the workers). Workers per GPU = the
recorded GPU step rate (benchmarks/RESULTS.md) / one worker's rate.
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
import simplejpeg
import torch
from PIL import Image

from studylib import tars
from studylib.batches import ImageTransform
from studylib.data import load_dataset
from studylib.decode import decode_sample
from studylib.shards import ImageFiles, TarShards

# img/s recorded in benchmarks/RESULTS.md (bf16, batch 256, compiled): WSP and MAE steps of B/16
GPU_RATES = {
    "H100 B/16 WSP": 3243,
    "H100 B/16 MAE": 8637,
    "H200 B/16 WSP": 3432,
    "H200 B/16 MAE": 9527,
}


def photos(count: int) -> list[bytes]:
    """`count` 500 x 375 JPEGs at quality 90 made from CIFAR-10 test images."""
    images = load_dataset("cifar10").test_images[:count]
    rng = np.random.default_rng(0)
    out = []
    for image in images:
        big = Image.fromarray(image.permute(1, 2, 0).numpy()).resize((500, 375), Image.BICUBIC)
        noisy = np.clip(
            np.asarray(big, np.int16) + rng.integers(-12, 13, (375, 500, 3)), 0, 255
        ).astype(np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(noisy).save(buffer, "JPEG", quality=90)
        out.append(buffer.getvalue())
    return out


def resized(blobs: list[bytes], short_side: int) -> list[bytes]:
    """The JPEGs resized to `short_side` (aspect kept, bicubic, quality 90), as `studylib shards
    --max-size` writes them."""
    out = []
    for blob in blobs:
        with Image.open(io.BytesIO(blob)) as image:
            scale = short_side / min(image.size)
            size = round(image.size[0] * scale), round(image.size[1] * scale)
            small = image.resize(size, Image.BICUBIC)
        buffer = io.BytesIO()
        small.save(buffer, "JPEG", quality=90)
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
    parser.add_argument("--short-side", type=int, help="the photos resized to it (256: --max-size)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(1)  # one worker's share of the CPU
    blobs = photos(args.images)
    blobs = resized(blobs, args.short_side) if args.short_side else blobs
    with tempfile.TemporaryDirectory() as tmp:
        import webdataset as wds

        shard = Path(tmp) / "00000.tar"
        with wds.TarWriter(str(shard)) as sink:
            for i, blob in enumerate(blobs):
                sink.write({"__key__": f"{i:09d}", "jpg": blob, "json": {"tags": ["a", "b"]}})
        (Path(tmp) / "shards.json").write_text(
            json.dumps({"shards": [{"name": "00000.tar", "samples": len(blobs)}]})
        )
        for i, blob in enumerate(blobs):  # two classes: an image folder has at least two
            folder = Path(tmp) / "folder" / f"class{i % 2}"
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"{i:09d}.jpg").write_bytes(blob)

        shards, files = TarShards(Path(tmp)), ImageFiles(Path(tmp) / "folder")

        def decoded(source: TarShards | ImageFiles, crop_min: float) -> None:
            for sample in source.read(source.units, seed=0):
                decode_sample(sample, 224, crop_min)

        def read_only() -> None:
            for _ in shards.read(shards.units, seed=0):
                pass

        def read_by_webdataset() -> None:  # the reader before studylib.tars
            for _ in tars._webdataset([str(shard)]):
                pass

        def decode_only() -> None:  # the limit: simplejpeg's decode of the same JPEGs, no crop
            for blob in blobs:
                simplejpeg.decode_jpeg(blob, "RGB")

        def whole_then_resized() -> None:
            for sample in shards.read(shards.units, seed=0):
                with Image.open(io.BytesIO(sample["jpg"])) as opened:
                    np.asarray(opened.convert("RGB").resize((224, 224), Image.BICUBIC))

        shards_s, folder_s = (
            timed(lambda: decoded(shards, 0.08)),
            timed(lambda: decoded(files, 0.08)),
        )
        mae_s, whole_s = timed(lambda: decoded(shards, 0.2)), timed(whole_then_resized)
        read_s, webdataset_s = timed(read_only), timed(read_by_webdataset)
        limit_s = timed(decode_only)
    batch = torch.randint(0, 256, (256, 3, 224, 224), dtype=torch.uint8)
    normalise = ImageTransform(224)
    flip_s = timed(
        lambda: normalise(torch.where(torch.rand(256, 1, 1, 1) < 0.5, batch.flip(-1), batch))
    )
    per_worker = {
        "shards": args.images / shards_s,
        "folder": args.images / folder_s,
        "shards, MAE crop_min 0.2": args.images / mae_s,
    }
    result = {
        "cpu": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "images": args.images,
        "short_side": args.short_side or "500 x 375",
        "jpeg_kb_mean": sum(map(len, blobs)) / len(blobs) / 1024,
        "decode_crop_img_s_per_worker": per_worker,
        "whole_decode_then_resize_img_s_per_worker": args.images / whole_s,
        "shard_read_only_samples_s_per_worker": args.images / read_s,
        "shard_read_by_webdataset_samples_s_per_worker": args.images / webdataset_s,
        "decode_only_limit_img_s": args.images / limit_s,
        "worker_below_decode_only_limit_x": shards_s / limit_s,
        "device_flip_normalise_img_s_1_thread": 256 / flip_s,
        "workers_per_gpu": {
            name: {src: rate / r for src, r in per_worker.items()}
            for name, rate in GPU_RATES.items()
        },
        "cores": os.cpu_count(),
    }
    print(json.dumps(result, indent=1))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
