"""The samples of WebDataset tars, read from their 512-byte headers: what webdataset yields (members
grouped by key, the extension lower-cased, `__...__` meta files skipped), at a small fraction of
tarfile's cost a member (benchmarks/RESULTS.md).

The headers a tar writer uses for WebDataset shards are read here: ustar and GNU, pax extended
headers ('path', 'size'), GNU long names. Any other case (a global or sparse header, a bad checksum,
a truncated shard) hands the shard over to webdataset itself from where it stood, so what is read
never differs from webdataset's samples or errors (tests/test_tars.py checks this on fuzzed tars).
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator
from typing import BinaryIO

BLOCK = 512
KEY_AND_EXT = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")  # webdataset's base_plus_ext
META = re.compile(r"__[^/]*__($|/)")
PAX_RECORD = re.compile(rb"(\d+) ([^=]+)=")
EMPTY = bytes(BLOCK)
REGULAR = (b"0", b"\0", b"7")
OTHER_FILES = (b"1", b"2", b"3", b"4", b"5", b"6")  # links, devices, directories, FIFOs


class Unusual(Exception):
    """A header this reader leaves to webdataset."""


def samples(paths: list[str]) -> Iterator[dict]:
    """The samples of the tars at `paths`, shard after shard, as webdataset's WebDataset yields
    them."""
    for path in paths:
        yielded = 0
        try:
            for sample in shard_samples(path):
                yield sample
                yielded += 1
        except Unusual:
            yield from itertools.islice(_webdataset([path]), yielded, None)


def _webdataset(paths: list[str]) -> Iterator[dict]:
    import webdataset as wds

    return iter(
        wds.WebDataset(
            paths, shardshuffle=False, nodesplitter=None, workersplitter=None, empty_check=False
        )
    )


def shard_samples(path: str) -> Iterator[dict]:
    """One tar's members grouped into samples by key; Unusual where webdataset must take over."""
    sample: dict | None = None
    for name, data in members(path):
        if "/" not in name and name.startswith("__") and name.endswith("__") or META.match(name):
            continue
        found = KEY_AND_EXT.match(name)
        if not found:
            continue
        key, ext = found.group(1), found.group(2).lower()
        if sample is None or key != sample["__key__"]:
            if sample is not None:
                yield sample
            sample = {"__key__": key, "__url__": path, "__local_path__": path}
        if ext in sample:
            raise Unusual(f"{name}: a repeated member")  # webdataset's own error
        sample[ext] = data
    if sample is not None:
        yield sample


def members(path: str) -> Iterator[tuple[str, bytes]]:
    """(name, bytes) of every regular file of the tar at `path`, in order."""
    with open(path, "rb") as tar:
        first, pending = True, {}  # pending: a pax or GNU header's name and size, for the next
        while True:
            header = tar.read(BLOCK)
            if len(header) < BLOCK or header == EMPTY:
                if first or pending or 0 < len(header) < BLOCK:
                    raise Unusual("an empty or truncated tar")
                return
            first = False
            kind, name, size = _parse(header)
            if kind in (b"x", b"X", b"L"):
                if pending:
                    raise Unusual("two extended headers in a row")
                body = _body(tar, size)
                pending = _pax(body) if kind != b"L" else {"name": _text(body.split(b"\0")[0])}
            elif kind in REGULAR and not (kind == b"\0" and name.endswith("/")):
                yield pending.get("name", name), _body(tar, pending.get("size", size))
                pending = {}
            elif kind in OTHER_FILES or kind in REGULAR:  # a directory, a link: no data
                pending = {}
            else:
                raise Unusual(f"a header of type {kind!r}")


def _body(tar: BinaryIO, size: int) -> bytes:
    blocks = -(-size // BLOCK) * BLOCK
    data = tar.read(blocks)
    if len(data) < blocks:
        raise Unusual("a truncated member")
    return data[:size]


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def _parse(header: bytes) -> tuple[bytes, str, int]:
    """A header's type, name (with the ustar prefix) and size; Unusual where its checksum fails."""
    stored = _number(header[148:156])
    unsigned = sum(header) - sum(header[148:156]) + 8 * 32
    if stored != unsigned:
        signed = unsigned - 256 * sum(1 for b in header[:148] + header[156:] if b > 127)
        if stored != signed:
            raise Unusual("a bad checksum")
    kind = header[156:157]
    name = _text(header[:100].split(b"\0", 1)[0])
    prefix = _text(header[345:500].split(b"\0", 1)[0])
    if prefix and kind not in (b"L", b"K", b"S"):
        name = f"{prefix}/{name}"
    return kind, name, _number(header[124:136])


def _number(field: bytes) -> int:
    if field[:1] in (b"\x80", b"\xff"):
        raise Unusual("a base-256 number")
    text = field.split(b"\0", 1)[0].strip()
    try:
        return int(text or b"0", 8)
    except ValueError:
        raise Unusual("a bad number") from None


def _pax(body: bytes) -> dict:
    """The next member's name and size from a pax extended header's records."""
    position, values = 0, {}
    while found := PAX_RECORD.match(body, position):
        length, keyword = int(found.group(1)), found.group(2)
        if length == 0:
            raise Unusual("a pax record of length 0")
        value = body[found.end(2) + 1 : found.start(1) + length - 1]
        if keyword == b"path":
            values["name"] = _text(value)
        elif keyword == b"size":
            values["size"] = int(value)
        elif keyword.startswith(b"GNU.sparse") or keyword == b"hdrcharset":
            raise Unusual(f"a pax {keyword!r} record")
        position += length
    return values
