"""Task sources: what the continual trainer learns from, one task at a time.

A task source turns "task i" into everything the trainer in :mod:`clloop_jax.run` needs, as pure functions of
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
* ``likelihood``: the output distribution (:class:`~clloop_jax.importance.fisher.Gaussian` or
  :class:`~clloop_jax.importance.fisher.Categorical`), which names the Fisher's expectation and the divergence kind.

Optional capabilities (:data:`CAPABILITIES`), each read through :func:`capability` with its default when a source
does not define it:

* ``hparams`` (none: :class:`~clloop_jax.strategies.base.NoHParams`): the source's traced hyperparameters;
* ``streaming`` (False): with ``stream_init(key, task, hparams)`` and ``stream_batch(key, params, task, hparams,
  stream)``, the environments keep running from one batch to the next within a task;
* ``minibatch_passes`` (1): with ``minibatches(key, batch, hparams)``, a batch is learned as that many updates on
  its minibatches (PPO's epochs);
* ``rehearse`` (None): ``rehearse(memory_inputs, current_samples)`` puts remembered inputs under the current
  training conditions (a labelled stream's class mask);
* ``mixture_batch`` (None): ``mixture_batch(key, params, tasks, weights, hparams)``, a batch whose every sample
  draws its own task from ``weights [K]``, for streams with hidden task boundaries (:mod:`clloop_jax.taskfree`).
* ``features`` (None): ``features(params, inputs) -> (h_1 [N, u_1], ..., h_L [N, u_L])``, the activations of the
  model's hidden layers on per-sample ``inputs`` (those of ``fisher_data``), the last one the representation its
  output reads: what the plasticity monitors measure (dormant units, effective rank, feature norm;
  :mod:`clloop_jax.plasticity`). A labelled stream's MLP gives its hidden layers after the ReLU; the recurrent
  agent of the closed loop and of gymnax gives its fusion layer and its recurrent state, at every step of the
  samples;
* ``model_state`` (False): the model carries non-trainable collections (batch norm's running averages), which
  the run keeps in ``TrainState.model_state`` next to the trainable ``params`` (never in the optimizer, never
  penalised). Such a source defines

  - ``init_model_state(key)``: the collections before training (``init_params(key)`` then holds the trainable
    ones only);
  - ``with_model_state(model_state)``: the same source with those collections bound: its ``predict``, ``score``
    (and whatever uses them: the Fisher, MAS, the divergence probes, a memory's stored outputs) run the model in
    inference mode on the bound statistics, frozen, so a per-sample importance is a function of one sample; its
    ``loss`` runs it in training mode (the batch's statistics) and returns the new collections as
    ``aux["model_state"]``, which the run stores after the step (unless the step is skipped as non-finite);
    ``sample_loss`` (replay) runs it in training mode on the replayed samples as a batch of their own, and the
    running averages it would give are dropped.

  The run binds the state wherever it hands the source on (:func:`bind_model_state`); a source without the
  capability is handed on as it is and its programs do not change.

A source's ``loss`` may also return ``aux["outputs"]``: what ``predict`` gives on every sample of
``samples(batch)``'s inputs, computed by the loss's own forward pass (a labelled stream's model without batch norm
does). The run then hands the strategy's ``replay_loss`` a view of the source (:class:`KnownOutputs`) on which
:func:`sample_outputs` of exactly those parameters and inputs returns them instead of a second forward pass, so that
distillation on the current batch (LwF) backpropagates once through the model, not twice.

Sources compare and hash by their configuration, not by their task arrays: the run passes the tasks to its compiled
program as arguments, so equal configurations share one compilation.

The sources that ship: :class:`~clloop_jax.sources.world.EnvSource` (the closed loop: an agent acting in an
environment), :class:`~clloop_jax.sources.supervised.SupervisedSource` (labelled task streams: permuted and split
digits) and :class:`~clloop_jax.sources.gymnax.GymnaxSource` (gymnax environments, learned from reward).
"""

from __future__ import annotations

from typing import Any, Protocol

__all__ = ["TaskSource", "REQUIRED", "CAPABILITIES", "bind_model_state", "capability", "check_source", "KnownOutputs",
           "sample_outputs"]

#: What every task source defines.
REQUIRED = ("num_tasks", "tasks", "likelihood", "init_params", "batch", "loss", "score", "fisher_data", "predict")

#: The optional capabilities and what a source that does not define one has.
CAPABILITIES = {"hparams": None, "streaming": False, "minibatch_passes": 1, "rehearse": None, "mixture_batch": None,
                "features": None, "model_state": False}


def capability(source, name: str):
    """The source's optional capability ``name`` (one of :data:`CAPABILITIES`), or its default."""
    if name not in CAPABILITIES:
        raise ValueError(f"name must be one of {list(CAPABILITIES)}, got {name!r}")
    value = getattr(source, name, CAPABILITIES[name])
    if name == "hparams" and value is None:
        from clloop_jax.strategies.base import NoHParams
        return NoHParams()
    return value


def check_source(source) -> None:
    """``TypeError`` naming what is missing unless ``source`` defines every member of :data:`REQUIRED`."""
    missing = [name for name in REQUIRED if not hasattr(source, name)]
    if source is None or missing:
        raise TypeError(f"source must be a task source (EnvSource, SupervisedSource or one with {list(REQUIRED)})"
                        f", got {type(source).__name__}" + (f" missing {missing}" if source is not None else ""))
    if capability(source, "model_state"):
        missing = [name for name in ("init_model_state", "with_model_state") if not hasattr(source, name)]
        if missing:
            raise TypeError(f"source: a source with model_state = True must define init_model_state and "
                            f"with_model_state; {type(source).__name__} is missing {missing}")


def bind_model_state(source, model_state):
    """``source`` with the model's non-trainable collections ``model_state`` bound
    (``source.with_model_state(model_state)``), or ``source`` itself when it has no ``model_state`` capability."""
    if not capability(source, "model_state"):
        return source
    return source.with_model_state(model_state)

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


class KnownOutputs:
    """``source`` that knows its model's per-sample ``outputs`` for the parameters ``params`` on the inputs
    ``inputs`` (the very objects the run passes on: the batch being learned and the parameters it is learned with),
    so that :func:`sample_outputs` gives them without a forward pass; every other member is the source's."""

    def __init__(self, source, params, inputs, outputs):
        self._source, self._known = source, (params, inputs, outputs)

    def __getattr__(self, name):
        if name.startswith("_"):   # not yet set (a copy being made): no delegation, no recursion
            raise AttributeError(name)
        return getattr(self._source, name)

    def known_outputs(self, params, inputs):
        """The known outputs when ``params`` and ``inputs`` are those they were computed for, else None."""
        known_params, known_inputs, outputs = self._known
        return outputs if params is known_params and inputs is known_inputs else None


def sample_outputs(source, params, inputs):
    """The model's output on every sample of ``inputs`` (``predict`` vmapped over them); on a :class:`KnownOutputs`
    view, the outputs its loss already computed for those parameters and inputs."""
    import jax
    known = source.known_outputs(params, inputs) if isinstance(source, KnownOutputs) else None
    return jax.vmap(source.predict, in_axes=(None, 0))(params, inputs) if known is None else known
