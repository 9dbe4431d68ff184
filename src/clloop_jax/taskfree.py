"""Task-free continual learning: a stream that never says when its task changes.

A task-free run learns from one long stream of episodes (closed-loop rollouts, or minibatches) whose task changes at
times the learner is not told. It finds the changes itself, from its own training loss, and consolidates there
exactly as a run with known boundaries does at a task's end; or it uses a boundary-free strategy that needs no
consolidation at all (:mod:`clloop_jax.strategies.streaming`). The whole stream is one compiled program.

**Streams** (:class:`Schedule`): per episode, the weights of the tasks, ``weights [E, K]``. Each parallel world of a
closed-loop episode (each sample of a minibatch) draws its task from that episode's weights, so a blend is a
mixture. :func:`abrupt_schedule` switches from one task to the next at given episodes, :func:`irregular_schedule` at
random, irregular ones, :func:`gradual_schedule` blends consecutive tasks linearly over a window. The schedule is the
hidden truth: it decides what the world serves, it is recorded for the metrics, and it never reaches the learner
(the update step, the strategy and the detector see the batches and the loss only).

**Shift detection** (:class:`PageHinkley`): the Page-Hinkley test, one-sided (an increase of the loss), on the
training loss standardised against running statistics of its in-control past. See the class for the statistic,
the drift allowance ``delta``, the threshold ``lambda`` and the false-alarm rate.

**The run** (:func:`make_taskfree_run`)::

    state = run.init
    R[-1] = score on every task                                     # the untrained baseline
    for t in scan(E):                                               # one compiled program
        batch = each world draws its task from weights[t]           # the hidden truth acts here only
        state, trace = run.update(state, batch, key, hp)            # the one update step
        alarm = page_hinkley(trace["loss"])
        cond(consolidate now): run.consolidate(state, key, slot, data, hp)
        cond(t ends a true segment): R[i] = score on every task      # the performance matrix, for metrics

What triggers a consolidation is the run's ``boundaries``: ``"detect"`` (the detector's alarms; the consolidation uses
the parameters and the batch of the last episode at which the test statistic was 0, i.e. the end of the old task
as the detector sees it), ``"oracle"`` (the true segment ends, with that episode's parameters and batch: EWC given
the true boundaries, fed the same kind of data), or ``"none"`` (never: fine-tuning, and the boundary-free
strategies). The detector runs in every mode, so its alarms are recorded for the metrics whatever triggers the
consolidations.

:meth:`TaskFreeRun.__call__` is one seed and vmaps like any JAX function (a vmapped ``lax.cond`` whose predicate
differs between seeds evaluates both branches). :meth:`TaskFreeRun.seeds` runs many seeds in one program with the
consolidation and the evaluation branches run only on the episodes where some seed needs them.

**Metrics**: :func:`detection_metrics` (detection delay, missed changes, false alarms against the truth) and
:func:`taskfree_summary` (those, and :func:`clloop_jax.metrics.summarize` of the performance matrix evaluated at the
true boundaries).
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Any, Dict, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from clloop_jax import metrics as metrics_lib
from clloop_jax.loop import HParams, Run, RunConfig, _Program, check_key, make_run, task_at
from clloop_jax.sources import EnvSource, SupervisedBatch, SupervisedSource

__all__ = ["Schedule", "abrupt_schedule", "irregular_schedule", "gradual_schedule", "draw_tasks", "mixture_batch",
           "PageHinkley", "DetectorState", "detect", "siegmund_arl", "TaskFreeRun", "TaskFreeResults",
           "make_taskfree_run", "BOUNDARIES", "detection_metrics", "taskfree_summary"]

BOUNDARIES = ("detect", "oracle", "none")


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


# ----------------------------------------------------------------------------------------------------------------
# Streams with hidden boundaries
# ----------------------------------------------------------------------------------------------------------------


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
    if not all(_is_int(v) or (isinstance(v, np.integer)) for v in lengths) or min(int(v) for v in lengths) < minimum:
        raise ValueError(f"lengths must be integers >= {minimum}, got {list(lengths)!r}")
    return np.asarray([int(v) for v in lengths], np.int64)


def _check_order(order, num_segments: int, num_tasks) -> tuple:
    if order is None:
        order = list(range(num_segments))
    order = [int(v) for v in order] if hasattr(order, "__len__") and not isinstance(order, str) else order
    if not isinstance(order, list) or len(order) != num_segments or not all(_is_int(v) for v in order):
        raise ValueError(f"order must give one task id per segment ({num_segments}), got {order!r}")
    k = max(order) + 1 if num_tasks is None else num_tasks
    if not _is_int(k) or k < 1:
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
        if not _is_int(value) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    remaining = num_episodes - num_tasks * min_length
    if remaining < 0:
        raise ValueError(f"num_episodes={num_episodes} is shorter than num_tasks * min_length = "
                         f"{num_tasks * min_length}")
    if not _is_int(seed):
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
    if not _is_int(blend) or blend < 2 or blend > lengths.min():
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


# ----------------------------------------------------------------------------------------------------------------
# Batches of a mixture of tasks
# ----------------------------------------------------------------------------------------------------------------


def draw_tasks(key, weights, n: int) -> jax.Array:
    """``[n]`` int32 task ids drawn independently from the probabilities ``weights [K]``."""
    logits = jnp.where(weights > 0, jnp.log(jnp.where(weights > 0, weights, 1.0)), -jnp.inf)
    return jax.random.categorical(key, logits, shape=(n,)).astype(jnp.int32)


def _one_sample_source(source):
    """``(source with batches of one sample, batch size, merge)`` for the sources shipped with the library."""
    if isinstance(source, EnvSource):
        def merge(trajs):  # leaves [n, T, 1, ...] -> [T, n, ...]
            return jax.tree.map(lambda x: jnp.swapaxes(x[:, :, 0], 0, 1), trajs)
        return dataclasses.replace(source, num_envs=1), source.num_envs, merge
    if isinstance(source, SupervisedSource):
        def merge(batches):  # x [n, 1, D], y [n, 1], mask [n, C]: each sample keeps its own task's mask
            return SupervisedBatch(batches.x[:, 0], batches.y[:, 0], batches.mask)
        return dataclasses.replace(source, batch_size=1), source.batch_size, merge
    raise TypeError(f"source must be an EnvSource or a SupervisedSource, or define "
                    f"mixture_batch(key, params, tasks, task_ids, hparams); got {type(source).__name__}")


def mixture_batch(source, key, params, tasks, weights, hparams):
    """One batch of ``source`` whose every sample (parallel world, minibatch row) draws its own task from
    ``weights [K]``: the source's ``batch`` of one sample, vmapped over the samples with their task ids.

    For an :class:`~clloop_jax.sources.EnvSource` the result is a :class:`~clloop_jax.envs.Trajectory` of
    ``num_envs`` worlds; for a :class:`~clloop_jax.sources.SupervisedSource` a
    :class:`~clloop_jax.sources.SupervisedBatch` of ``batch_size`` rows whose ``mask`` is per row (``[B, C]``),
    gathered straight from the stacked tasks (rows of one task are distinct samples, as in its own batch). A source
    of another kind may define ``mixture_batch(key, params, tasks, task_ids, hparams)`` itself.
    """
    k_ids, k_batch = jax.random.split(key)
    if hasattr(source, "mixture_batch") and not isinstance(source, (EnvSource, SupervisedSource)):
        n = source.batch_size if hasattr(source, "batch_size") else source.num_envs
        return source.mixture_batch(k_batch, params, tasks, draw_tasks(k_ids, weights, n), hparams)
    if isinstance(source, SupervisedSource):
        return _supervised_mixture(source, k_batch, tasks, draw_tasks(k_ids, weights, source.batch_size))
    one, n, merge = _one_sample_source(source)
    ids = draw_tasks(k_ids, weights, n)
    keys = jax.random.split(k_batch, n)
    return merge(jax.vmap(lambda k, i: one.batch(k, params, task_at(tasks, i), hparams))(keys, ids))


def _supervised_mixture(source, key, tasks, ids) -> SupervisedBatch:
    """Row ``r`` is a training sample of task ``ids[r]``: each task draws ``B`` distinct indices (as its own batch
    would, without replacement) and row ``r`` takes the ``r``-th of its task's, so rows of one task are distinct
    samples; a pure batch (one task) is distributed exactly as ``source.batch``'s. Gathers only the rows it needs."""
    K, N = tasks.x.shape[0], tasks.x.shape[1]
    B = source.batch_size
    perms = jax.vmap(lambda k: jax.random.choice(k, N, (B,), replace=False))(jax.random.split(key, K))  # [K, B]
    idx = perms[ids, jnp.arange(B)]
    return SupervisedBatch(tasks.x[ids, idx], tasks.y[ids, idx], tasks.train_mask[ids])


