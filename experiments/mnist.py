"""Split and permuted MNIST on real images: the rehearsal strategies against the penalties and fine-tuning.

The 5,000 real MNIST images of ``clloop_jax.data.loaders.load_mnist`` (400 training and 100 test images per digit), an
MLP 400-400, Adam, batches of 128, ``--updates`` per task, all seeds in one compiled program per strategy
(``jax.vmap``). Scenarios (van de Ven & Tolias 2019):

* ``split/class`` (the default): five tasks of two digits ({0, 1}, {2, 3}, ...), one head over the ten digits,
  trained on the classes seen so far, evaluated on all ten;
* ``split/task``: the same tasks, each with its own pair of outputs (the task is known at test time);
* ``split/domain``: the same tasks on one two-way head (even or odd position in the pair);
* ``permuted/domain``: five tasks, each a fixed permutation of the 784 pixels, one ten-way head.

Replay, A-GEM and DER++ keep a memory of 500 images; the Fisher is the sampled one (one label draw per image, 256
images per task). Penalty strengths: ``--tune`` sweeps each penalty's grid on a held-out seed (100, not among the
reported seeds 0..S-1) and writes ``experiments/results/mnist_tune.json``; the table uses the best value found there
for its scenario, or the split-digits choice (``LAMBDA``) where the scenario was not tuned::

    python experiments/mnist.py                          # class-incremental, 5 seeds, 300 updates; ~15 min, 2 cores
    python experiments/mnist.py --scenario all --updates 100            # the four scenarios
    python experiments/mnist.py --scenario all --updates 100 --tune     # the strengths, on seed 100
    python experiments/mnist.py --seeds 2 --updates 100 --strategies none,replay    # a quick look

Writes ``experiments/results/mnist.md`` / ``.json`` (class-incremental) or ``mnist_<stream>_<scenario>.*``.
"""
from __future__ import annotations

import argparse
import json
import os
import time

import jax
import numpy as np

from clloop_jax.data.loaders import load_mnist
from clloop_jax.data.streams import permuted_stream, split_stream
from clloop_jax.metrics import average_performance
from clloop_jax.model import MLP
from clloop_jax.report import cell, paired_table, summary_table
from clloop_jax.run.config import RunConfig
from clloop_jax.run.joint import make_joint_run
from clloop_jax.run.sequential import make_run
from clloop_jax.sources.supervised import SupervisedSource
from clloop_jax.strategies import agem, derpp, get_strategy, replay
from clloop_jax.workflow.compilation import enable_compilation_cache
from clloop_jax.workflow.files import jsonable, write_atomic

#: Strengths chosen on split digits, class-incremental (experiments/scenarios.py): the fallback where a scenario
#: has no entry in mnist_tune.json.
LAMBDA = {"ewc": 1000.0, "online_ewc": 1000.0, "si": 100.0}
MEMORY = 500
SCENARIOS = ("split/class", "split/task", "split/domain", "permuted/domain")
#: Grids swept by --tune on the held-out seed (vmapped: one compilation per strategy and scenario).
TUNE_GRID = {"ewc": (10.0, 100.0, 1e3, 1e4), "online_ewc": (10.0, 100.0, 1e3, 1e4), "si": (1.0, 10.0, 100.0, 1e3)}
TUNE_SEED = 100
RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")

#: Published split MNIST (van de Ven & Tolias 2019, arXiv:1904.07734; full MNIST, MLP 2x400, 2000 iterations of
#: batch 128 per task), ACC in %.
PUBLISHED = {
    "split/class": {"none": "19.90 ± 0.02", "ewc": "20.01 ± 0.06", "online_ewc": "19.96 ± 0.07",
                    "si": "19.99 ± 0.06", "lwf": "23.85 ± 0.44"},
    "split/task": {"ewc": "98.64 ± 0.22"},
    "split/domain": {"ewc": "63.95 ± 1.90"},
}


def strategy_for(name: str):
    if name == "replay":
        return replay(capacity=MEMORY, batch_size=128)
    if name == "agem":
        return agem(capacity=MEMORY, batch_size=256)
    if name == "derpp":
        return derpp(capacity=MEMORY, batch_size=128)
    return get_strategy(name)


def make_source(scenario: str) -> SupervisedSource:
    x, y, x_test, y_test = load_mnist()
    kind, setting = scenario.split("/")
    if kind == "split":
        stream = split_stream(x, y, classes_per_task=2, seed=0, x_test=x_test, y_test=y_test, scenario=setting)
    else:
        stream = permuted_stream(x, y, 5, seed=0, x_test=x_test, y_test=y_test, scenario=setting)
    return SupervisedSource(MLP(output_dim=stream.num_classes, hidden=(400, 400)), stream, batch_size=128,
                            fisher_size=256)


def run_config(name: str, updates: int) -> RunConfig:
    return RunConfig(strategy=strategy_for(name), episodes_per_task=updates, monitors=(), max_grad_norm=None)


def tune(scenario: str, updates: int) -> dict:
    """ACC of every grid value of every penalty on the held-out seed: ``{strategy: {lambda: acc}}``."""
    source = make_source(scenario)
    out = {}
    for name, grid in TUNE_GRID.items():
        run = make_run(run_config(name, updates), source)
        hp = run.hparams(learning_rate=1e-3).replace(lam=jax.numpy.asarray(grid))
        _, res = jax.jit(jax.vmap(run, in_axes=(None, hp.axes("lam"))))(jax.random.key(TUNE_SEED), hp)
        acc = np.asarray(average_performance(np.asarray(res.R, np.float64)))
        out[name] = dict(zip(map(float, grid), map(float, acc)))
        print(f"{scenario} {name}: " + "  ".join(f"{g:g}:{a:.3f}" for g, a in zip(grid, acc)), flush=True)
    return out


