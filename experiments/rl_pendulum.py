"""Returns are real on a continuous action space: PPO on Pendulum-v1 (default parameters) from scratch.

The ``pendulum`` preset's learner (:class:`~clloop_jax.sources.gymnax.GymnaxSource`: Gaussian policy, learned log-std)
on one task, strategy ``none``, trained into a run folder (``runs/rl/pendulum``, read back when it is there) with every
seed in one compiled program. Each update collects ``num_envs x num_steps`` steps from environments that keep running
between updates (``persistent_envs``), then takes ``epochs`` passes of ``num_minibatches`` clipped-PPO steps over
them, the learning rate decaying linearly to 0 over all of them. Reports each seed's evaluation return (the mean over
``eval_envs`` episodes of 200 steps, stochastic policy) next to the untrained policy's and the uniform random
policy's (Pendulum counts as learned at about -200 to -400)::

    python experiments/rl_pendulum.py     # 3 seeds, 60 updates of 16 x 256 steps (246k steps each)

Writes ``experiments/results/rl_pendulum.json`` atomically.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os

import jax
from rl_cartpole import RUNS, from_scratch

from clloop_jax.workflow.compilation import enable_compilation_cache
from clloop_jax.workflow.experiment import PRESETS
from clloop_jax.workflow.files import write_atomic

#: The ``pendulum`` preset's settings from scratch: 10 epochs of 32 minibatches per rollout (its continual runs take
#: 5 of 16).
EPOCHS, MINIBATCHES = 10, 32


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--episodes", type=int, default=60, help="updates, one per collected rollout")
    p.add_argument("--epochs", type=int, default=EPOCHS)
    p.add_argument("--num-minibatches", type=int, default=MINIBATCHES)
    p.add_argument("--eval-envs", type=int, default=16)
    p.add_argument("--runs", default=RUNS, help="where the run folder lives")
    p.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "rl_pendulum.json"))
    p.add_argument("--no-cache", action="store_true")
    args = p.parse_args(argv)
    enable_compilation_cache(enabled=not args.no_cache)
    base = PRESETS["pendulum"]
    experiment = dataclasses.replace(
        base, seeds=args.seeds,
        gymnax=dataclasses.replace(base.gymnax, variants="[{}]", ppo_epochs=args.epochs,
                                   ppo_minibatches=args.num_minibatches, eval_envs=args.eval_envs),
        train=dataclasses.replace(base.train, strategy="none", episodes_per_task=args.episodes))
    path = os.path.join(args.runs, f"pendulum_{args.episodes}x{args.epochs}x{args.num_minibatches}")
    traces, summary = from_scratch(experiment, path, "Pendulum-v1")
    write_atomic(args.out, json.dumps({
        "settings": {**vars(args), "runs": os.path.relpath(args.runs)}, "device": str(jax.devices()[0]),
        "experiment": dataclasses.asdict(experiment), **summary,
        "train_batch_return": traces["score"][:, 0, ::5].tolist(),
        "clip_fraction": traces["clip_fraction"][:, 0, ::5].tolist()}, indent=1))


if __name__ == "__main__":
    main()
