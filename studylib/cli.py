"""The `studylib` command.

    studylib study  [--preset cpu] [--set KEY=VALUE ...]   the default study (MAE->WSP vs WSP, probes)
    studylib submit TARGET [--preset cpu] [--set ...]      the same as a submitit job (local, debug or SLURM:
                                                           --set launch.executor=slurm), watched until done
    studylib tags   [--preset cpu]                         statistics of the simulated hashtags
    studylib models                                        parameters and FLOPs of every ViT size

Bad input (config keys, values, data paths) prints one line naming the file, key and allowed values
and exits with status 2, before anything is written.
"""

from __future__ import annotations

import argparse
import sys
import time

import pandas as pd

from studylib import distributed
from studylib.config import ConfigError, Experiment, load_experiment
from studylib.engine import DivergedError


def _experiment(args: argparse.Namespace) -> Experiment:
    return load_experiment(args.preset, args.overrides, args.config)


def cmd_study(args: argparse.Namespace) -> None:
    from studylib.config import results_dir
    from studylib.study import default_study, summary_text

    exp = _experiment(args)
    distributed.init()  # several processes under torchrun: one DDP study
    start = time.perf_counter()
    table = default_study(exp)
    print(summary_text(table))
    print(f"Elapsed in this call: {(time.perf_counter() - start) / 60:.1f} min; "
          f"table: {results_dir(exp.preset) / 'default_study.csv'}")


def cmd_submit(args: argparse.Namespace) -> None:
    from studylib.launch import submit, watch

    job = submit(args.target, args.preset, args.overrides, args.config)
    print(f"submitted {args.target} as job {job.job_id}; logs: {job.paths.stdout}", flush=True)
    if not args.no_wait:
        result = watch([job])[0]
        if isinstance(result, list):  # a job of several tasks: rank 0's result
            result = result[0]
        if args.target == "study":
            from studylib.study import summary_text

            print(summary_text(result))
        else:
            print(result)


def cmd_tags(args: argparse.Namespace) -> None:
    from studylib.stages import pretrain_images
    from studylib.weak_labels import simulate

    exp = _experiment(args)
    hashtags = simulate(pretrain_images(exp), exp.tags)
    for key, value in hashtags.stats().items():
        print(f"{key:28s} {value:.3f}" if isinstance(value, float) else f"{key:28s} {value}")
    print("examples:")
    for caption in hashtags.captions()[:5]:
        print("  ", caption)


def cmd_models(_args: argparse.Namespace) -> None:
    from studylib.models import size_table

    print(pd.DataFrame(size_table()).round(3).to_string(index=False))


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="studylib", description=__doc__.split("\n")[0])
    sub = root.add_subparsers(dest="command", required=True)
    for name, func, text in (("study", cmd_study, "run the default study"),
                             ("submit", cmd_submit, "submit a job through submitit and watch it"),
                             ("tags", cmd_tags, "print hashtag statistics"),
                             ("models", cmd_models, "print model sizes")):
        p = sub.add_parser(name, help=text)
        p.set_defaults(func=func)
        if name == "submit":
            p.add_argument("target", help="what the job runs: study, mae or wsp")
            p.add_argument("--no-wait", action="store_true", help="submit and return")
        if name != "models":
            p.add_argument("--preset", default="cpu", help="preset of experiments.yaml (default: cpu)")
            p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                           help="override a config value, e.g. --set mae.epochs=3 (repeatable)")
            p.add_argument("--config", default=None, help="config file (default: the repo's experiments.yaml)")
    return root


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        args.func(args)
    except ConfigError as err:
        print(f"studylib: error: {err}", file=sys.stderr)
        return 2
    except DivergedError as err:
        print(f"studylib: diverged: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
