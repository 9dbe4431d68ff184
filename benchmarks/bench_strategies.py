"""What a strategy costs inside the compiled run, on a labelled stream of real-MNIST size.

Five permuted tasks of 784-pixel images (4,000 training and 1,000 test images of 10 classes per task; random pixels:
only the sizes matter here), an MLP 400-400, 500 updates of batch 128 per task, 5 seeds vmapped, the exact
categorical Fisher on 256 samples where a strategy asks for it. For each strategy: how many Fisher diagonals and MAS
importances the traced program computes (counted while tracing), the compile time and the run time::

    python benchmarks/bench_strategies.py                  # a few minutes on 2 CPU cores
    python benchmarks/bench_strategies.py --updates 50 --seeds 2 --strategies none,ewc   # a quick look

Writes ``benchmarks/results/bench_strategies.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import time

import jax
import numpy as np

from clloop_jax.data.streams import permuted_stream
from clloop_jax.importance import fisher as fisher_lib
from clloop_jax.model import MLP
from clloop_jax.run.config import RunConfig
from clloop_jax.run.sequential import make_run
from clloop_jax.sources.supervised import SupervisedSource
from clloop_jax.workflow.compilation import enable_compilation_cache

HERE = os.path.dirname(os.path.abspath(__file__))


def count_importances(run, key, hp) -> dict:
    """How many Fisher diagonals and MAS importances tracing the whole run computes (one per traced task program)."""
    calls = {"fisher": 0, "mas": 0}
    originals = fisher_lib.fisher_diagonal, fisher_lib.mas_importance

    def counting(name, fn):
        def wrapped(*args, **kwargs):
            calls[name] += 1
            return fn(*args, **kwargs)
        return wrapped

    fisher_lib.fisher_diagonal = counting("fisher", originals[0])
    fisher_lib.mas_importance = counting("mas", originals[1])
    try:
        jax.eval_shape(jax.vmap(run, in_axes=(0, None)), key, hp)
    finally:
        fisher_lib.fisher_diagonal, fisher_lib.mas_importance = originals
    return calls


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--strategies", default="none,l2,ewc,si,mas")
    p.add_argument("--updates", type=int, default=500)
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--no-cache", action="store_true")
    p.add_argument("--out", default=os.path.join(HERE, "results", "bench_strategies.json"))
    args = p.parse_args(argv)
    enable_compilation_cache(enabled=not args.no_cache)
    rng = np.random.default_rng(0)
    x = rng.random((5000, 784), dtype=np.float32)
    y = np.repeat(np.arange(10), 500).astype(np.int32)
    stream = permuted_stream(x, y, num_tasks=5, seed=0, scenario="domain")
    source = SupervisedSource(MLP(output_dim=10, hidden=(400, 400)), stream, batch_size=128, fisher_size=256)
    keys = jax.random.split(jax.random.key(0), args.seeds)
    rows = []
    for name in args.strategies.split(","):
        config = RunConfig(strategy=name, episodes_per_task=args.updates, fisher_variant="exact",
                           fisher_chunk_size=64, monitors=())
        run = make_run(config, source)
        hp = run.hparams(learning_rate=1e-3)
        calls = count_importances(run, keys, hp)
        fn = jax.jit(jax.vmap(run, in_axes=(0, None)))
        t0 = time.perf_counter()
        compiled = fn.lower(keys, hp).compile()
        t1 = time.perf_counter()
        jax.block_until_ready(compiled(keys, hp))
        t2 = time.perf_counter()
        rows.append(dict(strategy=name, fisher_traced=calls["fisher"], mas_traced=calls["mas"],
                         compile_s=t1 - t0, run_s=t2 - t1))
        print(f"{name:>6}: Fisher diagonals traced {calls['fisher']}, MAS {calls['mas']}; compile {t1 - t0:.1f} s, "
              f"run {t2 - t1:.1f} s ({args.seeds} seeds x 5 tasks x {args.updates} updates)", flush=True)
    base = next((r for r in rows if r["strategy"] == "none"), None)
    if base:
        for r in rows:
            r["run_vs_none"] = r["run_s"] / base["run_s"]
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    blob = dict(jax=jax.__version__, device=str(jax.devices()[0]), settings=vars(args), rows=rows)
    with open(args.out + ".tmp", "w") as f:
        json.dump(blob, f, indent=1)
    os.replace(args.out + ".tmp", args.out)


if __name__ == "__main__":
    main()
