"""Strategies against the loss of plasticity: l2_init, shrink_perturb, continual_backprop and redo.

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

Two more re-initialise single hidden units of an :class:`~clloop_jax.backbones.MLP` while it learns, through the
strategy's ``renew`` hook (after every update; the optimizer's moments of the weights they re-initialise are
zeroed by the run):

* ``continual_backprop`` (Dohare et al., 2024, Methods, "continual backpropagation"; the generate-and-test of
  Mahmood & Sutton): every hidden unit ``i`` of layer ``l`` keeps an age ``a`` (updates since it was last
  renewed) and its *contribution utility*, the running average
  ``u <- decay * u + (1 - decay) * mean_x |h_i(x)| * sum_k |w_out[i, k]|`` over the update's batch (``h_i`` its
  activation under the parameters after the step, ``w_out`` the next layer's kernel). A unit is *eligible* once
  ``a > maturity``. Each update, per layer, ``pending <- pending + replacement_rate * (#eligible)``; when
  ``pending >= 1``, the ``n = floor(pending)`` eligible units of smallest bias-corrected utility
  ``u / (1 - decay^a)`` (ties: the lower index) are renewed and ``pending <- pending - n``. A renewed unit's
  incoming weights and bias are those of a fresh draw of the model's initialiser (flax's ``Dense`` draws zero
  biases, the paper's 0), its outgoing weights are set to 0 (so the network's function is unchanged at that
  moment but for the bias the unit fed), and its utility and age restart at 0. This is the plain contribution
  utility; the paper's code also offers a mean-corrected utility (``|h_i - f_i|``, ``f_i`` the running mean
  activation) with which the removed unit's mean contribution is added to the next layer's bias; neither is done
  here.
* ``redo`` (Sokar et al., 2023, "The dormant neuron phenomenon in deep reinforcement learning", ReDo): every
  ``every`` updates (counted in the strategy's state), the tau-dormant units of every hidden layer on the update's
  batch (the score of :func:`clloop_jax.plasticity.dormant_scores`, as the ``dormant`` monitor counts them) are
  renewed the same way: incoming weights and bias from a fresh draw, outgoing weights 0.

A weight joining two units renewed at the same update is drawn afresh (it is an incoming weight of the later one).
Every hyperparameter is traced, so ``jax.vmap`` sweeps it: ``replacement_rate``, ``decay`` and ``maturity``
(compared with the integer ages); ``tau``; and ``every`` (rounded to an integer; ReDo's measurement runs in a
``lax.cond``, so updates between two renewals cost nothing, except under ``vmap`` over ``every`` where the branches
become a select). Both need a source whose model is an MLP (a supervised source) and refuse another when the run is
made. Their state counts the units renewed so far, recorded every episode as ``renewed_units``.

Their defaults are starting points, not values from the papers, which tune them per benchmark (Dohare et al. use
``replacement_rate = 1e-4`` to ``1e-5``, ``decay = 0.99``, ``maturity = 100``; Sokar et al. ``tau = 0.1``, or 0.025 in
their later experiments, and ``every = 1000`` gradient steps).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from clloop_jax.divergence import tree_sum
from clloop_jax.model import MLP
from clloop_jax.plasticity import dormant_scores, mlp_features
from clloop_jax.strategies.base import (Strategy, check_hparam, check_hparams, nonnegative, register,
                                        unit_interval)

__all__ = ["InitAnchor", "L2InitHParams", "ShrinkPerturbHParams", "ContinualBackpropHParams", "ContinualBackpropState",
           "ReDoHParams", "ReDoState", "l2_init", "shrink_perturb", "continual_backprop", "redo", "init_penalty",
           "shrink_and_perturb", "contribution_utility", "reinitialise_units", "PLASTICITY"]

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


# ----- renewing hidden units: continual backprop and ReDo ---------------------------------------------------------


class ContinualBackpropHParams(NamedTuple):
    """``replacement_rate``: the fraction of a layer's eligible units renewed per update, in [0, 1]; ``decay``: the
    running average's factor, in [0, 1); ``maturity``: the age (updates) a unit must exceed to be renewed, >= 0."""

    replacement_rate: Any = 1e-4
    decay: Any = 0.99
    maturity: Any = 100

    def check(self):
        unit_interval("replacement_rate", self.replacement_rate)
        check_hparam("decay", self.decay, lambda v: (v >= 0) & (v < 1), "in [0, 1)")
        nonnegative("maturity", self.maturity)


class ContinualBackpropState(NamedTuple):
    """``continual_backprop``'s state, one entry per hidden layer: ``utility`` (``[units]``, the running contribution
    utility), ``age`` (``[units]`` int32, updates since the unit was drawn), ``pending`` (the replacements accumulated
    and not yet made); and ``renewed``, the units renewed so far (int32)."""

    utility: tuple
    age: tuple
    pending: tuple
    renewed: jax.Array