@dataclasses.dataclass(frozen=True)
class _StreamSource:
    """``base`` with per-sample task masks understood by ``samples`` (a mixed minibatch has one mask per row)."""

    base: Any

    def __getattr__(self, name):
        if name == "base":
            raise AttributeError(name)
        return getattr(self.base, name)

    def samples(self, batch):
        if isinstance(batch, SupervisedBatch) and batch.mask.ndim == 2:
            return (batch.x, batch.mask), batch.y
        return self.base.samples(batch)


# ----------------------------------------------------------------------------------------------------------------
# Shift detection
# ----------------------------------------------------------------------------------------------------------------


class DetectorState(NamedTuple):
    """The detector's running state: ``mean`` and ``var``, the reference statistics; ``stat``, the Page-Hinkley
    statistic; ``count``, the observations since the last reset (int32); ``delay_line [lag]``, the latest
    observations, not yet in the reference."""

    mean: jax.Array
    var: jax.Array
    stat: jax.Array
    count: jax.Array
    delay_line: jax.Array


def siegmund_arl(delta: float, threshold: float, shift: float = 0.0) -> float:
    """Siegmund's approximation of the average run length of the one-sided test on i.i.d. N(shift, 1) input:
    ``(exp(-2 d b) + 2 d b - 1) / (2 d^2)`` with ``d = shift - delta`` and ``b = threshold + 1.166``
    (``b^2`` for ``d = 0``). With ``shift = 0`` it is the in-control run length ARL0 (episodes between false alarms
    when the statistics are known exactly); with ``shift > delta``, the expected number of episodes from a change
    to its alarm, counting the alarm's (so the expected delay is one less)."""
    d, b = shift - delta, threshold + 1.166
    if abs(d) < 1e-12:
        return b * b
    return (math.exp(-2.0 * d * b) + 2.0 * d * b - 1.0) / (2.0 * d * d)


