"""Sweeps: a grid of traced hyperparameters, over seeds, trained as one batch by one compiled program.

A :class:`SweepConfig` is an :class:`~clloop_jax.workflow.experiment.ExperimentConfig` and a grid over the options
that reach the run's :class:`~clloop_jax.run.config.HParams` (the learning rate, the penalty strength, a strategy's
own hyperparameters such as replay's ``alpha`` with ``--strategy-hparams alpha=0.1,0.5,1``, ...; options that change
the program, such as sizes, cannot be swept this way). Every grid point's seeds are members of one batch
(``jax.vmap`` over points x seeds, each member with its own hyperparameters), so the sweep compiles the programs of
one run, however many points it has, and runs with checkpoints, resume and the NaN alarm like any run
(:func:`~clloop_jax.workflow.execute.execute`).

Held-out seeds (``select_on``) are the tuning protocol: every point is also trained on seeds that are not reported,
the best point is chosen by the metric's mean over those, and its score on the reported seeds is an unbiased
estimate. Without them the best point is chosen on the reported seeds themselves (an optimistic number, marked so).

:func:`run_sweep` writes::

    SWEEP/config.json, seeds.json, checkpoints/      the batched run (resumable)
    SWEEP/<point>/                                   one complete run folder per grid point (reported seeds)
    SWEEP/sweep.md, sweep.json                       the metric at every point, held-out and reported, the choice
    SWEEP/sweep_<option>.png                         the metric against each swept option (the others at the choice)
    SWEEP/tensorboard/<point>/, SWEEP/wandb/         with ``log``: each point mirrored live as a run of its own
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import math
import os
from typing import Dict, Optional, Sequence, Tuple

import tyro

from clloop_jax.workflow.experiment import ExperimentConfig

__all__ = ["SweepConfig", "SweepResults", "run_sweep", "SWEEPABLE", "STRATEGY_HPARAM", "LOWER_IS_BETTER",
           "parse_values", "sweep_text", "best_point", "SweepArgs", "split_grid", "sweep_command"]

#: The options a sweep can vary (their values reach the run's traced hyperparameters): ``{option: (part, field)}``.
SWEEPABLE = {
    "learning_rate": ("train", "learning_rate"), "lam": ("train", "lam"), "gamma": ("train", "gamma"),
    "feedback_weight": ("train", "feedback_weight"), "discount": ("gymnax", "discount"),
    "gae_lambda": ("gymnax", "gae_lambda"), "entropy_coef": ("gymnax", "entropy_coef"),
    "reward_scale": ("gymnax", "reward_scale"),
}
#: Metrics for which the smallest value is the best (for the others, the largest).
LOWER_IS_BETTER = ("average_forgetting",)
#: A grid option ``strategy_hparams.NAME`` sweeps the strategy's own traced hyperparameter ``NAME`` (replay's
#: ``alpha``, a chain part's ``replay.alpha``, continual backprop's ``replacement_rate``; ``--strategy-hparams
#: NAME=1,2,3``), set through ``train.strategy_hparams`` at every point.
STRATEGY_HPARAM = "strategy_hparams."


def _label(option: str) -> str:
    """How an option reads in folder names, tables and figures: a strategy hyperparameter by its own name."""
    return option[len(STRATEGY_HPARAM):] if option.startswith(STRATEGY_HPARAM) else option


def parse_values(option: str, text: str) -> Tuple[float, ...]:
    """The numbers of ``--option 1,10,100``: ``ValueError`` naming the option for an empty item, a non-number, a
    non-finite value or a repeated one."""
    items = [t.strip() for t in str(text).split(",")]
    flag = f"--{option.replace('_', '-')}"
    values = []
    for item in items:
        try:
            value = float(item)
        except ValueError:
            raise ValueError(f"{flag}: {item!r} in {text!r} is not a number (give comma-separated numbers, for "
                             f"example 1,10,100)") from None
        if not math.isfinite(value):
            raise ValueError(f"{flag}: the values must be finite numbers, got {item!r}")
        values.append(value)
    if len(set(values)) != len(values):
        raise ValueError(f"{flag}: a value is given twice in {text!r}")
    return tuple(values)


def _point_name(point: Dict[str, float]) -> str:
    return ",".join(f"{_label(name)}={value:g}" for name, value in point.items())


@dataclasses.dataclass(frozen=True)
class SweepConfig:
    """A grid of traced hyperparameters over one experiment.

    ``grid``: ``((option, (value, ...)), ...)`` with options from :data:`SWEEPABLE` or ``strategy_hparams.NAME``
    (:data:`STRATEGY_HPARAM`), every combination a point (the
    first option varies slowest); ``select_on``: held-out seeds (not among the reported ``0 .. seeds - 1``) on
    which the best point is chosen; ``metric``: a name from :data:`clloop_jax.metrics.METRIC_NAMES`."""

    experiment: ExperimentConfig
    grid: Tuple[Tuple[str, Tuple[float, ...]], ...]
    select_on: Tuple[int, ...] = ()
    metric: str = "average_performance"

    def __post_init__(self):
        from clloop_jax.metrics import METRIC_NAMES
        if not isinstance(self.experiment, ExperimentConfig):
            raise TypeError(f"experiment must be an ExperimentConfig, got {type(self.experiment).__name__}")
        if self.experiment.boundaries != "known":
            raise ValueError(f"a sweep trains tasks with known boundaries; --boundaries {self.experiment.boundaries} "
                             f"is not supported here")
        grid = tuple((str(name), tuple(float(v) for v in values)) for name, values in self.grid)
        object.__setattr__(self, "grid", grid)
        if not grid or any(not values for _, values in grid):
            raise ValueError(f"grid must name at least one option with at least one value "
                             f"(for example --lam 1,10,100), got {self.grid!r}")
        names = [name for name, _ in grid]
        if len(set(names)) != len(names):
            raise ValueError(f"grid names an option twice: {names}")
        for name in names:
            if name not in SWEEPABLE and not (name.startswith(STRATEGY_HPARAM) and len(name) > len(STRATEGY_HPARAM)):
                raise ValueError(f"--{name.replace('_', '-')} cannot be swept in one program (it changes what is "
                                 f"compiled, or is no number); the options a sweep can vary: "
                                 f"{', '.join('--' + n.replace('_', '-') for n in SWEEPABLE)}")
        select_on = tuple(self.select_on)
        if any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in select_on):
            raise ValueError(f"select_on must be seeds (integers >= 0), got {self.select_on!r}")
        if len(set(select_on)) != len(select_on):
            raise ValueError(f"select_on names a seed twice: {list(select_on)}")
        reported = set(range(self.experiment.seeds))
        if reported & set(select_on):
            raise ValueError(f"--select-on seeds must be held out: {sorted(reported & set(select_on))} "
                             f"{'is' if len(reported & set(select_on)) == 1 else 'are'} among the reported seeds "
                             f"0..{self.experiment.seeds - 1} (choose seeds >= {self.experiment.seeds})")
        object.__setattr__(self, "select_on", select_on)
        if self.metric not in METRIC_NAMES:
            raise ValueError(f"metric must be one of {list(METRIC_NAMES)}, got {self.metric!r}")
        # every point's experiment checked now, before anything is built: an option its source does not use is
        # refused by the experiment itself (ExperimentConfig.unused_options)
        for point in self.points():
            try:
                self.experiment_at(point).train.check_strategy_options()
            except (TypeError, ValueError) as err:
                raise ValueError(f"the point {_point_name(point)}: {err}") from None

    def points(self) -> list:
        """Every point of the grid, as ``{option: value}`` in grid order (the first option varies slowest)."""
        names = [name for name, _ in self.grid]
        return [dict(zip(names, values)) for values in itertools.product(*(v for _, v in self.grid))]

    def experiment_at(self, point: Dict[str, float]) -> ExperimentConfig:
        """The experiment of one grid point: the base with the point's values (what its folder's config.json
        holds, so ``clloop run --config SWEEP/<point>/config.json`` trains that point alone)."""
        e = self.experiment
        parts = {}
        for name, value in point.items():
            if name.startswith(STRATEGY_HPARAM):
                hp = _label(name)
                train = parts.get("train", e.train)
                kept = tuple(item for item in train.strategy_hparams if item.partition("=")[0].strip() != hp)
                parts["train"] = dataclasses.replace(train, strategy_hparams=kept + (f"{hp}={value!r}",))
                continue
            part, field = SWEEPABLE[name]
            parts[part] = dataclasses.replace(parts.get(part, getattr(e, part)), **{field: value})
        return dataclasses.replace(e, **parts)

    def point_name(self, point: Dict[str, float]) -> str:
        """The folder name of a point: ``lam=10`` or ``lam=10,learning_rate=0.001``."""
        return _point_name(point)

    def resolved(self) -> dict:
        """What the sweep's ``config.json`` records."""
        return {"sweep": {"grid": {name: list(values) for name, values in self.grid},
                          "select_on": list(self.select_on), "metric": self.metric},
                "experiment": self.experiment.resolved()}


