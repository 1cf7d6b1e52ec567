import os
import shutil
import socket
import tempfile
from pathlib import Path

import pytest

from studylib.config import load_experiment

REPO = Path(__file__).resolve().parent.parent
# The session's own folders, for what runs outside a test function's fixtures: the notebooks under
# nbval (their kernels inherit this environment) and the batch test that shares their runs.
SESSION = Path(tempfile.mkdtemp(prefix="studylib-tests-"))
for _name in ("RUNS", "RESULTS", "FIGURES", "CACHE"):
    os.environ[f"STUDYLIB_{_name}"] = str(SESSION / _name.lower())


@pytest.fixture
def free_port():
    """A function that gives a TCP port free on this machine now (for the ranks' rendezvous), so
    two test suites at once never ask for the same one."""

    def pick() -> int:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]

    return pick


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    shutil.rmtree(SESSION, ignore_errors=True)


@pytest.fixture(autouse=True)
def isolated_dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test writes its runs and results under its own temporary folder."""
    monkeypatch.setenv("STUDYLIB_RUNS", str(tmp_path / "runs"))
    monkeypatch.setenv("STUDYLIB_RESULTS", str(tmp_path / "results"))
    monkeypatch.setenv("STUDYLIB_FIGURES", str(tmp_path / "figures"))
    return tmp_path


@pytest.fixture
def smoke():
    return load_experiment("smoke")
