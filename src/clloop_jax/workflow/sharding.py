"""Many seeds and swept hyperparameters spread over every device, with JAX's own sharding.

A vmapped run is data parallel over its batch axis: each seed (or each swept value) is an independent program.
:func:`sharded_vmap` turns ``fn`` into ``jax.jit(jax.vmap(fn))`` whose batch axis is split over a one-axis device
:class:`~jax.sharding.Mesh` (``NamedSharding(mesh, P("batch"))``): every device runs ``B / num_devices`` rows of
the same compiled program, and the outputs stay sharded the same way, on the devices that computed them::

    run = make_run(config, source)
    keys = jax.random.split(jax.random.key(0), 64)
    state, results = shard_seeds(run, keys, hp)            # 64 seeds over every device
    print(format_sharding(results))                        # R: float32[64,3,3] P('batch',) ... 8 rows per device

    sweep = hp.replace(lam=lambdas)
    _, swept = sharded_vmap(run, in_axes=(None, sweep.axes("lam")))(key, sweep)  # rows over the devices

Numbers: every row computes exactly what ``jax.vmap(fn)`` computes for it, on a different number of rows per
device. XLA may fuse or order a reduction differently for another batch size, so results on 8 devices equal
results on 1 to float32 rounding (``allclose``), and are bitwise identical from one call (or process) to the next
with the same devices.

Uneven batches are padded: when ``B`` is not a multiple of the device count, each batched input is extended with
copies of its last row up to the next multiple, the padded rows are computed and dropped, and the outputs hold
exactly ``B`` rows; as ``B`` rows no longer split evenly, JAX returns the trimmed outputs replicated on every
device. Pass ``pad=False`` to refuse such batches instead, with an error that says which sizes would fit.

Several processes (hosts): call ``jax.distributed.initialize(coordinator_address, num_processes, process_id)``
in every process before anything else touches JAX, then run the same program everywhere with the same inputs.
``jax.devices()`` then lists the devices of every process; the mesh spans all of them, each process places the
rows of its own devices (``jax.make_array_from_callback``), and :func:`gather` brings the full results to every
process (``process_allgather``). On CPU the processes talk through gloo (checked with two local processes in
``tests/test_sharding.py``).

Forcing several CPU devices (for tests and development): start the process with
``XLA_FLAGS=--xla_force_host_platform_device_count=8``; it must be set before JAX initialises its backend.
"""

from __future__ import annotations

import collections
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from clloop_jax.validation import ArgumentTypeError, check_bool, check_callable, check_int, check_key, describe

__all__ = [
    "BATCH_AXIS",
    "batch_mesh",
    "sharded_vmap",
    "shard_seeds",
    "sharding_info",
    "format_sharding",
    "gather",
]

#: The name of the mesh axis the batch (seeds, swept values) is split over.
BATCH_AXIS = "batch"

PyTree = Any
Devices = Union[None, int, Sequence[jax.Device]]


# ----------------------------------------------------------------------------------------------------------------
# The mesh
# ----------------------------------------------------------------------------------------------------------------


def _resolve_devices(devices: Devices) -> List[jax.Device]:
    available = jax.devices()
    if devices is None:
        return list(available)
    if isinstance(devices, Mesh):
        raise ArgumentTypeError("devices must be None, a device count or a sequence of jax devices, got a Mesh; "
                                "pass list(mesh.devices.flat)")
    if not isinstance(devices, (list, tuple)):
        count = check_int("devices", devices, min=1, max=len(available))
        return list(available[:count])
    devices = list(devices)
    if not devices:
        raise ValueError("devices must hold at least one device, got an empty sequence")
    for i, d in enumerate(devices):
        if not isinstance(d, jax.Device):
            raise ArgumentTypeError(f"devices[{i}] must be a jax device (from jax.devices()), got {describe(d)}")
    if len(set(devices)) != len(devices):
        raise ValueError(f"devices must be distinct, got {devices}")
    return devices


