"""The seed axis split over devices (clloop_jax.workflow.sharding).

In this process JAX has one CPU device: the sharded path is checked against plain ``jax.vmap`` there, with its
argument checks. The multi-device checks need their own processes (the device count is fixed when JAX starts):
tools/device_check.py runs them with 8 simulated CPU devices, or as two ``jax.distributed`` processes, and prints
JSON that the tests below assert on.
"""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from clloop_jax.workflow.sharding import (BATCH_AXIS, batch_mesh, format_sharding, gather, shard_seeds, sharded_vmap,
                                          sharding_info)

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tools" / "device_check.py"
RTOL, ATOL = 1e-4, 1e-5  # float32 programs batched differently (as in tests/test_loop.py)
#: The real agent (attention and a GRU trained over several tasks) on 8 devices against 1: its scores (at most 1 in
#: size) agree to RTOL; the float32 rounding of differently batched programs accumulates over its updates (1.0e-5
#: measured).
AGENT_TOL = RTOL


def walk(key, scale):
    steps = jax.random.normal(key, (32,))
    w = jnp.cumsum(scale * steps)
    return {"walk": w, "max": jnp.max(w)}


# ----------------------------------------------------------------------------------------------------------------
# One device, in this process
# ----------------------------------------------------------------------------------------------------------------


def test_one_device_equals_vmap_and_results_are_sharded_on_the_batch_axis():
    keys = jax.random.split(jax.random.key(0), 5)
    out = shard_seeds(walk, keys, 0.5)
    ref = jax.vmap(walk, in_axes=(0, None))(keys, 0.5)
    jax.tree.map(np.testing.assert_array_equal, out, ref)
    for leaf in jax.tree.leaves(out):
        assert leaf.sharding.spec == jax.sharding.PartitionSpec(BATCH_AXIS)
    (info_max, info_walk) = sorted(sharding_info(out), key=lambda i: i["path"])
    assert info_walk["shape"] == (5, 32) and info_walk["shard_shape"] == (5, 32)
    assert info_walk["num_devices"] == 1 and list(info_walk["rows"].values()) == [(0, 5)]
    assert "walk: float32[5,32] P('batch',)" in format_sharding(out)
    # The compiled program is kept for the next call with the same function.
    shard_seeds(walk, keys, 0.7)
    from clloop_jax.workflow.sharding import _SEED_CACHE
    assert sum(entry.fn is walk for entry in _SEED_CACHE.values()) == 1
    np.testing.assert_array_equal(gather(out)["max"], np.asarray(ref["max"]))


def test_in_axes_prefixes_broadcast_and_sweep_like_vmap():
    def f(key, hp, offset):
        return hp["scale"] * jax.random.normal(key) + hp["shift"] + offset

    key = jax.random.key(1)
    hp = {"scale": jnp.array([1.0, 2.0, 3.0]), "shift": 0.5}
    axes = (None, {"scale": 0, "shift": None}, None)
    out = sharded_vmap(f, in_axes=axes)(key, hp, 1.0)
    np.testing.assert_array_equal(out, jax.vmap(f, in_axes=axes)(key, hp, 1.0))
    # A batched axis other than 0 is split too; outputs carry the batch on axis 0, like vmap's.
    g = sharded_vmap(lambda x: jnp.sum(x), in_axes=1)
    np.testing.assert_array_equal(g(jnp.arange(6.0).reshape(2, 3)), [3.0, 5.0, 7.0])
    # An argument with no leaves (a strategy without state passes None) takes no axis, whatever its prefix: the
    # batched argument after it is still split, as jax.vmap maps it.
    h = sharded_vmap(lambda offset, state, x: offset + 2.0 * x, in_axes=(None, 0, 0))
    np.testing.assert_array_equal(h(1.0, None, jnp.arange(4.0)), [1.0, 3.0, 5.0, 7.0])
    k = sharded_vmap(lambda state, x, offset: offset + x, in_axes=(0, 0, None))
    np.testing.assert_array_equal(k((), jnp.arange(3.0), 1.0), [1.0, 2.0, 3.0])


def test_bad_arguments_are_named():
    keys = jax.random.split(jax.random.key(0), 4)
    with pytest.raises(TypeError, match=r"^fn must be callable"):
        shard_seeds("walk", keys, 0.5)
    with pytest.raises(TypeError, match=r"^keys must be a batch of jax.random.key.* got int 0; "
                                        r"use jax.random.split\(jax.random.key\(0\), n\)"):
        shard_seeds(walk, 0, 0.5)
    with pytest.raises(ValueError, match=r"^keys must be a batch of jax.random.key.*jax.random.split"):
        shard_seeds(walk, jax.random.key(0), 0.5)
    with pytest.raises(ValueError, match=r"^devices must be an integer in \[1, 1\], got int 2"):
        shard_seeds(walk, keys, 0.5, devices=2)
    with pytest.raises(TypeError, match=r"^devices\[0\] must be a jax device"):
        batch_mesh(["cpu:0"])
    with pytest.raises(TypeError, match=r"^pad must be True or False"):
        shard_seeds(walk, keys, 0.5, pad=1)
    with pytest.raises(ValueError, match=r"^in_axes must hold 0 or positive integers"):
        sharded_vmap(walk, in_axes=(-1, None))
    with pytest.raises(ValueError, match="at least one batched input"):
        sharded_vmap(walk, in_axes=None)(keys[0], 0.5)
    with pytest.raises(ValueError, match=r"same batch size, got sizes \[3, 4\]"):
        sharded_vmap(lambda a, b: a + b)(jnp.ones(3), jnp.ones(4))
    with pytest.raises(ValueError, match="one entry per positional argument"):
        sharded_vmap(walk, in_axes=(0,))(keys, 0.5)


