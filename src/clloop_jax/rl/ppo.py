"""Actor-critic maths: generalized advantage estimation, PPO's clipped surrogate, minibatches and the
Gaussian policy's likelihood, as pure functions of arrays (see :class:`clloop_jax.sources.gymnax.GymnaxSource` for
the objective they serve).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from clloop_jax.strategies.base import nonnegative, positive, unit_interval
from clloop_jax.validation import positive_int

__all__ = ["RLHParams", "RLBatch", "PPOMinibatch", "RolloutState", "GaussianPolicyLikelihood", "gae",
           "clipped_surrogate", "minibatch_indices"]


class RLHParams(NamedTuple):
    """The actor-critic's traced hyperparameters (see the module docstring)."""

    feedback_weight: Any = 1.0
    discount: Any = 0.99
    gae_lambda: Any = 0.95
    clip_eps: Any = 0.2
    value_coef: Any = 0.5
    entropy_coef: Any = 0.01
    reward_scale: Any = 1.0

    def check(self):
        nonnegative("feedback_weight", self.feedback_weight)
        unit_interval("discount", self.discount)
        unit_interval("gae_lambda", self.gae_lambda)
        positive("clip_eps", self.clip_eps)
        nonnegative("value_coef", self.value_coef)
        nonnegative("entropy_coef", self.entropy_coef)
        positive("reward_scale", self.reward_scale)


class RLBatch(NamedTuple):
    """A time-major rollout ``[T, B, ...]``: what the policy acted on and what came of it.

    obs ``[T, B, D]``, feedback ``[T, B, F]``, carry ``[T, B, H]`` (the carry the step started from), action
    ``[T, B]`` (int32) or ``[T, B, A]``, log_prob ``[T, B]`` and value ``[T, B]`` under the acting parameters,
    reward ``[T, B]``, done ``[T, B]`` (the episode ended at step t), last_value ``[B]`` (value after the last
    step), episode_return ``[T, B]`` (the reward summed from the start of step t's episode through step t, that
    start possibly in an earlier rollout of a stream; None: counted from this rollout's start), target
    ``[T, B, A]`` (the environment's expert action at the state the step acted from, recorded for an imitation
    score only; None otherwise).
    """

    obs: jax.Array
    feedback: jax.Array
    carry: jax.Array
    action: jax.Array
    log_prob: jax.Array
    value: jax.Array
    reward: jax.Array
    done: jax.Array
    last_value: jax.Array
    episode_return: Any = None
    target: Any = None


class PPOMinibatch(NamedTuple):
    """Flat samples ``[N, ...]`` of one collected rollout, for several optimizer steps on it: the state the policy
    acted from (carry, obs, feedback), the action, its log-probability ``log pi_old`` and the value under the
    collecting parameters, and the GAE advantage and value target computed once at collection (with
    ``reward_scale``, ``discount``, ``gae_lambda``); ``score`` (a scalar) is the collected rollout's
    :meth:`GymnaxSource.batch_return`."""

    carry: jax.Array
    obs: jax.Array
    feedback: jax.Array
    action: jax.Array
    log_prob: jax.Array
    value: jax.Array
    advantage: jax.Array
    target: jax.Array
    score: jax.Array


class RolloutState(NamedTuple):
    """Where ``B`` environments of a stream stand between two rollouts: the environments' states, the observation,
    the feedback and the policy's carry for the next step, and each environment's return so far in its episode."""

    env_state: Any
    obs: jax.Array
    feedback: jax.Array
    carry: jax.Array
    episode_return: jax.Array


def gae(rewards, values, dones, last_value, discount, gae_lambda):
    """Generalized advantage estimation over a time-major rollout: ``(advantages, value_targets)``, each ``[T, ...]``.

    ``delta_t = r_t + discount * V_{t+1} (1 - d_t) - V_t`` with ``V_T = last_value``;
    ``A_t = delta_t + discount * gae_lambda * (1 - d_t) * A_{t+1}`` (a reverse ``lax.scan``); targets ``A_t + V_t``.
    """
    rewards, values = jnp.asarray(rewards), jnp.asarray(values)
    if rewards.shape != values.shape or jnp.shape(dones) != rewards.shape:
        raise ValueError(f"rewards, values and dones must share one shape [T, ...], got {rewards.shape}, "
                         f"{values.shape} and {jnp.shape(dones)}")
    if jnp.shape(last_value) != rewards.shape[1:]:
        raise ValueError(f"last_value must have shape {rewards.shape[1:]} (values without the time axis), "
                         f"got {jnp.shape(last_value)}")
    not_done = 1.0 - jnp.asarray(dones, values.dtype)
    next_values = jnp.concatenate([values[1:], jnp.asarray(last_value, values.dtype)[None]], axis=0)
    deltas = rewards + discount * next_values * not_done - values

    def back(adv_next, x):
        delta, nd = x
        adv = delta + discount * gae_lambda * nd * adv_next
        return adv, adv

    _, advantages = jax.lax.scan(back, jnp.zeros_like(values[0]), (deltas, not_done), reverse=True)
    return advantages, advantages + values


