"""Mixture batches: each parallel world (or each sample) of a batch draws its task from the episode's weights."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from clloop_jax.sources.base import capability

__all__ = ["draw_tasks", "mixture_batch", "check_mixture"]


def draw_tasks(key, weights, n: int) -> jax.Array:
    """``[n]`` int32 task ids drawn independently from the probabilities ``weights [K]``."""
    logits = jnp.where(weights > 0, jnp.log(jnp.where(weights > 0, weights, 1.0)), -jnp.inf)
    return jax.random.categorical(key, logits, shape=(n,)).astype(jnp.int32)


def mixture_batch(source, key, params, tasks, weights, hparams):
    """One batch of ``source`` whose every sample (parallel world, minibatch row) draws its own task from
    ``weights [K]``: the source's ``mixture_batch`` capability (:mod:`clloop_jax.sources.base`).

    For an :class:`~clloop_jax.sources.world.EnvSource` the result is a :class:`~clloop_jax.envs.Trajectory` of
    ``num_envs`` worlds, each a rollout of its own task; for a :class:`~clloop_jax.sources.supervised.SupervisedSource`
    a :class:`~clloop_jax.sources.supervised.SupervisedBatch` of ``batch_size`` rows whose ``mask`` is per row
    (``[B, C]``), gathered straight from the stacked tasks (rows of one task are distinct samples, as in its own
    batch).
    """
    check_mixture(source)
    return source.mixture_batch(key, params, tasks, weights, hparams)


def check_mixture(source) -> None:
    """``TypeError`` unless ``source`` can serve batches of mixed tasks."""
    if capability(source, "mixture_batch") is None:
        raise TypeError(f"source must be an EnvSource or a SupervisedSource, or define "
                        f"mixture_batch(key, params, tasks, weights, hparams); got {type(source).__name__}")
