"""Reports of runs over seeds: summary tables with 95% intervals, paired differences, the results schema, and plots.

Every experiment script and the command line use these functions; they take plain NumPy arrays:

* ``R [seeds, T, T]`` and ``baseline [seeds, T]``: the performance matrices and untrained scores of one configuration;
* ``traces``: ``{name: [seeds, T, episodes]}``, the run's per-episode records, or ``{name: [seeds, T]}``, one
  summary per task (``RunConfig(traces="tasks")``), drawn as one point per task.

A matrix whose rows were not all evaluated in full (``RunConfig(evaluate_every=k > 1)``: NaN off the diagonal in
the skipped rows) is read as :mod:`clloop_jax.metrics` reads it; the plots leave its NaN cells blank and draw each
task's line through the rows that evaluated it. Long streams (more than :data:`MATRIX_TEXT_TASKS` tasks) get a heatmap
without numbers in the cells and, in :func:`plot_scores`, the just-learned and the mean scores instead of one line per
task.

The results schema (:func:`summary`) is a JSON-ready dict ``{metric: {"mean", "ci", "n", "values"}}`` for each of
:data:`clloop_jax.metrics.METRIC_NAMES`, the ``ci`` being the half-width of the Student t interval over seeds.
The plots build :class:`matplotlib.figure.Figure` objects directly, without pyplot and without choosing a backend,
so they change no global state (``plt.get_fignums()`` and the backend stay as they were); each returns its figure,
which Jupyter shows inline as a cell's value, and writes it as PNG when given a ``path`` (to a temporary name, then
renamed).
"""

from __future__ import annotations

import io
import os
import warnings
from typing import Dict, Mapping, Optional, Sequence

import numpy as np
from matplotlib.figure import Figure

from clloop_jax import metrics as metrics_lib

__all__ = ["cell", "summary", "summary_table", "paired_differences", "paired_table", "plot_matrix", "plot_scores",
           "plot_divergence", "plot_comparison", "plot_sweep", "DIVERGENCE_TRACES", "MATRIX_TEXT_TASKS"]


#: Up to this many tasks, :func:`plot_matrix` writes each cell's value and :func:`plot_scores` draws one line per
#: task; longer streams get a plain heatmap and summary lines.
MATRIX_TEXT_TASKS = 20


def cell(values, precision: int = 3, signed: bool = True) -> str:
    """``"mean ± half-width"`` of the 95% Student t interval over ``values`` (the mean alone for one value)."""
    values = np.asarray(values, np.float64).ravel()
    values = values[np.isfinite(values)]
    if values.size == 0:
        return "-"
    m, h = metrics_lib.mean_ci(values)
    fmt = f"{{:+.{precision}f}}" if signed else f"{{:.{precision}f}}"
    return fmt.format(m) + (f" ± {h:.{precision}f}" if values.size > 1 and np.isfinite(h) else "")


def summary(R, baseline=None) -> Dict[str, dict]:
    """The results schema: per metric, the mean, the 95% interval half-width, the count and every seed's value."""
    R = np.asarray(R, np.float64)
    if R.ndim == 2:
        R = R[None]
    per_seed = metrics_lib.summarize(R, None if baseline is None else np.asarray(baseline, np.float64))
    out = {}
    for name in metrics_lib.METRIC_NAMES:
        values = np.atleast_1d(np.asarray(per_seed[name], np.float64))
        finite = values[np.isfinite(values)]
        if finite.size:
            m, h = metrics_lib.mean_ci(finite)
            m, h = float(m), (float(h) if finite.size > 1 else float("nan"))
        else:
            m, h = float("nan"), float("nan")
        out[name] = {"mean": m, "ci": h, "n": int(finite.size), "values": [float(v) for v in values]}
    return out


def summary_table(results: Mapping[str, tuple], extra: Optional[Mapping[str, Mapping[str, str]]] = None) -> str:
    """A markdown table, one row per configuration: ``results = {name: (R [S, T, T], baseline [S, T])}``; ``extra``
    adds columns ``{name: {column: text}}`` placed before the metrics."""
    extra = extra or {}
    extra_cols = list(dict.fromkeys(c for cols in extra.values() for c in cols))
    cols = list(metrics_lib.METRIC_NAMES)
    lines = ["| strategy | " + " | ".join(extra_cols + cols) + " |",
             "|---|" + "---:|" * (len(extra_cols) + len(cols))]
    for name, (R, baseline) in results.items():
        per_seed = metrics_lib.summarize(np.asarray(R, np.float64), np.asarray(baseline, np.float64))
        row = [extra.get(name, {}).get(c, "-") for c in extra_cols] + [cell(per_seed[c]) for c in cols]
        lines.append(f"| {name} | " + " | ".join(row) + " |")
    return "\n".join(lines)


