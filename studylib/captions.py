"""The README's text that states results or settings, computed, never typed: each figure's caption
from the table it draws (registry Figure.caption), the presets table from experiments.yaml and each
preset's batch log, and how the results were made (cost, seeds, draws, precision) from the tables;
`studylib findings --readme` writes them into the README's blocks."""

from __future__ import annotations

import re

import pandas as pd
import yaml

from studylib.comparisons import paired, probe_top1, read_table, table_from
from studylib.config import load_experiment
from studylib.experiment import Experiment
from studylib.findings import CLAIMS
from studylib.paths import DEFAULT_CONFIG_FILE, figures_dir, results_dir
from studylib.registry import FIGURES, call, labels

INTERVAL = "mean and 95% t-interval"


def _words(items: list) -> str:
    items = [str(i) for i in items]
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _over(table: pd.DataFrame, key: str) -> str:
    """'n seeds, mean and 95% t-interval' as the table holds them: pilot or confirmation."""
    n = table.seed.nunique()
    kind = "pilot" if key.endswith("/pilot") else "confirmation"
    if n < 2:
        return f"one {kind} seed, no interval"
    return f"{INTERVAL} over {n} {kind} seeds"


def _arms(table: pd.DataFrame) -> str:
    return _words([labels()[a] for a in labels() if a in set(table.arm)])


def _probed(table: pd.DataFrame) -> str:
    return _words(list(dict.fromkeys(probe_top1(table).dataset.dropna())))


def verdicts(key: str, table: pd.DataFrame) -> str:
    matched = (
        ", with its counterpart at equal training FLOPs (MAE→WSP against WSP given MAE→WSP's FLOPs)"
        if "wsp_flops" in set(table.arm)
        else ""
    )
    return (
        f"Each claim's primary comparison on `{key}`{matched}: the paired difference at every "
        "seed (grey), its mean with the interval the verdict used (Holm-adjusted within its "
        "claim), the band of +- the planned 95% half-width around zero (an inconclusive "
        "interval inside it answers: no effect beyond it) and the verdict of the declared plan; n "
        "in each panel's title."
    )


def default(key: str, table: pd.DataFrame) -> str:
    return (
        f"{_arms(table)}: linear-probe top-1 on {_probed(table)}, {_over(table, key)} (higher is "
        "better)."
    )


def convergence(key: str, table: pd.DataFrame) -> str:
    lengths = sorted(int(e) for e in table.wsp_epochs.dropna().unique())
    return (
        f"Claim (b): {_arms(table)} after full WSP schedules of {_words(lengths)} epochs (top: "
        "per WSP epoch; bottom: per total training FLOP, MAE's included), "
        f"{_over(table, key)}; MAE alone does not depend on WSP's length."
    )


def model_size(key: str, table: pd.DataFrame) -> str:
    sizes = list(dict.fromkeys(table.model.dropna()))
    return (
        f"Claim (c): {_arms(table)} at ViT-{_words(sizes)}, against encoder parameters, "
        f"probed on {_probed(table)}, {_over(table, key)}."
    )


def data_size(key: str, table: pd.DataFrame) -> str:
    images = table[(table.stage == "mae") & (table.metric == "images")]
    counts = sorted(images.groupby("mae_data").value.mean().astype(int))
    return (
        f"Claim (d): {_arms(table)}, MAE pre-pretrained on {_words([f'{c:,}' for c in counts])} "
        f"distinct images with the same number of MAE steps, probed on {_probed(table)}, "
        f"{_over(table, key)}."
    )


def transfer(key: str, table: pd.DataFrame) -> str:
    single = " (descriptive, in no verdict)" if table.seed.nunique() < 2 else ""
    return (
        f"The transfer suite on {_arms(table)}, {_over(table, key)}{single}: fine-tuning beside "
        "the linear probe, 1/5/10-shot (sd over draws), LiT zero-shot on the pool's class names "
        "(in-distribution: they are WSP's hashtags), and top-1 under corruptions by severity."
    )


def reconstructions(key: str, table: pd.DataFrame) -> str:
    return (
        "MAE's reconstructions of test images: the image, the patches it sees, and its "
        "reconstruction with each patch's true mean and variance (the model predicts normalised "
        "pixels), as MAE's own visualisation does."
    )


