"""The benchmark suite's quick mode runs end to end through its command line and reports every figure (times are
printed, never asserted: the machines are shared)."""
import json
import math
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.slow
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
    floor = res["world"]["op_floor"]
    assert set(floor["us_per_step_by_pairs"]) == {"1", "16"} and min(floor["us_per_step_by_pairs"].values()) > 0
    for loop in res["closed_loop"]["worlds"].values():
        assert loop["mflop_per_step"] > loop["model_mflop_per_step"] > 0  # the world adds arithmetic of its own
        assert 0 < loop["model_share"] and loop["gflops"] > 0 and loop["peak_gflops"] > 0
        assert math.isclose(loop["of_peak"], loop["gflops"] / loop["peak_gflops"], rel_tol=1e-9)
    assert set(res["fisher"]["methods"]) == {"batch_gradient", "empirical per_sample", "empirical per_layer"}
    assert res["fisher"]["methods"]["batch_gradient"]["x_batch_gradient"] == 1.0
    assert res["run"]["seconds"] > 0 and res["update"]["seconds"] > 0
    table = proc.stdout
    assert table.startswith("| measurement | value |") and table.count("\n") >= 10
    assert "random-number bound" in table and "matrix product timed in turn" in table
    assert "one small XLA operation in a compiled loop" in table


def test_profile_self_times_subtract_nested_operations_thread_by_thread():
    """Hand-worked trace: on one thread a loop of 10 us holds a product of 4 us and a fusion of 3 us (self time of
    the loop: 3 us); another thread's fusion of 5 us overlaps in time but is not nested in the loop."""
    from benchmarks.xla_profile import self_times
    ev = [dict(ph="X", pid=1, tid=1, ts=0, dur=10, name="while.1"),
          dict(ph="X", pid=1, tid=1, ts=1, dur=4, name="ynn_fusion"),
          dict(ph="X", pid=1, tid=1, ts=6, dur=3, name="add_fusion"),
          dict(ph="X", pid=1, tid=2, ts=2, dur=5, name="add_fusion"),
          dict(ph="X", pid=1, tid=1, ts=0, dur=12, name="ThunkExecutor::Execute"),
          dict(ph="i", pid=1, tid=1, ts=3, name="marker")]
    times = self_times(ev)
    assert times == {"while.1": [3.0, 1], "ynn_fusion": [4.0, 1], "add_fusion": [8.0, 2]}


def test_profile_of_a_compiled_loop_finds_its_matrix_product_once_per_step():
    import jax
    import jax.numpy as jnp

    from benchmarks.xla_profile import op_kind, op_sources, profile
    w = jnp.eye(64) * 0.5

    def fn(x):
        return jax.lax.scan(lambda h, _: (jnp.tanh(h @ w), None), x, None, length=50)[0]

    x = jnp.ones((16, 64))
    compiled = jax.jit(fn).lower(x).compile()
    rows = profile(compiled, (x,), steps=50, repeats=2)
    assert abs(sum(r["share"] for r in rows) - 1.0) < 1e-9
    dots = [r for r in rows if r["kind"] == "dot"]
    assert dots and any(abs(r["calls_per_step"] - 1.0) < 1e-9 and "dot_general" in r["source"] for r in dots)
    sources = op_sources(compiled.as_text())
    assert op_kind("copy.3", "") == "copy" and op_kind("wrapped_compare", "") == "control"
    assert op_kind("f", "jit(_normal)/erf_inv") == "rng" and any("tanh" in s for s in sources.values())


@pytest.mark.slow
def test_rehearsal_benchmark_counts_the_arithmetic_each_strategy_adds(tmp_path):
    """Replay adds one forward and backward pass on a memory batch as large as the task's (twice fine-tuning's
    arithmetic), A-GEM one on a reference batch of twice that (three times)."""
    out = tmp_path / "rehearsal.json"
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src") + os.pathsep + str(ROOT), JAX_DISABLE_MOST_OPTIMIZATIONS="1")
    proc = subprocess.run([sys.executable, "benchmarks/bench_rehearsal.py", "--updates", "2", "--repeats", "1",
                           "--seeds", "1", "--strategies", "none,replay,agem", "--out", str(out)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads(out.read_text())["strategies"]
    assert rows["none"]["flops_multiple"] == 1.0
    assert 1.9 < rows["replay"]["flops_multiple"] < 2.1 and 2.85 < rows["agem"]["flops_multiple"] < 3.1
    assert all(r["update_ms"] > 0 and len(r["times_s"]) == 1 for r in rows.values())
