"""Forgetting in the closed loop: fine-tuning vs EWC, online EWC and the other penalties, over many seeds.

The agent (the default ``CrossModalModel``) learns the default world's tasks one after another, imitating each
task's expert along its own trajectories. Every strategy is an :class:`~clloop_jax.workflow.experiment.ExperimentConfig`
(the ``default`` preset of ``clloop run``) trained over all seeds at once into a run folder
(``runs/forgetting/<tasks>x<episodes>/<strategy>``, ``--runs`` to move them): an interrupted study resumes, a finished
folder is read instead of trained again, and the tables are made from the folders. The multi-task joint run, the
upper bound, is the one number computed outside a run folder. Prints, and writes as markdown and JSON, the mean and
95% Student t interval over seeds of each metric, and the mean performance matrix of each strategy::

    python experiments/forgetting.py                       # 3 tasks, 5 seeds, 150 episodes per task
    python experiments/forgetting.py --seeds 2 --episodes 20 --strategies none,ewc   # a quick look

Scores are normalized per task: 1 = the task's expert, 0 = the zero action (the untrained agent is near 0).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time

import jax
import numpy as np

from clloop_jax import metrics
from clloop_jax.report import cell, paired_table, summary_table
from clloop_jax.strategies import get_strategy
from clloop_jax.workflow.compilation import enable_compilation_cache
from clloop_jax.workflow.execute import joint_bound, run_or_read, run_seconds
from clloop_jax.workflow.experiment import DEFAULT_LAMBDA, PRESETS, ExperimentConfig
from clloop_jax.workflow.files import jsonable, write_atomic


def parse_strategies(text: str) -> list[tuple[str, float]]:
    """``"none,ewc:10,si"`` -> ``[("none", 0.0), ("ewc", 10.0), ("si", 30.0)]`` (default lambdas where omitted)."""
    out = []
    for item in text.split(","):
        name, _, lam = item.strip().partition(":")
        if name not in DEFAULT_LAMBDA:
            raise ValueError(f"--strategies: unknown strategy {name!r}; choose from {sorted(DEFAULT_LAMBDA)}")
        out.append((name, float(lam) if lam else DEFAULT_LAMBDA[name]))
    return out


def experiment_for(args, name: str, lam: float) -> ExperimentConfig:
    """The study's configuration of strategy ``name``: the default world with ``--tasks`` tasks, the default agent
    with ``--hidden`` units, the three divergence monitors."""
    base = PRESETS["default"]
    fields = get_strategy(name).hparams._fields
    train = dataclasses.replace(base.train, strategy=name, episodes_per_task=args.episodes, num_envs=args.num_envs,
                                learning_rate=args.learning_rate, feedback_weight=args.feedback_weight,
                                lam=lam if "lam" in fields else None, gamma=args.gamma if "gamma" in fields else None,
                                monitors=("parameter", "fisher", "functional"))
    return dataclasses.replace(base, world=dataclasses.replace(base.world, num_tasks=args.tasks),
                               model=dataclasses.replace(base.model, hidden_dim=args.hidden), train=train,
                               seeds=args.seeds)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", type=int, default=3)
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--episodes", type=int, default=150, help="updates (closed-loop episodes) per task")
    p.add_argument("--num-envs", type=int, default=8, help="parallel environments per episode")
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--learning-rate", type=float, default=1e-3)
    p.add_argument("--feedback-weight", type=float, default=0.3)
    p.add_argument("--gamma", type=float, default=0.9, help="the online decay of online_ewc and ewc_budget")
    p.add_argument("--strategies", default="none,ewc,online_ewc,si,mas,l2",
                   help="comma-separated names, each optionally with :lambda")
    p.add_argument("--no-joint", action="store_true", help="skip the joint-training upper bound")
    p.add_argument("--runs", default="runs/forgetting", help="where the run folders are (default runs/forgetting)")
    p.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "forgetting"),
                   help="output path without extension (.md and .json are written)")
    p.add_argument("--no-cache", action="store_true", help="leave JAX's persistent compilation cache off")
    args = p.parse_args(argv)
    enable_compilation_cache(enabled=not args.no_cache)
    strategies = parse_strategies(args.strategies)

    runs = os.path.join(args.runs, f"{args.tasks}x{args.episodes}")
    results, timing, configs = {}, {}, {}
    for name, lam in strategies:
        configs[name] = experiment_for(args, name, lam)
        R, b = run_or_read(configs[name], os.path.join(runs, name), name)
        timing[name] = run_seconds(os.path.join(runs, name))   # training, compilation included (None: older folder)
        results[name] = {"lambda": lam, "R": R, "baseline": b}
        print(f"{name:>10} (lambda {lam:g}): ACC {cell(metrics.average_performance(R))}  [{timing[name] or 0:.0f} s]",
              flush=True)

    joint = None
    if not args.no_joint:
        t0 = time.perf_counter()
        joint = joint_bound(experiment_for(args, "none", 0.0))   # [S, T]
        timing["joint"] = time.perf_counter() - t0
        print(f"{'joint':>10}: mean score over tasks {cell(joint.mean(axis=1))}  [{timing['joint']:.0f} s]", flush=True)

    text = report(args, results, joint, runs)
    print(text)
    write_atomic(args.out + ".md", text + "\n")
    blob = {"settings": vars(args), "device": str(jax.devices()[0]), "seconds": timing, "folders": runs,
            "configs": configs, "joint": None if joint is None else joint.tolist(),
            "strategies": {k: {kk: (vv.tolist() if isinstance(vv, np.ndarray) else vv) for kk, vv in v.items()}
                           for k, v in results.items()}}
    write_atomic(args.out + ".json", json.dumps(jsonable(blob), indent=1))


def report(args, results: dict, joint, runs: str) -> str:
    table = summary_table({name: (r["R"], r["baseline"]) for name, r in results.items()},
                          extra={name: {"lambda": f"{r['lambda']:g}"} for name, r in results.items()})
    lines = [f"Default world, {args.tasks} tasks, {args.episodes} episodes per task ({args.num_envs} parallel "
             f"environments x 40 steps), seeds 0-{args.seeds - 1}; mean ± 95% t interval over seeds. Made from the "
             f"run folders in {runs}/.", "", table]
    if joint is not None:
        lines.append("| joint (upper bound) | - | " + cell(joint.mean(axis=1)) + " | - | - | - | - |")
    if "none" in results and len(results) > 1:
        lines += ["", paired_table({name: (r["R"], r["baseline"]) for name, r in results.items()}, "none")]
    for name, r in results.items():
        lines += ["", f"Mean performance matrix, {name}:", "", metrics.format_matrix(r["R"], b=r["baseline"])]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
