"""Rehearsal memories beyond the reservoir: which samples a fixed-size memory keeps, as pure functions.

Each memory is the :class:`~clloop_jax.strategies.rehearsal.Memory` pytree of the reservoir (leaves with a leading
slot axis of fixed size, a ``seen`` count of the items offered), updated with explicit keys, so that it runs under
``jit`` and ``vmap`` and holds no state outside its arrays:

* :func:`balanced_init` and :func:`balanced_add`: GDumb's class-balanced greedy memory (Prabhu et al. 2020, "GDumb:
  a simple approach that questions our progress in continual learning"). Its items are the pair ``(samples,
  labels)``, so :func:`~clloop_jax.strategies.rehearsal.memory_sample` draws from it as from a reservoir.
* :func:`ring_init`, :func:`ring_add` and :func:`ring_sample`: a ring buffer per task, the capacity split equally
  over a fixed number of tasks, each task's slots overwritten first-in-first-out (``seen`` counts per task).
* :func:`herding_select`: iCaRL's exemplar selection by herding (Rebuffi et al. 2017, "iCaRL: incremental classifier
  and representation learning"), the indices of the samples whose running mean best follows the class mean.

Sizes (capacity, number of tasks, number of exemplars) are static: they are shapes of the compiled program.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from clloop_jax.strategies.rehearsal import Memory, memory_init

__all__ = ["balanced_init", "balanced_add", "ring_init", "ring_add", "ring_filled", "ring_sample", "herding_select"]

PyTree = Any
_INT_MAX = jnp.iinfo(jnp.int32).max


def _check_count(name, value, low=1):
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")


def _leading(tree) -> int:
    return jax.tree.leaves(tree)[0].shape[0]


# ----------------------------------------------------------------------------------------------------------------
# GDumb's class-balanced memory
# ----------------------------------------------------------------------------------------------------------------


def balanced_init(example, capacity: int) -> Memory:
    """An empty class-balanced memory of ``capacity`` slots for items shaped like one ``example``; its items are
    ``(samples, labels)`` with ``labels`` an ``int32 [capacity]`` array."""
    return memory_init((example, jnp.zeros((), jnp.int32)), capacity)


def balanced_add(memory: Memory, samples: PyTree, labels, key) -> Memory:
    """Offers ``samples`` (leading axis: samples, in stream order) with their integer class ``labels`` (``[n]``) to a
    memory from :func:`balanced_init`, one at a time, by GDumb's greedy rule:

    * while the memory is not full, the sample takes the next free slot (slots fill in order, as in the reservoir);
    * when it is full, let ``M`` be the size of the largest class in memory and ``c`` the number of stored samples of
      the new sample's class: if ``c < M`` the sample replaces one stored sample drawn uniformly from the slots of
      the classes of size ``M``; if ``c == M`` (its class is the largest, or ties for it) the sample is dropped.

    Ties: when several classes share the largest size ``M``, the slot replaced is drawn uniformly over all their
    slots, which is the same as choosing one of the tied classes uniformly and then one of its samples uniformly.
    The draws come from ``key`` alone, so the result is a function of ``(memory, samples, labels, key)``: the
    ``i``-th sample's draw is ``d = jax.random.randint(key, (n,), 0, 2**31 - 1)[i]`` and the slot it replaces is the
    ``(d mod K)``-th (from 0, in slot order) of the ``K`` slots of the largest classes. Class sizes are counted once
    per call (``capacity^2`` comparisons) and then kept up to date sample by sample (``capacity`` per sample).
    """
    if not (isinstance(memory.items, tuple) and len(memory.items) == 2):
        raise ValueError("memory must come from balanced_init (items are (samples, labels))")
    stored, slot_labels = memory.items
    capacity = slot_labels.shape[0]
    n = _leading(samples)
    labels = jnp.asarray(labels)
    if labels.shape != (n,) or not jnp.issubdtype(labels.dtype, jnp.integer):
        raise ValueError(f"labels must be integers of shape ({n},) (one per sample), got {labels.dtype}{labels.shape}")
    labels = labels.astype(jnp.int32)
    draws = jax.random.randint(key, (n,), 0, _INT_MAX)
    slots = jnp.arange(capacity)

    in_use = slots < jnp.minimum(memory.seen, capacity)
    # size[j]: how many used slots hold slot j's class (0 for a free slot); kept up to date sample by sample
    size = jnp.where(in_use, jnp.sum((slot_labels[:, None] == slot_labels[None, :]) & in_use[None, :], axis=1), 0)

    def offer(carry, i):
        items, held, size = carry
        t = memory.seen + i
        y = labels[i]
        in_use = slots < t
        largest = jnp.max(size)
        own = jnp.sum(in_use & (held == y))
        candidates = in_use & (size == largest)
        r = draws[i] % jnp.maximum(jnp.sum(candidates), 1)
        victim = jnp.argmax(jnp.cumsum(candidates) > r)  # the r-th candidate slot, counting from 0
        full = t >= capacity
        slot = jnp.where(full, victim, jnp.minimum(t, capacity - 1))
        keep = ~full | (own < largest)
        sample = jax.tree.map(lambda x: x[i], samples)
        items = jax.tree.map(lambda s, x: s.at[slot].set(jnp.where(keep, x, s[slot])), items, sample)
        # the replaced class (if any) shrinks by one, the new sample's class grows by one
        shrink = in_use & (held == held[slot]) & full
        grow = in_use & (held == y)
        new_size = size - shrink + grow
        new_size = new_size.at[slot].set(own + 1)
        size = jnp.where(keep, new_size, size)
        held = held.at[slot].set(jnp.where(keep, y, held[slot]))
        return (items, held, size), None

    (stored, slot_labels, _), _ = jax.lax.scan(offer, (stored, slot_labels, size), jnp.arange(n))
    return Memory((stored, slot_labels), memory.seen + n)


# ----------------------------------------------------------------------------------------------------------------
# A ring buffer per task
# ----------------------------------------------------------------------------------------------------------------


def ring_init(example, capacity: int, num_tasks: int) -> Memory:
    """An empty memory of ``capacity`` slots split equally over ``num_tasks`` tasks (task ``k`` owns slots
    ``k * capacity / num_tasks`` up to the next task's first); ``seen`` is ``int32 [num_tasks]``, the items offered per
    task. ``capacity`` must be a multiple of ``num_tasks``."""
    _check_count("num_tasks", num_tasks)
    _check_count("capacity", capacity)
    if capacity % num_tasks:
        raise ValueError(f"capacity must be a multiple of num_tasks ({num_tasks}) to split equally, got {capacity}")
    return Memory(memory_init(example, capacity).items, jnp.zeros((num_tasks,), jnp.int32))


def _ring_shape(memory: Memory):
    if jnp.ndim(memory.seen) != 1:
        raise ValueError("memory must come from ring_init (seen counts items per task)")
    num_tasks = memory.seen.shape[0]
    return _leading(memory.items) // num_tasks, num_tasks


def ring_add(memory: Memory, samples: PyTree, task_id) -> Memory:
    """Offers ``samples`` (leading axis: samples, in stream order) of task ``task_id`` to a memory from
    :func:`ring_init`: the ``t``-th item ever offered for task ``k`` (``t = 0, 1, ...``) goes to slot
    ``k * per_task + t mod per_task``, so each task keeps its ``per_task`` most recent items and never touches another
    task's slots. ``task_id`` may be traced; a concrete one outside ``[0, num_tasks)`` raises, a traced one there
    leaves the memory unchanged."""
    per_task, num_tasks = _ring_shape(memory)
    try:
        concrete = int(task_id)
    except (jax.errors.ConcretizationTypeError, jax.errors.TracerIntegerConversionError, TypeError):
        concrete = None
    if concrete is not None and not 0 <= concrete < num_tasks:
        raise ValueError(f"task_id must lie in [0, {num_tasks}), got {concrete}")
    task_id = jnp.asarray(task_id, jnp.int32)
    valid = (task_id >= 0) & (task_id < num_tasks)
    task = jnp.clip(task_id, 0, num_tasks - 1)
    start = memory.seen[task]
    n = _leading(samples)

    def offer(items, i):
        slot = task * per_task + (start + i) % per_task
        sample = jax.tree.map(lambda x: x[i], samples)
        return jax.tree.map(lambda s, x: s.at[slot].set(jnp.where(valid, x, s[slot])), items, sample), None

    items, _ = jax.lax.scan(offer, memory.items, jnp.arange(n))
    return Memory(items, memory.seen.at[task].add(jnp.where(valid, n, 0)))


def ring_filled(memory: Memory) -> jax.Array:
    """``bool [capacity]``: the slots of a ring memory that hold an item."""
    per_task, num_tasks = _ring_shape(memory)
    slots = jnp.arange(per_task * num_tasks)
    return slots % per_task < jnp.minimum(memory.seen, per_task)[slots // per_task]


def ring_sample(memory: Memory, key, n: int) -> PyTree:
    """``n`` items drawn uniformly, with replacement, from the filled slots of a ring memory (slot 0 while it is
    empty)."""
    _check_count("n", n)
    filled = ring_filled(memory)
    filled = filled.at[0].set(filled[0] | ~jnp.any(filled))
    idx = jax.random.categorical(key, jnp.where(filled, 0.0, -jnp.inf), shape=(n,))
    return jax.tree.map(lambda x: x[idx], memory.items)


# ----------------------------------------------------------------------------------------------------------------
# iCaRL's herding
# ----------------------------------------------------------------------------------------------------------------


def herding_select(features, m: int, valid=None) -> jax.Array:
    """iCaRL's exemplar selection: ``int32 [m]`` indices into ``features`` (``[n, d]``, one class's samples), in the
    order picked.

    Each row is L2-normalised (``phi_i = f_i / |f_i|``; a zero row stays zero) and ``mu`` is the mean of the
    ``phi_i``. At step ``k = 1..m`` the pick is ``argmin_i |mu - (phi_i + S_{k-1}) / k|`` over the rows not picked
    yet, ``S_{k-1}`` the sum of the rows picked before; ties go to the lowest index. ``m`` is static
    (``1 <= m <= n``).

    ``valid`` (``bool [n]``, may be traced; None: every row) restricts the selection to the rows of one class among
    others: ``mu`` is the mean over the valid rows, only they are picked, and once all ``V`` of them are, the
    remaining ``m - V`` picks are index 0 (read only the first ``min(m, V)``).
    """
    features = jnp.asarray(features)
    if features.ndim != 2:
        raise ValueError(f"features must be a [n, d] array, got shape {features.shape}")
    n, d = features.shape
    _check_count("m", m)
    if m > n:
        raise ValueError(f"m must be at most the number of samples ({n}), got {m}")
    dtype = jnp.result_type(features.dtype, jnp.float32)
    features = features.astype(dtype)
    norms = jnp.linalg.norm(features, axis=1, keepdims=True)
    phi = features / jnp.where(norms > 0, norms, 1.0)
    if valid is None:
        mu = jnp.mean(phi, axis=0)
        never = jnp.zeros((n,), bool)
    else:
        valid = jnp.asarray(valid, bool)
        if valid.shape != (n,):
            raise ValueError(f"valid must be a bool [n] array (n = {n}), got shape {valid.shape}")
        mu = jnp.sum(jnp.where(valid[:, None], phi, 0.0), axis=0) / jnp.maximum(jnp.sum(valid), 1)
        never = ~valid

    def pick(carry, k):
        total, taken = carry
        dist = jnp.sum(jnp.square(mu - (phi + total) / k), axis=1)
        i = jnp.argmin(jnp.where(taken | never, jnp.inf, dist))
        return (total + phi[i], taken.at[i].set(True)), i.astype(jnp.int32)

    start = (jnp.zeros((d,), dtype), jnp.zeros((n,), bool))
    _, picks = jax.lax.scan(pick, start, jnp.arange(1, m + 1, dtype=dtype))
    return picks
