"""The NaN alarm: where a run's update first went non-finite, said by seed, task and episode."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["NonFiniteError", "DivergenceError", "check_finite"]


def all_finite(*trees) -> jax.Array:
    """True when every floating-point element of ``trees`` is finite. One reduction over all their leaves at once
    (a check per leaf compiles to a kernel per leaf: 33 for the default model's parameters, each again for its
    gradient, in every update of the program)."""
    leaves = [jnp.ravel(x) for x in jax.tree.leaves(trees) if jnp.issubdtype(jnp.result_type(x), jnp.inexact)]
    return jnp.all(jnp.isfinite(jnp.concatenate(leaves))) if leaves else jnp.array(True)


class NonFiniteError(FloatingPointError):
    """A run (or a step) met a non-finite loss, gradient or parameter. ``seed``, ``task`` and ``episode`` say where
    (None when not applicable); the updates from there on were skipped, so the state holds the last good values."""

    def __init__(self, message: str, seed=None, task=None, episode=None):
        super().__init__(message)
        self.seed, self.task, self.episode = seed, task, episode


#: The earlier name of :class:`NonFiniteError` ("divergence" is the parameter drift of :mod:`clloop_jax.divergence`).
DivergenceError = NonFiniteError


def check_finite(finite, where: str = "the run") -> None:
    """Raises :class:`NonFiniteError` at the first False of ``finite`` (``[tasks, episodes]`` or
    ``[seeds, tasks, episodes]``, the run's ``traces["finite"]``), naming the seed, task and episode."""
    finite = np.asarray(finite, bool)
    if finite.ndim not in (2, 3):
        raise ValueError(f"finite must have shape [tasks, episodes] or [seeds, tasks, episodes], got {finite.shape}")
    bad = np.argwhere(~finite.reshape((-1,) + finite.shape[-2:]))
    if bad.size == 0:
        return
    seed, task, episode = (int(v) for v in min(bad.tolist(), key=lambda b: (b[1], b[2], b[0])))
    seed_text = f"seed {seed}, " if finite.ndim == 3 else ""
    raise NonFiniteError(f"{where} diverged at {seed_text}task {task}, episode {episode}: the loss, a gradient or "
                          f"the parameters became non-finite (lower the learning rate or the penalty strength); "
                          f"the updates from there on were skipped", seed=seed if finite.ndim == 3 else None,
                          task=task, episode=episode)
