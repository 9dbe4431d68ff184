"""How a run scores its parameters: the rows of the performance matrix ``R``, by the source's ``score`` or through
the strategy's ``evaluate`` hook, in full or, with ``RunConfig(evaluate_every=k > 1)``, the diagonal alone between
two full rows. :class:`Evaluation` is a part of :class:`~clloop_jax.run.sequential.Run` (its ``config``, ``source``
and ``strategy``)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from clloop_jax.run.config import HParams
from clloop_jax.run.programs import evaluate_source
from clloop_jax.run.state import TrainState
from clloop_jax.sources.base import bind_model_state
from clloop_jax.tree import task_at

__all__ = ["Evaluation"]


class Evaluation:
    """The scoring methods of a run (mixed into :class:`~clloop_jax.run.sequential.Run`)."""

    def scorer(self, params, key, hp: HParams, model_state=(), strategy_state=None):
        """``score(key, task)`` of one evaluation (traceable): ``source.score`` of ``params``, or, when the strategy
        has an ``evaluate`` hook, the score that hook returns for its state ``strategy_state`` (the hook runs once
        here, with the key ``fold_in(key, num_tasks)``, whatever the number of tasks scored after)."""
        source = bind_model_state(self.source, model_state)
        if self.strategy.evaluate is None:
            return lambda k, task: source.score(k, params, task, hp.source)
        score = self.strategy.evaluate(strategy_state, params, source, jax.random.fold_in(key, source.num_tasks),
                                       hp.strategy)
        return lambda k, task: score(k, task, hp.source)

    def evaluate_on(self, params, tasks, key, hp: HParams, model_state=(), strategy_state=None):
        """Scores of ``params`` on every task of ``tasks`` with evaluation key ``key`` (traceable; one vmapped call);
        a batch-norm model with its running averages ``model_state`` (``state.model_state``). A strategy with an
        ``evaluate`` hook scores through it, from its state ``strategy_state`` (``state.strategy``); without the
        hook the program is :func:`~clloop_jax.run.programs.evaluate_source`'s."""
        if self.strategy.evaluate is None:
            return evaluate_source(self.source, params, tasks, key, hp.source, model_state)
        self._check_strategy_state(strategy_state)
        score = self.scorer(params, key, hp, model_state, strategy_state)
        keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(self.source.num_tasks))
        return jax.vmap(score)(keys, tasks)

    def _check_strategy_state(self, strategy_state):
        if self.strategy.evaluate is not None and strategy_state is None:
            raise ValueError(f"strategy_state: strategy {self.strategy.name!r} changes what the run evaluates (an "
                             f"evaluate hook) and needs its state, state.strategy")

    def full_row(self, task_id):
        """Whether the row after task ``task_id`` (an index, possibly traced) evaluates every task: after every
        ``config.evaluate_every``-th task (``task_id + 1`` a multiple of it) and after the last task."""
        k, n = self.config.evaluate_every, self.source.num_tasks
        return ((task_id + 1) % k == 0) | (task_id == n - 1)

    def evaluate_row(self, params, tasks, key, task_id, hp: HParams, model_state=(), strategy_state=None):
        """The row of ``R`` after task ``task_id`` (traceable): :meth:`evaluate_on` where :meth:`full_row` says so,
        otherwise the score on task ``task_id`` alone (the same key, so the same number as the full row's diagonal)
        at its place and NaN elsewhere. The choice is a ``lax.cond``: the skipped tasks' evaluations do not run
        (as long as ``task_id`` is not batched by a ``vmap``)."""
        if self.config.evaluate_every == 1:
            return self.evaluate_on(params, tasks, key, hp, model_state, strategy_state)

        def diagonal(p):
            if self.strategy.evaluate is None:
                source = bind_model_state(self.source, model_state)
                score = source.score(jax.random.fold_in(key, task_id), p, task_at(tasks, task_id), hp.source)
            else:
                scorer = self.scorer(p, key, hp, model_state, strategy_state)
                score = scorer(jax.random.fold_in(key, task_id), task_at(tasks, task_id))
            return jnp.full((self.source.num_tasks,), jnp.nan, score.dtype).at[task_id].set(score)

        full = lambda p: self.evaluate_on(p, tasks, key, hp, model_state, strategy_state)  # noqa: E731
        return jax.lax.cond(self.full_row(task_id), full, diagonal, params)

    def evaluated_state(self, state: TrainState):
        """The strategy's state where its ``evaluate`` hook needs it; None otherwise (nothing more is traced)."""
        return state.strategy if self.strategy.evaluate is not None else None
