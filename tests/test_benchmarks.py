"""The benchmark scripts run end to end (tiny settings: what they print is checked, not how
fast)."""

import json
import re
import subprocess
import sys
from pathlib import Path

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
