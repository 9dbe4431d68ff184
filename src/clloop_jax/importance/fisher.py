"""Per-sample gradients, Fisher information diagonals and MAS importances.

Everything here is a pure function of a parameter pytree and arrays with a leading sample axis ``N``, usable
with any model and any output distribution. A *sample* may be a whole sequence: the model's output for one
sample is an array ``[..., K]`` (for instance ``[T, K]``), and the sample's log-likelihood is the sum over all
leading positions of the per-position log-likelihood.

The Fisher diagonal is always the mean over samples of the per-sample squared score,

    F = (1/N) sum_i E_{y ~ q_i} [ (grad_theta log p(y | x_i, theta))^2 ],

with three choices of ``q_i`` (the ``variant``):

* ``"empirical"``: the observed targets, ``q_i = delta(y_i)``;
* ``"sampled"``: Monte Carlo draws from the model's own predictive distribution ``p(. | x_i, theta)``;
* ``"exact"``: the expectation under ``p(. | x_i, theta)`` in closed form.

It is never the square of a batch-mean gradient; :func:`squared_batch_gradient` computes that different,
smaller quantity for comparison only.

Each per-sample score is a vector-Jacobian product ``J_i^T s`` with the output-space score
``s = d log p(y | o) / d o``; one forward pass per sample serves all the cotangents that sample needs.
``chunk_size`` processes the samples that many at a time in a ``lax.scan`` (the last chunk is padded with copies
of the last sample, whose contributions are dropped), so peak memory scales with ``chunk_size`` rather than
``N``; the result equals the unchunked one up to floating-point summation order.

For a flax model, ``method="per_layer"`` (what ``"auto"``, the default, picks where it applies) forms the dense
layers' scores differently: the vector-Jacobian product holds the dense kernels and biases constant and returns the
output cotangent ``delta_s`` of every position ``s`` of every dense layer, whose inputs ``x_s`` its forward pass
records; a sample's kernel score is then ``sum_s x_s^T delta_s`` (bias: ``sum_s delta_s``), one contraction after
the backward pass instead of an ``[N, P]`` per-sample gradient accumulated at every step of a recurrent model
(:mod:`clloop_jax.importance.dense_taps`). Every other parameter takes the per-sample product. The numbers are the same
up to floating-point rounding.

Likelihoods are small frozen dataclasses with ``log_prob(output, target)``, ``sample(key, output)`` and
``fisher_factor(output)``; any object with these three methods can be used in their place.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from clloop_jax.importance import dense_taps
from clloop_jax.importance.reductions import sum_leading
from clloop_jax.validation import check_callable, check_choice, check_float, check_int, check_key, check_methods

__all__ = [
    "VARIANTS",
    "METHODS",
    "Gaussian",
    "Categorical",
    "per_sample_grads",
    "fisher_diagonal",
    "mas_importance",
    "squared_batch_gradient",
]

VARIANTS = ("empirical", "sampled", "exact")
#: How per-sample scores are formed; see :func:`fisher_diagonal`.
METHODS = ("auto", "per_layer", "per_sample")

PyTree = Any


# ----------------------------------------------------------------------------------------------------------------
# Likelihoods
# ----------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Gaussian:
    """Gaussian with fixed standard deviation ``sigma``; the model output is the mean.

    ``log_prob(output, target)`` is ``sum_k log N(target_k; output_k, sigma^2)`` over the last axis, one value
    per position. The output-space Fisher is ``I / sigma^2``.
    """

    sigma: float = 1.0

    def __post_init__(self):
        check_float("Gaussian.sigma", self.sigma, min=0, open_min=True, scalar=True)

    def log_prob(self, output: jax.Array, target: jax.Array) -> jax.Array:
        output, target = jnp.asarray(output), jnp.asarray(target)
        if target.shape != output.shape:
            raise ValueError(f"Gaussian.log_prob: target must have the output's shape {output.shape}, "
                             f"got {target.shape}")
        k = output.shape[-1]
        z = (target - output) / self.sigma
        return -0.5 * jnp.sum(z * z, axis=-1) - k * jnp.log(self.sigma) - 0.5 * k * math.log(2 * math.pi)

    def sample(self, key: jax.Array, output: jax.Array) -> jax.Array:
        output = jnp.asarray(output)
        return output + self.sigma * jax.random.normal(key, output.shape, output.dtype)

    def fisher_factor(self, output: jax.Array) -> jax.Array:
        """``L [..., K, K]`` with ``L L^T = I / sigma^2``, the output-space Fisher at each position."""
        output = jnp.asarray(output)
        k = output.shape[-1]
        eye = jnp.eye(k, dtype=output.dtype) / self.sigma
        return jnp.broadcast_to(eye, output.shape + (k,))


@dataclasses.dataclass(frozen=True)
class Categorical:
    """Categorical over the last axis; the model output is the logits.

    ``target`` is either integer class labels of shape ``output.shape[:-1]`` or (soft) class probabilities of
    the output's shape. ``sample`` returns integer labels. The output-space Fisher is ``diag(p) - p p^T``.
    """

    def log_prob(self, output: jax.Array, target: jax.Array) -> jax.Array:
        output, target = jnp.asarray(output), jnp.asarray(target)
        logp = jax.nn.log_softmax(output, axis=-1)
        if jnp.issubdtype(target.dtype, jnp.integer):
            if target.shape != output.shape[:-1]:
                raise ValueError(f"Categorical.log_prob: integer target must have shape {output.shape[:-1]} "
                                 f"(the output's without its class axis), got {target.shape}")
            return jnp.take_along_axis(logp, target[..., None].astype(jnp.int32), axis=-1)[..., 0]
        if target.shape != output.shape:
            raise ValueError(f"Categorical.log_prob: probability target must have the output's shape "
                             f"{output.shape}, got {target.shape}")
        return jnp.sum(target * logp, axis=-1)

    def sample(self, key: jax.Array, output: jax.Array) -> jax.Array:
        return jax.random.categorical(key, jnp.asarray(output), axis=-1)

    def fisher_factor(self, output: jax.Array) -> jax.Array:
        """``L [..., K, K]`` with columns ``sqrt(p_c) (e_c - p)``, so that ``L L^T = diag(p) - p p^T``."""
        p = jax.nn.softmax(jnp.asarray(output), axis=-1)
        k = p.shape[-1]
        eye = jnp.eye(k, dtype=p.dtype)
        return (eye - p[..., :, None]) * jnp.sqrt(p)[..., None, :]


# ----------------------------------------------------------------------------------------------------------------
# Validation and chunking helpers
# ----------------------------------------------------------------------------------------------------------------


def _check_chunk_size(chunk_size):
    check_int("chunk_size", chunk_size, min=1, allow_none=True)


def _leading_size(name: str, tree: PyTree) -> int:
    """The common leading-axis size of ``tree``'s leaves; ValueError naming ``name`` when they disagree."""
    leaves = jax.tree_util.tree_leaves(tree)
    if not leaves:
        raise ValueError(f"{name} must contain at least one array with a leading sample axis, got {tree!r}")
    sizes = []
    for leaf in leaves:
        shape = np.shape(leaf)
        if len(shape) == 0:
            raise ValueError(f"{name}: every leaf needs a leading sample axis, got a scalar leaf")
        sizes.append(shape[0])
    if any(s != sizes[0] for s in sizes):
        raise ValueError(f"{name}: all leaves must share the leading sample axis, got sizes {sizes}")
    if sizes[0] < 1:
        raise ValueError(f"{name}: need at least one sample, got a leading axis of size {sizes[0]}")
    return int(sizes[0])


