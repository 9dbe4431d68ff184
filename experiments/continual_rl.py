"""Continual reinforcement learning on gymnax: fine-tuning vs EWC vs online EWC vs training from scratch.

One actor-critic agent (:class:`clloop_jax.sources.gymnax.GymnaxSource`: the ``CrossModalModel`` as policy and value)
learns the parameter variants of a gymnax environment one after another, in one compiled program per strategy that
``vmap``s over seeds. Returns are normalized per task: 0 = the uniform random policy's return, 1 = the same agent
trained from scratch on that task alone (same updates, same seeds); ACC, BWT, FWT and the other metrics are reported
with 95% Student t intervals over seeds::

    python experiments/continual_rl.py                                   # CartPole-v1, 3 variants, 5 seeds
    python experiments/continual_rl.py --envs pendulum                   # Pendulum-v1 (PPO epochs), 5 seeds
    python experiments/continual_rl.py --envs cartpole,pendulum          # both environments
    python experiments/continual_rl.py --seeds 2 --episodes 100          # a quick look

Writes ``experiments/results/continual_rl.json`` (atomically) and prints the markdown tables.
"""
from __future__ import annotations

import argparse
import json
import os
import time

import jax
import numpy as np
import optax

from clloop_jax import metrics
from clloop_jax.report import cell, paired_table, summary, summary_table
from clloop_jax.rl.tasks import TASK_FAMILIES
from clloop_jax.run.config import RunConfig
from clloop_jax.run.sequential import make_run
from clloop_jax.sources.gymnax import GymnaxSource
from clloop_jax.workflow.compilation import enable_compilation_cache
from clloop_jax.workflow.files import write_atomic

#: The task variants (:data:`clloop_jax.rl.tasks.TASK_FAMILIES`: physics that changes what the right action is); per
#: environment the source's settings beyond the command line's (``source``), the run's hyperparameters (``hparams``)
#: and the updates per task when ``--episodes`` is not given. CartPole: one optimizer step per rollout of 8 x 64 steps
#: from a reset. Pendulum (200-step episodes, continuous torque): PPO proper, environments that continue between
#: updates, 5 epochs of 16 minibatches per collected rollout of 16 x 256 steps, discount 0.9.
ENVS = {
    "cartpole": dict(env_id="CartPole-v1", hparams=dict(reward_scale=0.1, learning_rate=1e-3), episodes=1000,
                     source=dict(num_envs=8, num_steps=64), overrides=list(TASK_FAMILIES["CartPole-v1"])),
    "pendulum": dict(env_id="Pendulum-v1", hparams=dict(reward_scale=0.1, learning_rate=1e-3, discount=0.9,
                                                        gae_lambda=0.95, entropy_coef=0.0, feedback_weight=0.1),
                     episodes=40, anneal=True,
                     source=dict(num_envs=16, num_steps=256, epochs=5, num_minibatches=16, persistent_envs=True),
                     overrides=list(TASK_FAMILIES["Pendulum-v1"])),
}


