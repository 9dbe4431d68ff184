"""The three continual-learning scenarios on permuted and split digits, with every penalty strategy.

Reproduces, at a small scale, the comparison of van de Ven & Tolias 2019 ("Three scenarios for continual
learning", arXiv:1904.07734): a fully connected ReLU network learns a stream of tasks, one after another, under
fine-tuning (``none``), L2, EWC, online EWC, SI and MAS, and a jointly trained network gives the upper bound.

Streams (scikit-learn's 8x8 digits: 64 inputs, 10 classes, a stratified 80/20 split into 1437 training and 360
test samples):

* permuted: 5 tasks, each a fixed random permutation of the 64 inputs; domain-incremental (one 10-way head)
  and task-incremental (one 10-way block of a 50-way head per task).
* split: 5 tasks of 2 classes ({0,1}, {2,3}, ...); task-incremental (each task's pair of outputs),
  domain-incremental (one 2-way head: even/odd position) and class-incremental (a 10-way head, trained on the
  classes seen so far, evaluated on all).

Every (stream, scenario, strategy) cell is an :class:`~clloop_jax.workflow.experiment.ExperimentConfig` (``clloop run
--source digits --stream split --scenario class --strategy ewc ...``; the recurrent model is ``--backbone
recurrent``) trained into a run folder under ``--runs`` (named by the cell, the strategy and the configuration's
hash; read back when it is there), ONE compiled program that runs all seeds at once. The score of a task is its test
accuracy; the table reports the final average accuracy (ACC, the mean of the last row of R) and backward transfer
(BWT), as the mean and 95% Student t interval over the seeds. Penalty strengths were chosen with ``--tune`` on a seed (100) that the
reported seeds (0..S-1) do not include.

The same experiment runs with the cross-modal recurrent model (``--model sequence``): a
:class:`~clloop_jax.model.SequenceClassifier` around a one-modality ``CrossModalModel`` (hidden 64, 4 heads, no
feedback) reads each input as a sequence of chunks (MNIST-1D: 40 values as 10 steps of 4; digits: 64 pixels as 8
steps of 8) and classifies it from its last output. ``--dataset mnist1d`` swaps the 8x8 digits for MNIST-1D
(4000 training and 1000 test signals of length 40, generated locally).

Usage::

    python experiments/scenarios.py            # the table (about 14 minutes on 2 shared CPU cores)
    python experiments/scenarios.py --quick    # a smoke run: 2 seeds, few steps
    python experiments/scenarios.py --tune     # sweep each strategy's strength on the tuning seed
    python experiments/scenarios.py --model sequence --dataset mnist1d   # the recurrent model on split MNIST-1D

Writes ``experiments/results/scenarios.md`` and ``experiments/results/scenarios.json`` (``--quick`` and
``--tune`` write ``scenarios_quick.*`` / ``scenarios_tune.json`` instead). ``--model sequence`` writes
``scenarios_sequence.*`` (and ``scenarios_sequence_quick.*`` / ``scenarios_sequence_tune.json``); ``--out`` names
another stem (a bare name goes to ``experiments/results/``, a path is used as given).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import time

import jax
import numpy as np

from clloop_jax import metrics
from clloop_jax.report import cell as report_cell
from clloop_jax.workflow.compilation import enable_compilation_cache
from clloop_jax.workflow.execute import joint_bound, run_or_read, run_seconds
from clloop_jax.workflow.experiment import DataConfig, ExperimentConfig, ModelConfig, TrainConfig
from clloop_jax.workflow.files import config_hash, write_atomic
from clloop_jax.workflow.names import RECURRENT_CHUNK
from clloop_jax.workflow.runs import RunFolder
from clloop_jax.workflow.sweep import SweepConfig, run_sweep

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results")

STRATEGIES = ("none", "l2", "ewc", "online_ewc", "si", "mas")
CELLS = (("permuted", "domain"), ("permuted", "task"), ("split", "task"), ("split", "domain"), ("split", "class"))
MODELS = ("mlp", "sequence")
DATASETS = ("digits", "mnist1d")
#: The recurrent model's default cells and strategies (split stream, the penalties of van de Ven & Tolias 2019).
SEQUENCE_CELLS = (("split", "task"), ("split", "domain"), ("split", "class"))
SEQUENCE_STRATEGIES = ("none", "ewc", "online_ewc", "si")

#: Penalty strength per cell and strategy (lambda; SI's c): the best ACC of the --tune grid on the tuning seed
#: (experiments/results/scenarios_tune.json).
LAMBDA = {
    "permuted/domain": dict(l2=0.1, ewc=100.0, online_ewc=100.0, si=10.0, mas=0.01),
    "permuted/task": dict(l2=0.1, ewc=1000.0, online_ewc=1000.0, si=10.0, mas=0.01),
    "split/task": dict(l2=0.1, ewc=1000.0, online_ewc=1000.0, si=100.0, mas=0.1),
    "split/domain": dict(l2=0.1, ewc=10000.0, online_ewc=100.0, si=10.0, mas=0.1),
    # Flat grids: where several values tie for the best ACC, the largest of them.
    "split/class": dict(l2=10.0, ewc=1000.0, online_ewc=1000.0, si=100.0, mas=0.1),
}

#: The recurrent model's strengths: the best of TUNE_GRID_SEQUENCE on the tuning seed, split MNIST-1D, 100 updates
#: of 32 per task (``--model sequence --dataset mnist1d --steps 100 --batch-size 32 --tune``,
#: experiments/results/scenarios_sequence_tune.json); online EWC takes EWC's value (it was not swept), the cells
#: the sweep did not cover keep the MLP's split-digits choices.
LAMBDA_SEQUENCE = {cell: dict(strengths) for cell, strengths in LAMBDA.items()}
for _cell, _ewc, _si in (("split/task", 1000.0, 1000.0), ("split/domain", 100.0, 100.0),
                         ("split/class", 10000.0, 100.0)):
    LAMBDA_SEQUENCE[_cell].update(ewc=_ewc, online_ewc=_ewc, si=_si)

#: The recurrent model's grids (three values around the MLP's split choices; one compilation per strategy and cell).
TUNE_GRID_SEQUENCE = {
    "ewc": (100.0, 1e3, 1e4),
    "si": (10.0, 100.0, 1000.0),
}

#: Grids swept by --tune (vmapped: one compilation per strategy and cell).
TUNE_GRID = {
    "l2": (0.0, 0.01, 0.1, 1.0, 10.0),
    "ewc": (0.0, 1.0, 10.0, 100.0, 1e3, 1e4),
    "online_ewc": (0.0, 1.0, 10.0, 100.0, 1e3, 1e4),
    "si": (0.0, 0.1, 1.0, 10.0, 100.0),
    "mas": (0.0, 0.01, 0.1, 1.0, 10.0, 100.0),
}


@dataclasses.dataclass(frozen=True)
class Setup:
    num_seeds: int = 5
    steps: int = 500          # optimizer updates per task
    batch_size: int = 128
    hidden: tuple = (100, 100)
    learning_rate: float = 1e-3
    gamma: float = 1.0        # online EWC's decay
    xi: float = 0.1           # SI's damping
    fisher_size: int = 256    # training samples per exact Fisher diagonal
    permuted_tasks: int = 5
    tune_seed: int = 100


@dataclasses.dataclass(frozen=True)
class Experiment:
    """What is compared: the network, the data, the cells, the strategies and their strengths."""

    model: str = "mlp"
    dataset: str = "digits"
    cells: tuple = CELLS
    strategies: tuple = STRATEGIES
    lambdas: dict = dataclasses.field(default_factory=lambda: LAMBDA)
    tune_grid: dict = dataclasses.field(default_factory=lambda: TUNE_GRID)
    seq_hidden: int = 64      # the recurrent model's width
    seq_heads: int = 4        # its attention heads

    def __post_init__(self):
        if self.model not in MODELS:
            raise ValueError(f"model must be one of {MODELS}, got {self.model!r}")
        if self.dataset not in DATASETS:
            raise ValueError(f"dataset must be one of {DATASETS}, got {self.dataset!r}")
        for s in self.strategies:
            if s not in STRATEGIES:
                raise ValueError(f"strategies must be drawn from {STRATEGIES}, got {s!r}")
        for k, s in self.cells:
            if (k, s) not in CELLS:
                raise ValueError(f"cells must be drawn from {['/'.join(c) for c in CELLS]}, got {k}/{s!r}")
            missing = [t for t in self.strategies if t != "none" and t not in self.lambdas.get(f"{k}/{s}", {})]
            if missing:
                raise ValueError(f"lambdas[{k}/{s!r}] must give a strength for {missing}")

    @property
    def chunk(self) -> int:
        """Signal values the recurrent model reads per step (:data:`RECURRENT_CHUNK`)."""
        return RECURRENT_CHUNK[self.dataset]

    @property
    def is_default(self) -> bool:
        return self.model == "mlp" and self.dataset == "digits"


def experiment(model: str = "mlp", dataset: str = "digits", strategies=None, cells=None) -> Experiment:
    """The comparison for a model and dataset: the MLP keeps every cell and strategy of the digits table; the
    recurrent model defaults to the split stream with fine-tuning, EWC, online EWC and SI."""
    seq = model == "sequence"
    return Experiment(model=model, dataset=dataset,
                      cells=tuple(cells) if cells else (SEQUENCE_CELLS if seq else CELLS),
                      strategies=tuple(strategies) if strategies else (SEQUENCE_STRATEGIES if seq else STRATEGIES),
                      lambdas=LAMBDA_SEQUENCE if seq else LAMBDA,
                      tune_grid=TUNE_GRID_SEQUENCE if seq else TUNE_GRID)


def strength(cell: str, strategy: str, lambdas=None) -> float:
    return 0.0 if strategy == "none" else (LAMBDA if lambdas is None else lambdas)[cell][strategy]


def experiment_config(cell: tuple, strategy: str, setup: Setup, exp: Experiment, lam=None,
                      seeds=None) -> ExperimentConfig:
    """One (stream, scenario) cell under ``strategy`` as an experiment: the dataset's stream of 5 tasks, the MLP or the
    recurrent backbone, the exact Fisher, no clipping; ``lam`` the cell's tuned strength unless given."""
    kind, scenario = cell
    recurrent = exp.model == "sequence"
    data = DataConfig(stream=kind, scenario=scenario, classes_per_task=2, permuted_tasks=setup.permuted_tasks,
                      mlp_hidden=setup.hidden, batch_size=setup.batch_size, fisher_size=setup.fisher_size,
                      backbone="recurrent" if recurrent else "mlp")
    model = ModelConfig(hidden_dim=exp.seq_hidden, num_heads=exp.seq_heads) if recurrent else ModelConfig()
    lam = strength(f"{kind}/{scenario}", strategy, exp.lambdas) if lam is None else lam
    train = TrainConfig(strategy=strategy, episodes_per_task=setup.steps, learning_rate=setup.learning_rate,
                        lam=None if strategy == "none" else lam,
                        gamma=setup.gamma if strategy == "online_ewc" else None,
                        strategy_hparams=(f"xi={setup.xi}",) if strategy == "si" else (),
                        fisher_variant="exact", monitors=(), max_grad_norm=None)
    return ExperimentConfig(source=exp.dataset, data=data, model=model, train=train,
                            seeds=setup.num_seeds if seeds is None else seeds)