def _check_same_n(names_and_sizes):
    (first_name, n), *rest = names_and_sizes
    for name, m in rest:
        if m != n:
            raise ValueError(f"{name} has {m} samples on its leading axis but {first_name} has {n}; "
                             f"expected {n}")
    return n


def _pad_to_chunks(tree: PyTree, n: int, chunk_size: int) -> PyTree:
    """Pad the leading axis to a multiple of ``chunk_size`` with copies of the last sample, then reshape it
    to ``[num_chunks, chunk_size, ...]``."""
    num_chunks = -(-n // chunk_size)
    pad = num_chunks * chunk_size - n

    def one(a):
        a = jnp.asarray(a)
        if pad:
            a = jnp.concatenate([a, jnp.repeat(a[-1:], pad, axis=0)], axis=0)
        return a.reshape((num_chunks, chunk_size) + a.shape[1:])

    return jax.tree_util.tree_map(one, tree)


def _mean_over_samples(per_sample: Callable, params: PyTree, batch: PyTree, n: int,
                       chunk_size: Optional[int]) -> PyTree:
    """``(1/n) sum_i per_sample(i, sample_i)``, where ``per_sample`` returns a pytree like ``params``.

    Unchunked: one ``vmap`` over all samples. Chunked: a ``lax.scan`` over chunks that accumulates the sum, so
    only ``chunk_size`` per-sample results are alive at a time; padded samples get weight zero.
    """
    index = jnp.arange(n)
    if chunk_size is None or chunk_size >= n:
        out = jax.vmap(per_sample)(index, batch)
        return jax.tree_util.tree_map(lambda a: sum_leading(a) / n, out)

    chunks = _pad_to_chunks((index, batch), n, chunk_size)
    # Padding repeats the last index: mark padded rows by their position instead.
    num_chunks = chunks[0].shape[0]
    position = jnp.arange(num_chunks * chunk_size).reshape(num_chunks, chunk_size)
    zeros = jax.tree_util.tree_map(lambda p: jnp.zeros(jnp.shape(p), jnp.result_type(p)), params)

    def body(total, chunk):
        pos, (idx, sub) = chunk
        out = jax.vmap(per_sample)(idx, sub)
        weight = (pos < n)

        def add(t, a):
            w = weight.reshape((-1,) + (1,) * (a.ndim - 1)).astype(a.dtype)
            return t + sum_leading(a * w)

        return jax.tree_util.tree_map(add, total, out), None

    total, _ = jax.lax.scan(body, zeros, (position, chunks))
    return jax.tree_util.tree_map(lambda t: t / n, total)


def _check_likelihood(likelihood, need_factor: bool):
    needed = ("log_prob", "sample") + (("fisher_factor",) if need_factor else ())
    check_methods("likelihood", likelihood, needed, example="Gaussian() or Categorical()")


# ----------------------------------------------------------------------------------------------------------------
# Per-sample gradients
# ----------------------------------------------------------------------------------------------------------------


def per_sample_grads(loss_fn: Callable, params: PyTree, *batch: PyTree,
                     chunk_size: Optional[int] = None) -> PyTree:
    """Gradients of ``loss_fn`` for each sample separately.

    Args:
      loss_fn: ``loss_fn(params, *sample) -> scalar`` for ONE sample (a sample may be a whole sequence).
      params: parameter pytree.
      *batch: one or more pytrees whose leaves share a leading sample axis ``N``.
      chunk_size: None computes all ``N`` gradients in one ``vmap``; an integer ``c`` computes them ``c`` at a
        time with ``lax.map`` (the last chunk is padded with copies of the last sample, and the padding is
        dropped), bounding the working memory of the backward passes to ``c`` samples. ``c`` need not divide
        ``N``.

    Returns:
      A pytree like ``params`` whose leaves have a leading axis ``N``: leaf ``i`` is
      ``grad_params loss_fn(params, *sample_i)``.
    """
    check_callable("loss_fn", loss_fn, signature="(params, *sample) -> scalar")
    _check_chunk_size(chunk_size)
    if not batch:
        raise ValueError("batch: per_sample_grads needs at least one batch argument with a leading sample axis")
    n = _check_same_n([(f"batch[{i}]", _leading_size(f"batch[{i}]", b)) for i, b in enumerate(batch)])
    grad_one = jax.grad(loss_fn)
    vgrad = jax.vmap(grad_one, in_axes=(None,) + (0,) * len(batch))
    if chunk_size is None or chunk_size >= n:
        return vgrad(params, *batch)
    chunks = _pad_to_chunks(batch, n, chunk_size)
    out = jax.lax.map(lambda sub: vgrad(params, *sub), chunks)
    return jax.tree_util.tree_map(lambda a: a.reshape((-1,) + a.shape[2:])[:n], out)


# ----------------------------------------------------------------------------------------------------------------
# Fisher diagonal
# ----------------------------------------------------------------------------------------------------------------


def _output_score(likelihood, output, target):
    """``d/d output`` of the sample's log-likelihood (sum over positions)."""
    return jax.grad(lambda o: jnp.sum(likelihood.log_prob(o, target)))(output)


def _sum_sq_vjp(vjp_fn, cotangents):
    """``sum_r (vjp_fn(c_r))^2`` over the leading axis of ``cotangents``, a pytree like params."""
    if cotangents.shape[0] == 1:
        (g,) = vjp_fn(cotangents[0])
        return jax.tree_util.tree_map(jnp.square, g)
    (g,) = jax.vmap(vjp_fn)(cotangents)
    return jax.tree_util.tree_map(lambda a: jnp.sum(jnp.square(a), axis=0), g)


def _exact_cotangents(likelihood, output):
    """Cotangents whose squared vjps sum to the exact per-sample Fisher diagonal.

    With per-position output-space Fisher ``M_t = L_t L_t^T`` and independent positions given the input, the
    sample's Fisher diagonal is ``sum_t sum_r (J_t^T L_t[:, r])^2``; each ``(t, r)`` pair is one cotangent that is
    zero outside position ``t``. Returns ``[P * R, *output.shape]`` with ``P`` positions and rank ``R``.
    """
    factor = jax.lax.stop_gradient(likelihood.fisher_factor(output))
    k = output.shape[-1]
    if factor.shape[:-1] != output.shape:
        raise ValueError(f"likelihood.fisher_factor must return shape {output.shape} + (R,), got {factor.shape}")
    r = factor.shape[-1]
    positions = int(np.prod(output.shape[:-1], dtype=np.int64))
    lf = factor.reshape(positions, k, r)
    eye = jnp.eye(positions, dtype=lf.dtype)
    cot = jnp.einsum("pq,qkr->prqk", eye, lf)          # [P, R, P, K]: block-diagonal in positions
    return cot.reshape((positions * r,) + output.shape)


def _dense_plan(method: str, apply_fn: Callable, params: PyTree, inputs: PyTree):
    """The per-layer plan for ``method`` (None for the per-sample path); ValueError when ``"per_layer"`` cannot
    be used."""
    if method == "per_sample":
        return None
    example = jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(np.shape(a)[1:], jnp.result_type(a)), inputs)
    try:
        return dense_taps.plan(apply_fn, params, example)
    except dense_taps.NotApplicable as error:
        if method == "auto":
            return None
        raise ValueError(f"method='per_layer' cannot be used here: {error}") from None


