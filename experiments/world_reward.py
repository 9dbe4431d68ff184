"""The default world learned from its reward alone, next to imitation learning of its expert.

The default :class:`~clloop_jax.envs.LatentWorld` (64 features x 2 modalities, 32 action entries, 40-step episodes)
rewards each step with ``-|a - a*|^2 / A``, ``a*`` the expert action it never shows to the reward learner. Two agents
of the same width learn its first task from scratch through the same ``make_run`` (strategy ``none``), several
seeds at once with ``vmap``:

* **from reward**: :class:`clloop_jax.sources.gymnax.GymnaxSource` with ``environment=world`` (the two modalities as the
model's two
  modalities), a Gaussian policy, PPO epochs of minibatches with a short discount (the reward depends only on the
  current action);
* **imitation**: :class:`clloop_jax.sources.world.EnvSource`, regressing the expert action the world reveals.

Both are scored the same way: the imitation-normalized score ``1 - sum |a - a*|^2 / sum |a*|^2`` of the agent's
(mean) action on ``eval_envs`` fresh episodes (1 = the expert, 0 = the zero action, clipped at -1)::

    python experiments/world_reward.py

Writes ``experiments/results/world_reward.json`` atomically.
"""
from __future__ import annotations

import argparse
import json
import os
import time

import jax
import numpy as np
import optax

from clloop_jax.envs import Environment
from clloop_jax.model import CrossModalModel
from clloop_jax.run.config import RunConfig
from clloop_jax.run.sequential import make_run
from clloop_jax.sources.gymnax import GymnaxSource
from clloop_jax.sources.world import EnvSource
from clloop_jax.workflow.compilation import enable_compilation_cache
from clloop_jax.workflow.files import write_atomic


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--episodes", type=int, default=400, help="reward learner's updates (rollouts)")
    p.add_argument("--num-envs", type=int, default=16)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--num-minibatches", type=int, default=4)
    p.add_argument("--discount", type=float, default=0.5)
    p.add_argument("--learning-rate", type=float, default=1e-3)
    p.add_argument("--init-log-std", type=float, default=0.0)
    p.add_argument("--imitation-episodes", type=int, default=400, help="imitation learner's updates (rollouts)")
    p.add_argument("--eval-envs", type=int, default=16)
    p.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "world_reward.json"))
    p.add_argument("--no-cache", action="store_true")
    args = p.parse_args(argv)
    enable_compilation_cache(enabled=not args.no_cache)
    world = Environment()
    tasks = world.tasks(1)
    keys = jax.random.split(jax.random.key(0), args.seeds)
    steps = world.episode_length

    reward_src = GymnaxSource("LatentWorld", environment=world, tasks=tasks, score_kind="imitation", hidden_dim=args.hidden,
                              num_envs=args.num_envs, num_steps=steps, eval_envs=args.eval_envs,
                              epochs=args.epochs, num_minibatches=args.num_minibatches, persistent_envs=True,
                              init_log_std=args.init_log_std)
    passes = reward_src.minibatch_passes
    run = make_run(RunConfig(strategy="none", episodes_per_task=args.episodes, monitors=(), max_grad_norm=0.5,
                             optimizer=lambda lr: optax.adam(optax.linear_schedule(lr, 0.0, args.episodes * passes))),
                   reward_src)
    hp = run.hparams(learning_rate=args.learning_rate, discount=args.discount, entropy_coef=0.0,
                     feedback_weight=0.1, reward_scale=1.0)
    t0 = time.perf_counter()
    _, res = jax.vmap(run, in_axes=(0, None))(keys, hp)
    reward_score = np.asarray(res.R, np.float64)[:, 0, 0]
    reward_untrained = np.asarray(res.baseline, np.float64)[:, 0]
    reward_seconds = time.perf_counter() - t0
    task = jax.tree.map(lambda x: x[0], tasks)
    random = np.asarray(jax.jit(jax.vmap(lambda k: reward_src.score(
        k, reward_src.init_params(k), task, hp.source, policy=reward_src.random_policy)))(keys), np.float64)
    print(f"from reward: imitation-normalized score per seed {np.round(reward_score, 3)}, untrained "
          f"{np.round(reward_untrained, 3)}, uniform random actions {np.round(random, 3)}; "
          f"{args.episodes * args.num_envs * steps} env steps per seed  [{reward_seconds:.0f} s]", flush=True)

    model = CrossModalModel(input_dim=world.observation_dim, hidden_dim=args.hidden, output_dim=world.action_dim,
                            num_modalities=world.num_modalities, num_heads=2)
    imit_src = EnvSource(model, world, num_tasks=1, num_envs=args.num_envs, eval_envs=args.eval_envs, tasks=tasks)
    irun = make_run(RunConfig(strategy="none", episodes_per_task=args.imitation_episodes, monitors=()), imit_src)
    t0 = time.perf_counter()
    _, ires = jax.vmap(irun, in_axes=(0, None))(keys, irun.hparams(learning_rate=args.learning_rate))
    imit_score = np.asarray(ires.R, np.float64)[:, 0, 0]
    imit_seconds = time.perf_counter() - t0
    print(f"imitation: score per seed {np.round(imit_score, 3)}, untrained "
          f"{np.round(np.asarray(ires.baseline)[:, 0], 3)}; {args.imitation_episodes * args.num_envs * steps} env "
          f"steps per seed  [{imit_seconds:.0f} s]")
    write_atomic(args.out, json.dumps({
        "settings": vars(args), "device": str(jax.devices()[0]),
        "reward": {"score": reward_score.tolist(), "untrained": reward_untrained.tolist(),
                   "random_actions": random.tolist(), "env_steps_per_seed": args.episodes * args.num_envs * steps,
                   "train_batch_return": np.asarray(res.traces["score"])[:, 0, ::10].tolist(),
                   "seconds": reward_seconds},
        "imitation": {"score": imit_score.tolist(), "untrained": np.asarray(ires.baseline)[:, 0].tolist(),
                      "env_steps_per_seed": args.imitation_episodes * args.num_envs * steps,
                      "seconds": imit_seconds}}, indent=1))


if __name__ == "__main__":
    main()
