"""Task sources: what the continual trainer learns from, one task at a time.

A task source turns "task i" into everything the trainer in :mod:`clloop_jax.loop` needs, as pure functions of
arrays and keys:

* ``tasks``: a pytree whose leaves have a leading ``num_tasks`` axis; one slice is one task (an environment's
  ``EnvParams``, or a labelled dataset's per-task arrays). The trainer indexes it with a traced task id, so
  switching task never recompiles.
* ``init_params(key)``: the model's initial parameters.
* ``hparams``: the source's own numeric hyperparameters, a ``NamedTuple`` (``EnvHParams(feedback_weight)`` for
  the closed loop, none for labelled streams); the run hands the traced values back as ``hparams`` below.
* ``batch(key, params, task, hparams)``: data to learn from (a closed-loop rollout, or a minibatch).
* ``loss(params, batch, hparams) -> (loss, aux)``: the objective; ``aux["score"]`` is the batch's score, and every
  scalar in ``aux`` is recorded in the run's traces.
* ``score(key, params, task, hparams)``: the task's normalized score (evaluation).
* ``fisher_data(key, params, task, hparams) -> (inputs, targets)``: per-sample inputs (leading sample axis) and
  observed targets of the task: one draw serves, at a task's end, the Fisher diagonal, MAS importance, the
  functional-divergence probes and a rehearsal memory.
* ``samples(batch) -> (inputs, targets)``: a training batch in the same per-sample form (rehearsal memories).
* ``sample_loss(params, inputs, targets)``: the objective on per-sample data (replay of remembered samples).
* ``predict(params, x)``: one sample's model outputs, the function those importances differentiate.
* ``likelihood``: the output distribution (:class:`~clloop_jax.fisher.Gaussian` or
  :class:`~clloop_jax.fisher.Categorical`), which names the Fisher's expectation and the divergence kind.

Sources compare and hash by their configuration, not by their task arrays: the run passes the tasks to its compiled
program as arguments, so equal configurations share one compilation.

Two sources ship here: :class:`EnvSource` (the closed loop: an agent acting in an environment) and
:class:`SupervisedSource` (labelled task streams: permuted and split digits).
"""

from __future__ import annotations

import dataclasses
import numbers
from typing import Any, Callable, NamedTuple, Optional, Protocol

import jax
import jax.numpy as jnp

from clloop_jax import datasets as data_lib
from clloop_jax import fisher as fisher_lib
from clloop_jax.envs.base import check_world, normalized_score
from clloop_jax.envs.rollout import Trajectory, rollout
from clloop_jax.strategies.base import NoHParams, nonnegative
from clloop_jax.validation import ArgumentTypeError, check_float, check_methods


class TaskSource(Protocol):
    """The interface every task source implements (see the module docstring)."""

    num_tasks: int
    tasks: Any
    likelihood: Any
    hparams: Any

    def init_params(self, key): ...

    def batch(self, key, params, task, hparams): ...

    def loss(self, params, batch, hparams): ...

    def score(self, key, params, task, hparams): ...

    def fisher_data(self, key, params, task, hparams): ...

    def samples(self, batch): ...

    def sample_loss(self, params, inputs, targets): ...

    def predict(self, params, x): ...


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
            _positive_int(name, getattr(self, name))
            object.__setattr__(self, name, int(getattr(self, name)))
        _positive_int("num_steps", self.num_steps, allow_none=True)
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

    def predict(self, params, x):
        obs, feedback = x
        _, actions = self.model.apply(params, self.model.initial_carry(), obs, feedback,
                                      method=self.model.sequence)
        return actions


# ----------------------------------------------------------------------------------------------------------------
# Labelled task streams
# ----------------------------------------------------------------------------------------------------------------


class SupervisedBatch(NamedTuple):
    """A minibatch of one task: inputs ``x [B, D]``, labels ``y [B]`` and the task's training mask ``mask [C]``
    (the head outputs active in the softmax)."""

    x: jax.Array
    y: jax.Array
    mask: jax.Array