def folder_for(runs: str, experiment: ExperimentConfig) -> str:
    """The run folder of ``experiment``: named by its cell, strategy and configuration hash."""
    d, t = experiment.data, experiment.train
    return os.path.join(runs, f"{d.stream}_{d.scenario}", f"{t.strategy}_{config_hash(experiment)[:8]}")


def tune(setup: Setup, exp: Experiment, runs: str):
    """Sweeps each strategy's strength, one program per strategy and cell (:func:`run_sweep`), chosen on the held-out
    tuning seed; prints ACC per value."""
    out = {}
    for kind, scenario in exp.cells:
        for strategy, grid in exp.tune_grid.items():
            sweep = SweepConfig(experiment_config((kind, scenario), strategy, setup, exp, lam=grid[0], seeds=1),
                                (("lam", grid),), select_on=(setup.tune_seed,))
            res = run_sweep(sweep, RunFolder(os.path.join(runs, f"tune_{kind}_{scenario}_{strategy}"),
                                             overwrite=True))
            acc = [float(a[0]) for a in res.held_out]
            out[f"{kind}/{scenario}/{strategy}"] = dict(zip(map(float, grid), acc))
            best = grid[int(np.argmax(acc))]
            print(f"{kind:8s} {scenario:6s} {strategy:10s} " + "  ".join(f"{g:g}:{a:.3f}" for g, a in zip(grid, acc))
                  + f"   best {best:g}", flush=True)
    return out


