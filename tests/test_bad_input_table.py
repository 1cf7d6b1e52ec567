"""The bad-input table (at least 200 cases): every case is one line naming the file, key or path,
exit code 2, nothing written, no traceback. Each case builds its input in a temporary folder, then
runs `studylib` in-process; the cases marked `CLI` also run through the real `studylib` command in a
subprocess.

Categories: config (values, files, presets), data (files, arrays, folders), sizes (checked before
anything trains), output places (environment variables and folders), commands (arguments of the
other commands), scale (shard indexes, tars and their tags, decompression bombs, the `shards`
command).
"""

from __future__ import annotations

import io
import json
import os
import signal
import struct
import subprocess
import sys
import tarfile
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from studylib.cli import main

SMOKE = ["--preset", "smoke"]


@dataclass
class Case:
    category: str
    name: str
    # the command line, or built from the case's folder
    args: list[str] | Callable[[Path], list[str]]
    words: list[str]  # in the one error line
    env: Callable[[Path], dict[str, str]] = field(default=lambda _: {})
    cli: bool = False  # also through the real command in a subprocess
    non_root: bool = False  # a permission that root bypasses: skipped when the tests run as root


def _study(*sets: str) -> list[str]:
    return ["study", *SMOKE, *[a for s in sets for a in ("--set", s)]]


def _yaml_file(text: str | bytes) -> Callable[[Path], list[str]]:
    def build(folder: Path) -> list[str]:
        path = folder / "bad.yaml"
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
        return ["study", *SMOKE, "--config", str(path)]

    return build