def fisher_diagonal(apply_fn: Callable, params: PyTree, inputs: PyTree, targets: Optional[jax.Array] = None, *,
                    likelihood, variant: str = "exact", key: Optional[jax.Array] = None, num_samples: int = 1,
                    chunk_size: Optional[int] = None, method: str = "auto") -> PyTree:
    """Diagonal of the Fisher information: the mean over samples of the per-sample squared score.

    Args:
      apply_fn: ``apply_fn(params, x) -> output [..., K]`` for ONE sample's input pytree ``x``. Leading output
        axes (e.g. time) are positions; a sample's log-likelihood is the sum over positions, and positions are
        independent given the input.
      params: parameter pytree.
      inputs: pytree whose leaves have a leading sample axis ``N``.
      targets: ``[N, ...]`` observed targets (required by ``"empirical"``, ignored otherwise).
      likelihood: :class:`Gaussian`, :class:`Categorical`, or any object with ``log_prob``, ``sample`` (and,
        for ``"exact"``, ``fisher_factor``).
      variant: ``"empirical"`` (observed targets), ``"sampled"`` (``y ~ p(.|x)``, ``num_samples`` draws per input,
        needs ``key``) or ``"exact"`` (closed-form expectation over ``y``).
      key: PRNG key for ``"sampled"``. Sample ``i`` uses ``fold_in(key, i)``, so the result does not depend on
        ``chunk_size``.
      num_samples: draws of ``y`` per input for ``"sampled"``.
      chunk_size: None or an integer: samples processed that many at a time (bounds memory; any value, need not
        divide ``N``).
      method: how the per-sample scores are formed (the result is the same up to floating-point rounding):
        ``"per_sample"``, one vector-Jacobian product per sample with respect to all of ``params``;
        ``"per_layer"``, for a flax model, the dense layers' (``nn.Dense``, ``nn.DenseGeneral``) kernel and bias
        scores contracted after the backward pass from every position's layer input and output cotangent
        (:mod:`clloop_jax.importance.dense_taps`; every other parameter as in ``"per_sample"``), which avoids
        accumulating an ``[N, P]`` per-sample gradient at every step of a recurrent model; ValueError naming the reason
        when ``apply_fn`` and ``params`` do not allow it; ``"auto"`` (default), ``"per_layer"`` where it applies and
        ``"per_sample"`` otherwise (any ``apply_fn`` that is not a flax model with tappable dense layers).

    Returns:
      A pytree like ``params``.

    Cost per sample (one forward pass and its linearization are shared by all cotangents of the sample):
      ``"empirical"``: one backward pass (the cost of a per-sample gradient).
      ``"sampled"``: ``num_samples`` backward passes, batched with ``vmap``.
      ``"exact"``: ``P * K`` backward passes for ``P`` output positions and ``K`` outputs per position, batched
      with ``vmap`` (a ``jacrev`` of the outputs, contracted with the output-space Fisher factor: Gaussian uses
      ``e_k / sigma``, Categorical ``sqrt(p_c) (e_c - p)``), and ``P * K`` per-sample gradients alive at once:
      memory ``chunk * P * K * num_params``. Use a small ``chunk_size`` for long sequences. No cheaper scheme is
      exact for a general model (random-projection estimators are unbiased but not exact; that is what
      ``"sampled"`` is).
      ``"per_layer"``: the same backward passes without weight gradients, plus one contraction per dense input
      per cotangent; on the default recurrent model (hidden 64, 64 sequences of 40 steps) about 1.1-1.2x one batch
      gradient where the per-sample method costs 1.5-2.0x (``python -m benchmarks --only fisher``).
    """
    check_callable("apply_fn", apply_fn, signature="(params, x) -> output [..., K]")
    check_choice("variant", variant, VARIANTS)
    check_choice("method", method, METHODS)
    _check_likelihood(likelihood, need_factor=(variant == "exact"))
    _check_chunk_size(chunk_size)
    sizes = [("inputs", _leading_size("inputs", inputs))]
    if variant == "empirical":
        if targets is None:
            raise ValueError("targets are required for variant='empirical' (observed labels/values with a leading "
                             "sample axis), got None")
        sizes.append(("targets", _leading_size("targets", targets)))
    n = _check_same_n(sizes)
    if variant == "sampled":
        if key is None:
            raise ValueError("key is required for variant='sampled' (a jax.random.key), got None")
        key = check_key("key", key)
        num_samples = check_int("num_samples", num_samples, min=1)

    def cotangents(i, output, y):
        if jnp.ndim(output) < 1:
            raise ValueError(f"apply_fn must return an output [..., K] with at least one axis, got shape "
                             f"{jnp.shape(output)}")
        if variant == "empirical":
            cot = _output_score(likelihood, output, y)[None]
        elif variant == "sampled":
            keys = jax.random.split(jax.random.fold_in(key, i), num_samples)
            draws = jax.vmap(lambda k: likelihood.sample(k, output))(keys)
            cot = jax.vmap(lambda yy: _output_score(likelihood, output, yy))(draws)
            cot = cot / jnp.sqrt(jnp.asarray(num_samples, cot.dtype))
        else:
            cot = _exact_cotangents(likelihood, output)
        return cot.astype(output.dtype)

    dense_plan = _dense_plan(method, apply_fn, params, inputs)
    if dense_plan is None:
        def per_sample(i, sample):
            x, y = sample
            output, vjp_fn = jax.vjp(lambda p: apply_fn(p, x), params)
            return _sum_sq_vjp(vjp_fn, cotangents(i, output, y))
    else:
        def per_sample(i, sample):
            x, y = sample
            return dense_taps.per_sample_sums(dense_plan, apply_fn, params, x,
                                              lambda output: cotangents(i, output, y), jnp.square)

    y_batch = targets if variant == "empirical" else jnp.zeros((n,), jnp.float32)
    return _mean_over_samples(per_sample, params, (inputs, y_batch), n, chunk_size)


