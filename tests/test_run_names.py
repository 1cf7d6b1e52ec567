"""The run folder of every arm at every study point of the `cpu` and `smoke` presets, against the
list committed in tests/run_names.json: a refactor that renames a run would orphan the committed
results.

The cpu names hold the real data's fingerprints and sizes; they were recorded with the data present
(`python tests/test_run_names.py`, after an intended change of identity) and are replayed here
without it, through the real identity code: only the file hash and the image counts are looked up.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import pytest

from studylib import data, pool, registry, study
from studylib.config import load_experiment
from studylib.experiment import Experiment

RECORD = Path(__file__).with_name("run_names.json")
PRESETS = ("smoke", "cpu")


def chains(exp: Experiment) -> dict[str, str]:
    return {
        name: " -> ".join(run.name for run in registry.call(arm.pretrain, exp, train=False))
        for name, arm in registry.ARMS.items()
    }


def run_names(exp: Experiment, seeds: list[int]) -> dict[str, dict[str, str]]:
    """point -> arm -> chain of run names, at every seed and study point of `exp`'s preset."""
    names = {}
    for seed in seeds:
        at = dataclasses.replace(exp, seed=seed)
        names[f"seed {seed}"] = chains(at)
        for size in exp.studies.model_sizes:
            names[f"seed {seed} model {size}"] = chains(dataclasses.replace(at, model=size))
        for epochs in exp.studies.wsp_epochs:
            names[f"seed {seed} wsp_epochs {epochs}"] = chains(
                study.with_values(at, wsp={"epochs": epochs})
            )
        for text, point, _ in study.data_size_points(at):
            names[f"seed {seed} mae_data {text}"] = chains(point)
    return names


def record() -> dict:
    """The names with the data present (STUDYLIB_DATA), and what of the data they read."""
    out = {}
    for preset in PRESETS:
        exp = load_experiment(preset)
        seeds = sorted({*exp.studies.pilot_seeds, *exp.studies.seeds})
        datasets = {
            exp.data.pretrain,
            *exp.data.probe,
            *(study.parse_mae_data(t)[0] for t in exp.studies.mae_data),
        } - {"pretrain"}
        counts = {text: images for text, _, images in study.data_size_points(exp)}
        out[preset] = {
            "seeds": seeds,
            "fingerprints": {d: data.fingerprint(d, exp.data) for d in datasets},
            "pool": pool.count(exp),
            "mae_images": counts,
            "names": run_names(exp, seeds),
        }
    return out


@pytest.mark.parametrize("preset", PRESETS)
def test_run_names_are_unchanged(preset, monkeypatch, tmp_path):
    known = json.loads(RECORD.read_text())[preset]
    fingerprints = known["fingerprints"]
    for name in fingerprints:
        (tmp_path / name).write_text(name)
    monkeypatch.setattr(data, "source", lambda name: tmp_path / name)
    monkeypatch.setattr(data, "_fingerprint", lambda path, *_: fingerprints[Path(path).name])
    images = {study.parse_mae_data(text): n for text, n in known["mae_images"].items()}

    def count(exp: Experiment, dataset: str | None = None, fraction: float = 1.0) -> int:
        return (
            known["pool"]
            if (dataset, fraction) == (None, 1.0)
            else images[(dataset or "pretrain", fraction)]
        )

    monkeypatch.setattr(pool, "count", count)
    exp = load_experiment(preset)
    assert run_names(exp, known["seeds"]) == known["names"], (
        f"{preset}: run names changed; committed results would be orphaned. If the change of "
        f"identity is intended, rerun with the data present: python tests/{Path(__file__).name}"
    )


if __name__ == "__main__":
    RECORD.write_text(json.dumps(record(), indent=1) + "\n")
    print(f"written: {RECORD}", file=sys.stderr)
