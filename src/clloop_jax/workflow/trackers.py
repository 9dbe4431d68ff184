"""Live mirrors of a run folder: TensorBoard event files and Weights & Biases runs (``clloop run --log ...``).

The run folder stays the record of a run; a tracker only shows it while it runs.
:func:`~clloop_jax.workflow.execute.execute` calls each tracker after every finished task, once that task's checkpoint
is written (so a tracker never shows a task the folder does not hold), and at the end with the run's summary. Every
tracker logs the same scalars (tasks numbered from 1, as in tables and figures):

* ``score/task_{j}/mean`` and ``score/task_{j}/seed_{k}``: the score on task j after each finished task, the mean
  over seeds (a row of the performance matrix) and seed k's; step: the tasks finished;
* ``episode/{name}/mean``: each per-episode record (loss, score, penalty, ...), the mean over seeds; step: the
  episodes trained, over all tasks;
* ``summary/{metric}/mean`` and ``summary/{metric}/ci95``: each metric of ``summary.json``, the mean over seeds and
  the half-width of its 95% interval (left out with one seed); step: the run's task count.

A resumed run logs from the first task it runs: the tasks restored from the checkpoint are not logged again
(TensorBoard shows them from the interrupted run's event file, next to the resumed run's one, on the same steps; W&B
gets a new run tagged ``resumed``).

Each tracker needs its package, an optional extra of clloop_jax: ``pip install 'clloop_jax[tensorboard]'``
(tensorboardX) or ``'clloop_jax[wandb]'``.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Protocol

import numpy as np

__all__ = ["TRACKERS", "TensorBoardTracker", "Tracker", "Trackers", "WandbTracker", "episode_scalars", "open_trackers",
           "summary_scalars", "task_scalars", "tracker_names"]

#: The trackers ``--log`` takes: name -> (the module it needs, the pip extra that installs it).
TRACKERS = {"tensorboard": ("tensorboardX", "tensorboard"), "wandb": ("wandb", "wandb")}


class Tracker(Protocol):
    """What :func:`~clloop_jax.workflow.execute.execute` calls: ``start`` once the folder holds the run's
    configuration (``first_task``: the index of the first task this run trains, above 0 when resumed), ``task``
    after each finished task (``rows`` ``[S, T]``: each seed's score on every task; ``traces``: ``{name: [S, E]}``,
    every per-episode record),
    ``finish`` with the summary's metrics (:func:`clloop_jax.report.summary`) and the run's task count, and
    ``close`` at the end, also when the run stopped early."""

    def start(self, config: dict, seeds: Sequence[int], first_task: int = 0) -> None: ...

    def task(self, task_index: int, rows: np.ndarray, traces: Mapping[str, np.ndarray]) -> None: ...

    def finish(self, metrics: Mapping[str, dict], num_tasks: int) -> None: ...

    def close(self) -> None: ...


def task_scalars(rows, seeds) -> dict[str, float]:
    """``{tag: value}`` of one finished task: ``score/task_{j}/mean`` and ``score/task_{j}/seed_{k}``; a task not
    evaluated after this one (NaN: ``RunConfig(evaluate_every=k > 1)``) is left out."""
    rows = np.asarray(rows, np.float64)
    out = {}
    for j in range(rows.shape[1]):
        if np.isnan(rows[:, j]).all():
            continue
        out[f"score/task_{j + 1}/mean"] = float(rows[:, j].mean())
        out.update({f"score/task_{j + 1}/seed_{seed}": float(rows[s, j]) for s, seed in enumerate(seeds)})
    return out


def episode_scalars(traces: Mapping[str, np.ndarray]) -> list:
    """One ``{tag: value}`` per episode of a task: ``episode/{name}/mean``, the mean over seeds of each record; a
    record not measured in an episode (NaN: a monitor measured only every few episodes) is left out there. Traces
    of one summary per task (``[S]`` each: ``RunConfig(traces="tasks")``) give one entry."""
    means = {name: np.asarray(v, np.float64).reshape(np.shape(v)[0], (np.shape(v) + (1,))[1], -1).mean(axis=(0, 2))
             for name, v in sorted(traces.items())}
    episodes = len(next(iter(means.values()))) if means else 0
    return [{f"episode/{name}/mean": float(m[e]) for name, m in means.items() if np.isfinite(m[e])}
            for e in range(episodes)]


def summary_scalars(metrics: Mapping[str, dict]) -> dict[str, float]:
    """``{tag: value}`` of the run's summary: ``summary/{metric}/mean`` and ``/ci95``, the finite ones."""
    out = {}
    for name, stats in metrics.items():
        for key, tag in (("mean", "mean"), ("ci", "ci95")):
            if np.isfinite(stats[key]):
                out[f"summary/{name}/{tag}"] = float(stats[key])
    return out


