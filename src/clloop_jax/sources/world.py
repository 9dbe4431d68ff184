"""The closed loop as a task source: an agent acting in a multi-modal world, learning by imitation of its expert."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp

from clloop_jax.envs.base import check_world, normalized_score
from clloop_jax.envs.rollout import Trajectory, rollout
from clloop_jax.importance import fisher as fisher_lib
from clloop_jax.sources.mixture import draw_tasks
from clloop_jax.strategies.base import nonnegative
from clloop_jax.tree import task_at
from clloop_jax.validation import ArgumentTypeError, check_float, check_methods, positive_int

__all__ = ["EnvHParams", "EnvSource", "ImitationLoss", "imitation_loss", "squared_error", "sequence_actions",
           "pair_with_env", "check_model_matches_env"]


class EnvHParams(NamedTuple):
    """The closed loop's hyperparameters: ``feedback_weight``, the scale of the world's feedback (reward, previous
    action) before it reaches the model (>= 0)."""

    feedback_weight: Any = 1.0

    def check(self):
        nonnegative("feedback_weight", self.feedback_weight)


def pair_with_env(model, env):
    """``model`` ready to act in ``env``: a model built without ``feedback_dim`` (None) takes the environment's."""
    check_methods("model", model, ["init_params", "initial_carry", "sequence", "apply"],
                  example="CrossModalModel(...)")
    check_methods("environment", env, ["reset", "step", "tasks"], example="Environment(...)")
    if getattr(model, "feedback_dim", 0) is None:
        return model.clone(feedback_dim=env.feedback_dim)
    return model


def check_model_matches_env(model, env) -> None:
    """Raises ``ValueError`` naming the field when ``model`` cannot act in ``env``."""
    for owner, value, fields in (("model", model, ("num_modalities", "modality_dims", "output_dim", "feedback_dim")),
                                 ("environment", env, ("num_modalities", "observation_dim", "action_dim",
                                                       "feedback_dim"))):
        missing = [f for f in fields if not hasattr(value, f)]
        if missing:
            raise ArgumentTypeError(f"{owner} must be a {'CrossModalModel' if owner == 'model' else 'MultiModalEnv'}"
                                    f" (it lacks {missing}), got {type(value).__name__}")
    env_dims = tuple([env.observation_dim] * env.num_modalities) if isinstance(env.observation_dim, int) \
        else tuple(env.observation_dim)
    if model.num_modalities != env.num_modalities:
        raise ValueError(f"model.num_modalities={model.num_modalities} does not match "
                         f"environment.num_modalities={env.num_modalities}")
    if tuple(model.modality_dims) != env_dims:
        raise ValueError(f"model.input_dim gives modality sizes {tuple(model.modality_dims)}, but the environment "
                         f"observes {env_dims} (environment.observation_dim)")
    if model.output_dim != env.action_dim:
        raise ValueError(f"model.output_dim={model.output_dim} does not match environment.action_dim={env.action_dim}")
    if model.feedback_dim != env.feedback_dim:
        raise ValueError(f"model.feedback_dim={model.feedback_dim} does not match "
                         f"environment.feedback_dim={env.feedback_dim}")


def squared_error(actions, targets):
    """The default imitation error: mean over steps and sequences of ``|action - target|^2``."""
    return jnp.mean(jnp.sum((actions - targets) ** 2, axis=-1))


def sequence_actions(model, params, obs, feedback):
    """The model's actions for time-major ``obs [T, B, M, D]`` and ``feedback [T, B, F]``, run from its initial
    carry (backpropagation through time when differentiated)."""
    carry = model.initial_carry(obs.shape[1:2])
    _, actions = model.apply(params, carry, obs, feedback, method=model.sequence)
    return actions