def run_env(name: str, args) -> dict:
    spec = ENVS[name]
    overrides = spec["overrides"][:args.tasks]
    episodes = args.episodes or spec["episodes"]
    kw = dict(spec["source"], hidden_dim=args.hidden, eval_envs=args.eval_envs)
    kw.update({k: v for k, v in (("num_envs", args.num_envs), ("num_steps", args.num_steps)) if v is not None})
    source = GymnaxSource(spec["env_id"], overrides, **kw)
    keys = jax.random.split(jax.random.key(args.seed), args.seeds)
    common = dict(spec["hparams"])
    if args.entropy_coef is not None:
        common["entropy_coef"] = args.entropy_coef
    config = dict(episodes_per_task=episodes, monitors=(), fisher_variant="exact", max_grad_norm=0.5)
    if args.anneal or spec.get("anneal", False):
        # each task's learning rate decays linearly to 0 over its optimizer steps (the optimizer restarts per task)
        steps = episodes * source.minibatch_passes
        config["optimizer"] = lambda lr: optax.adam(optax.linear_schedule(lr, 0.0, steps))
    out = {"env_id": spec["env_id"], "overrides": overrides, "hparams": common, "source": kw, "episodes": episodes,
           "anneal": bool(args.anneal or spec.get("anneal", False)), "seconds": {}}

    # the uniform random policy's return on every task (the normalization's 0)
    eval_keys = jax.random.split(jax.random.key(10_000 + args.seed), args.seeds)
    rand = jax.jit(jax.vmap(lambda k: jax.vmap(lambda t: source.random_score(k, t))(source.tasks)))(eval_keys)
    rand = np.asarray(rand, np.float64)  # [S, T]
    out["random_return"] = rand.tolist()
    print(f"[{name}] random policy return per task: {np.round(rand.mean(0), 1)}", flush=True)

    # from scratch on each task alone (the normalization's 1): one-task sources share one compilation
    scratch = np.zeros((args.seeds, len(overrides)))
    for j, override in enumerate(overrides):
        single = GymnaxSource(spec["env_id"], [override], **kw)
        run = make_run(RunConfig(strategy="none", **config), single)
        t0 = time.perf_counter()
        _, res = jax.vmap(run, in_axes=(0, None))(keys, run.hparams(**common))
        scratch[:, j] = np.asarray(res.R, np.float64)[:, 0, 0]
        out["seconds"][f"scratch_{j}"] = time.perf_counter() - t0
        print(f"[{name}] from scratch on task {j}: return {cell(scratch[:, j], 1, signed=False)}  "
              f"[{out['seconds'][f'scratch_{j}']:.0f} s]", flush=True)
    out["scratch_return"] = scratch.tolist()

    lo, hi = rand.mean(0), scratch.mean(0)
    normalize = lambda x: (np.asarray(x, np.float64) - lo) / (hi - lo)  # noqa: E731

    strategies = [("none", 0.0, {}), ("ewc", args.lam, {}), ("online_ewc", args.lam, {"gamma": args.online_gamma})]
    out["strategies"] = {}
    for strategy, lam, extra in strategies:
        run = make_run(RunConfig(strategy=strategy, **config), source)
        hp = run.hparams(**common, **({"lam": lam} if lam else {}), **extra)
        t0 = time.perf_counter()
        _, res = jax.vmap(run, in_axes=(0, None))(keys, hp)
        R, b = np.asarray(res.R, np.float64), np.asarray(res.baseline, np.float64)
        seconds = time.perf_counter() - t0
        label = "fine-tuning" if strategy == "none" else strategy
        out["strategies"][label] = {"lambda": lam, **extra, "R_return": R.tolist(), "baseline_return": b.tolist(),
                                    "R": normalize(R).tolist(), "baseline": normalize(b).tolist(),
                                    "summary": summary(normalize(R), normalize(b)),
                                    "penalty_end": np.asarray(res.traces["penalty"][:, :, -1]).tolist()}
        out["seconds"][label] = seconds
        print(f"[{name}] {label:>11}: ACC {cell(metrics.average_performance(normalize(R)))}  "
              f"BWT {cell(metrics.backward_transfer(normalize(R)))}  [{seconds:.0f} s]", flush=True)
    return out


def report(results: dict, args) -> str:
    lines = []
    for name, out in results.items():
        S = out["strategies"]
        rand, scratch = np.asarray(out["random_return"]), np.asarray(out["scratch_return"])
        src = out["source"]
        ppo = (f", {src['epochs']} epochs x {src.get('num_minibatches', 1)} minibatches per rollout, environments "
               f"continuing between rollouts" if src.get("persistent_envs") else ", one optimizer step per rollout")
        lines += [f"### {out['env_id']}: {len(out['overrides'])} tasks, {out['episodes']} updates per task "
                  f"({src['num_envs']} environments x {src['num_steps']} steps each{ppo}), {args.seeds} seeds, "
                  f"lambda {args.lam:g}" + (", annealed rate" if out["anneal"] else ""), "",
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
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--episodes", type=int, default=None,
                   help="updates (rollouts) per task (default: CartPole 1000, Pendulum 40)")
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
        write_atomic(args.out, json.dumps({"settings": vars(args), "device": str(jax.devices()[0]),
                                          "envs": results}, indent=1))
    print(report(results, args))


if __name__ == "__main__":
    main()