def _positive_int(name: str, value, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        expected = "an integer >= 1 or None" if allow_none else "an integer >= 1"
        raise ValueError(f"{name} must be {expected}, got {value!r}")


@dataclasses.dataclass(frozen=True)
class SupervisedSource:
    """Labelled tasks: one task of a :class:`~clloop_jax.datasets.TaskStream` (permuted or split) per task.

    ``tasks`` is the stream itself (every leaf has a leading task axis, so the trainer slices one task with a
    traced index). The model is any flax module mapping one input ``x [D]`` (or a batch ``[..., D]``) to logits
    ``[..., stream.num_classes]``: :class:`~clloop_jax.model.MLP`, or a
    :class:`~clloop_jax.model.SequenceClassifier` around a ``CrossModalModel``.

    * ``batch``: ``batch_size`` training samples of the task drawn without replacement with the key, and the
      task's ``train_mask`` (:class:`SupervisedBatch`). Streams hold no padded samples (split tasks are cut to
      equal size by :func:`~clloop_jax.datasets.split_stream`), so every row of a task may be drawn.
    * ``loss``: :func:`~clloop_jax.datasets.masked_cross_entropy` under the training mask; ``aux["score"]`` is
      the batch accuracy under the same mask.
    * ``score``: test accuracy under the task's ``test_mask``, in ``[0, 1]``, on all test samples
      (``eval_size=None``) or on ``eval_size`` of them drawn with the key.
    * ``likelihood``: :class:`~clloop_jax.fisher.Categorical`. Use ``RunConfig(fisher_variant="exact")``: with
      ``C`` head outputs it costs ``C`` backward passes per sample, and it has no sampling noise.
    * ``fisher_data``: ``fisher_size`` training samples of the task drawn with the key. Inputs are pairs
      ``(x [n, D], mask [n, C])`` of the samples and the task's training mask; targets are the labels.
    * ``predict(params, (x, mask))``: one sample's masked logits, ``masked_logits(model(x), mask)``.

    Which outputs the Fisher ranges over: the masked-out logits are set to
    :data:`~clloop_jax.datasets.MASK_VALUE`, so their probability is exactly 0 and they carry no gradient. The
    Fisher's expectation over labels therefore runs over the outputs the task was trained on (the task's
    ``train_mask``): the task's own block in task-incremental learning, the whole head in domain-incremental
    learning, and all classes seen so far in class-incremental learning (as in van de Ven & Tolias 2019). The
    same masked outputs feed MAS's output-norm importance (masked outputs contribute nothing to its gradient)
    and the functional-divergence probes, each probe keeping the mask of the task it was drawn from.

    Joint training (:func:`~clloop_jax.loop.make_joint_run`) uses each task's training mask too; in the
    class-incremental scenario that never trains early tasks against later classes. :meth:`joint` returns the
    source whose training masks are the evaluation masks, the multi-task upper bound of the literature.

    Args:
      model: a flax module, ``model.apply(params, x [..., D]) -> logits [..., stream.num_classes]``.
      stream: the :class:`~clloop_jax.datasets.TaskStream` to learn.
      batch_size: training samples per update (at most the task's number of training samples).
      eval_size: test samples per score; None uses every test sample of the task.
      fisher_size: training samples per Fisher diagonal (and MAS importance); None uses
        ``min(256, number of training samples)``.
    """

    model: Any
    stream: data_lib.TaskStream = dataclasses.field(compare=False)
    batch_size: int = 128
    eval_size: Optional[int] = None
    fisher_size: Optional[int] = None

    def __post_init__(self):
        check_methods("model", self.model, ["init", "apply"], example="MLP(output_dim=10)")
        if not isinstance(self.stream, data_lib.TaskStream):
            raise ValueError(f"stream must be a clloop_jax.datasets.TaskStream, got {type(self.stream).__name__}")
        if self.stream.num_tasks == 0 or int(self.stream.x.shape[0]) == 0:
            raise ValueError(f"stream must hold at least one task, got a {self.stream.kind} TaskStream of 0 tasks "
                             f"(x of shape {tuple(self.stream.x.shape)})")
        n_train, n_test = int(self.stream.x.shape[1]), int(self.stream.x_test.shape[1])
        _positive_int("batch_size", self.batch_size)
        _positive_int("eval_size", self.eval_size, allow_none=True)
        _positive_int("fisher_size", self.fisher_size, allow_none=True)
        if self.batch_size > n_train:
            raise ValueError(f"batch_size must be at most the task's {n_train} training samples, "
                             f"got {self.batch_size}")
        if self.eval_size is not None and self.eval_size > n_test:
            raise ValueError(f"eval_size must be at most the task's {n_test} test samples (or None), "
                             f"got {self.eval_size}")
        if self.fisher_size is None:
            object.__setattr__(self, "fisher_size", min(256, n_train))
        elif self.fisher_size > n_train:
            raise ValueError(f"fisher_size must be at most the task's {n_train} training samples (or None), "
                             f"got {self.fisher_size}")
        x0 = self.stream.x[0, 0]
        out = jax.eval_shape(lambda k: self.model.apply(self.model.init(k, x0), x0), jax.random.key(0))
        if tuple(out.shape) != (self.stream.num_classes,):
            raise ValueError(f"model must map one input of shape {tuple(x0.shape)} to logits of shape "
                             f"({self.stream.num_classes},) (stream.num_classes for the {self.stream.scenario!r} "
                             f"scenario), got shape {tuple(out.shape)}")

    # ----- the task-source interface ------------------------------------------------------------------------
    @property
    def num_tasks(self) -> int:
        return self.stream.num_tasks

    @property
    def tasks(self) -> data_lib.TaskStream:
        return self.stream

    @property
    def likelihood(self):
        return fisher_lib.Categorical()

    @property
    def hparams(self) -> NoHParams:
        return NoHParams()

    def init_params(self, key):
        x = self.stream.x
        return self.model.init(key, jnp.zeros(x.shape[2:], x.dtype))

    def batch(self, key, params, task, hparams):
        del params, hparams
        idx = jax.random.choice(key, task.x.shape[0], (self.batch_size,), replace=False)
        return SupervisedBatch(task.x[idx], task.y[idx], task.train_mask)

    def loss(self, params, batch, hparams):
        del hparams
        logits = self.model.apply(params, batch.x)
        loss = data_lib.masked_cross_entropy(logits, batch.y, batch.mask)
        return loss, {"score": data_lib.accuracy(logits, batch.y, batch.mask)}

    def score(self, key, params, task, hparams):
        del hparams
        x, y = task.x_test, task.y_test
        if self.eval_size is not None and self.eval_size < x.shape[0]:
            idx = jax.random.choice(key, x.shape[0], (self.eval_size,), replace=False)
            x, y = x[idx], y[idx]
        return data_lib.accuracy(self.model.apply(params, x), y, task.test_mask)

    def fisher_data(self, key, params, task, hparams):
        del params, hparams
        n = self.fisher_size
        idx = jax.random.choice(key, task.x.shape[0], (n,), replace=False)
        return self.samples(SupervisedBatch(task.x[idx], task.y[idx], task.train_mask))

    def samples(self, batch: SupervisedBatch):
        """Per-sample ``((x, mask), y)``, each sample keeping its task's training mask."""
        mask = jnp.broadcast_to(batch.mask, batch.x.shape[:1] + batch.mask.shape)
        return (batch.x, mask), batch.y

    def rehearse(self, inputs, current):
        """Remembered ``(x, mask)`` made ready to be learned next to the ``current`` samples. Class-incremental:
        under the current training mask (every class seen so far, as van de Ven & Tolias 2019 replay), so old and
        new classes compete in one softmax. Task- and domain-incremental: under the mask of the task the sample
        came from (its own head; domain-incremental tasks share one), so a replayed sample is never trained on
        another task's outputs."""
        x, mask = inputs
        if self.stream.scenario != "class":
            return x, mask
        return x, jnp.broadcast_to(current[0][1][0], mask.shape)

    def sample_loss(self, params, inputs, targets):
        """The masked cross-entropy on per-sample data (each sample under its own mask)."""
        return data_lib.masked_cross_entropy(self.predict(params, inputs), targets, inputs[1])

    def predict(self, params, x):
        inputs, mask = x
        return data_lib.masked_logits(self.model.apply(params, inputs), mask)

    # ----- helpers -------------------------------------------------------------------------------------------
    def joint(self) -> "SupervisedSource":
        """The same source with every task trained under its evaluation mask (``train_mask = test_mask``): the
        multi-task upper bound, for :func:`~clloop_jax.loop.make_joint_run`. Identical to ``self`` in the task-
        and domain-incremental scenarios, where the two masks agree."""
        stream = self.stream.replace(train_mask=self.stream.test_mask)
        return dataclasses.replace(self, stream=stream)
