"""What large runs need from the engine, on small ViTs on this CPU: gradient accumulation,
activation checkpointing, checkpoints inside an epoch that a SIGKILL then a rerun resume exactly,
and FSDP2 (gloo)."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from studylib.config import load_experiment
from studylib.engine import checkpoint_blocks, train_step
from studylib.models import MAE, vit
from studylib.runs import load_weights
from studylib.schema import WSPConfig
from studylib.stages import mae, wsp

REPO = Path(__file__).resolve().parent.parent


def _model(kind: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return (
        vit("micro", num_classes=20)
        if kind == "wsp"
        else MAE("micro", decoder_dim=64, decoder_heads=4)
    )


def _grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Gradients by parameter name, as the state dict names them (without the checkpoint wrapper's
    part)."""
    return {
        name.replace("_checkpoint_wrapped_module.", ""): p.grad.clone()
        for name, p in model.named_parameters()
        if p.grad is not None
    }


@pytest.mark.parametrize("kind", ["wsp", "mae"])
def test_four_slices_of_16_make_the_step_of_one_batch_of_64(kind):
    torch.manual_seed(1)
    images = torch.randn(64, 3, 32, 32)
    tags = torch.randint(-1, 20, (64, 5))
    grads = {}
    for slices in (1, 4):
        model = _model(kind)
        config = WSPConfig(accumulation_steps=slices)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        # the same MAE masks: drawn per slice, in the order of one batch's draw
        torch.manual_seed(2)
        loss = train_step(
            model,
            wsp.wsp_loss if kind == "wsp" else mae.mae_loss,
            images,
            tags,
            optimizer,
            config,
            None,
        )
        # (the gradients AdamW gets; its first step is about lr x sign, which
        grads[slices] = _grads(model)
        # turns float rounding in near-zero gradients into lr-sized differences, so weights
        # are not compared)
        assert torch.isfinite(loss)
    assert grads[1].keys() == grads[4].keys() and len(grads[1]) > 10
    for name, g in grads[1].items():
        torch.testing.assert_close(grads[4][name], g, rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("kind", ["finetune", "mae"])
def test_activation_checkpointing_gives_the_same_gradients_and_keys(kind):
    images = torch.randn(8, 3, 32, 32)
    grads, keys = {}, {}
    for on in (False, True):
        torch.manual_seed(0)
        model = vit("micro", num_classes=10, drop_path=0.2) if kind == "finetune" else MAE("micro")
        model.train()
        if on:
            checkpoint_blocks(model)
            wrapped = [m for m in model.modules() if type(m).__name__ == "CheckpointWrapper"]
            # the MAE's decoder blocks too
            assert len(wrapped) == (6 if kind == "finetune" else 6 + 2)
        torch.manual_seed(1)  # the same drop-path draws and masks, recomputation included
        out = model(images)
        (out.square().mean() if kind == "finetune" else out[0]).backward()
        grads[on], keys[on] = _grads(model), list(model.state_dict())
    assert keys[True] == keys[False] and grads[True].keys() == grads[False].keys()
    for name, g in grads[False].items():
        torch.testing.assert_close(grads[True][name], g, rtol=1e-5, atol=1e-7, msg=name)


KILLABLE = """
import hashlib, os, signal, sys
from studylib.config import load_experiment
from studylib.stages import mae, wsp
kill_at, real, calls = int(sys.argv[1]), wsp.wsp_loss, [0]
def loss(model, images, tags):
    calls[0] += 1
    digest = hashlib.sha256(images.numpy().tobytes() + tags.numpy().tobytes()).hexdigest()
    print("BATCH", digest[:16], flush=True)
    if calls[0] == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)
    return real(model, images, tags)
wsp.wsp_loss = loss
run = wsp.pretrain(load_experiment("smoke", sys.argv[2:]))
print("DONE", run.path, flush=True)
"""
STEPPED = ["wsp.epochs=3", "wsp.batch_size=16", "wsp.checkpoint_every_steps=5"]  # 32 steps an epoch


def _train(runs: Path, kill_at: int, overrides: list[str]) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "STUDYLIB_RUNS": str(runs),
        "OMP_NUM_THREADS": "1",
        "PYTHONUNBUFFERED": "1",
    }
    return subprocess.run(
        [sys.executable, "-c", KILLABLE, str(kill_at), *overrides],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.parametrize("pool", ["in memory", "shards"])
def test_sigkill_inside_an_epoch_then_rerun_sees_the_same_batches_and_ends_with_the_same_weights(
    pool, tmp_path
):
    """The pool held in memory (the rerun passes over the batches already trained) or streamed from
    shards (the rerun's loader starts at the saved step without reading what comes before it)."""
    overrides = list(STEPPED)
    if pool == "shards":
        from studylib.cli import main

        assert (
            main(
                [
                    "shards",
                    "--preset",
                    "smoke",
                    "--out",
                    str(tmp_path / "pool"),
                    "--per-shard",
                    "64",
                ]
            )
            == 0
        )
        overrides += [
            f"data.pretrain={tmp_path / 'pool'}",
            "data.tag_vocabulary=12",
            "launch.cpus_per_task=3",
        ]
    reference = _train(tmp_path / "reference", 0, overrides)
    assert reference.returncode == 0, reference.stderr
    batches = re.findall(r"BATCH (\w+)", reference.stdout)
    assert len(batches) == 3 * 32
    runs = tmp_path / "runs"
    # killed in epoch 2's step 13; its last checkpoint: after step 10
    killed = _train(runs, 32 + 13, overrides)
    assert killed.returncode == -9 and "DONE" not in killed.stdout
    folder = runs / "smoke" / wsp.run_for(load_experiment("smoke", overrides)).name
    saved = load_weights(folder / "checkpoint.pth")["state"]
    assert len(saved["history"]) == 1 and saved["position"]["step"] == 10
    resumed = _train(runs, 0, overrides)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming after epoch 1/3, step 10/32 of epoch 2" in resumed.stdout
    # exactly the batches still due
    assert re.findall(r"BATCH (\w+)", resumed.stdout) == batches[32 + 10 :]
    folders = [Path(r.stdout.split("DONE ")[1].split()[0]) for r in (reference, resumed)]
    one, two = (load_weights(f / "encoder.pth")["state"] for f in folders)
    assert one.keys() == two.keys() and all(torch.equal(one[k], two[k]) for k in one)
    histories = [load_weights(f / "checkpoint.pth")["state"]["history"] for f in folders]
    assert [m["loss"] for m in histories[0]] == [m["loss"] for m in histories[1]]


def test_step_checkpoints_and_accumulation_leave_the_run_identity_alone():
    plain = wsp.run_for(load_experiment("smoke"))
    tuned = wsp.run_for(
        load_experiment(
            "smoke",
            [
                "wsp.checkpoint_every_steps=100",
                "wsp.checkpoint_every_min=5",
                "wsp.accumulation_steps=4",
                "wsp.activation_checkpointing=true",
            ],
        )
    )
    assert plain.name == tuned.name
    with pytest.raises(
        Exception,
        match=r"wsp.accumulation_steps: 3 slices do not split wsp.batch_size 64 "
        r"\(64 images per task\); allowed: divisors of 64",
    ):
        load_experiment("smoke", ["wsp.accumulation_steps=3"])


def _wsp_on_two_ranks(
    rank: int, runs: str, sharding: str, crash_at: int, port: int, checkpoints: str
) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE="2",
        STUDYLIB_RUNS=runs,
        OMP_NUM_THREADS="1",
    )
    torch.set_num_threads(1)
    from studylib import distributed

    distributed.init()
    real, calls = wsp.wsp_loss, [0]

    def loss(model, images, tags):
        calls[0] += 1
        if calls[0] == crash_at:
            raise RuntimeError("crash")
        return real(model, images, tags)

    wsp.wsp_loss = loss
    try:
        wsp.pretrain(
            load_experiment(
                "smoke",
                [
                    "wsp.epochs=2",
                    f"wsp.sharding={sharding}",
                    f"wsp.checkpoint_format={checkpoints}",
                ],
            )
        )
    finally:
        torch.distributed.destroy_process_group()


