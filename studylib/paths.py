"""Where things live: the clone or the installed package (and so the default experiments.yaml),
the folders the environment names (STUDYLIB_DATA, _RUNS, _CACHE, _RESULTS, _FIGURES, _OUTPUT), and
the check that a place to write is a writable folder of the right kind. No torch, no timm.
"""

from __future__ import annotations

import os
from pathlib import Path

from studylib.errors import ConfigError

PACKAGE = Path(__file__).resolve().parent
# Run from a clone (experiments.yaml and pyproject.toml beside the package): its folders (data,
# runs, results, figures, output) and its presets. Installed from a wheel: those folders where the
# command runs, and the presets packaged with it (studylib/experiments.yaml, a link to the clone's
# file).
IN_CLONE = all((PACKAGE.parent / name).is_file() for name in ("experiments.yaml", "pyproject.toml"))
REPO_ROOT = PACKAGE.parent if IN_CLONE else Path.cwd()
DEFAULT_CONFIG_FILE = (REPO_ROOT if IN_CLONE else PACKAGE) / "experiments.yaml"


def data_dir() -> Path:
    """Where datasets live (and where torchvision downloads them): $STUDYLIB_DATA, default
    <repo>/data."""
    return Path(os.environ.get("STUDYLIB_DATA", REPO_ROOT / "data"))


def folder_from(variable: str, default: Path) -> Path:
    value = os.environ.get(variable)
    if value is None:
        return default
    if not value.strip():
        raise ConfigError(
            f"{variable} is set but empty; allowed: a folder path, or unset for {default}"
        )
    return Path(value).expanduser()


PATH_VARIABLES = (
    "STUDYLIB_DATA",
    "STUDYLIB_RUNS",
    "STUDYLIB_RESULTS",
    "STUDYLIB_FIGURES",
    "STUDYLIB_CACHE",
    "STUDYLIB_OUTPUT",
)


def absolute_paths() -> None:
    """Each STUDYLIB_* path given relative to where the command was typed, made absolute once, at
    the entry (the command, launch.run): kernels and jobs that start elsewhere (papermill runs a
    notebook in notebooks/) then read and write the same folders."""
    for name in PATH_VARIABLES:
        value = os.environ.get(name)
        if value and value.strip() and not Path(value).expanduser().is_absolute():
            os.environ[name] = str(Path(value).expanduser().absolute())


def runs_dir() -> Path:
    """Where run folders live: $STUDYLIB_RUNS, default <repo>/runs."""
    return folder_from("STUDYLIB_RUNS", REPO_ROOT / "runs")


def cache_dir() -> Path:
    """Where derived data is kept to save time (decoded image folders, shard tag counts):
    $STUDYLIB_CACHE, default $XDG_CACHE_HOME/studylib (~/.cache/studylib). Deleting it costs time,
    never results."""
    home = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return folder_from("STUDYLIB_CACHE", home / "studylib")


def results_dir(key: str) -> Path:
    """Where study tables go: $STUDYLIB_RESULTS/<key>, default <repo>/results/<key>; the key is the
    preset, or the preset and the hash of its overrides (`results_key`)."""
    return folder_from("STUDYLIB_RESULTS", REPO_ROOT / "results") / key


def figures_dir(key: str) -> Path:
    """Where figures go: $STUDYLIB_FIGURES/<key>, default <repo>/figures/<key>."""
    return folder_from("STUDYLIB_FIGURES", REPO_ROOT / "figures") / key


def check_output_places(key: str) -> None:
    """Before anything trains: every folder a command may write (runs, results/<key>, the cache,
    figures/<key>) is, or can be made, a writable folder."""
    for variable, folder in (
        ("STUDYLIB_RUNS", runs_dir()),
        ("STUDYLIB_RESULTS", results_dir(key)),
        ("STUDYLIB_CACHE", cache_dir()),
        ("STUDYLIB_FIGURES", figures_dir(key)),
    ):
        check_folder(variable, folder)


# system folders that take writes as root but store nothing (os.access says yes to root there)
NOT_STORAGE = (Path("/proc"), Path("/sys"), Path("/dev"))


def check_folder(label: str, folder: Path, empty: bool = False) -> Path:
    """The one check of a place a command writes, before any work: `folder` is, or can be made, a
    writable folder on storage (with `empty`, a new or empty one); else a one-line ConfigError that
    names `label` (a variable or an option). Returns it absolute."""
    absolute = folder.expanduser().absolute()
    if any(absolute.resolve().is_relative_to(system) for system in NOT_STORAGE):
        raise ConfigError(
            f"{label}: {folder} is inside {', '.join(map(str, NOT_STORAGE))}, which store "
            "nothing; allowed: a folder on a disk"
        )
    existing = next(p for p in (absolute, *absolute.parents) if p.exists() or p.is_symlink())
    if not existing.is_dir():
        kind = "a dangling link" if existing.is_symlink() and not existing.exists() else "a file"
        raise ConfigError(
            f"{label}: {existing} is {kind}, where {folder} should be; allowed: a folder"
        )
    if empty and existing == absolute and any(absolute.iterdir()):
        raise ConfigError(
            f"{label}: {folder} is not an empty folder; allowed: a new or empty folder"
        )
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(
            f"{label}: {existing} is not writable, so {folder} cannot be written; allowed: a "
            "writable folder"
        )
    return absolute
