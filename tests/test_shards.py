"""Streamed data: web dataset shards written in img2dataset's layout and image folders in ImageNet's
layout, read by ranks and DataLoader workers with every sample once per epoch (tests on this CPU
with gloo and small generated shards and folders)."""

import io
import json
import math
import os
import random
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from PIL import Image

from studylib import decode, shards
from studylib.config import load_experiment
from studylib.data import synthetic
from studylib.decode import crop_box
from studylib.errors import DataError
from studylib.shard_writer import write_shards
from studylib.shards import ImageFiles, file_index, read_index
from studylib.stream import ShardStream, epoch_shards
from studylib.weak_labels import simulate


def _shards(folder: Path, images: int, per_shard: int) -> list[dict]:
    data = synthetic(images, 8)
    return write_shards(
        data, simulate(data, load_experiment("smoke").tags), folder, per_shard=per_shard
    )


def test_shards_hold_jpg_json_and_txt_per_sample_as_img2dataset_writes_them(tmp_path):
    index = _shards(tmp_path, 40, 16)
    assert [s["samples"] for s in index] == [16, 16, 8] and read_index(tmp_path) == index
    with tarfile.open(tmp_path / "00000.tar") as tar:
        names = tar.getnames()
        meta = json.loads(tar.extractfile("000000003.json").read())
    assert (
        sorted(names[:3]) == ["000000000.jpg", "000000000.json", "000000000.txt"]
        and len(names) == 48
    )
    assert meta["caption"] == " ".join(meta["tags"]) and 0 <= meta["label"] < 10


