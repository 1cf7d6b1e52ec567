"""What each `studylib` command does (studylib.cli parses the command line and calls one of
these with its arguments): each `cmd_NAME` imports what it needs when it runs, so `studylib
--version` and `--help` stay fast and torch-free.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import time
from pathlib import Path

import yaml

from studylib import registry
from studylib.config import load_experiment
from studylib.errors import ConfigError, StudylibError, one_line
from studylib.experiment import Experiment, result_settings
from studylib.io import atomic_write
from studylib.paths import (
    REPO_ROOT,
    check_folder,
    check_output_places,
    results_dir,
    runs_dir,
)


def _experiment(args: argparse.Namespace, writes: bool = True) -> Experiment:
    """The command's experiment; for a command that writes, its output places checked first."""
    exp = load_experiment(args.preset, args.overrides, getattr(args, "config", None))
    exp = dataclasses.replace(exp, pilot=getattr(args, "pilot", False))
    if writes:
        check_output_places(exp.results_key)
    return exp


def _choose(kind: str, name: str, choices: dict) -> None:
    if name not in choices:
        raise ConfigError(f"{kind} {name!r} is unknown; allowed: {list(choices)}")


def cmd_study(args: argparse.Namespace) -> None:
    """run a study (default: the default study)"""
    _choose("study", args.name, registry.STUDIES)
    exp = _experiment(args)  # checked before torch is imported: bad input costs no wait
    from studylib import distributed

    distributed.init()  # several processes under torchrun: one DDP study
    start = time.perf_counter()
    study = registry.STUDIES[args.name]
    table = registry.call(study.run, exp)
    print(registry.call(study.shown, table))
    print(
        f"Elapsed in this call: {(time.perf_counter() - start) / 60:.1f} min; "
        f"table: {results_dir(exp.results_key) / (args.name + '.csv')}"
    )
    if distributed.is_main():
        _figures_and_findings(exp, args.name)


def _figures_and_findings(exp: Experiment, study: str) -> None:
    """What a researcher looks at after a study: its figures, and the findings of every table so
    far."""
    from studylib.figures import make_all
    from studylib.findings import write

    for name, paths in make_all(exp.results_key, registry.STUDIES[study].figures).items():
        print(f"figure {name}: {paths[0]}")
    if registry.STUDIES[study].arms != ():  # a study of arms has findings
        try:
            write(exp.results_key, exp.analysis)
            print(f"findings: {results_dir(exp.results_key) / 'findings.md'}")
        except StudylibError as err:  # e.g. tables of two precisions: the study itself is done
            print(f"findings not written: {one_line(str(err), 300)}")


def cmd_notebooks(args: argparse.Namespace) -> None:
    """run the study notebooks in batch with papermill"""
    from studylib.notebooks import run_notebooks

    start = time.perf_counter()
    run_notebooks(
        args.preset, args.only, args.overrides, args.executor, Path(args.out) if args.out else None
    )
    print(f"all notebooks: {(time.perf_counter() - start) / 60:.1f} min")


def cmd_transfer(args: argparse.Namespace) -> None:
    """run the transfer suite"""
    for name in args.arms:
        _choose("arm", name, registry.ARMS)
    exp = _experiment(args)
    from studylib import distributed
    from studylib.study import pretrain_arm
    from studylib.transfer import import_checkpoint, summary, transfer_suite

    distributed.init()
    if args.checkpoint:
        encoders = [import_checkpoint(exp, args.checkpoint, args.layout)]
    else:
        encoders = [pretrain_arm(exp, registry.ARMS[name])[0] for name in args.arms]
    for encoder in encoders:
        start = time.perf_counter()
        table = transfer_suite(exp, encoder)
        print(summary(table).to_string())
        print(
            f"{encoder.name}: {(time.perf_counter() - start) / 60:.1f} min in this call; "
            f"table: {encoder.path / 'transfer.csv'}",
            flush=True,
        )


def cmd_figures(args: argparse.Namespace) -> None:
    """make every figure from the results"""
    from studylib.figures import make_all

    for name, paths in make_all(_experiment(args).results_key).items():
        print(f"{name}: {', '.join(str(p) for p in paths)}")


