"""Returns are real: the actor-critic source learns CartPole-v1 (default parameters) from scratch.

Trains :class:`clloop_jax.sources.gymnax.GymnaxSource` on CartPole-v1 through the same ``make_run`` as every continual
run (one task, strategy ``none``), several seeds at once with ``vmap``, and reports each seed's evaluation return (the
mean over ``eval_envs`` episodes of up to 500 steps, stochastic policy) next to the uniform random policy's::

    python experiments/rl_cartpole.py     # 3 seeds, 2000 updates of 8 x 256 steps (4M steps each), lr 1e-3 -> 0

Writes ``experiments/results/rl_cartpole.json`` atomically.
"""
from __future__ import annotations

import argparse
import json
import os
import time

import jax
import numpy as np
import optax

from clloop_jax.run.config import RunConfig
from clloop_jax.run.sequential import make_run
from clloop_jax.sources.gymnax import GymnaxSource
from clloop_jax.workflow.compilation import enable_compilation_cache
from clloop_jax.workflow.files import write_atomic


def from_scratch(run, hp, source, seeds: int, name: str):
    """``run`` (one task) trained on ``seeds`` seeds at once (``jax.vmap``): prints and returns each seed's evaluation
    return next to the untrained policy's and the uniform random policy's. Returns ``(results, summary)``."""
    keys = jax.random.split(jax.random.key(0), seeds)
    t0 = time.perf_counter()
    _, res = jax.vmap(run, in_axes=(0, None))(keys, hp)
    returns = np.asarray(res.R, np.float64)[:, 0, 0]
    seconds = time.perf_counter() - t0
    task = jax.tree.map(lambda x: x[0], source.tasks)
    random = np.asarray(jax.jit(jax.vmap(lambda k: source.random_score(k, task)))(
        jax.random.split(jax.random.key(1), seeds)), np.float64)
    untrained = np.asarray(res.baseline, np.float64)[:, 0]
    steps = run.config.episodes_per_task * source.num_envs * source.num_steps
    print(f"{name}, {steps} environment steps per seed: trained return per seed {np.round(returns, 1)}, "
          f"untrained {np.round(untrained, 1)}, uniform random policy {np.round(random, 1)}  "
          f"[{seconds:.0f} s with compilation]")
    return res, {"env_steps_per_seed": steps, "trained_return": returns.tolist(),
                 "untrained_return": untrained.tolist(), "random_return": random.tolist(), "seconds": seconds}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--episodes", type=int, default=2000, help="updates, one per rollout")
    p.add_argument("--num-envs", type=int, default=8)
    p.add_argument("--num-steps", type=int, default=256)
    p.add_argument("--eval-envs", type=int, default=16)
    p.add_argument("--learning-rate", type=float, default=1e-3)
    p.add_argument("--no-anneal", action="store_true",
                   help="keep the learning rate constant (default: linear decay to 0 over the updates)")
    p.add_argument("--reward-scale", type=float, default=0.1)
    p.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "rl_cartpole.json"))
    p.add_argument("--no-cache", action="store_true")
    args = p.parse_args(argv)
    enable_compilation_cache(enabled=not args.no_cache)
    source = GymnaxSource("CartPole-v1", [{}], num_envs=args.num_envs, num_steps=args.num_steps,
                          eval_envs=args.eval_envs)
    optimizer = optax.adam if args.no_anneal else (
        lambda lr: optax.adam(optax.linear_schedule(lr, 0.0, args.episodes)))
    run = make_run(RunConfig(strategy="none", episodes_per_task=args.episodes, monitors=(), max_grad_norm=0.5,
                             optimizer=optimizer), source)
    hp = run.hparams(learning_rate=args.learning_rate, reward_scale=args.reward_scale)
    res, summary = from_scratch(run, hp, source, args.seeds, "CartPole-v1")
    write_atomic(args.out, json.dumps({"settings": vars(args), "device": str(jax.devices()[0]), **summary,
                                       "train_batch_return": np.asarray(res.traces["score"])[:, 0, ::100].tolist()},
                                      indent=1))


if __name__ == "__main__":
    main()
