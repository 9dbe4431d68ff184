"""The default world learned from its reward alone, next to imitation learning of its expert.

The default :class:`~clloop_jax.envs.LatentWorld` (64 features x 2 modalities, 32 action entries, 40-step episodes)
rewards each step with ``-|a - a*|^2 / A``, ``a*`` the expert action it never shows to the reward learner. Two agents
of the same width learn its first task from scratch (strategy ``none``), each an
:class:`~clloop_jax.workflow.experiment.ExperimentConfig` trained into a run folder under ``--runs`` (read back when it
is there) with every seed in one compiled program:

* **from reward**: ``--source gymnax --env-id LatentWorld`` (a :class:`clloop_jax.sources.gymnax.GymnaxSource` over the
  world, its two modalities the model's two), a Gaussian policy, PPO epochs of minibatches with a short discount (the
  reward depends only on the current action);
* **imitation**: ``--source world`` (:class:`clloop_jax.sources.world.EnvSource`), regressing the expert action the
  world reveals.

Both are scored the same way: the imitation-normalized score ``1 - sum |a - a*|^2 / sum |a*|^2`` of the agent's
(mean) action on ``eval_envs`` fresh episodes (1 = the expert, 0 = the zero action, clipped at -1)::

    python experiments/world_reward.py

Writes ``experiments/results/world_reward.json`` atomically.
"""
from __future__ import annotations

import argparse
import json
import os

import jax
import numpy as np

from clloop_jax.workflow.compilation import enable_compilation_cache
from clloop_jax.workflow.execute import run_or_read, run_seconds
from clloop_jax.workflow.experiment import ExperimentConfig, GymnaxConfig, ModelConfig, TrainConfig, WorldConfig
from clloop_jax.workflow.files import write_atomic
from clloop_jax.workflow.runs import RunFolder

RUNS = os.path.normpath(os.path.join(os.path.dirname(__file__), "..", "runs", "world_reward"))


def experiments(args) -> dict:
    """The two learners of the world's first task: from its reward, and imitating its expert."""
    world = WorldConfig(num_tasks=1)
    reward = ExperimentConfig(
        source="gymnax", world=world, seeds=args.seeds,
        gymnax=GymnaxConfig(env_id="LatentWorld", rollout_steps=world.episode_length, ppo_epochs=args.epochs,
                            ppo_minibatches=args.num_minibatches, persistent_envs=True, policy_hidden=args.hidden,
                            discount=args.discount, entropy_coef=0.0, eval_envs=args.eval_envs),
        train=TrainConfig(strategy="none", episodes_per_task=args.episodes, num_envs=args.num_envs,
                          learning_rate=args.learning_rate, lr_schedule="linear", feedback_weight=0.1,
                          max_grad_norm=0.5, monitors=()))
    imitation = ExperimentConfig(
        source="world", world=world, model=ModelConfig(hidden_dim=args.hidden, num_heads=2), seeds=args.seeds,
        train=TrainConfig(strategy="none", episodes_per_task=args.imitation_episodes, num_envs=args.num_envs,
                          learning_rate=args.learning_rate, feedback_weight=1.0, monitors=()))
    return {"reward": reward, "imitation": imitation}


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
    p.add_argument("--imitation-episodes", type=int, default=400, help="imitation learner's updates (rollouts)")
    p.add_argument("--eval-envs", type=int, default=16)
    p.add_argument("--runs", default=RUNS, help="where the run folders live")
    p.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "world_reward.json"))
    p.add_argument("--no-cache", action="store_true")
    args = p.parse_args(argv)
    enable_compilation_cache(enabled=not args.no_cache)
    out = {"settings": {**vars(args), "runs": os.path.relpath(args.runs)}, "device": str(jax.devices()[0])}
    for name, experiment in experiments(args).items():
        path = os.path.join(args.runs, f"{name}_{experiment.train.episodes_per_task}x{args.num_envs}")
        R, baseline = run_or_read(experiment, path, label=name)
        seconds = run_seconds(path)   # training, compilation included (None: a folder older than its timing)
        steps = experiment.train.episodes_per_task * args.num_envs * experiment.world.episode_length
        out[name] = {"folder": os.path.relpath(path), "score": R[:, 0, 0].tolist(),
                     "untrained": baseline[:, 0].tolist(), "env_steps_per_seed": steps, "seconds": seconds}
        extra = ""
        if name == "reward":
            run, hp = experiment.build()
            source, keys = run.source, jax.random.split(jax.random.key(0), args.seeds)
            task = jax.tree.map(lambda x: x[0], source.tasks)
            random = np.asarray(jax.jit(jax.vmap(lambda k: source.score(
                k, source.init_params(k), task, hp.source, policy=source.random_policy)))(keys), np.float64)
            out[name]["random_actions"] = random.tolist()
            out[name]["train_batch_return"] = RunFolder(path, resume=True).read_traces()["score"][:, 0, ::10].tolist()
            extra = f", uniform random actions {np.round(random, 3)}"
        print(f"{name}: imitation-normalized score per seed {np.round(R[:, 0, 0], 3)}, untrained "
              f"{np.round(baseline[:, 0], 3)}{extra}; {steps} env steps per seed  [{seconds or 0:.0f} s, {path}]",
              flush=True)
    write_atomic(args.out, json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
