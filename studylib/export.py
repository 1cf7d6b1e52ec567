"""A trained encoder in the layout that timm and the Hugging Face Hub load: `studylib export RUN
--out DIR` writes `model.safetensors` (the encoder's weights), a timm-style `config.json`
(architecture, the ViT's arguments, image size, mean and std) and a model card `README.md` (stage,
preset, the run's identity and metrics, the command that reproduces it). `hf upload
USER/NAME DIR` publishes the folder as it is; timm then loads it with
`timm.create_model("hf-hub:USER/NAME", pretrained=True)`, or from the folder with `load(DIR)` below.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any

import yaml

from studylib import registry
from studylib.config import flatten, load_experiment
from studylib.errors import ConfigError, RunFolderError, StudylibError
from studylib.experiment import result_settings
from studylib.io import atomic_write
from studylib.paths import runs_dir
from studylib.registry import VIT_SIZES

ARCHITECTURE = "vit_base_patch16_224"  # timm's builder; the config's model_args give the size


def find_run(name: str, preset: str) -> Path:
    """A run folder given as a path, or by its name under $STUDYLIB_RUNS/<preset>/."""
    for path in (Path(name).expanduser(), runs_dir() / preset / name):
        if (path / "config.yaml").is_file():
            return path
    raise ConfigError(
        f"run {name!r}: no run folder there or under {runs_dir() / preset}; allowed: a finished "
        "run with encoder.pth (e.g. mae-1a2b3c4d, or its path)"
    )


def timm_config(size: str) -> dict[str, Any]:
    """timm's Hub config.json for a studylib ViT size: the encoder's output is its normalised class
    token."""
    from studylib.batches import MEAN, STD

    spec = VIT_SIZES[size]
    return {
        "architecture": ARCHITECTURE,
        "num_classes": 0,
        "num_features": spec["embed_dim"],
        "global_pool": "token",
        "model_args": {**spec, "num_classes": 0, "global_pool": "token"},
        "pretrained_cfg": {
            "input_size": [3, spec["img_size"], spec["img_size"]],
            "mean": list(MEAN),
            "std": list(STD),
            "interpolation": "bicubic",
            "crop_pct": 1.0,
            "num_classes": 0,
        },
    }


def export(run_path: Path, out: Path) -> list[Path]:
    """Write the run's encoder, timm config and model card into `out` (a new or empty folder)."""
    from safetensors.torch import save

    from studylib.runs import load_weights

    record = yaml.safe_load((run_path / "config.yaml").read_text())
    size = record["identity"].get("model")
    saved = load_weights(run_path / "encoder.pth")
    state = (
        saved.get("state")
        if isinstance(saved, dict) and saved.get("run") == run_path.name
        else None
    )
    if state is None or size not in VIT_SIZES:
        raise RunFolderError(
            f"{run_path}: no loadable encoder.pth of a known model size; allowed: a finished "
            "init, mae or wsp run"
        )
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(
            f"--out {out}: exists and is not an empty folder; allowed: a new or empty folder"
        )
    made = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    weights = save(tensors, metadata={"format": "pt", "studylib_run": run_path.name})
    files = [out / "model.safetensors", out / "config.json", out / "README.md"]
    try:
        atomic_write(files[0], lambda f: f.write(weights), mode="wb")
        atomic_write(files[1], lambda f: json.dump(timm_config(size), f, indent=2))
        atomic_write(files[2], lambda f: f.write(model_card(run_path, record)))
    except BaseException:  # a full disk, Ctrl-C: no export of some files but not others
        for path in files:
            path.unlink(missing_ok=True)
        if made:
            out.rmdir()
        raise
    return files


def changed_settings(experiment: dict) -> list[str]:
    """'key=value' for each setting that decides results where the run's recorded experiment
    differs from its preset as configured now: its seed, its model, a study point's settings."""
    preset = load_experiment(experiment.get("preset", "cpu"))
    now = flatten({k: v for k, v in result_settings(preset).items() if k != "studies"})
    then = flatten(experiment)
    return [
        f"{key}={then[key] if isinstance(then[key], str) else json.dumps(then[key])}"
        for key, value in now.items()
        if then.get(key, value) != value
    ]


