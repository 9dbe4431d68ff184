"""A penalty strategy bound to concrete hyperparameters, for use outside the run (notebooks, tests, optax).

The strategies themselves live in :mod:`clloop_jax.strategies` (the maths of every penalty is documented in
:mod:`clloop_jax.strategies.penalties`). ``make_regularizer(name, lam=..., ...)`` binds one of them to its
hyperparameters and returns a :class:`Regularizer` whose functions need no ``hp`` argument::

    reg = make_regularizer("ewc", lam=3.0)
    state = reg.init(params)
    state = reg.consolidate(state, params, fisher)
    loss = task_loss + reg.penalty(state, params)

The penalty enters training either as a loss term or as an optax transform that adds its gradient
(:func:`penalty_gradient_transform`); both give the same gradient. Hyperparameters may be traced (``make_regularizer``
can be called inside ``jit``/``vmap``); they are validated only when concrete.
"""

from __future__ import annotations

import numbers
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from clloop_jax.divergence import check_like
from clloop_jax.strategies.penalties import PENALTIES, RegularizerState, penalty_gradient, quadratic_form

__all__ = ["STRATEGIES", "RegularizerState", "Regularizer", "make_regularizer", "quadratic_form",
           "penalty_gradient", "penalty_gradient_transform"]

STRATEGIES = tuple(PENALTIES)

PyTree = Any


class Regularizer(NamedTuple):
    """A penalty strategy with its hyperparameters bound.

    Attributes:
      name: the strategy's name, one of :data:`STRATEGIES`.
      importance_kind: what ``consolidate`` needs computed from data: ``"none"``, ``"fisher"`` or ``"mas"``.
      init: ``params -> state``.
      accumulate: ``(state, params_old, params_new, grads) -> state``, after every optimizer step.
      consolidate: ``(state, params, task_importance) -> state`` at the end of a task.
      penalty: ``(state, params) -> scalar``, ``(lam/2) * (sum_i Omega_i (theta_i - theta*_i)^2 + C)``.
    """

    name: str
    importance_kind: str
    init: Callable[[PyTree], RegularizerState]
    accumulate: Callable[[RegularizerState, PyTree, PyTree, PyTree], RegularizerState]
    consolidate: Callable[[RegularizerState, PyTree, Optional[PyTree]], RegularizerState]
    penalty: Callable[[RegularizerState, PyTree], jax.Array]


def make_regularizer(name: str, *, num_tasks: Optional[int] = None, **hparams) -> Regularizer:
    """The penalty strategy ``name`` with the hyperparameters ``hparams`` (those it uses: ``lam`` for every
    strategy but ``none``, ``gamma`` for ``online_ewc`` and ``ewc_budget``, ``xi`` for ``si``, ``budget`` and
    ``dual_lr`` for ``ewc_budget``).

    ``num_tasks`` is accepted for interface stability (the summed EWC form needs no task count) and validated when
    given. Raises ``ValueError`` naming the argument for an unknown name, a hyperparameter the strategy does not
    have, or an out-of-range concrete value.
    """
    if not isinstance(name, str) or name not in PENALTIES:
        raise ValueError(f"name must be one of {list(STRATEGIES)}, got {name!r}")
    if num_tasks is not None and (isinstance(num_tasks, bool) or not isinstance(num_tasks, numbers.Integral)
                                  or num_tasks < 1):
        raise ValueError(f"num_tasks must be an integer >= 1 or None, got {num_tasks!r}")
    if name == "none":
        hparams.pop("lam", None)  # fine-tuning's strength is 0 whatever is asked
    strategy = PENALTIES[name](**hparams)
    hp = strategy.hparams

    def init(params):
        return strategy.init(params, hp)

    def accumulate(state, params_old, params_new, grads):
        for arg, tree in (("params_old", params_old), ("params_new", params_new)):
            check_like(arg, tree, state.anchor, ref_name="the regularizer state's anchor")
        if strategy.accumulate is None:
            return state
        return strategy.accumulate(state, params_old, params_new, grads, hp)

    def consolidate(state, params, task_importance=None):
        return strategy.consolidate(state, params, hp, importance=task_importance)

    def penalty(state, params):
        check_like("params", params, state.anchor, ref_name="the regularizer state's anchor")
        if strategy.penalty is None:
            return jnp.zeros((), state.lam.dtype)
        return strategy.penalty(state, params, hp)

    return Regularizer(name, strategy.importance or "none", init, accumulate, consolidate, penalty)


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
