"""GEM, gradient episodic memory (Lopez-Paz & Ranzato 2017, "Gradient episodic memory for continual learning",
NeurIPS): a memory per task, and the update's gradient projected, by the dual quadratic program of the paper, onto the
gradients that increase no earlier task's memory loss to first order.

* :func:`gem_project`: the projection (the paper's eq. 10-13) for the gradients of the earlier tasks' memories.
* :func:`nnls_gram`: the dual's non-negative least-squares problem, by Lawson & Hanson's active-set method with a
  static number of steps, so that it runs under ``jit`` and ``vmap``.
* :func:`gem`: the strategy (a ring memory per task from :mod:`~clloop_jax.strategies.memories`, the memory loss the
  source's own on remembered samples, as :mod:`~clloop_jax.strategies.rehearsal`'s strategies use it).
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp

from clloop_jax.strategies.base import Strategy, check_hparams, nonnegative, register
from clloop_jax.strategies.rehearsal import Memory, memory_capacity, rehearsed_inputs
from clloop_jax.validation import check_int

__all__ = ["nnls_gram", "gem_project", "GEMHParams", "GEMState", "gem"]

PyTree = Any


def nnls_gram(gram, q, allowed=None, iterations: Optional[int] = None) -> jax.Array:
    """``argmin_{u >= 0} 1/2 u^T M u + q^T u`` over the ``allowed`` coordinates (the others are 0), ``M = gram
    [K, K]`` positive semi-definite, by the active-set method of Lawson & Hanson (1974, "Solving least squares
    problems", ch. 23) on the Gram form, with a static number of steps so that it runs under ``jit`` and ``vmap``.

    It is the non-negative least squares ``min_{u >= 0} |A u + b|^2 / 2`` written with ``M = A^T A`` and ``q = A^T b``
    only. Each step either adds to the free set ``P`` the allowed coordinate with the largest negative gradient
    ``w = -(M u + q)`` (if one has ``w_j > tol``) and solves ``M_PP s_P = -q_P``, or, when that solution has a
    coordinate ``<= 0``, moves towards it as far as ``u`` stays non-negative and drops the coordinate that reaches 0;
    it has converged when ``s > 0`` on ``P`` and ``w <= tol`` outside (the optimality conditions). ``tol = 1e-6 * (max |q_j| + max M_jj)`` over the allowed ``j``. ``iterations``
    (default ``4 K + 4``; the method usually ends after about ``K`` steps) bounds the steps; the result is the last
    iterate, which is always ``>= 0``."""
    gram, q = jnp.asarray(gram), jnp.asarray(q)
    K = q.shape[0]
    if gram.shape != (K, K):
        raise ValueError(f"gram must be [K, K] for q [K] (K = {K}), got shape {gram.shape}")
    allowed = jnp.ones((K,), bool) if allowed is None else jnp.asarray(allowed, bool)
    if iterations is None:
        iterations = 4 * K + 4
    check_int("iterations", iterations, min=1)
    eye = jnp.eye(K, dtype=gram.dtype)
    tol = 1e-6 * (jnp.max(jnp.where(allowed, jnp.abs(q), 0.0)) + jnp.max(jnp.where(allowed, jnp.diag(gram), 0.0)))
    index = jnp.arange(K)

    def solve_on(free):
        system = jnp.where(free[:, None] & free[None, :], gram, eye)
        s = jnp.linalg.solve(system, jnp.where(free, -q, 0.0))
        return jnp.where(free & jnp.isfinite(s), s, 0.0)

    def step(carry, _):
        u, free = carry
        s = solve_on(free)
        bad = free & (s <= 0)
        # the inner loop of Lawson & Hanson: the longest move from u towards s that keeps u >= 0
        ratio = jnp.where(bad, u / jnp.where(bad, u - s, 1.0), jnp.inf)
        first = jnp.argmin(ratio)
        alpha = jnp.where(jnp.any(bad), ratio[first], 0.0)
        moved = u + alpha * (s - u)
        kept = free & (moved > 0) & (index != first)
        inner = (jnp.where(kept, moved, 0.0), kept)
        # the outer loop: accept s, then free the coordinate that most wants to grow
        w = -(gram @ s + q)
        candidates = allowed & ~free & (w > tol)
        j = jnp.argmax(jnp.where(candidates, w, -jnp.inf))
        outer = (s, free | (jnp.any(candidates) & (index == j)))
        return jax.tree.map(lambda a, b: jnp.where(jnp.any(bad), a, b), inner, outer), None

    start = (jnp.zeros((K,), q.dtype), jnp.zeros((K,), bool))
    (u, free), _ = jax.lax.scan(step, start, None, length=iterations)
    s = solve_on(free)
    return jnp.where(jnp.any(free & (s <= 0)), u, s)


def gem_project(grads: PyTree, memory_grads: PyTree, active, margin=0.5, iterations: Optional[int] = None) -> PyTree:
    """GEM's projection (Lopez-Paz & Ranzato 2017, eq. 10-13) of the update's gradient ``g`` (the pytree ``grads``)
    given the gradients ``g_k`` of the earlier tasks' memory losses (``memory_grads``: the same pytree with a leading
    task axis ``K``), of which the tasks ``active [K]`` (bool) constrain the update.

    When ``<g, g_k> >= 0`` for every active ``k``, ``g`` is returned unchanged. Otherwise, with ``G`` the active
    ``g_k`` as rows, the dual of ``min_z |z - g|^2 / 2`` subject to ``G z >= 0`` is solved:
    ``v* = argmin_{v >= margin} 1/2 v^T G G^T v + g^T G^T v`` (eq. 13), and ``g~ = G^T v* + g`` (eq. 12). The margin
    ``gamma`` is the lower bound of ``v`` as in the paper's reference implementation (its text describes it as
    "adding gamma to v*", which is not the same point); with it the result still satisfies every constraint,
    ``<g~, g_k> = (G G^T v* + G g)_k >= 0`` (the dual's optimality conditions), and ``gamma = 0`` is the exact
    projection. The dual, shifted to ``u = v - gamma >= 0``, is solved by :func:`nnls_gram` (``iterations`` steps).
    The paper's implementation also adds ``1e-3`` to the diagonal of ``G G^T``; this one does not."""
    active = jnp.asarray(active, bool)
    leaves, g_leaves = jax.tree.leaves(memory_grads), jax.tree.leaves(grads)
    K = active.shape[0]
    rows = [m.reshape(K, -1) for m in leaves]
    flat = [g.reshape(-1) for g in g_leaves]
    gram = sum(r @ r.T for r in rows)
    dots = sum(r @ f for r, f in zip(rows, flat))
    gram = jnp.where(active[:, None] & active[None, :], gram, 0.0)
    dots = jnp.where(active, dots, 0.0)
    floor = jnp.where(active, jnp.asarray(margin, gram.dtype), 0.0)
    u = nnls_gram(gram, dots + gram @ floor, active, iterations)
    v = jnp.where(active, u + floor, 0.0)
    conflict = jnp.any(active & (dots < 0))
    projected = jax.tree.map(lambda g, m: g + jnp.tensordot(v, m, axes=1).astype(g.dtype), grads, memory_grads)
    return jax.tree.map(lambda p, g: jnp.where(conflict, p, g), projected, grads)


class GEMHParams(NamedTuple):
    """``margin``: GEM's ``gamma`` (>= 0), the lower bound of the dual variables (:func:`gem_project`)."""

    margin: Any = 0.5

    def check(self):
        nonnegative("margin", self.margin)


class GEMState(NamedTuple):
    """GEM's memory (a ring per task, :func:`~clloop_jax.strategies.memories.ring_init`) and the index of the task
    being learned (the number of tasks consolidated)."""

    memory: Memory
    task: jax.Array


@dataclasses.dataclass(frozen=True)
class _GEM:
    memory_per_task: Optional[int]
    capacity: Optional[int]
    batch_size: Optional[int]
    iterations: Optional[int]

    def init(self, params, hp, example, source):
        from clloop_jax.strategies.memories import ring_init
        num_tasks = source.num_tasks
        per_task = self.memory_per_task
        if per_task is None:
            if self.capacity < num_tasks:
                raise ValueError(f"gem: capacity ({self.capacity}) must be at least the number of tasks "
                                 f"({num_tasks}), for one sample per task")
            per_task = self.capacity // num_tasks
        return GEMState(ring_init(example, per_task * num_tasks, num_tasks), jnp.zeros((), jnp.int32))

    def observe(self, state, params, samples, source, key, hp):
        from clloop_jax.strategies.memories import ring_add
        return state._replace(memory=ring_add(state.memory, samples, state.task))

    def consolidate(self, state, params, hp, importance=None, data=None):
        return state._replace(task=state.task + 1)

    def project(self, state, params, grads, samples, source, key, hp):
        from clloop_jax.strategies.memories import ring_filled
        memory = state.memory
        K = memory.seen.shape[0]
        per_task = memory_capacity(memory) // K
        items = jax.tree.map(lambda a: a.reshape((K, per_task) + a.shape[1:]), memory.items)
        filled = ring_filled(memory).reshape(K, per_task)
        if self.batch_size is not None:  # batch_size samples of each task's filled slots, with replacement
            def draw(k, row):
                logits = jnp.where(row | (~jnp.any(row) & (jnp.arange(per_task) == 0)), 0.0, -jnp.inf)
                return jax.random.categorical(k, logits, shape=(self.batch_size,))
            idx = jax.vmap(draw)(jax.random.split(key, K), filled)
            items = jax.tree.map(lambda a: jax.vmap(lambda rows, i: rows[i])(a, idx), items)
            filled = jnp.broadcast_to(jnp.any(filled, axis=1, keepdims=True), idx.shape)

        def task_gradient(task_items, weights):
            x, y = task_items
            x = rehearsed_inputs(source, x, samples)

            def loss(p):  # the mean loss over the task's filled slots
                one = lambda xi, yi: source.sample_loss(p, jax.tree.map(lambda a: a[None], xi), yi[None])  # noqa
                losses = jax.vmap(one)(x, y)
                return jnp.sum(jnp.where(weights, losses, 0.0)) / jnp.maximum(jnp.sum(weights), 1)

            return jax.grad(loss)(params)

        memory_grads = jax.vmap(task_gradient)(items, filled)
        active = (jnp.arange(K) < state.task) & jnp.any(filled, axis=1)
        return gem_project(grads, memory_grads, active, hp.margin, self.iterations)


def gem(memory_per_task: Optional[int] = None, margin=0.5, capacity: Optional[int] = None,
        batch_size: Optional[int] = None, iterations: Optional[int] = None) -> Strategy:
    """GEM, gradient episodic memory (Lopez-Paz & Ranzato 2017, "Gradient episodic memory for continual learning",
    NeurIPS): an episodic memory per task, and at every update the gradient ``g`` projected so that the loss on no
    earlier task's memory increases to first order:

    ``min_g~ |g - g~|^2 / 2  subject to  <g~, g_k> >= 0  for every earlier task k``,

    ``g_k`` the gradient of the loss on task ``k``'s memory at the current parameters. If no constraint is violated
    ``g`` is kept; otherwise the dual quadratic program (eq. 13) is solved with the margin ``gamma``
    (:func:`gem_project`).

    The memory is a ring per task (:func:`~clloop_jax.strategies.memories.ring_add`): every update's batch is offered
    to the slots of the task being learned, which keep its ``memory_per_task`` most recent samples, as in the paper
    ("the last m examples of each task"). The task index is the number of consolidations so far; the number of tasks is
    the source's ``num_tasks`` (static), and the tasks not yet learned, the current one included, constrain nothing.
    The memory loss is the source's own (``source.sample_loss``), on remembered samples under the current training
    mask in class-incremental learning (every class seen so far; :func:`replay`'s convention), under their own task's
    mask otherwise.

    Args:
      memory_per_task: samples kept per task (>= 1).
      margin: ``gamma`` (>= 0, traced; the paper's experiments use 0.5).
      capacity: the memory's size in all, split equally over the source's tasks (``capacity // num_tasks`` each);
        give it or ``memory_per_task``, not both; neither: 500 in all, as the other rehearsal strategies.
      batch_size: None (the default, the paper's): each ``g_k`` is over the whole of task ``k``'s memory; an integer:
        over that many samples of it drawn per update (uniformly, with replacement), cheaper for large memories.
      iterations: steps of the dual's solver (:func:`nnls_gram`; default ``4 K + 4`` for ``K`` tasks).
    """
    if memory_per_task is not None and capacity is not None:
        raise ValueError(f"gem takes memory_per_task or capacity (split over the tasks), not both; got "
                         f"memory_per_task={memory_per_task!r} and capacity={capacity!r}")
    if memory_per_task is not None:
        check_int("memory_per_task", memory_per_task, min=1)
    elif capacity is None:
        capacity = 500
    check_int("capacity", capacity, min=1, allow_none=True)
    check_int("batch_size", batch_size, min=1, allow_none=True)
    check_int("iterations", iterations, min=1, allow_none=True)
    hooks = _GEM(memory_per_task, capacity, batch_size, iterations)
    hp = GEMHParams(margin)
    check_hparams(hp, "strategy")
    return Strategy("gem", hp, init=hooks.init, observe=hooks.observe, consolidate=hooks.consolidate,
                    project=hooks.project, init_with_example=True)


register("gem", gem)
