"""Boundary-free penalties: importance and anchor accumulated online, with no consolidation event.

Task-free streams never say when a task ends, so these strategies never wait for ``consolidate``: after every
optimizer step they update a running importance ``Omega`` and a running anchor ``theta_bar``, and every update pays
the same quadratic penalty as the boundary strategies of :mod:`clloop_jax.strategies.penalties`,

    penalty(theta) = (lam / 2) * sum_i Omega_i (theta_i - theta_bar_i)^2,    gradient lam * Omega * (theta - theta_bar).

Both running quantities are normalised exponentially weighted averages over the parameter trajectory, each with
its own memory: ``decay`` for the importance and ``anchor_decay`` for the anchor (the memory horizon of a decay
``a`` is about ``1 / (1 - a)`` updates). With ``theta_1, theta_2, ...`` the parameters after each update and
``m_t = anchor_decay * m_{t-1} + 1`` (``m_0 = 0``) the anchor's total weight,

    theta_bar_t = sum_{s<=t} anchor_decay^(t-s) theta_s / m_t,
    i.e.  theta_bar_t = theta_bar_{t-1} + (theta_t - theta_bar_{t-1}) / m_t,

so the anchor is the recent past of the trajectory (the first update sets it to ``theta_1``; no bias towards the
initialisation), lagging the current parameters by about ``anchor_decay / (1 - anchor_decay)`` updates once the
trajectory is longer than the horizon (the mean age of its terms). ``anchor_decay = decay`` (the factories'
default) gives one memory for both; a short anchor memory (say a horizon of the order of a blend between tasks)
makes the penalty pull towards a lagged average of the recent parameters, not towards the mean of the whole
trajectory, while a long importance memory keeps what every past task needed. Before the first update
``Omega = 0``: the penalty is exactly 0.

* ``streaming_ewc`` (online EWC in streaming form): ``Omega`` is the same kind of normalised average of per-batch
  Fisher diagonals with memory ``decay``, ``Omega_t = Omega_{t-1} + (F_t - Omega_{t-1}) / n_t`` with
  ``n_t = decay * n_{t-1} + 1``, and ``F_t`` the Fisher diagonal at the
  parameters update ``t`` started from (``theta_{t-1}``, those its batch was learned from) on that update's batch,
  from per-sample gradients
  (:func:`clloop_jax.importance.fisher.fisher_diagonal`, ``variant`` ``"sampled"`` by default; never a squared batch
  gradient). ``every = k`` computes the Fisher on every k-th update only (the others leave ``Omega`` unchanged,
  and the average then runs over those updates, ``n`` counting only them); the anchor is updated every step.
  With ``decay = anchor_decay = 1`` the importance is the plain mean of every Fisher seen and the anchor the mean
  of the whole trajectory.
* ``streaming_si`` (synaptic intelligence in streaming form): the path integral of Zenke et al. (2017), decayed
  instead of reset at a task's end, ``w_t = decay * w_{t-1} - g_t * (theta_t - theta_{t-1})`` with ``g_t`` the
  gradient of the task loss alone at ``theta_{t-1}``; its importance is SI's formula over that exponential window,
  ``Omega_t = max(0, w_t) / ((theta_t - theta_bar_t)^2 + xi)``: the recent loss decrease each parameter is
  responsible for, over the squared distance it travelled from the anchor (the mean position over the anchor's
  window). ``lam = 2c`` as in
  :func:`~clloop_jax.strategies.penalties.si`.

Both keep their state in a :class:`StreamingState`. Their ``consolidate`` is
None: a run with known boundaries runs them unchanged (nothing happens at a boundary), and so does the task-free
run of :mod:`clloop_jax.taskfree`.
"""

from __future__ import annotations

import numbers
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from clloop_jax.importance import fisher as fisher_lib
from clloop_jax.strategies.base import Strategy, check_hparams, nonnegative, positive, register, unit_interval
from clloop_jax.strategies.penalties import quadratic_form

__all__ = ["STREAMING", "StreamingEWCHParams", "StreamingSIHParams", "StreamingState", "streaming_ewc", "streaming_si",
           "running_weight"]

