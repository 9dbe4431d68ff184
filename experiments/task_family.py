"""The default world's task family: is continual learning in it meaningful and measurable?

Four properties, measured over several seeds and printed as a markdown table (also written to
``experiments/results/task_family.{md,json}``):

1. the expert of each task scores 1 on it, the zero action scores 0 (the reference), and an untrained agent
   scores near 0 (scores are comparable across tasks);
2. the tasks interfere: task k's expert scores clearly below 0 on the other tasks (over several world draws);
3. training on task B after task A (plain fine-tuning) lowers A's score by a clear margin;
4. one agent trained on all tasks jointly reaches a high score on each (tasks can be told apart).

The fine-tuning run (3-4) is an :class:`~clloop_jax.workflow.experiment.ExperimentConfig` (the default world,
strategy ``none``) trained into a run folder (``runs/task_family/finetune_<tasks>x<episodes>``, ``--runs`` to move it;
what ``clloop run --config FOLDER/config.json`` trains), read back when it is already there; the joint run uses the
same seeds::

    python experiments/task_family.py              # 3 world draws, 3 training seeds, 150 episodes per task
"""
from __future__ import annotations

import argparse
import json
import os

import jax
import jax.numpy as jnp
import numpy as np

from clloop_jax import metrics
from clloop_jax.envs import PrivilegedPolicy, normalized_score, rollout
from clloop_jax.workflow.compilation import enable_compilation_cache
from clloop_jax.workflow.execute import joint_bound, run_or_read
from clloop_jax.workflow.experiment import ExperimentConfig
from clloop_jax.workflow.files import write_atomic
from clloop_jax.workflow.settings import TrainConfig, WorldConfig


def gain_policy(gain, max_action):
    """A privileged policy playing ``clip(gain @ z)``: task k's expert when ``gain`` is task k's."""

    def act(carry, obs, feedback, key, env_state, target):
        return carry, jnp.clip(gain @ env_state.latent, -max_action, max_action)

    return PrivilegedPolicy(act)


def expert_matrix(env, world_key, num_tasks, key, num_envs=16):
    """``S[k, j]``: score on task j of task k's expert; ``zero[j]``: score of the zero action on task j."""
    tasks = env.tasks(num_tasks, world_key=world_key)
    steps = int(env.episode_length)

    def score(policy, task, k):
        traj = rollout(k, env, task, policy, (), steps, num_envs=num_envs)
        return normalized_score(traj.action, traj.target)

    def row(gain):
        return jax.vmap(lambda task, j: score(gain_policy(gain, task.max_action), task, jax.random.fold_in(key, j)))(
            tasks, jnp.arange(num_tasks))

    zero = PrivilegedPolicy(lambda c, o, f, k, s, t: (c, jnp.zeros_like(t)))
    zeros = jax.vmap(lambda task, j: score(zero, task, jax.random.fold_in(key, j)))(tasks, jnp.arange(num_tasks))
    return jax.vmap(row)(tasks.gain), zeros


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", type=int, default=3)
    p.add_argument("--worlds", type=int, default=3, help="world draws for the expert measurements")
    p.add_argument("--seeds", type=int, default=3, help="training seeds")
    p.add_argument("--episodes", type=int, default=150)
    p.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "task_family"))
    p.add_argument("--runs", default="runs/task_family", help="where the run folder is (default runs/task_family)")
    p.add_argument("--no-cache", action="store_true", help="leave JAX's persistent compilation cache off")
    args = p.parse_args(argv)
    enable_compilation_cache(enabled=not args.no_cache)

    experiment = ExperimentConfig(world=WorldConfig(num_tasks=args.tasks), seeds=args.seeds,
                                  train=TrainConfig(strategy="none", episodes_per_task=args.episodes, monitors=()))
    env = experiment.world.make()
    # 1-2: experts, the zero action and cross-task experts, over several world draws.
    world_keys = jax.random.split(jax.random.key(1), args.worlds)
    S, zero = jax.jit(jax.vmap(lambda wk: expert_matrix(env, wk, args.tasks, jax.random.key(2))))(world_keys)
    S, zero = np.asarray(S, np.float64), np.asarray(zero, np.float64)
    diag = np.diagonal(S, axis1=1, axis2=2)                         # [W, T]
    off = S[:, ~np.eye(args.tasks, dtype=bool)]                     # [W, T*(T-1)]

    # 3-4: fine-tuning A then B (from its run folder), and the joint run on the same seeds.
    folder = os.path.join(args.runs, f"finetune_{args.tasks}x{args.episodes}")
    R, base = run_or_read(experiment, folder, "none")
    R, base = np.asarray(R, np.float64), np.asarray(base, np.float64)
    joint = joint_bound(experiment)   # on the folder's seeds

    def cell(x):
        m, h = metrics.mean_ci(np.ravel(x))
        return f"{m:+.3f} ± {h:.3f} (min {np.min(x):+.3f}, max {np.max(x):+.3f})"

    drop = R[:, 0, 0] - R[:, 1, 0]
    rows = [
        ("expert of task k on task k", f"{args.worlds} worlds x {args.tasks} tasks", cell(diag)),
        ("zero action (the reference)", f"{args.worlds} worlds x {args.tasks} tasks", cell(zero)),
        ("expert of task k on task j != k", f"{args.worlds} worlds x {args.tasks * (args.tasks - 1)} pairs",
         cell(off)),
        ("untrained agent", f"{args.seeds} seeds x {args.tasks} tasks", cell(base)),
        ("task A after training on A", f"{args.seeds} seeds", cell(R[:, 0, 0])),
        ("task A after training on A, then on B (fine-tuning)", f"{args.seeds} seeds", cell(R[:, 1, 0])),
        ("drop of task A's score", f"{args.seeds} seeds", cell(drop)),
        ("joint training, every task", f"{args.seeds} seeds x {args.tasks} tasks", cell(joint)),
    ]
    text = "\n".join([
        f"Default world (`Environment(observation_dim=64, action_dim=32, num_modalities=2)`), {args.tasks} tasks, "
        f"{args.episodes} episodes per task; mean ± 95% t interval (min, max).", "",
        "| measurement | over | normalized score |", "|---|---|---|"] + [f"| {a} | {b} | {c} |" for a, b, c in rows])
    print(text)
    write_atomic(args.out + ".md", text + "\n")
    write_atomic(args.out + ".json", json.dumps({"settings": vars(args), "folder": folder, "expert_matrix": S.tolist(),
                                                 "zero_action": zero.tolist(), "untrained": base.tolist(),
                                                 "R_finetune": R.tolist(), "joint": joint.tolist()}, indent=1))


if __name__ == "__main__":
    main()
