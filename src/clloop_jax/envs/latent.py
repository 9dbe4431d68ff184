"""The default closed-loop world: a linear latent system seen through several noisy views.

Dynamics (``L = latent_dim``, ``A = action_dim``, ``M = num_modalities``, ``D = observation_dim``)::

    z_0      ~ N(0, init_scale^2 I)
    a_t      = clip(action_t, -max_action, max_action)            (a bounded actuator)
    z_{t+1}  = T z_t + B a_t + process_noise * eps_t              (eps_t ~ N(0, I_L))
    obs_t[m] = C_m z_t + cue_task[m] + obs_noise * eta_t[m]       (eta_t ~ N(0, I_D))
    target_t = clip(K_task z_t, -max_action, max_action)          (the expert action)
    reward_t = -|a_t - target_t|^2 / A                            (minus the mean squared error)

Shared by every task (the same sensors and dynamics), drawn from ``jax.random.key(world_seed)``:
``T = open_loop_radius * R`` with ``R`` a random orthogonal ``L x L`` matrix (a product of Householder
reflections); ``B`` a random
``L x A`` matrix with unit singular values (``B B^T = I`` when ``A >= L``); views
``C_m`` with i.i.d. ``N(0, 1/L)`` entries, so a unit-variance latent gives each observed feature
unit variance and each modality's signal a norm of about ``sqrt(D)``.

Per task ``k`` (drawn from ``fold_in(task_root, k)``, so a traced ``k`` works): a closed loop
``F_k = closed_loop_radius * R_k`` with ``R_k`` random orthogonal, the expert gain
``K_k = B^T (F_k - T)`` (with ``A >= L`` the expert's closed loop ``T + B K_k`` is exactly ``F_k``,
stable since the radius is below 1), and a cue ``cue_k[m]`` of norm ``cue_scale * sqrt(D)``
(``cue_scale`` times the signal norm of a unit-variance latent) in a random direction, which
lets the agent tell tasks apart from what it observes.

With the defaults (``closed_loop_radius = 0.8``, ``process_noise = 0.6 = sqrt(1 - 0.8^2)``,
``init_scale = 1``) the latent stays exactly N(0, I) under every task's expert. Because tasks draw
independent ``R_k``, task ``k``'s expert scores about ``1 - 2 rho^2 / (rho^2 + r^2)`` on task ``j``
(``rho``, ``r`` the closed- and open-loop radii; -0.44 with the defaults).

The feedback vector ``info["feedback"]`` is ``[reward, a_0, ..., a_{A-1}]`` (the clipped action
that acted), so ``feedback_dim = 1 + action_dim``.
"""
from __future__ import annotations

import dataclasses
import math
from functools import partial

import jax
import jax.numpy as jnp
from flax import struct
from gymnax.environments import spaces

from clloop_jax.envs.base import MultiModalEnv
from clloop_jax.model import reflection_orthogonal
from clloop_jax.validation import check_array, check_float, check_int, check_key, check_seed, is_traced

#: The largest noise, scale or action bound a world accepts: a million times the unit-variance signal is a
#: configuration mistake (the signal is lost), and float32 sums of squared observations overflow not far above.
MAX_SCALE = 1e6


@struct.dataclass
class EnvState:
    """State of :class:`LatentWorld`: the latent vector ``[L]`` and the step count in the episode."""

    latent: jax.Array
    time: jax.Array


@struct.dataclass
class EnvParams:
    """One task of :class:`LatentWorld` (every field is an array leaf, so tasks stack and vmap).

    Shapes: ``transition [L, L]``, ``control [L, A]``, ``views [M, D, L]``, ``gain [A, L]``,
    ``cue [M, D]``; the rest are scalars.
    """

    transition: jax.Array
    control: jax.Array
    views: jax.Array
    gain: jax.Array
    cue: jax.Array
    obs_noise: jax.Array
    process_noise: jax.Array
    init_scale: jax.Array
    max_action: jax.Array
    task_id: jax.Array
    max_steps_in_episode: jax.Array


def _random_orthonormal(key: jax.Array, rows: int, cols: int) -> jax.Array:
    """A random ``rows x cols`` matrix with orthonormal columns (or rows, if wider than tall), as a product of
    Householder reflections (:func:`~clloop_jax.model.reflection_orthogonal`): no LAPACK QR, whose batched CPU
    kernels can deadlock when many worlds or tasks are drawn under ``jax.vmap``."""
    return reflection_orthogonal()(key, (rows, cols))