CONFIG = [
    Case(
        "config",
        "partition given a number",
        _study("launch.partition=5"),
        ["launch.partition", "expected str"],
        cli=True,
    ),
    Case(
        "config",
        "account given a list",
        _study("launch.account=[a, b]"),
        ["launch.account", "expected str"],
    ),
    Case(
        "config", "qos given a mapping", _study("launch.qos={a: 1}"), ["launch.qos", "expected str"]
    ),
    Case(
        "config",
        "seed beyond 64 bits",
        _study("seed=99999999999999999999999"),
        ["seed", "at most 2147483647"],
        cli=True,
    ),
    Case(
        "config",
        "studies.seeds beyond 32 bits",
        _study("studies.seeds=[5000000000]"),
        ["studies.seeds", "at most"],
    ),
    Case(
        "config",
        "epochs of 10^23",
        _study("mae.epochs=100000000000000000000000"),
        ["mae.epochs", "at most"],
        cli=True,
    ),
    Case(
        "config",
        "epochs of a million",
        _study("wsp.epochs=1000000"),
        ["wsp.epochs", "in [1, 10000]"],
    ),
    Case(
        "config",
        "finetune epochs of a million",
        _study("transfer.finetune.epochs=1000000"),
        ["transfer.finetune.epochs", "in [1, 10000]"],
    ),
    Case(
        "config",
        "wsp_epochs list too long a schedule",
        _study("studies.wsp_epochs=[1, 99999]"),
        ["studies.wsp_epochs", "10000"],
    ),
    Case(
        "config",
        "decoder heads that do not divide",
        _study("mae.decoder_heads=3"),
        ["override mae.decoder_heads", "divisors of 64"],
        cli=True,
    ),
    Case(
        "config",
        "decoder dim that does not split",
        _study("mae.decoder_dim=30"),
        ["mae.decoder_dim", "heads"],
    ),
    Case(
        "config",
        "text heads that do not divide",
        _study("transfer.zeroshot.text_heads=5"),
        ["transfer.zeroshot.text_heads", "divisors"],
    ),
    Case(
        "config",
        "streaming a built-in dataset",
        _study("data.stream=true"),
        ["override data.stream", "cannot be streamed", "image folder path"],
    ),
    Case(
        "config",
        "MAE's epoch_images on a streamed pool",
        lambda d: _pics(_folder, "data.stream=true", "mae.epoch_images=64")(d),
        ["mae.epoch_images", "streamed pool", "allowed: 0"],
    ),
    Case(
        "data",
        "a streamed folder of one class",
        lambda d: _pics(_one_class, "data.stream=true")(d),
        ["1 class folder(s)", "at least 2 classes"],
    ),
    Case(
        "config",
        "deep unknown key",
        _study("a.b.c.d=1"),
        ["override a.b.c.d", "unknown key 'a'"],
        cli=True,
    ),
    Case(
        "config",
        "unknown key in a section",
        _study("mae.b.c=1"),
        ["override mae.b.c", "unknown key 'b'"],
    ),
    Case("config", "value for a section", _study("transfer=1"), ["transfer", "expected a mapping"]),
    Case(
        "config", "huge text value is cut", _study("model=" + "x" * 5000), ["model", "characters"]
    ),
    Case(
        "config",
        "duplicate key in the file",
        _yaml_file("presets:\n  smoke: {}\n  smoke: {model: nano}\n"),
        ["bad.yaml", "given twice"],
        cli=True,
    ),
    Case(
        "config",
        "duplicate nested key",
        _yaml_file("presets:\n  smoke:\n    mae: {epochs: 1, epochs: 2}\n"),
        ["bad.yaml", "'epochs' is given twice"],
    ),
    Case(
        "config",
        "alias bomb",
        _yaml_file(
            "a: &a [1, 1, 1, 1, 1, 1, 1, 1, 1]\nb: &b [*a, *a, *a, *a, *a, *a]\n"
            "c: [*b, *b, *b, *b, *b, *b, *b]\npresets: {smoke: {}}\n"
        ),
        ["bad.yaml", "aliases"],
        cli=True,
    ),
    Case(
        "config",
        "non-UTF-8 file",
        _yaml_file(b"presets: {smoke: {}}\n# caf\xe9\n"),
        ["bad.yaml", "not UTF-8"],
        cli=True,
    ),
    Case("config", "empty file", _yaml_file(""), ["bad.yaml", "'presets' key"]),
    Case("config", "a number as the file", _yaml_file("42\n"), ["bad.yaml", "'presets' key"]),
    Case(
        "config",
        "presets as a list",
        _yaml_file("presets: [smoke]\n"),
        ["bad.yaml", "'presets' key"],
    ),
    Case(
        "config",
        "tab-indented YAML",
        _yaml_file("presets:\n\tsmoke: {}\n"),
        ["bad.yaml", "not valid YAML"],
    ),
    Case(
        "config",
        "bad preset name in the file",
        _yaml_file("presets: {smoke: {}, '../x': {}}\n"),
        ["bad.yaml", "preset name '../x'"],
    ),
    Case(
        "config",
        "preset with path separators",
        ["study", "--preset", "../../etc"],
        ["preset '../../etc'", "letters, digits"],
        cli=True,
    ),
    Case("config", "preset with a slash", ["study", "--preset", "smoke/x"], ["preset 'smoke/x'"]),
    Case("config", "empty preset name", ["study", "--preset", ""], ["preset ''"]),
    Case("config", "preset of spaces", ["config", "--preset", "a b"], ["preset 'a b'"]),
    Case(
        "config",
        "override value not YAML",
        _study("model=[unclosed"),
        ["override model", "not valid YAML"],
    ),
    Case("config", "override alias", _study("model=*a"), ["override model", "not valid YAML"]),
    Case("config", "override with empty key", _study("=3"), ["expected KEY=VALUE"]),
    Case("config", "nan learning rate", _study("wsp.base_lr=.nan"), ["wsp.base_lr", "finite"]),
    Case(
        "config",
        "negative weight decay",
        _study("wsp.weight_decay=-1"),
        ["wsp.weight_decay", ">= 0"],
    ),
    Case("config", "crop_min 0", _study("wsp.crop_min=0"), ["wsp.crop_min", "in (0, 1]"]),
    Case(
        "config",
        "drop_path 1",
        _study("transfer.finetune.drop_path=1"),
        ["transfer.finetune.drop_path"],
    ),
    Case(
        "config",
        "layer decay above 1",
        _study("transfer.finetune.layer_decay=2"),
        ["layer_decay", "in (0, 1]"],
    ),
    Case(
        "config",
        "label smoothing 1",
        _study("transfer.finetune.label_smoothing=1"),
        ["label_smoothing"],
    ),
    Case(
        "config",
        "holdout above a half",
        _study("probe.holdout_fraction=0.9"),
        ["probe.holdout_fraction"],
    ),
    Case(
        "config",
        "negative probe decay",
        _study("probe.weight_decays=[-1]"),
        ["probe.weight_decays"],
    ),
    Case("config", "empty probe decays", _study("probe.weight_decays=[]"), ["probe.weight_decays"]),
    Case(
        "config",
        "repeated probe decays",
        _study("probe.weight_decays=[0.1, 0.1]"),
        ["repeats a value"],
    ),
    Case("config", "zero tolerance", _study("probe.tolerance=0"), ["probe.tolerance", "> 0"]),
    Case("config", "zero shots", _study("transfer.lowshot.shots=[0]"), ["transfer.lowshot.shots"]),
    Case(
        "config",
        "template without {}",
        _study("transfer.zeroshot.templates=['a photo']"),
        ["templates"],
    ),
    Case(
        "config",
        "unknown corruption",
        _study("transfer.robustness.corruptions=[fog2]"),
        ["corruptions"],
    ),
    Case("config", "unknown task", _study("transfer.tasks=[dance]"), ["transfer.tasks"]),
    Case("config", "repeated arms", _study("studies.arms=[wsp, wsp]"), ["studies.arms", "repeats"]),
    Case("config", "unknown arm", _study("studies.arms=[dino]"), ["studies.arms"]),
    Case(
        "config",
        "unknown model size in the sweep",
        _study("studies.model_sizes=[giant]"),
        ["model_sizes"],
    ),
    Case(
        "config",
        "mae_data without a fraction",
        _study("studies.mae_data=[cifar10]"),
        ["studies.mae_data"],
    ),
    Case(
        "config",
        "mae_data fraction 2",
        _study("studies.mae_data=['pretrain:2']"),
        ["studies.mae_data"],
    ),
    Case(
        "config",
        "mae_data of a missing folder",
        _study("studies.mae_data=['/no/where:1']"),
        ["mae_data"],
    ),
    Case(
        "config",
        "joined name with a missing part",
        _study("mae.data=cifar10+nothing"),
        ["mae.data"],
    ),
    Case(
        "config",
        "seed not among studies.seeds",
        ["study", *SMOKE, "--set", "seed=3", "--set", "studies.seeds=[0, 1]"],
        ["not among studies.seeds"],
    ),
    Case("config", "unknown executor", _study("launch.executor=k8s"), ["launch.executor"]),
    Case("config", "zero nodes", _study("launch.nodes=0"), ["launch.nodes", "> 0"]),
    Case(
        "config",
        "synthetic set of 400 GB",
        _study("data.synthetic_train=140000000"),
        ["data.synthetic_train", "in [1, 1000000]"],
        cli=True,
    ),
    Case(
        "config",
        "pool fraction above 1",
        _study("data.pretrain_fraction=1.5"),
        ["data.pretrain_fraction"],
    ),
    Case(
        "config", "tags noise probability negative", _study("tags.p_wrong=-0.1"), ["tags.p_wrong"]
    ),
    Case("config", "zipf exponent 0", _study("tags.zipf_exponent=0"), ["tags.zipf_exponent"]),
    Case(
        "config",
        "negative epoch_images",
        _study("mae.epoch_images=-5"),
        ["mae.epoch_images", ">= 0"],
    ),
    Case("config", "list for an int", _study("mae.epochs=[1, 2]"), ["mae.epochs", "expected int"]),
    Case("config", "zero L-BFGS iterations", _study("probe.max_iter=0"), ["probe.max_iter", "> 0"]),
    Case(
        "config",
        "zero low-shot draws",
        _study("transfer.lowshot.draws=0"),
        ["transfer.lowshot.draws"],
    ),
    Case(
        "config",
        "zero text tokens",
        _study("transfer.zeroshot.max_tokens=0"),
        ["max_tokens", "> 0"],
    ),
    Case(
        "config", "zero cpus per task", _study("launch.cpus_per_task=0"), ["launch.cpus_per_task"]
    ),
    Case("config", "zero time limit", _study("launch.timeout_min=0"), ["launch.timeout_min"]),
    Case(
        "config",
        "decoder of no blocks",
        _study("mae.decoder_depth=0"),
        ["mae.decoder_depth", "> 0"],
    ),
    Case(
        "config",
        "negative noise vocabulary",
        _study("tags.noise_vocab=-1"),
        ["tags.noise_vocab", ">= 0"],
    ),
    Case(
        "config",
        "missing config file",
        ["study", *SMOKE, "--config", "/no/such.yaml"],
        ["/no/such.yaml", "cannot read"],
        cli=True,
    ),
    Case(
        "config",
        "config file is a folder",
        lambda d: ["study", *SMOKE, "--config", str(d)],
        ["cannot read"],
    ),
    Case(
        "config",
        "a half-width past the whole scale",
        ["plan", *SMOKE, "--set", "analysis.a.half_width=1e300"],
        ["analysis.a.half_width", "in [0, 100]"],
        cli=True,
    ),
    Case(
        "config",
        "a negative secondary half-width",
        ["plan", *SMOKE, "--set", "analysis.b.secondary_half_width=-1"],
        ["analysis.b.secondary_half_width", "in [0, 100]"],
    ),
    Case(
        "config",
        "a config file of 2 MiB",
        _yaml_file("# a comment line\n" * 140_000),
        ["bad.yaml", "larger than 1 MiB"],
    ),
    Case(
        "config",
        "config file that never ends",
        ["study", *SMOKE, "--config", "/dev/zero"],
        ["/dev/zero", "larger than 1 MiB"],
        cli=True,
    ),
    Case(
        "config",
        "config nested 20,000 deep",
        _yaml_file("presets: {smoke: " + "[" * 20_000 + "]" * 20_000 + "}"),
        ["bad.yaml", "nested more than 32 levels"],
        cli=True,
    ),
    Case(
        "config",
        "override nested 5,000 deep",
        _study("mae.epochs=" + "{a: " * 5_000 + "1" + "}" * 5_000),
        ["mae.epochs", "nested more than 32 levels"],
    ),
    Case(
        "config",
        "a list as a mapping key",
        _yaml_file("presets:\n  smoke:\n    ? [a, b]\n    : 1\n"),
        ["bad.yaml", "a key that is a list or a mapping"],
    ),
    Case(
        "config",
        "an override with a mapping as a key",
        _study("mae={? {a: 1} : 2}"),
        ["override mae", "a key that is a list or a mapping"],
    ),
]


