"""Strategies against the loss of plasticity: l2_init and shrink_perturb.

A network trained on a long sequence of tasks gradually loses the ability to learn new ones (Dohare et al., "Loss
of plasticity in deep continual learning", Nature 632, 2024; Lyle et al., 2023). The strategies here keep the
parameters close to, or bring them back towards, the regime of a freshly initialised network:

* ``l2_init`` (Kumar et al., 2023, "Maintaining plasticity in continual learning via regenerative
  regularization"): the penalty ``(lam / 2) * sum_i (theta_i - theta0_i)^2`` towards ``theta0``, the parameters at
  initialisation. ``theta0`` is kept in the strategy's state (an :class:`InitAnchor`) when the run starts and is
  never changed afterwards: the strategy has no consolidation. Its gradient is ``lam * (theta - theta0)``. Unlike
  ``l2`` (anchored at the last task's parameters, against forgetting) it pulls towards the initialisation, whose
  weights are known to train well.
* ``shrink_perturb`` (Ash & Adams, 2020, "On warm-starting neural network training"): at every task boundary,
  ``theta <- shrink * theta + sigma * theta_init`` with ``theta_init`` a fresh draw of the model's own initialiser
  (``source.init_params`` with a key of the strategy's own, different at each boundary). ``shrink = 1, sigma = 0``
  leaves the parameters exactly as they are. It acts through the strategy's ``boundary`` hook: at the start of every
  task but the first, before its first update, so the scores recorded after each task are those of the parameters
  that learned it. The optimizer's state is kept (it is reset anyway with ``RunConfig.reset_optimizer``).

Both have traced hyperparameters (``lam``; ``shrink``, ``sigma``) that ``jax.vmap`` sweeps like any other. Their
defaults are starting points, not values from the papers, which tune them per benchmark.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from clloop_jax.divergence import tree_sum
from clloop_jax.strategies.base import Strategy, check_hparams, nonnegative, register, unit_interval

__all__ = ["InitAnchor", "L2InitHParams", "ShrinkPerturbHParams", "l2_init", "shrink_perturb", "init_penalty",
           "shrink_and_perturb", "PLASTICITY"]

PyTree = Any


class InitAnchor(NamedTuple):
    """``l2_init``'s state: ``anchor``, the parameters at initialisation (never updated)."""

    anchor: PyTree


class L2InitHParams(NamedTuple):
    """``lam``: the strength of the pull towards the initial parameters (>= 0)."""

    lam: Any = 1e-2

    def check(self):
        nonnegative("lam", self.lam)


class ShrinkPerturbHParams(NamedTuple):
    """``shrink``: the factor on the parameters, in [0, 1]; ``sigma``: the weight of a fresh initialisation (>= 0)."""

    shrink: Any = 0.8
    sigma: Any = 0.1

    def check(self):
        unit_interval("shrink", self.shrink)
        nonnegative("sigma", self.sigma)


def init_penalty(anchor: PyTree, params: PyTree, lam) -> jax.Array:
    """``(lam / 2) * sum_i (theta_i - theta0_i)^2`` with ``theta0 = anchor``."""
    return 0.5 * lam * tree_sum(jax.tree.map(lambda p, a: jnp.sum(jnp.square(p - a)), params, anchor))


def shrink_and_perturb(params: PyTree, fresh: PyTree, shrink, sigma) -> PyTree:
    """``shrink * theta + sigma * fresh`` leaf by leaf, in each parameter's dtype."""
    return jax.tree.map(lambda p, f: (shrink * p + sigma * f).astype(jnp.result_type(p)), params, fresh)


def _l2_init_init(params, hp) -> InitAnchor:
    return InitAnchor(jax.tree.map(jnp.asarray, params))


def _l2_init_penalty(state: InitAnchor, params, hp):
    return init_penalty(state.anchor, params, hp.lam)


def _empty_init(params, hp):
    return ()


def _shrink_perturb_boundary(state, params, source, key, hp):
    fresh = source.init_params(key)
    return state, shrink_and_perturb(params, fresh, hp.shrink, hp.sigma)


def _hp(cls, **values):
    hp = cls(**values)
    check_hparams(hp, "strategy")
    return hp


def l2_init(lam=1e-2) -> Strategy:
    """L2 towards the initial parameters (Kumar et al., 2023): ``(lam/2) |theta - theta0|^2``, ``theta0`` fixed."""
    return Strategy("l2_init", _hp(L2InitHParams, lam=lam), init=_l2_init_init, penalty=_l2_init_penalty)


def shrink_perturb(shrink=0.8, sigma=0.1) -> Strategy:
    """Shrink and perturb (Ash & Adams, 2020) at every task boundary: ``theta <- shrink theta + sigma theta_init``."""
    return Strategy("shrink_perturb", _hp(ShrinkPerturbHParams, shrink=shrink, sigma=sigma), init=_empty_init,
                    boundary=_shrink_perturb_boundary)


PLASTICITY = {"l2_init": l2_init, "shrink_perturb": shrink_perturb}

for _name, _factory in PLASTICITY.items():
    register(_name, _factory)
