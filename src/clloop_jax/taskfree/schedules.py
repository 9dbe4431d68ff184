"""Streams with hidden task boundaries: per episode, the weights of the tasks.

:func:`abrupt_schedule` switches from one task to the next at given episodes, :func:`irregular_schedule` at random,
irregular ones, :func:`gradual_schedule` blends consecutive tasks linearly over a window. The schedule is the hidden
truth: it decides what the world serves and is recorded for the metrics; it never reaches the learner.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from clloop_jax.validation import is_int

__all__ = ["Schedule", "abrupt_schedule", "irregular_schedule", "gradual_schedule"]


@dataclasses.dataclass(frozen=True, eq=False)
class Schedule:
    """A stream's hidden truth: which tasks the world serves at every episode.

    Attributes:
      weights: ``[E, K]`` float64, row ``t`` the probabilities of the ``K`` tasks at episode ``t`` (rows sum to 1).
      order: ``[S]`` the task of each segment, in stream order (each task at most once).
      boundaries: ``[S - 1]`` the first episode of segments ``1..S-1``: where the next task's weight first reaches
        0.5 (the switch, for an abrupt stream; the middle of the blend, for a gradual one). The performance matrix is
        evaluated after episode ``boundaries[i] - 1`` (row ``i``) and after the last episode (row ``S - 1``).
      changes: ``[S - 1]`` the first episode at which the stream differs from segment ``i``'s task (equal to
        ``boundaries`` for abrupt streams; the start of the blend for gradual ones): the change points a detector
        is scored against.
      kind: ``"abrupt"`` or ``"gradual"``.
    """

    weights: np.ndarray
    order: np.ndarray
    boundaries: np.ndarray
    changes: np.ndarray
    kind: str

    def __post_init__(self):
        w = np.asarray(self.weights, np.float64)
        if w.ndim != 2 or w.shape[0] < 1 or w.shape[1] < 1:
            raise ValueError(f"weights must have shape [episodes, tasks], got {w.shape}")
        if not np.all(np.isfinite(w)) or np.any(w < 0) or not np.allclose(w.sum(axis=1), 1.0, atol=1e-6):
            raise ValueError("weights must be finite, >= 0, and every row must sum to 1")
        order = np.asarray(self.order, np.int64)
        if order.ndim != 1 or order.size < 1 or np.any(order < 0) or np.any(order >= w.shape[1]) \
                or len(set(order.tolist())) != order.size:
            raise ValueError(f"order must list distinct task ids in [0, {w.shape[1]}), got {self.order!r}")
        for name in ("boundaries", "changes"):
            v = np.asarray(getattr(self, name), np.int64).reshape(-1)
            if v.size != order.size - 1 or np.any(np.diff(v) <= 0) or (v.size and (v[0] < 1 or v[-1] >= w.shape[0])):
                raise ValueError(f"{name} must be {order.size - 1} increasing episodes in [1, {w.shape[0]}), got {v}")
            object.__setattr__(self, name, v)
        object.__setattr__(self, "weights", w)
        object.__setattr__(self, "order", order)

    @property
    def num_episodes(self) -> int:
        return int(self.weights.shape[0])

    @property
    def num_tasks(self) -> int:
        return int(self.weights.shape[1])

    @property
    def num_segments(self) -> int:
        return int(self.order.size)

    @property
    def ends(self) -> np.ndarray:
        """``[S]`` the episode after which each row of the performance matrix is evaluated."""
        return np.append(self.boundaries - 1, self.num_episodes - 1)

    def dominant(self) -> np.ndarray:
        """``[E]`` the task with the largest weight at each episode (the later task on a tie)."""
        w = self.weights[:, self.order]
        return self.order[w.shape[1] - 1 - np.argmax(w[:, ::-1], axis=1)]

    def arrays(self) -> "ScheduleArrays":
        """The schedule as the traced arguments of the task-free program."""
        row = np.full(self.num_episodes, -1, np.int32)
        row[self.ends] = np.arange(self.num_segments, dtype=np.int32)
        end = np.zeros(self.num_episodes, bool)
        end[self.boundaries - 1] = True
        return ScheduleArrays(jnp.asarray(self.weights, jnp.float32), jnp.asarray(self.order, jnp.int32),
                              jnp.asarray(row), jnp.asarray(end))


class ScheduleArrays(NamedTuple):
    """``weights [E, K]``, ``order [S]``, ``eval_row [E]`` (the row of R evaluated after each episode, -1 for none)
    and ``segment_end [E]`` (True after the last episode of segments ``0..S-2``)."""

    weights: jax.Array
    order: jax.Array
    eval_row: jax.Array
    segment_end: jax.Array


def _check_lengths(lengths, minimum: int = 1) -> np.ndarray:
    if isinstance(lengths, (str, bytes)) or not hasattr(lengths, "__len__") or len(lengths) < 1:
        raise ValueError(f"lengths must be a non-empty sequence of integers, got {lengths!r}")
    if not all(is_int(v) or (isinstance(v, np.integer)) for v in lengths) or min(int(v) for v in lengths) < minimum:
        raise ValueError(f"lengths must be integers >= {minimum}, got {list(lengths)!r}")
    return np.asarray([int(v) for v in lengths], np.int64)


def _check_order(order, num_segments: int, num_tasks) -> tuple:
    if order is None:
        order = list(range(num_segments))
    order = [int(v) for v in order] if hasattr(order, "__len__") and not isinstance(order, str) else order
    if not isinstance(order, list) or len(order) != num_segments or not all(is_int(v) for v in order):
        raise ValueError(f"order must give one task id per segment ({num_segments}), got {order!r}")
    k = max(order) + 1 if num_tasks is None else num_tasks
    if not is_int(k) or k < 1:
        raise ValueError(f"num_tasks must be an integer >= 1, got {num_tasks!r}")
    if min(order) < 0 or max(order) >= k or len(set(order)) != len(order):
        raise ValueError(f"order must list distinct task ids in [0, {k}), got {order!r}")
    return np.asarray(order, np.int64), int(k)


def abrupt_schedule(lengths: Sequence[int], order: Optional[Sequence[int]] = None,
                    num_tasks: Optional[int] = None) -> Schedule:
    """Segment ``i`` serves task ``order[i]`` alone for ``lengths[i]`` episodes; the task switches without notice.

    ``order`` defaults to ``0, 1, ..., S-1``; ``num_tasks`` (the columns of the weights) to ``max(order) + 1``.
    """
    lengths = _check_lengths(lengths)
    order, k = _check_order(order, lengths.size, num_tasks)
    seg = np.repeat(np.arange(lengths.size), lengths)
    weights = np.zeros((seg.size, k))
    weights[np.arange(seg.size), order[seg]] = 1.0
    starts = np.cumsum(lengths)[:-1]
    return Schedule(weights, order, starts, starts, "abrupt")


def irregular_schedule(num_tasks: int, num_episodes: int, min_length: int, seed: int = 0,
                       order: Optional[Sequence[int]] = None) -> Schedule:
    """An abrupt stream of ``num_tasks`` segments at irregular, random times.

    The segment lengths are ``min_length`` plus a uniformly random composition of the remaining
    ``num_episodes - num_tasks * min_length`` episodes (``num_tasks - 1`` cut points drawn uniformly, with
    replacement, from ``0..remaining``, with ``numpy.random.default_rng(seed)``).
    """
    for name, value, low in (("num_tasks", num_tasks, 1), ("num_episodes", num_episodes, 1),
                             ("min_length", min_length, 1)):
        if not is_int(value) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    remaining = num_episodes - num_tasks * min_length
    if remaining < 0:
        raise ValueError(f"num_episodes={num_episodes} is shorter than num_tasks * min_length = "
                         f"{num_tasks * min_length}")
    if not is_int(seed):
        raise ValueError(f"seed must be an integer, got {seed!r}")
    rng = np.random.default_rng(seed)
    cuts = np.sort(rng.integers(0, remaining + 1, size=num_tasks - 1))
    parts = np.diff(np.concatenate([[0], cuts, [remaining]]))
    return abrupt_schedule((parts + min_length).tolist(), order, num_tasks)


def gradual_schedule(lengths: Sequence[int], blend: int, order: Optional[Sequence[int]] = None,
                     num_tasks: Optional[int] = None) -> Schedule:
    """Consecutive tasks blended linearly over ``blend`` episodes around each nominal switch.

    With the nominal switches ``b_i = lengths[0] + ... + lengths[i]``, the blend from task ``order[i]`` to
    ``order[i+1]`` starts at ``c_i = b_i - blend // 2``; at episode ``t`` of the window ``[c_i, c_i + blend)`` the
    next task has weight ``(t - c_i + 1/2) / blend`` and the current one the rest. The next task's weight reaches
    1/2 at ``b_i`` (the boundary). ``blend`` must be at least 2 and at most every segment's length, so windows do
    not overlap.
    """
    lengths = _check_lengths(lengths)
    order, k = _check_order(order, lengths.size, num_tasks)
    if not is_int(blend) or blend < 2 or blend > lengths.min():
        raise ValueError(f"blend must be an integer in [2, min(lengths)={lengths.min()}], got {blend!r}")
    E = int(lengths.sum())
    bounds = np.cumsum(lengths)[:-1]
    starts = bounds - blend // 2
    seg = np.repeat(np.arange(lengths.size), lengths)
    weights = np.zeros((E, k))
    weights[np.arange(E), order[seg]] = 1.0
    for i, c in enumerate(starts):
        t = np.arange(c, c + blend)
        u = (t - c + 0.5) / blend
        weights[t] = 0.0
        weights[t, order[i]] = 1.0 - u
        weights[t, order[i + 1]] = u
    return Schedule(weights, order, bounds, starts, "gradual")
