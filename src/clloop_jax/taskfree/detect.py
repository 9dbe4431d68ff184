"""Shift detection: the one-sided Page-Hinkley test on the standardised training loss."""

from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Dict, NamedTuple

import jax
import jax.numpy as jnp

from clloop_jax.validation import is_int

__all__ = ["PageHinkley", "DetectorState", "detect", "siegmund_arl"]


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
        if not is_int(self.lag) or self.lag < 1:
            raise ValueError(f"PageHinkley.lag must be an integer >= 1, got {self.lag!r}")
        if not is_int(self.warmup) or self.warmup < self.lag + 2:
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