def _two_ranks(
    runs: Path, sharding: str, port: int, crash_at: int = 0, checkpoints: str = "whole"
) -> dict[str, torch.Tensor]:
    import torch.multiprocessing as mp

    mp.start_processes(
        _wsp_on_two_ranks,
        args=(str(runs), sharding, crash_at, port, checkpoints),
        nprocs=2,
        join=True,
        start_method="spawn",
    )
    run = wsp.run_for(load_experiment("smoke", ["wsp.epochs=2"]))
    return load_weights(runs / "smoke" / run.name / "encoder.pth")["state"]


def test_fsdp2_matches_ddp_and_resumes_from_whole_or_sharded_checkpoints(
    tmp_path, monkeypatch, free_port
):
    """2 gloo ranks on this CPU, WSP on smoke data for 2 epochs: FSDP2 (fully_shard per block) ends
    where DDP does; an FSDP2 job that crashes in epoch 2 and is rerun ends where the uninterrupted
    one does, from its whole-tensor checkpoint.pth or from a sharded checkpoint
    (torch.distributed.checkpoint: checkpoint.dcp/, one file of shards a rank), which a single
    process also resumes (the shards read back resharded)."""
    ddp = _two_ranks(tmp_path / "ddp", "ddp", free_port())
    fsdp = _two_ranks(tmp_path / "fsdp", "fsdp", free_port())
    assert ddp.keys() == fsdp.keys()
    worst = max((ddp[k] - fsdp[k]).abs().max().item() for k in ddp)
    print(f"largest weight difference, FSDP2 vs DDP: {worst:.2e}")
    assert worst < 1e-4
    with pytest.raises(Exception, match="crash"):
        _two_ranks(
            tmp_path / "crashed", "fsdp", free_port(), crash_at=8 + 3
        )  # smoke: 8 steps an epoch
    checkpoint = load_weights(
        next((tmp_path / "crashed" / "smoke").glob("wsp-*")) / "checkpoint.pth"
    )["state"]
    assert len(checkpoint["history"]) == 1 and all(
        type(v) is torch.Tensor for v in checkpoint["model"].values()
    )
    resumed = _two_ranks(tmp_path / "crashed", "fsdp", free_port())
    assert max((resumed[k] - fsdp[k]).abs().max().item() for k in fsdp) < 1e-6

    with pytest.raises(Exception, match="crash"):
        _two_ranks(tmp_path / "sharded", "fsdp", free_port(), crash_at=8 + 3, checkpoints="sharded")
    folder = next((tmp_path / "sharded" / "smoke").glob("wsp-*"))
    assert sorted(p.name for p in (folder / "checkpoint.dcp").iterdir()) == [
        ".metadata",
        "__0_0.distcp",
        "__1_0.distcp",
    ]
    assert not (folder / "checkpoint.pth").exists()
    shutil.copytree(tmp_path / "sharded", tmp_path / "one process")
    resumed = _two_ranks(tmp_path / "sharded", "fsdp", free_port(), checkpoints="sharded")
    assert max((resumed[k] - fsdp[k]).abs().max().item() for k in fsdp) < 1e-6
    monkeypatch.setenv("STUDYLIB_RUNS", str(tmp_path / "one process"))
    run = wsp.pretrain(load_experiment("smoke", ["wsp.epochs=2", "wsp.checkpoint_format=sharded"]))
    alone = load_weights(run.path / "encoder.pth")["state"]
    assert (
        len(run.metrics()) == 2
        and max((alone[k] - fsdp[k]).abs().max().item() for k in fsdp) < 1e-4
    )


