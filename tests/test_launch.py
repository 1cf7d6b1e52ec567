"""Jobs through submitit on the local and debug executors, and on a real one-node SLURM cluster
(scripts/slurm_cluster.sh, started here when it is not up)."""

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from studylib.config import load_experiment
from studylib.errors import JobError
from studylib.launch import StudyJob, progress, submit, sweep, watch
from studylib.stages import mae, wsp

REPO = Path(__file__).resolve().parent.parent
SMALL = ["launch.cpus_per_task=1", "launch.mem_gb=1", "launch.timeout_min=10"]


def test_debug_executor_runs_in_process():
    job = submit("mae", "smoke", ["launch.executor=debug"])
    (run,) = job.result()  # the arm "mae": a chain of one run
    assert run.done and run.results()["epochs"] == 2


def test_local_executor_runs_a_real_process(tmp_path):
    job = submit("wsp", "smoke", ["launch.executor=local", *SMALL], folder=tmp_path / "jobs")
    ((run,),) = watch([job], poll_s=0.5)
    assert run.done and "epoch 2/2" in progress(job)


def test_ctrl_c_on_a_local_job_is_one_line_no_traceback_and_no_process_left(tmp_path):
    """As a terminal does: SIGINT to the whole process group (the command, submitit's local
    controller and the job) once the job trains; the job is long, so the outcome is the same on a
    fast machine."""
    proc, jobs = _training_command(tmp_path, "submit", "mae", "--set", "launch.executor=local")
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith(
        "studylib: interrupted:"
    )
    assert "KeyboardInterrupt" in (jobs / "local_controllers.err").read_text()
    deadline = time.monotonic() + 60
    while _group_alive(proc.pid):
        assert time.monotonic() < deadline, "a process of the job outlived Ctrl-C"
        time.sleep(0.5)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def test_unknown_target_is_a_clear_error():
    with pytest.raises(
        Exception, match=r"job target 'train' is unknown; allowed: \[.*'default'.*'mae'.*'wsp'"
    ):
        StudyJob("train")


def test_requeues_are_bounded(monkeypatch, smoke):
    job = StudyJob("mae", max_requeues=2)
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    again = job.checkpoint(smoke)  # the same call, submitted again
    assert again.function is job and again.args == (smoke,)
    monkeypatch.setenv("SLURM_RESTART_COUNT", "2")
    assert job.checkpoint(smoke) is None


