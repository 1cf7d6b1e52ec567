"""Batch reruns of the study notebooks with papermill: `studylib notebooks --preset cpu [--only
NAME]`.

Each notebook runs with its `parameters` cell set to the preset, overrides and executor, and the
executed copy goes to $STUDYLIB_OUTPUT/notebooks/<preset>/ (default output/, ignored by git). A
failed notebook is one line: its name, the cell and the error's own line. The studies reuse every
finished run folder, so a rerun after a change trains only what the change touched.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from studylib.errors import ConfigError, StudylibError
from studylib.paths import REPO_ROOT, folder_from, runs_dir

NOTEBOOKS_DIR = REPO_ROOT / "notebooks"
# registered by `make setup` (python -m ipykernel install --sys-prefix --name studylib)
KERNEL = "studylib"


def notebooks() -> list[Path]:
    """The study notebooks, in the order they run (the figures notebook last)."""
    return sorted(NOTEBOOKS_DIR.glob("[0-9][0-9]_*.ipynb"))


def select(only: Sequence[str] = ()) -> list[Path]:
    found = notebooks()
    names = {p.stem.split("_", 1)[1]: p for p in found}
    unknown = [n for n in only if n not in names and n not in {p.stem for p in found}]
    if unknown:
        raise ConfigError(
            f"--only {unknown[0]}: no such notebook in {NOTEBOOKS_DIR}; allowed: {sorted(names)}"
        )
    return [p for p in found if not only or p.stem in only or p.stem.split("_", 1)[1] in only]


def run_notebooks(
    preset: str,
    only: Sequence[str] = (),
    overrides: Sequence[str] = (),
    executor: str = "local",
    output: Path | None = None,
) -> list[Path]:
    """Execute the notebooks (all, or those named in `only`) for `preset`; returns the executed
    copies."""
    import papermill
    from traitlets.config import Config

    from studylib.config import load_experiment
    from studylib.paths import check_folder, check_output_places

    # bad input fails before any notebook
    exp = load_experiment(preset, [*overrides, f"launch.executor={executor}"])
    chosen = select(only)  # an unknown name fails before any folder is made
    check_output_places(exp.results_key)
    where = "--out" if output else "STUDYLIB_OUTPUT"
    output = output or folder_from("STUDYLIB_OUTPUT", REPO_ROOT / "output") / "notebooks" / preset
    check_folder(where, output).mkdir(parents=True, exist_ok=True)
    executed, sockets = [], Path(tempfile.mkdtemp(prefix="studylib-kernel-"))
    # the kernel talks over local sockets, not TCP ports: nothing to eavesdrop on, and no
    # warning per notebook
    transport = Config({"KernelManager": {"transport": "ipc", "ip": str(sockets / "kernel")}})
    parameters = {"preset": preset, "overrides": list(overrides), "executor": executor}
    try:
        for k, path in enumerate(chosen):
            start = time.perf_counter()
            target = output / path.name
            print(
                f"[{k + 1}/{len(chosen)}] {path.name} (cells below; job logs in "
                f"{runs_dir() / preset / 'jobs'})",
                flush=True,
            )
            try:
                papermill.execute_notebook(
                    str(path),
                    str(target),
                    kernel_name=KERNEL,
                    progress_bar=True,
                    cwd=str(path.parent),
                    parameters=parameters,
                    config=transport,
                )
            except papermill.PapermillExecutionError as err:
                raise notebook_error(path, target, err) from None
            print(f"{path.name}: {time.perf_counter() - start:.1f} s -> {target}", flush=True)
            executed.append(target)
    except KeyboardInterrupt:
        # papermill stops the kernel (and with it the kernel's job: one process group); the
        # interrupted cell's task ends after its loop, and asyncio would print its traceback at exit
        logging.getLogger("asyncio").setLevel(logging.CRITICAL)
        raise
    finally:
        shutil.rmtree(sockets, ignore_errors=True)
    return executed


def notebook_error(path: Path, executed: Path, err: Exception) -> StudylibError:
    """A failed notebook as one line: its name, the cell, the error's own line (a studylib error as
    the line it printed in the cell, exit 2; another exception by its name and last line, exit 1),
    and where the executed copy is."""
    count = getattr(err, "exec_count", None)
    printed = [
        line for line in _cell_text(executed, count).splitlines() if line.startswith("studylib: ")
    ]
    last = (str(getattr(err, "evalue", "")) or str(err)).strip().splitlines() or [""]
    line = printed[-1] if printed else f"{getattr(err, 'ename', type(err).__name__)}: {last[-1]}"
    failed = StudylibError(
        f"{path.name}, cell [{getattr(err, 'exec_count', '?')}]: {line} (executed copy: {executed})"
    )
    failed.kind, failed.exit_code = "notebook failed", 2 if printed else 1
    return failed


def _cell_text(executed: Path, count: object) -> str:
    """What the cell of execution count `count` printed in an executed notebook ('' where none
    did)."""
    import nbformat

    try:
        cells = nbformat.read(executed, as_version=4).cells
    except (OSError, ValueError):
        return ""
    outputs = [
        o
        for c in cells
        if str(c.get("execution_count")) == str(count)
        for o in c.get("outputs", [])
    ]
    return "".join(str(o.get("text", "")) for o in outputs if o.get("output_type") == "stream")
