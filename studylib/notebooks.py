"""Batch reruns of the study notebooks with papermill: `studylib notebooks --preset cpu [--only NAME]`.

Each notebook runs with its `parameters` cell set to the preset, overrides and executor, and the
executed copy goes to output/notebooks/<preset>/ (ignored by git). The studies reuse every finished
run folder, so a rerun after a change trains only what the change touched.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

from studylib.config import REPO_ROOT, runs_dir
from studylib.errors import ConfigError

NOTEBOOKS_DIR = REPO_ROOT / "notebooks"
KERNEL = "studylib"  # registered by `make setup` (python -m ipykernel install --sys-prefix --name studylib)


def notebooks() -> list[Path]:
    """The study notebooks, in the order they run (the figures notebook last)."""
    return sorted(NOTEBOOKS_DIR.glob("[0-9][0-9]_*.ipynb"))


def select(only: Sequence[str] = ()) -> list[Path]:
    found = notebooks()
    names = {p.stem.split("_", 1)[1]: p for p in found}
    unknown = [n for n in only if n not in names and n not in {p.stem for p in found}]
    if unknown:
        raise ConfigError(f"--only {unknown[0]}: no such notebook in {NOTEBOOKS_DIR}; allowed: {sorted(names)}")
    return [p for p in found if not only or p.stem in only or p.stem.split("_", 1)[1] in only]


def run_notebooks(preset: str, only: Sequence[str] = (), overrides: Sequence[str] = (), executor: str = "local",
                  output: Path | None = None) -> list[Path]:
    """Execute the notebooks (all, or those named in `only`) for `preset`; returns the executed copies."""
    import papermill

    from studylib.config import load_experiment

    load_experiment(preset, [*overrides, f"launch.executor={executor}"])  # bad input fails before any notebook
    chosen = select(only)  # an unknown name fails before any folder is made
    output = output or REPO_ROOT / "output" / "notebooks" / preset
    output.mkdir(parents=True, exist_ok=True)
    executed = []
    for k, path in enumerate(chosen):
        start = time.perf_counter()
        target = output / path.name
        print(f"[{k + 1}/{len(chosen)}] {path.name} (cells below; job logs in {runs_dir() / preset / 'jobs'})",
              flush=True)
        papermill.execute_notebook(str(path), str(target), kernel_name=KERNEL, progress_bar=True, cwd=str(path.parent),
                                   parameters={"preset": preset, "overrides": list(overrides), "executor": executor})
        print(f"{path.name}: {time.perf_counter() - start:.1f} s -> {target}", flush=True)
        executed.append(target)
    return executed