def _npz(
    folder: Path, change: Callable[[dict], None] | None = None, raw: bytes | None = None
) -> dict[str, str]:
    """A data directory whose cifar100.npz is a tiny valid one changed by `change`, or `raw`
    bytes."""
    data = folder / "data"
    data.mkdir(exist_ok=True)
    if raw is not None:
        (data / "cifar100.npz").write_bytes(raw)
        return {"STUDYLIB_DATA": str(data)}
    rng = np.random.default_rng(0)
    arrays = {
        "x_train": rng.integers(0, 256, (40, 32, 32, 3), dtype=np.uint8),
        "y_train": np.arange(40) % 4,
        "x_test": rng.integers(0, 256, (8, 32, 32, 3), dtype=np.uint8),
        "y_test": np.arange(8) % 4,
        "y_train_coarse": np.arange(40) % 2,
        "y_test_coarse": np.arange(8) % 2,
        "classes": np.array(["a", "b", "c", "d"]),
        "coarse_classes": np.array(["x", "y"]),
        "fine_to_coarse": np.array([0, 1, 0, 1]),
    }
    if change:
        change(arrays)
    np.savez(data / "cifar100.npz", **arrays)
    return {"STUDYLIB_DATA": str(data)}


CIFAR100 = _study(
    "data.pretrain=cifar100", "data.probe=[cifar100]", "mae.batch_size=8", "wsp.batch_size=8"
)


def _set(key: str, value: object) -> Callable[[dict], None]:
    def change(arrays: dict) -> None:
        if value is None:
            del arrays[key]
        else:
            arrays[key] = value

    return change


def _folder(
    folder: Path,
    classes: tuple[str, ...] = ("cat", "dog"),
    sizes: tuple[int, ...] = (8,),
    splits: tuple[str, ...] = ("train", "test"),
) -> Path:
    root = folder / "pics"
    for split in splits:
        for i, name in enumerate(classes):
            (root / split / name).mkdir(parents=True, exist_ok=True)
            for j, size in enumerate(sizes * 2):
                Image.new("RGB", (size, size), (40 * i, 10 * j, 99)).save(
                    root / split / name / f"{j}.png"
                )
    return root


def _deep_image(d: Path, pixels: np.ndarray) -> Path:
    """An image folder with one image of 32-bit or float pixels among 8-bit ones (TIFF bytes under a
    .png name: PIL reads the bytes, whatever the name)."""
    root = _folder(d)
    Image.fromarray(pixels).save(root / "train" / "cat" / "deep.png", format="TIFF")
    return root


def _pics(build: Callable[[Path], Path], *sets: str) -> Callable[[Path], list[str]]:
    return lambda d: _study(
        f"data.pretrain={build(d)}",
        "data.probe=[synthetic]",
        "mae.batch_size=2",
        "wsp.batch_size=2",
        *sets,
    )


def _unreadable_class(d: Path) -> Path:
    root = _folder(d, ("cat", "dog", "eel"))
    os.chmod(root / "train" / "eel", 0)
    return root


def _unreadable_image(d: Path) -> Path:
    root = _folder(d)
    os.chmod(root / "train" / "cat" / "0.png", 0)
    return root


