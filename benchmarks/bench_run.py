"""Cost of a whole continual-learning run: compile time, wall time per run and per environment step, and seeds
run side by side with ``jax.vmap`` (one compilation per seed count).

The world is the library's default (``Environment(observation_dim=64, action_dim=32, num_modalities=2)``, 40-step
episodes) with a matching ``CrossModalModel`` (hidden 64), ``EnvSource(num_envs=8)`` (evaluation on 16 envs),
``RunConfig(strategy="ewc", episodes_per_task=E)`` and 3 tasks. One run = for each task, E updates on a fresh
8-env rollout each, a Fisher diagonal (sampled) and functional-divergence probes from one more rollout each, and
an evaluation on every task (plus the untrained baseline).

* compile: ``jax.jit(run).lower(...).compile()`` of the whole run, timed separately from execution.
* run: median wall time of the compiled run over ``--repeats`` different keys (``block_until_ready``); per
  environment step, counting the training rollouts only (``tasks * episodes * num_envs * num_steps``) and all
  rollouts (training, Fisher and probe rollouts, evaluations), which are also listed separately.
* seeds: ``jax.jit(jax.vmap(run, in_axes=(0, None)))`` over S keys, compiled once per S; the time of S seeds is
  reported as a ratio to one seed (the unbatched run above, the same program as a vmap over one key) and as
  per-seed throughput.

    python benchmarks/bench_run.py                      # E=5, 3 repeats, seeds 1,4,16 (CPU or GPU)
    python benchmarks/bench_run.py --episodes 20 --repeats 5 --seeds 1,8,32,128        # e.g. on a GPU
    python benchmarks/bench_run.py --small --seeds 1,2  # a smoke run on a tiny world (compiling still dominates)

Compilation dominates on a CPU: each of the three programs of the default command takes 35-60 s to compile on a
shared 2-core machine, so the whole command takes 1-3 minutes there.

Writes ``benchmarks/results/bench_run.json``.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import platform
import statistics
import time

import jax
import numpy as np

from clloop_jax.envs import Environment
from clloop_jax.loop import RunConfig, make_run
from clloop_jax.model import CrossModalModel
from clloop_jax.sources import EnvSource

NUM_TASKS = 3
DEFAULT_WORLD = dict(observation_dim=64, action_dim=32, num_modalities=2)
SMALL_WORLD = dict(observation_dim=8, action_dim=8, num_modalities=2, latent_dim=4, episode_length=8)


def build(small: bool, episodes: int):
    env = Environment(**(SMALL_WORLD if small else DEFAULT_WORLD))
    model = CrossModalModel(input_dim=env.observation_dim, hidden_dim=16 if small else 64,
                            output_dim=env.action_dim, num_modalities=env.num_modalities,
                            num_heads=2 if small else 4, feedback_dim=env.feedback_dim)
    source = EnvSource(model, env, num_tasks=NUM_TASKS, num_envs=4 if small else 8, eval_envs=4 if small else 16)
    config = RunConfig(strategy="ewc", episodes_per_task=episodes)
    return env, model, source, config, make_run(config, source)


def env_steps(source: EnvSource, config: RunConfig) -> dict:
    T, S = source.num_tasks, source.num_steps
    train = T * config.episodes_per_task * source.num_envs * S
    fisher = T * source.num_envs * S                                   # one rollout per consolidation
    probes = T * source.num_envs * S if config.num_probes else 0       # one more for the probe inputs
    evaluation = (T + 1) * T * source.eval_envs * S                    # baseline + after each task, every task
    return dict(train=train, fisher=fisher, probes=probes, evaluation=evaluation,
                total=train + fisher + probes + evaluation)


def timed(fn, repeats: int) -> tuple[float, list[float]]:
    times = []
    for i in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(i))
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times


def compile_fn(fn, *args) -> tuple[object, float, float]:
    t0 = time.perf_counter()
    lowered = jax.jit(fn).lower(*args)
    t1 = time.perf_counter()
    compiled = lowered.compile()
    return compiled, t1 - t0, time.perf_counter() - t1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=5, help="episodes (updates) per task")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seeds", type=str, default="1,4,16", help="comma-separated seed counts to vmap")
    parser.add_argument("--small", action="store_true", help="a tiny world and model, for a fast smoke run")
    parser.add_argument("--out", type=pathlib.Path,
                        default=pathlib.Path(__file__).parent / "results" / "bench_run.json")
    args = parser.parse_args()
    seed_counts = sorted({int(s) for s in args.seeds.split(",")})
    if args.episodes < 1 or args.repeats < 1 or not seed_counts or seed_counts[0] < 1:
        parser.error("--episodes, --repeats and every --seeds entry must be >= 1")
    if args.small:
        args.episodes = min(args.episodes, 2)

    env, model, source, config, run = build(args.small, args.episodes)
    hp = run.hparams(learning_rate=3e-4, lam=10.0)
    params = model.init_params(jax.random.key(0))
    n_params = int(sum(x.size for x in jax.tree.leaves(params)))
    steps = env_steps(source, config)
    devices = jax.devices()
    world = dict(observation_dim=env.observation_dim, action_dim=env.action_dim, num_modalities=env.num_modalities,
                 latent_dim=env.latent_dim, episode_length=env.episode_length)
    print(f"world {world}")
    print(f"model hidden {model.hidden_dim}, {n_params} parameters; {NUM_TASKS} tasks x {args.episodes} episodes, "
          f"{source.num_envs} envs x {source.num_steps} steps, eval on {source.eval_envs} envs; strategy ewc "
          f"({config.fisher_variant} Fisher)")
    print(f"backend={jax.default_backend()} devices={devices} jax={jax.__version__}")
    print(f"env steps per run: train {steps['train']}, Fisher {steps['fisher']}, probes {steps['probes']}, "
          f"evaluation {steps['evaluation']}, total {steps['total']}\n")

    # (a) compile, (b) one seed
    key = jax.random.key(0)
    single, lower_s, compile_s = compile_fn(lambda k, h: run(k, h), key, hp)
    _, res = jax.block_until_ready(single(key, hp))  # warm-up run
    run_s, run_all = timed(lambda i: single(jax.random.key(100 + i), hp), args.repeats)
    print(f"compile (lower + compile) {lower_s + compile_s:.2f} s  (lower {lower_s:.2f} s, compile {compile_s:.2f} s)")
    print(f"run {run_s:.3f} s (median of {args.repeats}); per env step: {1e6 * run_s / steps['train']:.2f} us "
          f"(training steps only), {1e6 * run_s / steps['total']:.2f} us (all rollouts)")
    print(f"  final row of R (key 0): {np.round(np.asarray(res.R[-1]), 3).tolist()}\n")

    # (c) vmapped seeds
    rows = []
    for S in seed_counts:
        if S == 1:
            row = dict(seeds=1, compile_s=lower_s + compile_s, run_s=run_s, run_repeats_s=run_all,
                       program="unbatched run")
        else:
            keys = jax.random.split(key, S)
            batched, lo, co = compile_fn(jax.vmap(lambda k, h: run(k, h), in_axes=(0, None)), keys, hp)
            jax.block_until_ready(batched(keys, hp))
            t, t_all = timed(lambda i: batched(jax.random.split(jax.random.key(100 + i), S), hp), args.repeats)
            row = dict(seeds=S, compile_s=lo + co, run_s=t, run_repeats_s=t_all, program="vmap over keys")
        row.update(ratio_to_one_seed=row["run_s"] / run_s, seeds_per_s=S / row["run_s"],
                   train_env_steps_per_s=S * steps["train"] / row["run_s"],
                   all_env_steps_per_s=S * steps["total"] / row["run_s"],
                   speedup_per_seed=S * run_s / row["run_s"])
        rows.append(row)

    header = (f"{'seeds':>5} | {'compile s':>9} | {'run s':>8} | {'x 1 seed':>8} | {'seeds/s':>8} | "
              f"{'per-seed speedup':>16} | {'train env steps/s':>17} | {'all env steps/s':>15}")
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r['seeds']:>5} | {r['compile_s']:>9.2f} | {r['run_s']:>8.3f} | {r['ratio_to_one_seed']:>8.2f} | "
              f"{r['seeds_per_s']:>8.2f} | {r['speedup_per_seed']:>16.2f} | {r['train_env_steps_per_s']:>17.0f} | "
              f"{r['all_env_steps_per_s']:>15.0f}")
    print("\n'x 1 seed': wall time of S seeds / one seed; 'per-seed speedup': S * t(1) / t(S) (S = perfect scaling).")

    result = dict(
        benchmark="bench_run",
        small=args.small,
        world=world,
        model=dict(hidden_dim=model.hidden_dim, num_heads=model.num_heads, n_params=n_params),
        source=dict(num_tasks=source.num_tasks, num_envs=source.num_envs, num_steps=source.num_steps,
                    eval_envs=source.eval_envs),
        config=dict(strategy=config.strategy, episodes_per_task=config.episodes_per_task,
                    fisher_variant=config.fisher_variant, num_probes=config.num_probes),
        hparams={k: float(v) for k, v in hp._asdict().items()},
        env_steps_per_run=steps,
        repeats=args.repeats,
        compile=dict(lower_s=lower_s, compile_s=compile_s, total_s=lower_s + compile_s),
        run=dict(median_s=run_s, repeats_s=run_all, us_per_train_env_step=1e6 * run_s / steps["train"],
                 us_per_env_step_all_rollouts=1e6 * run_s / steps["total"]),
        seeds=rows,
        backend=jax.default_backend(),
        devices=[str(d) for d in devices],
        device_kind=devices[0].device_kind,
        jax_version=jax.__version__,
        python=platform.python_version(),
        machine=platform.machine(),
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