FISHER_VARIANTS = ("empirical", "sampled", "exact")


class StreamingEWCHParams(NamedTuple):
    """``lam``: the penalty strength (>= 0); ``decay``: the memory of the running Fisher, in [0, 1];
    ``anchor_decay``: the memory of the running anchor, in [0, 1]."""

    lam: Any = 1.0
    decay: Any = 0.99
    anchor_decay: Any = 0.99

    def check(self):
        nonnegative("lam", self.lam)
        unit_interval("decay", self.decay)
        unit_interval("anchor_decay", self.anchor_decay)


class StreamingSIHParams(NamedTuple):
    """``lam``: the penalty strength (>= 0; SI's ``c`` is ``lam / 2``); ``xi``: the damping (> 0); ``decay``: the
    memory of the path integral, in [0, 1]; ``anchor_decay``: the memory of the running anchor, in [0, 1]."""

    lam: Any = 1.0
    xi: Any = 0.1
    decay: Any = 0.99
    anchor_decay: Any = 0.99

    def check(self):
        nonnegative("lam", self.lam)
        positive("xi", self.xi)
        unit_interval("decay", self.decay)
        unit_interval("anchor_decay", self.anchor_decay)


def running_weight(n_prev, decay):
    """``n_t = decay * n_{t-1} + 1``: the total weight of an exponentially weighted average after one more term."""
    return decay * n_prev + 1.0


class StreamingState(NamedTuple):
    """The state of a boundary-free penalty; every leaf is an array.

    Attributes:
      importance: ``Omega``, a pytree like params (zeros before the first update).
      anchor: ``theta_bar``, a pytree like params (the initial parameters before the first update).
      path: SI's decayed path integral ``w``, a pytree like params (``()`` for streaming EWC).
      anchor_weight: scalar ``m_t`` of the anchor's average (memory ``anchor_decay``).
      importance_weight: scalar ``n`` of the Fisher average (streaming EWC; it counts only the updates that computed
        a Fisher).
      count: int32 scalar, the updates seen.
    """

    importance: Any
    anchor: Any
    path: Any
    anchor_weight: jax.Array
    importance_weight: jax.Array
    count: jax.Array


def _init(params, hp, with_path: bool) -> StreamingState:
    dtype = jnp.result_type(float)
    zeros = jax.tree.map(jnp.zeros_like, params)
    return StreamingState(importance=zeros, anchor=jax.tree.map(jnp.asarray, params),
                          path=zeros if with_path else (), anchor_weight=jnp.zeros((), dtype),
                          importance_weight=jnp.zeros((), dtype), count=jnp.zeros((), jnp.int32))


def _init_ewc(params, hp) -> StreamingState:
    return _init(params, hp, with_path=False)


def _init_si(params, hp) -> StreamingState:
    return _init(params, hp, with_path=True)


def _penalty(state: StreamingState, params, hp) -> jax.Array:
    return 0.5 * hp.lam * quadratic_form(state, params)


def _toward(avg, new, n):
    """``avg + (new - avg) / n`` leaf by leaf, in each leaf's dtype."""
    return jax.tree.map(lambda a, x: (a + (x - a) / n).astype(jnp.result_type(a)), avg, new)


def _weight(n_prev, decay):
    return running_weight(n_prev, decay).astype(n_prev.dtype)


# ----- streaming EWC -------------------------------------------------------------------------------------------


def _ewc_accumulate(state, params_old, params_new, grads, hp):
    del params_old, grads
    n = _weight(state.anchor_weight, hp.anchor_decay)
    return state._replace(anchor=_toward(state.anchor, params_new, n), anchor_weight=n)