@dataclasses.dataclass(frozen=True)
class SweepResults:
    """What a sweep found: ``points`` (grid order), the metric's per-seed values on the reported seeds
    (``reported [P, S]``) and the held-out ones (``held_out [P, H]``, H may be 0), the index of the ``best`` point
    and on which seeds it was chosen, the run's results per point (``R [P, S, T, T]``, ``baseline [P, S, T]``) and
    the number of XLA compilations the sweep made."""

    points: list
    reported: "np.ndarray"  # noqa: F821 (NumPy is imported where the results are made)
    held_out: "np.ndarray"  # noqa: F821
    best: int
    chosen_on: str
    R: "np.ndarray"  # noqa: F821
    baseline: "np.ndarray"  # noqa: F821
    compilations: int


def best_point(values, metric: str) -> int:
    """The index of the point whose values (one row per point, one value per seed) have the best mean for
    ``metric`` (the smallest for :data:`LOWER_IS_BETTER`, else the largest); the first of equal ones."""
    import numpy as np
    means = np.asarray([np.mean(v) for v in values])
    target = means.min() if metric in LOWER_IS_BETTER else means.max()
    return int(np.flatnonzero(means == target)[0])


class _CountCompilations:
    """Counts XLA compilations while active (JAX's monitoring events)."""

    EVENT = "/jax/core/compile/backend_compile_duration"

    def __enter__(self):
        import jax.monitoring
        self.count = 0
        jax.monitoring.register_event_duration_secs_listener(self._listen)
        return self

    def _listen(self, name, duration, **kwargs):
        if name == self.EVENT:
            self.count += 1

    def __exit__(self, *exc):
        import jax.monitoring
        jax.monitoring.unregister_event_duration_listener(self._listen)


