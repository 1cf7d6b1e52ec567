"""Run folders: one per resolved stage config, named by its hash.

    runs/<preset>/<stage>-<hash>/
        config.yaml     what the hash covers, plus the whole resolved experiment
        meta.json       git SHA, package versions, command line, host, start time
        metrics.jsonl   one line per finished epoch
        checkpoint.pth  model + optimizer after the last finished epoch (auto-resume)
        results.json    written last: its presence means the run is finished
"""

from __future__ import annotations

import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml

from studylib.config import Experiment, config_hash, runs_dir

PACKAGES = ("torch", "torchvision", "timm", "numpy", "studylib")


def atomic_write(path: Path, write: Callable[[Any], None], mode: str = "w") -> None:
    """Write through a temporary file in the same folder, then rename: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def git_sha() -> str:
    """The commit of the studylib checkout, with '-dirty' when it has uncommitted changes."""
    repo = Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True,
                             check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return sha + ("-dirty" if dirty else "")


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


class Run:
    def __init__(self, experiment: Experiment, stage: str, identity: dict[str, Any]) -> None:
        self.experiment = experiment
        self.stage = stage
        self.identity = {"stage": stage, **identity}
        self.hash = config_hash(self.identity)
        self.path = runs_dir() / experiment.preset / f"{stage}-{self.hash}"
        self.checkpoint = self.path / "checkpoint.pth"

    def __repr__(self) -> str:
        return f"Run({self.path})"

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def done(self) -> bool:
        return (self.path / "results.json").exists()

    def start(self) -> None:
        """Create the folder and record what is being run; kept as is when the run resumes."""
        if (self.path / "config.yaml").exists():
            return
        config = {"identity": self.identity, "experiment": self.experiment.to_dict()}
        meta = {"git_sha": git_sha(), "versions": versions(), "argv": sys.argv, "host": socket.gethostname(),
                "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        atomic_write(self.path / "meta.json", lambda f: json.dump(meta, f, indent=2))
        atomic_write(self.path / "config.yaml", lambda f: yaml.safe_dump(config, f, sort_keys=False))

    def write_metrics(self, history: list[dict[str, Any]]) -> None:
        atomic_write(self.path / "metrics.jsonl", lambda f: f.writelines(json.dumps(r) + "\n" for r in history))

    def metrics(self) -> list[dict[str, Any]]:
        path = self.path / "metrics.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

    def finish(self, results: dict[str, Any]) -> None:
        atomic_write(self.path / "results.json", lambda f: json.dump(results, f, indent=2))

    def results(self) -> dict[str, Any]:
        return json.loads((self.path / "results.json").read_text())