@dataclasses.dataclass(frozen=True)
class PageHinkley:
    """The Page-Hinkley test for an increase of the agent's loss, against running statistics.

    The signal is ``x_t = log(loss_t)`` (``log=True``; a learning curve's noise is roughly proportional to its level,
    so the log has a steadier spread) or ``loss_t``. Each observation is standardised by the reference mean and
    variance,

        z_t = (x_t - m_{t-1}) / sqrt(v_{t-1} + min_scale^2),

    and the Page-Hinkley statistic is ``PH_t = U_t - min_{s<=t} U_s`` with ``U_t = sum_{s<=t} (z_s - delta)``,
    computed by the equivalent recursion ``PH_t = max(0, PH_{t-1} + z_t - delta)`` (Page's one-sided CUSUM). An
    alarm is raised when ``PH_t > threshold`` (lambda). ``delta`` (the drift allowance) is the standardised
    increase the test ignores; ``threshold`` trades the false-alarm rate against the delay.

    The reference is an exponentially weighted mean and variance of the signal seen ``lag`` observations ago: each
    observation waits in a delay line of length ``lag`` and then enters the reference with weight ``a_n = max(alpha,
    1/(n+1))`` (``n`` observations in the reference before it, so the first ``1/alpha`` form a plain average):
    ``m += a r``, ``v = (1 - a) (v + a r^2)`` with ``r = x - m``. A change therefore reaches the reference only
    ``lag`` episodes after it began (it cannot hide itself), and every observation enters it (no selection: a
    reference fed only the observations that passed the test would drift low and raise false alarms). After a reset
    (at the start, and after every alarm) the first ``warmup`` observations only feed the delay line and the
    reference (no test, no alarm): the warm-up, and the cool-down after a detection. A non-finite loss counts as
    the reference mean (no evidence either way).

    False alarms: on an in-control signal that is i.i.d. Gaussian with known mean and variance, ``z_t`` is N(0, 1)
    and the run length between false alarms is Siegmund's ``ARL0 = (exp(2 delta b) - 2 delta b - 1) /
    (2 delta^2)``, ``b = threshold + 1.166`` (:func:`siegmund_arl`): with the defaults ``delta = 0.5``,
    ``threshold = 15``, about ``2.1e7`` episodes. Estimating the reference (``alpha = 0.05``: an effective window of
    about 40 observations) fattens the tails of ``z`` and shortens that: measured on 3e6 episodes of i.i.d.
    Gaussian signals (600 signals of 5,000, ``log=False``), 2 false alarms, a rate of about 1e-6 per episode, i.e.
    about 0.0005 expected false alarms over a stream of 500 episodes (``tests/test_taskfree.py`` checks 40 stationary
    signals of 2,000 episodes with none). A real training loss also drifts downwards while the agent learns: that
    only lowers ``z``, and the test is one-sided. A change that raises the signal by ``k`` reference standard
    deviations (``k > delta``) is detected after about ``siegmund_arl(delta, threshold, k) - 1`` episodes (about
    ``threshold / (k - delta)``, 6 for ``k = 3``); a switch of task raises the log-loss by several to tens of
    standard deviations (``experiments/taskfree.py`` measures the delays).

    Attributes:
      delta: drift allowance, in reference standard deviations (>= 0).
      threshold: lambda, the alarm threshold of ``PH_t`` (> 0).
      warmup: observations after a reset before the test starts (>= lag + 2).
      lag: length of the delay line before an observation enters the reference (>= 1).
      alpha: the reference's exponential weight, in (0, 1].
      min_scale: a floor on the standard deviation, in the signal's units (> 0).
      log: test ``log(loss)`` (the loss must then be > 0) rather than the loss.
    """

    delta: float = 0.5
    threshold: float = 15.0
    warmup: int = 20
    lag: int = 10
    alpha: float = 0.05
    min_scale: float = 0.01
    log: bool = True

    def __post_init__(self):
        for name, ok, expected in (("delta", lambda v: v >= 0, ">= 0"), ("threshold", lambda v: v > 0, "> 0"),
                                   ("alpha", lambda v: 0 < v <= 1, "in (0, 1]"),
                                   ("min_scale", lambda v: v > 0, "> 0")):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) \
                    or not ok(value):
                raise ValueError(f"PageHinkley.{name} must be a finite number {expected}, got {value!r}")
            object.__setattr__(self, name, float(value))
        if not _is_int(self.lag) or self.lag < 1:
            raise ValueError(f"PageHinkley.lag must be an integer >= 1, got {self.lag!r}")
        if not _is_int(self.warmup) or self.warmup < self.lag + 2:
            raise ValueError(f"PageHinkley.warmup must be an integer >= lag + 2 = {self.lag + 2}, got {self.warmup!r}")
        if not isinstance(self.log, bool):
            raise ValueError(f"PageHinkley.log must be True or False, got {self.log!r}")

    def init(self) -> DetectorState:
        zero = jnp.zeros((), jnp.float32)
        return DetectorState(zero, zero, zero, jnp.zeros((), jnp.int32), jnp.zeros((self.lag,), jnp.float32))

    def step(self, state: DetectorState, loss):
        """One observation: ``(state, alarm, in_control, stat)``; ``stat`` is ``PH_t`` (0 during warm-up),
        ``in_control`` is True when ``PH_t = 0``. On an alarm the state is reset (the next observation starts a new
        warm-up)."""
        x = jnp.asarray(loss, jnp.float32)
        if self.log:
            x = jnp.log(jnp.maximum(x, jnp.finfo(jnp.float32).tiny))
        x = jnp.where(jnp.isfinite(x), x, state.mean)
        n = state.count
        z = (x - state.mean) / jnp.sqrt(state.var + self.min_scale ** 2)
        stat = jnp.where(n >= self.warmup, jnp.maximum(0.0, state.stat + z - self.delta), 0.0)
        alarm = stat > self.threshold
        slot = n % self.lag
        old = state.delay_line[slot]
        entering = n >= self.lag
        a = jnp.maximum(self.alpha, 1.0 / (jnp.maximum(n - self.lag, 0).astype(jnp.float32) + 1.0))
        r = old - state.mean
        mean = jnp.where(entering, state.mean + a * r, state.mean)
        var = jnp.where(entering, (1.0 - a) * (state.var + a * r * r), state.var)
        new = DetectorState(mean, var, stat, n + 1, state.delay_line.at[slot].set(x))
        new = jax.tree.map(lambda r_, s: jnp.where(alarm, r_, s), self.init(), new)
        return new, alarm, stat == 0.0, stat


