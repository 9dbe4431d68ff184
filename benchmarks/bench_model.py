"""Per-step cost of CrossModalModel: one jitted `model.sequence` (nn.scan over T steps) next to a
Python loop that calls a jitted single step T times, measured side by side in one run.

Sizes are those of the library's default world (two 64-d modalities, 33-d feedback, 32-d action).
Prints a table (median over repeats, per-step microseconds, loop/scan ratio) and compile times,
and writes benchmarks/results/bench_model.json.

    python benchmarks/bench_model.py                 # T=1000, batches 1 and 32
    python benchmarks/bench_model.py --steps 200 --repeats 3
"""
from __future__ import annotations

import argparse
import json
import pathlib
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from clloop_jax.model import CrossModalModel

DEFAULT_WORLD = dict(input_dim=64, num_modalities=2, hidden_dim=64, output_dim=32, feedback_dim=33, num_heads=4)


def _median_time(fn, repeats: int) -> tuple[float, list[float]]:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times


def bench_batch(model: CrossModalModel, variables, batch: int, steps: int, repeats: int) -> dict:
    rng = np.random.default_rng(batch)
    M, D, F = model.num_modalities, model.modality_dims[0], model.feedback_dim
    obs_seq = jnp.asarray(rng.standard_normal((steps, batch, M, D)), jnp.float32)
    fb_seq = jnp.asarray(rng.standard_normal((steps, batch, F)), jnp.float32)
    carry0 = model.initial_carry((batch,))

    def seq_fn(v, c, o, f):
        return model.apply(v, c, o, f, method=CrossModalModel.sequence)

    # Compile times (ahead-of-time lower + compile), measured separately from the runs.
    t0 = time.perf_counter()
    jax.jit(seq_fn).lower(variables, carry0, obs_seq, fb_seq).compile()
    compile_scan = time.perf_counter() - t0
    t0 = time.perf_counter()
    jax.jit(model.apply).lower(variables, carry0, obs_seq[0], fb_seq[0]).compile()
    compile_step = time.perf_counter() - t0

    seq_jit = jax.jit(seq_fn)
    step_jit = jax.jit(model.apply)
    # per-step inputs prepared outside the timed loop, so the loop times only the step calls
    obs_list = [obs_seq[t] for t in range(steps)]
    fb_list = [fb_seq[t] for t in range(steps)]
    jax.block_until_ready((obs_list, fb_list))

    def run_scan():
        return seq_jit(variables, carry0, obs_seq, fb_seq)

    def run_loop():
        c, y = carry0, None
        for o, f in zip(obs_list, fb_list):
            c, y = step_jit(variables, c, o, f)
        return c, y

    # warm up (fills the jit caches) and check that both paths agree
    c_scan, ys = jax.block_until_ready(run_scan())
    c_loop, y_last = jax.block_until_ready(run_loop())
    max_abs_diff = float(jnp.max(jnp.abs(c_scan - c_loop)))

    scan_s, scan_all = _median_time(run_scan, repeats)
    loop_s, loop_all = _median_time(run_loop, repeats)
    return dict(
        batch=batch,
        steps=steps,
        scan_total_s=scan_s,
        loop_total_s=loop_s,
        scan_us_per_step=1e6 * scan_s / steps,
        loop_us_per_step=1e6 * loop_s / steps,
        ratio_loop_over_scan=loop_s / scan_s,
        scan_repeats_s=scan_all,
        loop_repeats_s=loop_all,
        compile_scan_s=compile_scan,
        compile_step_s=compile_step,
        final_carry_max_abs_diff=max_abs_diff,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path(__file__).parent / "results" / "bench_model.json")
    args = parser.parse_args()

    model = CrossModalModel(**DEFAULT_WORLD)
    variables = jax.jit(model.init_params)(jax.random.key(0))
    n_params = sum(x.size for x in jax.tree_util.tree_leaves(variables))
    device = jax.devices()[0]
    print(f"CrossModalModel {DEFAULT_WORLD}, {n_params} parameters")
    print(f"backend={jax.default_backend()} device={device.device_kind} jax={jax.__version__}")
    print(f"T={args.steps} steps, median of {args.repeats} repeats\n")

    rows = [bench_batch(model, variables, b, args.steps, args.repeats) for b in args.batches]

    header = f"{'batch':>5} | {'scan us/step':>12} | {'loop us/step':>12} | {'loop/scan':>9} | {'compile scan s':>14} | {'compile step s':>14}"
    print(header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{r['batch']:>5} | {r['scan_us_per_step']:>12.1f} | {r['loop_us_per_step']:>12.1f} | "
            f"{r['ratio_loop_over_scan']:>9.2f} | {r['compile_scan_s']:>14.2f} | {r['compile_step_s']:>14.2f}"
        )
    print("\nscan and loop final carries agree to max |diff| =", max(r["final_carry_max_abs_diff"] for r in rows))

    result = dict(
        benchmark="bench_model",
        config=DEFAULT_WORLD,
        n_params=int(n_params),
        steps=args.steps,
        repeats=args.repeats,
        backend=jax.default_backend(),
        device=device.device_kind,
        jax_version=jax.__version__,
        python=platform.python_version(),
        results=rows,
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
