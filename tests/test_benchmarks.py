"""The benchmark scripts run end to end (tiny settings: what they print is checked, not how
fast)."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd

from studylib.config import load_experiment

REPO = Path(__file__).resolve().parents[1]


def run_script(name: str, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / name), *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_step_benchmark_times_every_step_in_both_precisions(tmp_path):
    out = tmp_path / "bench.json"
    run_script(
        "benchmark.py",
        "--models",
        "nano",
        "--batch",
        "8",
        "--seconds",
        "0.01",
        "--rounds",
        "2",
        "--matmul-size",
        "512",
        "--out",
        str(out),
    )
    result = json.loads(out.read_text())
    assert set(result["peaks"]) == {"fp32", "bf16"} and all(p > 0 for p in result["peaks"].values())
    steps = {(r["step"], r["precision"]) for r in result["rows"]}
    assert steps == {(s, p) for s in ("wsp", "timm-stock", "mae") for p in ("fp32", "bf16")}
    assert all(r["images_per_s"] > 0 and r["mfu"] > 0 for r in result["rows"])
    # emulated bf16 has no real peak
    comparable = {"fp32", "bf16"} if result["native_bf16"] else {"fp32"}
    assert all(r["mfu"] < 2 for r in result["rows"] if r["precision"] in comparable)
    assert result["preset"] == "cpu" and result["data_pipeline_images_per_s"] > 0


def test_precision_check_trains_each_precision_in_its_own_run_folders(tmp_path):
    out = tmp_path / "precision.json"
    stdout = run_script(
        "precision_check.py",
        "--preset",
        "smoke",
        "--set",
        "mae.epochs=1",
        "wsp.epochs=1",
        "studies.arms=[wsp,mae_wsp]",
        "data.synthetic_train=128",
        "data.synthetic_test=64",
        "--seeds",
        "0",
        "1",
        "--out",
        str(out),
    )
    assert "bf16 - fp32" in stdout and "bf16 / fp32" in stdout
    paired = stdout.split("paired by seed: mean [95% t-interval]\n")[1]
    assert re.search(r"synthetic\s+bf16 - fp32\s+2\s+-?\d+\.\d+\s+\[[-+]\d", paired), paired
    rows = json.loads(out.read_text())["rows"]
    top1 = {(r["precision"], r["arm"]) for r in rows if r["metric"] == "top1"}
    assert top1 == {(p, t) for p in ("fp32", "bf16") for t in ("wsp", "mae_wsp")}
    runs = {(r["precision"], r["run"]) for r in rows}
    assert not {run for p, run in runs if p == "fp32"} & {run for p, run in runs if p == "bf16"}


def test_stage_benchmark_times_every_stage_in_both_layouts(tmp_path):
    out = tmp_path / "stages.json"
    printed = run_script(
        "stages.py",
        *("--batch", "8", "--images", "256", "--seconds", "0.01", "--rounds", "1"),
        *("--matmul-size", "64", "--old", "--out", str(out)),
    )
    result = json.loads(out.read_text())
    cores = result["cores"]
    assert set(result["layouts"]) == {f"1x{cores}", f"{cores}x1"}
    stages = {"mae", "wsp", "finetune", "probe_features", "probe_fit", "probe_features_fused"}
    for rates in result["layouts"].values():
        assert {k.removesuffix("_images_per_s") for k in rates if "images" in k} == stages
        shaped = {k.removesuffix("_shapes_gflops") for k in rates if "_shapes_" in k}
        assert shaped == {"mae", "wsp", "finetune", "probe_features"}
    assert (
        result["train_flops_per_image"]["wsp"]
        == 3 * result["train_flops_per_image"]["probe_features"]
    )
    assert "probe_features_fused" in printed and "matmul_peak_gflops" in printed


def _guard(results: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "benchmarks/verdict_guard.py", "--before", "HEAD"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "STUDYLIB_RESULTS": str(results)},
    )


def test_verdict_guard_passes_on_the_same_tables_and_fails_when_a_verdict_moves(tmp_path):
    same = _guard(REPO / "results")
    assert same.returncode == 0 and "shift +0.00" in same.stdout, same.stderr[-1000:]
    moved = tmp_path / "cpu"
    moved.mkdir()
    for table in (REPO / "results" / "cpu").glob("*.csv"):
        (moved / table.name).write_bytes(table.read_bytes())
    default = moved / "default.csv"
    # MAE→WSP's probe on claim (a)'s primary dataset 5 points higher: more than the committed
    # difference's half-width, and a verdict that moves to "holds"
    dataset = load_experiment("cpu").analysis.a.primary.split("/")[-1]
    frame = pd.read_csv(default)
    higher = (frame.arm == "mae_wsp") & (frame.metric == "top1") & (frame.dataset == dataset)
    assert higher.sum() == len({*frame.seed})
    frame.loc[higher, "value"] += 5
    frame.to_csv(default, index=False)
    failed = _guard(tmp_path)
    assert failed.returncode == 1 and "guard on claim (a): FAILS" in failed.stdout