def _broken_image(d: Path) -> Path:
    root = _folder(d)
    (root / "train" / "dog" / "9.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    return root


def _no_test_split(d: Path) -> list[str]:
    for name in ("cat", "dog"):  # root/<class>/<image>: a training set alone
        (d / "flat" / name).mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(d / "flat" / name / "0.png")
    return _study(f"data.probe=[{d / 'flat'}]")


def _empty_classes(d: Path) -> Path:
    for name in ("cat", "dog"):
        (d / "pics" / "train" / name).mkdir(parents=True)
    return d / "pics"


def _one_image(d: Path) -> Path:
    (d / "one" / "cat").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(d / "one" / "cat" / "0.png")
    return d / "one"


def _one_class(d: Path) -> Path:
    return _folder(d, classes=("cat",), splits=("train",))


uint8 = np.uint8
DATA = [
    Case(
        "data",
        "0-byte npz",
        CIFAR100,
        ["cifar100.npz", "not a readable .npz"],
        env=lambda d: _npz(d, raw=b""),
        cli=True,
    ),
    Case(
        "data",
        "garbage npz",
        CIFAR100,
        ["cifar100.npz", "not a readable .npz"],
        env=lambda d: _npz(d, raw=b"garbage" * 100),
    ),
    Case(
        "data",
        "truncated npz",
        CIFAR100,
        ["cifar100.npz", "not a readable .npz"],
        env=lambda d: _npz(d, raw=(_npz(d) and (d / "data" / "cifar100.npz").read_bytes())[:300]),
    ),
    Case(
        "data",
        "npz without x_train",
        CIFAR100,
        ["no key 'x_train'"],
        env=lambda d: _npz(d, _set("x_train", None)),
        cli=True,
    ),
    Case(
        "data",
        "npz without classes",
        CIFAR100,
        ["no key 'classes'"],
        env=lambda d: _npz(d, _set("classes", None)),
    ),
    Case(
        "data",
        "float images in [0, 1]",
        CIFAR100,
        ["x_train is float32", "uint8 pixels"],
        env=lambda d: _npz(d, _set("x_train", np.zeros((40, 32, 32, 3), np.float32))),
        cli=True,
    ),
    Case(
        "data",
        "channels first",
        CIFAR100,
        ["x_train", "(N, H, W, 3)"],
        env=lambda d: _npz(d, _set("x_train", np.zeros((40, 3, 32, 32), uint8))),
    ),
    Case(
        "data",
        "grey images",
        CIFAR100,
        ["x_test", "(N, H, W, 3)"],
        env=lambda d: _npz(d, _set("x_test", np.zeros((8, 32, 32), uint8))),
    ),
    Case(
        "data",
        "labels out of range",
        CIFAR100,
        ["train labels span 0..7", "allowed: 0..3"],
        env=lambda d: _npz(d, _set("y_train", np.arange(40) % 8)),
        cli=True,
    ),
    Case(
        "data",
        "negative labels",
        CIFAR100,
        ["test labels span -1..2"],
        env=lambda d: _npz(d, _set("y_test", np.arange(8) % 4 - 1)),
    ),
    Case(
        "data",
        "float labels",
        CIFAR100,
        ["y_train is float64", "integers"],
        env=lambda d: _npz(d, _set("y_train", np.zeros(40))),
    ),
    Case(
        "data",
        "fewer labels than images",
        CIFAR100,
        ["40 train images but 39 labels"],
        env=lambda d: _npz(d, _set("y_train", np.arange(39) % 4)),
    ),
    Case(
        "data",
        "2-d labels",
        CIFAR100,
        ["y_test", "shape (8, 1)"],
        env=lambda d: _npz(d, _set("y_test", np.zeros((8, 1), np.int64))),
    ),
    Case(
        "data",
        "one class",
        CIFAR100,
        ["1 class(es)", "at least 2 classes"],
        env=lambda d: _npz(
            d,
            lambda a: a.update(
                classes=np.array(["a"]),
                y_train=np.zeros(40, np.int64),
                y_test=np.zeros(8, np.int64),
            ),
        ),
    ),
    Case(
        "data",
        "npz of pickled objects",
        CIFAR100,
        ["not a readable .npz"],
        env=lambda d: _npz(d, _set("classes", np.array([{"a": 1}, None], dtype=object))),
    ),
    Case(
        "data",
        "npz without read permission",
        CIFAR100,
        ["cifar100.npz"],
        env=lambda d: (_npz(d), os.chmod(d / "data" / "cifar100.npz", 0))[0],
        non_root=True,
    ),
    Case(
        "data",
        "data directory missing",
        CIFAR100,
        ["data directory does not exist"],
        env=lambda d: {"STUDYLIB_DATA": str(d / "nowhere")},
    ),
    Case(
        "data",
        "data directory empty",
        CIFAR100,
        ["has neither cifar100.npz"],
        env=lambda d: ((d / "empty").mkdir(), {"STUDYLIB_DATA": str(d / "empty")})[1],
        cli=True,
    ),
    Case(
        "data",
        "image folder of one class",
        _pics(lambda d: _folder(d, ("cat",))),
        ["1 class(es)"],
        cli=True,
    ),
    Case(
        "data",
        "unreadable class folder",
        _pics(_unreadable_class),
        ["eel", "cannot read this class folder"],
        non_root=True,
    ),
    Case(
        "data",
        "class folder without images",
        _pics(lambda d: (_folder(d) / "train" / "eel").mkdir() or d / "pics"),
        ["eel", "no images in this class folder"],
    ),
    Case(
        "data",
        "unreadable image",
        _pics(_unreadable_image),
        ["0.png", "not a readable image"],
        non_root=True,
    ),
    Case("data", "broken image", _pics(_broken_image), ["9.jpg", "not a readable image"]),
    Case(
        "data",
        "a float image in a folder",
        _pics(lambda d: _deep_image(d, np.ones((8, 8), np.float32))),
        ["deep.png", "HighDepthError", "float pixels"],
    ),
    Case(
        "data",
        "a 32-bit integer image in a folder",
        _pics(lambda d: _deep_image(d, np.ones((8, 8), np.int32))),
        ["deep.png", "HighDepthError", "32-bit"],
    ),
    Case(
        "data",
        "images of mixed sizes",
        _pics(lambda d: _folder(d, sizes=(8, 2))),
        ["2x2 pixels", "one size"],
        cli=True,
    ),
    Case(
        "data",
        "image folder without class folders",
        _pics(lambda d: (d / "flat").mkdir() or d / "flat"),
        ["no class folders"],
    ),
    Case("data", "empty class folders", _pics(_empty_classes), ["no images"]),
    Case("data", "probe folder without a test split", _no_test_split, ["no test images"]),
    Case(
        "data",
        "images of mixed sizes in a joined set",
        lambda d: _study(f"mae.data={_folder(d / 'a')}+{_folder(d / 'b', sizes=(4,))}"),
        ["different sizes"],
    ),
]


SIZES = [
    Case(
        "sizes",
        "MAE batch larger than the pool",
        _study("mae.batch_size=4096"),
        ["mae.batch_size", "4096 is more than the 512 images", "at most 512"],
        cli=True,
    ),
    Case(
        "sizes",
        "WSP batch larger than the pool",
        _study("wsp.batch_size=513"),
        ["wsp.batch_size", "at most 512"],
    ),
    Case(
        "sizes",
        "WSP batch larger than a small pool",
        _study("data.pretrain_fraction=0.01", "wsp.batch_size=64", "mae.batch_size=4"),
        ["wsp.batch_size", "at most 5"],
    ),
    Case(
        "sizes",
        "MAE batch larger than MAE's images",
        _study("mae.data=synthetic", "mae.data_fraction=0.01", "mae.batch_size=64"),
        ["mae.batch_size", "at most 5"],
    ),
    Case("sizes", "dataset of one image", _pics(_one_image), ["at least 2 classes"]),
    Case(
        "sizes",
        "one arm submitted with a batch larger than the pool",
        ["submit", "mae", *SMOKE, "--set", "mae.batch_size=4096", "--set", "launch.executor=local"],
        ["mae.batch_size", "4096 is more than the 512 images", "at most 512"],
        cli=True,
    ),
]


def _file(d: Path, name: str) -> str:
    (d / name).write_text("not a folder")
    return str(d / name)


MOUNTS: list[Path] = []


def _read_only(d: Path) -> str:
    """A folder nobody may write to: chmod 555, or for root (whom permissions do not stop) a
    read-only tmpfs."""
    (d / "ro").mkdir()
    if os.geteuid() == 0:
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(d / "ro")], check=True
        )
        MOUNTS.append(d / "ro")
    else:
        os.chmod(d / "ro", 0o555)
    return str(d / "ro" / "runs")


def _restore(folder: Path) -> None:
    """Undo what a case did to its inputs, so pytest can remove them."""
    while MOUNTS:
        subprocess.run(["umount", str(MOUNTS.pop())], check=False)
    for path in folder.rglob("*"):
        if not path.is_symlink():
            os.chmod(path, 0o755)


def _dangling(d: Path) -> str:
    (d / "link").symlink_to(d / "gone")
    return str(d / "link")


def _place(
    name: str,
    args: list[str],
    variable: str,
    problem: str,
    make: Callable[[Path], str],
    cli: bool = False,
) -> Case:
    """`variable` (a STUDYLIB_* folder) set to `make(case folder)`: the line names it and
    `problem`."""
    return Case(
        "places", name, args, [variable, problem], env=lambda d: {variable: make(d)}, cli=cli
    )


