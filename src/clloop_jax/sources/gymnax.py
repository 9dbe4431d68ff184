"""Learning from reward: an actor-critic task source over gymnax environments.

:class:`GymnaxSource` turns a registered gymnax environment id and a list of ``EnvParams`` overrides (one per task:
a longer pole, a heavier pendulum, ...) into a task source for the same :func:`~clloop_jax.run.sequential.make_run` and
the same strategies as the imitation and labelled sources. The policy is a
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
<clloop_jax.run.sequential.Run.learn>`) the advantages, targets and ``log pi_old`` are fixed at collection and the run
takes ``epochs x num_minibatches`` steps on minibatches of them, so ``rho`` moves away from 1 and the clip acts (PPO).
Every coefficient is a traced hyperparameter (:class:`RLHParams`), swept with ``vmap`` like any other.

**Score** (evaluation): the mean undiscounted return of the first episode of each of ``eval_envs`` environments,
run for ``eval_steps`` steps (the task's ``max_steps_in_episode`` by default) with the stochastic policy.

**Fisher** (EWC, online EWC, MAS): one sample is one visited state ``(carry, obs, feedback)``; :meth:`predict`
gives the policy's distribution parameters there (logits, or ``[mean, log_std]``), and :attr:`likelihood` is the
policy's distribution: :class:`~clloop_jax.importance.fisher.Categorical` (exact over the ``K`` actions with
``fisher_variant="exact"``), or :class:`GaussianPolicyLikelihood`, whose output-space Fisher
``diag(1/sigma^2, 2)`` over ``(mean, log_std)`` is exact too. :meth:`fisher_data` draws ``fisher_size`` states of
one rollout of the current policy in the task.
"""

from __future__ import annotations

import dataclasses
import numbers
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np
from gymnax.environments import spaces

from clloop_jax.envs.base import normalized_score
from clloop_jax.importance import fisher as fisher_lib
from clloop_jax.model import CrossModalModel
from clloop_jax.rl.ppo import (
    GaussianPolicyLikelihood,
    PPOMinibatch,
    RLBatch,
    RLHParams,
    RolloutState,
    clipped_surrogate,
    episode_returns,
    gae,
    minibatch_indices,
)
from clloop_jax.rl.tasks import task_params
from clloop_jax.validation import positive_int

__all__ = ["GymnaxSource"]


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
            positive_int(name, getattr(self, name))
        if (self.num_envs * self.num_steps) % self.num_minibatches:
            raise ValueError(f"num_minibatches must divide num_envs * num_steps = {self.num_envs * self.num_steps}, "
                             f"got {self.num_minibatches}")
        if not isinstance(self.persistent_envs, bool):
            raise ValueError(f"persistent_envs must be a bool, got {self.persistent_envs!r}")
        positive_int("fisher_size", self.fisher_size, allow_none=True)
        if self.fisher_size is None:
            object.__setattr__(self, "fisher_size", min(256, self.num_envs * self.num_steps))
        positive_int("eval_steps", self.eval_steps, allow_none=True)
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
        new_carry, out = self.model.apply(params["model"], carry, self._model_obs(carry, obs), feedback)
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
        returns = episode_returns(batch.reward, batch.done) if batch.episode_return is None else batch.episode_return
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

    def features(self, params, inputs):
        """The agent's hidden layers at per-sample states ``(carry [N, H], obs [N, D], feedback [N, F])``:
        ``(fused [N, H], new_carry [N, H])`` (:meth:`~clloop_jax.model.CrossModalModel.features`)."""
        carry, obs, feedback = inputs
        return self.model.apply(params["model"], carry, self._model_obs(carry, obs), feedback,
                                method=self.model.features)

    def _model_obs(self, carry, obs):
        """The observation as the model's modalities (``[..., M, D]``), float32, for ``carry``'s batch shape."""
        return jnp.reshape(obs, obs.shape[:carry.ndim - 1] + self._modalities).astype(jnp.float32)
