"""Continual-learning metrics over the performance matrix, confidence intervals, and report tables.

The performance matrix ``R`` is ``T x T``: ``R[i, j]`` is the score on task ``j`` after training on tasks
``0..i`` (row = how far training has gone, column = the task evaluated). ``b[j]`` is the score of the untrained
agent on task ``j``. Every metric accepts leading batch axes (``R [..., T, T]``, ``b [..., T]``), for example one
axis of seeds or of swept hyperparameters, and returns one value per run (``[...]``).

Metrics (``T`` tasks):

* ``average_performance`` (ACC, Lopez-Paz & Ranzato 2017): ``mean_j R[T-1, j]``.
* ``backward_transfer`` (BWT, ibid.): ``1/(T-1) sum_{i<T-1} (R[T-1, i] - R[i, i])``; negative means forgetting.
* ``forward_transfer`` (FWT, ibid.): ``1/(T-1) sum_{i>=1} (R[i-1, i] - b[i])``.
* ``average_forgetting`` (Chaudhry et al. 2018): ``1/(T-1) sum_{j<T-1} max_{l in 0..T-2} (R[l, j] - R[T-1, j])``.
  The maximum runs over every earlier row, as in the paper; it is negative when the final score of a task
  exceeds all its earlier scores.
* ``learning_accuracy`` (Riemer et al. 2019): ``mean_i R[i, i]``, the score of each task just after learning it.

Rows that were not evaluated in full (a run with ``RunConfig(evaluate_every=k > 1)`` evaluates every task only
after every k-th task and after the last; its other rows hold the diagonal ``R[i, i]`` and NaN elsewhere) are read
as missing values: average performance, backward transfer and learning accuracy read only the last row and the
diagonal, which are always there; average forgetting's maximum runs over the earlier rows that evaluated task ``j``
(NaN entries left out; the diagonal ``R[j, j]`` is always among them); forward transfer averages the terms
``R[i-1, i] - b[i]`` whose row ``i-1`` was evaluated in full and is ``nan`` when none was. With no NaN entry every
metric is the formula above.

With a single task (``T == 1``) nothing can be transferred or forgotten and the three transfer/forgetting
metrics have no terms: they are defined as ``nan`` (not 0), so that a one-task run is never mistaken for a run
with exactly no forgetting.

Array namespace: NumPy inputs are computed in float64 with NumPy and return NumPy values; JAX inputs (including
tracers, so the functions can be used inside ``jit``/``vmap``) are computed with ``jax.numpy``.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from clloop_jax.validation import check_array, check_axis, check_float, check_int

__all__ = [
    "average_performance",
    "backward_transfer",
    "forward_transfer",
    "average_forgetting",
    "learning_accuracy",
    "summarize",
    "t_quantile",
    "mean_ci",
    "format_matrix",
    "format_summary",
    "format_meanings",
    "METRIC_NAMES",
    "METRIC_MEANINGS",
]

#: The scalar metrics that :func:`summarize` reports, in report order.
METRIC_NAMES = (
    "average_performance",
    "backward_transfer",
    "forward_transfer",
    "average_forgetting",
    "learning_accuracy",
)

#: What each metric of :data:`METRIC_NAMES` says, in one line (tasks numbered from 1, as in printed tables).
METRIC_MEANINGS = {
    "average_performance": "the final score, averaged over every task (higher is better)",
    "backward_transfer": "how each earlier task's score changed from just after learning it to the end "
                         "(negative = forgetting)",
    "forward_transfer": "the score on each task just before training on it, minus the untrained agent's "
                        "(positive = earlier tasks helped)",
    "average_forgetting": "how far each earlier task's final score fell below its best earlier score "
                          "(lower is better)",
    "learning_accuracy": "the score on each task just after learning it, averaged (plasticity)",
}


# ----------------------------------------------------------------------------------------------------------------
# Input handling
# ----------------------------------------------------------------------------------------------------------------


def _namespace(*arrays):
    """``jnp`` when any input is a JAX array (or tracer), otherwise ``np``."""
    return jnp if any(isinstance(a, jax.Array) for a in arrays) else np


def _as_matrix(R, name: str = "R"):
    R = check_array(name, R, allow_bool=True)
    xp = _namespace(R)
    R = xp.asarray(R, dtype=np.float64) if xp is np else jnp.asarray(R)
    if not (xp is np) and not jnp.issubdtype(R.dtype, jnp.floating):
        R = R.astype(jnp.float32)
    if R.ndim < 2 or R.shape[-1] != R.shape[-2]:
        raise ValueError(f"{name} must be a square performance matrix of shape [..., T, T], got shape {R.shape}")
    if R.shape[-1] < 1:
        raise ValueError(f"{name} must have at least one task (T >= 1), got shape {R.shape}")
    return xp, R


def _as_baseline(b, R, xp):
    T = R.shape[-1]
    b = xp.asarray(check_array("b", b, allow_bool=True), dtype=R.dtype)
    if b.ndim < 1 or b.shape[-1] != T:
        raise ValueError(f"b must have shape [..., T] with T={T} (the tasks of R, shape {R.shape}), "
                         f"got shape {b.shape}")
    try:
        np.broadcast_shapes(b.shape[:-1], R.shape[:-2])
    except ValueError:
        raise ValueError(f"b's batch axes {b.shape[:-1]} do not broadcast with R's batch axes {R.shape[:-2]} "
                         f"(b shape {b.shape}, R shape {R.shape})") from None
    return b


def _nan_like(xp, R):
    return xp.full(R.shape[:-2], xp.nan, dtype=R.dtype)


def _nanmax(xp, x):
    """The maximum over axis -2 of the entries that are not NaN (NaN where a column has none), without NumPy's
    all-NaN warning; the plain maximum when nothing is NaN."""
    missing = xp.isnan(x)
    best = xp.max(xp.where(missing, -xp.inf, x), axis=-2)
    return xp.where(xp.all(missing, axis=-2), xp.nan, best)


def _nanmean(xp, x):
    """The mean over the last axis of the entries that are not NaN (NaN when there is none), without NumPy's empty
    slice warning; the plain mean's value when nothing is NaN."""
    present = ~xp.isnan(x)
    count = xp.sum(present, axis=-1)
    total = xp.sum(xp.where(present, x, 0), axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return xp.where(count > 0, total / xp.maximum(count, 1), xp.nan)


# ----------------------------------------------------------------------------------------------------------------
# Metrics
# ----------------------------------------------------------------------------------------------------------------


def average_performance(R):
    """ACC: the mean final score over all tasks, ``mean_j R[T-1, j]``; shape ``R.shape[:-2]``."""
    xp, R = _as_matrix(R)
    return xp.mean(R[..., -1, :], axis=-1)


def learning_accuracy(R):
    """LA: the mean score of each task right after learning it, ``mean_i R[i, i]``; shape ``R.shape[:-2]``."""
    xp, R = _as_matrix(R)
    return xp.mean(xp.diagonal(R, axis1=-2, axis2=-1), axis=-1)


def backward_transfer(R):
    """BWT: ``1/(T-1) sum_{i<T-1} (R[T-1, i] - R[i, i])``; ``nan`` when ``T == 1``. Negative = forgetting."""
    xp, R = _as_matrix(R)
    T = R.shape[-1]
    if T == 1:
        return _nan_like(xp, R)
    diag = xp.diagonal(R, axis1=-2, axis2=-1)
    return xp.mean(R[..., -1, :-1] - diag[..., :-1], axis=-1)


def forward_transfer(R, b):
    """FWT (Lopez-Paz & Ranzato 2017): ``1/(T-1) sum_{i>=1} (R[i-1, i] - b[i])``; ``nan`` when ``T == 1``.

    ``b [..., T]``: the untrained agent's score on each task (broadcast against ``R``'s batch axes). A NaN
    ``R[i-1, i]`` (row ``i-1`` not evaluated in full) leaves its term out: the mean runs over the terms present, and
    is ``nan`` when none is.
    """
    xp, R = _as_matrix(R)
    xp = _namespace(R, b)
    if xp is jnp:
        R = jnp.asarray(R)
    b = _as_baseline(b, R, xp)
    T = R.shape[-1]
    if T == 1:
        return _nan_like(xp, R) + 0 * b[..., 0]
    superdiag = xp.diagonal(R, offset=1, axis1=-2, axis2=-1)  # R[i-1, i] for i = 1..T-1
    return _nanmean(xp, superdiag - b[..., 1:])


def average_forgetting(R):
    """Average forgetting (Chaudhry et al. 2018).

    ``1/(T-1) sum_{j<T-1} max_{l in 0..T-2} (R[l, j] - R[T-1, j])``; ``nan`` when ``T == 1``. The maximum is
    over all earlier rows, so a task whose final score beats every earlier score contributes a negative amount.
    """
    xp, R = _as_matrix(R)
    T = R.shape[-1]
    if T == 1:
        return _nan_like(xp, R)
    best = _nanmax(xp, R[..., :-1, :-1])  # max over l in 0..T-2, for each j in 0..T-2
    return xp.mean(best - R[..., -1, :-1], axis=-1)


def summarize(R, b=None) -> dict:
    """All metrics of ``R`` (and ``b``) in one dict.

    Keys: the names in :data:`METRIC_NAMES` (each of shape ``R.shape[:-2]``; ``forward_transfer`` is ``nan``
    when ``b`` is None) and ``"final"`` (the last row ``R[..., T-1, :]``).
    With ``R [S, T, T]`` every metric has shape ``[S]``, equal to the metric of each run on its own.
    """
    xp, R_ = _as_matrix(R)
    if b is None:
        fwt = _nan_like(xp, R_)
    else:
        fwt = forward_transfer(R, b)
    return {
        "average_performance": average_performance(R),
        "backward_transfer": backward_transfer(R),
        "forward_transfer": fwt,
        "average_forgetting": average_forgetting(R),
        "learning_accuracy": learning_accuracy(R),
        "final": R_[..., -1, :],
    }


# ----------------------------------------------------------------------------------------------------------------
# Confidence intervals
# ----------------------------------------------------------------------------------------------------------------


def _t_two_sided_mass(t: float, df: int) -> float:
    """``P(|T| <= t)`` for Student's t with integer ``df``.

    A closed-form finite series in ``theta = atan(t / sqrt(df))`` (Abramowitz & Stegun 26.7.3).
    """
    theta = math.atan(t / math.sqrt(df))
    s, c = math.sin(theta), math.cos(theta)
    if df % 2 == 1:
        # (2/pi) [theta + sin(theta) (cos + 2/3 cos^3 + (2*4)/(3*5) cos^5 + ...)], terms up to cos^(df-2).
        total, term = 0.0, c
        for k in range(1, (df - 1) // 2 + 1):
            total += term
            term *= c * c * (2 * k) / (2 * k + 1)
        return (2.0 / math.pi) * (theta + s * total)
    # sin(theta) [1 + 1/2 cos^2 + (1*3)/(2*4) cos^4 + ...], terms up to cos^(df-2).
    total, term = 0.0, 1.0
    for k in range(1, df // 2 + 1):
        total += term
        term *= c * c * (2 * k - 1) / (2 * k)
    return s * total


def _normal_quantile(p: float) -> float:
    """Inverse standard normal CDF by bisection on ``erf`` (accurate to ~1e-14)."""
    lo, hi = -40.0, 40.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if 0.5 * (1.0 + math.erf(mid / math.sqrt(2.0))) < p:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def _check_confidence(confidence) -> float:
    check_float("confidence", confidence, min=0, max=1, open_min=True, open_max=True, scalar=True)
    return float(confidence)


def t_quantile(confidence: float, df: int) -> float:
    """The two-sided Student t critical value: ``t`` with ``P(|T_df| <= t) = confidence``.

    Exact for every integer ``df >= 1`` (a closed-form CDF inverted by bisection); for ``df > 2000`` the
    Cornish-Fisher expansion around the normal quantile is used (error below 1e-9). Needs no SciPy.
    """
    _check_confidence(confidence)
    df = check_int("df", df, min=1)
    if df > 2000:
        z = _normal_quantile(0.5 + 0.5 * confidence)
        g1 = (z ** 3 + z) / 4
        g2 = (5 * z ** 5 + 16 * z ** 3 + 3 * z) / 96
        g3 = (3 * z ** 7 + 19 * z ** 5 + 17 * z ** 3 - 15 * z) / 384
        return z + g1 / df + g2 / df ** 2 + g3 / df ** 3
    lo, hi = 0.0, 1.0
    while _t_two_sided_mass(hi, df) < confidence:
        hi *= 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if _t_two_sided_mass(mid, df) < confidence:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-13 * max(1.0, hi):
            break
    return 0.5 * (lo + hi)


def mean_ci(x, axis: Optional[int] = 0, confidence: float = 0.95) -> Tuple[Any, Any]:
    """Mean and the half-width of its Student t confidence interval along ``axis``.

    ``half_width = t_{df=n-1} * std(x, ddof=1) / sqrt(n)`` with ``n = x.shape[axis]``; ``nan`` when ``n == 1``.
    ``axis=None`` pools every element (``n = x.size``), as NumPy reductions do.
    Returns ``(mean, half_width)``, both with ``axis`` removed (NumPy float64 for NumPy input, ``jnp`` for JAX).
    """
    x = check_array("x", x, allow_bool=True)
    _check_confidence(confidence)
    xp = _namespace(x)
    x = np.asarray(x, dtype=np.float64) if xp is np else jnp.asarray(x)
    if x.ndim == 0:
        raise ValueError(f"x must have at least one axis to average over, got shape {x.shape}")
    if axis is None:
        x, axis = x.reshape(-1), 0
    try:
        axis = check_axis("axis", axis, x.ndim)
    except ValueError as err:  # keep the shape of x in the message
        raise type(err)(f"{err} (axis={axis!r} for x of shape {x.shape})") from None
    n = x.shape[axis]
    if n < 1:
        raise ValueError(f"x must have at least one sample along axis {axis}, got shape {x.shape}")
    mean = xp.mean(x, axis=axis)
    if n == 1:
        return mean, xp.full(mean.shape, xp.nan, dtype=mean.dtype)
    t = t_quantile(confidence, n - 1)
    return mean, t * xp.std(x, axis=axis, ddof=1) / math.sqrt(n)


# ----------------------------------------------------------------------------------------------------------------
# Report tables (markdown)
# ----------------------------------------------------------------------------------------------------------------


def _fmt(v: float, precision: int) -> str:
    return "nan" if not np.isfinite(v) else f"{v:+.{precision}f}"


def format_matrix(R, names: Optional[Sequence[str]] = None, b=None, precision: int = 3) -> str:
    """The performance matrix as a markdown table: one row per training stage, one column per evaluated task.

    ``names``: task names (default ``task 1, task 2, ...``, numbered from 1: row ``task i`` is the scores after
    training on tasks 1 to i, column ``task j`` the score on task j); ``b``: optional untrained scores, shown as a
    first row. A batched ``R [..., T, T]`` is shown as its mean over the batch axes.
    """
    check_int("precision", precision, min=0)
    _, R = _as_matrix(np.asarray(check_array("R", R, allow_bool=True)))
    T = R.shape[-1]
    if R.ndim > 2:
        R = R.reshape((-1, T, T)).mean(axis=0)
    names = [f"task {j + 1}" for j in range(T)] if names is None else [str(n) for n in names]
    if len(names) != T:
        raise ValueError(f"names must have T={T} entries (one per task of R, shape {R.shape}), got {len(names)}")
    header = "| after \\ on | " + " | ".join(names) + " |"
    rule = "|---|" + "---:|" * T
    lines = [header, rule]
    if b is not None:
        b = _as_baseline(np.asarray(b, dtype=np.float64), R, np)
        b = b.reshape((-1, T)).mean(axis=0)
        lines.append("| untrained | " + " | ".join(_fmt(v, precision) for v in b) + " |")
    for i in range(T):
        lines.append(f"| {names[i]} | " + " | ".join(_fmt(v, precision) for v in R[i]) + " |")
    return "\n".join(lines)


def format_meanings(names: Sequence[str] = METRIC_NAMES) -> str:
    """One line per metric of ``names``: ``"name: what it says"`` (:data:`METRIC_MEANINGS`)."""
    if isinstance(names, str):
        raise TypeError(f"names must be a sequence of metric names, got the string {names!r}")
    unknown = [n for n in names if n not in METRIC_MEANINGS]
    if unknown:
        raise ValueError(f"names must be metric names from {list(METRIC_MEANINGS)}, got {unknown}")
    return "\n".join(f"{n}: {METRIC_MEANINGS[n]}" for n in names)


def format_summary(summary: Mapping[str, Any], confidence: float = 0.95, precision: int = 3,
                   title: Optional[str] = None) -> str:
    """The scalar metrics of :func:`summarize` as a markdown table.

    Unbatched metrics print as values; metrics with a leading batch axis of runs (``[S]``) print as
    ``mean ± half-width`` of the ``confidence`` Student t interval over the runs, with ``n = S``.
    """
    _check_confidence(confidence)
    check_int("precision", precision, min=0)
    rows = []
    n_runs = None
    for name in METRIC_NAMES:
        if name not in summary:
            continue
        v = np.asarray(summary[name], dtype=np.float64)
        if v.ndim == 0:
            rows.append((name, _fmt(float(v), precision)))
            continue
        v = v.reshape(-1)
        n_runs = v.size
        m, h = mean_ci(v, axis=0, confidence=confidence)
        rows.append((name, f"{_fmt(float(m), precision)} ± {abs(float(h)):.{precision}f}"
                     if np.isfinite(h) else _fmt(float(m), precision)))
    head = "value" if n_runs is None else f"mean ± {int(round(confidence * 100))}% CI (n={n_runs})"
    lines = [] if title is None else [f"**{title}**", ""]
    lines += [f"| metric | {head} |", "|---|---:|"]
    lines += [f"| {k} | {v} |" for k, v in rows]
    return "\n".join(lines)
