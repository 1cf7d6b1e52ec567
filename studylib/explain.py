"""`studylib config --explain KEY`: what one setting means and does, read from the schema itself:
the comment written above it in studylib.schema or studylib.experiment (or its section's
docstring), its allowed values, its default and the preset's value, and whether it enters a run's
identity (and so its name)."""

from __future__ import annotations

import dataclasses
import functools
import inspect
import io
import textwrap
import tokenize
from typing import Any

from studylib.errors import ConfigError
from studylib.experiment import Experiment, names_runs


@functools.cache
def comments(cls: type) -> dict[str, str]:
    """Field name -> the comment lines right above its definition in `cls`'s source, and any
    comment ending its first line."""
    source = textwrap.dedent(inspect.getsource(cls))
    lines = source.splitlines()
    found: dict[int, str] = {}
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            found[token.start[0]] = token.string.lstrip("#").strip()
    out = {}
    for number, line in enumerate(lines, start=1):
        name = line.strip().split(":")[0]
        if not line.startswith("    ") or line.startswith("     ") or not name.isidentifier():
            continue
        above, k = [], number - 1
        while k in found and lines[k - 1].lstrip().startswith("#"):
            above.insert(0, found[k])
            k -= 1
        out[name] = " ".join(above + ([found[number]] if number in found else []))
    return out


def docstring(cls: type) -> str:
    """The first docstring written along `cls`'s dataclasses (not the signature dataclass makes)."""
    for c in cls.__mro__:
        doc = c.__dict__.get("__doc__") or ""
        if dataclasses.is_dataclass(c) and doc and not doc.startswith(f"{c.__name__}("):
            return inspect.cleandoc(doc)
    return ""


def _identity(path: list[dataclasses.Field]) -> str:
    """experiment.names_runs along the path from the Experiment to the setting, in words."""
    if any(names_runs(f) is False for f in path):
        return "no: a speed or place setting, or the analysis plan; it names no run"
    if names_runs(path[-1]) == "when set":
        return "when set away from its default (runs made before it existed keep their names)"
    return "yes: the identity of the runs it shapes holds it; a change trains (and names) new runs"


def explain(exp: Experiment, key: str) -> str:
    """Lines on `key` (dotted: wsp.epochs, transfer.finetune.layer_decay) in `exp`."""
    section: Any = exp
    path: list[dataclasses.Field] = []
    for part in key.split("."):
        fields = (
            {f.name: f for f in dataclasses.fields(section)}
            if dataclasses.is_dataclass(section)
            else {}
        )
        known = [n for n, f in fields.items() if not f.metadata.get("internal")]
        if part not in known:
            raise ConfigError(
                f"--explain {key}: no setting {part!r} there; allowed: {', '.join(known) or 'none'}"
            )
        owner, field = type(section), fields[part]
        path.append(field)
        section = getattr(section, part)
    if dataclasses.is_dataclass(section):
        names = ", ".join(f.name for f in dataclasses.fields(section))
        return f"{key}: a section: {docstring(type(section))}\nits settings: {names}\n"
    default = (
        field.default_factory()  # type: ignore[misc]
        if field.default is dataclasses.MISSING
        else field.default
    )
    written = [comments(c).get(field.name) for c in owner.__mro__ if dataclasses.is_dataclass(c)]
    meaning = next((text for text in written if text), None) or (
        f"(no comment of its own; its section: {docstring(owner).split(chr(10))[0]})"
    )
    return "\n".join(
        [
            f"{key}: {meaning}",
            f"  value in preset {exp.preset!r}: {section!r} (default {default!r})",
            f"  allowed: {field.metadata.get('allowed', field.type)}",
            f"  in a run's identity: {_identity(path)}",
            "",
        ]
    )