@dataclasses.dataclass(frozen=True)
class LatentWorld(MultiModalEnv):
    """Linear latent world with ``num_modalities`` noisy views, a per-task expert gain and cue.

    See the module docstring for the dynamics. A task is an :class:`EnvParams` value:
    ``task_params(k)`` gives task ``k``, ``tasks()`` stacks ``num_tasks`` of them, and
    ``default_params`` is task 0. The object is static configuration (frozen, hashable by value),
    so equal configurations share compiled code.
    """

    observation_dim: int = 64
    action_dim: int = 32
    num_modalities: int = 2
    latent_dim: int = 8
    num_tasks: int = 3
    episode_length: int = 40
    obs_noise: float = 0.1
    process_noise: float = 0.6
    cue_scale: float = 2.0
    open_loop_radius: float = 0.5
    closed_loop_radius: float = 0.8
    init_scale: float = 1.0
    max_action: float = 5.0
    world_seed: int = 0

    def __post_init__(self):
        # Checked, then stored as Python numbers: the world is static configuration, hashed by value.
        def store(name, value):
            object.__setattr__(self, name, value)

        for name in ("observation_dim", "action_dim", "num_modalities", "latent_dim",
                     "num_tasks", "episode_length"):
            store(name, check_int(name, getattr(self, name), min=1))
        store("world_seed", check_seed("world_seed", self.world_seed))
        for name in ("obs_noise", "process_noise", "cue_scale", "open_loop_radius",
                     "init_scale"):
            store(name, float(check_float(name, getattr(self, name), min=0, max=MAX_SCALE, scalar=True)))
        store("closed_loop_radius", float(check_float(
            "closed_loop_radius", self.closed_loop_radius, min=0, max=1, open_max=True, scalar=True)))
        store("max_action", float(check_float("max_action", self.max_action, min=0, max=MAX_SCALE,
                                               open_min=True, scalar=True)))

    # ------------------------------------------------------------------ tasks
    def task_params(self, task_id=0, world_key: jax.Array | None = None) -> EnvParams:
        """Parameters of task ``task_id`` (int or traced int array).

        The shared matrices come from ``world_key`` (default ``jax.random.key(world_seed)``),
        the task's gain and cue from ``fold_in`` of it with ``task_id``; a traced ``world_key``
        gives vmappable worlds.
        """
        if is_traced(task_id):
            check_array("task_id", task_id, kind="integer", ndim=0)
        else:
            task_id = check_int("task_id", task_id, min=0)
        if world_key is None:
            world_key = jax.random.key(self.world_seed)
        world_key = check_key("world_key", world_key)
        return self._task_params(jnp.asarray(task_id, jnp.int32), world_key)

    @partial(jax.jit, static_argnames=("self",))
    def _task_params(self, task_id: jax.Array, world_key: jax.Array) -> EnvParams:
        L, A, M, D = self.latent_dim, self.action_dim, self.num_modalities, self.observation_dim
        shared_key, task_root = jax.random.split(world_key)
        k_transition, k_control, k_views = jax.random.split(shared_key, 3)
        transition = self.open_loop_radius * _random_orthonormal(k_transition, L, L)
        control = _random_orthonormal(k_control, L, A)
        views = jax.random.normal(k_views, (M, D, L)) / math.sqrt(L)

        k_loop, k_cue = jax.random.split(jax.random.fold_in(task_root, task_id))
        closed_loop = self.closed_loop_radius * _random_orthonormal(k_loop, L, L)
        gain = control.T @ (closed_loop - transition)
        direction = jax.random.normal(k_cue, (M, D))
        direction = direction / jnp.linalg.norm(direction, axis=-1, keepdims=True)
        cue = self.cue_scale * math.sqrt(D) * direction

        f32 = jnp.float32
        return EnvParams(
            transition=transition.astype(f32),
            control=control.astype(f32),
            views=views.astype(f32),
            gain=gain.astype(f32),
            cue=cue.astype(f32),
            obs_noise=jnp.asarray(self.obs_noise, f32),
            process_noise=jnp.asarray(self.process_noise, f32),
            init_scale=jnp.asarray(self.init_scale, f32),
            max_action=jnp.asarray(self.max_action, f32),
            task_id=task_id,
            max_steps_in_episode=jnp.asarray(self.episode_length, jnp.int32),
        )

    def tasks(self, num_tasks: int | None = None, world_key: jax.Array | None = None) -> EnvParams:
        """``num_tasks`` (default ``self.num_tasks``) tasks stacked on a leading axis."""
        num_tasks = self.num_tasks if num_tasks is None else check_int("num_tasks", num_tasks, min=1)
        if world_key is None:
            world_key = jax.random.key(self.world_seed)
        world_key = check_key("world_key", world_key)
        return self._tasks(num_tasks, world_key)

    @partial(jax.jit, static_argnames=("self", "num_tasks"))
    def _tasks(self, num_tasks: int, world_key: jax.Array) -> EnvParams:
        ids = jnp.arange(num_tasks, dtype=jnp.int32)
        return jax.vmap(self._task_params, in_axes=(0, None))(ids, world_key)

    @property
    def default_params(self) -> EnvParams:
        """Task 0."""
        return self.task_params(0)

    # ------------------------------------------------------------------ dynamics
    @property
    def name(self) -> str:
        return "LatentWorld"

    @property
    def noise_dim(self) -> int:
        """One reset or step draws ``L + M * D`` standard normals: the latent's ``[L]`` and the views' ``[M, D]``."""
        return self.latent_dim + self.num_modalities * self.observation_dim

    def _split_noise(self, noise: jax.Array) -> tuple[jax.Array, jax.Array]:
        """The draw ``[noise_dim]`` split into the latent part ``[L]`` and the observation part ``[M, D]``."""
        L = self.latent_dim
        return noise[:L], noise[L:].reshape(self.num_modalities, self.observation_dim)

    def _noise(self, key: jax.Array) -> tuple[jax.Array, jax.Array]:
        """One normal draw split into the latent part ``[L]`` and the observation part ``[M, D]``."""
        return self._split_noise(jax.random.normal(key, (self.noise_dim,), jnp.float32))

    def _emit(self, latent: jax.Array, eta: jax.Array, params: EnvParams) -> jax.Array:
        signal = jnp.einsum("l,mdl->md", latent, params.views)
        return signal + params.cue + params.obs_noise * eta

    def observe(self, key, state: EnvState, action, params: EnvParams) -> jax.Array:
        """A fresh noisy observation ``[M, D]`` of ``state``."""
        del action
        _, eta = self._noise(key)
        return self._emit(state.latent, eta, params)

    def reset_env(self, key: jax.Array, params: EnvParams):
        return self.reset_from_noise(jax.random.normal(key, (self.noise_dim,), jnp.float32), params)

    def step_env(self, key: jax.Array, state: EnvState, action, params: EnvParams):
        return self.step_from_noise(jax.random.normal(key, (self.noise_dim,), jnp.float32), state, action, params)

    def reset_from_noise(self, noise: jax.Array, params: EnvParams):
        eps, eta = self._split_noise(noise)
        latent = params.init_scale * eps
        state = EnvState(latent=latent, time=jnp.zeros((), jnp.int32))
        return self._emit(latent, eta, params), state

    def _advance(self, eps: jax.Array, state: EnvState, action, params: EnvParams):
        """The transition of ``state`` under ``action``: ``(applied action, reward, next latent)``."""
        applied = jnp.clip(jnp.asarray(action, jnp.float32), -params.max_action, params.max_action)
        reward = -jnp.sum(jnp.square(applied - self.expert_action(state, params))) / self.action_dim
        latent = (state.latent @ params.transition.T + applied @ params.control.T
                  + params.process_noise * eps)
        return applied, reward, latent

    def step_from_noise(self, noise: jax.Array, state: EnvState, action, params: EnvParams):
        eps, eta = self._split_noise(noise)
        applied, reward, latent = self._advance(eps, state, action, params)
        new_state = EnvState(latent=latent, time=state.time + 1)
        info = {"feedback": self.feedback(reward, applied)}
        return self._emit(latent, eta, params), new_state, reward, jnp.array(False), info

    def step_with_noise(self, noise: jax.Array, state: EnvState, action, params: EnvParams):
        """The base class's step with automatic reset, computed once: the next latent is the reset's
        (``init_scale * eps``) where the episode ends, else the transition's, and it is observed once (the base
        class would emit both observations and select one)."""
        eps, eta = self._split_noise(noise)
        applied, reward, stepped = self._advance(eps, state, action, params)
        truncated = self.is_truncated(EnvState(latent=stepped, time=state.time + 1), params)
        latent = jnp.where(truncated, params.init_scale * eps, stepped)
        new_state = EnvState(latent=latent, time=jnp.where(truncated, 0, state.time + 1))
        info = {"feedback": self.feedback(reward, applied), "target": self.expert_action(new_state, params)}
        return self._emit(latent, eta, params), new_state, reward, jnp.array(False), truncated, info

    def expert_action(self, state: EnvState, params: EnvParams) -> jax.Array:
        """``clip(K_task z, -max_action, max_action)`` for the state's latent ``z``."""
        return jnp.clip(state.latent @ params.gain.T, -params.max_action, params.max_action)

    def action_space(self, params: EnvParams) -> spaces.Box:
        """Float32 box ``[-max_action, max_action]^A``; larger actions are clipped when applied.

        ``params=None`` means :attr:`default_params`, as in gymnax."""
        if params is None:
            params = self.default_params
        return spaces.Box(-params.max_action, params.max_action, (self.action_dim,), jnp.float32)

    def state_space(self, params: EnvParams | None = None) -> spaces.Dict:
        """``{"latent": unbounded float32 box [L], "time": Discrete(max_steps_in_episode + 1)}``.

        ``params=None`` means :attr:`default_params`, as in gymnax."""
        if params is None:
            params = self.default_params
        return spaces.Dict({
            "latent": spaces.Box(-jnp.inf, jnp.inf, (self.latent_dim,), jnp.float32),
            "time": spaces.Discrete(params.max_steps_in_episode + 1),
        })


Environment = LatentWorld