def describe_network(setup: Setup, exp: Experiment) -> str:
    if exp.model == "mlp":
        return f"MLP {'-'.join(map(str, setup.hidden))} (ReLU)"
    length = 40 if exp.dataset == "mnist1d" else 64
    return (f"SequenceClassifier(CrossModalModel(input_dim={exp.chunk}, hidden_dim={exp.seq_hidden}, "
            f"num_modalities=1, num_heads={exp.seq_heads}, feedback_dim=0), chunk={exp.chunk}): the "
            f"{length}-long input read as {length // exp.chunk} steps of {exp.chunk} values (encoder, attention over "
            f"the modality and state tokens, GRU cell, linear head), classified from the last step's output")


def table(results, setup: Setup, published_md: str, exp: Experiment = Experiment()) -> str:
    cells, strategies = exp.cells, exp.strategies
    penalties = tuple(s for s in strategies if s != "none")
    if exp.is_default:
        title = "# Three continual-learning scenarios on split and permuted digits"
    else:
        kinds = " and ".join(dict.fromkeys(k for k, _ in cells))
        title = (f"# Three continual-learning scenarios on {kinds} "
                 f"{'MNIST-1D' if exp.dataset == 'mnist1d' else 'digits'}, "
                 f"{'cross-modal recurrent model' if exp.model == 'sequence' else 'MLP'}")
    lines = [title, ""]
    lines += [f"{describe_network(setup, exp)}, Adam lr {setup.learning_rate:g}, batch "
              f"{setup.batch_size}, {setup.steps} updates per task, optimizer reset per task, no gradient clipping; "
              f"{setup.num_seeds} seeds (0..{setup.num_seeds - 1}), each seed redraws the network initialisation "
              f"and the minibatches (the task streams are fixed). Score = test accuracy. EWC, online EWC: exact "
              f"Fisher (expectation over the model's own predictive distribution on the task's active outputs), "
              f"{setup.fisher_size} training samples per task; online EWC gamma = {setup.gamma:g}; SI xi = "
              f"{setup.xi:g}. ACC = mean final accuracy over all tasks; BWT = backward transfer; "
              f"mean ± 95% Student t half-width over seeds.", ""]
    header = "| strategy | " + " | ".join(f"{k} / {s}" for k, s in cells) + " |"
    lines += [f"Penalty strengths (lambda; c for SI), the best of a grid on seed {setup.tune_seed} "
              f"(`--tune`)" + (":" if exp.model == "mlp" else
                               " with this model on split MNIST-1D, EWC and SI swept (online EWC takes EWC's "
                               "value; `scenarios_sequence_tune.json`):"), "", header, "|---|" + "---:|" * len(cells)]
    for strategy in penalties:
        lines.append(f"| {strategy} | " + " | ".join(f"{strength(f'{k}/{s}', strategy, exp.lambdas):g}"
                                                     for k, s in cells) + " |")
    lines.append("")
    lines += ["## ACC (final average test accuracy)", "", header, "|---|" + "---:|" * len(cells)]
    for strategy in strategies + ("joint",):
        row = []
        for k, s in cells:
            r = results[f"{k}/{s}"][strategy]
            row.append(f"{r['acc_mean']:.3f} ± {r['acc_ci']:.3f}")
        lines.append(f"| {strategy} | " + " | ".join(row) + " |")
    lines += ["", "## BWT (backward transfer; negative = forgetting)", "", header, "|---|" + "---:|" * len(cells)]
    for strategy in strategies:
        row = []
        for k, s in cells:
            r = results[f"{k}/{s}"][strategy]
            row.append(f"{r['bwt_mean']:+.3f} ± {r['bwt_ci']:.3f}")
        lines.append(f"| {strategy} | " + " | ".join(row) + " |")
    if "none" not in strategies:
        lines += ["", published_md, "", findings(results, exp)]
        return "\n".join(lines) + "\n"
    lines += ["", "## Paired gain over fine-tuning (ACC - ACC of none, same seeds)", "", header,
              "|---|" + "---:|" * len(cells)]
    for strategy in penalties:
        row = []
        for k, s in cells:
            cell = results[f"{k}/{s}"]
            row.append(report_cell(np.asarray(cell[strategy]["acc"]) - np.asarray(cell["none"]["acc"])))
        lines.append(f"| {strategy} | " + " | ".join(row) + " |")
    lines += ["", published_md, "", findings(results, exp)]
    return "\n".join(lines) + "\n"


