"""Closed-loop rollouts of a policy in a :class:`~clloop_jax.envs.base.MultiModalEnv`.

A policy is an unbatched pure function ``policy(carry, obs, feedback, key) -> (carry, action)``
with ``obs [M, D]``, ``feedback [F]`` and ``action [A]``. A :class:`PrivilegedPolicy` also reads
the environment state and the expert target (for scripted teachers and reference scores).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from clloop_jax.envs.base import MultiModalEnv
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
    """
    key = check_key("key", key)
    check_instance("env", env, MultiModalEnv)
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

    def step_one(carry, k):
        state, obs, feedback, target, pcarry = carry
        k_policy, k_env = jax.random.split(k)
        if privileged:
            new_pcarry, action = policy.fn(pcarry, obs, feedback, k_policy, state, target)
        else:
            new_pcarry, action = policy(pcarry, obs, feedback, k_policy)
        next_obs, next_state, reward, terminated, truncated, info = env.step(
            k_env, state, action, env_params
        )
        done = jnp.logical_or(terminated, truncated)
        next_feedback = jnp.where(done, 0.0, feedback_weight * info["feedback"]).astype(jnp.float32)
        next_pcarry = jax.tree.map(
            lambda init, new: jnp.where(done, init, new).astype(new.dtype), policy_carry, new_pcarry
        )
        record = Trajectory(obs, feedback, action, target, reward, done)
        return (next_state, next_obs, next_feedback, info["target"], next_pcarry), record

    reset_key, steps_key = jax.random.split(key)
    step_keys = jax.random.split(steps_key, num_steps)
    if num_envs is None:
        init = reset_one(reset_key)
        body = step_one
    else:
        init = jax.vmap(reset_one)(jax.random.split(reset_key, num_envs))
        batched_step = jax.vmap(step_one)

        def body(carry, k):
            return batched_step(carry, jax.random.split(k, num_envs))

    _, trajectory = jax.lax.scan(body, init, step_keys)
    return trajectory
