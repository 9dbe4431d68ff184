"""The benchmark suite's quick mode runs end to end through its command line and reports every figure (times are
printed, never asserted: the machines are shared)."""
import json
import math
import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_quick_benchmark_reports_every_section(tmp_path):
    out = tmp_path / "bench.json"
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src") + os.pathsep + str(ROOT), JAX_DISABLE_MOST_OPTIMIZATIONS="1")
    proc = subprocess.run([sys.executable, "-m", "benchmarks", "--quick", "--out", str(out)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads(out.read_text())
    res = data["results"]
    assert set(res) == {"peak", "world", "closed_loop", "update", "fisher", "run"}
    assert data["machine"]["jax"] and data["quick"] and data["repeats"] == 1
    for world in res["world"]["worlds"].values():
        assert world["steps_per_s"] > 0 and world["bound_steps_per_s"] > 0 and world["of_bound"] > 0
    for loop in res["closed_loop"]["worlds"].values():
        assert loop["mflop_per_step"] > loop["model_mflop_per_step"] > 0  # the world adds arithmetic of its own
        assert 0 < loop["model_share"] and loop["gflops"] > 0 and math.isfinite(loop["of_peak"])
    assert set(res["fisher"]["methods"]) == {"batch_gradient", "empirical", "empirical_chunked", "sampled"}
    assert res["fisher"]["methods"]["batch_gradient"]["x_batch_gradient"] == 1.0
    assert res["run"]["seconds"] > 0 and res["update"]["seconds"] > 0
    table = proc.stdout
    assert table.startswith("| measurement | value |") and table.count("\n") >= 10
    assert "random-number bound" in table and "matrix-product peak" in table
