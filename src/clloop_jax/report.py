"""Reports of runs over seeds: summary tables with 95% intervals, paired differences, the results schema, and plots.

Every experiment script and the command line use these functions; they take plain NumPy arrays:

* ``R [seeds, T, T]`` and ``baseline [seeds, T]``: the performance matrices and untrained scores of one configuration;
* ``traces``: ``{name: [seeds, T, episodes]}``, the run's per-episode records.

The results schema (:func:`summary`) is a JSON-ready dict ``{metric: {"mean", "ci", "n", "values"}}`` for each of
:data:`clloop_jax.metrics.METRIC_NAMES`, the ``ci`` being the half-width of the Student t interval over seeds.
Plots use matplotlib's Agg backend (chosen inside the plotting functions, not on import) and return the figure's path.
"""

from __future__ import annotations

import os
import warnings
from typing import Dict, Mapping, Optional, Sequence

import numpy as np

from clloop_jax import metrics as metrics_lib

__all__ = ["cell", "summary", "summary_table", "paired_differences", "paired_table", "plot_matrix", "plot_scores",
           "plot_divergence", "plot_comparison"]


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


def _pyplot():
    import matplotlib
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    return plt


def _save(fig, path: str) -> str:
    os.makedirs(os.path.dirname(os.path.abspath(path)) or ".", exist_ok=True)
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=120, bbox_inches="tight")
    os.replace(tmp, path)
    return path


def plot_matrix(R, path: str, title: str = "performance matrix") -> str:
    """Heatmap of the mean ``R`` over seeds: row i = after training task i, column j = score on task j."""
    plt = _pyplot()
    R = np.asarray(R, np.float64)
    mean = R.mean(axis=0) if R.ndim == 3 else R
    T = mean.shape[0]
    fig, ax = plt.subplots(figsize=(1.2 * T + 2, 1.0 * T + 1.5))
    image = ax.imshow(mean, cmap="viridis", vmin=min(-1.0, float(np.nanmin(mean))), vmax=max(1.0, float(np.nanmax(mean))))
    for i in range(T):
        for j in range(T):
            ax.text(j, i, f"{mean[i, j]:+.2f}", ha="center", va="center", color="white" if mean[i, j] < 0.3 else "black")
    ax.set_xticks(range(T), [f"task {j}" for j in range(T)])
    ax.set_yticks(range(T), [f"after {i}" for i in range(T)])
    ax.set_xlabel("evaluated on")
    ax.set_ylabel("trained up to")
    ax.set_title(title)
    fig.colorbar(image, ax=ax, shrink=0.8)
    try:
        return _save(fig, path)
    finally:
        plt.close(fig)


def _episodes_axis(values):
    """``[S, T, E]`` -> mean over seeds, concatenated over tasks: ``(x [T*E], y [T*E], boundaries)``."""
    values = np.asarray(values, np.float64)
    if values.ndim == 3:
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # episodes measured on no seed stay NaN
            mean = np.nanmean(values, axis=0)
    else:
        mean = values
    T, E = mean.shape
    return np.arange(T * E), mean.reshape(-1), [t * E for t in range(1, T)]


def plot_scores(R, traces: Mapping[str, np.ndarray], path: str, title: str = "scores over training") -> str:
    """The training batch's score per episode (mean over seeds) and each task's evaluated score after every task,
    on one time axis with the task boundaries marked."""
    plt = _pyplot()
    R = np.asarray(R, np.float64)
    R = R if R.ndim == 3 else R[None]
    T = R.shape[1]
    fig, ax = plt.subplots(figsize=(8, 4))
    E = 1
    if "score" in traces:
        x, y, bounds = _episodes_axis(traces["score"])
        E = len(x) // T
        ax.plot(x, y, color="0.6", lw=1, label="training batch (current task)")
    for j in range(T):
        ends = [(i + 1) * E - 1 for i in range(T)]
        ax.plot(ends, R.mean(axis=0)[:, j], marker="o", label=f"task {j} (evaluated)")
    for t in range(1, T):
        ax.axvline(t * E - 0.5, color="k", ls=":", lw=1)
    ax.set_xlabel("episode (update)")
    ax.set_ylabel("normalized score")
    ax.set_title(title)
    ax.legend(fontsize=8, loc="lower left")
    try:
        return _save(fig, path)
    finally:
        plt.close(fig)


def plot_divergence(traces: Mapping[str, np.ndarray], path: str, title: str = "divergence and penalty") -> str:
    """Penalty and every divergence the run recorded, per episode (mean over seeds), task boundaries marked."""
    plt = _pyplot()
    names = [n for n in ("penalty", "param_l2", "param_relative", "fisher_distance", "functional") if n in traces]
    fig, axes = plt.subplots(len(names), 1, figsize=(8, 1.8 * len(names) + 0.5), sharex=True, squeeze=False)
    for ax, name in zip(axes[:, 0], names):
        x, y, bounds = _episodes_axis(traces[name])
        keep = np.isfinite(y)
        ax.plot(x[keep], y[keep], marker="o" if keep.sum() < len(y) else None, ms=3)
        for b in bounds:
            ax.axvline(b - 0.5, color="k", ls=":", lw=1)
        ax.set_ylabel(name, fontsize=8)
    axes[0, 0].set_title(title)
    axes[-1, 0].set_xlabel("episode (update)")
    try:
        return _save(fig, path)
    finally:
        plt.close(fig)


def plot_comparison(results: Mapping[str, tuple], path: str,
                    metrics: Sequence[str] = ("average_performance", "backward_transfer"),
                    title: str = "strategies compared (mean, 95% interval over seeds)") -> str:
    """Bars of each metric per configuration with their 95% intervals."""
    plt = _pyplot()
    names = list(results)
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.2 * len(metrics) + 1, 3.5), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        stats = [summary(*results[n])[metric] for n in names]
        means = [s["mean"] for s in stats]
        errs = [0.0 if not np.isfinite(s["ci"]) else s["ci"] for s in stats]
        ax.bar(range(len(names)), means, yerr=errs, capsize=4, color="tab:blue")
        ax.axhline(0, color="k", lw=0.8)
        ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
        ax.set_title(metric, fontsize=9)
    fig.suptitle(title, fontsize=10)
    try:
        return _save(fig, path)
    finally:
        plt.close(fig)