def squared_batch_gradient(apply_fn: Callable, params: PyTree, inputs: PyTree, targets: jax.Array, *,
                           likelihood) -> PyTree:
    """``(grad of the batch-mean log-likelihood)^2``: NOT a Fisher diagonal.

    The square of the mean score, ``((1/N) sum_i g_i)^2``, is by Jensen's inequality elementwise at most the
    empirical Fisher ``(1/N) sum_i g_i^2`` with the same targets, and is far smaller near a fit (where the mean
    score vanishes but per-sample scores do not). It is offered for comparison and as the cost lower bound of
    any per-sample computation (one batched backward pass).
    """
    check_callable("apply_fn", apply_fn, signature="(params, x) -> output [..., K]")
    _check_likelihood(likelihood, need_factor=False)
    _check_same_n([("inputs", _leading_size("inputs", inputs)), ("targets", _leading_size("targets", targets))])

    def mean_loglik(p):
        out = jax.vmap(apply_fn, in_axes=(None, 0))(p, inputs)
        per = jax.vmap(lambda o, y: jnp.sum(likelihood.log_prob(o, y)))(out, targets)
        return jnp.mean(per)

    return jax.tree_util.tree_map(jnp.square, jax.grad(mean_loglik)(params))


# ----------------------------------------------------------------------------------------------------------------
# Memory Aware Synapses
# ----------------------------------------------------------------------------------------------------------------


