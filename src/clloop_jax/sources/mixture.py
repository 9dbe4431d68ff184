"""Mixture batches: each parallel world (or each sample) of a batch draws its task from the episode's weights."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from clloop_jax.run.sequential import task_at
from clloop_jax.sources.supervised import SupervisedBatch, SupervisedSource
from clloop_jax.sources.world import EnvSource

__all__ = ["draw_tasks", "mixture_batch"]


def draw_tasks(key, weights, n: int) -> jax.Array:
    """``[n]`` int32 task ids drawn independently from the probabilities ``weights [K]``."""
    logits = jnp.where(weights > 0, jnp.log(jnp.where(weights > 0, weights, 1.0)), -jnp.inf)
    return jax.random.categorical(key, logits, shape=(n,)).astype(jnp.int32)


def one_sample_source(source):
    """``(source with batches of one sample, batch size, merge)`` for the sources shipped with the library."""
    if isinstance(source, EnvSource):
        def merge(trajs):  # leaves [n, T, 1, ...] -> [T, n, ...]
            return jax.tree.map(lambda x: jnp.swapaxes(x[:, :, 0], 0, 1), trajs)
        return dataclasses.replace(source, num_envs=1), source.num_envs, merge
    if isinstance(source, SupervisedSource):
        def merge(batches):  # x [n, 1, D], y [n, 1], mask [n, C]: each sample keeps its own task's mask
            return SupervisedBatch(batches.x[:, 0], batches.y[:, 0], batches.mask)
        return dataclasses.replace(source, batch_size=1), source.batch_size, merge
    raise TypeError(f"source must be an EnvSource or a SupervisedSource, or define "
                    f"mixture_batch(key, params, tasks, task_ids, hparams); got {type(source).__name__}")


def mixture_batch(source, key, params, tasks, weights, hparams):
    """One batch of ``source`` whose every sample (parallel world, minibatch row) draws its own task from
    ``weights [K]``: the source's ``batch`` of one sample, vmapped over the samples with their task ids.

    For an :class:`~clloop_jax.sources.world.EnvSource` the result is a :class:`~clloop_jax.envs.Trajectory` of
    ``num_envs`` worlds; for a :class:`~clloop_jax.sources.supervised.SupervisedSource` a
    :class:`~clloop_jax.sources.supervised.SupervisedBatch` of ``batch_size`` rows whose ``mask`` is per row (``[B,
    C]``), gathered straight from the stacked tasks (rows of one task are distinct samples, as in its own batch). A
    source of another kind may define ``mixture_batch(key, params, tasks, task_ids, hparams)`` itself.
    """
    k_ids, k_batch = jax.random.split(key)
    if hasattr(source, "mixture_batch") and not isinstance(source, (EnvSource, SupervisedSource)):
        n = source.batch_size if hasattr(source, "batch_size") else source.num_envs
        return source.mixture_batch(k_batch, params, tasks, draw_tasks(k_ids, weights, n), hparams)
    if isinstance(source, SupervisedSource):
        return _supervised_mixture(source, k_batch, tasks, draw_tasks(k_ids, weights, source.batch_size))
    one, n, merge = one_sample_source(source)
    ids = draw_tasks(k_ids, weights, n)
    keys = jax.random.split(k_batch, n)
    return merge(jax.vmap(lambda k, i: one.batch(k, params, task_at(tasks, i), hparams))(keys, ids))


def _supervised_mixture(source, key, tasks, ids) -> SupervisedBatch:
    """Row ``r`` is a training sample of task ``ids[r]``: each task draws ``B`` distinct indices (as its own batch
    would, without replacement) and row ``r`` takes the ``r``-th of its task's, so rows of one task are distinct
    samples; a pure batch (one task) is distributed exactly as ``source.batch``'s. Gathers only the rows it needs."""
    K, N = tasks.x.shape[0], tasks.x.shape[1]
    B = source.batch_size
    perms = jax.vmap(lambda k: jax.random.choice(k, N, (B,), replace=False))(jax.random.split(key, K))  # [K, B]
    idx = perms[ids, jnp.arange(B)]
    return SupervisedBatch(tasks.x[ids, idx], tasks.y[ids, idx], tasks.train_mask[ids])


@dataclasses.dataclass(frozen=True)
class StreamSource:
    """``base`` with per-sample task masks understood by ``samples`` (a mixed minibatch has one mask per row)."""

    base: Any

    def __getattr__(self, name):
        if name == "base":
            raise AttributeError(name)
        return getattr(self.base, name)

    def samples(self, batch):
        if isinstance(batch, SupervisedBatch) and batch.mask.ndim == 2:
            return (batch.x, batch.mask), batch.y
        return self.base.samples(batch)