def detect(detector: PageHinkley, signal) -> Dict[str, jax.Array]:
    """The detector run over a whole signal ``[T]`` (a ``lax.scan``): ``{"alarm": [T] bool, "stat": [T] (PH_t),
    "mean": [T], "var": [T]}`` (the running statistics after each observation)."""
    if not isinstance(detector, PageHinkley):
        raise TypeError(f"detector must be a PageHinkley, got {type(detector).__name__}")
    signal = jnp.asarray(signal, jnp.float32)
    if signal.ndim != 1:
        raise ValueError(f"signal must have shape [T], got {signal.shape}")

    def step(st, x):
        new, alarm, _, stat = detector.step(st, x)
        return new, {"alarm": alarm, "stat": stat, "mean": new.mean, "var": new.var}

    return jax.lax.scan(step, detector.init(), signal)[1]


# ----------------------------------------------------------------------------------------------------------------
# The task-free run
# ----------------------------------------------------------------------------------------------------------------


class TaskFreeResults(NamedTuple):
    """What a task-free run reports.

    ``R [S, K]``: ``R[i, j]`` = score on task ``j`` after the last episode of segment ``i`` (the true boundaries);
    ``baseline [K]``: the untrained scores; ``alarms [E]``: the detector's alarms (in every mode);
    ``consolidated [E]``: where the run consolidated; ``traces``: ``{name: [E]}`` per-episode records of the update
    step (``loss``, ``penalty``, ``finite``, ``score``, the strategy's and the monitors' entries) and the detector's
    ``ph_stat``.
    """

    R: jax.Array
    baseline: jax.Array
    alarms: jax.Array
    consolidated: jax.Array
    traces: Dict[str, jax.Array]


