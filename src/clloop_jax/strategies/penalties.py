"""Importance-weighted penalties: none, L2, EWC, online EWC, SI, MAS and an EWC with a divergence budget.

Every strategy here is the same quadratic penalty on the parameter pytree,

    penalty(theta) = (lam / 2) * ( sum_i Omega_i (theta_i - theta*_i)^2 + C ),

with ``Omega`` (the consolidated importance) and ``theta*`` (the anchor) kept in a :class:`RegularizerState`, and
``C`` a constant that is 0 for every strategy but summed EWC (see below). Its gradient is always
``lam * Omega * (theta - theta*)``. Before the first consolidation ``Omega = 0`` and ``C = 0``, so the penalty of
every strategy is exactly 0. Strategies differ in how ``consolidate`` (end of a task) and ``accumulate`` (after
every optimizer step) update the state. How ``lam`` relates to each paper's constant:

* ``none``: plain fine-tuning; no penalty term at all (nothing is traced, no importance is computed).
* ``l2``: ``Omega = 1`` everywhere after the first task, anchored at the last task's parameters; the penalty is
  ``(lam/2) |theta - theta*|^2``.
* ``ewc`` (Kirkpatrick et al., 2017): one penalty per past task, ``sum_t (lam/2) sum_i F_t,i (theta_i -
  theta*_t,i)^2``: ``lam`` is the paper's ``lambda``. It is kept in the exactly equivalent summed form (fixed
  memory, any number of tasks): a sum of quadratics with the same curvature is one quadratic, so with
  ``Omega = sum_t F_t``, ``theta* = sum_t F_t theta*_t / Omega`` (the Fisher-weighted mean of the task anchors;
  where ``Omega_i = 0`` the latest parameters) and ``C = sum_i [sum_t F_t,i theta*_t,i^2 - Omega_i theta*_i^2]
  >= 0``, the value and the gradient are identical to the per-task sum. The state is updated one task at a time by
  the stable recursion ``Omega' = Omega + F``, ``theta*' = (Omega theta* + F theta) / Omega'``,
  ``C' = C + sum_i Omega_i F_i / Omega'_i (theta*_i - theta_i)^2`` (no cancellation). ``C`` shifts the value only;
  the penalty's minimum ``lam C / 2`` is reached at ``theta*``, not 0, once the task anchors differ.
* ``online_ewc`` (Schwarz et al., 2018): ``Omega <- gamma Omega + F``, one anchor (the latest parameters); ``lam``
  is the paper's ``lambda`` and ``gamma`` its decay. With ``gamma = 1`` its ``Omega`` equals summed EWC's.
* ``si`` (Zenke et al., 2017): ``accumulate`` adds ``w += -g * (theta_new - theta_old)`` after every step, where
  ``g`` is the gradient of the task loss alone (without the penalty, as in the paper) evaluated at ``theta_old``.
  At the end of a task ``Omega += max(0, w / ((theta_end - theta_start)^2 + xi))`` (each task's contribution is
  clipped at 0, so the penalty stays a non-negative quadratic), then ``w`` is reset to 0 and ``theta_start`` to
  ``theta_end``, which is also the anchor. The paper's surrogate loss is ``c sum_i Omega_i (theta_i -
  theta*_i)^2``, so ``lam = 2c``; ``xi`` is the paper's damping.
* ``mas`` (Aljundi et al., 2018): ``Omega`` is the sum over tasks of the per-task MAS importances handed to
  ``consolidate`` (see :func:`clloop_jax.importance.fisher.mas_importance`); anchor latest. The paper's penalty is
  ``lambda sum_i Omega_i (theta_i - theta*_i)^2``, so ``lam = 2 lambda``.
* ``ewc_budget``: online-EWC importance and anchor, with ``lam`` adapted by dual ascent so that the
  Fisher-weighted divergence ``D(theta) = sum_i Omega_i (theta_i - theta*_i)^2`` stays under ``budget``: after
  every optimizer step, ``lam <- max(0, lam + dual_lr * (D(theta_new) - budget))``. ``lam`` is the Lagrange
  multiplier of the constraint ``D <= budget`` and stays >= 0: it rises while the constraint is violated and falls
  (to 0 at the least) while it holds. Before the first consolidation there is no constraint (``Omega = 0``) and
  ``lam`` keeps its initial value. ``gamma`` is the online decay as in ``online_ewc``.

Each strategy has its own hyperparameters (``lam`` always; ``gamma``, ``xi``, ``budget``, ``dual_lr`` only where
used), so a value given to a strategy that does not use it is refused rather than silently ignored.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp

from clloop_jax.divergence import check_like, tree_sum
from clloop_jax.strategies.base import (
    NoHParams,
    Strategy,
    check_hparams,
    nonnegative,
    positive,
    register,
    unit_interval,
)

PyTree = Any

__all__ = [
    "RegularizerState", "PenaltyHParams", "OnlineEWCHParams", "SIHParams", "BudgetHParams",
    "none", "l2", "ewc", "online_ewc", "si", "mas", "ewc_budget", "quadratic_form", "penalty_gradient",
    "PENALTIES",
]


class RegularizerState(NamedTuple):
    """The state of a quadratic penalty; every leaf is an array.

    Attributes:
      importance: ``Omega``, a pytree like params (zeros before the first consolidation).
      anchor: ``theta*``, a pytree like params.
      lam: scalar, the current penalty strength (adapted by ``ewc_budget``, the given ``lam`` otherwise).
      constant: scalar ``C`` of the summed EWC form (0 for the other strategies).
      path: SI's running path integral ``w``, a pytree like params (``()`` for the other strategies).
      start: SI's parameters at the start of the current task (``()`` for the other strategies).
      count: int32 scalar, the number of consolidations so far.
    """

    importance: PyTree
    anchor: PyTree
    lam: jax.Array
    constant: jax.Array
    path: PyTree
    start: PyTree
    count: jax.Array


class PenaltyHParams(NamedTuple):
    """``lam``: the penalty strength (>= 0)."""

    lam: Any = 1.0

    def check(self):
        nonnegative("lam", self.lam)


class OnlineEWCHParams(NamedTuple):
    """``lam``: the penalty strength (>= 0); ``gamma``: the decay of the running Fisher, in [0, 1]."""

    lam: Any = 1.0
    gamma: Any = 1.0

    def check(self):
        nonnegative("lam", self.lam)
        unit_interval("gamma", self.gamma)


class SIHParams(NamedTuple):
    """``lam``: the penalty strength (>= 0; the paper's ``c`` is ``lam / 2``); ``xi``: the damping (> 0)."""

    lam: Any = 1.0
    xi: Any = 0.1

    def check(self):
        nonnegative("lam", self.lam)
        positive("xi", self.xi)


class BudgetHParams(NamedTuple):
    """``lam``: the initial strength; ``gamma``: online decay; ``budget``: the allowed Fisher-weighted divergence;
    ``dual_lr``: the dual-ascent step of ``lam``."""

    lam: Any = 1.0
    gamma: Any = 1.0
    budget: Any = 1.0
    dual_lr: Any = 0.1

    def check(self):
        nonnegative("lam", self.lam)
        unit_interval("gamma", self.gamma)
        nonnegative("budget", self.budget)
        nonnegative("dual_lr", self.dual_lr)


# ----------------------------------------------------------------------------------------------------------------
# The shared quadratic
# ----------------------------------------------------------------------------------------------------------------


def quadratic_form(state: RegularizerState, params: PyTree) -> jax.Array:
    """``sum_i Omega_i (theta_i - theta*_i)^2``: the importance-weighted divergence from the anchor (no ``C``)."""
    check_like("params", params, state.anchor, ref_name="the regularizer state's anchor")
    return tree_sum(jax.tree.map(lambda p, a, o: o * jnp.square(p - a), params, state.anchor, state.importance))


def penalty_gradient(state: RegularizerState, params: PyTree) -> PyTree:
    """The penalty's gradient in closed form, ``lam * Omega * (theta - theta*)``, a pytree like ``params``."""
    check_like("params", params, state.anchor, ref_name="the regularizer state's anchor")
    return jax.tree.map(lambda p, a, o: (state.lam * o * (p - a)).astype(jnp.result_type(p)),
                        params, state.anchor, state.importance)


def _quadratic_penalty(state: RegularizerState, params: PyTree, hp=None) -> jax.Array:
    del hp  # the strength lives in the state (the budget adapts it)
    return 0.5 * state.lam * (quadratic_form(state, params) + state.constant)


def _init(params: PyTree, hp, with_path: bool = False) -> RegularizerState:
    dtype = jnp.result_type(float)
    zeros = jax.tree.map(jnp.zeros_like, params)
    anchor = jax.tree.map(jnp.asarray, params)
    return RegularizerState(importance=zeros, anchor=anchor, lam=jnp.asarray(getattr(hp, "lam", 0.0), dtype),
                            constant=jnp.zeros((), dtype), path=zeros if with_path else (),
                            start=anchor if with_path else (), count=jnp.zeros((), jnp.int32))


def _init_si(params: PyTree, hp) -> RegularizerState:
    return _init(params, hp, with_path=True)


def _like(tree: PyTree, params: PyTree) -> PyTree:
    """Casts each leaf to its parameter's dtype (traced hyperparameters may otherwise promote it)."""
    return jax.tree.map(lambda x, p: x.astype(jnp.result_type(p)), tree, params)


def _checked(state: RegularizerState, params: PyTree, importance: Optional[PyTree], kind: Optional[str]):
    check_like("params", params, state.anchor, ref_name="the regularizer state's anchor")
    if kind is not None:
        if importance is None:
            raise ValueError(f"importance must be a {kind} importance pytree like params, got None")
        check_like("importance", importance, params)
    return jax.tree.map(jnp.asarray, params), state.count + 1


def _consolidate_none(state, params, hp, importance=None, data=None):
    anchor, count = _checked(state, params, None, None)
    return state._replace(anchor=anchor, count=count)


def _consolidate_l2(state, params, hp, importance=None, data=None):
    anchor, count = _checked(state, params, None, None)
    return state._replace(importance=jax.tree.map(jnp.ones_like, params), anchor=anchor, count=count)


def _consolidate_ewc(state, params, hp, importance=None, data=None):
    _, count = _checked(state, params, importance, "fisher")

    def new_anchor(omega, anchor, f, p):
        total = omega + f
        return jnp.where(total > 0, (omega * anchor + f * p) / jnp.where(total > 0, total, 1.0), p)

    def new_constant(omega, anchor, f, p):
        total = omega + f
        return jnp.where(total > 0, omega * f / jnp.where(total > 0, total, 1.0) * jnp.square(anchor - p), 0.0)

    args = (state.importance, state.anchor, importance, params)
    extra = tree_sum(jax.tree.map(new_constant, *args))
    return state._replace(importance=_like(jax.tree.map(jnp.add, state.importance, importance), params),
                          anchor=_like(jax.tree.map(new_anchor, *args), params),
                          constant=(state.constant + extra).astype(state.constant.dtype), count=count)


def _consolidate_online(state, params, hp, importance=None, data=None):
    anchor, count = _checked(state, params, importance, "fisher")
    merged = jax.tree.map(lambda o, f: hp.gamma * o + f, state.importance, importance)
    return state._replace(importance=_like(merged, params), anchor=anchor, count=count)


def _consolidate_mas(state, params, hp, importance=None, data=None):
    anchor, count = _checked(state, params, importance, "mas")
    merged = jax.tree.map(jnp.add, state.importance, importance)
    return state._replace(importance=_like(merged, params), anchor=anchor, count=count)


def _accumulate_si(state, params_old, params_new, grads, hp):
    for name, tree in (("params_old", params_old), ("params_new", params_new), ("grads", grads)):
        check_like(name, tree, state.anchor, ref_name="the regularizer state's anchor")
    path = jax.tree.map(lambda w, g, new, old: w - g * (new - old), state.path, grads, params_new, params_old)
    return state._replace(path=path)


def _consolidate_si(state, params, hp, importance=None, data=None):
    anchor, count = _checked(state, params, None, None)
    contribution = jax.tree.map(lambda w, new, old: jnp.maximum(0.0, w / (jnp.square(new - old) + hp.xi)),
                                state.path, params, state.start)
    merged = jax.tree.map(jnp.add, state.importance, contribution)
    return state._replace(importance=_like(merged, params), anchor=anchor,
                          path=jax.tree.map(jnp.zeros_like, params), start=anchor, count=count)


def _accumulate_budget(state, params_old, params_new, grads, hp):
    del params_old, grads
    d = quadratic_form(state, params_new)
    stepped = jnp.maximum(0.0, state.lam + hp.dual_lr * (d - hp.budget)).astype(state.lam.dtype)
    return state._replace(lam=jnp.where(state.count > 0, stepped, state.lam))


def _trace_lambda(state: RegularizerState) -> dict:
    return {"reg_lambda": state.lam}


# ----------------------------------------------------------------------------------------------------------------
# Factories
# ----------------------------------------------------------------------------------------------------------------


def _hp(cls, **values):
    hp = cls(**values)
    check_hparams(hp, "strategy")
    return hp


def none() -> Strategy:
    """Plain fine-tuning: no penalty, no importance; consolidation only records the anchor."""
    return Strategy("none", NoHParams(), init=_init, consolidate=_consolidate_none)


def l2(lam=1.0) -> Strategy:
    """``(lam/2) |theta - theta*|^2`` around the last task's parameters."""
    return Strategy("l2", _hp(PenaltyHParams, lam=lam), init=_init, penalty=_quadratic_penalty,
                    consolidate=_consolidate_l2)


def ewc(lam=1.0) -> Strategy:
    """Elastic weight consolidation (Kirkpatrick et al., 2017), one Fisher penalty per past task (summed form)."""
    return Strategy("ewc", _hp(PenaltyHParams, lam=lam), init=_init, penalty=_quadratic_penalty,
                    consolidate=_consolidate_ewc, importance="fisher")


def online_ewc(lam=1.0, gamma=1.0) -> Strategy:
    """Online EWC (Schwarz et al., 2018): a running Fisher ``Omega <- gamma Omega + F`` and the latest anchor."""
    return Strategy("online_ewc", _hp(OnlineEWCHParams, lam=lam, gamma=gamma), init=_init,
                    penalty=_quadratic_penalty, consolidate=_consolidate_online, importance="fisher")


def si(lam=1.0, xi=0.1) -> Strategy:
    """Synaptic intelligence (Zenke et al., 2017): importance from the path integral of the task loss."""
    return Strategy("si", _hp(SIHParams, lam=lam, xi=xi), init=_init_si, penalty=_quadratic_penalty,
                    accumulate=_accumulate_si, consolidate=_consolidate_si)


def mas(lam=1.0) -> Strategy:
    """Memory aware synapses (Aljundi et al., 2018): importance from the output norm's sensitivity."""
    return Strategy("mas", _hp(PenaltyHParams, lam=lam), init=_init, penalty=_quadratic_penalty,
                    consolidate=_consolidate_mas, importance="mas")


def ewc_budget(lam=1.0, gamma=1.0, budget=1.0, dual_lr=0.1) -> Strategy:
    """Online EWC whose ``lam`` is adapted by dual ascent to keep the Fisher-weighted divergence under ``budget``."""
    return Strategy("ewc_budget", _hp(BudgetHParams, lam=lam, gamma=gamma, budget=budget, dual_lr=dual_lr),
                    init=_init, penalty=_quadratic_penalty, accumulate=_accumulate_budget,
                    consolidate=_consolidate_online, trace=_trace_lambda, importance="fisher")


PENALTIES = {"none": none, "l2": l2, "ewc": ewc, "online_ewc": online_ewc, "si": si, "mas": mas,
             "ewc_budget": ewc_budget}

for _name, _factory in PENALTIES.items():
    register(_name, _factory)