def hashtags(key: str, table: pd.DataFrame) -> str:
    stats = table[table.stage == "hashtags"].set_index("metric")["value"]
    return (
        f"The simulated hashtags of the pool by rank: {int(stats['vocab_size'])} tags, "
        f"{stats['tags_per_image_mean']:.1f} per image, "
        f"{stats['missing_true_tag'] * 100:.0f}% of images lack their class's own tag."
    )


def readme_block(key: str, names: list[str]) -> str:
    """The figures `names` of `key` that are drawn, each with its caption (registry
    Figure.caption), for the README."""
    parts = []
    for figure in (FIGURES[name] for name in names):
        table = read_table(key, figure.study)
        drawn = figures_dir(key) / f"{figure.name}.png"
        if table is None or figure.caption is None or not drawn.exists():
            continue
        text = call(figure.caption, key, table)
        text = text[0].upper() + text[1:]
        parts += [f"![{figure.name}](figures/{key}/{figure.name}.png)", "", f"*{text}*", ""]
    return "\n".join(parts)


TRAIN_IMAGES = {"cifar10": 50_000, "cifar100": 50_000}  # the built-in datasets' training splits


def _pool(exp: Experiment) -> str:
    data = exp.data
    if data.pretrain == "synthetic":
        return f"{data.synthetic_train:,} synthetic images"
    if data.pretrain in TRAIN_IMAGES:
        share = TRAIN_IMAGES[data.pretrain] * data.pretrain_fraction
        return f"{share:,.0f} {data.pretrain.upper().replace('CIFAR', 'CIFAR-')} training images"
    return f"`{data.pretrain}` x {data.pretrain_fraction:g}"


def _claims(exp: Experiment) -> str:
    plan = exp.analysis
    tested = [c for c in CLAIMS if not getattr(plan, c).descriptive]
    declared = [c for c in CLAIMS if getattr(plan, c).descriptive]
    return f"tested: {', '.join(tested) or 'none'}" + (
        f"; descriptive: {', '.join(declared)}" if declared else ""
    )


def _time(preset: str) -> str:
    log = results_dir(preset) / "studies_log.txt"
    found = (
        re.findall(r"^all notebooks: ([\d.]+) min", log.read_text(), re.M) if log.exists() else []
    )
    if not found:
        return f"not measured (no `results/{preset}/studies_log.txt`)"
    return f"every study: {found[-1]} min ([its log](results/{preset}/studies_log.txt))"


def presets_table() -> str:
    """The README's presets, from experiments.yaml and each preset's committed batch log."""
    names = yaml.safe_load(DEFAULT_CONFIG_FILE.read_text())["presets"]
    lines = [
        "| preset | pool | probes | model (model-size study) | confirmation seeds | claims | "
        "hardware | measured |",
        "|" + " --- |" * 8,
    ]
    for name in names:
        exp = load_experiment(name)
        studies = exp.studies
        hardware = (
            f"{exp.launch.gpus_per_node} GPU(s) x {exp.launch.nodes} node(s)"
            if exp.launch.gpus_per_node
            else f"CPU, {exp.launch.seed_workers} seed(s) at a time"
        )
        lines.append(
            f"| `{name}` | {_pool(exp)} | {', '.join(exp.data.probe)} | {exp.model} "
            f"({', '.join(studies.model_sizes)}) | {len(studies.seeds)} | {_claims(exp)} | "
            f"{hardware} | {_time(name)} |"
        )
    return "\n".join(lines) + "\n"


def _flops_per_seed(table: pd.DataFrame, stage: str) -> pd.Series:
    """Each arm's training FLOPs in `stage` ('mae', 'wsp' or 'pretraining': the whole chain), the
    mean over seeds."""
    rows = table[(table.stage == stage) & (table.metric == "train_flops")]
    return rows.groupby("arm")["value"].mean()


