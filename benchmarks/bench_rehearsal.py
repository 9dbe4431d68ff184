"""What one update of each rehearsal strategy costs, as a multiple of fine-tuning's, next to the multiple its
arithmetic needs.

The job of ``benchmarks/peer_avalanche.py`` (class-incremental split MNIST on the 5,000 real images, MLP 784-400-400-10,
Adam, batches of 128, memories of 500; the same strategy settings), 5 seeds vmapped. Each strategy first trains task 1
(so its memory holds images), then the measured program is ``--updates`` updates of task 2, exactly the episodes of
the run's task program (a batch drawn, ``Run.learn``: the strategy's replay loss, projection and memory intake
included), compiled ahead of time and timed as the median of ``--repeats`` calls, the strategies interleaved.

The arithmetic's multiple is XLA's own count of floating-point operations in that compiled program
(``compiled.cost_analysis()["flops"]``) over fine-tuning's: replay and ER-ACE add a forward and backward pass on a
memory batch of 128 (2x), A-GEM a gradient on a reference batch of 256 (3x), DER++ two memory batches (3x), LwF a
forward pass of the previous model (about 1.4x). A time multiple above the arithmetic's is what the strategy spends
on other work (gathers from the memory, the memory's updates, masks, copies)::

    python benchmarks/bench_rehearsal.py                 # a few minutes on 2 CPU cores
    python benchmarks/bench_rehearsal.py --updates 20 --repeats 2 --strategies none,replay   # a quick look

Writes ``benchmarks/results/bench_rehearsal.json`` and prints a markdown table.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

import jax

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from benchmarks.peer_avalanche import (BATCH, HIDDEN, LEARNING_RATE, TASK_SAMPLE, make_stream,  # noqa: E402
                                       our_strategy)
from clloop_jax.model import MLP  # noqa: E402
from clloop_jax.run import RunConfig, make_run  # noqa: E402
from clloop_jax.run.sequential import task_at  # noqa: E402
from clloop_jax.sources.supervised import SupervisedSource  # noqa: E402

STRATEGIES = ("none", "replay", "er_ace", "agem", "derpp", "lwf")


def updates_program(name: str, stream, seeds: int, updates: int):
    """``(compiled, args)``: ``updates`` updates of task 2 for every seed, from the state after task 1."""
    from clloop_jax.strategies import er_ace
    strategy = er_ace(capacity=500, batch_size=BATCH) if name == "er_ace" else our_strategy(name)
    source = SupervisedSource(MLP(output_dim=stream.num_classes, hidden=HIDDEN), stream, batch_size=BATCH,
                              fisher_size=TASK_SAMPLE)
    run = make_run(RunConfig(strategy=strategy, episodes_per_task=updates, monitors=(), max_grad_norm=None), source)
    hp = run.hparams(learning_rate=LEARNING_RATE)
    keys = jax.random.split(jax.random.key(0), seeds)
    tasks = source.tasks
    first = jax.jit(jax.vmap(lambda k: run.task_step_on(run.init_on(tasks, k, hp), tasks, k, 0, hp)[0]))
    state = jax.block_until_ready(first(keys))
    task = task_at(tasks, 1)

    def train(st, key):
        def episode(s, k):
            k_batch, k_update = jax.random.split(k)
            return run.learn(s, source.batch(k_batch, s.params, task, hp.source), k_update, hp)
        return jax.lax.scan(episode, st, jax.random.split(key, updates))

    compiled = jax.jit(jax.vmap(train)).lower(state, keys).compile()
    return compiled, (state, keys)


def flops(compiled) -> float:
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost.get("flops", float("nan")))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--strategies", default=",".join(STRATEGIES))
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--updates", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default=os.path.join(HERE, "results", "bench_rehearsal.json"))
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.strategies.split(",")]
    if names[0] != "none":
        names = ["none"] + [n for n in names if n != "none"]
    stream = make_stream()
    programs, rows = {}, {}
    for name in names:
        t0 = time.perf_counter()
        programs[name] = updates_program(name, stream, args.seeds, args.updates)
        rows[name] = {"compile_and_first_task_s": time.perf_counter() - t0, "flops": flops(programs[name][0]),
                      "times_s": []}
    for name in names:   # a warm-up call each
        jax.block_until_ready(programs[name][0](*programs[name][1]))
    for _ in range(args.repeats):   # interleaved, so that the machine's state changes all strategies alike
        for name in names:
            compiled, call = programs[name]
            t0 = time.perf_counter()
            jax.block_until_ready(compiled(*call))
            rows[name]["times_s"].append(time.perf_counter() - t0)
    base = rows["none"]
    lines = [f"| strategy | ms per update ({args.seeds} seeds) | time / fine-tuning | arithmetic / fine-tuning | "
             f"time / arithmetic |",
             "|---|---:|---:|---:|---:|"]
    for name in names:
        row = rows[name]
        row["update_ms"] = 1e3 * statistics.median(row["times_s"]) / args.updates
        row["time_multiple"] = row["update_ms"] / base["update_ms"]
        row["flops_multiple"] = row["flops"] / base["flops"]
        lines.append(f"| {name} | {row['update_ms']:.2f} | {row['time_multiple']:.2f} | {row['flops_multiple']:.2f} |"
                     f" {row['time_multiple'] / row['flops_multiple']:.2f} |")
    table = "\n".join(lines)
    print(table)
    blob = {"machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "jax": jax.__version__,
                        "device": str(jax.devices()[0]), "load_avg": os.getloadavg()},
            "settings": {"seeds": args.seeds, "updates": args.updates, "repeats": args.repeats, "batch": BATCH,
                         "hidden": list(HIDDEN)},
            "strategies": rows, "table": table}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out + ".tmp", "w") as f:
        json.dump(blob, f, indent=1)
    os.replace(args.out + ".tmp", args.out)


if __name__ == "__main__":
    main()
