"""Split and permuted MNIST on real images: the rehearsal strategies against the penalties and fine-tuning.

The 5,000 real MNIST images of ``clloop_jax.data.loaders.load_mnist`` (400 training and 100 test images per digit), an
MLP 400-400, Adam, batches of 128, ``--updates`` per task, all seeds in one compiled program per strategy
(``jax.vmap``). Scenarios (van de Ven & Tolias 2019):

* ``split/class`` (the default): five tasks of two digits ({0, 1}, {2, 3}, ...), one head over the ten digits,
  trained on the classes seen so far, evaluated on all ten;
* ``split/task``: the same tasks, each with its own pair of outputs (the task is known at test time);
* ``split/domain``: the same tasks on one two-way head (even or odd position in the pair);
* ``permuted/domain``: five tasks, each a fixed permutation of the 784 pixels, one ten-way head.

Replay, A-GEM, DER++ and ER-ACE keep a memory of 500 images (128, 256, 128 and 128 of them drawn per update), GEM
500 images split over the five tasks (100 each, all of an earlier task's used for its gradient at every update), iCaRL
500 exemplars split over the classes seen (128 drawn per update next to the batch) and GDumb a class-balanced memory of
500 images (a model trained from scratch on it before every evaluation, 500 Adam steps of 128); the Fisher is the
sampled one (one label draw per image, 256 images per task). Penalty strengths: ``--tune`` sweeps each penalty's grid
(``clloop sweep``'s :func:`~clloop_jax.workflow.sweep.run_sweep`) with a held-out seed (100, not among the reported
seeds 0..S-1) and writes ``experiments/results/mnist_tune.json``; the table uses the best value found there for its
scenario, or the split-digits choice (``LAMBDA``) where the scenario was not tuned.

Every strategy's run is an :class:`~clloop_jax.workflow.experiment.ExperimentConfig` trained into a run folder
(``runs/mnist/<stream>_<scenario>_<updates>/<strategy>``, ``--runs`` to move them; each is what ``clloop run --config
FOLDER/config.json`` trains), so an interrupted study resumes where it stopped, and a finished folder is read instead
of trained again: run on finished folders, the script only regenerates the tables from them. The joint bound (every
task's data at once) is the one number computed outside a run folder::

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

import jax

from clloop_jax.report import cell, paired_table, summary_table
from clloop_jax.workflow.compilation import enable_compilation_cache
from clloop_jax.workflow.execute import joint_bound, run_or_read, run_seconds
from clloop_jax.workflow.experiment import ExperimentConfig
from clloop_jax.workflow.files import jsonable, write_atomic
from clloop_jax.workflow.runs import RunFolder
from clloop_jax.workflow.settings import MEMORY_STRATEGIES, DataConfig, TrainConfig
from clloop_jax.workflow.sweep import SweepConfig, run_sweep

#: Strengths chosen on split digits, class-incremental (experiments/scenarios.py): the fallback where a scenario
#: has no entry in mnist_tune.json.
LAMBDA = {"ewc": 1000.0, "online_ewc": 1000.0, "si": 100.0}
MEMORY = 500
#: Memory samples drawn per update.
MEMORY_BATCH = {"replay": 128, "agem": 256, "derpp": 128, "er_ace": 128, "gem": None, "icarl": 128, "gdumb": 128}
SCENARIOS = ("split/class", "split/task", "split/domain", "permuted/domain")
#: Grids swept by --tune on the held-out seed (one program per strategy and scenario).
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


def experiment_for(scenario: str, name: str, updates: int, seeds: int, lam=None, memory: int = MEMORY
                   ) -> ExperimentConfig:
    """The study's configuration of strategy ``name``: MNIST, MLP 400-400, Adam 1e-3, batches of 128, no clipping,
    no monitors; ``lam`` (default: the tuned strength) for the penalties, the memory for rehearsal."""
    stream, setting = scenario.split("/")
    rehearsal = _part(name, MEMORY_STRATEGIES)       # a chain (ewc+replay) takes its parts' settings
    penalty = _part(name, LAMBDA)
    if lam is None and penalty:
        lam = tuned_lambda(scenario, penalty)
    train = TrainConfig(strategy=name, episodes_per_task=updates, learning_rate=1e-3, lam=lam, monitors=(),
                        max_grad_norm=None, memory=memory if rehearsal else None,
                        memory_batch=MEMORY_BATCH[rehearsal] if rehearsal else None)
    data = DataConfig(stream=stream, scenario=setting, mlp_hidden=(400, 400), batch_size=128, fisher_size=256)
    return ExperimentConfig(source="mnist", data=data, train=train, seeds=seeds)


def _part(name: str, names) -> str:
    """The first part of the strategy or chain ``name`` (``"ewc+replay"``) that is among ``names``; "" if none."""
    return next((part for part in name.split("+") if part in names), "")


def tune(scenario: str, updates: int, runs: str) -> dict:
    """ACC of every grid value of every penalty on the held-out seed: ``{strategy: {lambda: acc}}``."""
    out = {}
    for name, grid in TUNE_GRID.items():
        sweep = SweepConfig(experiment_for(scenario, name, updates, seeds=1, lam=grid[0]), (("lam", grid),),
                            select_on=(TUNE_SEED,))
        res = run_sweep(sweep, RunFolder(os.path.join(runs, f"tune_{name}"), overwrite=True))
        out[name] = {float(point["lam"]): float(acc[0]) for point, acc in zip(res.points, res.held_out)}
        print(f"{scenario} {name}: " + "  ".join(f"{g:g}:{a:.3f}" for g, a in out[name].items()), flush=True)
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
    p.add_argument("--strategies", default="none,ewc,online_ewc,si,lwf,agem,derpp,replay,er_ace,gem,icarl,gdumb")
    p.add_argument("--memory", type=int, default=MEMORY, help=f"rehearsal memory in images (default {MEMORY})")
    p.add_argument("--tune", action="store_true", help="sweep the penalties' strengths on the held-out seed")
    p.add_argument("--no-joint", action="store_true")
    p.add_argument("--no-cache", action="store_true")
    p.add_argument("--runs", default="runs/mnist", help="where the run folders are (default runs/mnist)")
    p.add_argument("--out", default=None, help="output stem (default experiments/results/mnist[_<scenario>])")
    args = p.parse_args(argv)
    enable_compilation_cache(enabled=not args.no_cache)
    scenarios = SCENARIOS if args.scenario == "all" else (args.scenario,)
    if args.tune:
        path = os.path.join(RESULTS, "mnist_tune.json")
        found = json.load(open(path)) if os.path.exists(path) else {}
        for scenario in scenarios:
            found[scenario] = tune(scenario, args.updates, runs_for(args, scenario))
            found[scenario]["updates"] = args.updates
            write_atomic(path, json.dumps(found, indent=1) + "\n")
        return
    for scenario in scenarios:
        stem = args.out or os.path.join(RESULTS, "mnist" if scenario == "split/class"
                                        else "mnist_" + scenario.replace("/", "_"))
        table_for(scenario, args, stem)


def runs_for(args, scenario: str) -> str:
    memory = f"_memory{args.memory}" if getattr(args, "memory", MEMORY) != MEMORY else ""
    return os.path.join(args.runs, f"{scenario.replace('/', '_')}_{args.updates}{memory}")


def table_for(scenario: str, args, stem: str) -> None:
    results, extra, seconds, folders = {}, {}, {}, {}
    for name in args.strategies.split(","):
        experiment = experiment_for(scenario, name, args.updates, args.seeds, memory=args.memory)
        folders[name] = os.path.join(runs_for(args, scenario), name)
        results[name] = run_or_read(experiment, folders[name], name)
        seconds[name] = run_seconds(folders[name])  # training, compilation included (None: an older folder)
        lam = experiment.train.lam
        extra[name] = {"lambda": f"{lam:g}" if lam is not None else "-",
                       "memory": f"{args.memory} images" if _part(name, MEMORY_STRATEGIES) else "-",
                       "published ACC (%)": PUBLISHED.get(scenario, {}).get(name, "-")}
        print(f"{name:>10}: final average accuracy {cell(results[name][0][:, -1].mean(axis=1))}  "
              f"[{seconds[name] or 0:.0f} s, {folders[name]}]", flush=True)
    joint = None
    if not args.no_joint:
        joint = joint_bound(experiment_for(scenario, "none", args.updates, args.seeds))
        print(f"{'joint':>10}: average accuracy {cell(joint.mean(axis=1))}", flush=True)

    what = {"split/class": "Class-incremental split MNIST (5 tasks of 2 digits", "split/task": "Task-incremental "
            "split MNIST (5 tasks of 2 digits, a pair of outputs each", "split/domain": "Domain-incremental split MNIST "
            "(5 tasks of 2 digits on one two-way head", "permuted/domain": "Domain-incremental permuted MNIST (5 "
            "pixel permutations, one ten-way head"}[scenario]
    lines = [f"{what}; 4,000 training / 1,000 test real images), MLP 400-400, Adam 1e-3, batch 128, {args.updates} "
             f"updates per task, seeds 0-{args.seeds - 1}; mean ± 95% t interval over seeds. Penalty strengths: the "
             f"best on held-out seed {TUNE_SEED} (mnist_tune.json) where tuned. Published numbers: van de Ven & "
             f"Tolias 2019 (60,000 images, 2,000 updates per task). Made from the run folders in "
             f"{runs_for(args, scenario)}/.", "", summary_table(results, extra=extra)]
    if joint is not None:
        lines.append(f"| joint (upper bound) | - | - | - | {cell(joint.mean(axis=1))} | - | - | - | - |")
    if "none" in results and len(results) > 1:
        lines += ["", paired_table(results, "none")]
    text = "\n".join(lines)
    print(text)
    write_atomic(stem + ".md", text + "\n")
    write_atomic(stem + ".json", json.dumps(jsonable(
        {"settings": {**vars(args), "scenario": scenario}, "seconds": seconds, "folders": folders,
         "configs": {n: experiment_for(scenario, n, args.updates, args.seeds, memory=args.memory) for n in results},
         "device": str(jax.devices()[0]), "joint": None if joint is None else joint.tolist(),
         "strategies": {n: {"R": r[0].tolist(), "baseline": r[1].tolist()} for n, r in results.items()}}),
        indent=1) + "\n")


if __name__ == "__main__":
    main()
