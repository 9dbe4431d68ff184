"""Importance-weighted penalties for continual learning, as pure functions over a ``NamedTuple`` state.

Every strategy is the same quadratic penalty on the parameter pytree,

    penalty(theta) = (lam / 2) * ( sum_i Omega_i (theta_i - theta*_i)^2 + C ),

with ``Omega`` (the consolidated importance) and ``theta*`` (the anchor) kept in a :class:`RegularizerState`, and
``C`` a constant that is 0 for every strategy but summed EWC (see below). Its gradient is always
``lam * Omega * (theta - theta*)``. Before the first consolidation ``Omega = 0`` and ``C = 0``, so the penalty of
every strategy is exactly 0. Strategies differ in how ``consolidate`` (end of a task) and ``accumulate`` (after
every optimizer step) update the state:

* ``"none"``: plain fine-tuning; the penalty is 0.
* ``"l2"``: ``Omega = 1`` everywhere after the first task, anchored at the last task's parameters.
* ``"ewc"`` (Kirkpatrick et al., 2017): one penalty per past task, ``sum_t (lam/2) sum_i F_t,i (theta_i -
  theta*_t,i)^2``. It is kept in the exactly equivalent summed form (fixed memory, any number of tasks): a sum of
  quadratics with the same curvature is one quadratic, so with ``Omega = sum_t F_t``,
  ``theta* = sum_t F_t theta*_t / Omega`` (the Fisher-weighted mean of the task anchors; where ``Omega_i = 0`` the
  latest parameters) and ``C = sum_i [sum_t F_t,i theta*_t,i^2 - Omega_i theta*_i^2] >= 0``, the value and the
  gradient are identical to the per-task sum. The state is updated one task at a time by the stable recursion
  ``Omega' = Omega + F``, ``theta*' = (Omega theta* + F theta) / Omega'``,
  ``C' = C + sum_i Omega_i F_i / Omega'_i (theta*_i - theta_i)^2`` (no cancellation). ``C`` shifts the value only;
  the penalty's minimum ``lam C / 2`` is reached at ``theta*``, not 0, once the task anchors differ.
* ``"online_ewc"`` (Schwarz et al., 2018): ``Omega <- gamma Omega + F``, one anchor (the latest parameters).
  With ``gamma = 1`` its ``Omega`` equals summed EWC's.
* ``"si"`` (Zenke et al., 2017): ``accumulate`` adds ``w += -g * (theta_new - theta_old)`` after every step, where
  ``g`` is the gradient of the task loss alone (without the penalty, as in the paper) evaluated at ``theta_old``,
  the parameters the step started from. At the end of a task
  ``Omega += max(0, w / ((theta_end - theta_start)^2 + xi))`` (each task's contribution is clipped at 0, so the
  penalty stays a non-negative quadratic), then ``w`` is reset to 0 and ``theta_start`` to ``theta_end``, which is
  also the anchor. ``lam`` plays the role of the paper's ``c``.
* ``"mas"`` (Aljundi et al., 2018): ``Omega`` is the sum over tasks of the per-task MAS importances handed to
  ``consolidate`` (``importance_kind = "mas"``, see :func:`clloop_jax.fisher.mas_importance`); anchor latest.
* ``"ewc_budget"``: online-EWC importance and anchor, with ``lam`` adapted by dual ascent so that the
  Fisher-weighted divergence ``D(theta) = sum_i Omega_i (theta_i - theta*_i)^2`` stays under ``budget``: after
  every optimizer step, ``lam <- max(0, lam + dual_lr * (D(theta_new) - budget))``. ``lam`` is the Lagrange
  multiplier of the constraint ``D <= budget`` and stays >= 0: it rises while the constraint is violated and falls
  (to 0 at the least) while it holds. Before the first consolidation there is no constraint (``Omega = 0``) and
  ``lam`` keeps its initial value, so the first constrained task starts from the ``lam`` given. ``gamma`` is the
  online decay as in ``"online_ewc"``.

The penalty enters training either as a loss term (``loss + reg.penalty(state, params)``) or as an optax
transform that adds its gradient (:func:`penalty_gradient_transform`); both give the same gradient.

Numeric hyperparameters may be traced (``make_regularizer`` can be called inside ``jit``/``vmap`` with swept
values); they are validated only when concrete.
"""

from __future__ import annotations