PUBLISHED_HEAD = """## What the literature reports

van de Ven & Tolias 2019, "Three scenarios for continual learning" (arXiv:1904.07734), compare these methods on
split MNIST (5 tasks of 2 digits) and permuted MNIST with a fully connected network, in the three scenarios.
Their qualitative findings:

1. Task-incremental learning is the easiest scenario: with a head per task, even fine-tuning keeps much of
   split MNIST, and every method does well.
2. Domain-incremental learning on permuted MNIST: EWC, online EWC and SI are far above fine-tuning.
3. Class-incremental learning on split MNIST: EWC, online EWC and SI are no better than fine-tuning (the
   network predicts only the latest task's classes); only methods that replay earlier data succeed there.
"""

PUBLISHED = PUBLISHED_HEAD + """
The paper's accuracy tables could not be retrieved and checked here, so no published numbers are quoted; the
comparison below is with these qualitative findings only. Our streams differ in scale: 8x8 digits (64 inputs,
1437 training samples, 360 test samples) instead of 28x28 MNIST, 5 permuted tasks instead of 10, a 100-100
network and 500 updates per task."""


def published(setup: Setup, exp: Experiment) -> str:
    """The literature's findings and how this run's streams and network differ from theirs."""
    if exp.is_default:
        return PUBLISHED
    data = ("MNIST-1D (40-value 1-D signals, 4000 training and 1000 test samples)" if exp.dataset == "mnist1d"
            else "8x8 digits (64 inputs, 1437 training samples, 360 test samples)")
    net = ("a recurrent cross-modal model reading the input as a sequence" if exp.model == "sequence"
           else f"a {'-'.join(map(str, setup.hidden))} network")
    return PUBLISHED_HEAD + (
        f"\nThe paper's accuracy tables could not be retrieved and checked here, so no published numbers are "
        f"quoted; the comparison below is with these qualitative findings only. Our streams differ in scale and "
        f"kind: {data} instead of 28x28 MNIST, {net} instead of a fully connected network, and {setup.steps} "
        f"updates per task.")


