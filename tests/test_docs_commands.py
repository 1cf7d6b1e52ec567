"""Every `studylib` command the README and the commands' --help examples show is checked against the
CLI: it parses, names a known preset, study, job target or notebook, and its --set values pass the
config's checks (those naming a folder of the reader's own are checked for their keys only); the
cheap ones run for real."""

import re
import shlex
from pathlib import Path

import pytest

from studylib import registry
from studylib.cli import EXAMPLES, main, parser
from studylib.config import load_experiment
from studylib.errors import ConfigError
from studylib.notebooks import select

REPO = Path(__file__).resolve().parent.parent
PLACEHOLDER = re.compile(r"NAME|KEY=VALUE|\.\.\.|\[--|/path/|/data/|/shared/|exported/|<")


def commands() -> list[str]:
    """`studylib ...` lines of the README (inline code and code blocks, continuation lines joined)
    and of --help."""
    text = (REPO / "README.md").read_text().replace("\\\n", " ")
    found = re.findall(r"`((?:\.venv/bin/)?studylib [a-z][^`]*)`", text)
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.DOTALL):
        found += [
            line.split("#")[0].strip()
            for line in block.splitlines()
            if re.match(r"\s*(\.venv/bin/)?studylib ", line)
        ]
    found += [line.strip() for example in EXAMPLES.values() for line in example.splitlines()]
    return sorted(
        {c.strip().removeprefix(".venv/bin/") for c in found if not PLACEHOLDER.search(c)}
    )


@pytest.mark.parametrize("command", commands())
def test_a_documented_command_is_one_the_cli_takes(command):
    argv = shlex.split(command)[1:]
    args = parser().parse_args(argv)
    if args.command == "study":
        assert args.name in registry.STUDIES
    if args.command == "submit":
        assert args.target in registry.targets(), f"job target {args.target!r}"
    if args.command == "notebooks":
        select(args.only)
    if hasattr(args, "preset"):
        try:
            load_experiment(args.preset, args.overrides)
        except (
            ConfigError
        ) as err:  # a folder of the reader's own is not here; every other value must pass
            assert "existing image folder" in str(err), f"{command}: {err}"


def test_the_documents_show_enough_commands_to_check():
    assert len(commands()) >= 20


@pytest.mark.parametrize(
    "argv",
    [["config", "--preset", "smoke"], ["models"], ["registry"], ["tags", "--preset", "smoke"]],
)
def test_the_cheap_documented_commands_run(argv, capsys):
    assert main(argv) == 0
    assert capsys.readouterr().out.strip()