def _a_file(d: Path) -> str:
    return _file(d, "a-file")


def _preset_folder_a_file(d: Path) -> str:
    (d / "res").mkdir()
    _file(d / "res", "smoke")
    return str(d / "res")


RUNS, RESULTS = "STUDYLIB_RUNS", "STUDYLIB_RESULTS"
CACHE, FIGURES = "STUDYLIB_CACHE", "STUDYLIB_FIGURES"
FIGURES_CMD, TRANSFER_CMD = ["figures", *SMOKE], ["transfer", *SMOKE]
PLACES = [
    _place("runs folder is a file", _study(), RUNS, "a file", _a_file, cli=True),
    _place("results folder is a file", _study(), RESULTS, "a file", _a_file),
    _place("results/<preset> is a file", _study(), RESULTS, "a file", _preset_folder_a_file),
    _place("runs folder read-only", _study(), RUNS, "not writable", _read_only, cli=True),
    _place("results folder read-only", _study(), RESULTS, "not writable", _read_only),
    _place("runs folder set but empty", _study(), RUNS, "is set but empty", lambda d: "", cli=True),
    _place("results folder set but empty", _study(), RESULTS, "is set but empty", lambda d: "  "),
    _place("runs folder a dangling link", _study(), RUNS, "dangling link", _dangling),
    _place("figures of a results file", FIGURES_CMD, RESULTS, "a file", _a_file),
    _place("transfer into a read-only runs folder", TRANSFER_CMD, RUNS, "not writable", _read_only),
    _place("cache folder is a file", _study(), CACHE, "a file", _a_file, cli=True),
    _place("cache folder a dangling link", _study(), CACHE, "dangling link", _dangling),
    _place("figures folder read-only", FIGURES_CMD, FIGURES, "not writable", _read_only),
    _place("figures folder is a file", _study(), FIGURES, "a file", _a_file),
    _place("runs folder in /proc", _study(), RUNS, "which store nothing", lambda d: "/proc/x"),
    _place("cache folder in /sys", _study(), CACHE, "which store nothing", lambda d: "/sys/x"),
    _place(
        "notebook copies in /proc",
        ["notebooks", *SMOKE, "--only", "explore"],
        "STUDYLIB_OUTPUT",
        "which store nothing",
        lambda d: "/proc/self/out",
    ),
    _place(
        "notebook copies under a file",
        ["notebooks", *SMOKE, "--only", "explore"],
        "STUDYLIB_OUTPUT",
        "a file",
        lambda d: f"{_a_file(d)}/out",
        cli=True,
    ),
    _place(
        "notebooks into a read-only runs folder",
        ["notebooks", *SMOKE, "--only", "explore"],
        RUNS,
        "not writable",
        _read_only,
    ),
    Case(
        "places",
        "notebooks --out a file",
        lambda d: ["notebooks", *SMOKE, "--only", "explore", "--out", _a_file(d)],
        ["--out", "a file"],
    ),
    Case(
        "places",
        "export --out under a file",
        lambda d: ["export", "mae-00000000", *SMOKE, "--out", f"{_a_file(d)}/x"],
        ["--out", "a file"],
    ),
    Case(
        "places",
        "export --out a dangling link",
        lambda d: ["export", "mae-00000000", *SMOKE, "--out", _dangling(d)],
        ["--out", "dangling link"],
        cli=True,
    ),
    Case(
        "places",
        "export --out in /proc",
        ["export", "mae-00000000", *SMOKE, "--out", "/proc/self/x"],
        ["--out", "which store nothing"],
    ),
    Case(
        "places",
        "export --out a folder that is not empty",
        lambda d: (_file(d, "kept"), ["export", "mae-00000000", *SMOKE, "--out", str(d)])[1],
        ["--out", "not an empty folder"],
    ),
    Case(
        "places",
        "export --out in a read-only folder",
        lambda d: ["export", "mae-00000000", *SMOKE, "--out", f"{_read_only(d)}/x"],
        ["--out", "not writable"],
    ),
    Case(
        "places",
        "shards --out in /sys",
        lambda d: [*_shards_of(_folder)(d)[:-1], "/sys/kernel/x"],
        ["--out", "which store nothing"],
    ),
    Case(
        "commands",
        "findings --readme with no tables",
        ["findings", "--preset", "cpu", "--readme"],
        ["--readme", "does not exist", "never written from no results"],
        env=lambda d: {"STUDYLIB_RESULTS": str(d / "nothing")},
    ),
]


def _csv(text: str) -> Callable[[Path], dict[str, str]]:
    def build(d: Path) -> dict[str, str]:
        (d / "results" / "smoke").mkdir(parents=True)
        (d / "results" / "smoke" / "default.csv").write_text(text)
        return {"STUDYLIB_RESULTS": str(d / "results")}

    return build


def _odd_table(study: str, change: Callable[[list[dict]], list[dict]]) -> Callable:
    """results/smoke/<study>.csv of a two-arm, three-seed probe table, changed by `change`."""

    def build(d: Path) -> dict[str, str]:
        rows = [
            {"study": study, "model": "nano", "seed": s, "arm": arm, "stage": "probe"}
            | {"dataset": "cifar10", "variant": "", "wsp_epochs": 2, "mae_data": "pretrain:1"}
            | {"metric": "top1", "value": 50.0 + s + (arm == "mae_wsp"), "run": f"p{arm}{s}"}
            for s in (0, 1, 2)
            for arm in ("wsp", "mae_wsp")
        ]
        (d / "results" / "smoke").mkdir(parents=True)
        pd.DataFrame(change(rows)).to_csv(d / "results" / "smoke" / f"{study}.csv", index=False)
        return {"STUDYLIB_RESULTS": str(d / "results")}

    return build


def _each(**values: object) -> Callable[[list[dict]], list[dict]]:
    return lambda rows: [row | values for row in rows]


def _without(column: str) -> Callable[[list[dict]], list[dict]]:
    return lambda rows: [{k: v for k, v in row.items() if k != column} for row in rows]


def _odd(name: str, command: str, study: str, change: Callable, words: list[str]) -> Case:
    return Case(
        "commands", f"{command} on {name}", [command, *SMOKE], words, env=_odd_table(study, change)
    )


ODD_TABLES = [
    _odd(name, command, study, change, words)
    for command in ("findings", "figures")
    for name, study, change, words in (
        ("an unknown arm", "default", _each(arm="dino"), ["default.csv", "arm 'dino'"]),
        ("a seed that is no number", "default", _each(seed="one"), ["seed 'one'"]),
        ("a blank dataset", "default", _each(dataset=""), ["a top1 row without its dataset"]),
        ("no dataset column", "default", _without("dataset"), ["no column 'dataset'"]),
        ("no variant column", "transfer", _without("variant"), ["no column 'variant'"]),
        ("no wsp_epochs column", "wsp_epochs", _without("wsp_epochs"), ["'wsp_epochs'"]),
        ("no mae_data column", "data_size", _without("mae_data"), ["no column 'mae_data'"]),
    )
]

