"""File writing and provenance that need no torch: atomic writes, file hashes, the code's commit,
durations. The commands that only read tables and draw (findings, figures) import this, not
studylib.runs."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from studylib.errors import WriteError

# what a disk says when a file cannot be written there, whoever writes it
WRITE_FAILURES = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO, errno.EROFS}


def atomic_write(path: Path, write: Callable[[Any], None], mode: str = "w") -> None:
    """Write through a temporary file in the same folder, then rename: readers never see half a
    file. A full disk and the like are a WriteError naming `path` (see `named_write_failures`)."""
    with named_write_failures(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.chmod(tmp, 0o644)
        try:
            with os.fdopen(fd, mode) as f:
                write(f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


@contextlib.contextmanager
def named_write_failures(path: Path) -> Iterator[None]:
    """An OSError of WRITE_FAILURES while writing `path` as one line: a WriteError naming the file,
    what the disk said and its free space. The writer itself leaves nothing half-written."""
    try:
        yield
    except OSError as err:
        if err.errno not in WRITE_FAILURES:
            raise
        raise WriteError(
            f"{path}: not written ({os.strerror(err.errno)}; {_free(path)} free on its disk); "
            "allowed: a disk with room and write access (nothing was left half-written)"
        ) from None


def _free(path: Path) -> str:
    for place in (path, *path.parents):
        try:
            return f"{shutil.disk_usage(place).free / 2**30:.2f} GiB"
        except OSError:
            continue
    return "unknown"


def sha256(path: Path) -> str:
    """The file's sha256, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def git_sha() -> str:
    """The commit of the studylib checkout, with '-dirty' when its code has uncommitted changes
    (outputs under figures/ and results/ do not count: drawing one figure must not mark the next
    one's code as dirty)."""
    repo = Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            [
                "git",
                "status",
                "--porcelain",
                "--untracked-files=no",
                "--",
                ".",
                ":!figures",
                ":!results",
            ],
            cwd=repo,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return sha + ("-dirty" if dirty else "")


def duration(seconds: float) -> str:
    """'1h02m', '3m05s', '12s'."""
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def warn(message: str) -> None:
    """One warning line on stderr."""
    print(f"studylib: warning: {message}", file=sys.stderr, flush=True)