def findings(results, exp: Experiment = Experiment()) -> str:
    """The three qualitative findings, checked on the numbers of this run (each where its cells and strategies
    were run)."""
    def acc(cell, strategy):
        return np.asarray(results[cell][strategy]["acc"])

    def gain(cell, strategy):
        m, h = metrics.mean_ci(acc(cell, strategy) - acc(cell, "none"))
        return m, h

    data = "digits" if exp.dataset == "digits" else "MNIST-1D"
    have = lambda *cells: all(c in results for c in cells)  # noqa: E731
    reg = tuple(s for s in ("ewc", "online_ewc", "si") if s in exp.strategies)
    lines = ["## The findings, checked here", ""]
    if "none" not in exp.strategies:
        return "\n".join(lines + ["Fine-tuning (none) was not run: the findings compare against it."])
    if have("split/task", "split/domain", "split/class"):
        task_accs = {s: results["split/task"][s]["acc_mean"] for s in exp.strategies}
        order = [results[f"split/{sc}"]["none"]["acc_mean"] for sc in ("task", "domain", "class")]
        lines.append(f"1. Task-incremental easiest: fine-tuning's ACC on split {data} is {order[0]:.3f} (task), "
                     f"{order[1]:.3f} (domain), {order[2]:.3f} (class); in the task scenario every strategy is "
                     f"between {min(task_accs.values()):.3f} and {max(task_accs.values()):.3f}. "
                     + ("Holds." if order[0] > order[1] > order[2] else "Does not hold in this order."))
    if have("permuted/domain") and reg:
        g = {s: gain("permuted/domain", s) for s in reg}
        holds = all(m - h > 0 for m, h in g.values())
        lines.append("2. Permuted, domain-incremental, paired gain over fine-tuning: " + ", ".join(
            f"{s} {m:+.3f} ± {h:.3f}" for s, (m, h) in g.items()) + ". "
            + ("Holds: every gain's 95% interval excludes 0." if holds else "Not every gain is significant."))
    if have("split/class") and reg:
        g = {s: gain("split/class", s) for s in reg}
        worst_none = results["split/class"]["none"]["acc_mean"]
        line = (f"3. Split, class-incremental: fine-tuning ACC {worst_none:.3f} (1/T = 0.2 is what remembering "
                f"only the last task gives); paired gains " + ", ".join(
                    f"{s} {m:+.3f} ± {h:.3f}" for s, (m, h) in g.items()) + ". "
                + ("Holds: all within 0.05 of fine-tuning." if all(abs(m) < 0.05 for m, _ in g.values())
                   else "Some method moves more than 0.05 from fine-tuning."))
        others = {s: gain("split/class", s) for s in ("l2", "mas") if s in exp.strategies}
        if others:
            line += " The other penalties: " + ", ".join(f"{s} {m:+.3f} ± {h:.3f}" for s, (m, h) in others.items())
        if "l2" in others:
            line += (f" (l2 at lambda {strength('split/class', 'l2', exp.lambdas):g}, the largest of its grid, keeps "
                     f"some earlier classes by learning each new task less: see its BWT and R).")
        lines.append(line)
    return "\n".join(lines)


