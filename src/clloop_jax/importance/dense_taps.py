"""Per-sample gradients of dense layers from per-position inputs and output cotangents ("taps").

A dense layer applied at positions ``s`` of one sample (time steps of a scan, tokens, leading batch axes) computes
``y_s = x_s W + b``. For any scalar ``L`` of the sample's outputs, with ``delta_s = dL / dy_s``,

    dL/dW = sum_s x_s^T delta_s,        dL/db = sum_s delta_s.

So a per-sample gradient of ``W`` need not be accumulated inside the backward pass (for a recurrent model, a rank-P
update of an ``[N, P]`` buffer at every time step); it is one contraction over positions after the backward pass,
given every position's input ``x_s`` and output cotangent ``delta_s``:

* ``delta_s`` is the cotangent of an *output tap*, a zero array added to the layer's output (``y + u``), in one
  vector-Jacobian product taken with the dense kernels and biases held constant (so the backward pass forms no
  weight gradient at all);
* ``x_s`` is *recorded* by the forward pass of that same product (an auxiliary output).

Both live in the flax variable collection :data:`TAP_COLLECTION`, attached to every ``nn.Dense`` and
``nn.DenseGeneral`` call by a method interceptor (``flax.linen.intercept_methods``), so the model's code is unchanged;
the outermost flax call is re-run with the collection mutable so that the records come back even when ``apply_fn``
does not ask for mutable state. A layer called inside a lifted transformation gets one tap and one record per
iteration when the transformation carries the collection: ``nn.scan(..., variable_axes={TAP_COLLECTION: 0})`` (as
:class:`~clloop_jax.model.CrossModalModel`'s ``sequence`` does); the collection is absent in ordinary calls, so that
changes nothing else. Layers reading the same input array (the attention's query, key and value projections, the
GRU's gates) share one record and one contraction.

:func:`plan` lays the taps out for one ``apply_fn(params, x)`` by tracing it abstractly, matching each dense layer's
kernel and bias to leaves of ``params`` by identity. Requirements (otherwise :class:`NotApplicable` says which one
failed):

* ``apply_fn`` passes ``params`` unchanged (a flax variables dict) to exactly one top-level flax call, which needs
  no random numbers and no mutable state;
* a layer's calls can be tapped: a plain ``dot_general``, no ``batch_dims``, and every lifted transformation around
  it carries :data:`TAP_COLLECTION` (a layer that cannot be tapped keeps the ordinary per-sample gradient);
* the dense kernels and biases are read only by their own layer (no weight tying through other modules);
* every sample makes the same calls (no data-dependent Python control flow, which tracing excludes anyway).

:func:`per_sample_sums` then returns, for one sample, ``sum_r h(grad_r)`` over cotangents ``c_r`` of the sample's
output, with ``h`` elementwise (the square for a Fisher diagonal, the absolute value for MAS): dense kernels and
biases by the contraction above, every other leaf (embeddings, normalisation scales, convolutions, ...) by the
ordinary vector-Jacobian product.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any, Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax.core.tracers import current_trace

from clloop_jax.importance.reductions import sum_leading

__all__ = ["TAP_COLLECTION", "NotApplicable", "DensePlan", "plan", "per_sample_sums"]

#: The flax variable collection holding the taps; lifted transformations around dense layers must carry it.
TAP_COLLECTION = "dense_taps"

PyTree = Any


class NotApplicable(ValueError):
    """The per-layer method cannot be used with this ``apply_fn`` and ``params``; the message says why."""


def _flatten_input(x: jax.Array, axes: tuple[int, ...]) -> jax.Array:
    """``x`` with the contracted ``axes`` moved last, as ``[positions, prod(contracted sizes)]``."""
    moved = jnp.moveaxis(x, axes, tuple(range(x.ndim - len(axes), x.ndim)))
    size = math.prod(x.shape[a] for a in axes)
    return moved.reshape((-1, size))


# ----------------------------------------------------------------------------------------------------------------
# Interceptors
# ----------------------------------------------------------------------------------------------------------------


def _is_dense_call(context) -> bool:
    return context.method_name == "__call__" and isinstance(context.module, (nn.Dense, nn.DenseGeneral))


def _param(module, name: str):
    return module.get_variable("params", name) if module.has_variable("params", name) else None


def _contracted_axes(module, ndim: int) -> tuple[int, ...]:
    axis = -1 if isinstance(module, nn.Dense) else module.axis
    axis = (axis,) if isinstance(axis, int) else tuple(axis)
    return tuple(a % ndim for a in axis)


def _why_untappable(module) -> Optional[str]:
    if getattr(module, "dot_general", None) is not None or getattr(module, "dot_general_cls", None) is not None:
        return "it uses a custom dot_general"
    if isinstance(module, nn.DenseGeneral) and tuple(np.atleast_1d(module.batch_dims)):
        return "it has batch_dims"
    return None


class _Counter:
    """Numbers the calls of each layer within one trace (by its scope's root and path), so repeated calls get
    their own taps."""

    def __init__(self):
        self._seen: dict[tuple, tuple[Any, int]] = {}

    def next(self, scope) -> int:
        key = (id(scope.root), tuple(scope.path))
        held, k = self._seen.get(key, (scope.root, 0))
        self._seen[key] = (held, k + 1)
        return k


@dataclasses.dataclass
class _Call:
    kernel: int                 # leaf index of the kernel in params
    bias: Optional[int]         # leaf index of the bias, if any
    in_path: tuple              # path of the input tap in the tap collection
    out_path: tuple             # path of the output tap
    contracted: int             # number of contracted input axes (leading axes of the kernel)


class _Interceptor:
    """Re-runs the outermost flax call with the tap collection mutable, and taps the dense layers in it.

    At every call of a dense layer, the flattened input is recorded as ``callK_input [P, in]`` (once per input array
    read by several layers) and the collection comes back in :attr:`taps` (per iteration of the transformations
    around each layer). ``discover=True`` (any layer whose kernel is a leaf of ``leaves``): also creates a zero
    output tap ``callK_output [P, out]`` and notes where both went (:attr:`calls`), or why the layer could not be
    tapped (:attr:`untappable`). ``discover=False`` (layers whose kernel is one of ``kernel_ids``): adds the
    output tap to the layer's output.
    """

    def __init__(self, leaves: list, *, discover: bool, kernel_ids: frozenset = frozenset()):
        self.discover = discover
        self.index = {id(leaf): j for j, leaf in enumerate(leaves)}
        self.leaves = leaves
        self.kernel_ids = kernel_ids
        self.depth = 0
        self.taps = None
        self.calls: dict[tuple, _Call] = {}
        self.untappable: dict[int, str] = {}     # kernel leaf index -> reason
        self.problem: Optional[str] = None
        self.counter = _Counter()
        self.recorded: dict[tuple, tuple] = {}  # (scope root, input, axes) -> (the same, the record's path)
        self.trace = current_trace()              # the records must come back to this trace

    def __call__(self, next_fun, args, kwargs, context):
        if context.method_name == "setup":
            return next_fun(*args, **kwargs)
        if self.depth == 0:
            return self._top_level(next_fun, args, kwargs, context)
        if _is_dense_call(context):
            return self._dense(next_fun, args, kwargs, context)
        return next_fun(*args, **kwargs)

    def _nested(self, next_fun, args, kwargs):
        self.depth += 1
        try:
            return next_fun(*args, **kwargs)
        finally:
            self.depth -= 1

    def _top_level(self, next_fun, args, kwargs, context):
        module = context.module
        if self.taps is not None:
            self.problem = self.problem or "apply_fn makes more than one top-level flax call"
            return self._nested(next_fun, args, kwargs)
        self.taps = {}
        if current_trace() != self.trace:
            self.problem = ("apply_fn runs its flax call inside a JAX transformation of its own (jit, checkpoint, "
                            "scan, ...), out of which the taps cannot come")
            return self._nested(next_fun, args, kwargs)
        unbound, variables = module.unbind()
        got = jax.tree_util.tree_leaves({k: v for k, v in variables.items() if k != TAP_COLLECTION})
        if len(got) != len(self.leaves) or any(a is not b for a, b in zip(got, self.leaves)):
            self.problem = (f"apply_fn does not pass params unchanged to its flax call "
                            f"({type(module).__name__}.{context.method_name})")
            return self._nested(next_fun, args, kwargs)
        self.depth += 1
        try:
            result, state = unbound.apply(variables, *args, method=context.method_name,
                                          mutable=[TAP_COLLECTION], **kwargs)
        except Exception as error:  # noqa: BLE001 (when laying out: any failure means not applicable, and why)
            if not self.discover:
                raise
            self.problem = (f"re-running {type(module).__name__}.{context.method_name} with the taps failed: "
                            f"{type(error).__name__}: {error}")
            return self._nested(next_fun, args, kwargs)
        finally:
            self.depth -= 1
        self.taps = state.get(TAP_COLLECTION, {})
        return result

    def _dense(self, next_fun, args, kwargs, context):
        module = context.module
        kernel = _param(module, "kernel")
        if self.discover:
            j = self.index.get(id(kernel)) if kernel is not None else None
            if j is None:
                return next_fun(*args, **kwargs)
            reason = _why_untappable(module)
            if reason is None and not module.is_mutable_collection(TAP_COLLECTION):
                reason = (f"it is called inside a lifted transformation that does not carry the "
                          f"'{TAP_COLLECTION}' collection (e.g. nn.scan(..., variable_axes={{'{TAP_COLLECTION}': 0}}))")
            if reason is not None:
                self.untappable.setdefault(j, f"layer {'/'.join(module.scope.path)}: {reason}")
                return next_fun(*args, **kwargs)
        elif kernel is None or id(kernel) not in self.kernel_ids:
            return next_fun(*args, **kwargs)
        x = args[0] if args else kwargs["inputs"]
        axes = _contracted_axes(module, jnp.ndim(x))
        k = self.counter.next(module.scope)
        names = (f"call{k}_input", f"call{k}_output")
        path = tuple(module.scope.path)
        # Layers reading the same input array in the same transformation share one record of it (the attention's
        # query, key and value projections; the GRU's gates).
        root = module.scope.root
        key = (id(root), id(x), axes)
        shared = key in self.recorded
        if not shared:
            self.recorded[key] = (root, x, path + names[:1])
        in_path = self.recorded[key][2]
        if not shared:
            module.scope.put_variable(TAP_COLLECTION, names[0], _flatten_input(x, axes))
        if self.discover:
            y = next_fun(*args, **kwargs)
            features = math.prod(jnp.shape(y)[jnp.ndim(x) - len(axes):])
            module.scope.put_variable(TAP_COLLECTION, names[1],
                                      jnp.zeros((jnp.size(y) // features, features), y.dtype))
            bias = _param(module, "bias")
            self.calls[path + names[1:]] = _Call(j, self.index.get(id(bias)) if bias is not None else None,
                                                 in_path, path + names[1:], len(axes))
            return y
        if not module.has_variable(TAP_COLLECTION, names[1]):
            raise ValueError(f"dense layer {'/'.join(module.scope.path)} was called {k + 1} times, more than when "
                             f"its taps were laid out; the per-layer method needs the same calls on every sample")
        y = next_fun(*args, **kwargs)
        return y + module.get_variable(TAP_COLLECTION, names[1]).reshape(y.shape)


# ----------------------------------------------------------------------------------------------------------------
# The plan
# ----------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Layer:
    kernel: int
    bias: Optional[int]
    taps: tuple            # ((in_path, out_path), ...): one pair per call
    in_size: int
    out_size: int


@dataclasses.dataclass(frozen=True)
class DensePlan:
    """Where the taps go for one ``apply_fn`` and parameter structure (from :func:`plan`).

    Attributes:
      treedef: the structure of ``params``.
      layers: one entry per dense kernel handled by contraction (its leaf index, its bias's, its taps).
      free: leaf indices of ``params`` differentiated the ordinary way.
      taps: the tap collection as a pytree of ``jax.ShapeDtypeStruct`` (one sample).
    """

    treedef: Any
    layers: tuple
    free: tuple
    taps: PyTree

    @property
    def dense_leaves(self) -> tuple:
        return tuple(sorted({layer.kernel for layer in self.layers}
                            | {layer.bias for layer in self.layers if layer.bias is not None}))


def _get_path(tree, path):
    for name in path:
        if not isinstance(tree, Mapping) or name not in tree:
            return None
        tree = tree[name]
    return tree


def _set_path(tree: dict, path, value):
    for name in path[:-1]:
        tree = tree.setdefault(name, {})
    tree[path[-1]] = value


def plan(apply_fn: Callable, params: PyTree, example: PyTree) -> DensePlan:
    """Lay the taps out for ``apply_fn(params, example)``, ``example`` one sample's input (arrays or
    ``jax.ShapeDtypeStruct``). Raises :class:`NotApplicable` (a ``ValueError``) naming the reason when the
    per-layer method cannot be used."""
    if not isinstance(params, Mapping) or "params" not in params:
        raise NotApplicable(f"params must be a flax variables dict with a 'params' collection, got "
                            f"{type(params).__name__}")
    if TAP_COLLECTION in params:
        raise NotApplicable(f"params already holds a '{TAP_COLLECTION}' collection")
    leaves, treedef = jax.tree_util.tree_flatten(params)
    abstract = lambda a: jax.ShapeDtypeStruct(np.shape(a), jnp.result_type(a))
    found = {}

    def probe(p, x):
        discovery = _Interceptor(jax.tree_util.tree_leaves(p), discover=True)
        with nn.intercept_methods(discovery):
            apply_fn(p, x)
        found["discovery"] = discovery
        return jnp.zeros(())

    jax.eval_shape(probe, jax.tree_util.tree_map(abstract, params), jax.tree_util.tree_map(abstract, example))
    d = found["discovery"]
    if d.problem is not None:
        raise NotApplicable(d.problem)
    if d.taps is None:
        raise NotApplicable("apply_fn makes no flax call")
    taps_abstract = jax.tree_util.tree_map(abstract, d.taps)
    by_kernel: dict[int, list] = {}
    for call in d.calls.values():
        if call.kernel in d.untappable:
            continue
        if _get_path(taps_abstract, call.out_path) is None or _get_path(taps_abstract, call.in_path) is None:
            raise NotApplicable(f"the taps of dense layer {'/'.join(call.in_path[:-1])} did not come back from "
                                f"the model (a transformation around it drops the '{TAP_COLLECTION}' collection)")
        by_kernel.setdefault(call.kernel, []).append(call)
    included = {c.out_path for calls in by_kernel.values() for c in calls}
    for calls in by_kernel.values():
        for c in calls:
            recorder = c.in_path[:-1] + (c.in_path[-1].replace("_input", "_output"),)
            if recorder not in included:
                raise NotApplicable(f"dense layer {'/'.join(c.out_path[:-1])} shares its input with layer "
                                    f"{'/'.join(recorder[:-1])}, some of whose calls cannot be tapped")
    if not by_kernel:
        reasons = "; ".join(d.untappable.values())
        raise NotApplicable("no dense layer (nn.Dense / nn.DenseGeneral) of params can be tapped"
                            + (f": {reasons}" if reasons else ""))
    layers, taps = [], {}
    for j, calls in sorted(by_kernel.items()):
        calls = sorted(calls, key=lambda c: c.in_path)
        biases = {c.bias for c in calls}
        shape = np.shape(leaves[j])
        n_in = calls[0].contracted
        for c in calls:
            _set_path(taps, c.out_path, _get_path(taps_abstract, c.out_path))
        layers.append(_Layer(j, biases.pop() if len(biases) == 1 else None,
                             tuple((c.in_path, c.out_path) for c in calls),
                             int(math.prod(shape[:n_in])), int(math.prod(shape[n_in:]))))
    dense = {layer.kernel for layer in layers} | {layer.bias for layer in layers if layer.bias is not None}
    free = tuple(j for j in range(len(leaves)) if j not in dense)
    kernel_ids = {id(leaves[layer.kernel]) for layer in layers}
    if len(kernel_ids) < len(layers) or any(id(leaves[j]) in kernel_ids for j in free):
        raise NotApplicable("params holds one array object at several leaves, one of them a dense kernel")
    return DensePlan(treedef, tuple(layers), free, taps)


# ----------------------------------------------------------------------------------------------------------------
# Per-sample sums
# ----------------------------------------------------------------------------------------------------------------


def per_sample_sums(dense_plan: DensePlan, apply_fn: Callable, params: PyTree, x: PyTree,
                    cotangents: Callable, h: Callable) -> PyTree:
    """``sum_r h(grad_params <c_r, apply_fn(params, x)>)`` for one sample ``x``, a pytree like ``params``.

    ``cotangents(output) -> [R, *output.shape]`` gives the sample's output cotangents (evaluated at its output);
    ``h`` is elementwise. Dense kernels and biases: ``sum_r h(sum_s x_s^T delta_rs)`` and ``sum_r h(sum_s
    delta_rs)``; every other leaf by its ordinary vector-Jacobian product.
    """
    leaves, treedef = jax.tree_util.tree_flatten(params)
    if treedef != dense_plan.treedef:
        raise ValueError(f"params has structure {treedef}, but the taps were laid out for {dense_plan.treedef}")
    free = [leaves[j] for j in dense_plan.free]
    kernel_ids = frozenset(id(leaves[layer.kernel]) for layer in dense_plan.layers)
    taps0 = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), dense_plan.taps)

    def f(free_leaves, taps):
        new = list(leaves)
        for j, v in zip(dense_plan.free, free_leaves):
            new[j] = v
        variables = dict(jax.tree_util.tree_unflatten(treedef, new))
        variables[TAP_COLLECTION] = taps
        interceptor = _Interceptor(new, discover=False, kernel_ids=kernel_ids)
        with nn.intercept_methods(interceptor):
            output = apply_fn(variables, x)
        if interceptor.problem is not None:
            raise ValueError(f"per-layer method: {interceptor.problem}")
        return output, interceptor.taps

    output, vjp_fn, records = jax.vjp(f, free, taps0, has_aux=True)
    cot = cotangents(output).astype(jnp.result_type(output))
    g_free, g_taps = vjp_fn(cot[0])
    rest = None
    if cot.shape[0] > 1:
        rest = jax.vmap(vjp_fn)(cot[1:])

    out = list(leaves)
    for pos, j in enumerate(dense_plan.free):
        total = h(g_free[pos])
        if rest is not None:
            total = total + sum_leading(h(rest[0][pos]))
        out[j] = total.astype(jnp.result_type(leaves[j]))
    # One contraction per recorded input: the output cotangents of every call reading it side by side.
    groups: dict[tuple, list] = {}
    for n, layer in enumerate(dense_plan.layers):
        for in_path, out_path in layer.taps:
            groups.setdefault(in_path, []).append((n, out_path))
    kernels: dict[int, tuple] = {}   # layer -> (kernel, bias[, kernel per extra cotangent, bias per ...])
    for in_path, calls in groups.items():
        x_rec = _get_path(records, in_path)                       # [*lead, P, in]
        if x_rec is None:
            raise ValueError(f"per-layer method: the input of dense layer {'/'.join(in_path[:-1])} was not recorded")
        lead = tuple(range(x_rec.ndim - 1))
        i, o, r = x_rec.ndim - 1, x_rec.ndim, x_rec.ndim + 1
        d = [_get_path(g_taps, out_path) for _, out_path in calls]   # [*lead, P, out_c] each
        d_all = jnp.concatenate(d, axis=-1) if len(d) > 1 else d[0]
        k_all = jax.lax.dot_general(x_rec, d_all, ((lead, lead), ((), ())))   # [in, sum out_c]
        b_all = jnp.sum(d_all, axis=lead)
        if rest is not None:
            dr = [_get_path(rest[1], out_path) for _, out_path in calls]     # [R - 1, *lead, P, out_c]
            dr_all = jnp.concatenate(dr, axis=-1) if len(dr) > 1 else dr[0]
            kr_all = jnp.einsum(x_rec, (*lead, i), dr_all, (r, *lead, o), (r, i, o))
            br_all = jnp.sum(dr_all, axis=tuple(a + 1 for a in lead))
        start = 0
        for (n, _), d_c in zip(calls, d):
            stop = start + d_c.shape[-1]
            part = (k_all[:, start:stop], b_all[start:stop]) if rest is None else \
                (k_all[:, start:stop], b_all[start:stop], kr_all[..., start:stop], br_all[..., start:stop])
            kernels[n] = part if n not in kernels else tuple(u + v for u, v in zip(kernels[n], part))
            start = stop
    for n, layer in enumerate(dense_plan.layers):
        parts = kernels[n]
        kernel, bias = h(parts[0]), h(parts[1])
        if rest is not None:
            kernel = kernel + sum_leading(h(parts[2]))
            bias = bias + sum_leading(h(parts[3]))
        k_leaf = leaves[layer.kernel]
        out[layer.kernel] = kernel.reshape(np.shape(k_leaf)).astype(jnp.result_type(k_leaf))
        if layer.bias is not None:
            b_leaf = leaves[layer.bias]
            out[layer.bias] = bias.reshape(np.shape(b_leaf)).astype(jnp.result_type(b_leaf))
    return jax.tree_util.tree_unflatten(treedef, out)