def paired_differences(results: Mapping[str, tuple], reference: str,
                       metric: str = "average_performance") -> Dict[str, dict]:
    """``metric`` of each configuration minus that of ``reference`` on the same seeds: mean, 95% interval, count.

    Pairing removes the spread that redrawing the world or the data adds to both; it needs the same seeds in the same
    order for every configuration (checked by the count)."""
    if reference not in results:
        raise ValueError(f"reference must be one of {list(results)}, got {reference!r}")
    if metric not in metrics_lib.METRIC_NAMES:
        raise ValueError(f"metric must be one of {list(metrics_lib.METRIC_NAMES)}, got {metric!r}")

    def values(name):
        R, b = results[name]
        return np.atleast_1d(metrics_lib.summarize(np.asarray(R, np.float64), np.asarray(b, np.float64))[metric])

    ref = values(reference)
    out = {}
    for name in results:
        if name == reference:
            continue
        v = values(name)
        if v.shape != ref.shape:
            raise ValueError(f"paired differences need the same seeds: {name!r} has {v.size} runs, "
                             f"{reference!r} has {ref.size}")
        d = v - ref
        m, h = metrics_lib.mean_ci(d)
        out[name] = {"mean": float(m), "ci": float(h) if d.size > 1 else float("nan"), "n": int(d.size),
                     "values": [float(x) for x in d]}
    return out


