"""Jobs through submitit: `local` (the default where there is no SLURM), `debug` (in this process,
for stepping through) and `slurm` (partition, GPUs, nodes, time, account and QoS from the preset's
`launch` section).

A job runs a study or an arm of studylib.registry by name (`targets()`) on a preset and overrides,
never notebook code. Preempted or timed-out jobs are requeued (at most `launch.max_requeues` times)
and resume from their run's checkpoint: SLURM's warning signal makes the engine checkpoint the step
in progress first (studylib.checkpoint.catch_preemption), so a preemption loses no step; a kill
without warning loses what came after the last checkpoint (every epoch, or every
`checkpoint_every_steps` / `checkpoint_every_min`).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import submitit
from tqdm.auto import tqdm

from studylib import distributed, errors
from studylib.config import load_experiment
from studylib.errors import ConfigError
from studylib.experiment import Experiment
from studylib.paths import absolute_paths, runs_dir
from studylib.registry import ARMS, STUDIES, call, targets


class StudyJob(submitit.helpers.Checkpointable):
    """Run a target on an experiment, validated when it was submitted (a queued job is not changed
    by later edits of experiments.yaml)."""

    def __init__(self, target: str, max_requeues: int = 3) -> None:
        if target not in targets():
            raise ConfigError(f"job target {target!r} is unknown; allowed: {list(targets())}")
        self.target = target
        self.max_requeues = max_requeues

    def __call__(self, exp: Experiment) -> Any:
        # training first checkpoints the step it is in
        from studylib.checkpoint import catch_preemption

        distributed.init()
        catch_preemption()
        if self.target in STUDIES:
            return call(STUDIES[self.target].run, exp)
        return call(ARMS[self.target].pretrain, exp)

    def checkpoint(self, *args: Any, **kwargs: Any) -> submitit.helpers.DelayedSubmission | None:
        """On preemption or time-out: requeue the same call, which resumes from the run's
        checkpoint."""
        if int(os.environ.get("SLURM_RESTART_COUNT", "0")) >= self.max_requeues:
            return None
        return super().checkpoint(*args, **kwargs)


def executor(exp: Experiment, folder: str | Path | None = None) -> submitit.Executor:
    """The submitit executor that `exp.launch` asks for; job logs go to `folder`
    (default <runs>/<preset>/jobs/)."""
    launch = exp.launch
    kind = launch.executor
    if kind == "auto":
        kind = "slurm" if shutil.which("sbatch") else "local"
    if kind == "slurm" and not shutil.which("sbatch"):
        raise ConfigError(
            "launch.executor: 'slurm', but this machine has no sbatch on its PATH; allowed: "
            "'local', 'debug' or 'auto' here, or 'slurm' on a SLURM login node"
        )
    # one flat folder, made before sbatch: SLURM may start a job before submitit could make a
    # per-job folder for its log, and a job whose log cannot be opened dies leaving no result
    ex = submitit.AutoExecutor(
        folder=jobs_folder(exp, folder), cluster=kind, slurm_max_num_timeout=launch.max_requeues
    )
    ex.update_parameters(
        timeout_min=launch.timeout_min,
        nodes=launch.nodes,
        tasks_per_node=launch.tasks_per_node,
        cpus_per_task=launch.cpus_per_task,
        gpus_per_node=launch.gpus_per_node,
        name=f"studylib-{exp.preset}",
    )
    if kind == "slurm":
        extra = {
            "slurm_partition": launch.partition,
            "slurm_account": launch.account,
            "slurm_qos": launch.qos,
        }
        ex.update_parameters(
            mem_gb=launch.mem_gb,
            slurm_array_parallelism=launch.array_parallelism,
            **{k: v for k, v in extra.items() if v is not None},
        )
    return ex


def jobs_folder(exp: Experiment, folder: str | Path | None = None) -> Path:
    """Where the jobs' logs go: `folder`, or <runs>/<preset>/jobs/."""
    return Path(folder) if folder else runs_dir() / exp.preset / "jobs"


