"""Compile time of the run, each measurement in a fresh process: trace + lower, XLA compile and first call.

For the demo's configuration (default world 64/32/2, hidden 64, 5 episodes of 8 worlds per task, EWC) at 3 and at 10
tasks, for the whole run ``run(key, hp)`` and for the per-task program ``run.train_task`` (the facade's path), with
JAX's persistent compilation cache cold (an empty folder) and warm (filled by the cold process), and the wall time of
``python experiments/demo.py`` cold and warm. Medians over ``--repeats`` fresh processes::

    python benchmarks/bench_compile.py                 # about 15 minutes on 2 CPU cores
    python benchmarks/bench_compile.py --repeats 1 --tasks 3 --no-demo    # a quick look

Writes ``benchmarks/results/bench_compile.json`` and prints a markdown table.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def child(tasks: int, program: str, cache: str | None) -> dict:
    """One measurement in this (fresh) process."""
    t_start = time.perf_counter()
    import jax

    from clloop_jax import CrossModalModel, Environment
    from clloop_jax.run.config import RunConfig
    from clloop_jax.run.sequential import _jit_run, _jit_task_step, make_run
    from clloop_jax.sources.world import EnvSource
    from clloop_jax.workflow.compilation import enable_compilation_cache

    if cache:
        enable_compilation_cache(cache)
    env = Environment(observation_dim=64, action_dim=32, num_modalities=2, num_tasks=tasks)
    model = CrossModalModel(input_dim=64, hidden_dim=64, output_dim=32, num_modalities=2)
    run = make_run(RunConfig(strategy="ewc", episodes_per_task=5), EnvSource(model, env, num_tasks=tasks, num_envs=8))
    hp = run.hparams(learning_rate=1e-3, lam=1.0, feedback_weight=0.3)
    key = jax.random.key(0)
    t_ready = time.perf_counter()
    if program == "run":
        fn, args = _jit_run, (run, run.source.tasks, key, hp)
    else:
        state = run.init(key, hp)
        jax.block_until_ready(state)
        fn, args = _jit_task_step, (run, state, run.source.tasks, key, jax.numpy.int32(0), hp)
    t0 = time.perf_counter()
    lowered = fn.lower(*args)
    t1 = time.perf_counter()
    compiled = lowered.compile()
    t2 = time.perf_counter()
    jax.block_until_ready(compiled(*args[1:]))
    t3 = time.perf_counter()
    steady = []
    for _ in range(3):
        t = time.perf_counter()
        jax.block_until_ready(compiled(*args[1:]))
        steady.append(time.perf_counter() - t)
    return dict(setup_s=t_ready - t_start, lower_s=t1 - t0, compile_s=t2 - t1, trace_compile_s=t2 - t0,
                first_call_s=t3 - t0, steady_s=min(steady))


def spawn(args: list[str], env: dict) -> dict:
    out = subprocess.run([sys.executable, os.path.abspath(__file__), *args], capture_output=True, text=True,
                         env=env, cwd=ROOT, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def demo_wall(cache: str, env: dict) -> float:
    env = dict(env, CLLOOP_JAX_CACHE_DIR=cache)
    t = time.perf_counter()
    subprocess.run([sys.executable, os.path.join(ROOT, "experiments", "demo.py")], env=env, cwd=ROOT, check=True,
                   capture_output=True)
    return time.perf_counter() - t


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--program", default="run", choices=["run", "train_task"])
    p.add_argument("--cache", default=None)
    p.add_argument("--tasks", default="3,10", help="comma-separated task counts")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--no-demo", action="store_true")
    p.add_argument("--out", default=os.path.join(HERE, "results", "bench_compile.json"))
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(child(int(args.tasks), args.program, args.cache)))
        return
    if args.repeats < 1:
        p.error("--repeats must be >= 1")
    env = dict(os.environ)
    env.pop("CLLOOP_JAX_NO_CACHE", None)
    rows, raw = [], {}
    for tasks in [int(t) for t in args.tasks.split(",")]:
        for program in ("run", "train_task"):
            cold, warm = [], []
            for _ in range(args.repeats):
                with tempfile.TemporaryDirectory() as cache:
                    base = ["--child", "--tasks", str(tasks), "--program", program, "--cache", cache]
                    cold.append(spawn(base, env))
                    warm.append(spawn(base, env))
            med = lambda runs, k: statistics.median(r[k] for r in runs)  # noqa: E731
            row = dict(tasks=tasks, program=program,
                       **{f"cold_{k}": med(cold, k) for k in ("lower_s", "compile_s", "trace_compile_s",
                                                               "first_call_s", "steady_s")},
                       **{f"warm_{k}": med(warm, k) for k in ("trace_compile_s", "first_call_s")})
            rows.append(row)
            raw[f"{program}_{tasks}"] = dict(cold=cold, warm=warm)
            print(f"{program} {tasks} tasks: trace+lower {row['cold_lower_s']:.2f} s, compile "
                  f"{row['cold_compile_s']:.2f} s; warm cache first call {row['warm_first_call_s']:.2f} s; "
                  f"steady {row['cold_steady_s']:.3f} s", flush=True)
    demo = None
    if not args.no_demo:
        cold, warm = [], []
        for _ in range(args.repeats):
            with tempfile.TemporaryDirectory() as cache:
                cold.append(demo_wall(cache, env))
                warm.append(demo_wall(cache, env))
        demo = dict(cold_s=statistics.median(cold), warm_s=statistics.median(warm), cold_all=cold, warm_all=warm)
        print(f"demo wall time: cold cache {demo['cold_s']:.1f} s, warm cache {demo['warm_s']:.1f} s", flush=True)

    import jax
    lines = ["| program | tasks | trace+lower (s) | XLA compile (s) | first call, cold cache (s) | "
             "first call, warm cache (s) | steady run (s) |", "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['program']} | {r['tasks']} | {r['cold_lower_s']:.2f} | {r['cold_compile_s']:.2f} | "
                     f"{r['cold_first_call_s']:.2f} | {r['warm_first_call_s']:.2f} | {r['cold_steady_s']:.3f} |")
    if demo:
        lines.append(f"\n`python experiments/demo.py` wall time: {demo['cold_s']:.1f} s with a cold persistent cache, "
                     f"{demo['warm_s']:.1f} s warm (medians of {args.repeats}).")
    print("\n".join(lines))
    blob = dict(machine=platform.platform(), processor=platform.processor(), cpus=os.cpu_count(),
                jax=jax.__version__, python=platform.python_version(), repeats=args.repeats, rows=rows, demo=demo,
                raw=raw)
    from clloop_jax.workflow.files import write_atomic
    write_atomic(args.out, json.dumps(blob, indent=1) + "\n")


if __name__ == "__main__":
    main()