COMMANDS = [
    Case(
        "commands",
        "unknown study",
        ["study", "nonsense", *SMOKE],
        ["study 'nonsense' is unknown", "allowed"],
        cli=True,
    ),
    Case("commands", "unknown job target", ["submit", "nonsense", *SMOKE], ["nonsense", "allowed"]),
    Case(
        "commands",
        "notebooks --only unknown",
        ["notebooks", *SMOKE, "--only", "nonexistent"],
        ["--only nonexistent", "no such notebook"],
        cli=True,
    ),
    Case(
        "commands",
        "slurm without SLURM",
        ["submit", "default", *SMOKE, "--set", "launch.executor=slurm", "--no-wait"],
        ["launch.executor", "no sbatch"],
        env=lambda d: {"PATH": str(d)},
    ),
    Case(
        "commands",
        "findings on a malformed table",
        ["findings", *SMOKE],
        ["default.csv", "study table"],
        env=_csv('this,is\nnot,"a study table\n'),
        cli=True,
    ),
    Case(
        "commands",
        "findings on a table without arms",
        ["findings", *SMOKE],
        ["no column 'arm'"],
        env=_csv("a,b\n1,2\n"),
    ),
    Case(
        "commands",
        "findings on text values",
        ["findings", *SMOKE],
        ["not a number"],
        env=_csv("arm,stage,metric,value,seed,dataset\nwsp,probe,top1,high,0,x\n"),
    ),
    Case(
        "commands",
        "figures on a malformed table",
        ["figures", *SMOKE],
        ["default.csv", "not a"],
        env=_csv('"unclosed\n1,2\n'),
        cli=True,
    ),
    Case(
        "commands",
        "findings --readme of another preset",
        ["findings", *SMOKE, "--readme"],
        ["--readme", "cpu preset"],
    ),
    Case("commands", "transfer of an unknown arm", ["transfer", *SMOKE, "--arm", "dino"], ["dino"]),
]


def _pool(d: Path, damage: Callable[[Path], None] = lambda folder: None) -> Path:
    """A pool of 32 synthetic images in two shards of 16, then `damage`d."""
    from studylib.config import load_experiment
    from studylib.data import synthetic
    from studylib.shard_writer import write_shards
    from studylib.weak_labels import simulate

    data = synthetic(32, 8)
    write_shards(data, simulate(data, load_experiment("smoke").tags), d / "pool", per_shard=16)
    damage(d / "pool")
    return d / "pool"


def _listed(entry: dict) -> Callable[[Path], None]:
    """The index's second entry replaced by `entry`."""

    def damage(folder: Path) -> None:
        index = json.loads((folder / "shards.json").read_text())
        index["shards"][1] = entry
        (folder / "shards.json").write_text(json.dumps(index))

    return damage


def _rewritten(
    change: Callable[[str, bytes], bytes | None], extra: int = 0
) -> Callable[[Path], None]:
    """00001.tar written again with each member's bytes changed by `change` (None drops it), then
    its first `extra` members appended once more."""

    def damage(folder: Path) -> None:
        with tarfile.open(folder / "00001.tar") as tar:
            members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
        with tarfile.open(folder / "00001.tar", "w") as tar:
            for member, data in [*members, *members[:extra]]:
                data = change(member.name, data)
                if data is not None:
                    member.size = len(data)
                    tar.addfile(member, io.BytesIO(data))

    return damage


def _tags(value: object) -> Callable[[str, bytes], bytes]:
    def change(name: str, data: bytes) -> bytes:
        return (
            json.dumps({**json.loads(data), "tags": value}).encode()
            if name == "000000017.json"
            else data
        )

    return change


def _on_pool(damage: Callable[[Path], None] = lambda folder: None) -> Callable[[Path], list[str]]:
    return lambda d: _study(
        f"data.pretrain={_pool(d, damage)}", "mae.batch_size=8", "wsp.batch_size=8"
    )