def _features_on_rank(rank: int, out: str, port: int) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE="2",
        OMP_NUM_THREADS="1",
    )
    torch.set_num_threads(1)
    from studylib import distributed
    from studylib.data import synthetic
    from studylib.features import extract_features

    distributed.init()
    torch.manual_seed(0)
    calls = []
    encoder = vit("micro")
    encoder.register_forward_hook(lambda _module, inputs, _out: calls.append(len(inputs[0])))
    features = extract_features(
        encoder, synthetic(13, 1).train_images, torch.device("cpu"), None, batch_size=4
    )
    torch.save({"features": features, "calls": calls}, Path(out) / f"{rank}.pt")
    torch.distributed.destroy_process_group()


def test_two_ranks_extract_each_their_half_of_the_features_and_both_receive_all_in_order(
    tmp_path, free_port
):
    import torch.multiprocessing as mp

    from studylib.data import synthetic
    from studylib.features import extract_features

    mp.start_processes(
        _features_on_rank,
        args=(str(tmp_path), free_port()),
        nprocs=2,
        join=True,
        start_method="spawn",
    )
    torch.manual_seed(0)
    alone = extract_features(
        vit("micro"), synthetic(13, 1).train_images, torch.device("cpu"), None, batch_size=4
    )
    ranks = [torch.load(tmp_path / f"{rank}.pt") for rank in (0, 1)]
    for rank in ranks:
        assert rank["features"].shape == alone.shape == (13, 128)  # micro: 128 wide
        torch.testing.assert_close(rank["features"], alone, atol=1e-5, rtol=1e-5)
        assert rank["calls"] == [4, 3]  # 7 of the 13 images each (the second rank's last one a pad)
