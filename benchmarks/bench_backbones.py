"""One update of the reduced ResNet-18 (Lopez-Paz & Ranzato 2017; ``nf = 20``, batch norm) through the run's update
step, at batch 32 on 32x32x3 generated images, for 1, 4, ... seeds vmapped: trace + lower, XLA compile and steady
state, separately.

The update is :meth:`clloop_jax.run.sequential.Run.update` of a :class:`~clloop_jax.sources.SupervisedSource` over
:class:`~clloop_jax.model.ResNet18` (training-mode forward pass with the batch's statistics, the gradient of the
cross-entropy, the strategy's penalty, Adam, the new running averages stored), ahead-of-time compiled as
``jax.jit(jax.vmap(run.update))`` over the seeds; the steady state is the median of ``--repeats`` calls after a
warm-up call::

    nice -n 19 python benchmarks/bench_backbones.py                       # 1 and 4 seeds (CPU: a few minutes)
    python benchmarks/bench_backbones.py --seeds 1,4,16 --strategy ewc    # on a GPU machine

Writes ``benchmarks/results/bench_backbones.json`` and prints a markdown table.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def measure(seeds: int, nf: int, batch: int, strategy: str, repeats: int) -> dict:
    import jax
    import numpy as np

    from clloop_jax import ResNet18, RunConfig, SupervisedSource, make_run
    from clloop_jax.data.streams import split_stream

    n = 20 * batch  # 5 tasks of 2 classes: every task holds more than a batch of training samples
    rng = np.random.default_rng(0)
    y = np.arange(n) % 10
    x = rng.random((n, 32 * 32 * 3), dtype=np.float32)
    stream = split_stream(x, y, classes_per_task=2, seed=0, scenario="task")
    src = SupervisedSource(ResNet18(output_dim=10, nf=nf, image_shape=(32, 32, 3)), stream, batch_size=batch,
                           fisher_size=batch)
    run = make_run(RunConfig(strategy=strategy, episodes_per_task=1), src)
    hp = run.hparams()
    keys = jax.random.split(jax.random.key(0), seeds)
    states = jax.jit(jax.vmap(lambda k: run.init_on(src.tasks, k, hp)))(keys)
    task = jax.tree.map(lambda a: a[0], src.tasks)
    batches = jax.vmap(lambda k: src.batch(k, None, task, hp.source))(keys)
    step = jax.jit(jax.vmap(run.update, in_axes=(0, 0, 0, None)))
    args = (states, batches, keys, hp)
    jax.block_until_ready(args)
    t0 = time.perf_counter()
    lowered = step.lower(*args)
    t1 = time.perf_counter()
    compiled = lowered.compile()
    t2 = time.perf_counter()
    jax.block_until_ready(compiled(*args))
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(compiled(*args))
        times.append(time.perf_counter() - t)
    params = sum(int(np.prod(v.shape[1:])) for v in jax.tree.leaves(states.params))
    steady = statistics.median(times)
    return dict(seeds=seeds, nf=nf, batch=batch, strategy=strategy, params=params, lower_s=t1 - t0,
                compile_s=t2 - t1, steady_s=steady, per_seed_s=steady / seeds, times=times,
                device=str(jax.devices()[0].platform))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", default="1,4", help="comma-separated numbers of vmapped seeds")
    p.add_argument("--nf", type=int, default=20, help="the base width (20 in the papers)")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--strategy", default="none", help="the run's strategy (its penalty is part of the update)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", default=os.path.join(HERE, "results", "bench_backbones.json"))
    args = p.parse_args(argv)
    try:
        seeds = [int(s) for s in args.seeds.split(",")]
    except ValueError:
        p.error(f"--seeds must be comma-separated positive integers, got {args.seeds!r}")
    if not seeds or min(seeds) < 1:
        p.error(f"--seeds must be comma-separated positive integers, got {args.seeds!r}")
    for name in ("nf", "batch", "repeats"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be >= 1")
    import jax  # no persistent compilation cache: the compile time measured is XLA's

    rows = []
    for s in seeds:
        row = measure(s, args.nf, args.batch, args.strategy, args.repeats)
        rows.append(row)
        print(f"{s} seed(s): trace+lower {row['lower_s']:.2f} s, compile {row['compile_s']:.2f} s, steady "
              f"{1e3 * row['steady_s']:.1f} ms ({1e3 * row['per_seed_s']:.1f} ms/seed)", flush=True)
    lines = [f"reduced ResNet-18 (nf={args.nf}, {rows[0]['params']:,} parameters), one update at batch {args.batch} "
             f"on 32x32x3, strategy {args.strategy}, {jax.devices()[0].device_kind}:", "",
             "| seeds vmapped | trace+lower (s) | XLA compile (s) | steady update (ms) | per seed (ms) |",
             "|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['seeds']} | {r['lower_s']:.2f} | {r['compile_s']:.2f} | {1e3 * r['steady_s']:.1f} | "
                     f"{1e3 * r['per_seed_s']:.1f} |")
    print("\n".join(lines))
    blob = dict(machine=platform.platform(), processor=platform.processor(), cpus=os.cpu_count(),
                device=jax.devices()[0].device_kind, jax=jax.__version__, python=platform.python_version(),
                repeats=args.repeats, rows=rows)
    from clloop_jax.workflow.files import write_atomic
    write_atomic(args.out, json.dumps(blob, indent=1) + "\n")


if __name__ == "__main__":
    main()