def paired_table(results: Mapping[str, tuple], reference: str, metric: str = "average_performance") -> str:
    """Markdown: each configuration's paired difference in ``metric`` from ``reference``."""
    diffs = paired_differences(results, reference, metric)
    lines = [f"| strategy | {metric} minus {reference}'s (paired by seed) |", "|---|---:|"]
    for name, d in diffs.items():
        lines.append(f"| {name} | {cell(d['values'])} |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------------
# Plots
# ----------------------------------------------------------------------------------------------------------------


_DPI = 120


class ReportFigure(Figure):
    """A :class:`matplotlib.figure.Figure` that also renders itself as PNG for Jupyter (``_repr_png_``), so a
    helper's figure shows inline as a cell's value whether or not pyplot or an inline backend was ever loaded."""

    def _repr_png_(self) -> bytes:
        buf = io.BytesIO()
        self.savefig(buf, format="png", dpi=_DPI, bbox_inches="tight")
        return buf.getvalue()


def _new_figure(figsize) -> Figure:
    """A figure owned by no backend and unknown to pyplot: building it changes no global state."""
    return ReportFigure(figsize=figsize)


def _check_path(path):
    if path is not None and not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a file name (str or os.PathLike) or None, got {type(path).__name__}")
    return None if path is None else os.fspath(path)


def _save(fig, path: str) -> str:
    """Write ``fig`` as PNG to a temporary name beside ``path``, then rename it onto ``path`` (atomic)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)) or ".", exist_ok=True)
    tmp = path + ".tmp.png"
    fig.savefig(tmp, format="png", dpi=_DPI, bbox_inches="tight")
    os.replace(tmp, path)
    return path


def _finish(fig: Figure, path) -> Figure:
    if path is not None:
        _save(fig, path)
    return fig


def plot_matrix(R, path=None, title: str = "performance matrix") -> Figure:
    """Heatmap of the mean ``R`` over seeds: row i = after training task i, column j = score on task j.

    ``R``: ``[S, T, T]`` (averaged over seeds) or ``[T, T]``. Returns the figure (its image holds the mean matrix);
    with ``path``, also writes it there as PNG (atomically)."""
    path = _check_path(path)
    R = np.asarray(R, np.float64)
    if R.ndim not in (2, 3) or R.shape[-1] != R.shape[-2]:
        raise ValueError(f"R must be [seeds, T, T] or [T, T], got shape {R.shape}")
    mean = R.mean(axis=0) if R.ndim == 3 else R
    T = mean.shape[0]
    small = T <= MATRIX_TEXT_TASKS
    fig = _new_figure((1.2 * T + 2, 1.0 * T + 1.5) if small else (9, 8))
    ax = fig.add_subplot()
    image = ax.imshow(mean, cmap="viridis", vmin=min(-1.0, float(np.nanmin(mean))), vmax=max(1.0, float(np.nanmax(mean))),
                      interpolation="nearest")
    if small:
        for i in range(T):
            for j in range(T):
                if np.isfinite(mean[i, j]):
                    ax.text(j, i, f"{mean[i, j]:+.2f}", ha="center", va="center",
                            color="white" if mean[i, j] < 0.3 else "black")
        ax.set_xticks(range(T), [f"task {j + 1}" for j in range(T)])
        ax.set_yticks(range(T), [f"after task {i + 1}" for i in range(T)])
    ax.set_xlabel("evaluated on")
    ax.set_ylabel("trained up to")
    ax.set_title(title)
    fig.colorbar(image, ax=ax, shrink=0.8)
    return _finish(fig, path)


def _episodes_axis(values, per_task: bool = False):
    """``[S, T, E]`` (or ``[T, E]``; with ``per_task``, ``[S, T]`` or ``[T]``: ``E = 1``) -> mean over seeds,
    concatenated over tasks: ``(x [T*E], y [T*E], boundaries)``."""
    values = np.asarray(values, np.float64)
    if per_task:  # [S, T] or [T]: one summary per task
        values = values[..., None]
    if values.ndim == 3:
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # episodes measured on no seed stay NaN
            mean = np.nanmean(values, axis=0)
    else:
        mean = values
    T, E = mean.shape
    return np.arange(T * E), mean.reshape(-1), [t * E for t in range(1, T)]


def plot_scores(R, traces: Mapping[str, np.ndarray], path=None, title: str = "scores over training",
                per_task: bool = False) -> Figure:
    """The training batch's score per episode (mean over seeds) and each task's evaluated score after every task,
    on one time axis with the task boundaries marked.

    ``R``: ``[S, T, T]`` or ``[T, T]``; ``traces["score"]`` (optional): ``[S, T, E]`` or ``[T, E]``, or with
    ``per_task`` one summary per task, ``[S, T]`` or ``[T]``. Returns the figure (a grey line of the training
    scores, then one line per task with the mean ``R[:, j]`` through the rows that evaluated it; beyond
    :data:`MATRIX_TEXT_TASKS` tasks, the diagonal ``R[i, i]`` and the mean over the tasks learned so far at the rows
    evaluated in full); with ``path``, also writes it there as PNG (atomically)."""
    path = _check_path(path)
    R = np.asarray(R, np.float64)
    R = R if R.ndim == 3 else R[None]
    T = R.shape[1]
    fig = _new_figure((8, 4))
    ax = fig.add_subplot()
    E = 1
    if "score" in traces:
        x, y, bounds = _episodes_axis(traces["score"], per_task)
        E = len(x) // T
        ax.plot(x, y, color="0.6", lw=1, label="training batch (current task)" + (", task mean" if per_task else ""))
    mean = R.mean(axis=0)
    ends = np.array([(i + 1) * E - 1 for i in range(T)])
    if T <= MATRIX_TEXT_TASKS:
        for j in range(T):
            keep = np.isfinite(mean[:, j])
            ax.plot(ends[keep], mean[keep, j], marker="o", label=f"task {j + 1} (evaluated)")
        for t in range(1, T):
            ax.axvline(t * E - 0.5, color="k", ls=":", lw=1)
    else:
        ax.plot(ends, np.diagonal(mean), lw=1, label="task just learned (R[i, i])")
        full = ~np.isnan(mean).any(axis=1)
        seen = np.array([np.mean(mean[i, :i + 1]) for i in range(T)])
        ax.plot(ends[full], seen[full], marker="o", ms=3, label="mean over the tasks learned so far")
    ax.set_xlabel("task" if per_task else "episode (update)")
    ax.set_ylabel("normalized score")
    ax.set_title(title)
    ax.legend(fontsize=8, loc="lower left")
    return _finish(fig, path)


DIVERGENCE_TRACES = ("penalty", "param_l2", "param_relative", "fisher_distance", "functional")


def plot_divergence(traces: Mapping[str, np.ndarray], path=None, title: str = "divergence and penalty",
                    per_task: bool = False) -> Figure:
    """Penalty and every divergence the run recorded, per episode (mean over seeds), task boundaries marked.

    One panel per name of :data:`DIVERGENCE_TRACES` present in ``traces`` (each ``[S, T, E]`` or ``[T, E]``; with
    ``per_task``, one summary per task, ``[S, T]`` or ``[T]``), in that order; episodes a trace did not measure (NaN) are left out of its line. Returns the figure; with ``path``, also
    writes it there as PNG (atomically)."""
    path = _check_path(path)
    names = [n for n in DIVERGENCE_TRACES if n in traces]
    if not names:
        raise ValueError(f"traces must hold at least one of {list(DIVERGENCE_TRACES)}, got {sorted(traces)}")
    fig = _new_figure((8, 1.8 * len(names) + 0.5))
    axes = fig.subplots(len(names), 1, sharex=True, squeeze=False)
    for ax, name in zip(axes[:, 0], names):
        x, y, bounds = _episodes_axis(traces[name], per_task)
        if per_task:
            bounds = []
        keep = np.isfinite(y)
        ax.plot(x[keep], y[keep], marker="o" if keep.sum() < len(y) else None, ms=3)
        for b in bounds:
            ax.axvline(b - 0.5, color="k", ls=":", lw=1)
        ax.set_ylabel(name, fontsize=8)
    axes[0, 0].set_title(title)
    axes[-1, 0].set_xlabel("task" if per_task else "episode (update)")
    return _finish(fig, path)


def plot_comparison(results: Mapping[str, tuple], path=None,
                    metrics: Sequence[str] = ("average_performance", "backward_transfer"),
                    title: str = "strategies compared (mean, 95% interval over seeds)") -> Figure:
    """Bars of each metric per configuration with their 95% intervals.

    ``results = {name: (R [S, T, T], baseline [S, T])}``; one panel per metric, one bar per configuration (its
    height the mean of :func:`summary`, its error bar the interval's half-width). Returns the figure; with ``path``,
    also writes it there as PNG (atomically)."""
    path = _check_path(path)
    metrics = _check_metrics(metrics)
    names = list(results)
    if not names:
        raise ValueError("results must hold at least one configuration, got none")
    fig = _new_figure((3.2 * len(metrics) + 1, 3.5))
    axes = fig.subplots(1, len(metrics), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        stats = [summary(*results[n])[metric] for n in names]
        means = [s["mean"] for s in stats]
        errs = [0.0 if not np.isfinite(s["ci"]) else s["ci"] for s in stats]
        ax.bar(range(len(names)), means, yerr=errs, capsize=4, color="tab:blue")
        ax.axhline(0, color="k", lw=0.8)
        ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
        ax.set_title(metric, fontsize=9)
    fig.suptitle(title, fontsize=10)
    return _finish(fig, path)


def plot_sweep(values, R, baseline=None, path=None, metrics: Sequence[str] = ("average_performance",),
               xlabel: str = "lambda", log_x: Optional[bool] = None,
               title: str = "sweep (mean, 95% interval over seeds)") -> Figure:
    """Metrics against a swept hyperparameter, with their 95% intervals over seeds.

    ``values [K]``: the swept values; ``R [K, S, T, T]`` and ``baseline [K, S, T]`` (optional): the performance
    matrices and untrained scores of each value's seeds (a vmapped sweep's ``results.R`` as it comes out). One line
    per metric: the mean of :func:`summary` at each value, a shaded band of the interval's half-width. ``log_x``
    (None: when every value is positive and they span more than a factor of 10) puts values on a symlog axis that
    keeps zero. Returns the figure; with ``path``, also writes it there as PNG (atomically)."""
    path = _check_path(path)
    metrics = _check_metrics(metrics)
    values = np.asarray(values, np.float64)
    R = np.asarray(R, np.float64)
    if values.ndim != 1 or values.size == 0:
        raise ValueError(f"values must be a non-empty 1-D sequence, got shape {values.shape}")
    if R.ndim != 4 or R.shape[0] != values.size or R.shape[-1] != R.shape[-2]:
        raise ValueError(f"R must be [len(values)={values.size}, seeds, T, T], got shape {R.shape}")
    if baseline is not None:
        baseline = np.asarray(baseline, np.float64)
        if baseline.shape != R.shape[:3]:
            raise ValueError(f"baseline must be [len(values), seeds, T] = {R.shape[:3]}, got shape {baseline.shape}")
    stats = [summary(R[k], None if baseline is None else baseline[k]) for k in range(values.size)]
    fig = _new_figure((5.5, 3.5))
    ax = fig.add_subplot()
    for metric in metrics:
        mean = np.array([s[metric]["mean"] for s in stats])
        half = np.array([s[metric]["ci"] for s in stats])
        line, = ax.plot(values, mean, marker="o", label=metric)
        band = np.where(np.isfinite(half), half, 0.0)
        ax.fill_between(values, mean - band, mean + band, color=line.get_color(), alpha=0.2)
    positive = values[values > 0]
    if log_x is None:
        log_x = positive.size > 1 and positive.max() / positive.min() > 10
    if log_x:
        ax.set_xscale("symlog", linthresh=float(positive.min()) if positive.size else 1.0)
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("metric")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    return _finish(fig, path)


def _check_metrics(metrics):
    if isinstance(metrics, str):
        metrics = (metrics,)
    metrics = tuple(metrics)
    unknown = [m for m in metrics if m not in metrics_lib.METRIC_NAMES]
    if not metrics or unknown:
        raise ValueError(f"metrics must be names from {list(metrics_lib.METRIC_NAMES)}, got {list(metrics)}")
    return metrics