def _rank(rank: int, world: int, folder: str, out: str, port: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    stream = ShardStream(Path(folder), batch_size=8, size=32, seed=3, workers=2)
    seen = {epoch: [keys for _, keys, _ in stream.epoch(epoch)] for epoch in (0, 1)}
    Path(out, f"{rank}.json").write_text(json.dumps(seen))
    dist.destroy_process_group()


def _two_ranks(tmp_path: Path, folder: Path, port: int) -> dict[int, dict[str, list[list[str]]]]:
    mp.start_processes(
        _rank, args=(2, str(folder), str(tmp_path), port), nprocs=2, join=True, start_method="spawn"
    )
    return {rank: json.loads((tmp_path / f"{rank}.json").read_text()) for rank in (0, 1)}


def test_two_ranks_of_two_workers_read_every_sample_once_per_epoch_in_equal_steps(
    tmp_path, free_port
):
    folder = tmp_path / "shards"
    _shards(folder, 320, 16)  # 20 shards
    seen = _two_ranks(tmp_path, folder, free_port())
    everything = {f"{i:09d}" for i in range(320)}
    for epoch in ("0", "1"):
        steps = [len(seen[rank][epoch]) for rank in (0, 1)]
        assert steps == [20, 20]  # 160 samples a rank, batches of 8
        keys = Counter(k for rank in (0, 1) for batch in seen[rank][epoch] for k in batch)
        assert set(keys) == everything and set(keys.values()) == {1}
    assert seen[0]["0"] != seen[0]["1"]  # each epoch its own shard order
    assert _two_ranks(tmp_path, folder, free_port()) == seen  # and the same order on a rerun


def test_unequal_shards_drop_the_surplus_so_ranks_take_equal_steps(tmp_path):
    index = _shards(tmp_path, 72, 16)  # shards of 16, 16, 16, 16, 8: the ranks get 3 and 2 of them
    streams = [
        ShardStream(tmp_path, batch_size=8, size=32, workers=2, rank=r, world=2) for r in (0, 1)
    ]
    # the 2 smallest shards: what the rank with 2 holds at least
    assert streams[0].steps() == (8 + 16) // 8
    for epoch in (0, 1, 2, 3):
        held = [sum(s["samples"] for s in epoch_shards(index, 0, epoch, r, 2)) for r in (0, 1)]
        assert min(held) >= 3 * 8
        batches = [list(s.epoch(epoch)) for s in streams]
        assert len(batches[0]) == len(batches[1]) == 3
        keys = [k for rank in batches for _, ks, _ in rank for k in ks]
        assert len(keys) == len(set(keys)) == 2 * 8 * 3  # the surplus dropped, nothing twice
        images, _, tags = batches[0][0]
        assert images.shape == (8, 3, 32, 32) and images.dtype == torch.uint8 and all(tags)


def test_a_bad_index_or_too_few_shards_is_one_line(tmp_path):
    _shards(tmp_path / "two", 40, 20)  # 40 samples: one batch of 24 in all, none a rank of two
    with pytest.raises(DataError, match="too few samples for one batch of 24.*at most 20"):
        ShardStream(tmp_path / "two", batch_size=24, size=32, rank=0, world=2)
    assert ShardStream(tmp_path / "two", batch_size=24, size=32, rank=0, world=1).steps() == 1
    _shards(tmp_path / "one", 16, 16)
    with pytest.raises(DataError, match="1 shards for 2 ranks"):
        ShardStream(tmp_path / "one", batch_size=8, size=32, rank=0, world=2)
    (tmp_path / "one" / "shards.json").write_text("{}")
    with pytest.raises(DataError, match="shards.json: not a shard index"):
        read_index(tmp_path / "one")


@pytest.mark.parametrize(
    "entry, message",
    [
        ({"name": "../other/00000.tar", "samples": 16}, "not a plain file name"),
        ({"name": "/dev/zero", "samples": 16}, "not a plain file name"),
        ({"name": ".", "samples": 16}, "not a plain file name"),
        ({"name": "00000.tar", "samples": 16}, "listed twice"),
        ({"name": "missing.tar", "samples": 16}, "not a regular file there"),
        ({"name": "00001.tar", "samples": -40}, "samples -40"),
        ({"name": "00001.tar", "samples": True}, "samples True"),
        ({"name": "00001.tar", "samples": 40.9}, "samples 40.9"),
    ],
)
def test_the_index_is_checked_where_it_is_read(tmp_path, entry, message):
    _shards(tmp_path, 32, 16)
    index = json.loads((tmp_path / "shards.json").read_text())
    index["shards"] = [index["shards"][0], entry]
    (tmp_path / "shards.json").write_text(json.dumps(index))
    with pytest.raises(DataError, match=message):
        read_index(tmp_path)


def test_a_tar_is_known_by_its_bytes_and_its_count_and_keys_are_checked(
    tmp_path, isolated_dirs, monkeypatch
):
    monkeypatch.setenv("STUDYLIB_CACHE", str(isolated_dirs / "cache"))
    _shards(tmp_path, 32, 16)
    before = shards.shard_fingerprint(tmp_path)
    counts, _ = shards.tag_counts(tmp_path)
    with tarfile.open(
        tmp_path / "00001.tar"
    ) as tar:  # re-tag every sample: the tar's size stays (512-byte blocks)
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    size = (tmp_path / "00001.tar").stat().st_size
    with tarfile.open(tmp_path / "00001.tar", "w") as tar:
        for member, data in members:
            if member.name.endswith(".json"):
                data = json.dumps({**json.loads(data), "tags": ["retagged"]}).encode()
            member.size = len(data)
            tar.addfile(member, io.BytesIO(data))
    assert (tmp_path / "00001.tar").stat().st_size == size
    assert shards.shard_fingerprint(tmp_path) != before  # another run name, and other tag counts
    assert shards.tag_counts(tmp_path)[0]["retagged"] == 16 and "retagged" not in counts
    index = json.loads((tmp_path / "shards.json").read_text())
    index["shards"][1]["samples"] = 10
    (tmp_path / "shards.json").write_text(json.dumps(index))
    with pytest.raises(DataError, match="00001.tar: holds 16 samples, shards.json lists 10"):
        shards.shard_fingerprint(tmp_path)
    with tarfile.open(tmp_path / "00001.tar", "a") as tar:  # a key's image twice
        tar.addfile(members[0][0], io.BytesIO(members[0][1]))
    with pytest.raises(DataError, match="appears twice"):
        shards.shard_fingerprint(tmp_path)
    (tmp_path / "00001.tar").write_bytes(b"not a tar at all" * 64)
    with pytest.raises(DataError, match="not a readable tar"):
        shards.shard_fingerprint(tmp_path)


def test_tags_that_are_not_a_list_of_strings_name_the_sample(tmp_path, isolated_dirs, monkeypatch):
    monkeypatch.setenv("STUDYLIB_CACHE", str(isolated_dirs / "cache"))
    _shards(tmp_path, 16, 16)
    with tarfile.open(tmp_path / "00000.tar") as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    with tarfile.open(tmp_path / "00000.tar", "w") as tar:
        for member, data in members:
            if member.name == "000000002.json":
                data = json.dumps({"tags": "cat"}).encode()
            member.size = len(data)
            tar.addfile(member, io.BytesIO(data))
    with pytest.raises(
        DataError, match=r"00000.tar: sample 000000002.json: tags are cat; allowed: a list"
    ):
        shards.tag_counts(tmp_path)
    image, key, why = decode.decode_sample(
        {"__key__": "k", "json": b'{"tags": "cat"}', "jpg": b""}, 32
    )
    assert image is None and "tags are cat" in why


def test_the_stream_is_the_same_with_any_number_of_loader_workers_and_resumes_on_another(tmp_path):
    """Worker counts set speed only: 0 to 3 workers give the same keys and pixels in the same
    batches, and an epoch resumed at a step with another worker count is the rest of the same
    epoch."""
    _shards(tmp_path, 200, 24)  # 9 unequal shards (the last holds 8)

    def epoch(workers: int, start: int = 0) -> list[tuple[list[str], torch.Tensor]]:
        stream = ShardStream(
            tmp_path, batch_size=8, size=16, seed=5, workers=workers, rank=0, world=1, crop_min=0.5
        )
        return [(keys, images) for images, keys, _ in stream.epoch(1, start)]

    whole = epoch(0)
    for workers in (1, 2, 3):
        other = epoch(workers)
        assert [k for k, _ in other] == [k for k, _ in whole], workers
        assert all(torch.equal(a, b) for (_, a), (_, b) in zip(other, whole, strict=True)), workers
    resumed = epoch(3, start=7)  # killed at step 7 with one worker count, resumed with another
    assert [k for k, _ in resumed] == [k for k, _ in whole[7:]]
    assert all(torch.equal(a, b) for (_, a), (_, b) in zip(resumed, whole[7:], strict=True))


def test_wsp_on_a_shard_pool_ends_with_the_same_weights_whatever_the_loader_workers(
    tmp_path, monkeypatch
):
    from studylib.stages import wsp

    _shards(tmp_path / "pool", 96, 16)
    weights = []
    # 1 and 3 DataLoader workers: the same run name, so each in its own runs folder
    for cpus in (
        2,
        4,
    ):
        monkeypatch.setenv("STUDYLIB_RUNS", str(tmp_path / f"runs{cpus}"))
        exp = load_experiment(
            "smoke",
            [
                f"data.pretrain={tmp_path / 'pool'}",
                "data.tag_vocabulary=8",
                "wsp.epochs=1",
                "wsp.batch_size=16",
                f"launch.cpus_per_task={cpus}",
                "model=pico",
            ],
        )
        weights.append(
            torch.load(wsp.pretrain(exp).path / "encoder.pth", weights_only=True)["state"]
        )
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_the_shards_command_writes_the_pool_and_refuses_a_folder_in_use(tmp_path, capsys):
    from studylib.cli import main

    out = tmp_path / "pool"
    assert main(["shards", "--preset", "smoke", "--out", str(out), "--per-shard", "100"]) == 0
    # smoke's pool: 512 synthetic images
    assert [s["samples"] for s in read_index(out)] == [100] * 5 + [12]
    assert "512 samples in 6 shards" in capsys.readouterr().out
    assert main(["shards", "--preset", "smoke", "--out", str(out)]) == 2
    assert "not an empty folder" in capsys.readouterr().err
    # tars from elsewhere (img2dataset) get their index by counting their samples
    written = read_index(out)
    (out / "shards.json").unlink()
    assert main(["shards", "--index", str(out)]) == 0 and read_index(out) == written
    assert "512 samples in 6 shards" in capsys.readouterr().out
    assert main(["shards", "--index", str(tmp_path)]) == 2
    assert "no .tar files there" in capsys.readouterr().err


def _damage(shard: Path, truncate: str, strip_meta: str) -> None:
    """Rewrite `shard` with sample `truncate`'s JPEG cut to half and sample `strip_meta` without its
    .json."""
    with tarfile.open(shard) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    with tarfile.open(shard, "w") as tar:
        for member, data in members:
            if member.name == f"{strip_meta}.json":
                continue
            if member.name == f"{truncate}.jpg":
                data = data[: len(data) // 2]
            member.size = len(data)
            tar.addfile(member, io.BytesIO(data))


def test_a_truncated_jpeg_and_a_sample_without_metadata_are_skipped_and_counted(tmp_path):
    index = _shards(tmp_path, 320, 16)  # 20 shards
    _damage(tmp_path / index[3]["name"], truncate="000000050", strip_meta="000000051")
    streams = [
        ShardStream(
            tmp_path, batch_size=8, size=32, seed=3, workers=2, rank=r, world=2, max_skipped=0.05
        )
        for r in (0, 1)
    ]
    batches = [list(stream.epoch(0)) for stream in streams]
    assert [len(b) for b in batches] == [20, 20]  # equal steps all the same
    skipped = dict(streams[0].skipped + streams[1].skipped)
    assert set(skipped) == {"000000050", "000000051"}
    assert "Premature end of JPEG" in skipped["000000050"] and skipped["000000051"] == "no json"
    assert streams[0].repeats + streams[1].repeats == 2  # the damaged rank's last batch filled up
    keys = Counter(k for rank in batches for _, ks, _ in rank for k in ks)
    assert set(keys) == {f"{i:09d}" for i in range(320)} - set(skipped)
    twice = sorted(keys.values())[-2:]
    assert sum(keys.values()) == 320 and twice == [2, 2]  # two repeats, the rest once
    strict = ShardStream(
        tmp_path, batch_size=8, size=32, seed=3, rank=0, world=1, max_skipped=0.001
    )
    with pytest.raises(
        DataError,
        match=r"[12] of rank 0's 320 samples in epoch 0 cannot be used \(first: "
        r"00000005[01].*allowed: at most 0.1% \(max_skipped\)",
    ):
        list(strict.epoch(0))


def test_mae_then_wsp_stream_a_shard_pool_and_wsp_learns_its_most_frequent_tags(
    tmp_path, isolated_dirs
):
    from studylib.cli import main
    from studylib.data import load_dataset
    from studylib.shards import tag_counts, vocabulary
    from studylib.stages import mae, wsp

    folder = tmp_path / "pool"
    # 8 shards
    assert main(["shards", "--preset", "smoke", "--out", str(folder), "--per-shard", "64"]) == 0
    counts = Counter()
    for shard in read_index(folder):
        with tarfile.open(folder / shard["name"]) as tar:
            metas = [json.loads(tar.extractfile(m).read()) for m in tar if m.name.endswith(".json")]
        counts.update(t for meta in metas for t in meta["tags"])
    expected = sorted(counts, key=lambda t: (-counts[t], t))[:12]
    overrides = [
        f"data.pretrain={folder}",
        "data.tag_vocabulary=12",
        "mae.epochs=1",
        "wsp.epochs=2",
        "launch.cpus_per_task=3",
    ]
    exp = load_experiment("smoke", overrides)
    mae_run = mae.pretrain(exp)
    wsp_run = wsp.pretrain(exp, mae_run)
    assert vocabulary(tag_counts(folder)[0], 12) == expected  # read back from its cache
    results = wsp_run.results()
    assert results["vocab_size"] == 12 and results["skipped_samples"] == 0
    # 8 steps of 64 an epoch
    assert results["images_seen"] == 2 * 512 and mae_run.results()["images_seen"] == 512
    assert wsp_run.identity["tag_vocabulary"] == 12 and wsp_run.identity["data"]["dataset"] == str(
        folder
    )
    losses = [m["loss"] for m in wsp_run.metrics()]
    assert len(losses) == 2 and losses[1] < losses[0]
    with pytest.raises(DataError, match="a folder of shards"):
        load_dataset(str(folder))
    # the README's command: the study reuses both runs, then probes
    study = [
        *overrides,
        "studies.arms=[mae_wsp]",
    ]
    assert main(["study", "--preset", "smoke", *[arg for o in study for arg in ("--set", o)]]) == 0
    key = load_experiment("smoke", study).results_key
    table = pd.read_csv(isolated_dirs / "results" / key / "default.csv").query("metric == 'top1'")
    # 10 classes
    assert set(table["run"].str.split("-").str[0]) == {"probe"} and (table["value"] > 10).all()


def _imagenet_layout(root: Path, per_class: int = 24) -> None:
    """root/train/<class>/<image>.JPEG, four classes, images of three sizes (none of them the
    model's)."""
    data = synthetic(4 * per_class, 8, num_classes=4, size=48)
    sizes = [(64, 48), (48, 64), (50, 50)]
    for i, (image, label) in enumerate(zip(data.train_images, data.train_labels, strict=True)):
        folder = root / "train" / f"n0{int(label)}"
        folder.mkdir(parents=True, exist_ok=True)
        pixels = Image.fromarray(image.permute(1, 2, 0).numpy()).resize(sizes[i % 3])
        pixels.save(folder / f"img{i:04d}.JPEG", quality=90)


def test_an_image_folder_streams_every_image_once_per_epoch_cropped_in_workers_from_its_own_size(
    tmp_path, monkeypatch
):
    _imagenet_layout(tmp_path)
    # skipped and counted
    (tmp_path / "train" / "n00" / "img0000.JPEG").write_bytes(b"\xff\xd8 not a jpeg")
    source = ImageFiles(tmp_path, per_unit=8)
    assert [u["samples"] for u in source.units] == [8] * 12 and source.classes == [
        "n00",
        "n01",
        "n02",
        "n03",
    ]
    monkeypatch.setattr(shards, "ImageFiles", lambda root: ImageFiles(root, per_unit=8))
    streams = [
        ShardStream(
            tmp_path,
            batch_size=8,
            size=32,
            seed=5,
            workers=2,
            rank=r,
            world=2,
            crop_min=0.3,
            max_skipped=0.05,
        )
        for r in (0, 1)
    ]
    for epoch in (0, 1):
        batches = [list(stream.epoch(epoch)) for stream in streams]
        assert [len(b) for b in batches] == [6, 6]  # 48 images a rank
        keys = Counter(k for rank in batches for _, ks, _ in rank for k in ks)
        assert set(keys) == {f[0] for f in file_index(tmp_path)[1]} - {"train/n00/img0000.JPEG"}
        # one repeat fills the damaged rank's last batch
        assert sum(keys.values()) == 96 and max(keys.values()) == 2
        assert [k for s in streams for k, _ in s.skipped] == ["train/n00/img0000.JPEG"]
        images, found, tags = batches[0][0]
        assert images.shape == (8, 3, 32, 32) and images.dtype == torch.uint8
        # the class is the tag
        assert all(tag == [key.split("/")[1]] for key, tag in zip(found, tags, strict=True))
    # a crop is drawn from (seed, epoch, key): the same whichever worker reads the image, another
    # the next epoch
    one_worker = ShardStream(
        tmp_path,
        batch_size=8,
        size=32,
        seed=5,
        workers=1,
        rank=0,
        world=2,
        crop_min=0.3,
        max_skipped=0.05,
    )
    crops = {
        k: img for images, ks, _ in streams[0].epoch(0) for k, img in zip(ks, images, strict=True)
    }
    again = {
        k: img for images, ks, _ in one_worker.epoch(0) for k, img in zip(ks, images, strict=True)
    }
    later = {
        k: img for images, ks, _ in one_worker.epoch(2) for k, img in zip(ks, images, strict=True)
    }
    assert crops.keys() == again.keys() and all(torch.equal(crops[k], again[k]) for k in crops)
    assert not all(torch.equal(crops[k], later[k]) for k in crops.keys() & later.keys())


def test_the_shards_command_copies_a_streamed_image_folder_with_simulated_hashtags(
    tmp_path, capsys
):
    from studylib.cli import main

    _imagenet_layout(tmp_path / "imagenet", per_class=8)
    out = tmp_path / "pool"
    args = ["--set", f"data.pretrain={tmp_path / 'imagenet'}", "--set", "data.stream=true"]
    assert main(["shards", "--preset", "smoke", *args, "--out", str(out), "--per-shard", "10"]) == 0
    assert [s["samples"] for s in read_index(out)] == [10, 10, 10, 2]
    files = file_index(tmp_path / "imagenet")[1]
    with tarfile.open(out / "00001.tar") as tar:
        jpeg = tar.extractfile("000000012.jpg").read()
        metas = [json.loads(tar.extractfile(m).read()) for m in tar if m.name.endswith(".json")]
    # the file itself, not re-encoded
    assert jpeg == (tmp_path / "imagenet" / files[12][0]).read_bytes()
    assert [m["label"] for m in metas] == [label for _, label in files[10:20]]
    # simulated: the class tag, most of the time
    assert sum(f"#n0{m['label']}" in m["tags"] for m in metas) >= 5
    batches = list(
        ShardStream(out, batch_size=8, size=32, workers=0, rank=0, world=1, crop_min=0.5).epoch(0)
    )
    assert len(batches) == 4 and batches[0][0].shape == (8, 3, 32, 32)


def test_shards_resized_to_a_short_side_and_a_bad_source_or_out_is_one_line_leaving_nothing(
    tmp_path, capsys
):
    from studylib.cli import main

    _imagenet_layout(tmp_path / "imagenet", per_class=3)
    args = [
        "shards",
        "--preset",
        "smoke",
        "--set",
        f"data.pretrain={tmp_path / 'imagenet'}",
        "--set",
        "data.stream=true",
        "--per-shard",
        "5",
    ]
    assert main([*args, "--out", str(tmp_path / "small"), "--max-size", "32"]) == 0
    sizes = set()
    for shard in read_index(tmp_path / "small"):
        with tarfile.open(tmp_path / "small" / shard["name"]) as tar:
            sizes |= {
                Image.open(io.BytesIO(tar.extractfile(m).read())).size
                for m in tar
                if m.name.endswith(".jpg")
            }
    # 64 x 48, 48 x 64 and 50 x 50, short side 32, aspect kept
    assert sizes == {
        (43, 32),
        (32, 43),
        (32, 32),
    }
    for bad, message in (
        (["--per-shard", "0"], "--per-shard >= 1"),
        (["--out", str(tmp_path / "imagenet" / "inside")], "inside the source"),
        (["--out", str(tmp_path / "small")], "not an empty folder"),
        (["--out", str(tmp_path / "small" / "00000.tar" / "x")], "is a file"),
    ):
        assert main([*args, "--out", str(tmp_path / "fresh"), *bad]) == 2
        assert message in capsys.readouterr().err
    (tmp_path / "imagenet" / "train" / "n00" / "broken.png").write_bytes(b"not a png")
    assert main([*args, "--out", str(tmp_path / "broken")]) == 2
    assert "broken.png: not an image that can be read" in capsys.readouterr().err
    assert not (tmp_path / "broken").exists() and not (tmp_path / "broken.partial").exists()
    assert not (tmp_path / "fresh").exists()


def test_the_file_index_is_listed_once_then_read_from_the_cache_until_a_class_folder_changes(
    tmp_path, monkeypatch
):
    _imagenet_layout(tmp_path, per_class=3)
    classes, files = file_index(tmp_path)
    assert (
        len(files) == 12
        and files == sorted(files)
        and {label for _, label in files} == {0, 1, 2, 3}
    )
    with monkeypatch.context() as patched:
        patched.setattr(shards.os, "scandir", lambda _: pytest.fail("listed again"))
        assert file_index(tmp_path) == (classes, files)
    name, label = files[0]
    (tmp_path / name).rename(tmp_path / Path(name).parent / "moved.JPEG")
    assert (str(Path(name).parent / "moved.JPEG"), label) in file_index(tmp_path)[1]


def test_a_streamed_folder_is_known_by_its_resolved_path_and_every_files_size_and_mtime(
    tmp_path, monkeypatch
):
    _imagenet_layout(tmp_path / "a" / "pool", per_class=3)
    _imagenet_layout(tmp_path / "b" / "pool", per_class=3)
    monkeypatch.chdir(tmp_path / "a")
    here = shards.index_fingerprint(Path("pool"))
    monkeypatch.chdir(tmp_path / "b")
    assert shards.index_fingerprint(Path("pool")) != here  # ./pool elsewhere is another folder
    root = tmp_path / "b" / "pool"
    before = shards.index_fingerprint(root)
    name = file_index(root)[1][0][0]
    folder = (root / name).parent
    stamp = folder.stat()
    (root / name).unlink()  # then the class folder's mtime restored, as rsync -a, cp -a and tar do
    os.utime(folder, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))
    shards._stat_fingerprint.cache_clear()  # a new process
    assert shards.index_fingerprint(root) != before and name not in dict(file_index(root)[1])
    image = next(p for p in root.rglob("*.JPEG"))
    image.write_bytes(image.read_bytes() + b"\0")  # other bytes, same name
    shards._stat_fingerprint.cache_clear()
    assert shards.index_fingerprint(root) not in (before, here)


def test_random_resized_crops_stay_inside_the_image_and_cover_the_asked_share():
    rng = random.Random(0)
    for width, height in ((500, 375), (64, 48), (32, 32)):
        for _ in range(200):
            left, top, right, bottom = crop_box(width, height, 0.2, rng)
            assert 0 <= left < right <= width and 0 <= top < bottom <= height
            share = (right - left) * (bottom - top) / (width * height)
            assert 0.18 < share <= 1.0
    assert crop_box(500, 375, None, rng) == (62, 0, 437, 375)  # no crop_min: the centre square


def test_mae_then_wsp_stream_an_image_folder_pool_with_its_classes_as_tags(
    tmp_path, isolated_dirs, monkeypatch
):
    from studylib.pool import open_pool
    from studylib.stages import mae, wsp, zeroshot

    _imagenet_layout(tmp_path / "imagenet", per_class=32)
    monkeypatch.setattr(shards, "ImageFiles", lambda root: ImageFiles(root, per_unit=16))
    overrides = [
        f"data.pretrain={tmp_path / 'imagenet'}",
        "data.stream=true",
        "mae.epochs=1",
        "wsp.epochs=2",
        "launch.cpus_per_task=3",
    ]
    exp = load_experiment("smoke", overrides)
    wsp_run = wsp.pretrain(exp, mae.pretrain(exp))
    results = wsp_run.results()
    assert (
        results["vocab_size"] == 4
        and results["images_seen"] == 2 * 128
        and results["skipped_samples"] == 0
    )
    assert wsp_run.identity["data"]["stream"] is True
    losses = [m["loss"] for m in wsp_run.metrics()]
    assert len(losses) == 2 and losses[1] < losses[0]
    # the same folder held in memory: another run
    in_memory = load_experiment("smoke", overrides[:1] + overrides[2:])
    assert wsp.run_for(in_memory, None).hash != wsp.run_for(exp, None).hash
    # LiT on the pool's own tags, zero-shot on the first probe dataset
    rows = zeroshot.rows(exp, wsp_run)
    lit = zeroshot.run_for(exp, wsp_run)
    assert {row["dataset"] for row in rows} == {"synthetic"} and lit.identity["evaluated_on"][
        "dataset"
    ] == "synthetic"
    # the special tokens and the four class names, words of the captions
    assert lit.results()["text_vocab"] == 3 + 4
    with pytest.raises(DataError, match="is streamed"):
        _ = open_pool(exp).images
    resampled = wsp.pretrain(
        load_experiment("smoke", [*overrides, "wsp.epochs=1", "wsp.rare_tag_threshold=0.5"])
    )
    assert math.isfinite(resampled.results()["final_loss"])  # tag shares from the file index


def test_an_epoch_resumed_at_any_step_is_the_rest_of_that_epoch_and_decodes_nothing_long_before_it(
    tmp_path, monkeypatch
):
    # 12 shards of 16 and one of 8: three lanes of unequal length
    index = _shards(tmp_path / "pool", 200, 16)
    _damage(tmp_path / "pool" / index[2]["name"], truncate="000000040", strip_meta="000000041")
    stream = ShardStream(
        tmp_path / "pool",
        batch_size=6,
        size=32,
        seed=3,
        workers=3,
        rank=0,
        world=1,
        crop_min=0.5,
        max_skipped=0.05,
    )
    whole = list(stream.epoch(1))
    assert len(whole) == 33 and stream.repeats == 2
    log, real = tmp_path / "decoded", decode.decode_sample

    def logged(sample: dict, *args) -> tuple:
        with open(log, "a") as out:
            out.write(sample["__key__"] + "\n")
        return real(sample, *args)

    monkeypatch.setattr("studylib.stream.decode_sample", logged)
    for start in (1, 8, 20, 32):
        log.write_text("")
        rest = list(stream.epoch(1, start))
        assert [keys for _, keys, _ in rest] == [keys for _, keys, _ in whole[start:]]
        assert all(
            torch.equal(a[0], b[0]) and a[2] == b[2]
            for a, b in zip(rest, whole[start:], strict=True)
        )
        before = {k for _, keys, _ in whole[:start] for k in keys}
        # at most the rest of the batch `start` begins in
        assert len(set(log.read_text().split()) & before) < 6


def test_a_streamed_jpeg_is_decoded_by_the_named_decoder_and_the_decoder_names_the_run(
    tmp_path, isolated_dirs, monkeypatch
):
    import cv2
    from torchvision.transforms.v2 import InterpolationMode
    from torchvision.transforms.v2.functional import resize

    from studylib.pool import open_pool
    from studylib.stages import mae

    _imagenet_layout(tmp_path / "pool", per_class=3)
    path = next((tmp_path / "pool").rglob("*.JPEG"))
    sample = {"__key__": "k", "json": b'{"tags": ["a"]}', "jpg": path.read_bytes()}
    # oracle: PIL's decode of the same file (libjpeg-turbo too), the box cut, OpenCV's resize of it
    with Image.open(path) as opened:
        whole = np.asarray(opened.convert("RGB"))
    left, top, right, bottom = crop_box(whole.shape[1], whole.shape[0], 0.3, random.Random("1:k"))
    window = whole[top:bottom, left:right]
    assert 24 < min(window.shape[:2]) and max(window.shape[:2]) < 48
    # enlarged, shrunk under 2x (bicubic); shrunk 2x or more on both sides (area: no moire)
    for size, how in ((64, cv2.INTER_CUBIC), (24, cv2.INTER_CUBIC), (8, cv2.INTER_AREA)):
        image, key, tags = decode.decode_sample(sample, size, crop_min=0.3, seed=1)
        expected = cv2.resize(window, (size, size), interpolation=how)
        assert (key, tags) == ("k", ["a"]) and np.array_equal(image.permute(1, 2, 0), expected)
        # torchvision's antialiased bicubic resize (the crop before) is close: under 2 of 255 on
        # this small sharp image (0.3 on 224 px crops of photos: benchmarks/decoders.py)
        window_chw = torch.from_numpy(window.copy()).permute(2, 0, 1)
        before = resize(window_chw, [size, size], InterpolationMode.BICUBIC, antialias=True)
        assert (image.int() - before.int()).abs().float().mean() < 2
    exp = load_experiment("smoke", [f"data.pretrain={tmp_path / 'pool'}", "data.stream=true"])
    assert open_pool(exp).identity()["decoder"] == decode.decoder(torch.device("cpu"))
    assert decode.decoder(torch.device("cuda")) != decode.decoder(torch.device("cpu"))
    before = mae.run_for(exp).name
    monkeypatch.setattr("studylib.pool.decoder", lambda device: "another decoder")
    assert mae.run_for(exp).name != before


def test_jpegs_decoded_in_batches_on_the_device_give_the_workers_stream(tmp_path):
    """The GPU path (workers leave JPEGs encoded; the main process decodes a batch in one call and
    crops it there) run on the CPU: the same samples, pixels, skips and repeats as decoding in the
    workers, a truncated JPEG found by the batched call."""
    index = _shards(tmp_path, 96, 16)
    _damage(tmp_path / index[1]["name"], truncate="000000020", strip_meta="000000021")
    made = {
        on: ShardStream(tmp_path, 8, 32, 3, 2, crop_min=0.5, max_skipped=0.05, decode_on=on)
        for on in (None, torch.device("cpu"))
    }
    epochs = {on: list(stream.epoch(1)) for on, stream in made.items()}
    workers, batched = epochs.values()
    assert len(workers) == len(batched) == 12
    for (a, keys_a, tags_a), (b, keys_b, tags_b) in zip(workers, batched, strict=True):
        assert torch.equal(a, b) and keys_a == keys_b and tags_a == tags_b
    skipped = [dict(stream.skipped) for stream in made.values()]
    assert skipped[0].keys() == skipped[1].keys() == {"000000020", "000000021"}
    assert "truncated" in skipped[1]["000000020"]
    assert [stream.repeats for stream in made.values()] == [2, 2]


def test_the_unfinished_folder_is_only_ever_this_programs_and_one_writer_holds_it(tmp_path):
    import fcntl

    from studylib.errors import DataError
    from studylib.shard_writer import PARTIAL_MARKER

    data = synthetic(16, 8)
    tags = simulate(data, load_experiment("smoke").tags)
    out, partial = tmp_path / "pool", tmp_path / "pool.partial"
    partial.mkdir()
    marker = partial / PARTIAL_MARKER
    marker.write_text("studylib shards, pid 1\n")
    with open(marker) as held:  # another writer, at work
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(DataError, match=r"is writing it \(studylib shards, pid 1\)"):
            write_shards(data, tags, out, per_shard=8)
        assert marker.exists() and not out.exists()
    # the same marker, held by no one: a killed writer's leftover, written again
    index = write_shards(data, tags, out, per_shard=8)
    assert [s["samples"] for s in index] == [8, 8] and read_index(out) == index
    assert not partial.exists() and not (out / PARTIAL_MARKER).exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pool"]