def cmd_submit(args: argparse.Namespace) -> None:
    """submit a job through submitit and watch it"""
    import pandas as pd

    from studylib.launch import submit, watch

    _choose("job target", args.target, registry.targets())
    job = submit(args.target, args.preset, args.overrides, args.config)
    print(f"submitted {args.target} as job {job.job_id}; logs: {job.paths.stdout}", flush=True)
    if not args.no_wait:
        result = watch([job])[0]
        if isinstance(result, list) and result and isinstance(result[0], pd.DataFrame):
            result = result[0]  # a job of several tasks: rank 0's result
        study = registry.STUDIES.get(args.target)
        print(
            registry.call(study.shown, result)
            if study and isinstance(result, pd.DataFrame)
            else result
        )


def cmd_config(args: argparse.Namespace) -> None:
    """print the resolved configuration

    The resolved experiment (every value that decides results), and where its tables go; or one
    setting explained (--explain KEY)."""
    exp = _experiment(args, writes=False)
    if args.explain:
        from studylib.explain import explain

        print(explain(exp, args.explain), end="")
        return
    print(yaml.safe_dump(result_settings(exp), sort_keys=False).rstrip())
    print("# not in any result (speed, places, the analysis plan):")
    print(yaml.safe_dump(_not_in_results(exp), sort_keys=False).rstrip())
    print(f"# overrides that change results: {exp.overrides or 'none'}")
    print(f"# tables: {results_dir(exp.results_key)}")
    try:  # run names hold the data's fingerprint: without the data there are none to print
        chains = {
            name: registry.call(arm.pretrain, exp, train=False)
            for name, arm in registry.ARMS.items()
        }
    except StudylibError as err:
        print(f"# run folders: not known without the data ({one_line(str(err), 200)})")
        return
    print(f"# run folders under {runs_dir() / exp.preset}, seed {exp.seed} (each arm's chain):")
    for name, chain in chains.items():
        print(f"#   {name:8s} {' -> '.join(run.name for run in chain)}")


def _not_in_results(value: object) -> dict:
    """The settings that result_settings leaves out: speed-only ones, launch, and the analysis
    plan."""
    out = {}
    for f in dataclasses.fields(value):
        item = getattr(value, f.name)
        if f.metadata.get("internal"):
            continue
        if f.metadata.get("identity", True) is False:
            out[f.name] = dataclasses.asdict(item) if dataclasses.is_dataclass(item) else item
        elif dataclasses.is_dataclass(item) and (inner := _not_in_results(item)):
            out[f.name] = inner
    return out


def fill_readme(block: str, text: str) -> None:
    """Replace what stands between `<!-- BLOCK: begin -->` and `<!-- BLOCK: end -->` in the
    README."""
    readme = REPO_ROOT / "README.md"
    pattern = re.compile(rf"(<!-- {block}: begin -->\n).*?(<!-- {block}: end -->)", re.DOTALL)
    old = readme.read_text()
    if not pattern.search(old):
        raise ConfigError(
            f"{readme}: no '<!-- {block}: begin -->' ... '<!-- {block}: end -->' block to fill"
        )
    new = pattern.sub(lambda m: m.group(1) + text + m.group(2), old)
    atomic_write(readme, lambda f: f.write(new))
    print(f"{readme}: {block} rewritten")


def cmd_registry(args: argparse.Namespace) -> None:
    """print the arms, studies, tasks and stages"""
    text = registry.markdown()
    if args.readme:
        fill_readme("registry", text)
    else:
        print(text, end="")


def cmd_findings(args: argparse.Namespace) -> None:
    """check the paper's claims against the results

    The paper's claims against the study tables of a preset (and overrides):
    results/<key>/findings.md."""
    from studylib.findings import write

    exp = _experiment(args)
    key = exp.results_key
    if args.readme:
        if key != "cpu":
            raise ConfigError(
                "--readme: the README's findings come from the cpu preset's own results, not "
                f"{key!r}; allowed: --preset cpu without result-changing --set"
            )
        if not (results_dir(key) / "default.csv").exists():
            raise ConfigError(
                f"--readme: {results_dir(key) / 'default.csv'} does not exist, and the README's "
                "findings are never written from no results; allowed: after `studylib study`"
            )
    text = write(key, exp.analysis)
    if args.readme:
        from studylib.captions import how_made, presets_table, readme_block

        fill_readme("findings", text)
        fill_readme("verdicts-figure", readme_block(key, ["verdicts"]))
        fill_readme("figures", readme_block(key, [n for n in registry.FIGURES if n != "verdicts"]))
        fill_readme("presets", presets_table())
        fill_readme("made", how_made(key))
    else:
        print(text, end="")
    print(f"written: {results_dir(key) / 'findings.md'}, findings.csv")