@pytest.fixture(scope="module")
def slurm():
    result = subprocess.run(
        ["bash", str(REPO / "scripts" / "slurm_cluster.sh"), "start"],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        if os.environ.get("CI"):
            pytest.fail(f"the SLURM cluster did not start:\n{result.stdout}\n{result.stderr}")
        pytest.skip(f"no SLURM cluster here: {result.stderr.strip().splitlines()[-1:]}")
    return "slurm"


def _slurm(*extra):
    return ["launch.executor=slurm", *SMALL, *extra]


def _wait_epochs(run, n, timeout=300):
    deadline = time.monotonic() + timeout
    while len(run.metrics()) < n:
        assert time.monotonic() < deadline, "the job made no progress"
        time.sleep(0.5)


def test_slurm_job_lands_its_results_in_the_run_folder(slurm, tmp_path):
    job = submit("mae", "smoke", _slurm(), folder=tmp_path / "jobs")
    assert job.job_id.isdigit()
    ((run,),) = watch([job], poll_s=1)
    assert (run.path / "results.json").exists() and (run.path / "encoder.pth").exists()
    assert "epoch 2/2" in job.stdout()


@pytest.mark.parametrize("stage", [wsp, mae], ids=["wsp", "mae"])
def test_two_task_ddp_job_matches_one_process(stage, slurm, tmp_path, monkeypatch):
    """Gloo DDP over 2 tasks vs one process with the same global batch (64): same epochs, losses
    within 1e-4 relative and weights within 1e-3 absolute (float sums in another order, amplified a
    little by Adam)."""
    overrides = ["wsp.epochs=2"]
    single = stage.pretrain(load_experiment("smoke", overrides))
    monkeypatch.setenv("STUDYLIB_RUNS", str(tmp_path / "ddp-runs"))
    target = stage.__name__.rsplit(".", 1)[1]
    job = submit(
        target, "smoke", _slurm("launch.tasks_per_node=2", *overrides), folder=tmp_path / "jobs"
    )
    results = watch([job], poll_s=1)[0]
    assert len(results) == 2  # one result per task, each the arm's chain of runs
    ddp = results[0][-1]
    assert ddp.path != single.path and ddp.name == single.name
    for a, b in zip(single.metrics(), ddp.metrics(), strict=True):
        assert a["epoch"] == b["epoch"] and a["loss"] == pytest.approx(b["loss"], rel=1e-4)
    one, two = single.load("encoder.pth"), ddp.load("encoder.pth")
    assert one.keys() == two.keys()
    worst = max((one[k] - two[k]).abs().max().item() for k in one)
    print(f"largest weight difference, {target}: {worst:.2e}")
    assert worst < 1e-3, worst
    assert results[1][-1].path == ddp.path  # rank 1 trained the same run
    assert not list(ddp.path.glob(".*.tmp")) and not list(ddp.path.glob("*.new"))


def test_requeued_job_resumes_without_repeating_epochs(slurm, tmp_path):
    job = submit("wsp", "smoke", _slurm("wsp.epochs=8"), folder=tmp_path / "jobs")
    run = wsp.run_for(load_experiment("smoke", ["wsp.epochs=8"]))
    _wait_epochs(run, 2)
    subprocess.run(["scontrol", "requeue", job.job_id], check=True)
    ((finished,),) = watch([job], poll_s=1)  # one job, whose arm is one run
    assert [m["epoch"] for m in finished.metrics()] == list(range(1, 9))
    log = job.stdout()
    assert "resuming after epoch" in log
    resumed_at = int(log.split("resuming after epoch ")[1].split("/")[0])
    assert resumed_at >= 2
    # an epoch's closing line, not the progress lines inside it ('epoch 6/8 step 3/8 ...'), which a
    # slow machine prints more of
    ends = [m.group(1) for m in re.finditer(r"\] epoch (\d+/8)(?! step)", log)]
    assert ends[-(8 - resumed_at) :] == [f"{e}/8" for e in range(resumed_at + 1, 9)]


def test_a_job_that_dies_leaving_no_result_ends_the_watch_with_one_line(slurm, tmp_path):
    """A job killed outside Python (here scancel; as well a log SLURM could not open, the
    out-of-memory killer) leaves no result. This cluster keeps no job accounting, so sacct never
    tells submitit the job ended: watch must see that squeue no longer lists it, not wait for ever.
    Its logs lie in the jobs folder itself, which exists before sbatch runs. The job is long, so
    it cannot end before the scancel on a fast machine."""
    job = submit("wsp", "smoke", _slurm("wsp.epochs=500"), folder=tmp_path / "jobs")
    assert job.paths.stdout.parent == tmp_path / "jobs"
    _wait_epochs(wsp.run_for(load_experiment("smoke", ["wsp.epochs=500"])), 1)
    subprocess.run(["scancel", job.job_id], check=True)
    with pytest.raises(
        JobError,
        match=rf"^job {job.job_id}: SLURM no longer lists it and it left "
        "no result; its log: .*_0_log.err$",
    ):
        watch([job], poll_s=1)


def test_preemption_signal_inside_an_epoch_checkpoints_that_step_and_the_requeued_job_resumes_there(
    slurm, tmp_path
):
    """SLURM's warning signal (submitit's USR2) in the middle of an epoch: the engine finishes the
    step, writes the checkpoint with its position, submitit requeues the job, and the job resumes at
    that step."""
    # 512 steps an epoch
    overrides = [
        "wsp.epochs=2",
        "wsp.batch_size=4",
        "data.synthetic_train=2048",
    ]
    job = submit("wsp", "smoke", _slurm(*overrides), folder=tmp_path / "jobs")
    run = wsp.run_for(load_experiment("smoke", overrides))
    deadline = time.monotonic() + 300
    while not (run.path / "tensorboard").exists():  # training has begun
        assert time.monotonic() < deadline and job.state not in ("FAILED", "COMPLETED"), job.state
        time.sleep(0.2)
    time.sleep(2)
    subprocess.run(["scancel", "--signal=USR2", job.job_id], check=True)
    ((finished,),) = watch([job], poll_s=1)
    log = job.stdout()
    assert "preempted (signal SIGUSR2): checkpoint written" in log, log[-2000:]
    step = re.search(r"resuming after epoch (\d)/2, step (\d+)/512 of epoch", log)
    assert step and 0 < int(step.group(2)) < 512, log[-2000:]
    assert [m["epoch"] for m in finished.metrics()] == [1, 2] and finished.done


def test_sweep_runs_as_a_job_array(slurm, tmp_path):
    points = [["mae.mask_ratio=0.5"], ["mae.mask_ratio=0.6"], ["mae.mask_ratio=0.75"]]
    jobs = sweep("mae", "smoke", points, _slurm(), folder=tmp_path / "jobs")
    assert len({job.job_id.split("_")[0] for job in jobs}) == 1  # one array
    assert sorted(job.job_id.split("_")[1] for job in jobs) == ["0", "1", "2"]
    runs = [chain[-1] for chain in watch(jobs, poll_s=1)]
    assert len({run.path for run in runs}) == 3 and all(run.done for run in runs)
    assert [run.experiment.mae.mask_ratio for run in runs] == [0.5, 0.6, 0.75]
    assert torch.is_tensor(runs[0].load("encoder.pth")["cls_token"])


def test_two_task_ddp_study_job_runs_every_stage_once(slurm, tmp_path, isolated_dirs):
    """The whole study as one 2-task job: rank 0 decides and writes, rank 1 trains alongside; probes
    extract features of half the images on each rank, gathered in order on both, so labels line
    up."""
    job = submit(
        "default",
        "smoke",
        _slurm("launch.tasks_per_node=2", "studies.arms=[wsp,mae_wsp]"),
        folder=tmp_path / "jobs",
    )
    tables = watch([job], poll_s=1)[0]
    assert len(tables) == 2
    top1 = tables[0].query("metric == 'top1'")
    assert len(top1) == 2 and (top1["value"] > 10).all()  # above chance on 10 classes
    assert tables[0].equals(tables[1])  # both ranks report the same finished runs
    runs = isolated_dirs / "runs" / "smoke"
    assert sorted(p.name.split("-")[0] for p in runs.iterdir() if p.name != "jobs") == [
        "mae",
        "probe",
        "probe",
        "wsp",
        "wsp",
    ]
    key = load_experiment("smoke", ["studies.arms=[wsp,mae_wsp]"]).results_key
    assert (isolated_dirs / "results" / key / "default.csv").exists()


def test_an_error_inside_a_slurm_job_reaches_the_caller_as_its_one_line(slurm, tmp_path):
    from studylib.errors import DataError

    # passes the checks at submission (config, batches), fails when the job reads its probe data
    (tmp_path / "pics" / "cat").mkdir(parents=True)
    job = submit(
        "default", "smoke", _slurm(f"data.probe=[{tmp_path / 'pics'}]"), folder=tmp_path / "jobs"
    )
    with pytest.raises(DataError, match="no images in this class folder") as raised:
        watch([job], poll_s=1)
    assert "\n" not in str(raised.value)


def test_progress_lines_say_how_far_a_run_is():
    from studylib.launch import done_fraction

    assert done_fraction("[wsp-1a2b] epoch 2/4 step 10/20 loss 4.1 700 img/s eta 1m05s") == 0.375
    assert done_fraction("[wsp-1a2b] epoch 2/4 loss 4.1 lr 1e-3 700 img/s 12.0 s") == 0.5
    assert done_fraction("[default] seed 1: 2 of 3, eta 5m00s") is None


def test_training_prints_step_progress_and_reuse_where_no_terminal_shows_a_bar(
    monkeypatch, capsys, smoke
):
    import re

    from studylib import engine

    monkeypatch.setattr(engine, "PROGRESS_EVERY_S", 0.0)
    monkeypatch.setattr(engine, "LOG_EVERY_STEPS", 4)
    run = wsp.pretrain(smoke)  # pytest's captured output is no terminal: lines, not a bar
    out = capsys.readouterr().out
    # the ETA as studylib.io.duration writes it: 12s, 3m05s, 1h02m (a loaded machine is slow)
    eta = r"(?:\d+s|\d+m\d\ds|\d+h\d\dm)"
    steps = re.findall(
        rf"\[{run.name}\] epoch (\d)/2 step (\d+)/8 loss \d+\.\d+ \d+ img/s eta {eta}", out
    )
    assert steps == [("1", "4"), ("1", "8"), ("2", "4"), ("2", "8")]
    wsp.pretrain(smoke)
    assert f"[{run.name}] reused: finished earlier" in capsys.readouterr().out


def test_every_training_run_writes_tensorboard_scalars_and_mae_its_reconstructions(smoke):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = mae.pretrain(smoke)
    events = EventAccumulator(
        str(run.path / "tensorboard"), size_guidance={"images": 0, "scalars": 0}
    )
    events.Reload()
    assert {"train/loss", "train/lr", "train/grad_norm", "train/images_per_s", "epoch/loss"} <= set(
        events.Tags()["scalars"]
    )
    assert [e.step for e in events.Scalars("epoch/loss")] == [1, 2]
    assert all(e.value > 0 for e in events.Scalars("train/grad_norm"))
    (image,) = events.Images("mae/original, masked, reconstruction")[-1:]
    # rows: 8 originals, masked, reconstructed, of 32 x 32
    assert (image.height, image.width) == (
        96,
        256,
    )


class _ScriptedJob:
    """A job whose state and stdout follow a script, a step each time it is asked if it is done."""

    def __init__(self, script: list[tuple[str, str]]) -> None:
        self.job_id, self.script, self.step = "7", script, 0

    @property
    def state(self) -> str:
        return self.script[self.step][0]

    def stdout(self) -> str:
        return self.script[self.step][1]

    def done(self) -> bool:
        finished = self.step == len(self.script) - 1
        self.step = min(self.step + 1, len(self.script) - 1)
        return finished

    def results(self) -> list:
        return ["result"]


def test_job_bars_in_a_log_print_a_line_only_when_their_text_changes(capsys):
    epoch = "[mae-1] epoch {}/2 loss 1.0 10 img/s eta 1s\n"
    script = [("PENDING", ""), ("RUNNING", ""), ("RUNNING", epoch.format(1))]
    script += [("RUNNING", epoch.format(1)), ("RUNNING", epoch.format(2)), ("FINISHED", "")]
    assert watch([_ScriptedJob(script)], poll_s=0) == ["result"]  # stderr is not a terminal here
    lines = capsys.readouterr().err.splitlines()
    assert "\r" not in "".join(lines) and len(lines) == len(set(lines)) == 5, lines
    assert lines[0].startswith("job 7 PENDING") and lines[-1].startswith("job 7 FINISHED")
    assert "  50%|" in lines[2] and " 100%|" in lines[3]


def test_watch_says_why_squeue_is_silent_and_gives_up_in_one_line(tmp_path, monkeypatch, capsys):
    """No cluster needed: a squeue on the PATH that fails as one whose controller is down."""
    import submitit

    from studylib import launch

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "squeue"
    fake.write_text(
        "#!/bin/sh\necho 'squeue: error: Unable to contact slurm controller' >&2\nexit 1\n"
    )
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setattr(launch, "SLURM_SILENCE_S", 0.3)
    job = submitit.SlurmJob(folder=tmp_path / "jobs", job_id="4242")
    with pytest.raises(JobError, match=r"^squeue failed: squeue: error: Unable to contact .* 4242"):
        watch([job], poll_s=0.05)
    said = [line for line in capsys.readouterr().err.splitlines() if "waiting on SLURM" in line]
    assert said == [
        "waiting on SLURM: squeue failed: squeue: error: Unable to contact slurm controller"
    ]


def test_ctrl_c_while_watching_stops_the_local_job_with_it(tmp_path, request):
    import _thread
    import threading

    # Ctrl-C as in a terminal: a suite started in the background of a shell without job control
    # inherits SIGINT ignored, and then neither the simulated Ctrl-C nor the job would see it
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    request.addfinalizer(lambda: signal.signal(signal.SIGINT, previous))
    long = ["wsp.epochs=500"]
    job = submit("wsp", "smoke", [*long, "launch.executor=local"], folder=tmp_path / "jobs")
    run = wsp.run_for(load_experiment("smoke", long))
    _wait_epochs(run, 1)
    threading.Timer(0.5, _thread.interrupt_main).start()
    with pytest.raises(KeyboardInterrupt):
        watch([job], poll_s=0.1)
    deadline = time.monotonic() + 60
    while job._process.poll() is None:  # the job's process ends with its watcher
        assert time.monotonic() < deadline, "the local job went on after Ctrl-C"
        time.sleep(0.2)
    epochs = len(run.metrics())
    time.sleep(2)
    assert len(run.metrics()) == epochs < 500


def test_ctrl_c_to_the_notebooks_command_stops_its_kernel_and_the_kernel_s_job(tmp_path):
    """A terminal's Ctrl-C reaches the command's process group, not the kernel's: the command
    stops the kernel and the kernel's local job with it, says one line (no asyncio traceback at
    exit) and leaves no process behind."""
    import psutil

    proc, _ = _training_command(tmp_path, "notebooks", "--only", "wsp")
    started = psutil.Process(proc.pid).children(recursive=True)  # the kernel, its job
    assert len(started) >= 2
    os.killpg(proc.pid, signal.SIGINT)  # as a terminal does: the command's group only
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1].startswith("studylib: interrupted:")
    assert "Traceback" not in err and "Task exception" not in err
    _, alive = psutil.wait_procs(started, timeout=10)
    assert not alive, [p.cmdline() for p in alive]


def _training_command(tmp_path: Path, *args: str) -> tuple[subprocess.Popen, Path]:
    """`studylib ARGS --preset smoke` in a session of its own, as a terminal's foreground command
    (a shell without job control starts background commands with SIGINT ignored: undone here),
    returned once its local job trains a 500-epoch MAE (long, so the outcome is the same on a
    fast machine); and the jobs' log folder."""
    env = {**os.environ, **{f"STUDYLIB_{k}": str(tmp_path / k) for k in ("RUNS", "CACHE")}}
    env |= {f"STUDYLIB_{k}": str(tmp_path / k) for k in ("RESULTS", "FIGURES", "OUTPUT")}
    command = [sys.executable, "-m", "studylib", *args, "--preset", "smoke"]
    proc = subprocess.Popen(
        [*command, "--set", "mae.epochs=500"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    jobs = tmp_path / "RUNS" / "smoke" / "jobs"
    deadline = time.monotonic() + 300
    while not any("epoch 1/500" in p.read_text() for p in jobs.glob("*_log.out")):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.5)
    return proc, jobs
