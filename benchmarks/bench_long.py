"""Long task streams: compile time, run time and memory of a permuted-MNIST run at 10, 100 and 500 tasks, with the
long-stream options on (``RunConfig(evaluate_every=10, traces="tasks")``) and off (every task evaluated after every
task, every update recorded).

One configuration throughout: permuted MNIST (:func:`clloop_jax.data.load_mnist`'s first ``--train`` training and
``--test`` test images (the first of each class), each task its own permutation), domain-incremental, an MLP 784-100-100-10, batches of 64,
``--updates`` updates per task, strategies ``none`` and ``ewc`` (empirical Fisher of 32 samples), the seeds vmapped
(``--seeds``). Each measurement runs in a fresh process with JAX's persistent compilation cache off: trace + lower
(``jax.jit(f).lower(...)``), XLA compile (``.compile()``), one call of the compiled program (steady state: the program
is compiled by then), the compiled program's ``memory_analysis()`` and the process's peak resident memory
(``resource.getrusage``; it includes the task arrays, about 0.9 MB per task here, and JAX itself)::

    nice -n 19 python benchmarks/bench_long.py             # about 5 minutes on 2 CPU cores
    python benchmarks/bench_long.py --tasks 10,100 --repeats 3    # medians of 3 fresh processes
    python benchmarks/bench_long.py --train 4000 --test 1000 --tasks 100,200 --pixels uint8   # the whole images,
                                                                  # kept as bytes (float32: --pixels float32)

Writes ``benchmarks/results/bench_long.json`` and prints a markdown table; times are medians over ``--repeats``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def child(tasks: int, strategy: str, long: bool, seeds: int, updates: int, train: int, test: int,
          pixels: str) -> dict:
    """One measurement in this (fresh) process."""
    import jax
    import jax.numpy as jnp

    from clloop_jax.data import load_mnist, permuted_stream
    from clloop_jax.model import MLP
    from clloop_jax.run.config import RunConfig
    from clloop_jax.run.programs import CPU_COMPILER_OPTIONS
    from clloop_jax.run.sequential import make_run
    from clloop_jax.sources.supervised import SupervisedSource

    import numpy as np
    x, y, x_test, y_test = load_mnist(pixels=pixels)
    keep = lambda labels, n: np.concatenate([np.flatnonzero(labels == c)[:n // 10] for c in range(10)])  # noqa: E731
    i, j = keep(y, train), keep(y_test, test)
    stream = permuted_stream(x[i], y[i], tasks, seed=0, x_test=x_test[j], y_test=y_test[j])
    del x, y, x_test, y_test
    source = SupervisedSource(MLP(output_dim=10, hidden=(100, 100)), stream, batch_size=64, fisher_size=32)
    options = dict(evaluate_every=10, traces="tasks") if long else {}
    run = make_run(RunConfig(strategy=strategy, episodes_per_task=updates, monitors=(), fisher_variant="empirical",
                             max_grad_norm=None, **options), source)
    hp = run.hparams(learning_rate=1e-3, **({"lam": 100.0} if strategy == "ewc" else {}))
    keys = jax.random.split(jax.random.key(0), seeds)
    fn = jax.jit(lambda tasks_, keys_, hp_: jax.vmap(lambda k: run.run_on(tasks_, k, hp_))(keys_),
                 compiler_options=CPU_COMPILER_OPTIONS if jax.default_backend() == "cpu" else None)
    args = (source.tasks, keys, hp)
    t0 = time.perf_counter()
    lowered = fn.lower(*args)
    t1 = time.perf_counter()
    compiled = lowered.compile()
    t2 = time.perf_counter()
    out = compiled(*args)
    jax.block_until_ready(out)
    t3 = time.perf_counter()
    memory = {}
    try:
        m = compiled.memory_analysis()
        memory = {k: int(getattr(m, k)) for k in ("argument_size_in_bytes", "output_size_in_bytes",
                                                  "temp_size_in_bytes", "generated_code_size_in_bytes")
                  if hasattr(m, k)}
    except Exception:  # noqa: BLE001 - not every backend reports it
        pass
    res = out[1]
    trace_bytes = sum(int(v.size) * v.dtype.itemsize for v in jax.tree.leaves(res.traces))
    return dict(lower_s=t1 - t0, compile_s=t2 - t1, run_s=t3 - t2, peak_rss_mb=resource.getrusage(
        resource.RUSAGE_SELF).ru_maxrss / 1024, trace_bytes=trace_bytes, R_nan=float(jnp.isnan(res.R).mean()),
        final_accuracy=float(jnp.mean(res.R[:, -1])), **memory)


def spawn(args: list[str]) -> dict:
    env = dict(os.environ, CLLOOP_JAX_NO_CACHE="1")
    env.pop("CLLOOP_JAX_CACHE_DIR", None)
    out = subprocess.run([sys.executable, os.path.abspath(__file__), *args], capture_output=True, text=True,
                         env=env, cwd=ROOT)
    if out.returncode:
        raise RuntimeError(f"child {args} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--long", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--strategy", default="none", help=argparse.SUPPRESS)
    p.add_argument("--tasks", default="10,100,500", help="comma-separated task counts")
    p.add_argument("--strategies", default="none,ewc")
    p.add_argument("--seeds", type=int, default=2, help="seeds vmapped in the one program")
    p.add_argument("--updates", type=int, default=5, help="updates per task")
    p.add_argument("--train", type=int, default=256, help="training images per task")
    p.add_argument("--test", type=int, default=32, help="test images per task (each evaluation scores them all)")
    p.add_argument("--pixels", choices=("float32", "uint8"), default="float32",
                   help="the stream's images as float32 (default) or as their bytes (read as the same floats)")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--out", default=os.path.join(HERE, "results", "bench_long.json"))
    args = p.parse_args(argv)
    sizes = dict(seeds=args.seeds, updates=args.updates, train=args.train, test=args.test, pixels=args.pixels)
    if args.child:
        print(json.dumps(child(int(args.tasks), args.strategy, args.long, **sizes)))
        return
    if args.repeats < 1:
        p.error("--repeats must be >= 1")
    common = [f"--{k}={v}" for k, v in sizes.items()]
    rows, raw = [], {}
    tasks_list = [int(t) for t in args.tasks.split(",")]
    for strategy in args.strategies.split(","):
        for long in (False, True):
            for tasks in tasks_list:
                runs = [spawn(["--child", "--tasks", str(tasks), "--strategy", strategy, *common]
                              + (["--long"] if long else [])) for _ in range(args.repeats)]
                row = dict(strategy=strategy, options="on" if long else "off", tasks=tasks,
                           **{k: statistics.median(r[k] for r in runs) for k in runs[0]})
                rows.append(row)
                raw[f"{strategy}_{row['options']}_{tasks}"] = runs
                print(f"{strategy} options {row['options']} {tasks} tasks: trace+lower {row['lower_s']:.2f} s, compile "
                      f"{row['compile_s']:.2f} s, run {row['run_s']:.2f} s, temp "
                      f"{row.get('temp_size_in_bytes', 0) / 2**20:.1f} MiB, peak RSS {row['peak_rss_mb']:.0f} MB",
                      flush=True)
    small, large = min(tasks_list), max(tasks_list)
    lines = ["| strategy | options | tasks | trace+lower (s) | compile (s) | compile ratio vs "
             f"{small} tasks | run (s) | program arguments (MiB) | program temp (MiB) | program output (MiB) | peak "
             "RSS (MB) |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        base = next(b for b in rows if b["strategy"] == r["strategy"] and b["options"] == r["options"]
                    and b["tasks"] == small)
        ratio = (r["lower_s"] + r["compile_s"]) / (base["lower_s"] + base["compile_s"])
        lines.append(f"| {r['strategy']} | {r['options']} | {r['tasks']} | {r['lower_s']:.2f} | {r['compile_s']:.2f} | "
                     f"{ratio:.2f} | {r['run_s']:.2f} | {r.get('argument_size_in_bytes', 0) / 2**20:.0f} | "
                     f"{r.get('temp_size_in_bytes', 0) / 2**20:.1f} | "
                     f"{r.get('output_size_in_bytes', 0) / 2**20:.2f} | {r['peak_rss_mb']:.0f} |")
    print("\n".join(lines))
    import jax
    blob = dict(machine=platform.platform(), processor=platform.processor(), cpus=os.cpu_count(), jax=jax.__version__,
                python=platform.python_version(), repeats=args.repeats, sizes=sizes, largest=large, rows=rows,
                raw=raw, table="\n".join(lines))
    from clloop_jax.workflow.files import write_atomic
    write_atomic(args.out, json.dumps(blob, indent=1) + "\n")


if __name__ == "__main__":
    main()