@dataclasses.dataclass(frozen=True)
class ImitationLoss:
    """The default closed-loop objective: learn the environment's target action along the agent's own trajectory.

    ``loss_fn(actions, targets)`` compares the model's actions, recomputed from the recorded observations and feedback
    with backpropagation through time over the whole episode, with the expert's actions (default:
    :func:`squared_error`). The environment's transitions are not differentiated (the trajectory is data), as in
    on-policy imitation (DAgger). ``aux["score"]`` is the normalized score of the recomputed actions.
    """

    model: Any
    loss_fn: Callable = squared_error

    def __call__(self, params, traj: Trajectory, hparams=None):
        actions = sequence_actions(self.model, params, traj.obs, traj.feedback)
        return self.loss_fn(actions, traj.target), {"score": normalized_score(actions, traj.target)}


def imitation_loss(model, loss_fn: Callable = squared_error) -> ImitationLoss:
    """:class:`ImitationLoss` of ``model`` (kept as a function for symmetry with user objectives)."""
    return ImitationLoss(model, loss_fn)


@dataclasses.dataclass(frozen=True)
class EnvSource:
    """Closed-loop tasks: the model acts in ``env``; each task is one ``EnvParams`` of ``env.tasks(num_tasks)``.

    Args:
      model: a :class:`~clloop_jax.model.CrossModalModel` whose sizes match the environment.
      env: a :class:`~clloop_jax.envs.MultiModalEnv` offering ``tasks(num_tasks)`` (what a world must provide is
        checked here by :func:`~clloop_jax.envs.check_world`; see ``docs/guides/worlds.md``).
      num_tasks: how many tasks of the environment's family to learn in sequence.
      num_envs: parallel environments per training episode.
      num_steps: steps per episode (defaults to the environment's episode length).
      eval_envs: parallel environments per evaluation rollout.
      objective: ``loss(params, trajectory, hparams) -> (loss, aux)``; defaults to :func:`imitation_loss`.
      sigma: the standard deviation of the Gaussian policy whose log-likelihood defines the Fisher.
      tasks: an explicit stacked ``EnvParams`` to use instead of ``env.tasks(num_tasks)``.
    """

    model: Any
    env: Any
    num_tasks: int = 3
    num_envs: int = 8
    num_steps: Optional[int] = None
    eval_envs: int = 16
    objective: Optional[Callable] = None
    sigma: float = 1.0
    tasks: Any = dataclasses.field(default=None, compare=False)

    def __post_init__(self):
        for name in ("num_tasks", "num_envs", "eval_envs"):
            positive_int(name, getattr(self, name))
            object.__setattr__(self, name, int(getattr(self, name)))
        positive_int("num_steps", self.num_steps, allow_none=True)
        check_float("sigma", self.sigma, min=0, open_min=True, scalar=True)
        if self.objective is not None and not callable(self.objective):
            raise TypeError(f"objective must be a callable (params, trajectory, hparams) -> (loss, aux), "
                            f"got {type(self.objective).__name__}")
        check_world(self.env, num_tasks=self.num_tasks, needs_episode_length=self.num_steps is None)
        object.__setattr__(self, "model", pair_with_env(self.model, self.env))
        check_model_matches_env(self.model, self.env)
        if self.num_steps is None:
            object.__setattr__(self, "num_steps", int(self.env.episode_length))
        if self.tasks is None:
            object.__setattr__(self, "tasks", self.env.tasks(self.num_tasks))
        else:
            expected = jax.eval_shape(lambda: self.env.tasks(self.num_tasks))
            got = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype) if hasattr(x, "dtype") else x,
                               self.tasks)
            if not isinstance(got, type(expected)) or jax.tree.structure(got) != jax.tree.structure(expected) or jax.tree.leaves(got) != jax.tree.leaves(
                    expected):
                raise ValueError(f"tasks must be the environment's stacked task parameters for num_tasks="
                                 f"{self.num_tasks} (as env.tasks({self.num_tasks}) gives: {expected}), got {got}")
        check_world(self.env, tasks=self.tasks, num_tasks=self.num_tasks, needs_episode_length=False)
        if self.objective is None:
            object.__setattr__(self, "objective", imitation_loss(self.model))

    @property
    def likelihood(self):
        return fisher_lib.Gaussian(sigma=self.sigma)

    @property
    def hparams(self) -> EnvHParams:
        return EnvHParams()

    def init_params(self, key):
        return self.model.init_params(key)

    def policy(self, params):
        """The model as an unbatched policy ``(carry, obs, feedback, key) -> (carry, action)``."""

        def act(carry, obs, feedback, key):
            del key
            return self.model.apply(params, carry, obs, feedback)

        return act

    def rollout(self, key, params, task, hparams, num_envs):
        traj = rollout(key, self.env, task, self.policy(params), self.model.initial_carry(), self.num_steps,
                       num_envs=num_envs, feedback_weight=hparams.feedback_weight)
        return jax.lax.stop_gradient(traj)

    def batch(self, key, params, task, hparams):
        return self.rollout(key, params, task, hparams, self.num_envs)

    def mixture_batch(self, key, params, tasks, weights, hparams):
        """A rollout of ``num_envs`` worlds, each in its own task drawn from ``weights [K]`` (a stream with hidden
        task boundaries, :mod:`clloop_jax.taskfree`); the leaves are those of :meth:`batch`."""
        k_ids, k_batch = jax.random.split(key)
        ids = draw_tasks(k_ids, weights, self.num_envs)
        one = dataclasses.replace(self, num_envs=1)
        trajs = jax.vmap(lambda k, i: one.batch(k, params, task_at(tasks, i), hparams))(
            jax.random.split(k_batch, self.num_envs), ids)
        return jax.tree.map(lambda x: jnp.swapaxes(x[:, :, 0], 0, 1), trajs)  # [n, T, 1, ...] -> [T, n, ...]

    def loss(self, params, batch, hparams):
        out = self.objective(params, batch, hparams)
        return out if isinstance(out, tuple) else (out, {})

    def score(self, key, params, task, hparams):
        traj = self.rollout(key, params, task, hparams, self.eval_envs)
        return normalized_score(traj.action, traj.target)

    def fisher_data(self, key, params, task, hparams):
        return self.samples(self.rollout(key, params, task, hparams, self.num_envs))

    def samples(self, traj: Trajectory):
        """Per-sample ``((obs, feedback), target)``: each sample is one whole episode (env axis first)."""
        inputs = (jnp.swapaxes(traj.obs, 0, 1), jnp.swapaxes(traj.feedback, 0, 1))
        return inputs, jnp.swapaxes(traj.target, 0, 1)

    def sample_loss(self, params, inputs, targets):
        """The objective on per-sample episodes: the trajectory rebuilt time-major, then ``objective``'s loss."""
        obs, feedback = (jnp.swapaxes(x, 0, 1) for x in inputs)
        target = jnp.swapaxes(targets, 0, 1)
        zeros = jnp.zeros(target.shape[:-1])
        traj = Trajectory(obs, feedback, jnp.zeros_like(target), target, zeros, zeros.astype(bool))
        return self.loss(params, traj, self.hparams)[0]

    def features(self, params, inputs):
        """The agent's hidden layers at every step of per-sample episodes ``(obs [N, T, ...], feedback [N, T, F])``,
        run from the initial carry as in :meth:`predict`: ``(fused [N * T, H], carry [N * T, H])``
        (:meth:`~clloop_jax.model.CrossModalModel.features`), rows in sample-major order."""
        obs, feedback = inputs

        def step(carry, xs):
            fused, new_carry = self.model.apply(params, carry, *xs, method=self.model.features)
            return new_carry, (fused, new_carry)

        time_major = (jnp.swapaxes(obs, 0, 1), jnp.swapaxes(feedback, 0, 1))
        _, hidden = jax.lax.scan(step, self.model.initial_carry(obs.shape[:1]), time_major)
        return tuple(jnp.swapaxes(h, 0, 1).reshape((-1, h.shape[-1])) for h in hidden)

    def predict(self, params, x):
        obs, feedback = x
        _, actions = self.model.apply(params, self.model.initial_carry(), obs, feedback,
                                      method=self.model.sequence)
        return actions