import numbers
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from clloop_jax.divergence import check_like, tree_sum as _tree_sum

__all__ = [
    "STRATEGIES",
    "RegularizerState",
    "Regularizer",
    "make_regularizer",
    "quadratic_form",
    "penalty_gradient",
    "penalty_gradient_transform",
]

STRATEGIES = ("none", "l2", "ewc", "online_ewc", "si", "mas", "ewc_budget")

_IMPORTANCE_KIND = {"none": "none", "l2": "none", "ewc": "fisher", "online_ewc": "fisher", "si": "none",
                    "mas": "mas", "ewc_budget": "fisher"}

PyTree = Any


class RegularizerState(NamedTuple):
    """The state of a penalty; every leaf is an array.

    Attributes:
      importance: ``Omega``, a pytree like params (zeros before the first consolidation).
      anchor: ``theta*``, a pytree like params.
      lam: scalar, the current penalty strength (adapted by ``"ewc_budget"``, constant otherwise).
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


class Regularizer(NamedTuple):
    """A strategy as a set of pure functions (see the module docstring for each strategy's rules).

    Attributes:
      name: the strategy's name, one of :data:`STRATEGIES`.
      importance_kind: what ``consolidate`` needs computed from data: ``"none"``, ``"fisher"`` or ``"mas"``.
      init: ``params -> state``.
      accumulate: ``(state, params_old, params_new, grads) -> state``, after every optimizer step; ``grads`` is
        the task-loss gradient (without the penalty) at ``params_old``. SI's path integral, the budget's dual step;
        the identity for the other strategies.
      consolidate: ``(state, params, task_importance) -> state`` at the end of a task; ``task_importance`` is the
        pytree of ``importance_kind`` (ignored, and may be None, when that is ``"none"``).
      penalty: ``(state, params) -> scalar``, ``(lam/2) * (sum_i Omega_i (theta_i - theta*_i)^2 + C)``.
    """

    name: str
    importance_kind: str
    init: Callable[[PyTree], RegularizerState]
    accumulate: Callable[[RegularizerState, PyTree, PyTree, PyTree], RegularizerState]
    consolidate: Callable[[RegularizerState, PyTree, Optional[PyTree]], RegularizerState]
    penalty: Callable[[RegularizerState, PyTree], jax.Array]


# ----------------------------------------------------------------------------------------------------------------
# Validation
# ----------------------------------------------------------------------------------------------------------------


def _concrete(value) -> Optional[np.ndarray]:
    """The value as a NumPy array when it is concrete; None when it is traced."""
    if isinstance(value, jax.core.Tracer):
        return None
    try:
        return np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(f"expected a number or numeric array, got {value!r}") from err


def _check(name: str, value, ok: Callable[[np.ndarray], np.ndarray], expected: str) -> None:
    arr = _concrete(value)
    if arr is None:
        return
    if arr.size == 0 or not np.all(np.isfinite(arr)) or not np.all(ok(arr)):
        raise ValueError(f"{name} must be {expected}, got {value!r}")


def _validate(name, lam, gamma, xi, num_tasks, budget, dual_lr) -> None:
    if not isinstance(name, str) or name not in STRATEGIES:
        raise ValueError(f"name must be one of {list(STRATEGIES)}, got {name!r}")
    _check("lam", lam, lambda v: v >= 0, "a finite number >= 0")
    _check("gamma", gamma, lambda v: (v >= 0) & (v <= 1), "in [0, 1]")
    _check("xi", xi, lambda v: v > 0, "a finite number > 0")
    _check("budget", budget, lambda v: v >= 0, "a finite number >= 0")
    _check("dual_lr", dual_lr, lambda v: v >= 0, "a finite number >= 0")
    if num_tasks is not None and (isinstance(num_tasks, bool) or not isinstance(num_tasks, numbers.Integral)
                                  or num_tasks < 1):
        raise ValueError(f"num_tasks must be an integer >= 1 or None, got {num_tasks!r}")


# ----------------------------------------------------------------------------------------------------------------
# The shared quadratic
# ----------------------------------------------------------------------------------------------------------------


def quadratic_form(state: RegularizerState, params: PyTree) -> jax.Array:
    """``sum_i Omega_i (theta_i - theta*_i)^2``: the importance-weighted divergence from the anchor (no ``C``)."""
    check_like("params", params, state.anchor, ref_name="the regularizer state's anchor")
    return _tree_sum(jax.tree.map(lambda p, a, o: o * jnp.square(p - a), params, state.anchor, state.importance))


def _penalty(state: RegularizerState, params: PyTree) -> jax.Array:
    return 0.5 * state.lam * (quadratic_form(state, params) + state.constant)


def penalty_gradient(state: RegularizerState, params: PyTree) -> PyTree:
    """The penalty's gradient in closed form, ``lam * Omega * (theta - theta*)``, a pytree like ``params``."""
    check_like("params", params, state.anchor, ref_name="the regularizer state's anchor")
    return jax.tree.map(lambda p, a, o: (state.lam * o * (p - a)).astype(jnp.result_type(p)),
                        params, state.anchor, state.importance)


# ----------------------------------------------------------------------------------------------------------------
# Strategies
# ----------------------------------------------------------------------------------------------------------------


def make_regularizer(name: str, *, lam=1.0, gamma=1.0, xi=0.1, num_tasks: Optional[int] = None, budget=1.0,
                     dual_lr=0.1) -> Regularizer:
    """The strategy ``name`` (one of :data:`STRATEGIES`) as a :class:`Regularizer`.

    Args:
      name: ``"none"``, ``"l2"``, ``"ewc"``, ``"online_ewc"``, ``"si"``, ``"mas"`` or ``"ewc_budget"``.
      lam: penalty strength ``lambda >= 0`` (the initial one for ``"ewc_budget"``; SI's ``c``).
      gamma: online EWC's decay of the running Fisher, in ``[0, 1]`` (``"online_ewc"``, ``"ewc_budget"``).
      xi: SI's damping ``> 0``.
      num_tasks: accepted for interface stability; EWC keeps the summed form, whose memory does not depend on
        the number of tasks. Validated when given (an integer >= 1).
      budget: the Fisher-weighted divergence budget ``>= 0`` (``"ewc_budget"``).
      dual_lr: the dual-ascent step size of ``lam``, ``>= 0`` (``"ewc_budget"``).

    ``lam``, ``gamma``, ``xi``, ``budget`` and ``dual_lr`` may be traced; they are checked only when concrete.
    Raises ``ValueError`` naming the argument for an unknown name or an out-of-range concrete value.
    """
    _validate(name, lam, gamma, xi, num_tasks, budget, dual_lr)
    kind = _IMPORTANCE_KIND[name]
    is_si = name == "si"

    def init(params: PyTree) -> RegularizerState:
        dtype = jnp.result_type(float)
        zeros = jax.tree.map(jnp.zeros_like, params)
        return RegularizerState(
            importance=zeros,
            anchor=jax.tree.map(jnp.asarray, params),
            lam=jnp.asarray(lam, dtype),
            constant=jnp.zeros((), dtype),
            path=zeros if is_si else (),
            start=jax.tree.map(jnp.asarray, params) if is_si else (),
            count=jnp.zeros((), jnp.int32))

    def accumulate(state: RegularizerState, params_old: PyTree, params_new: PyTree,
                   grads: PyTree) -> RegularizerState:
        check_like("params_old", params_old, state.anchor, ref_name="the regularizer state's anchor")
        check_like("params_new", params_new, state.anchor, ref_name="the regularizer state's anchor")
        if is_si:
            check_like("grads", grads, state.anchor, ref_name="the regularizer state's anchor")
            path = jax.tree.map(lambda w, g, new, old: w - g * (new - old), state.path, grads, params_new, params_old)
            return state._replace(path=path)
        if name == "ewc_budget":
            d = quadratic_form(state, params_new)
            stepped = jnp.maximum(0.0, state.lam + dual_lr * (d - budget)).astype(state.lam.dtype)
            return state._replace(lam=jnp.where(state.count > 0, stepped, state.lam))
        return state

    def consolidate(state: RegularizerState, params: PyTree,
                    task_importance: Optional[PyTree] = None) -> RegularizerState:
        check_like("params", params, state.anchor, ref_name="the regularizer state's anchor")
        if kind != "none":
            if task_importance is None:
                raise ValueError(f"task_importance must be a {kind} importance pytree like params for strategy "
                                 f"{name!r}, got None")
            check_like("task_importance", task_importance, params)
        anchor = jax.tree.map(jnp.asarray, params)
        count = state.count + 1
        if name == "none":
            return state._replace(anchor=anchor, count=count)
        if name == "l2":
            return state._replace(importance=jax.tree.map(jnp.ones_like, params), anchor=anchor, count=count)
        if name == "ewc":
            return _ewc_merge(state, params, task_importance)._replace(count=count)
        if name in ("online_ewc", "ewc_budget"):
            importance = jax.tree.map(lambda o, f: gamma * o + f, state.importance, task_importance)
            return state._replace(importance=_like(importance, params), anchor=anchor, count=count)
        if name == "mas":
            importance = jax.tree.map(jnp.add, state.importance, task_importance)
            return state._replace(importance=_like(importance, params), anchor=anchor, count=count)
        # si
        contribution = jax.tree.map(lambda w, new, old: jnp.maximum(0.0, w / (jnp.square(new - old) + xi)),
                                    state.path, params, state.start)
        importance = jax.tree.map(jnp.add, state.importance, contribution)
        return state._replace(importance=_like(importance, params), anchor=anchor,
                              path=jax.tree.map(jnp.zeros_like, params), start=anchor, count=count)

    def penalty(state: RegularizerState, params: PyTree) -> jax.Array:
        if name == "none":
            check_like("params", params, state.anchor, ref_name="the regularizer state's anchor")
            return jnp.zeros((), state.lam.dtype)
        return _penalty(state, params)

    return Regularizer(name, kind, init, accumulate, consolidate, penalty)


def _like(tree: PyTree, params: PyTree) -> PyTree:
    """Casts each leaf to its parameter's dtype (traced hyperparameters may otherwise promote it)."""
    return jax.tree.map(lambda x, p: x.astype(jnp.result_type(p)), tree, params)


def _ewc_merge(state: RegularizerState, params: PyTree, fisher: PyTree) -> RegularizerState:
    """Adds the quadratic ``F (theta - params)^2`` of a new task to the summed EWC form (exactly)."""

    def new_anchor(omega, anchor, f, p):
        total = omega + f
        return jnp.where(total > 0, (omega * anchor + f * p) / jnp.where(total > 0, total, 1.0), p)

    def new_constant(omega, anchor, f, p):
        total = omega + f
        return jnp.where(total > 0, omega * f / jnp.where(total > 0, total, 1.0) * jnp.square(anchor - p), 0.0)

    args = (state.importance, state.anchor, fisher, params)
    importance = jax.tree.map(jnp.add, state.importance, fisher)
    anchor = jax.tree.map(new_anchor, *args)
    extra = _tree_sum(jax.tree.map(new_constant, *args))
    return state._replace(importance=_like(importance, params), anchor=_like(anchor, params),
                          constant=(state.constant + extra).astype(state.constant.dtype))


# ----------------------------------------------------------------------------------------------------------------
# As an optax transform
# ----------------------------------------------------------------------------------------------------------------


def penalty_gradient_transform(regularizer: Regularizer) -> optax.GradientTransformationExtraArgs:
    """An optax transform that adds the penalty's gradient ``lam * Omega * (theta - theta*)`` to the updates.

    Its ``update(updates, state, params=..., reg_state=...)`` needs the current parameters and the regularizer
    state; put it first in an ``optax.chain`` (before the optimizer) so that the optimizer sees the gradient of
    ``loss + penalty``, exactly as if the penalty were a loss term::

        tx = optax.chain(penalty_gradient_transform(reg), optax.adam(1e-3))
        updates, opt_state = tx.update(task_grads, opt_state, params, reg_state=reg_state)
    """
    if not isinstance(regularizer, Regularizer):
        raise ValueError(f"regularizer must be a Regularizer (from make_regularizer), got {type(regularizer)!r}")

    def init_fn(params):
        del params
        return optax.EmptyState()

    def update_fn(updates, state, params=None, *, reg_state=None, **extra_args):
        del extra_args
        if params is None:
            raise ValueError("penalty_gradient_transform needs params=, the current parameters; got None")
        if reg_state is None:
            raise ValueError("penalty_gradient_transform needs reg_state=, the RegularizerState; got None")
        check_like("updates", updates, params)
        if regularizer.name == "none":
            return updates, state
        grads = penalty_gradient(reg_state, params)
        return jax.tree.map(lambda u, g: u + g.astype(jnp.result_type(u)), updates, grads), state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
