"""Gymnax task families: a registered environment's ``EnvParams`` with per-task overrides, stacked as tasks."""

from __future__ import annotations

import dataclasses
from typing import Sequence

import gymnax
import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["task_params", "TASK_FAMILIES", "VARIANT_RANGES", "random_variants"]

#: Task variants of two gymnax environments: physics that changes what the right action is, one ``EnvParams``
#: override per task (``{}`` is the default task).
TASK_FAMILIES = {
    "CartPole-v1": ({},                                                    # the default pole
                    {"length": 1.5, "masspole": 0.5},                      # a long, heavy pole
                    {"length": 0.25, "gravity": 15.0, "force_mag": 7.0}),  # short, strong gravity, a weak push
    "Pendulum-v1": ({},                                                    # the default pendulum
                    {"m": 1.5, "l": 1.2},                                  # heavier and longer
                    {"g": 14.0}),                                          # stronger gravity
}


#: The physics ranges that :func:`random_variants` draws from, each field uniform and independent; the library's
#: families above lie inside them. Chosen so that every variant stays learnable by the same policy class.
VARIANT_RANGES = {
    "CartPole-v1": {"length": (0.25, 1.5), "masspole": (0.05, 0.5), "gravity": (7.0, 15.0), "force_mag": (7.0, 13.0)},
    "Pendulum-v1": {"m": (0.5, 2.0), "l": (0.6, 1.4), "g": (7.0, 14.0)},
}


def random_variants(env_id: str, num_tasks: int, seed: int = 0) -> list:
    """``num_tasks`` ``EnvParams`` overrides of ``env_id``, each field of :data:`VARIANT_RANGES` drawn uniformly
    (numpy's generator seeded with ``seed``; values rounded to 4 decimals so a run's configuration reads them
    back exactly): a long sequence of related tasks for :func:`task_params` / ``GymnaxSource``."""
    if env_id not in VARIANT_RANGES:
        raise ValueError(f"env_id must be one of {sorted(VARIANT_RANGES)} for random variants, got {env_id!r}")
    if isinstance(num_tasks, bool) or not isinstance(num_tasks, (int, np.integer)) or num_tasks < 1:
        raise ValueError(f"num_tasks must be an integer >= 1, got {num_tasks!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
    rng = np.random.default_rng(int(seed))
    ranges = VARIANT_RANGES[env_id]
    draws = {name: rng.uniform(low, high, int(num_tasks)) for name, (low, high) in ranges.items()}
    return [{name: round(float(draws[name][t]), 4) for name in ranges} for t in range(int(num_tasks))]


def _cartpole_derived(default, override, params):
    """CartPole-v1 stores ``total_mass`` and ``polemass_length``; keep them consistent with overridden masses."""
    if "total_mass" not in override:
        params = params.replace(total_mass=params.masscart + params.masspole)
    if "polemass_length" not in override:
        params = params.replace(polemass_length=params.masspole * params.length)
    return params


_DERIVED = {"CartPole-v1": _cartpole_derived}


def task_params(env_id: str, overrides: Sequence[dict]):
    """``(env, stacked EnvParams)``: the environment ``env_id``'s default parameters with each override applied
    (one task per override; every leaf gets a leading task axis). Fields another field is derived from (CartPole's
    ``total_mass`` and ``polemass_length``) follow the overridden ones unless given themselves."""
    if not isinstance(env_id, str) or env_id not in gymnax.registered_envs:
        raise ValueError(f"env_id must be a registered gymnax environment id (one of gymnax.registered_envs), "
                         f"got {env_id!r}")
    if isinstance(overrides, dict) or not isinstance(overrides, (list, tuple)) or not overrides:
        raise ValueError(f"overrides must be a non-empty list of dicts of EnvParams fields (one per task), "
                         f"got {overrides!r}")
    env, default = gymnax.make(env_id)
    fields = {f.name for f in dataclasses.fields(default)}
    tasks = []
    for i, override in enumerate(overrides):
        if not isinstance(override, dict):
            raise ValueError(f"overrides[{i}] must be a dict of EnvParams fields, got {override!r}")
        unknown = sorted(set(override) - fields)
        if unknown:
            raise ValueError(f"overrides[{i}] names unknown EnvParams fields {unknown} of {env_id}; "
                             f"it has {sorted(fields)}")
        params = default.replace(**override)
        if env_id in _DERIVED:
            params = _DERIVED[env_id](default, override, params)
        tasks.append(params)
    tasks = [jax.tree.map(lambda x, d: jnp.asarray(x, jnp.result_type(jnp.asarray(d))), t, default) for t in tasks]
    return env, jax.tree.map(lambda *xs: jnp.stack(xs), *tasks)
