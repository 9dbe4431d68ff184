"""Closed-loop rollouts of a policy in a :class:`~clloop_jax.envs.base.MultiModalEnv`.

A policy is an unbatched pure function ``policy(carry, obs, feedback, key) -> (carry, action)``
with ``obs [M, D]``, ``feedback [F]`` and ``action [A]``. A :class:`PrivilegedPolicy` also reads
the environment state and the expert target (for scripted teachers and reference scores).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from clloop_jax.envs.base import MultiModalEnv, check_step_signature
from clloop_jax.validation import check_callable, check_float, check_instance, check_int, check_key


class Trajectory(NamedTuple):
    """Time-major record of a rollout; ``...`` is ``(num_envs,)`` for parallel envs, else empty.

    obs:      ``[T, ..., M, D]`` observation the policy acted on at step t.
    feedback: ``[T, ..., F]`` feedback input at step t: zeros at the first step of an episode,
              otherwise ``feedback_weight * info["feedback"]`` of step t-1.
    action:   ``[T, ..., A]`` action the policy chose at step t.
    target:   ``[T, ..., A]`` expert action for the state observed at step t.
    reward:   ``[T, ...]`` reward of step t.
    done:     ``[T, ...]`` True where the episode ended at step t (``obs[t+1]`` starts a new one).
    """

    obs: jax.Array
    feedback: jax.Array
    action: jax.Array
    target: jax.Array
    reward: jax.Array
    done: jax.Array


@dataclasses.dataclass(frozen=True)
class PrivilegedPolicy:
    """A policy with access to the environment: ``fn(carry, obs, feedback, key, env_state, target)``.

    ``fn`` returns ``(carry, action)`` like an ordinary policy; ``env_state`` is the state behind
    ``obs`` and ``target`` its expert action.
    """

    fn: Callable[..., tuple[Any, jax.Array]]


def expert_policy(env: MultiModalEnv) -> PrivilegedPolicy:
    """Policy that plays the expert action of the current state (its carry passes through)."""
    check_instance("env", env, MultiModalEnv)

    def play_target(carry, obs, feedback, key, env_state, target):
        del obs, feedback, key, env_state
        return carry, jnp.asarray(target, jnp.float32)

    return PrivilegedPolicy(play_target)


def _check_count(name: str, value) -> None:
    check_int(name, value, min=1)


def rollout(
    key: jax.Array,
    env: MultiModalEnv,
    env_params,
    policy,
    policy_carry,
    num_steps: int,
    num_envs: int | None = None,
    feedback_weight=1.0,
) -> Trajectory:
    """Run ``policy`` in ``env`` for ``num_steps`` steps from a fresh reset (``lax.scan`` over time).

    ``num_envs=None`` runs one environment; an int runs that many in parallel (``vmap``), all on
    the task ``env_params`` and all starting from ``policy_carry``. Episodes restart automatically;
    at each restart the policy carry returns to ``policy_carry`` and the feedback input to zeros.
    ``feedback_weight`` scales the feedback input and may be traced. ``env``, ``policy``,
    ``num_steps`` and ``num_envs`` are static (mark them static when jitting).

    Random numbers: a world that may be driven by noise drawn ahead
    (:meth:`~clloop_jax.envs.MultiModalEnv.uses_noise_ahead`: it has a ``noise_dim`` and no override of ``step_env``,
    ``reset_env`` or ``step`` below its noise methods) is driven by standard
    normals, step ``t``'s for every world from ``fold_in(k_noise, t)``, drawn ahead in chunks of steps of about 2 MiB
    (the numbers do not depend on the chunk size), and an episode that ends restarts from
    the step's own draw (:meth:`~clloop_jax.envs.MultiModalEnv.step_with_noise`); the policy's
    keys are ``split(fold_in(k_policy, t), num_envs)`` (never computed when the policy ignores its key). Other worlds
    get one key per step and world, split in one call, and gymnax's ``step``, which calls their ``step_env`` and
    ``reset_env``.
    """
    key = check_key("key", key)
    check_instance("env", env, MultiModalEnv)
    check_step_signature(env)
    if not isinstance(policy, PrivilegedPolicy):
        check_callable("policy", policy, signature="(carry, obs, feedback, key) -> (carry, action)")
    _check_count("num_steps", num_steps)
    if num_envs is not None:
        _check_count("num_envs", num_envs)
    check_float("feedback_weight", feedback_weight, scalar=True)
    feedback_weight = jnp.asarray(feedback_weight, jnp.float32)
    privileged = isinstance(policy, PrivilegedPolicy)
    policy_carry = jax.tree.map(jnp.asarray, policy_carry)

    def reset_one(k):
        obs, state = env.reset(k, env_params)
        return state, obs, jnp.zeros((env.feedback_dim,), jnp.float32), \
            env.expert_action(state, env_params), policy_carry

    noise_dim = env.noise_dim if env.uses_noise_ahead() else None

    def step_one(carry, inputs):
        state, obs, feedback, target, pcarry = carry
        k_policy, env_input = inputs
        if privileged:
            new_pcarry, action = policy.fn(pcarry, obs, feedback, k_policy, state, target)
        else:
            new_pcarry, action = policy(pcarry, obs, feedback, k_policy)
        if noise_dim is None:
            next_obs, next_state, reward, terminated, truncated, info = env.step(env_input, state, action, env_params)
        else:
            next_obs, next_state, reward, terminated, truncated, info = env.step_with_noise(
                env_input, state, action, env_params)
        done = jnp.logical_or(terminated, truncated)
        next_feedback = jnp.where(done, 0.0, feedback_weight * info["feedback"]).astype(jnp.float32)
        next_pcarry = jax.tree.map(
            lambda init, new: jnp.where(done, init, new).astype(new.dtype), policy_carry, new_pcarry
        )
        record = Trajectory(obs, feedback, action, target, reward, done)
        return (next_state, next_obs, next_feedback, info["target"], next_pcarry), record

    reset_key, policy_key, env_key = jax.random.split(key, 3)
    batch = () if num_envs is None else (num_envs,)

    def inputs_at(t):
        """Step t's policy keys ``[*batch]`` and world input ``[*batch, ...]``, each from ``fold_in(key, t)``."""
        k_policy = _split(jax.random.fold_in(policy_key, t), batch)
        if noise_dim is None:
            return k_policy, _split(jax.random.fold_in(env_key, t), batch)
        return k_policy, jax.random.normal(jax.random.fold_in(env_key, t), batch + (noise_dim,), jnp.float32)

    if num_envs is None:
        init = reset_one(reset_key)
        step = step_one
    elif num_envs == 1:  # one world unbatched (a batch of one costs layout changes), its numbers as batched
        init = reset_one(jax.random.split(reset_key, 1)[0])

        def step(carry, inputs):
            carry, record = step_one(carry, jax.tree.map(lambda x: x[0], inputs))
            return carry, jax.tree.map(lambda x: x[None], record)
    else:
        init = jax.vmap(reset_one)(jax.random.split(reset_key, num_envs))
        step = jax.vmap(step_one)
    # The world's numbers are drawn ahead in chunks of steps (one batched call per chunk, then a scan over the chunk's
    # steps): the largest divisor of ``num_steps`` whose draw has at most ``_DRAW_CHUNK_FLOATS`` numbers. A chunk is
    # large enough for the draw to run at full speed (on CPU, over several threads) and small enough to stay in
    # cache; the numbers are the same for every chunk size. Each step writes its record straight into the whole
    # rollout's trajectory (carried through both scans), so no chunk of the trajectory is built and copied.
    per = _chunk_steps(num_steps, math.prod(batch) * (noise_dim or 0))
    record = jax.eval_shape(lambda c: step(c, inputs_at(jnp.int32(0))), init)[1]
    trajectory = jax.tree.map(lambda r: jnp.zeros((num_steps,) + r.shape, r.dtype), record)

    def write_step(carry, t_inputs):
        state, trajectory = carry
        t, inputs = t_inputs
        state, record = step(state, inputs)
        trajectory = jax.tree.map(lambda x, r: jax.lax.dynamic_update_index_in_dim(x, r, t, 0), trajectory, record)
        return (state, trajectory), None

    def chunk(carry, ts):
        return jax.lax.scan(write_step, carry, (ts, jax.vmap(inputs_at)(ts)))[0], None

    times = jnp.arange(num_steps).reshape(-1, per)
    if per == num_steps:  # one chunk: no loop over chunks
        (_, trajectory), _ = chunk((init, trajectory), times[0])
    else:
        (_, trajectory), _ = jax.lax.scan(chunk, (init, trajectory), times)
    return trajectory


#: A rollout draws its world's numbers in chunks of steps with at most this many numbers each.
_DRAW_CHUNK_FLOATS = 1 << 19


def _chunk_steps(num_steps: int, floats_per_step: int) -> int:
    """The largest divisor of ``num_steps`` whose steps draw at most ``_DRAW_CHUNK_FLOATS`` numbers (at least 1)."""
    fit = num_steps if floats_per_step == 0 else max(1, _DRAW_CHUNK_FLOATS // floats_per_step)
    return max(d for d in range(1, min(fit, num_steps) + 1) if num_steps % d == 0)


def _split(key, batch: tuple):
    """``key`` itself for an unbatched rollout, else ``batch`` keys split from it."""
    return jax.random.split(key, batch) if batch else key
