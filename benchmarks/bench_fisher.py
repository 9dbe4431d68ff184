"""Cost of Fisher diagonals for the library's default model, measured side by side.

Model: CrossModalModel(input_dim=64, num_modalities=2, hidden_dim=64, output_dim=32, feedback_dim=33) run over
sequences of T=40 steps (one sample = one sequence), N=64 sequences, Gaussian likelihood (action means).

Timed, each a median over repeats of a jitted call with block_until_ready:
  * batch gradient: one gradient of the batch-mean log-likelihood (the squared batch gradient): the lower bound;
  * empirical Fisher: per-sample vmap, and chunked with a few chunk sizes;
  * sampled Fisher (one draw per input);
  * Python loop: a jitted per-sample squared gradient called N times;
  * exact Gaussian Fisher (T * K backward passes per sample), on fewer sequences, reported per sequence.
Peak working memory: XLA's temp allocation from ``jax.jit(f).lower(...).compile().memory_analysis()``.

Writes benchmarks/results/bench_fisher.json. ``--quick`` shrinks the sizes for a smoke run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import jax
import jax.numpy as jnp

from clloop_jax import fisher as F
from clloop_jax.model import CrossModalModel


def median_time(fn, *args, repeats):
    jax.block_until_ready(fn(*args))          # warm-up / compile
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def temp_bytes(jitted, *args):
    try:
        stats = jitted.lower(*args).compile().memory_analysis()
        return int(stats.temp_size_in_bytes) if stats is not None else None
    except Exception:  # memory analysis is backend dependent
        return None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "bench_fisher.json"))
    args = ap.parse_args()

    T, N, n_exact = (8, 16, 2) if args.quick else (40, 64, 4)
    chunk_sizes = (4, 8) if args.quick else (8, 16, 32)
    model = CrossModalModel(input_dim=64, hidden_dim=64, output_dim=32, num_modalities=2, num_heads=4,
                            feedback_dim=33)
    params = model.init_params(jax.random.key(0))
    num_params = sum(int(x.size) for x in jax.tree_util.tree_leaves(params))
    carry0 = model.initial_carry(())

    def apply_fn(p, x):
        obs, fb = x
        _, out = model.apply(p, carry0, obs, fb, method=model.sequence)
        return out                                              # [T, 32]

    k_obs, k_fb, k_y = jax.random.split(jax.random.key(1), 3)
    inputs = (jax.random.normal(k_obs, (N, T, 2, 64)), jax.random.normal(k_fb, (N, T, 33)))
    targets = jax.random.normal(k_y, (N, T, 32))
    lik = F.Gaussian(sigma=1.0)
    key = jax.random.key(2)

    batch_grad = jax.jit(lambda p, x, y: F.squared_batch_gradient(apply_fn, p, x, y, likelihood=lik))

    def fisher(variant, chunk_size=None):
        return jax.jit(lambda p, x, y, k: F.fisher_diagonal(apply_fn, p, x, y, likelihood=lik, variant=variant,
                                                            key=k, chunk_size=chunk_size))

    def sq_grad_one(acc, p, x, y):
        g = jax.grad(lambda q: jnp.sum(lik.log_prob(apply_fn(q, x), y)))(p)
        return jax.tree_util.tree_map(lambda a, b: a + b * b, acc, g)

    sq_grad_one = jax.jit(sq_grad_one)
    samples = [(jax.tree_util.tree_map(lambda a: a[i], inputs), targets[i]) for i in range(N)]
    zeros = jax.tree_util.tree_map(jnp.zeros_like, params)

    def python_loop(p):
        acc = zeros
        for x, y in samples:
            acc = sq_grad_one(acc, p, x, y)
        return jax.tree_util.tree_map(lambda a: a / N, acc)

    r = args.repeats
    print(f"device: {jax.devices()[0].device_kind}  backend: {jax.default_backend()}  "
          f"params: {num_params}  N={N} sequences of T={T}")

    # (name, function, args, reports temp memory); timed round-robin so that every method sees the same load
    methods = [("batch_gradient", batch_grad, (params, inputs, targets), True),
               ("python_loop", python_loop, (params,), False),
               ("empirical_vmap", fisher("empirical"), (params, inputs, targets, key), True)]
    methods += [(f"empirical_chunk{c}", fisher("empirical", c), (params, inputs, targets, key), True)
                for c in chunk_sizes]
    methods += [("sampled1_vmap", fisher("sampled"), (params, inputs, targets, key), True)]
    times = {name: [] for name, *_ in methods}
    results = {}
    for name, fn, fargs, mem in methods:
        jax.block_until_ready(fn(*fargs))    # compile and warm up
        results[name] = {"temp_bytes": temp_bytes(fn, *fargs) if mem else None}
    for _ in range(r):
        for name, fn, fargs, _mem in methods:
            t0 = time.perf_counter()
            jax.block_until_ready(fn(*fargs))
            times[name].append(time.perf_counter() - t0)
    for name in times:
        results[name]["seconds"] = statistics.median(times[name])
        results[name]["all_seconds"] = times[name]

    # exact Gaussian: T * K backward passes per sequence; timed on n_exact sequences, one at a time
    f = fisher("exact", 1)
    sub = jax.tree_util.tree_map(lambda a: a[:n_exact], (inputs, targets))
    sec = median_time(f, params, *sub, key, repeats=max(1, r // 2))
    results["exact_gaussian_chunk1"] = {"seconds": sec, "sequences": n_exact,
                                        "seconds_per_sequence": sec / n_exact,
                                        "backward_passes_per_sequence": T * 32,
                                        "temp_bytes": temp_bytes(f, params, *sub, key)}

    base = results["batch_gradient"]["seconds"]
    loop = results["python_loop"]["seconds"]
    for name, row in results.items():
        per_n = row["seconds"] if "sequences" not in row else row["seconds_per_sequence"] * N
        row["x_batch_gradient"] = per_n / base
        row["speedup_vs_python_loop"] = loop / per_n

    print(f"{'method':26s} {'median s':>10s} {'x batch grad':>13s} {'vs loop':>9s} {'temp MiB':>9s}")
    for name, row in results.items():
        tb = row.get("temp_bytes")
        note = f"   (for {N} sequences, from {row['sequences']})" if "sequences" in row else ""
        print(f"{name:26s} {row['seconds']:10.4f} {row['x_batch_gradient']:13.2f} "
              f"{row['speedup_vs_python_loop']:9.2f} {'-' if tb is None else f'{tb / 2**20:.1f}':>9s}{note}")

    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as fh:
        json.dump({"config": {"T": T, "N": N, "num_params": num_params, "repeats": r, "quick": args.quick,
                              "likelihood": "Gaussian(sigma=1)", "model": "CrossModalModel 2x64 in, h64, out32, fb33",
                              "device": jax.devices()[0].device_kind, "backend": jax.default_backend(),
                              "jax": jax.__version__, "python": platform.python_version()},
                   "results": results}, fh, indent=2)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
