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

Sources compare and hash by their configuration, not by their task arrays: the run passes the tasks to its compiled
program as arguments, so equal configurations share one compilation.

Two sources ship here: :class:`EnvSource` (the closed loop: an agent acting in an environment) and
:class:`SupervisedSource` (labelled task streams: permuted and split digits).
"""

from __future__ import annotations

from typing import Any, Protocol

__all__ = ["TaskSource"]



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