# ----------------------------------------------------------------------------------------------------------------
# Eight simulated devices, in a process of their own
# ----------------------------------------------------------------------------------------------------------------


def _run_script(*args, devices=8, timeout=900):
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"),
               XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    proc = subprocess.run([sys.executable, str(SCRIPT), *args], env=env, capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _assert_sharded_rows(infos, num_devices, rows_per_device):
    for info in infos:
        assert info["spec"] == "P('batch',)", info
        assert info["num_devices"] == num_devices and info["shard_shape"][0] == rows_per_device, info
        starts = sorted(start for start, _ in info["rows"].values())
        assert starts == list(range(0, num_devices * rows_per_device, rows_per_device)), info


def _check_device_report(report, tol=ATOL):
    """``tol``: the largest difference allowed between the continual runs on 8 devices and on 1."""
    assert report["device_count"] == 8
    pure, run = report["pure"], report["run"]
    # A pure function: the same numbers on 8 devices, on 1, and with plain vmap; reruns bitwise equal.
    assert pure["max_diff_all_vs_one"] <= ATOL and pure["max_diff_all_vs_vmap"] <= ATOL
    assert pure["rerun_bitwise"]
    assert pure["padded_rows"] == 13 and pure["padded_max_diff"] <= ATOL  # 13 seeds padded to 16, trimmed back
    _assert_sharded_rows(pure["sharding"], 8, 2)  # 16 seeds: two per device
    assert all(i["num_devices"] == 1 for i in pure["one_device_sharding"])
    # The continual-learning run, one seed per device: allclose to one device, bitwise on a rerun.
    assert run["max_diff_all_vs_one"] <= tol and run["max_diff_all_vs_vmap"] <= tol
    # One device is plain vmap in a program of its own, which XLA may fuse differently: equal to float32 rounding
    # (bitwise on some hosts; 2.4e-7 on a host with AVX-512, the same before and after any change of the library).
    assert run["max_diff_one_vs_vmap"] <= 1e-6
    assert run["rerun_bitwise"] and run["R_spread"] > 1e-3  # seeds really differ
    _assert_sharded_rows(run["sharding"], 8, 1)
    option = report["option"]
    if "execute_rows" in option:  # the tiny run: execute (clloop run --devices)
        assert option["execute_rows"] == 6 and option["execute_max_diff_8_vs_default"] <= tol
        assert option["execute_resumed_bitwise"] and option["execute_written_R_max_diff"] <= 1e-6
    else:  # the real agent: the facade's cycle_over_seeds
        assert option["facade_max_diff_8_vs_1"] <= tol and len(set(option["facade_seed_values"])) == 3
    print(f"\n8 vs 1 device, largest difference: pure {pure['max_diff_all_vs_one']:.3g}, "
          f"run {run['max_diff_all_vs_one']:.3g}\n{run['text']}")

@pytest.mark.slow
def test_eight_devices_equal_one_on_a_pure_function_and_a_tiny_run():
    report = _run_script("devices", "linear")
    _check_device_report(report)
    # The fast check is the one that covers the run-folder driver's device option (the facade's is in the slow one).
    assert report["option"]["execute_rows"] == 6 and report["option"]["execute_resumed_bitwise"]


@pytest.mark.slow  # about 2 minutes: the real agent compiled five times, plus a penalty sweep
def test_eight_devices_equal_one_for_the_real_agent_and_a_sweep():
    report = _run_script("devices", "crossmodal", "sweep")
    _check_device_report(report, tol=AGENT_TOL)
    sweep = report["sweep"]
    assert sweep["max_diff_all_vs_vmap"] <= AGENT_TOL
    np.testing.assert_allclose(sweep["lambdas_in_traces"], np.linspace(0, 30, 8), rtol=1e-6)
    _assert_sharded_rows(sweep["sharding_R"], 8, 1)


# ----------------------------------------------------------------------------------------------------------------
# Two processes (jax.distributed on CPU, through gloo)
# ----------------------------------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _distributed(*extra, timeout=300):
    port = _free_port()
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    env.pop("XLA_FLAGS", None)
    procs = [subprocess.Popen([sys.executable, str(SCRIPT), "distributed", str(i), "2", str(port), *extra],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
             for i in range(2)]
    reports = []
    try:
        for proc in procs:
            out, err = proc.communicate(timeout=timeout)
            assert proc.returncode == 0, err[-4000:]
            reports.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    return reports


def _check_distributed(reports):
    assert [r["process_index"] for r in reports] == [0, 1]
    for r in reports:
        assert (r["process_count"], r["device_count"], r["local_device_count"]) == (2, 4, 2)
        assert r["pure_max_diff_vs_local_vmap"] <= ATOL
    # Each process computed the rows of its own two devices; every process gathered all eight.
    assert reports[0]["pure_addressable_rows"] == [[0, 2], [2, 4]]
    assert reports[1]["pure_addressable_rows"] == [[4, 6], [6, 8]]
    assert reports[0]["pure_gathered"] == reports[1]["pure_gathered"]


def test_two_processes_share_the_seed_axis():
    reports = _distributed()
    _check_distributed(reports)
    assert all("run_R" not in r for r in reports)  # the pure function only: the run is the slow test's


@pytest.mark.slow  # about 35 s: the tiny run compiled in both processes at once
def test_two_processes_run_the_tiny_continual_run():
    reports = _distributed("run")
    _check_distributed(reports)
    for r in reports:
        assert r["run_max_diff_vs_local_vmap"] <= ATOL
        assert "mesh {'batch': 4} on 4 device(s)" in r["sharding_R"]
    assert reports[0]["run_R"] == reports[1]["run_R"]