def reproduce(run_name: str, record: dict) -> str:
    """The one command that trains this run again, quoted for a shell: `studylib submit ARM` for the
    arm whose chain of runs ends in it (named by the identity code, which needs the data), at the
    settings by which the run differs from its preset, or without those of its own stage (an arm
    that sets them itself: WSP given MAE→WSP's FLOPs); else that preset's default study."""
    experiment = record.get("experiment", {})
    preset = experiment.get("preset", "cpu")
    try:
        sets = changed_settings(experiment)
        own = [text for text in sets if not text.startswith(f"{record['identity']['stage']}.")]
        for settings in (sets, own):
            exp = load_experiment(preset, settings)
            for name, arm in registry.ARMS.items():
                if registry.call(arm.pretrain, exp, train=False)[-1].name == run_name:
                    options = [part for text in settings for part in ("--set", text)]
                    return shlex.join(["studylib", "submit", name, "--preset", preset, *options])
    except (StudylibError, OSError):
        pass  # the data that names the runs is not here
    return shlex.join(["studylib", "study", "--preset", preset])


def probe_section(run_path: Path) -> list[str]:
    """The model card's table of the linear probes run on this encoder (the probe runs beside it),
    or nothing where none was."""
    rows = []
    for path in sorted(run_path.parent.glob("probe-*/results.json")):
        values = json.loads(path.read_text())
        if values.get("encoder") == run_path.name:
            rows.append(
                f"| {values.get('dataset')} | {values.get('top1', float('nan')):.2f} | "
                f"{values.get('train_images')} | {path.parent.name} |"
            )
    if not rows:
        return []
    return [
        "Linear probes of this encoder (L2 logistic regression on its frozen features, scored on "
        "the whole test set):",
        "",
        "| dataset | top-1 (%) | training images | probe run |",
        "| --- | ---: | ---: | --- |",
        *rows,
        "",
    ]


def model_card(run_path: Path, record: dict) -> str:
    """The Hub's model card: what the weights are, how they were made and measured, and how to load
    them."""
    identity, experiment = record["identity"], record.get("experiment", {})
    results = (
        json.loads((run_path / "results.json").read_text())
        if (run_path / "results.json").exists()
        else {}
    )
    dataset = (identity.get("data") or {}).get("dataset")
    spec = VIT_SIZES.get(identity["model"], {})
    return "\n".join(
        [
            "---",
            "library_name: timm",
            "license: mit",
            "pipeline_tag: image-feature-extraction",
            f"tags: [{identity['stage']}, vision-transformer, studylib]",
            *([f"datasets: [{dataset}]"] if dataset else []),
            "---",
            "",
            f"# {run_path.name}: a ViT-{identity['model']} encoder from studylib "
            f"({identity['stage']} stage)",
            "",
            f"Trained by studylib's `{identity['stage']}` stage, preset "
            f"`{experiment.get('preset', '?')}`, seed {identity.get('seed')}, precision "
            f"{identity.get('precision')}. The encoder's output is its normalised class token "
            f"(no head). timm builds it as its VisionTransformer with config.json's `model_args` "
            f"(ViT-{identity['model']}: {spec.get('embed_dim')} wide, {spec.get('depth')} blocks, "
            f"patch {spec.get('patch_size')}, {spec.get('img_size')} px); the `architecture` name "
            "only picks that class.",
            "",
            "```python",
            "import timm",
            'model = timm.create_model("hf-hub:USER/NAME", pretrained=True)  # after '
            "hf upload USER/NAME .",
            'model = timm.create_model("local-dir:PATH/TO/THIS/FOLDER", pretrained=True)',
            "```",
            "",
            *probe_section(run_path),
            "Train it again (one run and the runs it starts from; reused where they exist):",
            "",
            "```bash",
            reproduce(run_path.name, record),
            "```",
            "",
            "Its metrics (results.json):",
            "",
            "```json",
            json.dumps(results, indent=1),
            "```",
            "",
            "Its identity (the settings and data that decide it; the data's fingerprint included):",
            "",
            "```yaml",
            yaml.safe_dump(identity, sort_keys=False).rstrip(),
            "```",
            "",
        ]
    )


def load(folder: Path) -> Any:
    """The exported encoder as a timm model, read from `folder` (what the Hub's copy gives too)."""
    import timm

    config = json.loads((folder / "config.json").read_text())
    return timm.create_model(
        config["architecture"],
        pretrained=True,
        **config["model_args"],
        pretrained_cfg_overlay={
            "file": str(folder / "model.safetensors"),
            **config["pretrained_cfg"],
        },
    )