def _bomb(path: Path) -> None:
    """A PNG whose header claims 20,000 x 20,000 pixels: PIL refuses it as a decompression bomb."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    header = struct.pack(">IIBBBBB", 20_000, 20_000, 8, 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0" * 7))
        + chunk(b"IEND", b"")
    )


def _with_bomb(d: Path) -> Path:
    root = _folder(d)
    _bomb(root / "train" / "cat" / "bomb.png")
    return root


def _with_text_png(d: Path) -> Path:
    root = _folder(d)
    (root / "train" / "cat" / "notes.png").write_text("a text file under an image's name\n")
    return root


def _with_self_link(d: Path) -> Path:
    root = _folder(d)
    (root / "train" / "cat" / "loop.jpg").symlink_to("loop.jpg")  # a link to itself
    return root


def _shards_of(build: Callable[[Path], Path], *extra: str) -> Callable[[Path], list[str]]:
    """`studylib shards` copying the streamed image folder `build` makes."""
    return lambda d: [
        "shards",
        *SMOKE,
        "--set",
        f"data.pretrain={build(d)}",
        "--set",
        "data.stream=true",
        "--out",
        str(d / "out"),
        *extra,
    ]


SCALE = [
    Case(
        "scale",
        "index names a tar outside the folder",
        _on_pool(_listed({"name": "../x/0.tar", "samples": 16})),
        ["shards.json", "not a plain file name"],
        cli=True,
    ),
    Case(
        "scale",
        "index names an absolute path",
        _on_pool(_listed({"name": "/dev/zero", "samples": 16})),
        ["not a plain file name"],
    ),
    Case(
        "scale",
        "index names the folder itself",
        _on_pool(_listed({"name": ".", "samples": 16})),
        ["not a plain file name"],
    ),
    Case(
        "scale",
        "index lists a tar twice",
        _on_pool(_listed({"name": "00000.tar", "samples": 16})),
        ["00000.tar", "listed twice"],
    ),
    Case(
        "scale",
        "index lists a missing tar",
        _on_pool(_listed({"name": "gone.tar", "samples": 16})),
        ["gone.tar", "not a regular file there"],
    ),
    Case(
        "scale",
        "index count negative",
        _on_pool(_listed({"name": "00001.tar", "samples": -40})),
        ["samples -40"],
    ),
    Case(
        "scale",
        "index count a boolean",
        _on_pool(_listed({"name": "00001.tar", "samples": True})),
        ["samples True"],
    ),
    Case(
        "scale",
        "index count fractional",
        _on_pool(_listed({"name": "00001.tar", "samples": 40.9})),
        ["samples 40.9"],
    ),
    Case(
        "scale",
        "index count below what the tar holds",
        _on_pool(_listed({"name": "00001.tar", "samples": 10})),
        ["00001.tar: holds 16 samples, shards.json lists 10"],
        cli=True,
    ),
    Case(
        "scale",
        "index not an index",
        _on_pool(lambda f: (f / "shards.json").write_text("{}")),
        ["shards.json: not a shard index"],
    ),
    Case(
        "scale",
        "tar with a sample twice",
        _on_pool(_rewritten(lambda name, data: data, extra=1)),
        ["00001.tar", "appears twice"],
        cli=True,
    ),
    Case(
        "scale",
        "tar that is not a tar",
        _on_pool(lambda f: (f / "00001.tar").write_bytes(b"not a tar" * 200)),
        ["00001.tar", "not a readable tar"],
    ),
    Case(
        "scale",
        "tags a string",
        _on_pool(_rewritten(_tags("cat"))),
        ["00001.tar: sample 000000017.json: tags are cat", "allowed: a list"],
        cli=True,
    ),
    Case(
        "scale",
        "tags nested lists",
        _on_pool(_rewritten(_tags([["cat"]]))),
        ["sample 000000017.json: tags are"],
    ),
    Case(
        "scale",
        "tags numbers",
        _on_pool(_rewritten(_tags([1, 2]))),
        ["sample 000000017.json: tags are"],
    ),
    Case(
        "scale",
        "in-memory pool holding a decompression bomb",
        _pics(_with_bomb),
        ["bomb.png: not a readable image", "DecompressionBombError"],
        cli=True,
    ),
    Case(
        "scale",
        "probe data holding a decompression bomb",
        lambda d: _study(f"data.probe=[{_with_bomb(d)}]"),
        ["bomb.png: not a readable image"],
    ),
    Case(
        "scale",
        "shards of a folder holding a decompression bomb",
        _shards_of(_with_bomb),
        ["bomb.png: not an image that can be read"],
        cli=True,
    ),
    Case(
        "scale",
        "shards of a folder holding a text file named .png",
        _shards_of(_with_text_png),
        ["notes.png: not an image that can be read"],
    ),
    Case(
        "scale",
        "shards of a folder holding a .jpg linked to itself",
        _shards_of(_with_self_link),
        ["loop.jpg"],
    ),
    Case(
        "scale",
        "in-memory pool holding a .jpg linked to itself",
        _pics(_with_self_link),
        ["loop.jpg"],
    ),
    Case(
        "scale",
        "shards --per-shard 0",
        _shards_of(_folder, "--per-shard", "0"),
        ["--per-shard >= 1"],
    ),
    Case(
        "scale",
        "shards --per-shard negative",
        _shards_of(_folder, "--per-shard", "-5"),
        ["--per-shard >= 1"],
    ),
    Case(
        "scale",
        "shards --out inside the source",
        lambda d: [*_shards_of(_folder)(d)[:-2], "--out", str(d / "pics" / "inside")],
        ["inside the source"],
    ),
    Case(
        "scale",
        "shards --out under a file",
        lambda d: [*_shards_of(_folder)(d)[:-2], "--out", f"{_file(d, 'plain')}/x"],
        ["is a file"],
    ),
    Case(
        "scale",
        "shards --out a folder in use",
        lambda d: (
            (d / "out").mkdir(),
            (d / "out" / "keep.txt").write_text("x"),
            _shards_of(_folder)(d),
        )[2],
        ["not an empty folder"],
    ),
    Case(
        "scale",
        "shards --index of a folder without tars",
        lambda d: ["shards", "--index", str(d)],
        ["no .tar files there"],
    ),
    Case(
        "scale",
        "a user's folder named like the shards' unfinished one",
        lambda d: (
            (d / "out.partial").mkdir(),
            (d / "out.partial" / "mine.txt").write_text("kept"),
            _shards_of(_folder)(d),
        )[2],
        ["out.partial: a folder studylib did not make", "move it away"],
        cli=True,
    ),
    Case(
        "scale",
        "a file where the shards' unfinished folder goes",
        lambda d: ((d / "out.partial").write_text("kept"), _shards_of(_folder)(d))[1],
        ["out.partial: a file or link"],
    ),
    Case(
        "scale",
        "a link where the shards' unfinished folder goes",
        lambda d: ((d / "out.partial").symlink_to(d), _shards_of(_folder)(d))[1],
        ["out.partial: a file or link"],
    ),
]

TABLE = CONFIG + DATA + SIZES + PLACES + COMMANDS + ODD_TABLES + SCALE


def _prepare(case: Case, folder: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    if case.non_root and os.geteuid() == 0:
        pytest.skip("root reads files whatever their permissions")
    for key, value in case.env(folder).items():
        monkeypatch.setenv(key, value)
    return case.args(folder) if callable(case.args) else case.args


def _written(folder: Path) -> list[Path]:
    """What the command left in the places it writes to: run folders and tables (the case's own
    inputs aside)."""
    return [
        p for p in (folder / "runs", folder / "results" / "smoke" / "default.csv.tmp") if p.exists()
    ] + [p for p in (folder / "results").glob("smoke*/*.yaml")]


@pytest.mark.parametrize("case", TABLE, ids=[f"{c.category}: {c.name}" for c in TABLE])
def test_bad_input_is_one_line_exit_2_nothing_written(
    case, tmp_path, monkeypatch, capsys, isolated_dirs
):
    args = _prepare(case, tmp_path, monkeypatch)
    try:
        code = main(args)
    finally:
        _restore(tmp_path)
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert code == 2 and len(err) == 1, (code, err)
    assert err[0].startswith("studylib: error: ") and len(err[0]) <= 1000
    for words in case.words:
        assert words in err[0], err[0]
    assert "Traceback" not in captured.out + captured.err
    assert not _written(isolated_dirs)


CLI_CASES = [c for c in TABLE if c.cli]


@pytest.mark.parametrize("case", CLI_CASES, ids=[f"{c.category}: {c.name}" for c in CLI_CASES])
def test_bad_input_through_the_real_command(case, tmp_path, monkeypatch, isolated_dirs):
    args = _prepare(case, tmp_path, monkeypatch)
    try:
        done = subprocess.run(
            [sys.executable, "-m", "studylib", *args],
            capture_output=True,
            text=True,
            env=os.environ.copy(),
            timeout=120,
        )
    finally:
        _restore(tmp_path)
    err = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(err) == 1 and err[0].startswith("studylib: error: "), (
        done.stderr
    )
    assert all(words in err[0] for words in case.words), err[0]
    assert not _written(isolated_dirs)


def test_the_table_covers_every_category_with_enough_cases():
    kinds = ("config", "data", "sizes", "places", "commands", "scale")
    counts = {c: sum(case.category == c for case in TABLE) for c in kinds}
    assert sum(counts.values()) == len(TABLE) >= 200 and min(counts.values()) >= 5, counts
    assert counts["scale"] >= 20 and sum(c.cli for c in TABLE if c.category == "scale") >= 6
    assert len(CLI_CASES) >= 20


# Files inside a run folder: never a traceback; a malformed file is an unfinished run, redone
# with one warning.


@pytest.fixture
def tiny():
    from studylib.config import load_experiment

    return load_experiment(
        "smoke",
        ["data.synthetic_train=128", "data.synthetic_test=64", "mae.epochs=1", "mae.batch_size=32"],
    )


@pytest.mark.parametrize(
    "content",
    ['{"final_loss": 0.5', "[1, 2]", "", "\x00\x01"],
    ids=["truncated", "a list", "empty", "binary"],
)
def test_a_malformed_results_file_means_the_run_is_finished_again(tiny, content, capsys):
    from studylib.stages import mae

    run = mae.pretrain(tiny)
    (run.path / "results.json").write_text(content)
    capsys.readouterr()
    again = mae.pretrain(tiny)
    assert isinstance(again.results()["final_loss"], float)
    err = capsys.readouterr().err
    assert (
        "results.json: not a readable JSON mapping; the run is finished again" in err
        and "Traceback" not in err
    )


def test_bad_metrics_lines_are_skipped_with_a_warning(tiny, capsys):
    from studylib.runs import Run
    from studylib.stages import mae

    run = mae.pretrain(tiny)
    path = run.path / "metrics.jsonl"
    path.write_text(path.read_text() + "{not json\n[3]\n")
    assert len(Run.metrics_of(run.path)) == 1
    assert capsys.readouterr().err.count("is not a JSON mapping; skipped") == 2


def test_a_deleted_metrics_file_changes_no_result(tiny):
    """A finished run's results live in results.json: deleting metrics.jsonl (the per-epoch log)
    keeps the run finished and its arm's training FLOPs as they were (they once fell to 0)."""
    from studylib.arms import mae_then_wsp
    from studylib.errors import RunFolderError
    from studylib.registry import ARMS
    from studylib.study import pretrain_arm

    def flops() -> float:
        _, rows = pretrain_arm(tiny, ARMS["mae_wsp"])
        return next(
            r["value"] for r in rows if r["metric"] == "train_flops" and r["stage"] == "pretraining"
        )

    before = flops()
    chain = mae_then_wsp(tiny, train=False)
    for run in chain:
        (run.path / "metrics.jsonl").unlink()
    assert flops() == before > 0
    assert all(run.done for run in chain)
    results = chain[0].path / "results.json"
    results.write_text(
        json.dumps({k: v for k, v in json.loads(results.read_text()).items() if k != "train_flops"})
    )
    with pytest.raises(RunFolderError, match="train_flops is None; allowed: a number >= 0"):
        flops()  # a results file without them is refused, not counted as 0


