"""Returns are real on a continuous action space: PPO on Pendulum-v1 (default parameters) from scratch.

Trains :class:`clloop_jax.sources.gymnax.GymnaxSource` (Gaussian policy, learned log-std) on Pendulum-v1 through the
same ``make_run`` as every continual run (one task, strategy ``none``), several seeds at once with ``vmap``. Each update
collects ``num_envs x num_steps`` steps from environments that keep running between updates (``persistent_envs``),
then takes ``epochs`` passes of ``num_minibatches`` clipped-PPO steps over them. Reports each seed's evaluation return
(the mean over ``eval_envs`` episodes of 200 steps, stochastic policy) next to the untrained policy's and the
uniform random policy's (Pendulum counts as learned at about -200 to -400)::

    python experiments/rl_pendulum.py     # 3 seeds, 60 updates of 16 x 256 steps (246k steps each)

Writes ``experiments/results/rl_pendulum.json`` atomically.
"""
from __future__ import annotations

import argparse
import json
import os

import jax
import numpy as np
import optax
from rl_cartpole import from_scratch

from clloop_jax.run.config import RunConfig
from clloop_jax.run.sequential import make_run
from clloop_jax.sources.gymnax import GymnaxSource
from clloop_jax.workflow.compilation import enable_compilation_cache
from clloop_jax.workflow.files import write_atomic

#: The PPO settings of Pendulum-v1 from scratch (``continual_rl.py`` takes 5 epochs of 16 minibatches).
PENDULUM = dict(num_envs=16, num_steps=256, epochs=10, num_minibatches=32, persistent_envs=True)
PENDULUM_HP = dict(learning_rate=1e-3, discount=0.9, gae_lambda=0.95, reward_scale=0.1, entropy_coef=0.0,
                   feedback_weight=0.1)


def pendulum_optimizer(updates: int, passes: int):
    """Adam whose rate decays linearly to 0 over ``updates * passes`` optimizer steps (one task)."""
    return lambda lr: optax.adam(optax.linear_schedule(lr, 0.0, updates * passes))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--episodes", type=int, default=60, help="updates, one per collected rollout")
    p.add_argument("--epochs", type=int, default=PENDULUM["epochs"])
    p.add_argument("--num-minibatches", type=int, default=PENDULUM["num_minibatches"])
    p.add_argument("--eval-envs", type=int, default=16)
    p.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "rl_pendulum.json"))
    p.add_argument("--no-cache", action="store_true")
    args = p.parse_args(argv)
    enable_compilation_cache(enabled=not args.no_cache)
    settings = dict(PENDULUM, epochs=args.epochs, num_minibatches=args.num_minibatches)
    source = GymnaxSource("Pendulum-v1", [{}], eval_envs=args.eval_envs, **settings)
    run = make_run(RunConfig(strategy="none", episodes_per_task=args.episodes, monitors=(), max_grad_norm=0.5,
                             optimizer=pendulum_optimizer(args.episodes, source.minibatch_passes)), source)
    hp = run.hparams(**PENDULUM_HP)
    res, summary = from_scratch(run, hp, source, args.seeds, "Pendulum-v1")
    write_atomic(args.out, json.dumps({
        "settings": {**vars(args), **settings, **PENDULUM_HP}, "device": str(jax.devices()[0]), **summary,
        "train_batch_return": np.asarray(res.traces["score"])[:, 0, ::5].tolist(),
        "clip_fraction": np.asarray(res.traces["clip_fraction"])[:, 0, ::5].tolist()}, indent=1))


if __name__ == "__main__":
    main()
