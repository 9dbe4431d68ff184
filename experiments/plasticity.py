"""The loss of plasticity on a long stream: online permuted MNIST, plain backprop against the strategies that keep a
network able to learn, and EWC.

Dohare et al. ("Loss of plasticity in deep continual learning", Nature 632, 2024) train a network on hundreds of
permuted-MNIST tasks, each seen once (online), and find that plain backprop's accuracy on each *new* task declines
over the sequence while continual backprop, L2 towards the initialisation and shrink and perturb hold it. Here every
strategy is the ``permuted-mnist`` preset of ``clloop run`` (the 5,000 real MNIST images: 4,000 training images per
task seen once in batches of 100, so 40 updates per task; an MLP 784-100-100-10; Adam) over ``--tasks`` tasks and
``--seeds`` seeds vmapped in one program, each in a run folder (``runs/plasticity/<tasks>x<hidden>/<strategy>``): an
interrupted study resumes, a finished folder is read back. The full performance matrix row is computed every
``--evaluate-every`` tasks; the diagonal (the accuracy on each task right after learning it: the plasticity curve)
after every task. The monitors record the dormant fraction (Sokar et al., 2023), the effective rank of the last hidden
layer (Roy & Vetterli, 2007) and the parameter norm at the end of every task::

    python experiments/plasticity.py                          # 200 tasks, 5 seeds, six strategies
    python experiments/plasticity.py --tasks 30 --seeds 2 --strategies none,redo   # a quick look

Writes ``experiments/results/plasticity.md`` / ``.json`` (``--out``) and the figures
``docs/figures/plasticity_accuracy.png`` and ``docs/figures/plasticity_monitors.png`` (``--figures``).

The closed-loop version, ``--source gymnax``, is continual reinforcement learning on a long sequence of CartPole-v1
variants (``--variants random:N``: pole length and mass, gravity and push drawn anew for every task), the ``cartpole``
preset's actor-critic (the recurrent cross-modal agent) learning each from reward for ``--updates`` updates; the same
monitors read the agent's hidden layers (its fusion layer and recurrent state) on states it visited, and the curve is
the return on each task right after learning it. Continual backprop and ReDo renew an MLP's units and are not
defined for the recurrent agent, so the default strategies there are the other four::

    python experiments/plasticity.py --source gymnax            # 20 variants x 50 updates, 3 seeds: rl_plasticity.*
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time
import warnings

import numpy as np

from clloop_jax import metrics
from clloop_jax.workflow.compilation import enable_compilation_cache
from clloop_jax.workflow.execute import run_or_read, run_seconds
from clloop_jax.workflow.experiment import PRESETS, ExperimentConfig
from clloop_jax.workflow.files import jsonable, write_atomic
from clloop_jax.workflow.runs import RunFolder

HERE = os.path.dirname(os.path.abspath(__file__))
STRATEGIES = ("none", "l2_init", "shrink_perturb", "continual_backprop", "redo", "ewc")
RL_STRATEGIES = ("none", "l2_init", "shrink_perturb", "ewc")
MONITORS = ("dormant", "effective_rank", "param_norm")


def experiment_for(args, name: str) -> ExperimentConfig:
    """The study's configuration of strategy ``name``: the ``permuted-mnist`` preset at ``--tasks`` tasks, or with
    ``--source gymnax`` the ``cartpole`` preset over ``--tasks`` random variants."""
    if args.source == "gymnax":
        base = PRESETS["cartpole"]
        gym = dataclasses.replace(base.gymnax, variants=f"random:{args.tasks}")
        train = dataclasses.replace(base.train, strategy=name, learning_rate=args.learning_rate, monitors=MONITORS,
                                    episodes_per_task=args.updates, evaluate_every=args.evaluate_every,
                                    traces="tasks", lam=args.ewc_lambda if name == "ewc" else None)
        return dataclasses.replace(base, gymnax=gym, train=train, seeds=args.seeds)
    base = PRESETS["permuted-mnist"]
    data = dataclasses.replace(base.data, permuted_tasks=args.tasks, mlp_hidden=args.hidden)
    train = dataclasses.replace(base.train, strategy=name, learning_rate=args.learning_rate, monitors=MONITORS,
                                evaluate_every=args.evaluate_every, lam=args.ewc_lambda if name == "ewc" else None)
    return dataclasses.replace(base, data=data, train=train, seeds=args.seeds)


def windows(x: np.ndarray, width: int) -> np.ndarray:
    """``x [S, T]`` averaged over consecutive windows of ``width`` tasks, NaNs left out: ``[S, ceil(T / width)]`` (the
    last window may be shorter; a window with no value is NaN)."""
    T = x.shape[1]
    with warnings.catch_warnings():   # an all-NaN window is NaN by design, not worth NumPy's warning
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.stack([np.nanmean(x[:, i:i + width], axis=1) for i in range(0, T, width)], axis=1)


def folders_of(args) -> str:
    if args.source == "gymnax":
        return os.path.join(args.runs, f"cartpole_{args.tasks}x{args.updates}")
    return os.path.join(args.runs, f"{args.tasks}x{'-'.join(map(str, args.hidden))}")


def study(args) -> dict:
    folders = folders_of(args)
    out = {}
    for name in args.strategies:
        experiment = experiment_for(args, name)
        path = os.path.join(folders, name)
        done = os.path.isfile(os.path.join(path, "summary.json")) and RunFolder(path, resume=True).holds(experiment)
        if not done:
            # Each strategy trains in a process of its own: a compiled run keeps its source alive, and with it the
            # stream's copy of the images for every task (3 GB at 200 tasks), so one process would hold them all.
            subprocess.run([sys.executable, os.path.abspath(__file__), "--train-only", "--strategies", name]
                           + args.forward, check=True)
        R, baseline = run_or_read(experiment, path, name)
        seconds = run_seconds(path)   # training, compilation included (None: a folder older than its timing)
        traces = RunFolder(path, resume=True).read_traces()
        learning = np.diagonal(R, axis1=1, axis2=2)                                 # [S, T]
        out[name] = {"R_last": R[:, -1], "learning": learning, "seconds": seconds, "baseline": baseline,
                     **{k: traces[k] for k in ("dormant_0", "dormant_0.1", "effective_rank", "param_norm")
                        if k in traces}}
        first, last = learning[:, :args.window].mean(1), learning[:, -args.window:].mean(1)
        print(f"{name:>18}: learning {args.measure}, first {args.window} tasks {_cell(first)}, last {args.window} "
              f"{_cell(last)}; average {args.measure} at the end {_cell(R[:, -1].mean(1))}  [{seconds or 0:.0f} s]",
              flush=True)
    return out


def _cell(x) -> str:
    m, h = metrics.mean_ci(np.asarray(x, np.float64))
    return f"{m:.3f} ± {h:.3f}"


def table(args, res: dict) -> str:
    w = args.window
    m = "acc." if args.source == "mnist" else "return"
    head = (f"| strategy | learning {m}, tasks 1-{w} | learning {m}, last {w} | change (paired) | "
            f"avg. {m} at the end | dormant (tau 0.1) at the end | eff. rank at the end | parameter norm at the end |")
    rows = [head, "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, r in res.items():
        L = r["learning"]
        first, last = L[:, :w].mean(1), L[:, -w:].mean(1)
        end = lambda k: _cell(r[k][:, -1]) if k in r else "-"  # noqa: E731
        rows.append(f"| {name} | {_cell(first)} | {_cell(last)} | {_cell(last - first)} | "
                    f"{_cell(r['R_last'].mean(1))} | {end('dormant_0.1')} | {end('effective_rank')} | "
                    f"{end('param_norm')} |")
    return "\n".join(rows)


def figures(args, res: dict) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    w = args.window
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, r in res.items():
        curve = windows(r["learning"], w)
        m, h = metrics.mean_ci(curve)
        x = np.arange(curve.shape[1]) * w + min(w, args.tasks) / 2
        ax.plot(x, m, label=name)
        ax.fill_between(x, m - h, m + h, alpha=0.2)
    ax.set_xlabel("task")
    ax.set_ylabel(f"{args.measure} on the task just learned\n(mean of {w} tasks, 95% interval over seeds)")
    ax.set_title(args.title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(args.figures, f"{args.prefix}_accuracy.png"), dpi=120)
    plt.close(fig)

    layer = "last hidden layer" if args.source == "mnist" else "recurrent state"
    keys = [("dormant_0.1", "dormant fraction (tau 0.1)"), ("effective_rank", f"effective rank, {layer}"),
            ("param_norm", "parameter norm")]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for ax, (key, label) in zip(axes, keys):
        for name, r in res.items():
            if key not in r:
                continue
            m, h = metrics.mean_ci(r[key])
            x = np.arange(1, m.shape[0] + 1)
            ax.plot(x, m, label=name)
            ax.fill_between(x, m - h, m + h, alpha=0.2)
        ax.set_xlabel("task")
        ax.set_title(label, fontsize=10)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(args.figures, f"{args.prefix}_monitors.png"), dpi=120)
    plt.close(fig)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--source", choices=("mnist", "gymnax"), default="mnist",
                   help="online permuted MNIST (default) or CartPole-v1 variants learned from reward")
    p.add_argument("--tasks", type=int, default=None, help="tasks (default 200; 20 with --source gymnax)")
    p.add_argument("--seeds", type=int, default=None, help="seeds (default 5; 3 with --source gymnax)")
    p.add_argument("--updates", type=int, default=50, help="updates per task with --source gymnax (default 50)")
    p.add_argument("--hidden", default="100,100", help="hidden widths of the MLP (default 100,100)")
    p.add_argument("--learning-rate", type=float, default=None,
                   help="Adam's rate (default 1e-2: at 1e-3 the decline is much slower; 3e-3 with --source gymnax)")
    p.add_argument("--ewc-lambda", type=float, default=None, help="EWC's strength (default 100; 1000 for gymnax)")
    p.add_argument("--evaluate-every", type=int, default=10, help="a full performance-matrix row every this many tasks")
    p.add_argument("--window", type=int, default=10, help="tasks per point of the curves and the table's ends")
    p.add_argument("--strategies", default=None, help=f"default {','.join(STRATEGIES)} "
                                                       f"({','.join(RL_STRATEGIES)} with --source gymnax)")
    p.add_argument("--runs", default="runs/plasticity", help="where the run folders are (default runs/plasticity)")
    p.add_argument("--out", default=None, help="output path without extension (.md and .json are written; default "
                                               "experiments/results/plasticity, or rl_plasticity with --source gymnax)")
    p.add_argument("--figures", default=os.path.join(os.path.dirname(HERE), "docs", "figures"))
    p.add_argument("--no-cache", action="store_true", help="leave JAX's persistent compilation cache off")
    p.add_argument("--train-only", action="store_true", help=argparse.SUPPRESS)  # one strategy's folder, no table
    argv = sys.argv[1:] if argv is None else list(argv)
    args = p.parse_args(argv)
    args.forward = [a for i, a in enumerate(argv) if a != "--strategies" and (i == 0 or argv[i - 1] != "--strategies")
                    and not a.startswith("--strategies=")]
    try:
        args.hidden = tuple(int(h) for h in args.hidden.split(","))
    except ValueError:
        p.error(f"--hidden: expected comma-separated widths, got {args.hidden!r}")
    rl = args.source == "gymnax"
    defaults = {"tasks": 20 if rl else 200, "seeds": 3 if rl else 5, "learning_rate": 3e-3 if rl else 1e-2,
                "ewc_lambda": 1000.0 if rl else 100.0, "strategies": ",".join(RL_STRATEGIES if rl else STRATEGIES),
                "out": os.path.join(HERE, "results", "rl_plasticity" if rl else "plasticity")}
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    args.prefix = "rl_plasticity" if rl else "plasticity"
    args.measure = "return" if rl else "accuracy"
    args.title = (f"CartPole-v1, {args.tasks} random variants x {args.updates} updates, {args.seeds} seeds" if rl else
                  f"Online permuted MNIST, MLP {'-'.join(map(str, args.hidden))}, {args.seeds} seeds")
    args.strategies = [s for s in args.strategies.split(",") if s]
    if args.tasks < 2 or args.seeds < 2 or not 1 <= args.window <= args.tasks:
        p.error("--tasks and --seeds must be at least 2 and --window between 1 and --tasks")
    enable_compilation_cache(enabled=not args.no_cache)
    if args.train_only:
        for name in args.strategies:
            run_or_read(experiment_for(args, name), os.path.join(folders_of(args), name), name)
        return
    t0 = time.perf_counter()
    res = study(args)
    if rl:
        setting = (f"CartPole-v1, {args.tasks} variants drawn by `--variants random:{args.tasks}` (pole length and "
                   f"mass, gravity, push), each learned from reward for {args.updates} actor-critic updates (the `cartpole` "
                   f"preset: 8 environments x 64 steps per update, the recurrent cross-modal agent), Adam "
                   f"{args.learning_rate:g}, EWC lambda {args.ewc_lambda:g}, seeds 0-{args.seeds - 1}; mean ± 95% t "
                   f"interval over seeds. *Learning return*: the mean return on a task right after learning it (the "
                   f"diagonal of R; 500 is the most). The monitors read the agent's fusion layer and recurrent state "
                   f"on states visited in the first task.")
    else:
        setting = (f"Online permuted MNIST (the 5,000 real images: 4,000 training images per task, each seen once in "
                   f"batches of 100), {args.tasks} tasks, MLP 784-{'-'.join(map(str, args.hidden))}-10, Adam "
                   f"{args.learning_rate:g}, seeds 0-{args.seeds - 1}; mean ± 95% t interval over seeds. *Learning "
                   f"accuracy*: the test accuracy on a task right after learning it (the diagonal of R).")
    text = f"{setting} Made from the run folders in {folders_of(args)}/.\n\n" + table(args, res)
    print(text)
    write_atomic(args.out + ".md", text + "\n")
    os.makedirs(args.figures, exist_ok=True)
    figures(args, res)
    settings = {k: v for k, v in vars(args).items() if k not in ("forward", "train_only", "prefix", "title")}
    blob = {"settings": settings, "seconds": time.perf_counter() - t0,
            "strategies": {k: {kk: (vv.tolist() if isinstance(vv, np.ndarray) else vv) for kk, vv in v.items()}
                           for k, v in res.items()}}
    write_atomic(args.out + ".json", json.dumps(jsonable(blob), indent=1))


if __name__ == "__main__":
    main()