def batch_mesh(devices: Devices = None, axis_name: str = BATCH_AXIS) -> Mesh:
    """A one-axis :class:`Mesh` over ``devices``: None = every device (of every process), an int = the first that
    many, or a sequence of devices."""
    if not isinstance(axis_name, str) or not axis_name:
        raise ArgumentTypeError(f"axis_name must be a non-empty string, got {describe(axis_name)}")
    return Mesh(np.array(_resolve_devices(devices), dtype=object), (axis_name,))


# ----------------------------------------------------------------------------------------------------------------
# Sharded vmap
# ----------------------------------------------------------------------------------------------------------------


def _check_in_axes(in_axes) -> None:
    for leaf in jax.tree.leaves(in_axes):
        if isinstance(leaf, (bool, np.bool_)) or not isinstance(leaf, (int, np.integer)) or leaf < 0:
            raise ValueError(f"in_axes must hold 0 or positive integers (the batch axis of an input) or None "
                             f"(broadcast), got {describe(leaf)} in {in_axes!r}")


def _axes_per_leaf(in_axes, args: tuple) -> List[Optional[int]]:
    """The batch axis of every leaf of ``args`` (None: broadcast), in ``jax.tree.leaves(args)`` order, from
    ``in_axes``: an int or None for every argument, or a tuple with one pytree prefix per argument (as for
    ``jax.vmap``)."""
    if type(in_axes) is list:
        in_axes = tuple(in_axes)
    if type(in_axes) is not tuple:
        in_axes = (in_axes,) * len(args)
    if len(in_axes) != len(args):
        raise ValueError(f"in_axes must have one entry per positional argument ({len(args)}), got {len(in_axes)}: "
                         f"{in_axes!r}")
    axes: List[Optional[int]] = []
    for prefix, arg in zip(in_axes, args):
        # Broadcast each argument's prefix over that argument's own leaves: an argument with no leaves (None, an
        # empty tuple) contributes no axis, whatever its prefix says.
        structure = jax.tree.structure(prefix, is_leaf=lambda x: x is None)
        try:
            subtrees = structure.flatten_up_to(arg)
        except (ValueError, TypeError) as err:
            raise ValueError(f"in_axes must be a pytree prefix of the arguments (as for jax.vmap): {err}") from None
        for ax, sub in zip(jax.tree.leaves(prefix, is_leaf=lambda x: x is None), subtrees):
            axes.extend([ax] * len(jax.tree.leaves(sub)))
    return axes


def _pad_rows(leaf, axis: int, pad: int):
    if pad == 0:
        return leaf
    last = jax.lax.slice_in_dim(leaf, leaf.shape[axis] - 1, leaf.shape[axis], axis=axis)
    return jnp.concatenate([leaf, jnp.repeat(last, pad, axis=axis)], axis=axis)


def _place(leaf, sharding: NamedSharding):
    """``leaf`` laid out with ``sharding``: ``device_put`` in one process; with several processes, each process
    fills the rows of its own devices from its (identical) copy of the input."""
    if jax.process_count() == 1:
        return jax.device_put(leaf, sharding)
    if jnp.issubdtype(jnp.result_type(leaf), jax.dtypes.prng_key):
        impl = jax.random.key_impl(leaf)
        data = np.asarray(jax.random.key_data(leaf))
        placed = jax.make_array_from_callback(data.shape, sharding, lambda index: data[index])
        return jax.random.wrap_key_data(placed, impl=impl)
    host = np.asarray(leaf)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


