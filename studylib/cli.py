"""The `studylib` command.

    studylib study [NAME] [--preset cpu] [--set KEY=VALUE ...] [--pilot]
        a study of studylib.registry.STUDIES (default: `default`, every arm and probes)
    studylib notebooks [--preset cpu] [--only NAME ...]
        every study notebook in batch (papermill)
    studylib transfer [--arm NAME ...] [--checkpoint FILE]
        the transfer suite on arms' encoders, or on an outside checkpoint
    studylib figures [--preset cpu] [--set ...]
        every figure from the results
    studylib submit TARGET [--preset cpu] [--set ...]
        a study or an arm as a submitit job (local, debug or SLURM: --set launch.executor=slurm)
    studylib config [--preset cpu] [--set ...]
        the resolved configuration, where its tables go
    studylib findings [--preset cpu] [--readme]
        the paper's claims against the results, by the declared analysis plan (findings.md)
    studylib plan [--preset cpu]
        seeds each claim needs, from the pilot seeds (`studylib study NAME --pilot`)
    studylib export RUN --out DIR
        a run's encoder as safetensors, timm config and model card (Hugging Face Hub layout)
    studylib registry [--readme]
        arms, studies, tasks and stages (README tables)
    studylib tags [--preset cpu]
        statistics of the simulated hashtags
    studylib models
        parameters and FLOPs of every ViT size

Bad input (config keys, values, data paths) prints one line naming the file, key and allowed values
and exits with status 2, before anything is written.
"""

from __future__ import annotations

import argparse
import signal
import sys

from studylib import commands, registry
from studylib.errors import StudylibError, one_line
from studylib.paths import absolute_paths

EXAMPLES = {
    "study": "  studylib study --preset smoke\n"
    "  studylib study wsp_epochs --preset cpu --set studies.seeds=[19]\n"
    "  studylib study --preset cpu --pilot",
    "notebooks": "  studylib notebooks --preset cpu\n"
    "  studylib notebooks --preset cpu --only wsp data_size",
    "transfer": "  studylib transfer --preset cpu --arm wsp mae_wsp\n"
    "  studylib transfer --preset cpu --checkpoint mae_pretrain_vit_base.pth --layout mae "
    "--set model=B/16",
    "figures": "  studylib figures --preset cpu",
    "submit": "  studylib submit --preset smoke\n"
    "  studylib submit mae_wsp --preset paper --set launch.executor=slurm --no-wait",
    "config": "  studylib config --preset cpu\n  studylib config --preset cpu --set mae.epochs=16\n"
    "  studylib config --preset cpu --explain wsp.epoch_images",
    "findings": "  studylib findings --preset cpu\n  studylib findings --preset cpu --readme",
    "plan": "  studylib study --preset cpu --pilot\n  studylib plan --preset cpu",
    "export": "  studylib export mae --preset cpu --set seed=13 --out exported/mae-nano\n"
    "  studylib export mae-191539b5 --preset cpu --out exported/mae-nano",
    "runs": "  studylib runs --preset cpu",
    "registry": "  studylib registry\n  studylib registry --readme",
    "tags": "  studylib tags --preset cpu --set tags.noise_vocab=1000",
    "shards": "  studylib shards --preset cpu --out shards/cifar100-pool --per-shard 500\n"
    "  studylib shards --preset cpu --out shards/cifar100-256 --max-size 256\n"
    "  studylib shards --index /data/web-tags",
    "models": "  studylib models",
}


# in the order of `studylib --help`: each is commands.cmd_NAME, its help its docstring's first line
SUBCOMMANDS = (
    "study notebooks transfer figures submit config findings plan export runs registry tags shards "
    "models"
).split()


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="studylib", description=__doc__.split("\n")[0])
    root.add_argument(
        "--version", nargs=0, action=_Version, help="show the version and the checkout's commit"
    )
    sub = root.add_subparsers(dest="command", required=True)
    for name in SUBCOMMANDS:
        func = getattr(commands, f"cmd_{name}")  # looked up per call: a patched one is the one run
        text = (func.__doc__ or name).split("\n")[0]  # its docstring's first line
        p = sub.add_parser(
            name,
            help=text,
            description=text,
            epilog="examples:\n" + EXAMPLES[name],
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        p.set_defaults(func=func)
        if name in OWN_ARGUMENTS:
            OWN_ARGUMENTS[name](p)
        _shared_arguments(p, name)
    return root


def _study_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", nargs="?", default="default", help=f"one of {list(registry.STUDIES)}")


def _notebooks_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--only", nargs="+", default=[], metavar="NAME", help="only these notebooks")
    p.add_argument(
        "--executor",
        default="local",
        help="where each notebook's job runs (default: local)",
    )
    p.add_argument(
        "--out",
        help="folder of the executed copies (default: $STUDYLIB_OUTPUT/notebooks/PRESET, "
        "STUDYLIB_OUTPUT defaulting to <repo>/output)",
    )


def _transfer_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--arm",
        dest="arms",
        nargs="+",
        default=list(registry.STUDIES["transfer"].arms),
        metavar="ARM",
        help=f"arms whose encoders to evaluate, of {list(registry.ARMS)} "
        f"(default: {' '.join(registry.STUDIES['transfer'].arms)})",
    )
    p.add_argument("--checkpoint", help="an outside checkpoint file (timm, MAE or MAWS weights)")
    p.add_argument("--layout", default="auto", help="its layout: auto, timm, mae or maws")