class TensorBoardTracker:
    """Event files under ``<folder>/tensorboard/`` (tensorboardX): ``tensorboard --logdir RUN/tensorboard``, or
    ``--logdir`` a comparison's folder to see its strategies side by side. The configuration is a text entry.
    ``point``: one run of several in the folder (a sweep's grid point), in ``<folder>/tensorboard/<point>/``."""

    def __init__(self, folder: str, point: str | None = None):
        self.logdir = os.path.join(os.fspath(folder), "tensorboard", *([point] if point else []))
        self.writer, self.seeds = None, ()

    def start(self, config: dict, seeds: Sequence[int], first_task: int = 0) -> None:
        from tensorboardX import SummaryWriter
        self.writer, self.seeds = SummaryWriter(logdir=self.logdir, flush_secs=10), list(seeds)
        text = json.dumps({"config": config, "seeds": self.seeds, "first_task": first_task + 1}, indent=1)
        self.writer.add_text("config", "\n".join("    " + line for line in text.splitlines()), first_task)

    def task(self, task_index: int, rows: np.ndarray, traces: Mapping[str, np.ndarray]) -> None:
        episodes = episode_scalars(traces)
        for e, scalars in enumerate(episodes):
            for tag, value in scalars.items():
                self.writer.add_scalar(tag, value, task_index * len(episodes) + e)
        for tag, value in task_scalars(rows, self.seeds).items():
            self.writer.add_scalar(tag, value, task_index + 1)
        self.writer.flush()

    def finish(self, metrics: Mapping[str, dict], num_tasks: int) -> None:
        for tag, value in summary_scalars(metrics).items():
            self.writer.add_scalar(tag, value, num_tasks)
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


class WandbTracker:
    """A Weights & Biases run in ``<folder>/wandb/`` (project ``clloop_jax``, named after the folder, the run's
    configuration as its config): offline unless ``WANDB_MODE`` says otherwise (``wandb sync RUN/wandb/offline-run-*``
    uploads it later). Scores are plotted against ``tasks_finished``, per-episode records against ``episode``; the
    summary's metrics are the W&B run's summary. ``group``: the W&B group of several runs (a sweep's points)."""

    def __init__(self, folder: str, name: str | None = None, group: str | None = None):
        self.folder = os.fspath(folder)
        self.name = name or os.path.basename(os.path.normpath(self.folder))
        self.group = group
        self.run, self.seeds, self.finished = None, (), False

    def start(self, config: dict, seeds: Sequence[int], first_task: int = 0) -> None:
        import wandb
        self.seeds = list(seeds)
        mode = None if os.environ.get("WANDB_MODE") else "offline"
        self.run = wandb.init(project="clloop_jax", dir=self.folder, name=self.name, group=self.group, mode=mode,
                              config={**config, "seeds": self.seeds}, tags=["resumed"] if first_task else None,
                              settings=wandb.Settings(silent=True, console="off"))
        self.run.define_metric("tasks_finished")
        self.run.define_metric("score/*", step_metric="tasks_finished")
        self.run.define_metric("episode")
        self.run.define_metric("episode/*", step_metric="episode")

    def task(self, task_index: int, rows: np.ndarray, traces: Mapping[str, np.ndarray]) -> None:
        episodes = episode_scalars(traces)
        for e, scalars in enumerate(episodes):
            self.run.log({"episode": task_index * len(episodes) + e, **scalars})
        self.run.log({"tasks_finished": task_index + 1, **task_scalars(rows, self.seeds)})

    def finish(self, metrics: Mapping[str, dict], num_tasks: int) -> None:
        self.run.summary.update(summary_scalars(metrics))
        self.finished = True

    def close(self) -> None:
        if self.run is not None:
            self.run.finish(exit_code=0 if self.finished else 1)   # a run that stopped early shows as failed
            self.run = None