class _ShardedVmap:
    """The callable :func:`sharded_vmap` returns; holds one ``jax.jit`` (and so its compiled programs)."""

    def __init__(self, fn: Callable, in_axes, mesh: Mesh, pad: bool):
        self.fn, self.in_axes, self.mesh, self.pad = fn, in_axes, mesh, pad
        self.sharding = NamedSharding(mesh, PartitionSpec(self.axis))
        self._jit = jax.jit(jax.vmap(fn, in_axes=in_axes), out_shardings=self.sharding)

    @property
    def axis(self) -> str:
        return self.mesh.axis_names[0]

    @property
    def num_devices(self) -> int:
        return self.mesh.devices.size

    def _prepare(self, args):
        """``(placed_args, batch, pad)``: the arguments padded and laid out on the mesh."""
        axes = _axes_per_leaf(self.in_axes, args)
        leaves, treedef = jax.tree.flatten(args)
        sizes = {}
        for i, (leaf, ax) in enumerate(zip(leaves, axes)):
            if ax is None:
                continue
            shape = np.shape(leaf)
            if ax >= len(shape):
                raise ValueError(f"a batched input (leaf {i} of the arguments, {describe(leaf)}) has no axis {ax} "
                                 f"to map over")
            sizes.setdefault(int(shape[ax]), i)
        if not sizes:
            raise ValueError("sharded_vmap needs at least one batched input (in_axes are all None)")
        if len(sizes) > 1:
            raise ValueError(f"all batched inputs must have the same batch size, got sizes {sorted(sizes)}")
        (batch,) = sizes
        n = self.num_devices
        pad = (-batch) % n
        if pad and not self.pad:
            lower, upper = batch - batch % n, batch + pad
            raise ValueError(f"the batch size {batch} is not a multiple of the {n} devices; use {upper} (or "
                             f"{lower}) rows, or pad=True to pad with copies of the last row")
        placed = []
        for leaf, ax in zip(leaves, axes):
            if ax is None:
                placed.append(_place(leaf, NamedSharding(self.mesh, PartitionSpec())))
            else:
                spec = PartitionSpec(*([None] * ax + [self.axis]))
                placed.append(_place(_pad_rows(leaf, ax, pad), NamedSharding(self.mesh, spec)))
        return jax.tree.unflatten(treedef, placed), batch, pad

    def __call__(self, *args):
        placed, batch, pad = self._prepare(args)
        out = self._jit(*placed)
        if pad:
            out = jax.tree.map(lambda x: x[:batch], out)
        return out

    def lower(self, *args):
        """``jax.jit(...).lower`` of the sharded program for these arguments (padded and placed as a call would
        place them), to time tracing and compilation apart: ``sharded.lower(*args).compile()``."""
        placed, _, _ = self._prepare(args)
        return self._jit.lower(*placed)

    def _cache_size(self) -> int:
        return self._jit._cache_size()


def sharded_vmap(fn: Callable, in_axes=0, *, devices: Devices = None, axis_name: str = BATCH_AXIS,
                 pad: bool = True) -> Callable:
    """``jax.jit(jax.vmap(fn, in_axes))`` with the batch axis split over a device mesh.

    Args:
      fn: the function of one row, e.g. a run ``(key, hparams) -> (state, results)``.
      in_axes: as for ``jax.vmap`` (a pytree prefix of the positional arguments; None broadcasts an argument to
        every device, an integer is its batch axis). Batched axes are split over the devices.
      devices: None (every device), a count (the first ones) or a sequence of devices.
      axis_name: the mesh axis' name (it appears in the outputs' sharding).
      pad: pad a batch that is not a multiple of the device count with copies of its last row (dropped from the
        outputs); False refuses such batches.

    Returns:
      ``sharded(*args)``: the outputs of ``jax.vmap(fn, in_axes)(*args)``, every leaf with the batch on axis 0,
      sharded ``NamedSharding(mesh, P(axis_name))``. Compiled once per input shapes, as with ``jax.jit``.
    """
    check_callable("fn", fn)
    _check_in_axes(in_axes)
    pad = check_bool("pad", pad)
    return _ShardedVmap(fn, in_axes, batch_mesh(devices, axis_name), pad)


_SEED_CACHE: "collections.OrderedDict[Any, _ShardedVmap]" = collections.OrderedDict()
_SEED_CACHE_SIZE = 16


