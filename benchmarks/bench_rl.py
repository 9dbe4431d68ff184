"""Environment steps per second of the continual actor-critic run next to a plain single-task actor-critic loop.

Both train :class:`clloop_jax.sources.gymnax.GymnaxSource` on CartPole-v1 with the same rollouts (``num_envs x
num_steps`` per update) and the same number of updates, in the same process:

* **continual**: ``make_run(RunConfig(strategy="ewc", episodes_per_task=E), source)`` over 3 tasks: per task E
  updates, then an exact policy Fisher from one more rollout and an evaluation on every task (plus the untrained
  baseline), all one compiled program;
* **single-task**: a hand-written ``lax.scan`` of ``3 E`` updates (rollout, gradient of the same loss, clipped Adam)
  on the default task, nothing else.

Throughput counts the training rollouts' steps only (``3 E num_envs num_steps``) for both, so the ratio is what the
continual machinery (task switching, penalty, Fisher, evaluations) costs. Compilation is timed separately; run
time is the median of ``--repeats`` keys::

    python benchmarks/bench_rl.py                   # E=200, 8 x 64 steps, 2 repeats

Writes ``benchmarks/results/bench_rl.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import tempfile
import time

import jax
import optax

from clloop_jax.run.config import RunConfig
from clloop_jax.run.sequential import make_run
from clloop_jax.sources.gymnax import GymnaxSource


def timed(fn, args_list):
    times = []
    for args in args_list:
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--episodes", type=int, default=200, help="updates per task")
    p.add_argument("--num-envs", type=int, default=8)
    p.add_argument("--num-steps", type=int, default=64)
    p.add_argument("--eval-envs", type=int, default=8)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--out", default=str(pathlib.Path(__file__).parent / "results" / "bench_rl.json"))
    args = p.parse_args(argv)
    overrides = [{}, {"length": 1.5, "masspole": 0.5}, {"length": 0.25, "gravity": 15.0, "force_mag": 7.0}]
    source = GymnaxSource("CartPole-v1", overrides, num_envs=args.num_envs, num_steps=args.num_steps,
                          eval_envs=args.eval_envs)
    run = make_run(RunConfig(strategy="ewc", episodes_per_task=args.episodes, monitors=(), fisher_variant="exact",
                             max_grad_norm=0.5), source)
    hp = run.hparams(learning_rate=1e-3, reward_scale=0.1, lam=1000.0)
    updates = len(overrides) * args.episodes
    train_steps = updates * args.num_envs * args.num_steps
    keys = [jax.random.key(i) for i in range(args.repeats + 1)]

    t0 = time.perf_counter()
    continual_c = jax.jit(lambda k: run._run(source.tasks, k, hp)).lower(keys[0]).compile()  # the run's program
    continual_compile = time.perf_counter() - t0
    continual_s = timed(lambda k: continual_c(k)[1].R, [(k,) for k in keys[1:]])

    task0 = jax.tree.map(lambda x: x[0], source.tasks)
    opt = optax.chain(optax.clip_by_global_norm(0.5), optax.adam(1e-3))

    def single(key):
        params = source.init_params(jax.random.fold_in(key, 0))

        def step(carry, k):
            params, opt_state = carry
            batch = source.batch(k, params, task0, hp.source)
            grads = jax.grad(lambda q: source.loss(q, batch, hp.source)[0])(params)
            updates_, opt_state = opt.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates_), opt_state), None

        (params, _), _ = jax.lax.scan(step, (params, opt.init(params)), jax.random.split(key, updates))
        return params

    t0 = time.perf_counter()
    single_c = jax.jit(single).lower(keys[0]).compile()
    single_compile = time.perf_counter() - t0
    single_s = timed(single_c, [(k,) for k in keys[1:]])

    eval_steps = (len(overrides) + 1) * len(overrides) * args.eval_envs * source.eval_steps
    fisher_steps = len(overrides) * args.num_envs * args.num_steps
    result = {
        "device": str(jax.devices()[0]), "settings": vars(args), "train_env_steps": train_steps,
        "continual": {"compile_s": continual_compile, "run_s": continual_s, "train_steps_per_s": train_steps / continual_s,
                      "all_steps_per_s": (train_steps + eval_steps + fisher_steps) / continual_s,
                      "eval_env_steps": eval_steps, "fisher_env_steps": fisher_steps},
        "single_task": {"compile_s": single_compile, "run_s": single_s, "train_steps_per_s": train_steps / single_s},
    }
    result["slowdown"] = continual_s / single_s
    print(f"CartPole-v1, {updates} updates of {args.num_envs} x {args.num_steps} steps ({train_steps} training steps)")
    print(f"  continual run (ewc, 3 tasks, Fisher + evaluations): {train_steps / continual_s:,.0f} training env steps/s "
          f"({(train_steps + eval_steps + fisher_steps) / continual_s:,.0f} counting evaluation and Fisher rollouts), "
          f"run {continual_s:.2f} s, compile {continual_compile:.1f} s")
    print(f"  single-task actor-critic loop:                      {train_steps / single_s:,.0f} training env steps/s, "
          f"run {single_s:.2f} s, compile {single_compile:.1f} s")
    print(f"  continual / single-task wall time: {result['slowdown']:.2f}x")
    path = pathlib.Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(result, f, indent=1)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


if __name__ == "__main__":
    main()
