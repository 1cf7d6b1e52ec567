"""The benchmark scripts run end to end (tiny settings: what they print is checked, not how fast)."""

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_script(name: str, *args: str) -> str:
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / name), *args], capture_output=True, text=True,
                          cwd=REPO, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_step_benchmark_times_every_step_in_both_precisions(tmp_path):
    out = tmp_path / "bench.json"
    run_script("benchmark.py", "--models", "nano", "--batch", "8", "--seconds", "0.01", "--rounds", "2",
               "--out", str(out))
    result = json.loads(out.read_text())
    assert set(result["peaks"]) == {"fp32", "bf16"} and all(p > 0 for p in result["peaks"].values())
    steps = {(r["step"], r["precision"]) for r in result["rows"]}
    assert steps == {(s, p) for s in ("wsp", "timm-stock", "mae") for p in ("fp32", "bf16")}
    assert all(r["images_per_s"] > 0 and 0 < r["mfu"] < 2 for r in result["rows"])
    assert result["preset"] == "cpu" and result["data_pipeline_images_per_s"] > 0


def test_precision_check_trains_each_precision_in_its_own_runs_folder(tmp_path):
    out = tmp_path / "precision.json"
    stdout = run_script("precision_check.py", "--preset", "smoke", "--set", "mae.epochs=1", "wsp.epochs=1",
                        "probe.epochs=1", "--seeds", "0", "--runs", str(tmp_path / "runs"), "--out", str(out))
    assert "bf16 - fp32" in stdout and "bf16 / fp32" in stdout
    rows = json.loads(out.read_text())["rows"]
    top1 = {(r["precision"], r["pretraining"]) for r in rows if r["metric"] == "top1"}
    assert top1 == {(p, t) for p in ("fp32", "bf16") for t in ("WSP", "MAE→WSP")}
    for precision in ("fp32", "bf16"):
        folders = {p.name.split("-")[0] for p in (tmp_path / "runs" / precision / "smoke").iterdir()}
        assert folders == {"mae", "wsp", "probe"}
