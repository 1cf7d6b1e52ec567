"""The `studylib` command.

    studylib study [NAME] [--preset cpu] [--set KEY=VALUE ...]  a study (default: MAE->WSP vs WSP, probes;
                                                               also explore, model_size, data_size,
                                                               wsp_epochs, transfer)
    studylib notebooks [--preset cpu] [--only NAME ...]        every study notebook in batch (papermill)
    studylib transfer [--checkpoint FILE] [--layout auto]      the transfer suite on the preset's WSP and
                                                               MAE->WSP runs, or on an outside checkpoint
    studylib figures [--preset cpu]                            every figure from the results
    studylib submit TARGET [--preset cpu] [--set ...]          a study or stage as a submitit job (local,
                                                               debug or SLURM: --set launch.executor=slurm)
    studylib tags   [--preset cpu]                             statistics of the simulated hashtags
    studylib models                                            parameters and FLOPs of every ViT size

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
    return load_experiment(args.preset, args.overrides, getattr(args, "config", None))


def cmd_study(args: argparse.Namespace) -> None:
    from studylib.config import results_dir
    from studylib.study import STUDIES, summary_text

    if args.name not in STUDIES:
        raise ConfigError(f"study {args.name!r} is unknown; allowed: {sorted(STUDIES)}")
    exp = _experiment(args)
    distributed.init()  # several processes under torchrun: one DDP study
    start = time.perf_counter()
    table = STUDIES[args.name](exp)
    if args.name == "default":
        print(summary_text(table))
    elif args.name == "explore":
        print(table[table.stage == "hashtags"][["metric", "value"]].to_string(index=False))
    else:
        top1 = table[(table.metric == "top1") & ~table.variant.astype("string").fillna("").str.contains("/")]
        columns = ("model", "mae_data", "wsp_epochs", "stage", "variant", "pretraining")
        index = [c for c in columns if top1[c].notna().any()]
        print(top1.pivot_table(index=index, columns="dataset", values="value").round(2).to_string())
    print(f"Elapsed in this call: {(time.perf_counter() - start) / 60:.1f} min; "
          f"table: {results_dir(exp.preset) / (args.name + '.csv')}")


def cmd_notebooks(args: argparse.Namespace) -> None:
    from studylib.notebooks import run_notebooks

    start = time.perf_counter()
    run_notebooks(args.preset, args.only, args.overrides, args.executor)
    print(f"all notebooks: {(time.perf_counter() - start) / 60:.1f} min")


def cmd_transfer(args: argparse.Namespace) -> None:
    from studylib.stages import mae, wsp
    from studylib.transfer import import_checkpoint, summary, transfer_suite

    exp = _experiment(args)
    distributed.init()
    if args.checkpoint:
        encoders = [import_checkpoint(exp, args.checkpoint, args.layout)]
    else:
        encoders = [wsp.pretrain(exp), wsp.pretrain(exp, init=mae.pretrain(exp))]
    for encoder in encoders:
        start = time.perf_counter()
        table = transfer_suite(exp, encoder)
        print(summary(table).to_string())
        print(f"{encoder.name}: {(time.perf_counter() - start) / 60:.1f} min in this call; "
              f"table: {encoder.path / 'transfer.csv'}", flush=True)


def cmd_figures(args: argparse.Namespace) -> None:
    from studylib.figures import make_all

    for name, paths in make_all(args.preset).items():
        print(f"{name}: {', '.join(str(p) for p in paths)}")


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
    for name, func, text in (("study", cmd_study, "run a study (default: the default study)"),
                             ("notebooks", cmd_notebooks, "run the study notebooks in batch with papermill"),
                             ("transfer", cmd_transfer, "run the transfer suite"),
                             ("figures", cmd_figures, "make every figure from the results"),
                             ("submit", cmd_submit, "submit a job through submitit and watch it"),
                             ("tags", cmd_tags, "print hashtag statistics"),
                             ("models", cmd_models, "print model sizes")):
        p = sub.add_parser(name, help=text)
        p.set_defaults(func=func)
        if name == "study":
            p.add_argument("name", nargs="?", default="default",
                           help="default, explore, model_size, data_size, wsp_epochs or transfer")
        if name == "notebooks":
            p.add_argument("--only", nargs="+", default=[], metavar="NAME", help="only these notebooks")
            p.add_argument("--executor", default="local", help="where each notebook's job runs (default: local)")
        if name == "transfer":
            p.add_argument("--checkpoint", help="an outside checkpoint file (timm, MAE or MAWS weights)")
            p.add_argument("--layout", default="auto", help="its layout: auto, timm, mae or maws")
        if name == "submit":
            p.add_argument("target", help="what the job runs: study, explore, model_size, data_size, wsp_epochs, "
                                          "transfer, mae or wsp")
            p.add_argument("--no-wait", action="store_true", help="submit and return")
        if name not in ("models",):
            p.add_argument("--preset", default="cpu", help="preset of experiments.yaml (default: cpu)")
            p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                           help="override a config value, e.g. --set mae.epochs=3 (repeatable)")
            if name != "notebooks":
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
