"""A disk that refuses a write (full, over quota, a file too large, an I/O error) is one line naming
the file and the free space, at every writer, with nothing half-written."""

import errno

import pytest

from studylib import io, shard_writer
from studylib.cli import main
from studylib.config import load_experiment
from studylib.data import synthetic
from studylib.errors import WriteError
from studylib.stages import mae
from studylib.weak_labels import simulate


def _full(*_args, **_kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize("code", sorted(io.WRITE_FAILURES))
def test_an_atomic_write_that_fails_leaves_the_old_file_and_names_it(tmp_path, code):
    path = tmp_path / "table.csv"
    path.write_text("old")

    def write(f):
        f.write("half of it")
        raise OSError(code, "refused")

    with pytest.raises(WriteError, match=rf"^{path}: not written \(.*; .* GiB free on its disk\)"):
        io.atomic_write(path, write)
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["table.csv"]


def test_other_errors_pass_through_as_they_are(tmp_path):
    with pytest.raises(PermissionError):
        io.atomic_write(tmp_path / "x", lambda f: (_ for _ in ()).throw(PermissionError("no")))


def test_shards_on_a_full_disk_leave_no_folder(tmp_path, monkeypatch):
    data = synthetic(32, 8)
    calls = []

    def third_fails(*args, **kwargs):
        calls.append(1)
        return _full() if len(calls) == 3 else real(*args, **kwargs)

    real = shard_writer._jpeg
    monkeypatch.setattr(shard_writer, "_jpeg", third_fails)
    with pytest.raises(WriteError, match="pool: not written"):
        shard_writer.write_shards(
            data, simulate(data, load_experiment("smoke").tags), tmp_path / "pool"
        )
    assert list(tmp_path.iterdir()) == []


def test_export_on_a_full_disk_is_one_line_and_leaves_no_export(tmp_path, monkeypatch, capsys):
    run = mae.pretrain(load_experiment("smoke"))
    out = tmp_path / "exported"
    written = []
    real = io.os.replace

    def config_fails(src, dst):  # the weights go in, the config does not
        written.append(dst)
        return _full() if str(dst).endswith("config.json") else real(src, dst)

    monkeypatch.setattr(io.os, "replace", config_fails)
    assert main(["export", run.name, "--preset", "smoke", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "config.json: not written (No space left on device" in err[0]
    assert any(str(p).endswith("model.safetensors") for p in written) and not out.exists()