def clipped_surrogate(ratio, advantages, clip_eps):
    """PPO's clipped surrogate objective (to maximise): ``mean min(rho A, clip(rho, 1 - eps, 1 + eps) A)``."""
    ratio, advantages = jnp.asarray(ratio), jnp.asarray(advantages)
    clipped = jnp.clip(ratio, 1.0 - clip_eps, 1.0 + clip_eps)
    return jnp.mean(jnp.minimum(ratio * advantages, clipped * advantages))


@dataclasses.dataclass(frozen=True)
class GaussianPolicyLikelihood:
    """A diagonal Gaussian whose output is ``[mean (A), log_std (A)]`` (the policy's distribution parameters).

    ``log_prob(output, target) = sum_k log N(target_k; mean_k, exp(log_std_k)^2)``; the output-space Fisher of
    ``(mean, log_std)`` is ``diag(exp(-2 log_std), 2)``, whose factor :meth:`fisher_factor` returns, so
    ``fisher_variant="exact"`` is the exact Fisher of the policy."""

    def _split(self, output):
        output = jnp.asarray(output)
        a = output.shape[-1] // 2
        return output[..., :a], output[..., a:]

    def log_prob(self, output, target):
        mean, log_std = self._split(output)
        target = jnp.asarray(target)
        if target.shape != mean.shape:
            raise ValueError(f"GaussianPolicyLikelihood.log_prob: target must have the mean's shape {mean.shape}, "
                             f"got {target.shape}")
        z = (target - mean) * jnp.exp(-log_std)
        return jnp.sum(-0.5 * z * z - log_std - 0.5 * math.log(2 * math.pi), axis=-1)

    def sample(self, key, output):
        mean, log_std = self._split(output)
        return mean + jnp.exp(log_std) * jax.random.normal(key, mean.shape, mean.dtype)

    def fisher_factor(self, output):
        """``L [..., 2A, 2A]`` with ``L L^T = diag(exp(-2 log_std), 2)``."""
        mean, log_std = self._split(output)
        diag = jnp.concatenate([jnp.exp(-log_std), jnp.full_like(log_std, math.sqrt(2.0))], axis=-1)
        return diag[..., :, None] * jnp.eye(diag.shape[-1], dtype=diag.dtype)

    def entropy(self, output):
        _, log_std = self._split(output)
        return jnp.sum(log_std + 0.5 * math.log(2 * math.pi * math.e), axis=-1)


def minibatch_indices(key, num_samples: int, epochs: int, num_minibatches: int):
    """``[epochs * num_minibatches, num_samples / num_minibatches]`` sample indices: per epoch one permutation of
    ``range(num_samples)`` (``jax.random.permutation`` with that epoch's key) cut into ``num_minibatches`` consecutive
    pieces, so each epoch's minibatches cover every sample exactly once."""
    for name, value in (("num_samples", num_samples), ("epochs", epochs), ("num_minibatches", num_minibatches)):
        positive_int(name, value)
    if num_samples % num_minibatches:
        raise ValueError(f"num_minibatches must divide num_samples = {num_samples}, got {num_minibatches}")
    perms = jax.vmap(lambda k: jax.random.permutation(k, num_samples))(jax.random.split(key, epochs))
    return perms.reshape(epochs * num_minibatches, num_samples // num_minibatches)


def episode_returns(rewards, dones):
    """``G[t]``: the reward summed from the start of the episode that step t belongs to, through step t."""
    def fwd(acc, x):
        r, d = x
        acc = acc + r
        return jnp.where(d, 0.0, acc), acc

    _, out = jax.lax.scan(fwd, jnp.zeros_like(rewards[0]), (rewards, dones))
    return out
