"""Crashes, kills, corrupt checkpoints, divergence and two launches of one run."""

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from studylib.cli import main
from studylib.config import load_experiment
from studylib.errors import DivergedError
from studylib.runs import load_weights
from studylib.stages import wsp

REPO = Path(__file__).resolve().parent.parent
WSP_SCRIPT = """
import sys
from studylib.config import load_experiment
from studylib.stages import wsp
run = wsp.pretrain(load_experiment("smoke", sys.argv[1:]))
print("FINAL", repr(run.results()["final_loss"]), run.path)
"""
OVERRIDES = ["wsp.epochs=4"]


def _launch(runs: Path) -> subprocess.Popen:
    env = {
        **os.environ,
        "STUDYLIB_RUNS": str(runs),
        "OMP_NUM_THREADS": "1",
        "PYTHONUNBUFFERED": "1",
    }
    return subprocess.Popen(
        [sys.executable, "-c", WSP_SCRIPT, *OVERRIDES],
        env=env,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _final_loss(out: str) -> float:
    return float(next(line.split()[1] for line in out.splitlines() if line.startswith("FINAL")))


def _run_folder(runs: Path) -> Path:
    return runs / "smoke" / wsp.run_for(load_experiment("smoke", OVERRIDES)).name


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> float:
    out, err = _launch(tmp_path_factory.mktemp("reference")).communicate(timeout=300)
    return _final_loss(out)


def _wait_for(condition, timeout: float = 120.0, poll: float = 0.001) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(poll)


def _epochs(folder: Path) -> int:
    metrics = folder / "metrics.jsonl"
    return len(metrics.read_text().splitlines()) if metrics.exists() else 0


def _writing_checkpoint(folder: Path) -> bool:
    return folder.exists() and any(
        name.startswith((".checkpoint.pth", "checkpoint.pth.new")) for name in os.listdir(folder)
    )


@pytest.mark.parametrize("where", ["mid-epoch", "writing-checkpoint"])
def test_sigkill_then_rerun_matches_an_uninterrupted_run(where, tmp_path, uninterrupted):
    runs = tmp_path / "runs"
    folder = _run_folder(runs)
    process = _launch(runs)
    if where == "mid-epoch":
        _wait_for(lambda: _epochs(folder) >= 2, poll=0.05)
        time.sleep(0.5)
    else:
        _wait_for(
            lambda: (
                process.poll() is not None or (_epochs(folder) >= 1 and _writing_checkpoint(folder))
            )
        )
        assert process.poll() is None, "never saw a checkpoint being written"
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (folder / "results.json").exists()
    done = _epochs(folder)
    out, err = _launch(runs).communicate(timeout=300)
    assert f"resuming after epoch {done}/4" in out or (done == 0 and "epoch 1/4" in out), out + err
    assert re.findall(r"\] epoch (\d+)/4 loss", out) == [str(e) for e in range(done + 1, 5)]
    assert _final_loss(out) == pytest.approx(uninterrupted, rel=1e-6)


def test_corrupt_checkpoint_falls_back_to_the_previous_one(tmp_path, uninterrupted):
    runs = tmp_path / "runs"
    folder = _run_folder(runs)
    process = _launch(runs)
    _wait_for(lambda: _epochs(folder) >= 3, poll=0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    checkpoint = folder / "checkpoint.pth"
    checkpoint.write_bytes(checkpoint.read_bytes()[: checkpoint.stat().st_size // 2])  # truncated
    previous = load_weights(checkpoint)["state"]["history"]  # falls back: one epoch fewer
    assert len(previous) == _epochs(folder) - 1
    out, err = _launch(runs).communicate(timeout=300)
    assert "checkpoint.pth: checksum does not match" in err
    assert f"resuming after epoch {len(previous)}/4" in out
    assert _final_loss(out) == pytest.approx(uninterrupted, rel=1e-6)


def test_second_launch_waits_for_the_first_and_does_not_retrain(tmp_path):
    runs = tmp_path / "runs"
    folder = _run_folder(runs)
    first = _launch(runs)
    _wait_for(
        lambda: (folder / ".lock").exists() and "pid" in (folder / ".lock").read_text(), poll=0.02
    )
    second = _launch(runs)
    out1, _ = first.communicate(timeout=300)
    out2, err2 = second.communicate(timeout=300)
    assert f"being trained by pid {first.pid}" in err2
    assert first.returncode == second.returncode == 0
    assert "epoch 1/4 loss" in out1 and "loss" not in out2.replace("final_loss", "")
    assert _epochs(folder) == 4 and _final_loss(out1) == _final_loss(out2)


def test_nan_loss_stops_with_run_epoch_and_step(smoke, monkeypatch, capsys):
    real = wsp.wsp_loss
    steps = {"n": 0}

    def nan_in_epoch_2(model, images, tags):
        steps["n"] += 1
        loss = real(model, images, tags)
        return loss * float("nan") if steps["n"] == 8 + 3 else loss

    monkeypatch.setattr(wsp, "wsp_loss", nan_in_epoch_2)
    with pytest.raises(
        DivergedError,
        match=r"wsp-[0-9a-f]{8}: loss is nan at epoch 2, step 3/8; the checkpoint "
        r"of epoch 1 is kept",
    ):
        wsp.pretrain(smoke)
    run = wsp.run_for(smoke)
    assert len(run.load(run.checkpoint.name)["history"]) == 1 and not run.done
    steps["n"] = 0
    monkeypatch.setattr(wsp, "wsp_loss", lambda m, x, t: real(m, x, t) * float("inf"))
    assert main(["study", "--preset", "smoke"]) == 1  # the CLI reports it and fails
    assert "studylib: diverged:" in capsys.readouterr().err


def test_nan_loss_stops_at_the_next_log_point_not_at_the_epoch_end(monkeypatch):
    """A loss that goes NaN at step 3 of a 32-step epoch stops training at step 10 (the first log
    point after it, LOG_EVERY_STEPS), not after the epoch's 29 more steps."""
    from studylib.engine import LOG_EVERY_STEPS

    exp = load_experiment("smoke", ["data.synthetic_train=512", "wsp.batch_size=16"])
    real, steps = wsp.wsp_loss, {"n": 0}

    def nan_at_step_3(model, images, tags):
        steps["n"] += 1
        return real(model, images, tags) * (float("nan") if steps["n"] == 3 else 1.0)

    monkeypatch.setattr(wsp, "wsp_loss", nan_at_step_3)
    with pytest.raises(DivergedError, match=r"loss is nan at epoch 1, step 3/32; no checkpoint"):
        wsp.pretrain(exp)
    assert steps["n"] == LOG_EVERY_STEPS == 10