@contextlib.contextmanager
def quiet_local_controller(chosen: submitit.Executor, jobs: Path) -> Iterator[None]:
    """While a local job starts, this process's stderr (fd 2) goes to
    `<jobs>/local_controllers.err`: submitit's local controller inherits it, so its traceback on
    Ctrl-C lands there, not on the terminal. Other executors start no controller here."""
    if chosen.cluster != "local":
        yield
        return
    jobs.mkdir(parents=True, exist_ok=True)
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(jobs / "local_controllers.err", "ab") as log:
            os.dup2(log.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def submit(
    target: str,
    preset: str,
    overrides: Sequence[str] = (),
    config_file: str | None = None,
    folder: str | Path | None = None,
) -> submitit.Job:
    """Submit one job: `target` (a name of `targets()`) on a preset and overrides."""
    from studylib.preflight import check_batches

    # bad input fails here, not in the job
    exp = load_experiment(preset, list(overrides), config_file)
    job = StudyJob(target, exp.launch.max_requeues)
    check_batches(exp)
    chosen = executor(exp, folder)
    try:
        with quiet_local_controller(chosen, jobs_folder(exp, folder)):
            return chosen.submit(job, exp)
    # sbatch refused it, or could not run
    except (submitit.core.utils.FailedJobError, OSError) as err:
        raise ConfigError(
            f"launch.executor {exp.launch.executor}: the job could not be submitted "
            f"({' '.join(str(err).split())[:200]}); allowed: a running SLURM, or "
            "launch.executor=local"
        ) from None


def sweep(
    target: str,
    preset: str,
    points: Sequence[Sequence[str]],
    overrides: Sequence[str] = (),
    config_file: str | None = None,
    folder: str | Path | None = None,
) -> list[submitit.Job]:
    """Submit one job per point (a list of overrides on top of `overrides`), as one job array."""
    from studylib.preflight import check_batches

    experiments = [load_experiment(preset, [*overrides, *point], config_file) for point in points]
    job = StudyJob(target, experiments[0].launch.max_requeues)
    for exp in experiments:
        check_batches(exp)
    chosen = executor(experiments[0], folder)
    with quiet_local_controller(chosen, jobs_folder(experiments[0], folder)):
        return chosen.map_array(job, experiments)


def run(target: str, preset: str, overrides: Sequence[str] = (), executor: str = "local") -> Any:
    """What a notebook calls: submit `target` as a job where `executor` says, show its progress
    until it ends, and return its result (a study's table; an arm's chain of runs). An error is
    shown as one line."""
    errors.one_line_in_notebooks()
    absolute_paths()
    job = submit(target, preset, [*overrides, f"launch.executor={executor}"])
    return watch([job])[0]


SLURM_SILENCE_S = 600.0  # how long watch waits on a squeue that does not answer

PROGRESS = re.compile(
    r"\[(?P<run>[^\]]+)\] epoch (?P<epoch>\d+)/(?P<epochs>\d+)"
    r"(?: step (?P<step>\d+)/(?P<steps>\d+))?(?P<rest>.*)"
)


def progress(job: submitit.Job) -> str:
    """The last progress line the job printed (the engine's epoch and step lines, a study's 'seed k
    of n', a reused run), e.g. '[wsp-1a2b3c4d] epoch 3/20 step 40/78 loss 4.1 712 img/s eta 2m10s',
    or ''."""
    try:
        out = job.stdout() or ""
    except (OSError, AttributeError):
        return ""
    lines = [
        line for line in out.splitlines() if re.match(r"\[[^\]]+\] (epoch |reused|seed )", line)
    ]
    return lines[-1] if lines else ""


def done_fraction(line: str) -> float | None:
    """How much of its run a progress line says is done (epochs and steps), or None for another
    line."""
    found = PROGRESS.match(line)
    if not found:
        return None
    epoch, epochs = int(found["epoch"]), int(found["epochs"])
    within = int(found["step"]) / int(found["steps"]) if found["step"] else 1.0
    return (epoch - 1 + within) / epochs


def watch(jobs: Sequence[submitit.Job], poll_s: float = 5.0) -> list[Any]:
    """Show a live bar per job (its state, its current run and how far that run is, with loss,
    images/s and ETA) until all are done, then return their results in order (a list of one result
    per task for a job of several tasks; a failed job raises its error). A notebook gets widget
    bars."""
    # else a log (CI, SLURM): a bar is drawn nowhere, its text printed as a line when it changes
    live = sys.stderr.isatty() or _in_notebook()
    sink = None if live else open(os.devnull, "w")
    layout = "{desc} {percentage:3.0f}%|{bar}| {postfix}"
    bars = [tqdm(total=100, bar_format=layout, leave=True, file=sink) for _ in jobs]
    shown: list[tuple] = [()] * len(jobs)
    unanswered: tuple[str, float] | None = None  # squeue's error, and since when
    try:
        while True:
            for k, (job, bar) in enumerate(zip(jobs, bars, strict=True)):
                line = progress(job)
                fraction = done_fraction(line)
                bar.set_description_str(f"job {job.job_id} {job.state}", refresh=False)
                if fraction is not None:
                    bar.n = round(100 * fraction)
                bar.set_postfix_str(line[:120], refresh=False)
                if live:
                    bar.refresh()
                elif shown[k] != (job.state, bar.n, line):
                    print(bar, file=sys.stderr, flush=True)
                    shown[k] = (job.state, bar.n, line)
            listed, silence = _listed_by_slurm(jobs)
            if all(job.done() or job.job_id not in listed for job in jobs):
                return [_result(job) for job in jobs]
            unanswered = _say_silence(silence, unanswered, jobs)
            time.sleep(poll_s)
    except KeyboardInterrupt:
        _stop_with_me(jobs)
        raise
    finally:
        for bar in bars:
            bar.close()
        if sink:
            sink.close()


def _stop_with_me(jobs: Sequence[submitit.Job]) -> None:
    """Ctrl-C (or SIGTERM to the command) while watching: local jobs stop with this process (each
    keeps its last checkpoint); SLURM jobs go on, and a line says how to stop them."""
    for job in jobs:
        if isinstance(job, submitit.LocalJob) and not job.done():
            job.cancel(check=False)
    running = [job.job_id for job in jobs if isinstance(job, submitit.SlurmJob) and not job.done()]
    if running:
        ids = " ".join(running)
        print(f"studylib: SLURM jobs {ids} go on; `scancel {ids}` stops them", file=sys.stderr)


def _in_notebook() -> bool:
    """Whether this process is a Jupyter kernel (whose bars are widgets), not merely one that has
    imported ipykernel."""
    ipython = sys.modules.get("IPython")
    return type(ipython and ipython.get_ipython()).__name__ == "ZMQInteractiveShell"


def _listed_by_slurm(jobs: Sequence[submitit.Job]) -> tuple[set[str], str]:
    """The ids among `jobs` that are local jobs or that SLURM still lists as pending, running or
    completing, and why squeue did not answer ('' where it did: then every job is taken as listed).
    Asked before `done()` is, so a job that ends in between is done, not missing."""
    slurm = {job.job_id for job in jobs if isinstance(job, submitit.SlurmJob)}
    others = {job.job_id for job in jobs} - slurm
    if not slurm:
        return others, ""
    mine = ["squeue", "-h", "-r", "-o", "%i", "-u", str(os.getuid())]
    try:
        out = subprocess.run(mine, capture_output=True, text=True, timeout=60)
    except OSError as err:
        return slurm | others, f"squeue could not run ({err.strerror})"
    except subprocess.TimeoutExpired:
        return slurm | others, "squeue gave no answer in 60 s"
    if out.returncode != 0:
        said = (out.stderr + out.stdout).strip().splitlines() or [f"exit code {out.returncode}"]
        return slurm | others, f"squeue failed: {said[-1][:200]}"
    return others | (slurm & set(out.stdout.split())), ""


def _say_silence(
    silence: str, unanswered: tuple[str, float] | None, jobs: Sequence[submitit.Job]
) -> tuple[str, float] | None:
    """Say once why watch cannot tell whether the jobs run (squeue's own answer), and give up with
    one line after SLURM_SILENCE_S without an answer. Returns what is unanswered, and since when."""
    if not silence:
        return None
    if unanswered is None or unanswered[0] != silence:
        print(f"waiting on SLURM: {silence}", file=sys.stderr, flush=True)
    since = unanswered[1] if unanswered else time.monotonic()
    if time.monotonic() - since > SLURM_SILENCE_S:
        ids = " ".join(job.job_id for job in jobs)
        raise errors.JobError(
            f"{silence}, for {SLURM_SILENCE_S:.0f} s: stopped watching jobs {ids}, which may still "
            "run (squeue -u $USER shows them once SLURM answers; scancel ID stops one)"
        )
    return silence, since


def _result(job: submitit.Job) -> Any:
    """The job's result; a failed job's error raised here as the same one line it raised in the
    job; a job that SLURM no longer lists and that left no result (killed before or outside Python:
    a log it could not open, the out-of-memory killer, scancel) as a JobError, which a cluster
    without job accounting would otherwise never report."""
    if not job.done():
        raise errors.JobError(
            f"job {job.job_id}: SLURM no longer lists it and it left no result; its log: "
            f"{job.paths.stderr}"
        )
    try:
        results = job.results()
    except (submitit.core.utils.FailedJobError, submitit.core.utils.UncompletedJobError) as err:
        raise job_error(str(err), job) from None
    return results[0] if len(results) == 1 else results


def job_error(trace: str, job: submitit.Job) -> errors.StudylibError:
    """The studylib error at the end of a job's traceback, as that error; any other, as a JobError
    naming the job's log."""
    found = re.findall(r"^studylib\.errors\.(\w+): (.*)$", trace, flags=re.MULTILINE)
    if found and isinstance(getattr(errors, found[-1][0], None), type):
        return getattr(errors, found[-1][0])(found[-1][1])
    last = [line for line in trace.splitlines() if line.strip()][-1:] or ["no output"]
    return errors.JobError(
        f"job {job.job_id}: {last[0].strip()[:300]}; its log: {job.paths.stderr}"
    )
