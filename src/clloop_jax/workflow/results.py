"""The result files of a finished run in a :class:`~clloop_jax.workflow.runs.RunFolder`: written once the run ends,
read back by experiment scripts and tables (``RunFolder.read_results``, ``read_traces``, ``write_results`` call these).

* ``R_seed{k}.csv``: the performance matrix of seed ``k``, the untrained model's row first (six decimals; ``nan`` where
  a task was not evaluated after some task);
* ``traces.jsonl``: one line per (seed, task, episode), or per (seed, task) for a run that kept one summary per task;
* ``summary.md`` / ``summary.json``: the metrics with their 95% intervals, the mean matrix, the tasks not learned;
* ``plots/``: the matrix, the scores and the divergences.
"""

from __future__ import annotations

import csv
import io
import json
import os
from typing import Dict

import numpy as np

from clloop_jax.workflow.files import jsonable, write_atomic

__all__ = ["read_results", "read_traces", "write_results"]


def read_results(folder):
    """``(R [S, T, T], baseline [S, T], seeds)`` of the finished run the folder holds, from its ``R_seed*.csv``
    (six decimals); ``FileNotFoundError`` naming the folder when the run has not finished."""
    if not os.path.isfile(folder.file("summary.json")):
        raise FileNotFoundError(f"{folder.path!r} holds no finished run (no summary.json)")
    with open(folder.file("seeds.json")) as f:
        seeds = [int(s) for s in json.load(f)]
    tables = [np.array([[float(v) for v in row[1:]] for row in list(csv.reader(open(folder.file(
        f"R_seed{s}.csv"))))[1:]]) for s in seeds]
    return np.stack([t[1:] for t in tables]), np.stack([t[0] for t in tables]), seeds


def read_traces(folder) -> Dict[str, np.ndarray]:
    """``{name: [S, T, E]}`` (``[S, T]`` for a run that kept one summary per task) of the finished run's
    ``traces.jsonl``, seeds in the order of ``seeds.json``; a value written as text (``"nan"``) or ``null`` is NaN.
    ``FileNotFoundError`` naming the folder when the run has not finished."""
    R, _, seeds = read_results(folder)
    S, T = R.shape[:2]
    with open(folder.file("traces.jsonl")) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    per_task = bool(rows) and "episode" not in rows[0]
    E = 1 if per_task else 1 + max((r["episode"] for r in rows), default=-1)
    names = sorted(k for k in (rows[0] if rows else {}) if k not in ("seed", "task", "episode"))
    out = {n: np.full((S, T, E), np.nan) for n in names}
    index = {seed: i for i, seed in enumerate(seeds)}
    for r in rows:
        for n in names:
            v = r.get(n)
            out[n][index[r["seed"]], r["task"], 0 if per_task else r["episode"]] = (
                np.nan if v is None or isinstance(v, str) else float(v))
    return {n: a[..., 0] if per_task else a for n, a in out.items()}


def write_results(folder, R, baseline, traces: Dict[str, np.ndarray], seeds, not_learned=(), lengths=None) -> None:
    """``traces.jsonl``, ``R_seed{k}.csv`` (baseline first), ``summary.md`` / ``summary.json`` and the plots.
    ``not_learned``: one record per task some seeds did not learn (``task`` numbered from 1, ``task_index``,
    ``seeds``, ``text``), in ``summary.json`` and, by its text, at the end of ``summary.md``. ``lengths [S, T]``:
    the episodes of each seed's tasks when they differ (a stream with irregular switches); the traces' episodes
    beyond them are neither written nor plotted (:func:`read_traces` gives NaN there), and the plots align the
    seeds by task (task ``t`` drawn from episode ``t`` times the longest task's length)."""
    from clloop_jax import report
    R, baseline = np.asarray(R, np.float64), np.asarray(baseline, np.float64)
    S, T = R.shape[:2]
    lines = []
    names = sorted(traces)
    arrays = {n: np.asarray(traces[n]) for n in names}
    per_task = bool(names) and arrays[names[0]].ndim == 2   # [S, T]: one summary per task
    E = 0 if not names else 1 if per_task else arrays[names[0]].shape[-1]
    plotted = arrays
    if lengths is not None:
        lengths = np.asarray(lengths)
        kept = np.arange(E) < lengths[..., None]
        plotted = {n: np.where(kept, a.astype(np.float64), np.nan) for n, a in arrays.items()}
    for s in range(S):
        for t in range(T):
            for e in range(E if lengths is None else int(lengths[s, t])):
                row = {"seed": int(seeds[s]), "task": t} if per_task else {"seed": int(seeds[s]), "task": t,
                                                                          "episode": e}
                row.update({n: jsonable(arrays[n][s, t] if per_task else arrays[n][s, t, e]) for n in names})
                lines.append(json.dumps(row))
    write_atomic(folder.file("traces.jsonl"), "\n".join(lines) + "\n")
    for s in range(S):
        buf = io.StringIO()
        writer = csv.writer(buf)
        writer.writerow(["after"] + [f"task_{j + 1}" for j in range(T)])
        writer.writerow(["untrained"] + [f"{v:.6f}" for v in baseline[s]])
        for i in range(T):
            writer.writerow([f"task_{i + 1}"] + [f"{v:.6f}" for v in R[s, i]])
        write_atomic(folder.file(f"R_seed{seeds[s]}.csv"), buf.getvalue())
    stats = report.summary(R, baseline)
    not_learned = list(not_learned)
    folder.write_json("summary.json", {"seeds": list(seeds), "metrics": stats,
                                     "mean_R": R.mean(axis=0), "mean_baseline": baseline.mean(axis=0),
                                     "not_learned": not_learned})
    table = ["| metric | mean ± 95% interval | seeds |", "|---|---:|---:|"]
    for name, st in stats.items():
        table.append(f"| {name} | {report.cell(st['values'])} | {st['n']} |")
    from clloop_jax.metrics import format_matrix
    warnings = "".join(f"\n- {w['text']}" for w in not_learned)
    folder.write_text("summary.md", "\n".join(table) + "\n\nMean performance matrix over seeds:\n\n"
                    + format_matrix(R.mean(axis=0), b=baseline.mean(axis=0)) + "\n"
                    + (f"\nWarnings:\n{warnings}\n" if warnings else ""))
    report.plot_matrix(R, folder.file("plots/matrix.png"))
    report.plot_scores(R, plotted, folder.file("plots/scores.png"), per_task=per_task)
    report.plot_divergence(plotted, folder.file("plots/divergence.png"), per_task=per_task)