def cmd_plan(args: argparse.Namespace) -> None:
    """seeds each claim needs, from the pilot seeds' results

    Written to results/<key>/plan.md, from the pilot seeds' tables."""
    from studylib.plan import write

    exp = _experiment(args)
    print(write(exp), end="")
    print(f"written: {results_dir(exp.results_key) / 'plan.md'}")


def cmd_export(args: argparse.Namespace) -> None:
    """a run's encoder for timm and the Hugging Face Hub

    A run's encoder as model.safetensors, a timm config.json and a model card, ready for the
    Hub: the run by name or folder, or an arm's encoder run at the preset's seed (--set seed=N)."""
    from studylib.export import export, find_run

    out = check_folder("--out", Path(args.out), empty=True)
    name = args.run
    if name in registry.ARMS:
        exp = _experiment(args, writes=False)
        name = str(registry.call(registry.ARMS[name].pretrain, exp, train=False)[-1].path)
    for path in export(find_run(name, args.preset), out):
        print(f"written: {path}")
    print(f"upload: hf upload USER/NAME {args.out}")


def cmd_tags(args: argparse.Namespace) -> None:
    """print hashtag statistics"""
    from studylib.pool import open_pool

    exp = _experiment(args, writes=False)
    hashtags = open_pool(exp).hashtags
    for key, value in hashtags.stats().items():
        print(f"{key:28s} {value:.3f}" if isinstance(value, float) else f"{key:28s} {value}")
    print("examples:")
    for caption in hashtags.captions()[:5]:
        print("  ", caption)


def cmd_shards(args: argparse.Namespace) -> None:
    """write the pool with its hashtags as WebDataset shards, or index a folder of tars"""
    from studylib.pool import open_pool
    from studylib.shard_writer import folder_labels, index_shards, write_shards
    from studylib.weak_labels import simulate

    if args.index:
        index = index_shards(Path(args.index))
        print(
            f"{sum(s['samples'] for s in index)} samples in {len(index)} shards: "
            f"{Path(args.index) / 'shards.json'}"
        )
        return
    exp = _experiment(args, writes=False)
    # copied file by file
    source = Path(exp.data.pretrain).expanduser() if exp.data.stream else None
    out = _shards_out(Path(args.out), source, args.per_shard, args.max_size)
    images = folder_labels(source) if source else open_pool(exp).images
    hashtags, size = simulate(images, exp.tags), args.max_size
    index = write_shards(
        images, hashtags, out, per_shard=args.per_shard, source=source, max_size=size
    )
    print(
        f"{sum(s['samples'] for s in index)} samples in {len(index)} shards: {out}/00000.tar ... "
        f"{index[-1]['name']}, index {out / 'shards.json'}"
    )


def _shards_out(out: Path, source: Path | None, per_shard: int, max_size: int) -> Path:
    """--out checked before anything is read or written: a new or empty folder that can be made, not
    inside the source; --per-shard at least 1; --max-size 0 (keep) or at least 1."""
    if per_shard < 1 or max_size < 0:
        raise ConfigError(
            f"--per-shard {per_shard}, --max-size {max_size}: allowed: --per-shard >= 1, "
            "--max-size 0 (keep sizes) or a short side in pixels"
        )
    check_folder("--out", out, empty=True)
    if source is not None and out.absolute().resolve().is_relative_to(source.resolve()):
        raise ConfigError(
            f"--out {out}: inside the source image folder {source}; allowed: a folder outside it"
        )
    return out


def cmd_runs(args: argparse.Namespace) -> None:
    """list the finished runs of a preset

    One line a finished run under the preset's runs folder (what export takes)."""
    import pandas as pd

    from studylib.runs import finished_runs

    table = pd.DataFrame(finished_runs(runs_dir() / args.preset))
    if table.empty:
        print(f"no finished runs under {runs_dir() / args.preset}")
        return
    print(table.to_string(index=False, float_format=lambda v: f"{v:.4g}"))


def cmd_models(_args: argparse.Namespace) -> None:
    """print model sizes"""
    import pandas as pd

    from studylib.models import size_table

    print(pd.DataFrame(size_table()).round(3).to_string(index=False))
