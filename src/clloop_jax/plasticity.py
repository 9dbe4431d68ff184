"""Measurements of plasticity: parameter and update norms, dormant units and the effective rank of the features.

A network trained on a long sequence of tasks gradually loses the ability to learn new ones (Dohare et al., "Loss
of plasticity in deep continual learning", Nature 632, 2024; Lyle et al., 2023). These quantities track the
symptoms the papers report; the monitors that record them in a run's traces are in :mod:`clloop_jax.monitors`
(``"param_norm"``, ``"update_norm"``, ``"dormant"``, ``"effective_rank"``, ``"feature_norm"``).

* :func:`global_norm`: ``|theta| = sqrt(sum_i theta_i^2)`` over every leaf; the parameters' norm grows as
  plasticity is lost (Dohare et al., 2024; Lyle et al., 2023).
* :func:`update_norm`: ``|theta_t - theta_{t-1}|``, the size of the last update.
* :func:`dormant_fraction` (Sokar et al., 2023, "The dormant neuron phenomenon in deep reinforcement learning"):
  unit ``i`` of hidden layer ``l`` has the score ``s_i = E_x |h_i(x)| / ((1/H_l) sum_k E_x |h_k(x)|)`` (its mean
  absolute activation over the probe inputs, relative to its layer's average) and is *tau-dormant* when
  ``s_i <= tau`` (:func:`dormant_scores`); the fraction is the number of tau-dormant units over the number of hidden
  units of every layer.
  A layer whose every activation is 0 counts as wholly dormant. ``tau = 0`` counts the units that never fire (dead
  ReLUs); the paper also reports ``tau = 0.1``.
* :func:`effective_rank` (Roy & Vetterli, 2007, as used by Dohare et al., 2024, and Lyle et al.): for the feature
  matrix ``Phi [N, d]`` with singular values ``sigma_k``, ``p_k = sigma_k / sum_j sigma_j`` and ``erank(Phi) =
  exp(-sum_k p_k log p_k)`` (``0 log 0 = 0``): between 1 (one direction) and ``min(N, d)`` (all singular values
  equal); 0 for a zero matrix. (Kumar et al., 2021's ``srank``, the number of singular values that hold
  ``1 - delta`` of their sum, is a different, thresholded measure.) The singular values are the square roots of the
  eigenvalues of the smaller Gram matrix (``Phi^T Phi`` or ``Phi Phi^T``, ``jnp.linalg.eigh``, which runs under
  ``jax.vmap``); eigenvalues below ``lambda_max * max(N, d) * eps`` (the rounding of the Gram matrix) count as 0.

* :func:`feature_norm`: ``E_x |phi(x)|_2``, the mean over the probe inputs of the L2 norm of the last hidden layer's
  feature vector; growing features (with the parameter norm) accompany the loss of plasticity (Lyle et al., 2023,
  "Understanding plasticity in neural networks"; Dohare et al., 2024).

The features are the activations of the model's hidden layers, as a source's ``features`` capability gives them:
an :class:`~clloop_jax.backbones.MLP`'s hidden layers after the ReLU, read with flax's ``capture_intermediates``
(:func:`mlp_features`: the model and its numbers are unchanged); the recurrent
:class:`~clloop_jax.model.CrossModalModel`'s fusion layer (after its GELU) and its new recurrent state
(:meth:`~clloop_jax.model.CrossModalModel.features`). The dormant fraction counts every hidden layer; the
effective rank is that of the last one, the representation the head reads. With a GELU layer or a GRU state, whose
activations are rarely exactly 0, ``dormant_0`` counts units that are silent on every probe; the score itself is
Sokar et al.'s.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from clloop_jax.model import MLP

__all__ = ["global_norm", "update_norm", "mlp_features", "dormant_scores", "dormant_fraction", "effective_rank",
           "feature_norm",
           "singular_values", "probe_inputs", "DORMANT_TAUS"]

PyTree = Any

#: The thresholds of the ``dormant`` monitor, as in Sokar et al. (2023): its entries ``dormant_0``, ``dormant_0.1``.
DORMANT_TAUS = (0.0, 0.1)


def global_norm(params: PyTree) -> jax.Array:
    """``sqrt(sum_i theta_i^2)`` over every element of every leaf."""
    leaves = jax.tree.leaves(params)
    return jnp.sqrt(sum(jnp.sum(jnp.square(x)) for x in leaves)) if leaves else jnp.zeros(())


def update_norm(params: PyTree, previous: PyTree) -> jax.Array:
    """``|theta - theta_previous|``, the L2 norm of the change over every leaf."""
    return global_norm(jax.tree.map(jnp.subtract, params, previous))


def _is_hidden(module, method: str) -> bool:
    return method == "__call__" and (module.name or "").startswith("hidden_")


def mlp_features(model: MLP, params: PyTree, x: jax.Array) -> tuple:
    """The activations (after the ReLU) of every hidden layer of ``model`` on ``x [N, D]``: ``([N, h_1], ...)``."""
    if not isinstance(model, MLP):
        raise ValueError(f"the features are those of an MLP's hidden layers; got a {type(model).__name__}")
    if not model.hidden:
        raise ValueError("the MLP has no hidden layer (hidden=()), so it has no features to measure")
    _, state = model.apply(params, x, capture_intermediates=_is_hidden, mutable=["intermediates"])
    found = state["intermediates"]
    return tuple(nn.relu(found[f"hidden_{i}"]["__call__"][0]) for i in range(len(model.hidden)))


def dormant_scores(h: jax.Array) -> jax.Array:
    """Sokar et al.'s (2023) score of every unit of one layer from its activations ``h [N, units]``:
    ``s_i = E_x |h_i(x)| / ((1/H) sum_k E_x |h_k(x)|)``, 0 for every unit of a layer whose every activation is 0.
    Unit ``i`` is tau-dormant when ``s_i <= tau``."""
    mean_abs = jnp.mean(jnp.abs(h), axis=0)                       # E_x |h_i(x)|, per unit
    layer_mean = jnp.mean(mean_abs)
    return jnp.where(layer_mean > 0, mean_abs / jnp.where(layer_mean > 0, layer_mean, 1.0), 0.0)


def dormant_fraction(features: Sequence[jax.Array], tau) -> jax.Array:
    """The fraction of tau-dormant units over the layers ``features`` (each ``[N, units]``); see the module."""
    dormant, units = 0, 0
    for h in features:
        dormant = dormant + jnp.sum(dormant_scores(h) <= tau)
        units += h.shape[-1]
    return dormant / units


def singular_values(phi: jax.Array) -> jax.Array:
    """The ``min(N, d)`` singular values of ``phi [N, d]`` (ascending), from the eigenvalues of its smaller Gram
    matrix; those within its rounding count as 0."""
    phi = jnp.asarray(phi)
    n, d = phi.shape
    gram = phi.T @ phi if d <= n else phi @ phi.T
    eig = jnp.linalg.eigh(gram)[0]
    tol = jnp.max(eig) * max(n, d) * jnp.finfo(eig.dtype).eps
    return jnp.sqrt(jnp.where(eig > tol, eig, 0.0))


def effective_rank(phi: jax.Array) -> jax.Array:
    """``exp(-sum_k p_k log p_k)`` with ``p_k = sigma_k / sum_j sigma_j`` the normalised singular values of
    ``phi [N, d]`` (Roy & Vetterli, 2007); 0 for a zero matrix."""
    sigma = singular_values(phi)
    total = jnp.sum(sigma)
    p = sigma / jnp.where(total > 0, total, 1.0)
    entropy = -jnp.sum(jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1.0)), 0.0))
    return jnp.where(total > 0, jnp.exp(entropy), 0.0)


def feature_norm(phi: jax.Array) -> jax.Array:
    """``(1/N) sum_n |phi_n|_2``: the mean L2 norm of the rows (one feature vector per input) of ``phi [N, d]``."""
    return jnp.mean(jnp.sqrt(jnp.sum(jnp.square(phi), axis=-1)))


def probe_inputs(data, num_probes: int) -> PyTree:
    """The first ``num_probes`` samples of per-sample ``data = (inputs, targets)``: every leaf of ``inputs`` cut to
    its first ``num_probes`` rows (a source's ``features`` reads them)."""
    return jax.tree.map(lambda x: x[:num_probes], data[0])