def results_path(stem: str) -> str:
    """A bare stem goes to experiments/results/; a stem with a directory part is used as given."""
    return stem if os.path.dirname(stem) else os.path.join(RESULTS, stem)


def comma_list(text: str) -> tuple:
    return tuple(t.strip() for t in text.split(",") if t.strip())


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smoke run: 2 seeds, 30 updates per task")
    parser.add_argument("--tune", action="store_true", help="sweep each strategy's strength on the tuning seed")
    parser.add_argument("--seeds", type=int, default=None)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=None, help="training samples per update (default 128)")
    parser.add_argument("--model", choices=MODELS, default="mlp",
                        help="mlp: the 100-100 MLP; sequence: the cross-modal recurrent model reading chunks")
    parser.add_argument("--dataset", choices=DATASETS, default="digits")
    parser.add_argument("--strategies", type=comma_list, default=None,
                        help=f"comma list drawn from {','.join(STRATEGIES)} (default: all for mlp; "
                             f"{','.join(SEQUENCE_STRATEGIES)} for sequence)")
    parser.add_argument("--cells", type=comma_list, default=None,
                        help="comma list of stream/scenario, e.g. split/task,split/class (default: all five for "
                             "mlp; the three split cells for sequence)")
    parser.add_argument("--out", default=None,
                        help="output stem (default scenarios, or scenarios_sequence for --model sequence; "
                             "--quick appends _quick, --tune writes <stem>_tune.json)")
    parser.add_argument("--runs", default=os.path.join(HERE, "..", "runs", "scenarios"),
                        help="where the run folders are (one per cell and strategy, named by its configuration)")
    parser.add_argument("--no-cache", action="store_true", help="leave JAX's persistent compilation cache off")
    args = parser.parse_args()
    enable_compilation_cache(enabled=not args.no_cache)

    cells = None
    if args.cells:
        cells = []
        for c in args.cells:
            parts = tuple(c.split("/"))
            if parts not in CELLS:
                parser.error(f"--cells: expected entries from {['/'.join(x) for x in CELLS]}, got {c!r}")
            cells.append(parts)
    try:
        exp = experiment(args.model, args.dataset, args.strategies, cells)
    except ValueError as e:
        parser.error(str(e))
    setup = Setup()
    if args.quick:
        setup = dataclasses.replace(setup, num_seeds=2, steps=30, fisher_size=64)
    if args.seeds is not None:
        setup = dataclasses.replace(setup, num_seeds=args.seeds)
    if args.steps is not None:
        setup = dataclasses.replace(setup, steps=args.steps)
    if args.batch_size is not None:
        setup = dataclasses.replace(setup, batch_size=args.batch_size)
    os.makedirs(RESULTS, exist_ok=True)
    stem = args.out or ("scenarios_sequence" if exp.model == "sequence" else "scenarios")
    runs = os.path.join(os.path.normpath(args.runs), os.path.basename(stem) + ("_quick" if args.quick else ""))
    t_start = time.perf_counter()

    if args.tune:
        out = tune(setup, exp, runs)
        record = {"setup": dataclasses.asdict(setup), "acc": out}
        if not exp.is_default:
            record.update(model=exp.model, dataset=exp.dataset, chunk=exp.chunk,
                          grid={k: list(map(float, v)) for k, v in exp.tune_grid.items()})
        path = results_path(stem + "_tune.json")
        write_atomic(path, json.dumps(record, indent=1))
        print(f"total {time.perf_counter() - t_start:.0f} s")
        return

    results = {}
    for kind, scenario in exp.cells:
        cell = {}
        for strategy in exp.strategies:
            config = experiment_config((kind, scenario), strategy, setup, exp)
            folder = folder_for(runs, config)
            R, _ = run_or_read(config, folder, strategy)
            seconds = run_seconds(folder)   # training, compilation included
            lam = strength(f"{kind}/{scenario}", strategy, exp.lambdas)
            summ = metrics.summarize(R)
            acc_m, acc_h = metrics.mean_ci(summ["average_performance"])
            bwt_m, bwt_h = metrics.mean_ci(summ["backward_transfer"])
            cell[strategy] = dict(acc_mean=float(acc_m), acc_ci=float(acc_h), bwt_mean=float(bwt_m),
                                  bwt_ci=float(bwt_h), acc=summ["average_performance"].tolist(),
                                  R_mean=R.mean(0).tolist(), lam=lam, seconds=seconds,
                                  folder=os.path.relpath(folder))
            print(f"{kind:8s} {scenario:6s} {strategy:10s} ACC {acc_m:.3f} ± {acc_h:.3f}  BWT {bwt_m:+.3f} ± "
                  f"{bwt_h:.3f}  ({seconds or 0:.1f} s, {folder})", flush=True)
        t0 = time.perf_counter()
        scores = joint_bound(experiment_config((kind, scenario), "none", setup, exp))
        acc = scores.mean(axis=1)
        acc_m, acc_h = metrics.mean_ci(acc)
        cell["joint"] = dict(acc_mean=float(acc_m), acc_ci=float(acc_h), acc=acc.tolist(),
                             final_mean=scores.mean(0).tolist(), seconds=time.perf_counter() - t0)
        print(f"{kind:8s} {scenario:6s} {'joint':10s} ACC {acc_m:.3f} ± {acc_h:.3f}  "
              f"({time.perf_counter() - t0:.1f} s)", flush=True)
        results[f"{kind}/{scenario}"] = cell

    total = time.perf_counter() - t_start
    md = table(results, setup, published(setup, exp), exp)
    md += f"\nTotal runtime {total:.0f} s on {platform.machine()} ({jax.devices()[0].platform}, jax {jax.__version__}).\n"
    name = results_path(stem + "_quick" if args.quick else stem)
    write_atomic(name + ".md", md)
    record = {"setup": dataclasses.asdict(setup), "lambda": exp.lambdas, "dataset": exp.dataset,
              "fisher_variant": "exact", "results": results, "seconds": total}
    if not exp.is_default:
        record.update(model=exp.model, chunk=exp.chunk, hidden_dim=exp.seq_hidden, num_heads=exp.seq_heads,
                      cells=["/".join(c) for c in exp.cells], strategies=list(exp.strategies))
    write_atomic(name + ".json", json.dumps(record, indent=1))
    print(md)


if __name__ == "__main__":
    main()
