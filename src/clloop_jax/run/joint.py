"""The multi-task upper bound: one run that learns every task at once, from a mixture of their batches."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp

from clloop_jax.run.config import HParams, RunConfig
from clloop_jax.run.programs import evaluate_source
from clloop_jax.run.sequential import Run, make_run
from clloop_jax.strategies.base import NoHParams
from clloop_jax.validation import check_key

__all__ = ["make_joint_run"]


def make_joint_run(config: RunConfig, source) -> Callable:
    """The multi-task upper bound: one model trained on all tasks at once, every update seeing every task.

    Trains for ``episodes_per_task * num_tasks`` updates through the same update step as the continual run (without
    a strategy's penalty), each on the mean loss of one batch of every task. Returns
    ``joint(key, hparams) -> scores [num_tasks]``, compiled once, evaluated with the same fixed evaluation keys as
    :class:`Run` for the same run key. ``hparams`` is that of ``make_run(config, source)``; its strategy part is
    ignored.
    """
    run = make_run(dataclasses.replace(config, strategy="none", monitors=()), source)
    joint_source = _JointSource(source)
    joint_run = Run(run.config, joint_source, run.strategy, ())

    def joint(key, hp: HParams):
        hp = hp._replace(strategy=NoHParams())
        k_init, k_eval, k_tasks = Run.split_key(key)
        state = joint_run.init_on(source.tasks, key, hp)
        task_ids = jnp.arange(source.num_tasks)

        def step(st, k):
            keys = jax.vmap(lambda i: jax.random.fold_in(k, i))(task_ids)
            batches = jax.vmap(lambda task, kk: source.batch(kk, st.params, task, hp.source))(source.tasks, keys)
            st, _ = joint_run.update(st, batches, k, hp)
            return st, None

        keys = jax.random.split(k_tasks, config.episodes_per_task * source.num_tasks)
        state, _ = jax.lax.scan(step, state, keys)
        return evaluate_source(source, state.params, source.tasks, k_eval, hp.source, state.model_state)

    jitted = jax.jit(joint)

    def call(key, hp: HParams):
        key = check_key("key", key)
        if not isinstance(hp, HParams):
            raise TypeError(f"hp must be the run's HParams (from run.hparams(...)), got {type(hp).__name__}")
        hp.validate()
        return jitted(key, hp)

    return call


@dataclasses.dataclass(frozen=True)
class _JointSource:
    """A source whose batch is one batch of every task (leading task axis) and whose loss is their mean."""

    base: Any

    def __getattr__(self, name):
        return getattr(self.base, name)

    def loss(self, params, batches, hp_source):
        def one(batch):
            loss, aux = self.base.loss(params, batch, hp_source)
            aux.pop("outputs", None)   # one batch per task: no samples(batch) of their own to give outputs for
            return loss, aux

        losses, aux = jax.vmap(one)(batches)
        # a batch-norm model: each task's batch is normalised by its own statistics; the new running averages are
        # the mean over tasks of each task's update (the update by the mean of the tasks' batch statistics)
        return jnp.mean(losses), jax.tree.map(lambda x: jnp.mean(x, axis=0), aux)

    def with_model_state(self, model_state):
        return _JointSource(self.base.with_model_state(model_state))