def _cost(exp: Experiment, table: pd.DataFrame) -> str:
    """MAE's cost per image against WSP's and the equal-FLOP arm's FLOPs, from the tables."""
    mae, wsp = _flops_per_seed(table, "mae")["mae"], _flops_per_seed(table, "wsp")["wsp"]
    per_image = (mae / exp.mae.epochs) / (wsp / exp.wsp.epochs)
    chain = _flops_per_seed(table, "pretraining")
    matched = ""
    if {"wsp_flops", "mae_wsp"} <= set(chain.index):
        matched = (
            f"; WSP at MAE→WSP's FLOPs trains {chain['wsp_flops'] / chain['mae_wsp']:.3f} of "
            "MAE→WSP's FLOPs"
        )
    return (
        f"An MAE image costs {per_image:.2f} of a WSP image, so MAE's {exp.mae.epochs} epochs "
        f"cost {mae / wsp * exp.wsp.epochs:.1f} WSP epochs (the tables' `train_flops`){matched}"
    )


def _seed_span(seeds: list[int]) -> str:
    """Seeds in words, each run of three or more consecutive seeds as a span: "0-3 and 13-18"."""
    runs: list[list[int]] = []
    for seed in sorted(seeds):
        if runs and seed == runs[-1][-1] + 1:
            runs[-1].append(seed)
        else:
            runs.append([seed])
    return _words([part for r in runs for part in ([f"{r[0]}-{r[-1]}"] if len(r) > 2 else r)])


def _draws(key: str) -> str:
    """(a)'s primary per draw of the pool and tags on the pilot seeds: each `key+*/pilot` folder
    whose overrides set data.subset_seed is a draw, the pilot's own default table draw 0."""
    primary = load_experiment(key).analysis.a.primary  # probe/<dataset>
    dataset = primary.split("/")[-1]
    folders = {0: results_dir(key) / "pilot"}
    for record in sorted(results_dir(key).parent.glob(f"{key}+*/pilot/experiment.yaml")):
        overrides = yaml.safe_load(record.read_text()).get("overrides", {})
        if "data.subset_seed" in overrides:
            folders[overrides["data.subset_seed"]] = record.parent
    if len(folders) < 3:
        return "One draw of the pool and its tags for every seed (data.subset_seed); no draw check"
    tables = {
        draw: probe_top1(table_from(f / "default.csv")) for draw, f in sorted(folders.items())
    }
    seeds = sorted(set.intersection(*(set(t.seed) for t in tables.values())))
    groups = [
        paired(t[(t.dataset == dataset) & t.seed.isin(seeds)], "mae_wsp", "wsp")[0]
        for t in tables.values()
    ]
    from scipy import stats

    p = stats.f_oneway(*groups).pvalue
    means = ", ".join(f"{sum(g) / len(g):+.2f}" for g in groups)
    return (
        f"One draw of the pool and its tags for every seed (data.subset_seed); checked over "
        f"{len(groups)} draws ({_words(list(tables))}) on pilot seeds {_words(seeds)}: "
        f"(a)'s primary comparison, MAE→WSP − WSP on {dataset}, per draw {means}; one-way ANOVA "
        f"across draws p = {p:.2f} (n = {len(seeds)} seeds a draw)"
    )


def how_made(key: str) -> str:
    """The README's numbers of how `key`'s results were made: cost, seeds, draws, precision, the
    batch's minutes, from its tables, its pilot and its log."""
    exp = load_experiment(key)
    studies = {s: read_table(key, s) for s in ("default", "wsp_epochs", "model_size", "data_size")}
    default = studies["default"]
    if default is None:
        return f"No `results/{key}/default.csv`: run the studies first.\n"
    seeds = "; ".join(
        f"{study} {_seed_span(list(t.seed.unique()))}"
        for study, t in studies.items()
        if t is not None
    )
    lines = [
        f"- **Cost.** {_cost(exp, default)}.",
        f"- **Seeds.** Pilot seeds {_seed_span(exp.studies.pilot_seeds)} chose the design and the "
        "seed counts "
        f"([`results/{key}/pilot/`](results/{key}/pilot/), [plan](results/{key}/plan.md)); "
        f"confirmation seeds, which chose nothing: {seeds}.",
        f"- **Draws.** {_draws(key)}.",
        f"- **Precision.** {_words(sorted(default.precision.unique()))} "
        f"(`precision: {exp.precision}` on the batch's machine, named in its log); {_time(key)}.",
    ]
    return "\n".join(lines) + "\n"
