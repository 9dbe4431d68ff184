"""The host's loop over tasks: a run stepped one task at a time on the host, for progress, checkpoints and resume."""

from __future__ import annotations

from typing import Callable, Optional

__all__ = ["task_loop"]


def task_loop(step: Callable, state, num_tasks: int, start: int = 0, rows: Optional[list] = None,
              traces: Optional[list] = None, after: Optional[Callable] = None):
    """The host's loop over tasks, the one that :meth:`~clloop_jax.run.sequential.Run.run_stepwise` (one seed) and
    :func:`clloop_jax.workflow.execute.execute` (seeds vmapped, checkpoints, resume, the NaN alarm) both drive.

    For each task from ``start`` to ``num_tasks - 1``: ``new, row, trace = step(state, task)``, ``row`` and ``trace``
    appended to the lists ``rows`` and ``traces`` (those recorded before ``start`` when resuming), then
    ``after(task, state, new, rows, traces)`` (progress, checkpoints, checks: the state before the task is still
    there to compare with; raising stops the loop, and the new state is not kept). Returns the last state."""
    rows = [] if rows is None else rows
    traces = [] if traces is None else traces
    for task in range(start, num_tasks):
        new, row, trace = step(state, task)
        rows.append(row)
        traces.append(trace)
        if after is not None:
            after(task, state, new, rows, traces)
        state = new
    return state
