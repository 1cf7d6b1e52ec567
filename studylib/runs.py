"""Run folders: one per run identity, named by its hash.

A run's identity is what decides its result: the config sections its stage declares
(studylib.registry.STAGES), hashed whole, the data it reads (a fingerprint of the file or folder),
the runs it starts from, the resolved precision and RUN_VERSION. Every weights file in the folder
carries the identity's hash and is refused by any other run.

    runs/<preset>/<stage>-<hash>/
        config.yaml     the identity, plus the whole resolved experiment
        meta.json       per attempt (first run and every resume): git SHA, package versions, command
                        line, host, start time
        metrics.jsonl   one line per finished epoch
        checkpoint.pth  model + optimizer after the last finished epoch (auto-resume), and
                        checkpoint.prev.pth the one before; each with a .sha256 beside it (or,
                        with checkpoint_format: sharded, checkpoint.dcp/ and checkpoint.prev.dcp/,
                        one file a rank)
        tensorboard/    TensorBoard events: per-step loss, lr, gradient norm, images/s
                        (`tensorboard --logdir runs`)
        results.json    written last: its presence means the run is finished
        .lock           held by the process training the run
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import platform
import shutil
import socket
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
import yaml

from studylib import distributed
from studylib.errors import RunFolderError, shown
from studylib.experiment import Experiment, config_hash, result_settings
from studylib.io import atomic_write, git_sha, sha256, warn
from studylib.models import encoder_state, load_encoder
from studylib.paths import runs_dir
from studylib.registry import STAGES

# the run's checkpoint files (studylib.checkpoint writes them): one whole file, with
# checkpoint.prev.pth the one before it (save_weights); or sharded folders (torch's dcp)
WHOLE = "checkpoint.pth"
SHARDED, SHARDED_PREVIOUS = "checkpoint.dcp", "checkpoint.prev.dcp"

RUN_VERSION = 2  # bump when a change is meant to retrain every run (a fix that changes results)
# a run folder holding only these has nothing to lose (TensorBoard events of an
# unfinished first epoch)
UNTRAINED = {".lock", "meta.json", "config.yaml", "tensorboard"}
PACKAGES = ("torch", "torchvision", "timm", "numpy", "studylib")


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _variants(path: Path) -> tuple[Path, Path, Path]:
    """Newest first: the file being written, the current one, the one before."""
    return path.with_name(path.name + ".new"), path, path.with_suffix(".prev.pth")


def save_weights(path: Path, state: dict[str, Any], keep_previous: bool = False) -> None:
    """torch.save `state` atomically with its sha256 beside it; with keep_previous, the file it
    replaces becomes <name>.prev.pth, the fallback when the new one turns out corrupt.

    Every step is a rename, and load_weights accepts a file whose content matches any of the
    sidecars, so a kill between any two steps leaves at least the newest complete file loadable."""
    new, _, previous = _variants(path)
    atomic_write(new, lambda f: torch.save(state, f), mode="wb")
    digest = sha256(new)
    atomic_write(_sidecar(new), lambda f: f.write(digest + "\n"))
    if keep_previous and path.exists():
        if _sidecar(path).exists():
            os.replace(_sidecar(path), _sidecar(previous))
        os.replace(path, previous)
    os.replace(new, path)
    os.replace(_sidecar(new), _sidecar(path))


def load_weights(path: Path, map_location: str | torch.device = "cpu") -> Any:
    """Load the newest complete file that save_weights wrote for `path` (weights_only=True): a
    truncated or corrupt one, whose sha256 matches no sidecar, is reported and skipped. None when
    there is none."""
    variants = _variants(path)
    known = {_sidecar(v).read_text().strip() for v in variants if _sidecar(v).exists()}
    for candidate in variants:
        if not candidate.exists():
            continue
        if _sidecar(candidate).exists() and sha256(candidate) not in known:
            warn(f"{candidate}: checksum does not match (truncated or corrupt); skipping it")
            continue
        try:  # without a sidecar (deleted, or a kill before it was written), loading is the check
            return torch.load(candidate, map_location=map_location, weights_only=True)
        except Exception as err:  # noqa: BLE001 (any unreadable file is skipped the same way)
            warn(
                f"{candidate}: not loadable "
                f"({shown(str(err).splitlines()[0] if str(err) else err, 80)}); skipping it"
            )
    return None


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


def trained_with(preset: str, names: list[str]) -> list[dict]:
    """The package versions that ran the runs `names` of `preset` (every attempt its meta.json
    records), each distinct set once with the number of attempts it made."""
    attempts: dict[str, int] = {}
    for name in sorted(set(names)):
        meta = runs_dir() / preset / name / "meta.json"
        for attempt in json.loads(meta.read_text())["attempts"] if meta.is_file() else []:
            key = json.dumps(attempt["versions"], sort_keys=True)
            attempts[key] = attempts.get(key, 0) + 1
    return [{**json.loads(key), "attempts": n} for key, n in attempts.items()]


class Run:
    """The run of `stage` under `experiment`, reading `inputs` (data fingerprints, upstream
    runs)."""

    def __init__(self, experiment: Experiment, stage: str, inputs: dict[str, Any]) -> None:
        self.experiment = experiment
        self.stage = stage
        precision = distributed.precision_name(experiment)
        sections = {
            name: result_settings(experiment.section(name)) for name in STAGES[stage].sections
        }
        self.identity = {
            "stage": stage,
            "version": RUN_VERSION,
            "precision": precision,
            **sections,
            **inputs,
        }
        self.hash = config_hash(self.identity)
        self.path = runs_dir() / experiment.preset / f"{stage}-{self.hash}"
        self.checkpoint = self.path / WHOLE

    def __repr__(self) -> str:
        return f"Run({self.path})"

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def done(self) -> bool:
        """Finished: results.json holds a mapping. A malformed one is an unfinished run, redone."""
        if not (self.path / "results.json").exists():
            return False
        if self._saved_results() is None:
            warn(
                f"{self.path / 'results.json'}: not a readable JSON mapping; the run is finished "
                "again"
            )
            return False
        return True

    def _saved_results(self) -> dict[str, Any] | None:
        """results.json as a mapping, or None when it is missing, unreadable or not a mapping."""
        try:
            results = json.loads((self.path / "results.json").read_text())
        except (ValueError, OSError):
            return None
        return results if isinstance(results, dict) else None

    def _folder(self) -> None:
        """Make the run folder, refusing a symlink anywhere under the runs folder (writes never
        follow one)."""
        for folder in (self.path, self.path.parent):
            if folder.is_symlink():
                raise RunFolderError(
                    f"{folder}: a symbolic link; allowed: a real folder (remove the link)"
                )
        self.path.mkdir(parents=True, exist_ok=True)

    @contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the run's lock: a second process training the same run waits here, told who holds
        it."""
        path = self.path / ".lock"
        while True:
            self._folder()
            try:
                f = os.fdopen(os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644), "r+")
            except OSError as err:
                raise RunFolderError(
                    f"{path}: cannot open the lock ({err.strerror}); allowed: a plain file or none"
                ) from None
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                f.seek(0)
                print(
                    f"{self.path}: being trained by {f.read().strip() or 'another process'}; "
                    "waiting for it",
                    file=sys.stderr,
                    flush=True,
                )
                fcntl.flock(f, fcntl.LOCK_EX)
            if path.exists() and os.stat(path).st_ino == os.fstat(f.fileno()).st_ino:
                break
            # the holder removed the folder it had made in vain: lock the new file instead
            f.close()
        with f:
            f.seek(0)
            f.truncate(0)
            f.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
            f.flush()
            yield

    def start(self) -> None:
        """Create the folder, record what is being run (once) and who runs it (every attempt,
        resumes included: git SHA, package versions, command line, host, time)."""
        attempt = {
            "git_sha": git_sha(),
            "versions": versions(),
            "argv": sys.argv,
            "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        meta_path = self.path / "meta.json"
        attempts = json.loads(meta_path.read_text())["attempts"] if meta_path.exists() else []
        atomic_write(
            meta_path, lambda f: json.dump({"attempts": [*attempts, attempt]}, f, indent=2)
        )
        if not (self.path / "config.yaml").exists():
            config = {"identity": self.identity, "experiment": self.experiment.to_dict()}
            atomic_write(
                self.path / "config.yaml", lambda f: yaml.safe_dump(config, f, sort_keys=False)
            )

    def save(self, name: str, state: Any, keep_previous: bool = False) -> None:
        """save_weights into the run folder, with this run's name (stage and identity hash) inside
        the file."""
        save_weights(self.path / name, {"run": self.name, "state": state}, keep_previous)

    def drop_previous(self, name: str) -> None:
        """Delete the file before `name` that `save(keep_previous=True)` kept, and its sidecar."""
        previous = _variants(self.path / name)[2]
        previous.unlink(missing_ok=True)
        _sidecar(previous).unlink(missing_ok=True)

    def load(self, name: str, map_location: str | torch.device = "cpu") -> Any:
        """What `save` wrote, or None when there is none; weights of another run are refused."""
        path = self.path / name
        saved = load_weights(path, map_location)
        if saved is None:
            return None
        found = saved.get("run") if isinstance(saved, dict) else None
        if found != self.name:
            raise RunFolderError(
                f"{path}: weights of {'run ' + found if found else 'no known run'}, not of "
                f"{self.name}; move the file away or delete {self.path}"
            )
        return saved["state"]

    def write_metrics(self, history: list[dict[str, Any]]) -> None:
        atomic_write(
            self.path / "metrics.jsonl",
            lambda f: f.writelines(json.dumps(r) + "\n" for r in history),
        )

    def metrics(self) -> list[dict[str, Any]]:
        return self.metrics_of(self.path)

    @staticmethod
    def metrics_of(folder: Path) -> list[dict[str, Any]]:
        """The per-epoch lines of the run folder `folder`'s metrics.jsonl (a malformed line is
        skipped, with a warning: the checkpoint, not this file, is what a resume trusts)."""
        path = folder / "metrics.jsonl"
        lines = []
        for number, line in enumerate(path.read_text().splitlines() if path.exists() else [], 1):
            try:
                record = json.loads(line)
            except ValueError:
                record = None
            if isinstance(record, dict):
                lines.append(record)
            else:
                warn(f"{path}: line {number} is not a JSON mapping; skipped")
        return lines

    def finish(self, results: dict[str, Any]) -> None:
        """Results written last; then the checkpoints before the last go (needed only while the
        run could still crash)."""
        atomic_write(self.path / "results.json", lambda f: json.dump(results, f, indent=2))
        self.drop_previous(WHOLE)
        shutil.rmtree(self.path / SHARDED_PREVIOUS, ignore_errors=True)

    def results(self) -> dict[str, Any]:
        results = self._saved_results()
        if results is None:
            raise RunFolderError(
                f"{self.path / 'results.json'}: missing, unreadable or not a JSON mapping; delete "
                "it to finish the run again"
            )
        return results

    def clean_temporary(self) -> None:
        """Remove the temporary files of writes a kill interrupted (atomic_write's `.<name>.*.tmp`,
        and the folder of a sharded checkpoint being written)."""
        for orphan in self.path.glob(".*.tmp"):
            if orphan.is_dir() and not orphan.is_symlink():
                shutil.rmtree(orphan, ignore_errors=True)
            else:
                orphan.unlink(missing_ok=True)


def train_once(run: Run, make_results: Callable[[], dict[str, Any]]) -> Run:
    """Call `make_results` (which trains and returns the results) unless the run is finished,
    holding its lock; a run that another process finished while this one waited is not trained
    again.

    In a job of several tasks, rank 0 takes the lock and tells the other ranks whether to train;
    all of them train, rank 0 alone writes, and they leave together."""
    if run.done and distributed.world_size() == 1:
        print(f"[{run.name}] reused: finished earlier", flush=True)
        return run
    new_folders = [p for p in (run.path, *run.path.parents) if not p.exists()]  # deepest first
    with run.lock() if distributed.is_main() else contextlib.nullcontext():
        try:
            if not distributed.agree(run.done):
                if distributed.is_main():
                    run.clean_temporary()
                    run.start()
                results = make_results()
                if distributed.is_main():
                    run.finish(results)
        except BaseException:
            if (
                new_folders
                and run.path.exists()
                and {p.name for p in run.path.iterdir()} <= UNTRAINED
            ):
                shutil.rmtree(run.path)  # failed before writing anything: leave no trace
                for folder in new_folders[1:]:
                    if folder.exists() and not any(folder.iterdir()):
                        folder.rmdir()
            raise
    distributed.barrier()
    return run


def save_encoder(run: Run, model: torch.nn.Module) -> None:
    """The encoder (a ViT without its head) that the next stage starts from: <run>/encoder.pth."""
    state = encoder_state(model)  # on every rank: FSDP2's shards are gathered
    if distributed.is_main():
        run.save("encoder.pth", state)


def load_encoder_from(run: Run, model: torch.nn.Module) -> None:
    """The encoder weights of the finished `run` into `model` (a ViT of the same size, any head)."""
    path = run.path / "encoder.pth"
    state = run.load("encoder.pth")
    if state is None:
        raise RunFolderError(
            f"{path}: missing or corrupt encoder weights; delete {run.path} to retrain it"
        )
    try:
        load_encoder(model, state)
    except (ValueError, RuntimeError) as err:
        raise RunFolderError(
            f"{path}: weights of another model than {model.__class__.__name__} "
            f"{model.embed_dim}d x {len(model.blocks)} blocks: {str(err).splitlines()[0]}"
        ) from None


def finished_runs(folder: Path) -> list[dict[str, Any]]:
    """Every run folder under `folder` with its results written: name, stage, model, seed,
    precision and its headline results (top-1 or final loss, training FLOPs)."""
    found = []
    for results in sorted(folder.glob("*/results.json")):
        config = yaml.safe_load((results.parent / "config.yaml").read_text()) or {}
        identity, values = config.get("identity") or {}, json.loads(results.read_text())
        found.append(
            {
                "run": results.parent.name,
                "stage": identity.get("stage"),
                "model": identity.get("model"),
                "seed": identity.get("seed"),
                "precision": identity.get("precision"),
                **{
                    k: v if isinstance(v := values.get(k), int | float) else None
                    for k in ("top1", "final_loss", "train_flops")
                },
            }
        )
    return found
