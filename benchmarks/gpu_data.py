"""Carry real CIFAR to a GPU machine that has no copy and no network, under a size limit per
transfer.

    # here: one .npz of JPEG bytes per dataset
    python benchmarks/gpu_data.py pack cifar10 packed/gpu10
    python benchmarks/gpu_data.py pack cifar100 packed/gpu100 --quality 85
    # there: then STUDYLIB_DATA=/tmp/data
    python benchmarks/gpu_data.py unpack packed/gpu10 packed/gpu100 --to /tmp/data

CIFAR-10 keeps its JPEG files byte for byte (the data directory's copy is JPEG already); CIFAR-100's
exact pixels are stored as JPEG at --quality (85: 1.0 KB an image, 61 MB for 60,000), so its pixels
differ slightly from the original's, as CIFAR-10's do. Unpacking rebuilds the data directory's
layouts (../shared/data/README.md): cifar10/ as an image folder, cifar100.npz with every key
studylib reads.
"""

from __future__ import annotations

import argparse
import io
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image


def _joined(blobs: list[bytes]) -> dict[str, np.ndarray]:
    offsets = np.cumsum([0] + [len(b) for b in blobs])
    return {"jpeg": np.frombuffer(b"".join(blobs), np.uint8), "offsets": offsets}


def _split(jpeg: np.ndarray, offsets: np.ndarray) -> list[bytes]:
    return [jpeg[a:b].tobytes() for a, b in zip(offsets[:-1], offsets[1:], strict=True)]


def pack(name: str, out: Path, quality: int) -> None:
    root = Path(os.environ["STUDYLIB_DATA"])
    out.mkdir(parents=True, exist_ok=True)
    if name == "cifar10":
        files = sorted((root / "cifar10").glob("*/*/*.jpg"))
        paths = [str(f.relative_to(root / "cifar10")) for f in files]
        np.savez(
            out / "cifar10.npz", paths=np.array(paths), **_joined([f.read_bytes() for f in files])
        )
        return
    data = dict(np.load(root / "cifar100.npz"))

    def encoded(image: np.ndarray) -> bytes:
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, "JPEG", quality=quality)
        return buffer.getvalue()

    arrays = {k: v for k, v in data.items() if not k.startswith("x_")}
    for split in ("train", "test"):
        arrays.update(
            {
                f"{split}_{k}": v
                for k, v in _joined([encoded(x) for x in data[f"x_{split}"]]).items()
            }
        )
    np.savez(out / "cifar100.npz", **arrays)


def unpack(folders: list[Path], to: Path) -> None:
    to.mkdir(parents=True, exist_ok=True)
    for folder in folders:
        for packed in folder.glob("*.npz"):
            data = dict(np.load(packed))
            if packed.stem == "cifar10":
                for path, blob in zip(
                    data["paths"], _split(data["jpeg"], data["offsets"]), strict=True
                ):
                    (to / "cifar10" / path).parent.mkdir(parents=True, exist_ok=True)
                    (to / "cifar10" / path).write_bytes(blob)
                continue
            with ThreadPoolExecutor(16) as pool:
                for split in ("train", "test"):
                    blobs = _split(data.pop(f"{split}_jpeg"), data.pop(f"{split}_offsets"))
                    data[f"x_{split}"] = np.stack(
                        list(pool.map(lambda b: np.asarray(Image.open(io.BytesIO(b))), blobs))
                    )
            np.savez(to / "cifar100.npz", **data)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    packing = commands.add_parser("pack")
    packing.add_argument("dataset", choices=["cifar10", "cifar100"])
    packing.add_argument("out", type=Path)
    packing.add_argument("--quality", type=int, default=85)
    unpacking = commands.add_parser("unpack")
    unpacking.add_argument("folders", type=Path, nargs="+")
    unpacking.add_argument("--to", type=Path, required=True)
    args = parser.parse_args()
    if args.command == "pack":
        pack(args.dataset, args.out, args.quality)
    else:
        unpack(args.folders, args.to)