class _PointTrackers:
    """The sweep's batch mirrored as one tracker run per grid point (a
    :class:`~clloop_jax.workflow.trackers.Tracker` for :func:`~clloop_jax.workflow.execute.execute`): each task's
    rows and traces are cut into points, and each point's trackers see its reported seeds only, as its run folder
    holds them (the held-out seeds choose the point; they are not part of its record). ``finish`` is each point's
    own summary, given by :func:`run_sweep` once the points' folders are written."""

    def __init__(self, groups, experiments, held_out: int, seeds: int):
        self.groups, self.experiments, self.H, self.S = groups, experiments, held_out, seeds

    def _cut(self, x):
        import numpy as np
        x = np.asarray(x)
        return x.reshape((len(self.groups), self.H + self.S) + x.shape[1:])[:, self.H:]

    def start(self, config, seeds, first_task: int = 0) -> None:
        for group, experiment in zip(self.groups, self.experiments):
            group.start(experiment, range(self.S), first_task)

    def task(self, task_index: int, rows, traces) -> None:
        rows, traces = self._cut(rows), {name: self._cut(v) for name, v in traces.items()}
        for p, group in enumerate(self.groups):
            group.task(task_index, rows[p], {name: v[p] for name, v in traces.items()})

    def finish(self, metrics, num_tasks: int) -> None:
        pass   # the batch's summary mixes the points: run_sweep gives each point its own

    def close(self) -> None:
        pass   # run_sweep closes the points' trackers, after their summaries


