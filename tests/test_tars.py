"""studylib.tars reads what webdataset reads: the same samples, or the same error, on fuzzed tars
(ustar, GNU and pax headers, long names, directories, links, meta files, truncation, flipped
bytes)."""

import io
import tarfile

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from studylib import tars

FORMATS = {"ustar": tarfile.USTAR_FORMAT, "gnu": tarfile.GNU_FORMAT, "pax": tarfile.PAX_FORMAT}
WORD = st.text("abcXYZ_09é-", min_size=1, max_size=12)
LONG = st.text("abcdefgh", min_size=90, max_size=160)  # past ustar's 100 characters
EXT = st.sampled_from(["jpg", "JPG", "json", "txt", "cls.txt", "jpeg"])


@st.composite
def members(draw):
    """A tar's members in order: (kind, name, data)."""
    found = []
    for _ in range(draw(st.integers(0, 8))):
        key = draw(st.one_of(WORD, LONG, st.tuples(WORD, WORD).map("/".join)))
        for ext in draw(st.lists(EXT, min_size=1, max_size=3, unique=True)):
            data = draw(st.binary(max_size=1100))
            found.append(("file", f"{key}.{ext}", data))
        extra = draw(st.sampled_from([None, "dir", "link", "meta", "noext"]))
        if extra == "dir":
            found.append(("dir", f"{key}_d", b""))
        elif extra == "link":
            found.append(("link", f"{key}.lnk", b""))
        elif extra == "meta":
            found.append(("file", "__meta__.json", b"{}"))
        elif extra == "noext":
            found.append(("file", key.split("/")[-1], b"x"))
    return found


def write_tar(path, items, form: str) -> None:
    with tarfile.open(path, "w", format=FORMATS[form]) as tar:
        for kind, name, data in items:
            info = tarfile.TarInfo(name)
            if kind == "dir":
                info.type = tarfile.DIRTYPE
            elif kind == "link":
                info.type, info.linkname = tarfile.SYMTYPE, "target.jpg"
            else:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if kind == "file" else None)


def outcome(reader, path):
    """What a reader yields, or the kind of error it raised and what it yielded first."""
    got = []
    try:
        for sample in reader([str(path)]):
            got.append(sample)
    except Exception as err:  # noqa: BLE001
        return got, type(err).__name__
    return got, None


@settings(max_examples=150, deadline=None)
@given(
    items=members(),
    form=st.sampled_from(sorted(FORMATS)),
    damage=st.sampled_from([None, "truncate", "flip"]),
    where=st.floats(0, 1),
)
def test_the_same_samples_or_errors_as_webdataset(tmp_path_factory, items, form, damage, where):
    path = tmp_path_factory.mktemp("tars") / "shard.tar"
    try:
        write_tar(path, items, form)
    except ValueError:
        return  # a name ustar cannot hold: no such tar exists
    raw = bytearray(path.read_bytes())
    at = int(where * (len(raw) - 1))
    if damage == "truncate":
        raw = raw[:at]
    elif damage == "flip":
        raw[at] ^= 0x41
    path.write_bytes(bytes(raw))
    assert outcome(tars.samples, path) == outcome(tars._webdataset, path)


def test_the_fast_reader_reads_the_writers_tars_without_webdataset(tmp_path, monkeypatch):
    """Pax (webdataset's writer), GNU long names and ustar prefixes take the fast path."""
    items = [("file", f"{'k' * 120}/{i:04d}.jpg", bytes([i]) * 700) for i in range(3)]
    for form in FORMATS:
        path = tmp_path / f"{form}.tar"
        try:
            write_tar(path, items, form)
        except ValueError:
            continue
        monkeypatch.setattr(tars, "_webdataset", pytest.fail)
        got = list(tars.samples([str(path)]))
        assert [s["__key__"] for s in got] == [n.rsplit(".", 1)[0] for _, n, _ in items]
        assert [s["jpg"] for s in got] == [d for _, _, d in items]
