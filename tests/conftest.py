from pathlib import Path

import pytest

from studylib.config import load_experiment

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def isolated_dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test writes its runs and results under its own temporary folder."""
    monkeypatch.setenv("STUDYLIB_RUNS", str(tmp_path / "runs"))
    monkeypatch.setenv("STUDYLIB_RESULTS", str(tmp_path / "results"))
    return tmp_path


@pytest.fixture
def smoke():
    return load_experiment("smoke")