def run_sweep(sweep: SweepConfig, folder, devices=None, progress=None, log: str = "") -> SweepResults:
    """Trains every point of ``sweep`` on the held-out and the reported seeds as one batch into ``folder`` (a
    :class:`~clloop_jax.workflow.runs.RunFolder`: ``resume`` continues an interrupted sweep), then writes one run
    folder per point, ``sweep.md`` / ``sweep.json`` and a figure per swept option (see the module).

    ``log`` (``"tensorboard,wandb"``, see :mod:`clloop_jax.workflow.trackers`) mirrors every grid point live as a
    run of its own, its reported seeds only: TensorBoard's files in ``SWEEP/tensorboard/<point>/``, the W&B runs
    named after the points in a group named after the sweep's folder."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from clloop_jax import report
    from clloop_jax.workflow.execute import execute
    from clloop_jax.workflow.runs import RunFolder
    from clloop_jax.workflow.trackers import Trackers, open_trackers, tracker_names
    tracker_names(log)   # every tracker's package, before anything is compiled
    points = sweep.points()
    experiments = [sweep.experiment_at(p) for p in points]
    names = [sweep.point_name(p) for p in points]
    run, _ = experiments[0].build()
    seeds = list(sweep.select_on) + list(range(sweep.experiment.seeds))
    H, S, P = len(sweep.select_on), sweep.experiment.seeds, len(points)
    hps = [e.hparams_of(run) for e in experiments]
    member_hp = jax.tree.map(lambda *v: jnp.repeat(jnp.stack(v), len(seeds), axis=0), *hps)
    members = [f"{name} seed {s}" for name in names for s in seeds]
    with folder, contextlib.ExitStack() as stack:   # locked from the first checkpoint to the last summary file
        groups = [stack.enter_context(Trackers(open_trackers(log, folder.path, point=name))) for name in names]
        trackers = [_PointTrackers(groups, experiments, H, S)] if log else []
        with _CountCompilations() as counted:
            _, res = execute(run, member_hp, seeds * P, folder=folder, config=sweep, label="sweep", devices=devices,
                             progress=progress, batched_hp=True, members=members, write_results=False,
                             trackers=trackers)
        R = np.asarray(res.R, np.float64).reshape(P, H + S, *res.R.shape[1:])
        baseline = np.asarray(res.baseline, np.float64).reshape(P, H + S, -1)
        traces = {k: np.asarray(v).reshape(P, H + S, *v.shape[1:]) for k, v in res.traces.items()}
        for p, (name, experiment) in enumerate(zip(names, experiments)):
            point_folder = RunFolder(os.path.join(folder.path, name), overwrite=True)
            with point_folder:
                point_folder.write_config(experiment, range(S))
                point_folder.write_results(R[p, H:], baseline[p, H:], {k: v[p, H:] for k, v in traces.items()},
                                           list(range(S)))
        metric = lambda r, b: report.summary(r, b)[sweep.metric]["values"]  # noqa: E731
        reported = np.asarray([metric(R[p, H:], baseline[p, H:]) for p in range(P)])
        held_out = np.asarray([metric(R[p, :H], baseline[p, :H]) for p in range(P)]) if H else np.zeros((P, 0))
        best = best_point(held_out if H else reported, sweep.metric)
        results = SweepResults(points, reported, held_out, best, f"held-out seeds {list(sweep.select_on)}" if H
                               else "the reported seeds (optimistic: no seed was held out)", R[:, H:],
                               baseline[:, H:], counted.count)
        _write_summary(sweep, results, folder)
        for p, group in enumerate(groups):
            group.finish(R[p, H:], baseline[p, H:])
    return results


def _write_summary(sweep: SweepConfig, res: SweepResults, folder) -> None:
    import numpy as np

    from clloop_jax import report
    from clloop_jax.metrics import METRIC_MEANINGS
    names = [sweep.point_name(p) for p in res.points]
    options = [name for name, _ in sweep.grid]
    H = res.held_out.shape[1]
    held = f" | held-out mean ({H} seed{'s' if H > 1 else ''})" if H else ""
    head = ("| " + " | ".join(_label(o) for o in options) + held
            + f" | {sweep.metric} (reported seeds, mean ± 95% interval) | |")
    lines = [f"Sweep of {', '.join(_label(o) for o in options)} over {len(res.points)} points x "
             f"{res.reported.shape[1]} reported seeds"
             + (f" (+ {H} held-out)" if H else "") + f"; metric: {sweep.metric}, {METRIC_MEANINGS[sweep.metric]}.",
             "", head, "|" + "---:|" * (len(options) + (2 if H else 1)) + "---|"]
    for p, point in enumerate(res.points):
        cells = [f"{point[o]:g}" for o in options]
        if H:
            cells.append(f"{np.mean(res.held_out[p]):.4f}")
        cells += [report.cell(res.reported[p]), "best" if p == res.best else ""]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", f"Best: {names[res.best]}, chosen on {res.chosen_on}; on the reported seeds "
              f"{report.cell(res.reported[res.best])}. {res.compilations} XLA compilations for the whole sweep."]
    folder.write_text("sweep.md", "\n".join(lines) + "\n")
    folder.write_json("sweep.json", {
        "metric": sweep.metric, "grid": {name: list(v) for name, v in sweep.grid}, "select_on": list(sweep.select_on),
        "points": [{"values": point, "folder": names[p], "reported": res.reported[p], "held_out": res.held_out[p],
                    "reported_mean": float(np.mean(res.reported[p]))} for p, point in enumerate(res.points)],
        "best": {"values": res.points[res.best], "folder": names[res.best], "chosen_on": res.chosen_on},
        "compilations": res.compilations})
    for option, values in sweep.grid:   # the metric against each option, the others at the best point's values
        if len(values) < 2:
            continue
        rest = {o: v for o, v in res.points[res.best].items() if o != option}
        idx = [p for p, point in enumerate(res.points) if all(point[o] == v for o, v in rest.items())]
        report.plot_sweep([res.points[p][option] for p in idx], res.R[idx], res.baseline[idx],
                          path=folder.file(f"sweep_{_label(option)}.png"), metrics=(sweep.metric,),
                          xlabel=_label(option), title=f"{sweep.metric} against {_label(option)}" + (
                              f" ({_point_name(rest)})" if rest else "") + "; mean, 95% interval")


def sweep_text(res: SweepResults, sweep: SweepConfig) -> str:
    """One line on the choice, for the command line."""
    from clloop_jax import report
    return (f"best: {sweep.point_name(res.points[res.best])} (chosen on {res.chosen_on}); {sweep.metric} on the "
            f"reported seeds {report.cell(res.reported[res.best])}")


# ----- the command line: clloop sweep ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SweepArgs:
    """Train a grid of hyperparameters over seeds as one compiled program: one run folder per point, a table and a
    figure of the metric against each swept value, and the best point chosen on held-out seeds."""

    out: str
    """the folder to write (required): the batched run's checkpoints, one run folder per grid point, sweep.md/json"""
    experiment: tyro.conf.OmitArgPrefixes[ExperimentConfig] = ExperimentConfig()
    select_on: str = ""
    """held-out seeds, comma-separated (not among the reported 0..seeds-1), on which the best point is chosen;
    unset: chosen on the reported seeds (an optimistic estimate)"""
    metric: str = "average_performance"
    """the metric that picks the best point (average_forgetting: the smallest, the others: the largest)"""
    overwrite: bool = False
    """replace the folder if it exists (an existing folder is refused otherwise)"""
    resume: bool = False
    """continue an interrupted sweep from its last checkpoint"""
    quiet: bool = False
    """print nothing"""
    no_cache: bool = False
    """leave JAX's persistent compilation cache off (it is kept in ~/.cache/clloop_jax/xla or CLLOOP_JAX_CACHE_DIR)"""
    devices: Optional[int] = None
    """spread the members (points x seeds) over this many devices (0 = every device); unset: the default device"""
    log: str = ""
    """mirror each grid point live to these trackers, comma-separated: tensorboard (event files in
    OUT/tensorboard/POINT), wandb (offline W&B runs in OUT/wandb, one per point, grouped by the sweep); each an
    optional extra"""