class Trackers:
    """Several trackers as one, for :func:`~clloop_jax.workflow.execute.execute`: converts what a task returns to
    NumPy once, computes the summary once, and closes every tracker (also when one fails to)."""

    def __init__(self, trackers: Sequence[Tracker] = ()):
        self.trackers = list(trackers)

    def __enter__(self):
        return self

    def __exit__(self, kind, error, traceback) -> None:
        if error is None:
            self.close()
            return
        try:   # the run's own error (a stop by a signal, a divergence) is the one reported, not a tracker's
            self.close()
        except Exception as err:  # noqa: BLE001 - said on stderr, then the run's error goes on
            print(f"a tracker failed to close after the run stopped: {type(err).__name__}: {err}", file=sys.stderr,
                  flush=True)

    def start(self, config, seeds, first_task: int = 0) -> None:
        if self.trackers:
            from clloop_jax.workflow.files import jsonable
            config = jsonable(config)
            for tracker in self.trackers:
                tracker.start(config if isinstance(config, dict) else {"config": config}, list(seeds), first_task)

    def task(self, task_index: int, rows, traces) -> None:
        if self.trackers:
            rows, traces = np.asarray(rows), {name: np.asarray(v) for name, v in traces.items()}
            for tracker in self.trackers:
                tracker.task(task_index, rows, traces)

    def finish(self, R, baseline) -> None:
        """``R`` ``[S, T, T]`` and ``baseline`` ``[S, T]``: the summary of ``summary.json``."""
        if self.trackers:
            from clloop_jax import report
            metrics = report.summary(np.asarray(R, np.float64), np.asarray(baseline, np.float64))
            for tracker in self.trackers:
                tracker.finish(metrics, int(np.shape(R)[1]))

    def close(self) -> None:
        with contextlib.ExitStack() as stack:   # every tracker is closed, also when one fails to
            for tracker in self.trackers:
                stack.callback(tracker.close)


def tracker_names(text: str | Sequence[str]) -> tuple:
    """The tracker names of ``--log`` (``"tensorboard,wandb"``; empty: none), each checked to be known, named once
    and importable: a ``ValueError`` naming ``--log`` and the valid names, or an ``ImportError`` naming the pip extra
    to install. Imports the trackers' packages and touches no file."""
    items = [n.strip() for n in text.split(",")] if isinstance(text, str) else [str(n).strip() for n in text]
    items = [] if items == [""] else items
    valid = ", ".join(TRACKERS)
    for name in items:
        if name not in TRACKERS:
            raise ValueError(f"--log: unknown tracker {name!r}; the valid names are {valid} (comma-separated)")
    if len(set(items)) != len(items):
        raise ValueError(f"--log names a tracker twice: {','.join(items)!r}; the valid names are {valid}")
    for name in items:
        module, extra = TRACKERS[name]
        try:
            importlib.import_module(module)
        except ImportError as err:
            raise ImportError(f"--log {name} needs the {module} package ({err}): pip install "
                              f"'clloop_jax[{extra}]'") from None
    return tuple(items)


def open_trackers(names: str | Sequence[str], folder: str, label: str | None = None,
                  point: str | None = None) -> list:
    """The trackers ``names`` (see :func:`tracker_names`) mirroring the run folder ``folder``; ``label`` names the
    W&B run (default: the folder's name). ``point``: one run of several in ``folder`` (a sweep's grid point):
    TensorBoard's files go to ``folder/tensorboard/<point>/`` (``tensorboard --logdir folder/tensorboard`` shows the
    points side by side) and the W&B run is named ``point`` in a group named after the folder. Nothing is written
    until :func:`~clloop_jax.workflow.execute.execute` starts them."""
    group = os.path.basename(os.path.normpath(os.fspath(folder))) if point else None
    made = {"tensorboard": lambda: TensorBoardTracker(folder, point),
            "wandb": lambda: WandbTracker(folder, point or label, group)}
    return [made[name]() for name in tracker_names(names)]