def _submit_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "target",
        nargs="?",
        default="default",
        help=f"what the job runs: a study or an arm, one of {list(registry.targets())} "
        "(default: default)",
    )
    p.add_argument("--no-wait", action="store_true", help="submit and return")


def _export_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "run",
        help="a finished init, mae or wsp run: its folder, its name under the preset's runs "
        "(studylib runs), or an arm's name (its encoder run at the preset's seed: --set seed=N)",
    )
    p.add_argument(
        "--out",
        required=True,
        help="a new or empty folder for model.safetensors, config.json and README.md",
    )


def _shards_arguments(p: argparse.ArgumentParser) -> None:
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--out", help="a new folder for 00000.tar, ... and shards.json")
    which.add_argument(
        "--index",
        metavar="FOLDER",
        help="a folder of tars (img2dataset's output): write its "
        "shards.json, each tar's samples counted",
    )
    p.add_argument("--per-shard", type=int, default=1000, help="samples per shard (default: 1000)")
    p.add_argument(
        "--max-size",
        type=int,
        default=0,
        help="resize to this short side where larger, aspect "
        "kept, as img2dataset does (default: 0, keep)",
    )


def _config_arguments(p: argparse.ArgumentParser) -> None:
    meaning = "what one setting means, its allowed values and default, and whether it names runs"
    p.add_argument("--explain", metavar="KEY", help=meaning)


OWN_ARGUMENTS = {
    "config": _config_arguments,
    "study": _study_arguments,
    "notebooks": _notebooks_arguments,
    "transfer": _transfer_arguments,
    "submit": _submit_arguments,
    "export": _export_arguments,
    "shards": _shards_arguments,
}


def _shared_arguments(p: argparse.ArgumentParser, name: str) -> None:
    """The options several commands share: --pilot, --readme, and the preset, its overrides and
    config file."""
    if name in ("study", "findings", "figures"):
        p.add_argument(
            "--pilot",
            action="store_true",
            help="the pilot seeds (studies.pilot_seeds), tables in results/<key>/pilot/: "
            "for `studylib plan`, in no verdict",
        )
    if name in ("registry", "findings"):
        p.add_argument("--readme", action="store_true", help=f"rewrite the README's {name} tables")
    if name not in ("models", "registry"):
        p.add_argument(
            "--preset",
            default="cpu",
            help="preset of experiments.yaml: smoke (synthetic, seconds), "
            "cpu (real CIFAR, 2 cores), gpu, paper (default: cpu)",
        )
        p.add_argument(
            "--set",
            dest="overrides",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="override a config value, e.g. --set mae.epochs=3 (repeatable)",
        )
        if name != "notebooks":
            p.add_argument(
                "--config", default=None, help="config file (default: the repo's experiments.yaml)"
            )


class _Version(argparse.Action):
    """--version, worked out only when asked for (it reads git and the installed packages)."""

    def __call__(self, parser: argparse.ArgumentParser, *_args: object) -> None:
        print(f"studylib {version()}")
        parser.exit()


def version() -> str:
    """The installed package's version and the checkout's commit."""
    from importlib import metadata

    from studylib.io import git_sha

    try:
        installed = metadata.version("studylib")
    except metadata.PackageNotFoundError:
        installed = "(not installed)"
    return f"{installed} ({git_sha()[:12]})"


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    absolute_paths()
    # SIGTERM (a `kill`, a closing terminal) stops the command as Ctrl-C does: with its local jobs
    before = signal.signal(signal.SIGTERM, _interrupt)
    try:
        args.func(args)
    except StudylibError as err:
        print(f"studylib: {err.kind}: {one_line(str(err))}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print(
            "studylib: interrupted: stopped; every finished epoch is in its run's checkpoint, "
            "and the same command resumes",
            file=sys.stderr,
        )
        return 130
    finally:
        signal.signal(signal.SIGTERM, before)
    return 0


def _interrupt(_number: int, _frame: object) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())