def test_checkpoints_are_verified_by_loading_when_their_sidecar_is_missing_or_lies(tiny, capsys):
    from studylib.io import sha256
    from studylib.runs import load_weights
    from studylib.stages import mae

    run = mae.pretrain(tiny)
    checkpoint = run.path / "checkpoint.pth"
    (run.path / "checkpoint.pth.sha256").unlink()  # an intact checkpoint without its sidecar
    assert load_weights(checkpoint)["run"] == run.name
    checkpoint.write_bytes(b"garbage" * 50)  # garbage, with a sidecar that matches it
    (run.path / "checkpoint.pth.sha256").write_text(sha256(checkpoint) + "\n")
    assert load_weights(checkpoint) is None
    assert "checkpoint.pth: not loadable" in capsys.readouterr().err


def test_orphaned_temporary_files_are_removed_on_the_next_start(tiny):
    from studylib.stages import mae

    run = mae.run_for(tiny)
    run.path.mkdir(parents=True)
    orphan = run.path / ".checkpoint.pth.new.abc123.tmp"
    orphan.write_bytes(b"half a file")
    assert mae.pretrain(tiny).done
    assert not orphan.exists()


def test_a_lock_that_is_a_symlink_is_refused_and_its_target_untouched(tiny, tmp_path):
    from studylib.errors import RunFolderError
    from studylib.stages import mae

    run = mae.run_for(tiny)
    run.path.mkdir(parents=True)
    precious = tmp_path / "precious.txt"
    precious.write_text("keep me")
    (run.path / ".lock").symlink_to(precious)
    with pytest.raises(RunFolderError, match="cannot open the lock"):
        mae.pretrain(tiny)
    assert precious.read_text() == "keep me"


def test_a_run_folder_that_is_a_dangling_symlink_is_refused(tiny, tmp_path):
    from studylib.errors import RunFolderError
    from studylib.stages import mae

    run = mae.run_for(tiny)
    run.path.parent.mkdir(parents=True)
    run.path.symlink_to(tmp_path / "gone")
    with pytest.raises(RunFolderError, match="a symbolic link"):
        mae.pretrain(tiny)


# Jobs and interrupts


def test_an_error_inside_a_job_reaches_the_caller_as_its_one_line(tmp_path, capsys):
    from studylib import launch
    from studylib.errors import DataError

    # passes the checks at submission (config, batches), fails when the job reads its probe data
    (tmp_path / "pics" / "cat").mkdir(parents=True)
    job = launch.submit(
        "default", "smoke", [f"data.probe=[{tmp_path / 'pics'}]", "launch.executor=local"]
    )
    with pytest.raises(DataError, match="no images in this class folder"):
        launch.watch([job], poll_s=0.5)


def test_ctrl_c_is_one_line_and_exit_130(monkeypatch, capsys):
    from studylib import cli, commands

    def interrupted(_args):
        raise KeyboardInterrupt

    monkeypatch.setattr(commands, "cmd_models", interrupted)
    assert cli.main(["models"]) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("studylib: interrupted:")


def test_sigterm_stops_a_command_as_ctrl_c_does(monkeypatch, capsys):
    from studylib import cli, commands

    def terminated(_args):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the signal arrives first

    monkeypatch.setattr(commands, "cmd_models", terminated)
    before = signal.getsignal(signal.SIGTERM)
    assert cli.main(["models"]) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("studylib: interrupted:")
    assert signal.getsignal(signal.SIGTERM) is before  # the caller's handler, back


def test_a_notebook_shows_a_studylib_error_as_its_one_line(capsys):
    from IPython.core.interactiveshell import InteractiveShell

    from studylib.errors import DataError

    shell = InteractiveShell.instance()
    try:
        result = shell.run_cell(
            "from studylib import errors\nerrors.one_line_in_notebooks()\n"
            "raise errors.DataError('x.npz: no key x_train')"
        )
    finally:
        InteractiveShell.clear_instance()
    assert isinstance(result.error_in_exec, DataError)  # the cell still fails
    out = capsys.readouterr()
    assert "studylib: error: x.npz: no key x_train" in out.out + out.err
    assert "Traceback" not in out.out + out.err