class _EWCObserve:
    """The Fisher half of streaming EWC (a class so that equal settings compare equal: one compilation)."""

    def __init__(self, variant: str, every: int, num_samples: int, chunk_size):
        self.variant, self.every, self.num_samples, self.chunk_size = variant, every, num_samples, chunk_size

    def _key(self):
        return (self.variant, self.every, self.num_samples, self.chunk_size)

    def __eq__(self, other):
        return isinstance(other, _EWCObserve) and self._key() == other._key()

    def __hash__(self):
        return hash(("streaming_ewc", self._key()))

    def __call__(self, state, params, samples, source, key, hp):
        inputs, targets = samples

        def with_fisher(st):
            fisher = fisher_lib.fisher_diagonal(source.predict, params, inputs, targets,
                                                likelihood=source.likelihood, variant=self.variant, key=key,
                                                num_samples=self.num_samples, chunk_size=self.chunk_size)
            n = _weight(st.importance_weight, hp.decay)
            return st._replace(importance=_toward(st.importance, fisher, n), importance_weight=n)

        if self.every > 1:
            state = jax.lax.cond(state.count % self.every == 0, with_fisher, lambda st: st, state)
        else:
            state = with_fisher(state)
        return state._replace(count=state.count + 1)


def streaming_ewc(lam=1.0, decay=0.99, variant: str = "sampled", every: int = 1, num_samples: int = 1,
                  chunk_size=None, anchor_decay=None) -> Strategy:
    """Online EWC with no boundaries: a running Fisher (from per-sample gradients of each batch) and a running
    anchor, normalised exponential averages with memories ``decay`` and ``anchor_decay`` (``None``: equal to
    ``decay``; see the module docstring). Both are traced hyperparameters: a run's ``hparams(decay=...)`` sets
    only the importance's memory, ``hparams(anchor_decay=...)`` the anchor's.

    ``variant``: the Fisher (``"empirical"``, ``"sampled"``, ``"exact"``); ``every``: compute it on every k-th
    update; ``num_samples``, ``chunk_size``: as in :func:`clloop_jax.importance.fisher.fisher_diagonal`.
    """
    if variant not in FISHER_VARIANTS:
        raise ValueError(f"variant must be one of {list(FISHER_VARIANTS)}, got {variant!r}")
    for name, value in (("every", every), ("num_samples", num_samples)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, numbers.Integral)
                                   or chunk_size < 1):
        raise ValueError(f"chunk_size must be an integer >= 1 or None, got {chunk_size!r}")
    hp = StreamingEWCHParams(lam=lam, decay=decay, anchor_decay=decay if anchor_decay is None else anchor_decay)
    check_hparams(hp, "strategy")
    return Strategy("streaming_ewc", hp, init=_init_ewc, penalty=_penalty, accumulate=_ewc_accumulate,
                    observe=_EWCObserve(variant, int(every), int(num_samples), chunk_size))


# ----- streaming SI --------------------------------------------------------------------------------------------


def _si_accumulate(state, params_old, params_new, grads, hp):
    n = _weight(state.anchor_weight, hp.anchor_decay)
    path = jax.tree.map(lambda w, g, new, old: (hp.decay * w - g * (new - old)).astype(jnp.result_type(w)),
                        state.path, grads, params_new, params_old)
    anchor = _toward(state.anchor, params_new, n)
    importance = jax.tree.map(
        lambda w, p, a: (jnp.maximum(0.0, w) / (jnp.square(p - a) + hp.xi)).astype(jnp.result_type(w)),
        path, params_new, anchor)
    return state._replace(importance=importance, anchor=anchor, path=path, anchor_weight=n, count=state.count + 1)


def streaming_si(lam=1.0, xi=0.1, decay=0.99, anchor_decay=None) -> Strategy:
    """Synaptic intelligence with no boundaries: a decayed path integral over an exponential window (memory
    ``decay``) and SI's importance over that window, around a running anchor (memory ``anchor_decay``; ``None``:
    equal to ``decay``; see the module docstring)."""
    hp = StreamingSIHParams(lam=lam, xi=xi, decay=decay, anchor_decay=decay if anchor_decay is None else anchor_decay)
    check_hparams(hp, "strategy")
    return Strategy("streaming_si", hp, init=_init_si, penalty=_penalty, accumulate=_si_accumulate)


STREAMING = ("streaming_ewc", "streaming_si")

for _name, _factory in zip(STREAMING, (streaming_ewc, streaming_si)):
    register(_name, _factory)