def _where(flag, new, old):
    return jax.tree.map(lambda n, o: jnp.where(flag, n, o), new, old)


@dataclasses.dataclass(frozen=True)
class TaskFreeRun:
    """A task-free run over ``run``'s source and strategy (built by :func:`make_taskfree_run`)."""

    run: Run
    boundaries: str
    detector: PageHinkley

    def hparams(self, **values) -> HParams:
        """The underlying run's hyperparameters (see :meth:`clloop_jax.loop.Run.hparams`)."""
        return self.run.hparams(**values)

    # ----- the program ------------------------------------------------------------------------------------
    def _evaluate(self, params, tasks, k_eval, hp):
        src = self.run.source
        keys = jax.vmap(lambda i: jax.random.fold_in(k_eval, i))(jnp.arange(src.num_tasks))
        return jax.vmap(lambda task, k: src.score(k, params, task, hp.source))(tasks, keys)

    def _program(self, axis_name, tasks, key, hp: HParams, sched: ScheduleArrays):
        run, src, det = self.run, self.run.source, self.detector
        K, S = src.num_tasks, sched.order.shape[0]
        _, k_eval, k_stream = jax.random.split(key, 3)
        state = run._init(tasks, key, hp)
        baseline = self._evaluate(state.params, tasks, k_eval, hp)
        needs_data = run.needs_data()

        def any_seed(flag):
            return flag if axis_name is None else jax.lax.psum(flag.astype(jnp.int32), axis_name) > 0

        def batch_of(params, k):
            return mixture_batch(src.base, k, params, tasks, sched.weights[0], hp.source)

        samples_shape = jax.eval_shape(lambda p, k: src.samples(batch_of(p, k)), state.params, k_stream)
        zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), samples_shape)
        snapshot = (state.params, zeros if needs_data else None)

        def episode(carry, xs):
            st, det_state, snap, R = carry
            t, weights, row, end = xs
            k_batch, k_update, k_cons = jax.random.split(jax.random.fold_in(k_stream, t), 3)
            batch = mixture_batch(src.base, k_batch, st.params, tasks, weights, hp.source)
            st, trace = run.update(st, batch, k_update, hp)
            det_state, alarm, in_control, stat = det.step(det_state, trace["loss"])
            samples = src.samples(batch) if needs_data else None
            trigger = jnp.array(False)
            if self.boundaries != "none":
                if self.boundaries == "detect":
                    trigger, (params_c, data_c) = alarm, snap
                else:
                    trigger, params_c, data_c = end, st.params, samples

                def consolidate(s):
                    slot = jnp.minimum(s.tasks_done, K - 1)
                    new = run.consolidate(s._replace(params=params_c), k_cons, slot, data_c, hp)
                    new = new._replace(params=s.params)
                    if run.config.reset_optimizer:
                        new = new._replace(opt_state=run.optimizer(hp).init(s.params))
                    return _where(trigger, new, s)

                st = jax.lax.cond(any_seed(trigger), consolidate, lambda s: s, st)
                if self.boundaries == "detect":
                    snap = _where(in_control, (st.params, samples), snap)

            def evaluate(r):
                scores = self._evaluate(st.params, tasks, k_eval, hp)
                return jnp.where(row >= 0, r.at[jnp.maximum(row, 0)].set(scores), r)

            R = jax.lax.cond(any_seed(row >= 0), evaluate, lambda r: r, R)
            trace = dict(trace, ph_stat=stat)
            return (st, det_state, snap, R), (trace, alarm, trigger)

        E = sched.weights.shape[0]
        R0 = jnp.zeros((S, K), baseline.dtype)
        xs = (jnp.arange(E), sched.weights, sched.eval_row, sched.segment_end)
        (state, _, _, R), (traces, alarms, consolidated) = jax.lax.scan(
            episode, (state, det.init(), snapshot, R0), xs)
        return state, TaskFreeResults(R, baseline, alarms, consolidated, traces)

    # ----- public -----------------------------------------------------------------------------------------
    def _checked(self, hp, schedule):
        self.run.check_hparams(hp)
        if not isinstance(schedule, Schedule):
            raise TypeError(f"schedule must be a Schedule (abrupt_schedule, irregular_schedule, gradual_schedule), "
                            f"got {type(schedule).__name__}")
        if schedule.num_tasks != self.run.source.num_tasks:
            raise ValueError(f"schedule has {schedule.num_tasks} tasks, the source {self.run.source.num_tasks}")
        return schedule.arrays()

    def __call__(self, key, hp: HParams, schedule: Schedule):
        """One seed over the stream ``schedule``, one compiled program: ``(final_state, TaskFreeResults)``.
        ``jax.vmap`` it over keys for seeds, or use :meth:`seeds`."""
        key = check_key("key", key)
        arrays = self._checked(hp, schedule)
        return _jit_taskfree(self, self.run.source.tasks, key, hp, arrays)

    def seeds(self, keys, hp: HParams, schedule):
        """Many seeds in one program: ``keys [N]``; ``schedule`` one :class:`Schedule` for every seed or a sequence of
        ``N`` schedules of the same shape (each seed its own stream). Consolidations and evaluations run only on
        the episodes where some seed needs them. Returns ``(final_states, TaskFreeResults)`` with a leading axis
        ``N``."""
        keys = check_key("keys", keys, ndim=1)
        n = int(jnp.shape(keys)[0])
        if isinstance(schedule, Schedule):
            arrays = self._checked(hp, schedule)
        else:
            schedules = list(schedule)
            if len(schedules) != n:
                raise ValueError(f"schedule must be one Schedule or {n} (one per key), got {len(schedules)}")
            parts = [self._checked(hp, s) for s in schedules]
            shapes = {tuple(x.shape for x in p) for p in parts}
            if len(shapes) != 1:
                raise ValueError(f"the schedules must have equal shapes (episodes, tasks, segments), got {shapes}")
            arrays = jax.tree.map(lambda *xs: jnp.stack(xs), *parts)
        return _jit_taskfree_seeds(self, self.run.source.tasks, keys, hp, arrays)