def shard_seeds(fn: Callable, keys, *args, devices: Devices = None, pad: bool = True):
    """``fn(key, *args)`` for every key of ``keys [S]``, the seeds split over ``devices``; ``args`` broadcast.

    The same as ``jax.vmap(fn, in_axes=(0,) + (None,) * len(args))(keys, *args)`` up to float32 rounding, with
    every output sharded over the seed axis (see :func:`sharded_vmap`; padding as there). The compiled program is
    kept for the next call with the same ``fn``, argument count and devices.
    """
    check_callable("fn", fn)
    keys = check_key("keys", keys, ndim=1)
    pad = check_bool("pad", pad)
    mesh_devices = tuple(_resolve_devices(devices))
    # Keyed by identity (runs hold arrays and are not hashable); the entry keeps fn alive, so its id stays unique.
    cache_key = (id(fn), len(args), mesh_devices, pad)
    sharded = _SEED_CACHE.get(cache_key)
    if sharded is None or sharded.fn is not fn:
        sharded = sharded_vmap(fn, (0,) + (None,) * len(args), devices=list(mesh_devices), pad=pad)
        _SEED_CACHE[cache_key] = sharded
        while len(_SEED_CACHE) > _SEED_CACHE_SIZE:
            _SEED_CACHE.popitem(last=False)
    _SEED_CACHE.move_to_end(cache_key)
    return sharded(keys, *args)


# ----------------------------------------------------------------------------------------------------------------
# Where the results live
# ----------------------------------------------------------------------------------------------------------------


def _leaf_info(path, x) -> Dict[str, Any]:
    name = jax.tree_util.keystr(path, simple=True, separator=".") if path else "(root)"
    info: Dict[str, Any] = {"path": name, "shape": tuple(x.shape), "dtype": str(x.dtype)}
    sharding = getattr(x, "sharding", None)
    if sharding is None:
        info.update(kind="host", spec=None, mesh=None, num_devices=0, shard_shape=None, rows={})
        return info
    info["kind"] = type(sharding).__name__
    info["spec"] = str(sharding.spec) if isinstance(sharding, NamedSharding) else None
    info["mesh"] = dict(sharding.mesh.shape) if isinstance(sharding, NamedSharding) else None
    info["num_devices"] = len(sharding.device_set)
    info["shard_shape"] = tuple(sharding.shard_shape(x.shape))
    rows = {}
    if x.ndim >= 1:
        for device, index in sorted(sharding.devices_indices_map(x.shape).items(), key=lambda kv: kv[0].id):
            start, stop, _ = index[0].indices(x.shape[0])
            rows[device.id] = (start, stop)
    info["rows"] = rows
    return info


def sharding_info(tree: PyTree) -> List[Dict[str, Any]]:
    """Per array leaf: ``path``, ``shape``, ``dtype``, ``kind`` (the sharding's class), ``spec``
    (``PartitionSpec`` text), ``mesh`` (axis sizes), ``num_devices``, ``shard_shape`` (the block each device
    holds) and ``rows`` (device id -> the ``(start, stop)`` rows of axis 0 it holds)."""
    return [_leaf_info(path, x) for path, x in jax.tree_util.tree_flatten_with_path(tree)[0]
            if hasattr(x, "shape")]


def format_sharding(tree: PyTree, max_leaves: int = 12) -> str:
    """One line per array leaf: where its rows live (see :func:`sharding_info`)."""
    lines = []
    infos = sharding_info(tree)
    for info in infos[:max_leaves]:
        shape = ",".join(str(s) for s in info["shape"])
        where = info["spec"] or info["kind"]
        rows = info["rows"]
        spans = sorted({stop - start for start, stop in rows.values()})
        per = (f"{'/'.join(str(s) for s in spans)} row{'s' if spans != [1] else ''} per device" if rows else "")
        mesh = f" mesh {info['mesh']}" if info["mesh"] else ""
        lines.append(f"{info['path']}: {info['dtype']}[{shape}] {where}{mesh} on {info['num_devices']} device(s), "
                     f"shard {list(info['shard_shape'] or ())}, {per}".rstrip(", "))
    if len(infos) > max_leaves:
        lines.append(f"... and {len(infos) - max_leaves} more leaves")
    return "\n".join(lines)


def gather(tree: PyTree) -> PyTree:
    """The outputs as NumPy arrays on this host: ``np.asarray`` in one process; with several processes every
    process receives the full arrays (``multihost_utils.process_allgather``)."""
    if jax.process_count() == 1:
        return jax.tree.map(np.asarray, tree)
    from jax.experimental import multihost_utils

    return jax.tree.map(lambda x: np.asarray(multihost_utils.process_allgather(x, tiled=True)), tree)
