"""Continual reinforcement learning on gymnax: fine-tuning vs EWC vs online EWC vs training from scratch.

One actor-critic agent (:class:`clloop_jax.sources.gymnax.GymnaxSource`: the ``CrossModalModel`` as policy and value)
learns the parameter variants of a gymnax environment one after another. Every run is an
:class:`~clloop_jax.workflow.experiment.ExperimentConfig` (the ``cartpole`` or ``pendulum`` preset with this
script's settings) trained into its own run folder under ``--runs`` (named after the strategy and the configuration's
hash, so a run already there is read back, and another setting trains a new folder), every seed in one compiled
program. Returns are normalized per task: 0 = the uniform random policy's return, 1 = the same agent trained from
scratch on that task alone (same updates, same seeds); ACC, BWT, FWT and the other metrics are reported with 95%
Student t intervals over seeds::

    python experiments/continual_rl.py                                   # CartPole-v1, 3 variants, 5 seeds
    python experiments/continual_rl.py --envs pendulum                   # Pendulum-v1 (PPO epochs), 5 seeds
    python experiments/continual_rl.py --envs cartpole,pendulum          # both environments
    python experiments/continual_rl.py --seeds 2 --episodes 100          # a quick look

Writes ``experiments/results/continual_rl.json`` and the tables next to it (``.md``), atomically.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os

import jax
import numpy as np

from clloop_jax import metrics
from clloop_jax.report import cell, paired_table, summary, summary_table
from clloop_jax.rl.tasks import TASK_FAMILIES
from clloop_jax.workflow.compilation import enable_compilation_cache
from clloop_jax.workflow.execute import run_or_read, run_seconds
from clloop_jax.workflow.experiment import PRESETS, ExperimentConfig
from clloop_jax.workflow.files import config_hash, jsonable, write_atomic
from clloop_jax.workflow.runs import RunFolder

RUNS = os.path.normpath(os.path.join(os.path.dirname(__file__), "..", "runs", "continual_rl"))

#: Per environment: the preset, the settings this study changes in it, and its task variants
#: (:data:`clloop_jax.rl.tasks.TASK_FAMILIES`: physics that changes what the right action is). CartPole: one
#: optimizer step per rollout of 8 x 64 steps from a reset, the agent seeing its feedback at full weight. Pendulum
#: (200-step episodes, continuous torque): the preset, PPO proper (environments that continue between updates, 5
#: epochs of 16 minibatches per collected rollout of 16 x 256 steps, discount 0.9, each task's rate annealed).
ENVS = {
    "cartpole": dict(preset="cartpole", train=dict(feedback_weight=1.0)),
    "pendulum": dict(preset="pendulum", train={}),
}


def experiment_for(name: str, args, strategy: str, variants: list, lam=None, gamma=None) -> ExperimentConfig:
    """The study's experiment of environment ``name`` with ``strategy`` on the tasks ``variants`` (EnvParams
    overrides)."""
    base = PRESETS[ENVS[name]["preset"]]
    gymnax = dict(variants=json.dumps(variants), eval_envs=args.eval_envs, policy_hidden=args.hidden)
    gymnax.update({k: v for k, v in (("rollout_steps", args.num_steps), ("entropy_coef", args.entropy_coef))
                   if v is not None})
    train = dict(ENVS[name]["train"], strategy=strategy, lam=lam, gamma=gamma)
    train.update({k: v for k, v in (("episodes_per_task", args.episodes), ("num_envs", args.num_envs)) if v is not None})
    if args.anneal:
        train["lr_schedule"] = "linear"
    return dataclasses.replace(base, seeds=args.seeds, gymnax=dataclasses.replace(base.gymnax, **gymnax),
                               train=dataclasses.replace(base.train, **train))


def trained(experiment: ExperimentConfig, args, name: str, label: str):
    """``(R, baseline, traces, seconds, folder)`` of ``experiment``, trained into (or read from) its folder."""
    path = os.path.join(args.runs, name, f"{label}_{config_hash(experiment)[:8]}")
    R, baseline = run_or_read(experiment, path, label=label)
    seconds = run_seconds(path)   # training, compilation included (None: a folder older than its timing)
    return R, baseline, RunFolder(path, resume=True).read_traces(), seconds, os.path.relpath(path)


def run_env(name: str, args) -> dict:
    env_id = PRESETS[ENVS[name]["preset"]].gymnax.env_id
    overrides = [dict(o) for o in TASK_FAMILIES[env_id]][:args.tasks]
    sequence = experiment_for(name, args, "none", overrides)
    out = {"env_id": env_id, "overrides": overrides, "experiment": jsonable(sequence.resolved()), "seconds": {},
           "folders": {}}

    # the uniform random policy's return on every task (the normalization's 0)
    source = sequence.make_source()
    eval_keys = jax.random.split(jax.random.key(10_000), args.seeds)
    rand = jax.jit(jax.vmap(lambda k: jax.vmap(lambda t: source.random_score(k, t))(source.tasks)))(eval_keys)
    rand = np.asarray(rand, np.float64)  # [S, T]
    out["random_return"] = rand.tolist()
    print(f"[{name}] random policy return per task: {np.round(rand.mean(0), 1)}", flush=True)

    # from scratch on each task alone (the normalization's 1)
    scratch = np.zeros((args.seeds, len(overrides)))
    for j, override in enumerate(overrides):
        R, _, _, seconds, folder = trained(experiment_for(name, args, "none", [override]), args, name, f"scratch{j}")
        scratch[:, j] = R[:, 0, 0]
        out["seconds"][f"scratch_{j}"], out["folders"][f"scratch_{j}"] = seconds, folder
        print(f"[{name}] from scratch on task {j}: return {cell(scratch[:, j], 1, signed=False)}  [{seconds or 0:.0f} s, "
              f"{folder}]", flush=True)
    out["scratch_return"] = scratch.tolist()

    lo, hi = rand.mean(0), scratch.mean(0)
    normalize = lambda x: (np.asarray(x, np.float64) - lo) / (hi - lo)  # noqa: E731

    out["strategies"] = {}
    for label, strategy, lam, gamma in [("fine-tuning", "none", None, None), ("ewc", "ewc", args.lam, None),
                                        ("online_ewc", "online_ewc", args.lam, args.online_gamma)]:
        experiment = experiment_for(name, args, strategy, overrides, lam=lam, gamma=gamma)
        R, b, traces, seconds, folder = trained(experiment, args, name, strategy)
        out["strategies"][label] = {"lambda": lam or 0.0, "gamma": gamma, "R_return": R.tolist(),
                                    "baseline_return": b.tolist(), "R": normalize(R).tolist(),
                                    "baseline": normalize(b).tolist(), "summary": summary(normalize(R), normalize(b)),
                                    "penalty_end": traces["penalty"][:, :, -1].tolist()}
        out["seconds"][label], out["folders"][label] = seconds, folder
        print(f"[{name}] {label:>11}: ACC {cell(metrics.average_performance(normalize(R)))}  "
              f"BWT {cell(metrics.backward_transfer(normalize(R)))}  [{seconds or 0:.0f} s, {folder}]", flush=True)
    return out


def report(results: dict, args) -> str:
    lines = []
    for name, out in results.items():
        S = out["strategies"]
        rand, scratch = np.asarray(out["random_return"]), np.asarray(out["scratch_return"])
        g, t = out["experiment"]["gymnax"], out["experiment"]["train"]
        ppo = (f", {g['ppo_epochs']} epochs x {g['ppo_minibatches']} minibatches per rollout, environments "
               f"continuing between rollouts" if g["persistent_envs"] else ", one optimizer step per rollout")
        lines += [f"### {out['env_id']}: {len(out['overrides'])} tasks, {t['episodes_per_task']} updates per task "
                  f"({t['num_envs']} environments x {g['rollout_steps']} steps each{ppo}), {args.seeds} seeds, "
                  f"lambda {args.lam:g}" + (", annealed rate" if t["lr_schedule"] == "linear" else ""), "",
                  "Tasks: " + "; ".join(f"{j}: {o or 'default'}" for j, o in enumerate(out["overrides"])), "",
                  "| task | random policy return | from-scratch return |", "|---|---:|---:|"]
        for j in range(rand.shape[1]):
            lines.append(f"| {j} | {cell(rand[:, j], 1, False)} | {cell(scratch[:, j], 1, False)} |")
        table = {k: (np.asarray(v["R"]), np.asarray(v["baseline"])) for k, v in S.items()}
        lines += ["", "Normalized returns (0 = random policy, 1 = from scratch on the task alone); mean ± 95% t "
                  "interval over seeds:", "",
                  summary_table(table, extra={k: {"lambda": f"{v['lambda']:g}"} for k, v in S.items()}), "",
                  paired_table(table, "fine-tuning"), ""]
        for k, v in S.items():
            lines += [f"Mean performance matrix (normalized), {k}:", "",
                      metrics.format_matrix(np.asarray(v["R"]), b=np.asarray(v["baseline"])), ""]
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--envs", default="cartpole", help=f"comma-separated, from {sorted(ENVS)}")
    p.add_argument("--tasks", type=int, default=3)
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--episodes", type=int, default=None,
                   help="updates (rollouts) per task (default: the preset's, CartPole 1000, Pendulum 40)")
    p.add_argument("--num-envs", type=int, default=None, help="default: CartPole 8, Pendulum 16")
    p.add_argument("--num-steps", type=int, default=None, help="default: CartPole 64, Pendulum 256")
    p.add_argument("--eval-envs", type=int, default=8)
    p.add_argument("--hidden", type=int, default=32)
    p.add_argument("--entropy-coef", type=float, default=None, help="default: CartPole 0.01, Pendulum 0")
    p.add_argument("--lam", type=float, default=1000.0, help="EWC / online EWC penalty strength")
    p.add_argument("--online-gamma", type=float, default=0.9, help="online EWC's decay of the old importance")
    p.add_argument("--anneal", action="store_true",
                   help="decay each task's learning rate linearly to 0 (default: CartPole constant, Pendulum "
                        "always annealed)")
    p.add_argument("--runs", default=RUNS, help="where the run folders live")
    p.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "continual_rl.json"))
    p.add_argument("--no-cache", action="store_true", help="leave JAX's persistent compilation cache off")
    args = p.parse_args(argv)
    names = [n.strip() for n in args.envs.split(",")]
    unknown = [n for n in names if n not in ENVS]
    if unknown:
        raise SystemExit(f"--envs: unknown {unknown}; choose from {sorted(ENVS)}")
    if not 1 <= args.tasks <= 3:
        raise SystemExit("--tasks must be 1, 2 or 3")
    enable_compilation_cache(enabled=not args.no_cache)
    results = {}
    for name in names:
        results[name] = run_env(name, args)
        write_atomic(args.out, json.dumps({"settings": {**vars(args), "runs": os.path.relpath(args.runs)},
                                           "device": str(jax.devices()[0]), "envs": results}, indent=1))
    text = report(results, args)
    write_atomic(os.path.splitext(args.out)[0] + ".md", text + "\n")
    print(text)


if __name__ == "__main__":
    main()
