"""Task sources: what the continual trainer learns from, one task at a time.

A task source turns "task i" into everything the trainer in :mod:`clloop_jax.loop` needs, as pure functions of
arrays and keys:

* ``tasks``: a pytree whose leaves have a leading ``num_tasks`` axis; one slice is one task (an environment's
  ``EnvParams``, or a labelled dataset's per-task arrays). The trainer indexes it with a traced task id, so
  switching task never recompiles.
* ``init_params(key)``: the model's initial parameters.
* ``batch(key, params, task, hparams)``: data to learn from (a closed-loop rollout, or a minibatch).
* ``loss(params, batch, hparams) -> (loss, aux)``: the objective; ``aux["score"]`` is the batch's score.
* ``score(key, params, task, hparams)``: the task's normalized score (evaluation).
* ``fisher_data(key, params, task, hparams) -> (inputs, targets)``: per-sample inputs (leading sample axis) and
  observed targets for the Fisher diagonal, MAS importance and functional-divergence probes.
* ``predict(params, x)``: one sample's model outputs, the function those importances differentiate.
* ``likelihood``: the output distribution (:class:`~clloop_jax.fisher.Gaussian` or
  :class:`~clloop_jax.fisher.Categorical`), which names the Fisher's expectation and the divergence kind.

Two sources ship here: :class:`EnvSource` (the closed loop: an agent acting in an environment) and
:class:`SupervisedSource` (labelled task streams: permuted and split digits).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional, Protocol

import jax
import jax.numpy as jnp

from clloop_jax import fisher as fisher_lib
from clloop_jax.envs.rollout import Trajectory, rollout
from clloop_jax.envs.base import normalized_score


class TaskSource(Protocol):
    """The interface every task source implements (see the module docstring)."""

    num_tasks: int
    tasks: Any
    likelihood: Any

    def init_params(self, key): ...

    def batch(self, key, params, task, hparams): ...

    def loss(self, params, batch, hparams): ...

    def score(self, key, params, task, hparams): ...

    def fisher_data(self, key, params, task, hparams): ...

    def predict(self, params, x): ...


def check_model_matches_env(model, env) -> None:
    """Raises ``ValueError`` naming the field when ``model`` cannot act in ``env``."""
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


def imitation_loss(model) -> Callable:
    """The default closed-loop objective: learn the environment's target action along the agent's own trajectory.

    The loss is the mean squared error between the model's actions, recomputed from the recorded observations and
    feedback with backpropagation through time over the whole episode, and the expert's actions. The environment's
    transitions are not differentiated (the trajectory is data), as in on-policy imitation (DAgger).
    """

    def loss(params, traj: Trajectory, hparams=None):
        num_envs = traj.obs.shape[1]
        carry = model.initial_carry((num_envs,))
        _, actions = model.apply(params, carry, traj.obs, traj.feedback, method=model.sequence)
        err = jnp.mean(jnp.sum((actions - traj.target) ** 2, axis=-1))
        return err, {"score": normalized_score(actions, traj.target)}

    return loss


@dataclasses.dataclass(frozen=True)
class EnvSource:
    """Closed-loop tasks: the model acts in ``env``; each task is one ``EnvParams`` of ``env.tasks(num_tasks)``.

    Args:
      model: a :class:`~clloop_jax.model.CrossModalModel` whose sizes match the environment.
      env: a :class:`~clloop_jax.envs.MultiModalEnv` offering ``tasks(num_tasks)``.
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
    tasks: Any = None

    def __post_init__(self):
        for name in ("num_tasks", "num_envs", "eval_envs"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if self.num_steps is not None and (not isinstance(self.num_steps, int) or self.num_steps < 1):
            raise ValueError(f"num_steps must be an integer >= 1 or None, got {self.num_steps!r}")
        if not self.sigma > 0:
            raise ValueError(f"sigma must be > 0, got {self.sigma!r}")
        check_model_matches_env(self.model, self.env)
        if self.num_steps is None:
            object.__setattr__(self, "num_steps", int(self.env.episode_length))
        if self.tasks is None:
            object.__setattr__(self, "tasks", self.env.tasks(self.num_tasks))
        else:
            sizes = {x.shape[0] for x in jax.tree.leaves(self.tasks)}
            if sizes != {self.num_tasks}:
                raise ValueError(f"tasks must have a leading axis of num_tasks={self.num_tasks}, got sizes {sizes}")
        if self.objective is None:
            object.__setattr__(self, "objective", imitation_loss(self.model))

    @property
    def likelihood(self):
        return fisher_lib.Gaussian(sigma=self.sigma)

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

    def loss(self, params, batch, hparams):
        out = self.objective(params, batch, hparams)
        return out if isinstance(out, tuple) else (out, {})

    def score(self, key, params, task, hparams):
        traj = self.rollout(key, params, task, hparams, self.eval_envs)
        return normalized_score(traj.action, traj.target)

    def fisher_data(self, key, params, task, hparams):
        traj = self.rollout(key, params, task, hparams, self.num_envs)
        # Samples are whole episodes: move the env axis in front of time.
        inputs = (jnp.swapaxes(traj.obs, 0, 1), jnp.swapaxes(traj.feedback, 0, 1))
        return inputs, jnp.swapaxes(traj.target, 0, 1)

    def predict(self, params, x):
        obs, feedback = x
        _, actions = self.model.apply(params, self.model.initial_carry(), obs, feedback,
                                      method=self.model.sequence)
        return actions
