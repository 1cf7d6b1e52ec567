"""Web dataset shards: written in img2dataset's layout, streamed by ranks and DataLoader workers with every
sample once per epoch (tests on this CPU with gloo and small generated shards)."""

import json
import os
import tarfile
from collections import Counter
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from studylib.config import load_experiment
from studylib.data import synthetic
from studylib.errors import DataError
from studylib.shards import ShardStream, epoch_shards, read_index, write_shards
from studylib.weak_labels import simulate


def _shards(folder: Path, images: int, per_shard: int) -> list[dict]:
    data = synthetic(images, 8)
    return write_shards(data, simulate(data, load_experiment("smoke").tags), folder, per_shard=per_shard)


def test_shards_hold_jpg_json_and_txt_per_sample_as_img2dataset_writes_them(tmp_path):
    index = _shards(tmp_path, 40, 16)
    assert [s["samples"] for s in index] == [16, 16, 8] and read_index(tmp_path) == index
    with tarfile.open(tmp_path / "00000.tar") as tar:
        names = tar.getnames()
        meta = json.loads(tar.extractfile("000000003.json").read())
    assert sorted(names[:3]) == ["000000000.jpg", "000000000.json", "000000000.txt"] and len(names) == 48
    assert meta["caption"] == " ".join(meta["tags"]) and 0 <= meta["label"] < 10


def _rank(rank: int, world: int, folder: str, out: str, port: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    stream = ShardStream(Path(folder), batch_size=8, size=32, seed=3, workers=2)
    seen = {epoch: [keys for _, keys, _ in stream.epoch(epoch)] for epoch in (0, 1)}
    Path(out, f"{rank}.json").write_text(json.dumps(seen))
    dist.destroy_process_group()


def _two_ranks(tmp_path: Path, folder: Path, port: int) -> dict[int, dict[str, list[list[str]]]]:
    mp.start_processes(_rank, args=(2, str(folder), str(tmp_path), port), nprocs=2, join=True, start_method="spawn")
    return {rank: json.loads((tmp_path / f"{rank}.json").read_text()) for rank in (0, 1)}


def test_two_ranks_of_two_workers_read_every_sample_once_per_epoch_in_equal_steps(tmp_path):
    folder = tmp_path / "shards"
    _shards(folder, 320, 16)  # 20 shards
    seen = _two_ranks(tmp_path, folder, 29517)
    everything = {f"{i:09d}" for i in range(320)}
    for epoch in ("0", "1"):
        steps = [len(seen[rank][epoch]) for rank in (0, 1)]
        assert steps == [20, 20]  # 160 samples a rank, batches of 8
        keys = Counter(k for rank in (0, 1) for batch in seen[rank][epoch] for k in batch)
        assert set(keys) == everything and set(keys.values()) == {1}
    assert seen[0]["0"] != seen[0]["1"]  # each epoch its own shard order
    assert _two_ranks(tmp_path, folder, 29518) == seen  # and the same order on a rerun


def test_unequal_shards_drop_the_surplus_so_ranks_take_equal_steps(tmp_path):
    index = _shards(tmp_path, 72, 16)  # shards of 16, 16, 16, 16, 8: the ranks get 3 and 2 of them
    streams = [ShardStream(tmp_path, batch_size=8, size=32, workers=2, rank=r, world=2) for r in (0, 1)]
    for epoch in (0, 1):
        held = [sum(s["samples"] for s in epoch_shards(index, 0, epoch, r, 2)) for r in (0, 1)]
        batches = [list(s.epoch(epoch)) for s in streams]
        assert len(batches[0]) == len(batches[1]) == min(held) // 8 < max(held) // 8
        keys = [k for rank in batches for _, ks, _ in rank for k in ks]
        assert len(keys) == len(set(keys)) == 2 * 8 * (min(held) // 8)  # the surplus dropped, nothing twice
        images, _, tags = batches[0][0]
        assert images.shape == (8, 3, 32, 32) and images.dtype == torch.uint8 and all(tags)


def test_a_bad_index_or_too_few_shards_is_one_line(tmp_path):
    _shards(tmp_path, 16, 16)
    with pytest.raises(DataError, match="1 shards for 2 ranks"):
        ShardStream(tmp_path, batch_size=8, size=32, rank=0, world=2)
    (tmp_path / "shards.json").write_text("{}")
    with pytest.raises(DataError, match="shards.json: not a shard index"):
        read_index(tmp_path)


def test_the_shards_command_writes_the_pool_and_refuses_a_folder_in_use(tmp_path, capsys):
    from studylib.cli import main

    out = tmp_path / "pool"
    assert main(["shards", "--preset", "smoke", "--out", str(out), "--per-shard", "100"]) == 0
    assert [s["samples"] for s in read_index(out)] == [100] * 5 + [12]  # smoke's pool: 512 synthetic images
    assert "512 samples in 6 shards" in capsys.readouterr().out
    assert main(["shards", "--preset", "smoke", "--out", str(out)]) == 2
    assert "not empty" in capsys.readouterr().err
