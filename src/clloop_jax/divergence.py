"""How far a model has moved: parameter divergence and functional (output) divergence.

Parameter divergence compares two parameter pytrees of the same structure, ``theta`` (current) and ``theta*``
(a reference: the anchor of a penalty, the parameters when a task began, ...):

* :func:`l2_distance`: ``||theta - theta*||_2`` over all leaves together;
* :func:`relative_change`: ``||theta - theta*||_2 / (||theta*||_2 + eps)``;
* :func:`fisher_weighted_distance`: ``sum_i F_i (theta_i - theta*_i)^2``, the quadratic form an EWC penalty
  charges (without its ``lambda / 2``).

Functional divergence compares what two parameter settings compute on the same probe inputs:

* ``kind="mse"``: the mean squared difference of the outputs;
* ``kind="kl"``: ``KL(p_anchor || p_params)`` of the categorical distributions whose logits are the outputs
  (last axis), summed over classes.

Both reduce per probe first (:func:`output_divergence`, mean over all positions of a probe) and then average over
probes (:func:`functional_divergence`). ``apply_fn(params, x)`` takes one probe ``x`` (no batch axis), like
:mod:`clloop_jax.importance.fisher`; the probe axis is added by ``vmap``.

Everything is a pure, jittable function of arrays. Mismatched pytrees are rejected with a ``ValueError`` before
tracing (structures and shapes are static), naming the argument and the first mismatch.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Optional

import jax
import jax.numpy as jnp

from clloop_jax.validation import check_callable, check_choice, check_float

__all__ = [
    "KINDS",
    "l2_distance",
    "relative_change",
    "fisher_weighted_distance",
    "parameter_divergence",
    "output_divergence",
    "functional_divergence",
]

KINDS = ("mse", "kl")

PyTree = Any


# ----------------------------------------------------------------------------------------------------------------
# Structure checks
# ----------------------------------------------------------------------------------------------------------------


def _shape(x):
    return tuple(getattr(x, "shape", ()))


def check_like(name: str, tree: PyTree, ref: PyTree, ref_name: str = "params") -> None:
    """Raises ``ValueError`` unless ``tree`` has the structure and leaf shapes of ``ref``.

    The message names ``name`` and shows where the two differ (tree structures, or the first leaf whose shape
    differs, by its path).
    """
    ref_paths, ref_def = jax.tree_util.tree_flatten_with_path(ref)
    paths, tree_def = jax.tree_util.tree_flatten_with_path(tree)
    if ref_def != tree_def:
        raise ValueError(f"{name} must have the same pytree structure as {ref_name}: expected {ref_def}, "
                         f"got {tree_def}")
    for (path, leaf), (_, ref_leaf) in zip(paths, ref_paths):
        if _shape(leaf) != _shape(ref_leaf):
            raise ValueError(f"{name} must have the leaf shapes of {ref_name}: at {jax.tree_util.keystr(path)} "
                             f"expected shape {_shape(ref_leaf)}, got {_shape(leaf)}")


def tree_sum(tree: PyTree) -> jax.Array:
    """The sum of every element of every leaf (0 for an empty tree)."""
    leaves = jax.tree.leaves(tree)
    if not leaves:
        return jnp.zeros(())
    return sum(jnp.sum(leaf) for leaf in leaves)


# ----------------------------------------------------------------------------------------------------------------
# Parameter divergence
# ----------------------------------------------------------------------------------------------------------------


def _squared_distance(params: PyTree, anchor: PyTree) -> jax.Array:
    return tree_sum(jax.tree.map(lambda p, a: jnp.square(p - a), params, anchor))


def l2_distance(params: PyTree, anchor: PyTree) -> jax.Array:
    """``||theta - theta*||_2``, the Euclidean norm of the difference over all leaves together."""
    check_like("anchor", anchor, params)
    return jnp.sqrt(_squared_distance(params, anchor))


def relative_change(params: PyTree, anchor: PyTree, eps: float = 1e-8) -> jax.Array:
    """``||theta - theta*||_2 / (||theta*||_2 + eps)``: the distance as a fraction of the reference's norm."""
    check_like("anchor", anchor, params)
    check_float("eps", eps, min=0, open_min=True, scalar=True)
    anchor_norm = jnp.sqrt(tree_sum(jax.tree.map(jnp.square, anchor)))
    return jnp.sqrt(_squared_distance(params, anchor)) / (anchor_norm + eps)