def tuned_lambda(scenario: str, name: str) -> float:
    """The best grid value on the held-out seed (the largest of ties), else the split-digits choice."""
    path = os.path.join(RESULTS, "mnist_tune.json")
    grid = json.load(open(path)).get(scenario, {}).get(name) if os.path.exists(path) else None
    if not grid:
        return LAMBDA[name]
    best = max(grid.values())
    return max(float(lam) for lam, acc in grid.items() if acc == best)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--updates", type=int, default=300)
    p.add_argument("--scenario", default="split/class", choices=SCENARIOS + ("all",))
    p.add_argument("--strategies", default="none,ewc,online_ewc,si,lwf,agem,derpp,replay")
    p.add_argument("--tune", action="store_true", help="sweep the penalties' strengths on the held-out seed")
    p.add_argument("--no-joint", action="store_true")
    p.add_argument("--no-cache", action="store_true")
    p.add_argument("--out", default=None, help="output stem (default experiments/results/mnist[_<scenario>])")
    args = p.parse_args(argv)
    enable_compilation_cache(enabled=not args.no_cache)
    scenarios = SCENARIOS if args.scenario == "all" else (args.scenario,)
    if args.tune:
        path = os.path.join(RESULTS, "mnist_tune.json")
        found = json.load(open(path)) if os.path.exists(path) else {}
        for scenario in scenarios:
            found[scenario] = tune(scenario, args.updates)
            found[scenario]["updates"] = args.updates
            write_atomic(path, json.dumps(found, indent=1) + "\n")
        return
    for scenario in scenarios:
        stem = args.out or os.path.join(RESULTS, "mnist" if scenario == "split/class"
                                        else "mnist_" + scenario.replace("/", "_"))
        table_for(scenario, args, stem)


def table_for(scenario: str, args, stem: str) -> None:
    source = make_source(scenario)
    keys = jax.random.split(jax.random.key(0), args.seeds)
    results, extra, seconds = {}, {}, {}
    lambdas = {name: tuned_lambda(scenario, name) for name in LAMBDA}
    for name in args.strategies.split(","):
        run = make_run(run_config(name, args.updates), source)
        values = {"lam": lambdas[name]} if name in lambdas else {}
        hp = run.hparams(learning_rate=1e-3, **values)
        t0 = time.perf_counter()
        _, res = jax.jit(jax.vmap(run, in_axes=(0, None)))(keys, hp)
        results[name] = (np.asarray(res.R, np.float64), np.asarray(res.baseline, np.float64))
        seconds[name] = time.perf_counter() - t0  # compilation included
        memory = f"{MEMORY} images" if name in ("replay", "agem", "derpp") else "-"
        extra[name] = {"lambda": f"{lambdas[name]:g}" if name in lambdas else "-", "memory": memory,
                       "published ACC (%)": PUBLISHED.get(scenario, {}).get(name, "-")}
        print(f"{name:>10}: final average accuracy {cell(results[name][0][:, -1].mean(axis=1))}  "
              f"[{seconds[name]:.0f} s]", flush=True)
    joint = None
    if not args.no_joint:
        config = run_config("none", args.updates)
        joint_fn = make_joint_run(config, source.joint())
        hp = make_run(config, source.joint()).hparams(learning_rate=1e-3)
        joint = np.asarray(jax.jit(jax.vmap(joint_fn, in_axes=(0, None)))(keys, hp), np.float64)
        print(f"{'joint':>10}: average accuracy {cell(joint.mean(axis=1))}", flush=True)

    what = {"split/class": "Class-incremental split MNIST (5 tasks of 2 digits", "split/task": "Task-incremental "
            "split MNIST (5 tasks of 2 digits, a pair of outputs each", "split/domain": "Domain-incremental split MNIST "
            "(5 tasks of 2 digits on one two-way head", "permuted/domain": "Domain-incremental permuted MNIST (5 "
            "pixel permutations, one ten-way head"}[scenario]
    lines = [f"{what}; 4,000 training / 1,000 test real images), MLP 400-400, Adam 1e-3, batch 128, {args.updates} "
             f"updates per task, {args.seeds} seeds; mean ± 95% t interval over seeds. Penalty strengths: the best "
             f"on held-out seed {TUNE_SEED} (mnist_tune.json) where tuned. Published numbers: van de Ven & Tolias "
             f"2019 (60,000 images, 2,000 updates per task).", "", summary_table(results, extra=extra)]
    if joint is not None:
        lines.append(f"| joint (upper bound) | - | - | - | {cell(joint.mean(axis=1))} | - | - | - | - |")
    if "none" in results and len(results) > 1:
        lines += ["", paired_table(results, "none")]
    text = "\n".join(lines)
    print(text)
    write_atomic(stem + ".md", text + "\n")
    write_atomic(stem + ".json", json.dumps(jsonable(
        {"settings": {**vars(args), "scenario": scenario, "lambdas": lambdas}, "seconds": seconds,
         "device": str(jax.devices()[0]), "joint": None if joint is None else joint.tolist(),
         "strategies": {n: {"R": r[0].tolist(), "baseline": r[1].tolist()} for n, r in results.items()}}),
        indent=1) + "\n")


if __name__ == "__main__":
    main()