def split_grid(argv: Sequence[str]):
    """``(grid, rest)``: the swept options of ``argv`` (those of :data:`SWEEPABLE` given comma-separated values,
    ``--lam 1,10,100`` or ``--lam=1,10,100``, and the strategy's own hyperparameters given so among
    ``--strategy-hparams alpha=0.1,0.5 beta=2``) as ``((option, values), ...)`` in the order given, and the other
    arguments. ``ValueError`` naming the option for values that are no numbers, and when nothing is swept."""
    flags = {f"--{name.replace('_', '-')}": name for name in SWEEPABLE}
    flags.update({f"--{name}": name for name in SWEEPABLE})
    argv, grid, rest, i = list(argv), [], [], 0
    while i < len(argv):
        flag, eq, value = argv[i].partition("=")
        if flag in ("--strategy-hparams", "--strategy_hparams"):
            end = i + 1
            while not eq and end < len(argv) and not argv[end].startswith("--"):
                end += 1
            fixed = []
            for item in ([value] if eq else argv[i + 1:end]):
                name, is_set, values = item.partition("=")
                if not (is_set and "," in values):
                    fixed.append(item)
                    continue
                option = STRATEGY_HPARAM + name.strip()
                if option in dict(grid):
                    raise ValueError(f"--strategy-hparams: {name.strip()} is given twice")
                grid.append((option, parse_values(f"strategy_hparams {name.strip()}", values)))
            rest += ["--strategy-hparams", *fixed] if fixed else []
            i = end
            continue
        if flag in flags and not eq and i + 1 < len(argv):
            value, step = argv[i + 1], 2
        else:
            step = 1
        if flag in flags and (eq or step == 2) and "," in value:
            if flags[flag] in dict(grid):
                raise ValueError(f"{flag} is given twice")
            grid.append((flags[flag], parse_values(flags[flag], value)))
        else:
            rest += argv[i:i + step]
        i += step
    if not grid:
        raise ValueError("nothing to sweep: give at least one option comma-separated values (for example --lam "
                         "1,10,100 --learning-rate 1e-3,3e-3); the options a sweep can vary: "
                         + ", ".join(f"--{n.replace('_', '-')}" for n in SWEEPABLE)
                         + ", and a strategy's own with --strategy-hparams NAME=1,2,3")
    return tuple(grid), rest


