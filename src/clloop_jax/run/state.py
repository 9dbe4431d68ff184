"""What a run carries and what it reports: :class:`TrainState` (from one update and task to the next),
:class:`RunResults` (the performance matrix, the untrained scores, the traces) and :func:`summarize_trace` (one
task's records as one summary per name, ``RunConfig(traces="tasks")``)."""

from __future__ import annotations

from typing import Any, Dict, NamedTuple

import jax
import jax.numpy as jnp

__all__ = ["TrainState", "RunResults", "summarize_trace"]


class TrainState(NamedTuple):
    """Everything a run carries from one update (and task) to the next.

    ``params`` are the trainable parameters (what the optimizer, the strategy and the monitors see);
    ``model_state`` the model's non-trainable collections (batch norm's running averages, from a source with the
    ``model_state`` capability, :mod:`clloop_jax.sources.base`), ``()`` for a model without any."""

    params: Any
    opt_state: Any
    strategy: Any        # the strategy's own state
    monitors: tuple      # one state per monitor, in the config's order
    tasks_done: jax.Array
    model_state: Any = ()


class RunResults(NamedTuple):
    """What a run reports: ``R[i, j]`` = score on task j after training on tasks 0..i; ``baseline[j]`` = score of
    the untrained model; ``traces`` = ``{name: [num_tasks, episodes_per_task]}`` per-episode records (``loss``,
    ``penalty``, ``finite``, what the objective returns in ``aux`` such as ``score``, the strategy's and the
    monitors' entries), or ``{name: [num_tasks]}`` per-task summaries with ``RunConfig(traces="tasks")``.
    With ``RunConfig(evaluate_every=k > 1)`` the rows of ``R`` after tasks other than ``k-1, 2k-1, ...`` and the last
    hold only their diagonal ``R[i, i]`` and NaN elsewhere. Metrics: :func:`clloop_jax.metrics.summarize` (it reads
    such rows)."""

    R: jax.Array
    baseline: jax.Array
    traces: Dict[str, jax.Array]


def summarize_trace(trace: Dict[str, jax.Array], measured=()) -> Dict[str, jax.Array]:
    """One task's per-update records ``{name: [E]}`` as one summary per name: ``finite`` is True when every update
    was; the names in ``measured`` (records NaN between two measurements) are the mean of the values measured; every
    other record is its mean over the task's updates."""
    def one(name, v):
        if name == "finite":
            return jnp.all(v, axis=0)
        return (jnp.nanmean if name in measured else jnp.mean)(v, axis=0)
    return {name: one(name, v) for name, v in trace.items()}
