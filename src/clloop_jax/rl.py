"""Learning from reward: an actor-critic task source over gymnax environments.

:class:`GymnaxSource` turns a registered gymnax environment id and a list of ``EnvParams`` overrides (one per task:
a longer pole, a heavier pendulum, ...) into a task source for the same :func:`~clloop_jax.loop.make_run` and the
same strategies as the imitation and labelled sources. The policy is a
:class:`~clloop_jax.model.CrossModalModel` reading the flat observation as its one modality; its feedback path
carries ``feedback_weight * [reward_{t-1}, previous action]`` (the previous action one-hot for a discrete action
space), zero at the first step of an episode; its carry restarts at zero with every episode.

The head has ``P + 1`` outputs: the policy's ``P`` numbers (the logits of a categorical policy over ``K = P``
actions, or the mean of a diagonal Gaussian over ``A = P`` action entries, whose state-independent log standard
deviation is the parameter ``params["log_std"]``) and the value ``V(s)``.

**The objective** (inside the run's compiled program). A batch is a rollout of ``num_envs`` environments for
``num_steps`` steps (from a fresh reset, or, with ``persistent_envs``, continuing where the previous update's rollout
left them; reset at each task's start), recording for every step the carry the
policy acted from, the action, its log-probability under the acting parameters ``log pi_old`` and the value.
With ``r~_t = reward_scale * r_t`` and ``d_t`` = the episode ended at step ``t`` (terminated or truncated, as
purejaxrl treats it), generalized advantage estimation (:func:`gae`) gives

    delta_t = r~_t + discount * V_{t+1} (1 - d_t) - V_t,     A_t = delta_t + discount * gae_lambda (1 - d_t) A_{t+1},

with ``V_T`` the value of the observation after the last step, and the value targets ``A_t + V_t``. The loss is

    L = -mean_t min(rho_t Â_t, clip(rho_t, 1 - clip_eps, 1 + clip_eps) Â_t)            (PPO's clipped surrogate)
        + value_coef * 0.5 mean_t (V_theta(s_t) - (A_t + V_t))^2 - entropy_coef * mean_t H[pi_theta(.|s_t)]

with ``rho_t = pi_theta(a_t|s_t) / pi_old(a_t|s_t)`` and ``Â`` the advantages standardized over the batch (or
minibatch). The policy at a step is recomputed from the recorded carry (backpropagation through one step of the
recurrence: the carries are data). By default the run takes one gradient step per rollout, at
``theta = theta_old``, where ``rho = 1`` and the clipped surrogate's gradient equals the advantage actor-critic
(A2C) gradient. With ``epochs`` and ``num_minibatches`` (:meth:`GymnaxSource.minibatches`, :meth:`Run.learn
<clloop_jax.loop.Run.learn>`) the advantages, targets and ``log pi_old`` are fixed at collection and the run takes
``epochs x num_minibatches`` steps on minibatches of them, so ``rho`` moves away from 1 and the clip acts (PPO). Every coefficient is a traced hyperparameter
(:class:`RLHParams`), swept with ``vmap`` like any other.

**Score** (evaluation): the mean undiscounted return of the first episode of each of ``eval_envs`` environments,
run for ``eval_steps`` steps (the task's ``max_steps_in_episode`` by default) with the stochastic policy.

**Fisher** (EWC, online EWC, MAS): one sample is one visited state ``(carry, obs, feedback)``; :meth:`predict`
gives the policy's distribution parameters there (logits, or ``[mean, log_std]``), and :attr:`likelihood` is the
policy's distribution: :class:`~clloop_jax.fisher.Categorical` (exact over the ``K`` actions with
``fisher_variant="exact"``), or :class:`GaussianPolicyLikelihood`, whose output-space Fisher
``diag(1/sigma^2, 2)`` over ``(mean, log_std)`` is exact too. :meth:`fisher_data` draws ``fisher_size`` states of
one rollout of the current policy in the task.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Any, NamedTuple, Optional, Sequence

import gymnax
import jax
import jax.numpy as jnp
import numpy as np
from gymnax.environments import spaces

from clloop_jax import fisher as fisher_lib
from clloop_jax.envs.base import normalized_score
from clloop_jax.model import CrossModalModel
from clloop_jax.strategies.base import nonnegative, positive, unit_interval

__all__ = ["RLHParams", "RLBatch", "PPOMinibatch", "RolloutState", "GymnaxSource", "GaussianPolicyLikelihood", "gae", "clipped_surrogate",
           "task_params", "minibatch_indices"]


# ----------------------------------------------------------------------------------------------------------------
# Hyperparameters, batches
# ----------------------------------------------------------------------------------------------------------------


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


# ----------------------------------------------------------------------------------------------------------------
# The objective's pieces
# ----------------------------------------------------------------------------------------------------------------


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


# ----------------------------------------------------------------------------------------------------------------
# Tasks
# ----------------------------------------------------------------------------------------------------------------


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


# ----------------------------------------------------------------------------------------------------------------
# The source
# ----------------------------------------------------------------------------------------------------------------


def _positive_int(name, value, allow_none=False):
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1{' or None' if allow_none else ''}, got {value!r}")


@dataclasses.dataclass(frozen=True)
class GymnaxSource:
    """Reward-driven tasks: one ``EnvParams`` override of the gymnax environment ``env_id`` per task.

    Args:
      env_id: a registered gymnax id with a flat (or flattened) observation and a ``Discrete`` or ``Box``
        action space (``CartPole-v1``, ``Acrobot-v1``, ``Pendulum-v1``, ``MountainCarContinuous-v0``, ...).
      overrides: one dict of ``EnvParams`` fields per task (``{}`` is the default task).
      model: the policy, a ``CrossModalModel`` with one modality of the observation's size, ``output_dim`` =
        the policy's outputs + 1 (the value) and ``feedback_dim`` 1 + the action encoding's size (None: set here).
        None builds ``CrossModalModel(hidden_dim=hidden_dim, num_heads=2)`` of those sizes.
      hidden_dim: the default model's width.
      num_envs, num_steps: a training rollout's parallel environments and steps (one rollout per update).
      eval_envs, eval_steps: evaluation environments and steps (default: the largest ``max_steps_in_episode``).
      fisher_size: visited states per Fisher diagonal (drawn from one rollout of ``num_envs x num_steps``);
        None: ``min(256, num_envs * num_steps)``.
      init_log_std: the Gaussian policy's initial log standard deviation.
      epochs, num_minibatches: PPO's passes over one collected rollout: each update (episode of the run) collects
        ``num_envs x num_steps`` steps, computes the advantages and value targets once, then takes ``epochs`` passes
        of ``num_minibatches`` optimizer steps, each pass over a fresh random permutation of the samples (so every
        sample is in exactly one minibatch per pass); ``rho = exp(log pi_theta - log pi_old)`` departs from 1 after
        the first step and the clip acts. ``num_envs * num_steps`` must be divisible by ``num_minibatches``.
        1 and 1 (with ``persistent_envs`` False): one optimizer step on the whole rollout, as before.
      persistent_envs: the training environments (and the policy's carry, feedback and episode returns) continue
        from one rollout to the next within a task instead of restarting from a reset, so episodes longer than
        ``num_steps`` are seen whole; they are reset at each task's start.
      environment: an environment object with the gymnax interface to use instead of ``gymnax.make(env_id)`` (``env_id``
        then only names it), e.g. a :class:`~clloop_jax.envs.MultiModalEnv` learned from its reward alone; its
        tasks are ``tasks`` (a stacked ``EnvParams``, required with ``environment``; ``overrides`` is unused). An
        observation ``[M, D]`` of an environment with ``num_modalities = M`` is ``M`` modalities of the model.
      score_kind: ``"return"`` (the mean return, default) or ``"imitation"``: the imitation-normalized score
        ``1 - sum |a - a*|^2 / sum |a*|^2`` (:func:`clloop_jax.envs.base.normalized_score`) of the policy's mean
        action against the environment's ``expert_action``, for a world that has an expert the agent never sees.
    """

    env_id: str
    overrides: tuple = dataclasses.field(default=({},), compare=False)
    model: Any = None
    hidden_dim: int = 32
    num_envs: int = 16
    num_steps: int = 128
    eval_envs: int = 16
    eval_steps: Optional[int] = None
    fisher_size: Optional[int] = None
    init_log_std: float = 0.0
    epochs: int = 1
    num_minibatches: int = 1
    persistent_envs: bool = False
    environment: Any = dataclasses.field(default=None, repr=False)
    score_kind: str = "return"
    tasks: Any = dataclasses.field(default=None, compare=False, repr=False)

    def __post_init__(self):
        if self.environment is None:
            overrides = self.overrides
            if isinstance(overrides, (list, tuple)):
                overrides = [dict(o) if isinstance(o, (list, tuple)) else o for o in overrides]
            env, tasks = task_params(self.env_id, overrides)
            object.__setattr__(self, "overrides", tuple(tuple(sorted(o.items())) for o in overrides))
        else:
            env, tasks = self.environment, self.tasks
            missing = [m for m in ("reset", "step", "action_space", "observation_space", "default_params")
                       if not hasattr(env, m)]
            if missing:
                raise TypeError(f"environment must have the gymnax environment interface (it lacks {missing}), "
                                f"got {type(env).__name__}")
            if tasks is None or not jax.tree.leaves(tasks):
                raise ValueError("tasks must be the environment's stacked EnvParams (one leading task axis) when "
                                 "environment is given, e.g. tasks=world.tasks(3)")
            object.__setattr__(self, "overrides", ())
        if self.score_kind not in ("return", "imitation"):
            raise ValueError(f"score_kind must be 'return' or 'imitation', got {self.score_kind!r}")
        if self.score_kind == "imitation" and not hasattr(env, "expert_action"):
            raise ValueError(f"score_kind='imitation' needs an environment with expert_action; {self.env_id!r} has "
                             f"none")
        for name in ("hidden_dim", "num_envs", "num_steps", "eval_envs", "epochs", "num_minibatches"):
            _positive_int(name, getattr(self, name))
        if (self.num_envs * self.num_steps) % self.num_minibatches:
            raise ValueError(f"num_minibatches must divide num_envs * num_steps = {self.num_envs * self.num_steps}, "
                             f"got {self.num_minibatches}")
        if not isinstance(self.persistent_envs, bool):
            raise ValueError(f"persistent_envs must be a bool, got {self.persistent_envs!r}")
        _positive_int("fisher_size", self.fisher_size, allow_none=True)
        if self.fisher_size is None:
            object.__setattr__(self, "fisher_size", min(256, self.num_envs * self.num_steps))
        _positive_int("eval_steps", self.eval_steps, allow_none=True)
        if self.fisher_size > self.num_envs * self.num_steps:
            raise ValueError(f"fisher_size must be at most num_envs * num_steps = {self.num_envs * self.num_steps}, "
                             f"got {self.fisher_size}")
        if isinstance(self.init_log_std, bool) or not isinstance(self.init_log_std, numbers.Real) \
                or not np.isfinite(self.init_log_std):
            raise ValueError(f"init_log_std must be a finite number, got {self.init_log_std!r}")
        object.__setattr__(self, "_env", env)
        object.__setattr__(self, "tasks", tasks)
        space = env.action_space(env.default_params)
        if isinstance(space, spaces.Discrete):
            object.__setattr__(self, "_discrete", True)
            object.__setattr__(self, "_policy_dim", int(space.n))
        elif isinstance(space, spaces.Box):
            object.__setattr__(self, "_discrete", False)
            object.__setattr__(self, "_policy_dim", int(np.prod(space.shape)))
        else:
            raise ValueError(f"env_id={self.env_id!r} has a {type(space).__name__} action space; GymnaxSource "
                             f"needs Discrete or Box")
        obs_shape = tuple(env.observation_space(env.default_params).shape)
        modalities = getattr(env, "num_modalities", None)
        if isinstance(modalities, int) and len(obs_shape) == 2 and obs_shape[0] == modalities:
            object.__setattr__(self, "_modalities", obs_shape)  # [M, D]: M modalities of D features
        else:
            object.__setattr__(self, "_modalities", (1, int(np.prod(obs_shape))))  # one flat modality
        object.__setattr__(self, "_obs_dim", self._modalities[1])
        if self.eval_steps is None:
            object.__setattr__(self, "eval_steps", int(np.max(np.asarray(tasks.max_steps_in_episode))))
        model = self.model
        if model is None:
            model = CrossModalModel(input_dim=self._obs_dim, hidden_dim=self.hidden_dim,
                                    output_dim=self._policy_dim + 1, num_modalities=self._modalities[0],
                                    num_heads=2, feedback_dim=self.feedback_dim)
        if not isinstance(model, CrossModalModel):
            raise TypeError(f"model must be a CrossModalModel or None, got {type(model).__name__}")
        if model.feedback_dim is None:
            model = model.clone(feedback_dim=self.feedback_dim)
        expected = dict(num_modalities=self._modalities[0], modality_dims=(self._obs_dim,) * self._modalities[0],
                        output_dim=self._policy_dim + 1,
                        feedback_dim=self.feedback_dim)
        for name, value in expected.items():
            if getattr(model, name) != value:
                raise ValueError(f"model.{name} must be {value} for {self.env_id} (one modality of the flat "
                                 f"observation, the policy's outputs + 1 value, 1 + action feedback), "
                                 f"got {getattr(model, name)}")
        object.__setattr__(self, "model", model)

    def _config(self):
        """What the compiled programs depend on: not the overrides' values (the task arrays are arguments of the
        run's program), only their number, so sources of equal configuration share one compilation."""
        return (self.env_id, self.num_tasks, self.model, self.hidden_dim, self.num_envs, self.num_steps,
                self.eval_envs, self.eval_steps, self.fisher_size, self.init_log_std, self.epochs,
                self.num_minibatches, self.persistent_envs, self.environment, self.score_kind)

    def __hash__(self):
        return hash(self._config())

    def __eq__(self, other):
        return type(other) is type(self) and self._config() == other._config()

    # ----- sizes --------------------------------------------------------------------------------------------
    @property
    def env(self):
        return self._env

    @property
    def discrete(self) -> bool:
        return self._discrete

    @property
    def policy_dim(self) -> int:
        """Logits (discrete) or action entries (continuous)."""
        return self._policy_dim

    @property
    def feedback_dim(self) -> int:
        """``1 + policy_dim``: the reward, then the previous action (one-hot when discrete)."""
        return 1 + self._policy_dim

    @property
    def num_tasks(self) -> int:
        return int(jax.tree.leaves(self.tasks)[0].shape[0])

    @property
    def streaming(self) -> bool:
        """Whether the run keeps this source's environments running between updates (``persistent_envs``)."""
        return self.persistent_envs

    @property
    def minibatch_passes(self) -> int:
        """Optimizer steps per collected rollout: ``epochs * num_minibatches``."""
        return self.epochs * self.num_minibatches

    @property
    def likelihood(self):
        return fisher_lib.Categorical() if self._discrete else GaussianPolicyLikelihood()

    @property
    def hparams(self) -> RLHParams:
        return RLHParams()

    # ----- the policy ---------------------------------------------------------------------------------------
    def init_params(self, key):
        params = {"model": self.model.init_params(key)}
        if not self._discrete:
            params["log_std"] = jnp.full((self._policy_dim,), self.init_log_std, jnp.float32)
        return params

    def _apply(self, params, carry, obs, feedback):
        """``(new_carry, policy_out [..., P or 2A], value [...])`` for any leading batch shape."""
        obs = jnp.reshape(obs, obs.shape[:carry.ndim - 1] + self._modalities).astype(jnp.float32)
        new_carry, out = self.model.apply(params["model"], carry, obs, feedback)
        pol, value = out[..., :self._policy_dim], out[..., self._policy_dim]
        if not self._discrete:
            pol = jnp.concatenate([pol, jnp.broadcast_to(params["log_std"], pol.shape)], axis=-1)
        return new_carry, pol, value

    def _sample(self, key, pol):
        action = self.likelihood.sample(key, pol)
        return action.astype(jnp.int32) if self._discrete else action

    def _entropy(self, pol):
        if self._discrete:
            logp = jax.nn.log_softmax(pol, axis=-1)
            return -jnp.sum(jnp.exp(logp) * logp, axis=-1)
        return self.likelihood.entropy(pol)

    def _encode(self, action):
        return jax.nn.one_hot(action, self._policy_dim) if self._discrete else action

    def _env_action(self, action):
        return action if self._discrete else action.reshape(self.env.action_space(self.env.default_params).shape)

    def reset(self, key, task, num_envs) -> RolloutState:
        """``num_envs`` environments of ``task`` freshly reset, zero carry, feedback and returns."""
        obs, state = jax.vmap(self.env.reset, in_axes=(0, None))(jax.random.split(key, num_envs), task)
        return RolloutState(state, obs, jnp.zeros((num_envs, self.feedback_dim), jnp.float32),
                            jnp.zeros((num_envs, self.model.hidden_dim), jnp.float32),
                            jnp.zeros((num_envs,), jnp.float32))

    def rollout(self, key, params, task, hparams, num_envs, num_steps, policy=None, record_target=False) -> RLBatch:
        """``num_envs`` environments of ``task`` for ``num_steps`` steps from a fresh reset, acting with the policy
        (or with ``policy(key, pol) -> action`` when given, e.g. uniform random), gradients stopped."""
        k_reset, k_steps = jax.random.split(key)
        return self.continue_rollout(k_steps, params, task, hparams, self.reset(k_reset, task, num_envs),
                                     num_steps, policy, record_target)[0]

    def continue_rollout(self, key, params, task, hparams, start: RolloutState, num_steps, policy=None,
                         record_target=False):
        """``(batch, end)``: the environments of ``start`` for ``num_steps`` more steps (an episode that ends is
        reset by the environment and its carry, feedback and return restart at zero); ``end`` is where the next
        rollout continues from. Gradients stopped."""
        num_envs = start.obs.shape[0]
        w = jnp.asarray(hparams.feedback_weight, jnp.float32)

        def step(c: RolloutState, k):
            state, obs, fb, carry, ep_ret = c
            k_act, k_env = jax.random.split(k)
            new_carry, pol, value = self._apply(params, carry, obs, fb)
            action = self._sample(k_act, pol) if policy is None else policy(k_act, pol)
            log_prob = self.likelihood.log_prob(pol, action)
            target = jax.vmap(self.env.expert_action, in_axes=(0, None))(state, task) if record_target else None
            obs2, state2, reward, term, trunc, _ = jax.vmap(self.env.step, in_axes=(0, 0, 0, None))(
                jax.random.split(k_env, num_envs), state, jax.vmap(self._env_action)(action), task)
            reward = jnp.asarray(reward, jnp.float32)
            done = jnp.logical_or(term, trunc)
            fb2 = w * jnp.concatenate([reward[:, None], self._encode(action)], axis=-1)
            fb2 = jnp.where(done[:, None], 0.0, fb2)
            carry2 = jnp.where(done[:, None], 0.0, new_carry)
            ep_ret = ep_ret + reward
            rec = RLBatch(obs.reshape(num_envs, -1).astype(jnp.float32), fb, carry, action, log_prob, value,
                          reward, done, jnp.zeros(()), ep_ret, target)
            return RolloutState(state2, obs2, fb2, carry2, jnp.where(done, 0.0, ep_ret)), rec

        end, batch = jax.lax.scan(step, start, jax.random.split(key, num_steps))
        _, _, last_value = self._apply(params, end.carry, end.obs, end.feedback)
        return jax.lax.stop_gradient((batch._replace(last_value=last_value), end))

    # ----- the task-source interface --------------------------------------------------------------------------
    def batch(self, key, params, task, hparams):
        return self.rollout(key, params, task, hparams, self.num_envs, self.num_steps)

    def stream_init(self, key, task, hparams) -> RolloutState:
        """The training environments at a task's start (``persistent_envs``): ``num_envs`` fresh resets."""
        return self.reset(key, task, self.num_envs)

    def stream_batch(self, key, params, task, hparams, stream: RolloutState):
        """``(batch, stream)``: the next ``num_steps`` steps of the running training environments."""
        return self.continue_rollout(key, params, task, hparams, stream, self.num_steps)

    def minibatches(self, key, batch: RLBatch, hparams) -> PPOMinibatch:
        """The collected ``batch`` as ``epochs * num_minibatches`` minibatches (a leading axis) of
        ``num_envs * num_steps / num_minibatches`` samples each: advantages and value targets computed once on the
        whole rollout (:func:`gae` with the collection's values), then per epoch one random permutation of the
        ``N = num_envs * num_steps`` samples cut into ``num_minibatches`` consecutive pieces."""
        hp = hparams
        adv, targets = gae(hp.reward_scale * batch.reward, batch.value, batch.done, batch.last_value,
                           hp.discount, hp.gae_lambda)
        flat = lambda x: x.reshape((-1,) + x.shape[2:])  # noqa: E731
        data = (flat(batch.carry), flat(batch.obs), flat(batch.feedback), flat(batch.action), flat(batch.log_prob),
                flat(batch.value), flat(adv), flat(targets))
        n, m = data[0].shape[0], self.num_minibatches
        idx = minibatch_indices(key, n, self.epochs, m)
        picked = [x[idx] for x in data]
        score = jnp.broadcast_to(self.batch_return(batch), (self.minibatch_passes,))
        return PPOMinibatch(*picked, score)

    def loss(self, params, batch: RLBatch, hparams):
        """The actor-critic loss of the module docstring; ``aux``: ``score`` (the mean return of the episodes that
        ended in the batch; the mean reward sum per environment when none did), the three terms, the entropy."""
        hp = hparams
        _, pol, value = self._apply(params, batch.carry, batch.obs, batch.feedback)
        log_prob = self.likelihood.log_prob(pol, batch.action)
        if isinstance(batch, PPOMinibatch):  # advantages and targets fixed at collection
            adv, targets, score = batch.advantage, batch.target, batch.score
        else:
            adv, targets = gae(hp.reward_scale * batch.reward, batch.value, batch.done, batch.last_value,
                               hp.discount, hp.gae_lambda)
            score = self.batch_return(batch)
        adv_n = (adv - jnp.mean(adv)) / (jnp.std(adv) + 1e-8)
        ratio = jnp.exp(log_prob - batch.log_prob)
        policy_loss = -clipped_surrogate(ratio, adv_n, hp.clip_eps)
        value_loss = 0.5 * jnp.mean(jnp.square(value - targets))
        entropy = jnp.mean(self._entropy(pol))
        loss = policy_loss + hp.value_coef * value_loss - hp.entropy_coef * entropy
        clipped = jnp.mean((jnp.abs(ratio - 1.0) > hp.clip_eps).astype(jnp.float32))
        return loss, {"score": score, "policy_loss": policy_loss, "value_loss": value_loss,
                      "entropy": entropy, "clip_fraction": jax.lax.stop_gradient(clipped)}

    @staticmethod
    def batch_return(batch: RLBatch):
        """Mean return of the episodes that ended in ``batch`` (reward summed from each episode's start)."""
        ended = jnp.sum(batch.done)
        returns = _episode_returns(batch.reward, batch.done) if batch.episode_return is None else batch.episode_return
        return jnp.where(ended > 0, jnp.sum(returns * batch.done)
                         / jnp.maximum(ended, 1), jnp.sum(batch.reward) / batch.reward.shape[1])

    def mean_action(self, key, pol):
        """The policy's most likely action: the argmax logit, or the Gaussian's mean."""
        del key
        return jnp.argmax(pol, axis=-1).astype(jnp.int32) if self._discrete else pol[..., :self._policy_dim]

    def score(self, key, params, task, hparams, policy=None):
        """Mean return of each evaluation environment's first episode (undiscounted, stochastic policy); with
        ``score_kind="imitation"``, the imitation-normalized score of the mean action (or of ``policy``'s) over
        ``eval_envs x eval_steps`` steps against the environment's expert action."""
        if self.score_kind == "imitation":
            batch = self.rollout(key, params, task, hparams, self.eval_envs, self.eval_steps,
                                 policy or self.mean_action, record_target=True)
            space = self.env.action_space(task)
            applied = jnp.clip(batch.action, space.low, space.high)
            return normalized_score(applied, batch.target)
        batch = self.rollout(key, params, task, hparams, self.eval_envs, self.eval_steps, policy)
        first = jnp.cumsum(batch.done, axis=0) - batch.done == 0  # steps of the first episode
        return jnp.mean(jnp.sum(batch.reward * first, axis=0))

    def random_policy(self, key, pol):
        """Uniform random actions (over the Discrete actions, or the Box's bounds) ignoring the policy."""
        space = self.env.action_space(self.env.default_params)
        if self._discrete:
            return jax.random.randint(key, pol.shape[:-1], 0, self._policy_dim)
        low, high = jnp.broadcast_to(space.low, space.shape).reshape(-1), jnp.broadcast_to(
            space.high, space.shape).reshape(-1)
        return jax.random.uniform(key, pol.shape[:-1] + (self._policy_dim,), minval=low, maxval=high)

    def random_score(self, key, task, hparams=None):
        """:meth:`score` of the uniform random policy."""
        params = self.init_params(jax.random.key(0))
        return self.score(key, params, task, hparams or self.hparams, policy=self.random_policy)

    def samples(self, batch: RLBatch):
        """Per-state ``((carry, obs, feedback), action)``: every step of every environment is one sample (a
        :class:`PPOMinibatch`'s samples as they are)."""
        if isinstance(batch, PPOMinibatch):
            return (batch.carry, batch.obs, batch.feedback), batch.action
        flat = lambda x: x.reshape((-1,) + x.shape[2:])  # noqa: E731
        return (flat(batch.carry), flat(batch.obs), flat(batch.feedback)), flat(batch.action)

    def fisher_data(self, key, params, task, hparams):
        k_roll, k_pick = jax.random.split(key)
        inputs, actions = self.samples(self.batch(k_roll, params, task, hparams))
        idx = jax.random.choice(k_pick, actions.shape[0], (self.fisher_size,), replace=False)
        return jax.tree.map(lambda x: x[idx], inputs), actions[idx]

    def sample_loss(self, params, inputs, targets):
        """Negative log-likelihood of the recorded actions at the recorded states (behaviour cloning)."""
        carry, obs, feedback = inputs
        _, pol, _ = self._apply(params, carry, obs, feedback)
        return -jnp.mean(self.likelihood.log_prob(pol, targets))

    def predict(self, params, x):
        """The policy's distribution parameters at one state ``(carry [H], obs [D], feedback [F])``."""
        carry, obs, feedback = x
        return self._apply(params, carry, obs, feedback)[1]


def minibatch_indices(key, num_samples: int, epochs: int, num_minibatches: int):
    """``[epochs * num_minibatches, num_samples / num_minibatches]`` sample indices: per epoch one permutation of
    ``range(num_samples)`` (``jax.random.permutation`` with that epoch's key) cut into ``num_minibatches`` consecutive
    pieces, so each epoch's minibatches cover every sample exactly once."""
    for name, value in (("num_samples", num_samples), ("epochs", epochs), ("num_minibatches", num_minibatches)):
        _positive_int(name, value)
    if num_samples % num_minibatches:
        raise ValueError(f"num_minibatches must divide num_samples = {num_samples}, got {num_minibatches}")
    perms = jax.vmap(lambda k: jax.random.permutation(k, num_samples))(jax.random.split(key, epochs))
    return perms.reshape(epochs * num_minibatches, num_samples // num_minibatches)


def _episode_returns(rewards, dones):
    """``G[t]``: the reward summed from the start of the episode that step t belongs to, through step t."""
    def fwd(acc, x):
        r, d = x
        acc = acc + r
        return jnp.where(d, 0.0, acc), acc

    _, out = jax.lax.scan(fwd, jnp.zeros_like(rewards[0]), (rewards, dones))
    return out