class ReDoHParams(NamedTuple):
    """``tau``: a unit whose dormancy score is ``<= tau`` is renewed (a negative ``tau`` renews none); ``every``: the
    number of updates between two renewals, an integer >= 1."""

    tau: Any = 0.1
    every: Any = 1000

    def check(self):
        check_hparam("tau", self.tau, lambda v: np.ones_like(v, bool), "a finite number")
        check_hparam("every", self.every, lambda v: (v >= 1) & (v == np.round(v)), "an integer >= 1")


class ReDoState(NamedTuple):
    """``redo``'s state: ``updates``, the updates counted so far, and ``renewed``, the units renewed so far (int32)."""

    updates: jax.Array
    renewed: jax.Array


def _layer_names(depth: int) -> list:
    """``(layer, next layer)`` of an MLP with ``depth`` hidden layers: the next of the last one is the head."""
    return [(f"hidden_{i}", f"hidden_{i + 1}" if i + 1 < depth else "head") for i in range(depth)]


def contribution_utility(h: jax.Array, w_out: jax.Array) -> jax.Array:
    """Dohare et al.'s (2024) instantaneous contribution utility of every unit of a layer: ``mean_x |h_i(x)| *
    sum_k |w_out[i, k]|`` from its activations ``h [N, units]`` and its outgoing weights ``w_out [units, next]``."""
    return jnp.mean(jnp.abs(h), axis=0) * jnp.sum(jnp.abs(w_out), axis=1)


def reinitialise_units(params: PyTree, fresh: PyTree, units) -> tuple:
    """``(params, reset)``: the MLP's ``params`` with the hidden units marked in ``units`` (one boolean ``[units]``
    per hidden layer) renewed: their incoming weights and bias taken from ``fresh`` (a draw of the same model's
    initialiser), their outgoing weights (the next layer's kernel rows) set to 0. ``reset`` is the boolean pytree,
    shaped like ``params``, of the weights so set. Layers are renewed in order, so a weight joining a renewed unit
    to a renewed unit of the next layer is the fresh draw's."""
    new = {"params": {name: dict(leaves) for name, leaves in params["params"].items()}}
    reset = jax.tree.map(lambda x: jnp.zeros(jnp.shape(x), bool), new)
    layers, marks, draw = new["params"], reset["params"], fresh["params"]
    for (name, following), chosen in zip(_layer_names(len(units)), units):
        column = chosen[None, :]
        layers[name]["kernel"] = jnp.where(column, draw[name]["kernel"], layers[name]["kernel"])
        layers[name]["bias"] = jnp.where(chosen, draw[name]["bias"], layers[name]["bias"])
        layers[following]["kernel"] = jnp.where(chosen[:, None], jnp.zeros((), layers[following]["kernel"].dtype),
                                                layers[following]["kernel"])
        marks[name]["kernel"] = marks[name]["kernel"] | column
        marks[name]["bias"] = marks[name]["bias"] | chosen
        marks[following]["kernel"] = marks[following]["kernel"] | chosen[:, None]
    return jax.tree.map(lambda p, n: n.astype(jnp.result_type(p)), params, new), reset


def _inputs(samples):
    """The model inputs of the per-sample batch ``samples = (inputs, targets)``: a supervised source's inputs are
    ``(x, mask)``, of which ``x`` is the model's."""
    inputs = samples[0]
    return inputs[0] if isinstance(inputs, tuple) else inputs


def _needs_mlp(name: str, source) -> None:
    model = getattr(source, "model", None)
    if not isinstance(model, MLP) or not model.hidden:
        what = f"model {model!r}" if isinstance(model, MLP) else (
            f"a {type(model).__name__} model" if model is not None else "no model attribute")
        raise ValueError(f"strategy {name!r} renews the hidden units of an MLP: it needs a source whose model is a "
                         f"clloop_jax.model.MLP with at least one hidden layer (a SupervisedSource), got the source "
                         f"{type(source).__name__} with {what}")


def _cbp_source(source) -> None:
    _needs_mlp("continual_backprop", source)


def _redo_source(source) -> None:
    _needs_mlp("redo", source)


def _widths(params) -> list:
    layers = params["params"]
    depth = sum(1 for name in layers if name.startswith("hidden_"))
    return [jnp.shape(layers[f"hidden_{i}"]["bias"])[0] for i in range(depth)]


def _cbp_init(params, hp) -> ContinualBackpropState:
    widths = _widths(params)
    return ContinualBackpropState(tuple(jnp.zeros((w,), jnp.float32) for w in widths),
                                  tuple(jnp.zeros((w,), jnp.int32) for w in widths),
                                  tuple(jnp.zeros((), jnp.float32) for _ in widths), jnp.zeros((), jnp.int32))