def fisher_weighted_distance(params: PyTree, anchor: PyTree, fisher: PyTree) -> jax.Array:
    """``sum_i F_i (theta_i - theta*_i)^2`` with ``F`` a diagonal importance (Fisher, MAS, ...) like ``params``."""
    check_like("anchor", anchor, params)
    check_like("fisher", fisher, params)
    return tree_sum(jax.tree.map(lambda p, a, f: f * jnp.square(p - a), params, anchor, fisher))


def parameter_divergence(params: PyTree, anchor: PyTree, fisher: Optional[PyTree] = None) -> Dict[str, jax.Array]:
    """All parameter divergences at once: ``{"l2", "relative"}`` and ``"fisher_weighted"`` when ``fisher`` is given.

    Each value is a scalar array, equal to :func:`l2_distance`, :func:`relative_change` and
    :func:`fisher_weighted_distance` of the same arguments.
    """
    check_like("anchor", anchor, params)
    if fisher is not None:
        check_like("fisher", fisher, params)
    out = {"l2": l2_distance(params, anchor), "relative": relative_change(params, anchor)}
    if fisher is not None:
        out["fisher_weighted"] = fisher_weighted_distance(params, anchor, fisher)
    return out


# ----------------------------------------------------------------------------------------------------------------
# Functional divergence
# ----------------------------------------------------------------------------------------------------------------


def _check_kind(kind) -> None:
    check_choice("kind", kind, KINDS)


def output_divergence(outputs: jax.Array, anchor_outputs: jax.Array, kind: str = "mse") -> jax.Array:
    """Per-probe divergence of ``outputs [N, ...]`` from ``anchor_outputs [N, ...]``: an array ``[N]``.

    ``"mse"``: the mean over all positions and features of a probe of ``(o - o*)^2``.
    ``"kl"``: outputs are logits over the last axis ``K``; per position
    ``KL(p* || p) = sum_k p*_k (log p*_k - log p_k)`` (``p = softmax(o)``, ``p* = softmax(o*)``), clipped at 0
    against rounding, then the mean over the probe's positions (all axes between ``N`` and ``K``).
    """
    _check_kind(kind)
    out_shape, ref_shape = _shape(outputs), _shape(anchor_outputs)
    if out_shape != ref_shape:
        raise ValueError(f"anchor_outputs must have the shape of outputs: expected {out_shape}, got {ref_shape}")
    if len(out_shape) < 1 or (kind == "kl" and len(out_shape) < 2):
        need = "[N, ..., K]" if kind == "kl" else "[N, ...]"
        raise ValueError(f"outputs must have shape {need} for kind={kind!r}, got {out_shape}")
    n = out_shape[0]
    if kind == "mse":
        sq = jnp.square(outputs - anchor_outputs)
        return jnp.mean(sq.reshape(n, -1), axis=1)
    logp = jax.nn.log_softmax(outputs, axis=-1)
    logq = jax.nn.log_softmax(anchor_outputs, axis=-1)
    kl = jnp.maximum(jnp.sum(jnp.exp(logq) * (logq - logp), axis=-1), 0.0)
    return jnp.mean(kl.reshape(n, -1), axis=1)


def functional_divergence(apply_fn: Callable, params: PyTree, anchor_params: PyTree, probe_inputs: PyTree,
                          kind: str = "mse") -> jax.Array:
    """Mean over probes of the output divergence of ``params`` from ``anchor_params`` (see :func:`output_divergence`).

    Args:
      apply_fn: ``apply_fn(params, x) -> output`` for one probe ``x`` (no batch axis).
      params: the current parameters.
      anchor_params: the reference parameters (same structure as ``params``).
      probe_inputs: a pytree whose leaves share a leading probe axis ``N``.
      kind: ``"mse"`` or ``"kl"`` (``KL(p_anchor || p_params)``, outputs are logits).
    """
    check_callable("apply_fn", apply_fn, signature="(params, x) -> output")
    _check_kind(kind)
    check_like("anchor_params", anchor_params, params)
    leaves = jax.tree.leaves(probe_inputs)
    if not leaves or any(len(_shape(x)) < 1 for x in leaves):
        raise ValueError("probe_inputs must be a non-empty pytree of arrays with a leading probe axis N, got "
                         f"leaf shapes {[_shape(x) for x in leaves]}")
    sizes = {_shape(x)[0] for x in leaves}
    if len(sizes) != 1:
        raise ValueError(f"probe_inputs leaves must share one leading probe axis N, got sizes {sorted(sizes)}")
    predict = jax.vmap(apply_fn, in_axes=(None, 0))
    outputs = predict(params, probe_inputs)
    anchor_outputs = predict(anchor_params, probe_inputs)
    return jnp.mean(output_divergence(outputs, anchor_outputs, kind))
