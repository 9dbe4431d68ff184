"""Pytree helpers shared by the run, the sources and the strategies."""

from __future__ import annotations

import jax

__all__ = ["task_at"]


def task_at(tasks, task_id):
    """Slice one task out of a stacked task pytree (``task_id`` may be traced)."""
    return jax.tree.map(lambda x: x[task_id], tasks)
