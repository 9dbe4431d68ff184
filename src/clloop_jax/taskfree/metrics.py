"""Metrics of a task-free run: detection delay, missed changes and false alarms against the true
boundaries, and the field's metrics of the performance matrix evaluated at those boundaries.
"""

from __future__ import annotations

from typing import Dict, Optional

import numpy as np

from clloop_jax import metrics as metrics_lib
from clloop_jax.taskfree.run import TaskFreeResults
from clloop_jax.taskfree.schedules import Schedule
from clloop_jax.validation import is_int

__all__ = ["detection_metrics", "taskfree_summary"]


def detection_metrics(alarms, changes, max_delay: Optional[int] = None) -> Dict[str, np.ndarray]:
    """Detection against the hidden truth.

    ``alarms [..., E]`` (bool); ``changes``: the change points (a :class:`Schedule`, whose ``changes`` are used, or
    ``[C]`` increasing episodes). Change ``k`` is detected by the first alarm in its window
    ``[c_k, min(c_{k+1}, c_k + max_delay + 1))`` (``c_C = E``; no ``max_delay``: until the next change), with delay
    ``t - c_k`` episodes (0 = on the first episode of the new task). Every other alarm is a false alarm: before the
    first change, after a change was detected, or after its window.

    Returns ``delay [..., C]`` (float, nan when missed), ``detected [..., C]``, ``missed [...]``,
    ``false_alarms [...]`` and ``mean_delay [...]`` (over the detected changes; nan when none).
    """
    alarms = np.asarray(alarms, bool)
    if alarms.ndim < 1:
        raise ValueError(f"alarms must have shape [..., episodes], got {alarms.shape}")
    E = alarms.shape[-1]
    c = np.asarray(changes.changes if isinstance(changes, Schedule) else changes, np.int64).reshape(-1)
    if np.any(np.diff(c) <= 0) or (c.size and (c[0] < 0 or c[-1] >= E)):
        raise ValueError(f"changes must be increasing episodes in [0, {E}), got {c}")
    if max_delay is not None and (not is_int(max_delay) or max_delay < 0):
        raise ValueError(f"max_delay must be an integer >= 0 or None, got {max_delay!r}")
    batch = alarms.shape[:-1]
    flat = alarms.reshape(-1, E)
    delay = np.full((flat.shape[0], c.size), np.nan)
    true_hits = np.zeros_like(flat)
    ends = np.append(c[1:], E)
    for k, (start, stop) in enumerate(zip(c, ends)):
        if max_delay is not None:
            stop = min(stop, start + max_delay + 1)
        window = flat[:, start:stop]
        hit = window.any(axis=1)
        first = np.argmax(window, axis=1)
        delay[hit, k] = first[hit]
        true_hits[np.nonzero(hit)[0], start + first[hit]] = True
    false_alarms = (flat & ~true_hits).sum(axis=1)
    detected = ~np.isnan(delay)
    with np.errstate(invalid="ignore"):
        mean_delay = np.where(detected.any(axis=1), np.nansum(delay, axis=1) / np.maximum(detected.sum(axis=1), 1),
                              np.nan)
    return {"delay": delay.reshape(batch + (c.size,)), "detected": detected.reshape(batch + (c.size,)),
            "missed": (~detected).sum(axis=1).reshape(batch), "false_alarms": false_alarms.reshape(batch),
            "mean_delay": mean_delay.reshape(batch)}


def taskfree_summary(results: TaskFreeResults, schedule, max_delay: Optional[int] = None) -> dict:
    """:func:`clloop_jax.metrics.summarize` of the performance matrix at the true boundaries (columns in stream
    order, so ``R[i, i]`` is the task of segment ``i``), with :func:`detection_metrics` of the alarms and the
    number of consolidations. ``results`` may carry a leading seed axis; ``schedule`` is one :class:`Schedule` or one
    per seed. Every segment's task must be a column (``order`` a permutation of the tasks) for the square matrix."""
    schedules = [schedule] if isinstance(schedule, Schedule) else list(schedule)
    R = np.asarray(results.R, np.float64)
    b = np.asarray(results.baseline, np.float64)
    alarms = np.asarray(results.alarms, bool)
    orders = {tuple(s.order.tolist()) for s in schedules}
    if len(orders) != 1:
        raise ValueError("every schedule must have the same task order")
    order = np.asarray(orders.pop())
    if sorted(order.tolist()) != list(range(R.shape[-1])):
        raise ValueError(f"the segments' tasks {order.tolist()} must be a permutation of the {R.shape[-1]} tasks")
    out = metrics_lib.summarize(R[..., order], b[..., order])
    if len(schedules) == 1:
        det = detection_metrics(alarms, schedules[0], max_delay)
    else:
        if alarms.ndim != 2 or alarms.shape[0] != len(schedules):
            raise ValueError(f"alarms must have shape [{len(schedules)}, episodes] for one schedule per seed, "
                             f"got {alarms.shape}")
        per = [detection_metrics(a, s, max_delay) for a, s in zip(alarms, schedules)]
        det = {k: np.stack([p[k] for p in per]) for k in per[0]}
    out.update(det)
    out["consolidations"] = np.asarray(results.consolidated, bool).sum(axis=-1)
    return out
