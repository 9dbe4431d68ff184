"""Returns are real: the actor-critic source learns CartPole-v1 (default parameters) from scratch.

One experiment (:class:`~clloop_jax.workflow.experiment.ExperimentConfig`: ``--source gymnax``, one task, strategy
``none``) trained into a run folder (``runs/rl/cartpole``, read back when it is there) with every seed in one compiled
program; reports each seed's evaluation return (the mean over ``eval_envs`` episodes of up to 500 steps, stochastic
policy) next to the untrained policy's and the uniform random policy's::

    python experiments/rl_cartpole.py     # 3 seeds, 2000 updates of 8 x 256 steps (4M steps each), lr 1e-3 -> 0

The same run from the command line: ``clloop run --config runs/rl/cartpole/config.json``. Writes
``experiments/results/rl_cartpole.json`` atomically.
"""
from __future__ import annotations

import argparse
import json
import os

import jax
import numpy as np

from clloop_jax.workflow.compilation import enable_compilation_cache
from clloop_jax.workflow.execute import run_or_read, run_seconds
from clloop_jax.workflow.experiment import ExperimentConfig, GymnaxConfig, TrainConfig
from clloop_jax.workflow.files import write_atomic
from clloop_jax.workflow.runs import RunFolder

RUNS = os.path.normpath(os.path.join(os.path.dirname(__file__), "..", "runs", "rl"))


def from_scratch(experiment: ExperimentConfig, path: str, name: str):
    """``experiment`` (one task) trained into the folder ``path`` (or read from it): prints and returns each seed's
    evaluation return next to the untrained policy's and the uniform random policy's. Returns ``(traces, summary)``,
    the folder's traces by name ``[S, 1, E]``."""
    R, baseline = run_or_read(experiment, path, label=name)
    seconds = run_seconds(path)   # training, compilation included (None: a folder older than its timing)
    returns, untrained = R[:, 0, 0], baseline[:, 0]
    source = experiment.make_source()
    task = jax.tree.map(lambda x: x[0], source.tasks)
    random = np.asarray(jax.jit(jax.vmap(lambda k: source.random_score(k, task)))(
        jax.random.split(jax.random.key(1), experiment.seeds)), np.float64)
    steps = experiment.train.episodes_per_task * source.num_envs * source.num_steps
    print(f"{name}, {steps} environment steps per seed: trained return per seed {np.round(returns, 1)}, "
          f"untrained {np.round(untrained, 1)}, uniform random policy {np.round(random, 1)}  "
          f"[{seconds or 0:.0f} s, {path}]")
    return RunFolder(path, resume=True).read_traces(), {
        "folder": os.path.relpath(path), "env_steps_per_seed": steps, "trained_return": returns.tolist(),
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
    p.add_argument("--runs", default=RUNS, help="where the run folder lives")
    p.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "rl_cartpole.json"))
    p.add_argument("--no-cache", action="store_true")
    args = p.parse_args(argv)
    enable_compilation_cache(enabled=not args.no_cache)
    experiment = ExperimentConfig(
        source="gymnax", seeds=args.seeds,
        gymnax=GymnaxConfig(env_id="CartPole-v1", variants="[{}]", rollout_steps=args.num_steps,
                            eval_envs=args.eval_envs, reward_scale=args.reward_scale),
        train=TrainConfig(strategy="none", episodes_per_task=args.episodes, num_envs=args.num_envs,
                          learning_rate=args.learning_rate, lr_schedule="constant" if args.no_anneal else "linear",
                          feedback_weight=1.0, monitors=(), max_grad_norm=0.5))
    path = os.path.join(args.runs, f"cartpole_{args.episodes}x{args.num_envs}x{args.num_steps}"
                        + ("_constant" if args.no_anneal else ""))
    traces, summary = from_scratch(experiment, path, "CartPole-v1")
    write_atomic(args.out, json.dumps({"settings": {**vars(args), "runs": os.path.relpath(args.runs)},
                                       "device": str(jax.devices()[0]), **summary,
                                       "train_batch_return": traces["score"][:, 0, ::100].tolist()}, indent=1))


if __name__ == "__main__":
    main()