def _seeds(text: str) -> Tuple[int, ...]:
    items = [t.strip() for t in text.split(",")] if text.strip() else []
    if not all(t.isdigit() for t in items):
        raise ValueError(f"--select-on must be comma-separated seeds (integers >= 0), got {text!r}")
    return tuple(int(t) for t in items)


def sweep_command(args: SweepArgs, grid) -> SweepResults:
    """``clloop sweep``: every check first (the grid, the held-out seeds, the folder), then :func:`run_sweep`."""
    from clloop_jax.workflow.compilation import enable_compilation_cache
    from clloop_jax.workflow.runs import RunFolder
    from clloop_jax.workflow.trackers import tracker_names
    sweep = SweepConfig(args.experiment, grid, select_on=_seeds(args.select_on), metric=args.metric)
    tracker_names(args.log)   # a bad --log is refused before the folder is made
    folder = RunFolder(args.out, overwrite=args.overwrite, resume=args.resume)
    enable_compilation_cache(enabled=not args.no_cache)
    from clloop_jax.workflow.cli import devices_option   # here: the command line imports this module
    res = run_sweep(sweep, folder, devices=devices_option(args.devices), log=args.log)
    if not args.quiet:
        print(open(folder.file("sweep.md")).read())
        print(f"{sweep_text(res, sweep)}\nwrote {args.out} (sweep.md, sweep.json, sweep_<option>.png; one run folder "
              f"per point: {', '.join(sweep.point_name(p) for p in res.points)})", flush=True)
    return res