def _cbp_renew(state: ContinualBackpropState, params, samples, source, key, hp):
    features = mlp_features(source.model, params, _inputs(samples))
    layers = params["params"]
    utility, age, pending, chosen = [], [], [], []
    for (name, following), h, u, a, acc in zip(_layer_names(len(features)), features, state.utility, state.age,
                                                state.pending):
        u = hp.decay * u + (1 - hp.decay) * contribution_utility(h, layers[following]["kernel"])
        a = a + 1
        eligible = a > hp.maturity
        acc = acc + hp.replacement_rate * jnp.sum(eligible)
        n = jnp.floor(acc)
        acc = acc - n
        corrected = u / jnp.where(eligible, 1 - hp.decay ** a.astype(u.dtype), 1.0)
        rank = jnp.argsort(jnp.argsort(jnp.where(eligible, corrected, jnp.inf)))   # stable: ties to the lower index
        pick = eligible & (rank < n)
        utility.append(jnp.where(pick, 0.0, u).astype(jnp.float32))
        age.append(jnp.where(pick, 0, a))
        pending.append(acc.astype(jnp.float32))
        chosen.append(pick)
    params, reset = reinitialise_units(params, source.init_params(key), chosen)
    renewed = state.renewed + sum(jnp.sum(c, dtype=jnp.int32) for c in chosen)
    return ContinualBackpropState(tuple(utility), tuple(age), tuple(pending), renewed), params, reset


def _redo_init(params, hp) -> ReDoState:
    return ReDoState(jnp.zeros((), jnp.int32), jnp.zeros((), jnp.int32))


def _redo_renew(state: ReDoState, params, samples, source, key, hp):
    updates = state.updates + 1
    every = jnp.maximum(jnp.round(hp.every), 1).astype(jnp.int32)

    def renew(p):
        chosen = [dormant_scores(h) <= hp.tau for h in mlp_features(source.model, p, _inputs(samples))]
        p, reset = reinitialise_units(p, source.init_params(key), chosen)
        return p, reset, sum(jnp.sum(c, dtype=jnp.int32) for c in chosen)

    def keep(p):
        return p, jax.tree.map(lambda x: jnp.zeros(jnp.shape(x), bool), p), jnp.zeros((), jnp.int32)

    params, reset, count = jax.lax.cond(updates % every == 0, renew, keep, params)
    return ReDoState(updates, state.renewed + count), params, reset


def _renewed_trace(state):
    return {"renewed_units": state.renewed}


def l2_init(lam=1e-2) -> Strategy:
    """L2 towards the initial parameters (Kumar et al., 2023): ``(lam/2) |theta - theta0|^2``, ``theta0`` fixed."""
    return Strategy("l2_init", _hp(L2InitHParams, lam=lam), init=_l2_init_init, penalty=_l2_init_penalty)


def shrink_perturb(shrink=0.8, sigma=0.1) -> Strategy:
    """Shrink and perturb (Ash & Adams, 2020) at every task boundary: ``theta <- shrink theta + sigma theta_init``."""
    return Strategy("shrink_perturb", _hp(ShrinkPerturbHParams, shrink=shrink, sigma=sigma), init=_empty_init,
                    boundary=_shrink_perturb_boundary)


def continual_backprop(replacement_rate=1e-4, decay=0.99, maturity=100) -> Strategy:
    """Continual backpropagation (Dohare et al., 2024): after every update, per hidden layer of the MLP,
    ``replacement_rate`` of the mature units (age > ``maturity``) of smallest contribution utility (running average
    with factor ``decay``) get fresh incoming weights and zero outgoing weights (see the module)."""
    hp = _hp(ContinualBackpropHParams, replacement_rate=replacement_rate, decay=decay, maturity=maturity)
    return Strategy("continual_backprop", hp, init=_cbp_init, trace=_renewed_trace, renew=_cbp_renew,
                    check_source=_cbp_source)


def redo(tau=0.1, every=1000) -> Strategy:
    """ReDo, recycling dormant neurons (Sokar et al., 2023): every ``every`` updates, the hidden units whose
    dormancy score on the update's batch is ``<= tau`` get fresh incoming weights and zero outgoing weights."""
    return Strategy("redo", _hp(ReDoHParams, tau=tau, every=every), init=_redo_init, trace=_renewed_trace,
                    renew=_redo_renew, check_source=_redo_source)


PLASTICITY = {"l2_init": l2_init, "shrink_perturb": shrink_perturb, "continual_backprop": continual_backprop,
              "redo": redo}

for _name, _factory in PLASTICITY.items():
    register(_name, _factory)