def mas_importance(apply_fn: Callable, params: PyTree, inputs: PyTree,
                   chunk_size: Optional[int] = None, method: str = "auto") -> PyTree:
    """Memory Aware Synapses importance (Aljundi et al., 2018).

    ``Omega = (1/N) sum_i | grad_params ||apply_fn(params, x_i)||_2^2 |``, the squared L2 norm taken over the
    whole output of a sample (all positions). Needs no targets. ``chunk_size`` and ``method`` as in
    :func:`fisher_diagonal` (the gradient is the vector-Jacobian product with the cotangent ``2 f(x_i)``).
    """
    check_callable("apply_fn", apply_fn, signature="(params, x) -> output")
    _check_chunk_size(chunk_size)
    check_choice("method", method, METHODS)
    n = _leading_size("inputs", inputs)
    dense_plan = _dense_plan(method, apply_fn, params, inputs)

    if dense_plan is None:
        def per_sample(i, x):
            g = jax.grad(lambda p: jnp.sum(jnp.square(apply_fn(p, x))))(params)
            return jax.tree_util.tree_map(jnp.abs, g)
    else:
        def per_sample(i, x):
            return dense_taps.per_sample_sums(dense_plan, apply_fn, params, x, lambda out: (2 * out)[None], jnp.abs)

    return _mean_over_samples(per_sample, params, inputs, n, chunk_size)