def _single(tf: TaskFreeRun, tasks, key, hp, arrays):
    return tf._program(None, tasks, key, hp, arrays)


def _many(tf: TaskFreeRun, tasks, keys, hp, arrays):
    in_axes = (0, None, 0 if arrays.weights.ndim == 3 else None)
    return jax.vmap(lambda k, h, a: tf._program("seed", tasks, k, h, a), in_axes=in_axes,
                    axis_name="seed")(keys, hp, arrays)


_jit_taskfree = _Program(_single)
_jit_taskfree_seeds = _Program(_many)


def make_taskfree_run(config: RunConfig, source, boundaries: str = "detect",
                      detector: Optional[PageHinkley] = None) -> TaskFreeRun:
    """A task-free run: ``tf = make_taskfree_run(config, source)``; ``tf(key, hp, schedule)``.

    ``config`` is the :class:`~clloop_jax.loop.RunConfig` of the update step and the consolidation (its strategy,
    Fisher variant, monitors, clipping, optimizer; ``reset_optimizer`` resets the optimizer at every
    consolidation); its ``episodes_per_task`` is not used (the schedule gives the stream's length).
    ``boundaries``: ``"detect"``, ``"oracle"`` or ``"none"`` (see the module docstring). ``detector``: the
    :class:`PageHinkley` test (default settings when None).
    """
    if not isinstance(config, RunConfig):
        raise TypeError(f"config must be a RunConfig, got {type(config).__name__}")
    if boundaries not in BOUNDARIES:
        raise ValueError(f"boundaries must be one of {list(BOUNDARIES)}, got {boundaries!r}")
    detector = PageHinkley() if detector is None else detector
    if not isinstance(detector, PageHinkley):
        raise TypeError(f"detector must be a PageHinkley, got {type(detector).__name__}")
    if not isinstance(source, (EnvSource, SupervisedSource)) and not hasattr(source, "mixture_batch"):
        _one_sample_source(source)  # the TypeError naming what a source needs
    return TaskFreeRun(make_run(config, _StreamSource(source)), boundaries, detector)


# ----------------------------------------------------------------------------------------------------------------
# Metrics
# ----------------------------------------------------------------------------------------------------------------


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
    if max_delay is not None and (not _is_int(max_delay) or max_delay < 0):
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
