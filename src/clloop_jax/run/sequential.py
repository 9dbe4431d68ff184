"""The continual-learning run: one jittable program over any task source, built from small parts.

``make_run(config, source)`` returns a :class:`Run`. Calling it, ``run(key, hparams)``, trains on every task of the
source in sequence and evaluates on every task before the first and after each one, as one compiled program::

    for phase in scan(num_tasks + 1):
        R[phase - 1] = score on every task (one vmapped evaluation, fixed keys)    # phase 0: the baseline
        if phase < num_tasks:
            for episode in scan(episodes):
                batch = source.batch(key, params, task)           # a closed-loop rollout, or a minibatch
                state, trace = run.learn(state, batch, key, hp)   # the update step (once per minibatch)
            consolidate: one draw of the task's data serves the importance (Fisher / MAS, only if asked for),
                         the strategy and the monitors

The parts:

* the **task source** (:mod:`clloop_jax.sources`): batches, the loss, the score and per-sample data of each task;
* the **strategy** (:mod:`clloop_jax.strategies`): a penalty, accumulators, a consolidation, rehearsal hooks;
* the **monitors** (:mod:`clloop_jax.monitors`): opt-in divergence measurements, absent from the program when off;
* the **stream** (optional): a source with ``streaming = True`` keeps its environments running from one batch to
  the next within a task (``stream_init`` at the task's start, ``stream_batch`` per episode), and one with
  ``minibatch_passes > 1`` has each batch learned as several updates on its minibatches (:meth:`Run.learn`);
* the **update step** :meth:`Run.update` ``(state, batch, key, hp) -> (state, trace)``, which the continual run,
  the joint upper bound (:func:`make_joint_run`) and the facade's ``train_step`` all use.

Hyperparameters are one traced pytree, :class:`HParams` ``(learning_rate, strategy, source)``, each part reaching
only what uses it; ``run.hparams(lam=3.0, feedback_weight=0.3)`` builds it by name, ``hp.replace(lam=...)`` changes
fields by name and ``hp.axes("lam")`` gives the ``in_axes`` that sweep them::

    keys = jax.random.split(jax.random.key(0), 4)
    state, results = jax.vmap(run, in_axes=(0, None))(keys, hp)               # 4 seeds, one compilation
    sweep = hp.replace(lam=jnp.array([0.0, 1.0, 10.0]))
    _, swept = jax.vmap(run, in_axes=(None, sweep.axes("lam")))(keys[0], sweep)

Compiled programs are cached per configuration, not per object: the task arrays are arguments of the program, so
two runs with equal configurations, sources and strategies (whatever their tasks' values) share one compilation.
The per-task function (``run.train_task``) is compiled once for all tasks, for host-side progress, checkpoints and
resume; ``run.run_stepwise`` gives the same numbers as ``run(key, hp)``.

A non-finite loss, gradient or parameter never reaches the state: that update is skipped (the last good state is
kept) and the episode's ``finite`` trace entry is False, so the host can stop and say where
(:func:`clloop_jax.run.errors.check_finite` does it for a whole run).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional, Tuple

import jax
import jax.numpy as jnp
import optax

from clloop_jax.importance import fisher as fisher_lib
from clloop_jax.monitors import Monitor, get_monitor
from clloop_jax.run.config import HParams, Hyperparameters, RunConfig
from clloop_jax.run.errors import all_finite
from clloop_jax.run.host import task_loop
from clloop_jax.run.evaluation import Evaluation
from clloop_jax.run.programs import Program, jit_evaluate
from clloop_jax.run.state import RunResults, TrainState, summarize_trace
from clloop_jax.sources.base import KnownOutputs, bind_model_state, capability, check_source
from clloop_jax.strategies.base import Strategy, get_strategy
from clloop_jax.tree import task_at
from clloop_jax.validation import check_int, check_key, is_int
from clloop_jax.workflow.sharding import shard_seeds

__all__ = ["Run", "RunResults", "TrainState", "make_run", "task_at"]


@dataclasses.dataclass(frozen=True)
class Run(Hyperparameters, Evaluation):
    """A continual-learning run over ``source``, built by :func:`make_run` (see the module docstring)."""

    config: RunConfig
    source: Any
    strategy: Strategy
    monitors: Tuple[Monitor, ...]

    # ----- pieces -----------------------------------------------------------------------------------------
    def optimizer(self, hp: HParams) -> optax.GradientTransformation:
        opt = self.config.optimizer(hp.learning_rate)
        if self.config.max_grad_norm is not None:
            opt = optax.chain(optax.clip_by_global_norm(self.config.max_grad_norm), opt)
        return opt

    @staticmethod
    def split_key(key):
        """The run key's three streams: ``(initialisation, evaluation, tasks)``."""
        k_init, k_eval, k_tasks = jax.random.split(key, 3)
        return k_init, k_eval, k_tasks

    def _importance_kinds(self):
        kinds = {self.strategy.importance} | {m.importance for m in self.monitors}
        return sorted(k for k in kinds if k is not None)

    def init_on(self, tasks, key, hp: HParams) -> TrainState:
        """The state before the first task, for the task arrays ``tasks`` (traceable; :meth:`init` compiles it)."""
        k_init, _, k_tasks = self.split_key(key)
        params = self.source.init_params(k_init)
        model_state = self.source.init_model_state(k_init) if capability(self.source, "model_state") else ()
        src = bind_model_state(self.source, model_state)
        data_shape = None
        if any(m.uses_data for m in self.monitors):
            data_shape = jax.eval_shape(src.fisher_data, k_tasks, params, task_at(tasks, 0), hp.source)
        probe = None
        if any(m.init_with_data for m in self.monitors):  # a fixed probe: a draw of the first task's data
            probe = src.fisher_data(jax.random.fold_in(k_init, 1), params, task_at(tasks, 0), hp.source)
        monitors = tuple(m.init(params, probe if m.init_with_data else data_shape, src.num_tasks, src)
                         for m in self.monitors)
        if self.strategy.init_with_example:
            task0 = task_at(tasks, 0)
            samples = jax.eval_shape(lambda: src.samples(src.batch(k_tasks, params, task0, hp.source)))
            example = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape[1:], s.dtype), samples)
            strategy_state = self.strategy.init(params, hp.strategy, example, src)
        else:
            strategy_state = self.strategy.init(params, hp.strategy)
        return TrainState(params, self.optimizer(hp).init(params), strategy_state, monitors,
                          jnp.zeros((), jnp.int32), model_state)

    def importance(self, key, params, data, hp: HParams, kind: str, model_state=()):
        """The diagonal importance ``kind`` (``"fisher"`` or ``"mas"``) of ``params`` on per-sample ``data``; a
        batch-norm model predicts with its running averages ``model_state`` frozen (inference mode)."""
        inputs, targets = data
        predict = bind_model_state(self.source, model_state).predict
        if kind == "mas":
            return fisher_lib.mas_importance(predict, params, inputs,
                                             chunk_size=self.config.fisher_chunk_size,
                                             method=self.config.fisher_method)
        return fisher_lib.fisher_diagonal(
            predict, params, inputs, targets, likelihood=self.source.likelihood,
            variant=self.config.fisher_variant, key=key, num_samples=self.config.fisher_samples,
            chunk_size=self.config.fisher_chunk_size, method=self.config.fisher_method)

    def reset_moments(self, hp: HParams, opt_state, reset):
        """``opt_state`` with its parameter-shaped parts (Adam's first and second moments, a momentum) zeroed where
        the boolean pytree ``reset`` (shaped like the parameters; None: nowhere) is True, and unchanged elsewhere.

        The parts are found with ``optax.tree_utils.tree_map_params``; a part not shaped like the parameters is kept
        as it is: Adam's step count (one for every weight, so a re-initialised weight's bias correction continues
        from the run's count, where Dohare et al.'s AdamGnT restarts a per-weight count), or the factored moments
        of Adafactor (whose rows and columns mix several weights). An optimizer whose parameter-shaped state is not
        a running statistic of gradients (a copy of the parameters, as in lookahead or schedule-free) would have that
        copy zeroed too: use the renewing strategies with moment-based optimizers."""
        if reset is None:
            return opt_state
        return optax.tree_utils.tree_map_params(
            self.optimizer(hp), lambda s, r: jnp.where(r, jnp.zeros_like(s), s), opt_state, reset)

    # ----- the update step --------------------------------------------------------------------------------
    def update(self, state: TrainState, batch, key, hp: HParams):
        """One optimizer step on ``batch``: ``(state, trace)``, trace a dict of scalars.

        The gradient is that of the source's loss plus the strategy's replay loss (that alone when the strategy
        replaces the task loss), plus the penalty's; the
        strategy may project it; the optimizer (with clipping) applies it; the strategy accumulates and observes;
        then it may renew parts of the new parameters (their optimizer moments zeroed, :meth:`reset_moments`).
        A non-finite loss, gradient or new parameter leaves ``state`` unchanged and records ``finite = False``.
        The gradient is w.r.t. the trainable ``params`` only; a batch-norm model's running averages come from the
        training-mode pass of the loss (``aux["model_state"]``) and are stored with the step.
        """
        strat, src = self.strategy, bind_model_state(self.source, state.model_state)
        k_replay, k_project, k_observe = jax.random.split(key, 3)
        params = state.params
        uses_samples = any(h is not None for h in (strat.replay_loss, strat.observe, strat.project, strat.renew))
        samples = src.samples(batch) if uses_samples else None

        def task_loss(p):
            # a strategy that replaces the task loss gets the source's only for its records, not differentiated
            loss, aux = src.loss(jax.lax.stop_gradient(p) if strat.replaces_task_loss else p, batch, hp.source)
            outputs = aux.pop("outputs", None)   # the batch's outputs, for the strategy to reuse (sources.base)
            if strat.replay_loss is not None:
                view = src if outputs is None or strat.replaces_task_loss else KnownOutputs(src, p, samples[0],
                                                                                            outputs)
                replay = strat.replay_loss(state.strategy, p, samples, view, k_replay, hp.strategy)
                aux = {**aux, "replay_loss": replay}
                loss = replay if strat.replaces_task_loss else loss + replay
            return loss, aux

        (loss, aux), task_grads = jax.value_and_grad(task_loss, has_aux=True)(params)
        model_state = aux.pop("model_state", state.model_state)
        grads = task_grads
        penalty = jnp.zeros((), jnp.float32)
        if strat.penalty is not None:
            penalty, pen_grads = jax.value_and_grad(lambda p: strat.penalty(state.strategy, p, hp.strategy))(params)
            grads = jax.tree.map(jnp.add, task_grads, pen_grads)
        if strat.project is not None:
            grads = strat.project(state.strategy, params, grads, samples, src, k_project, hp.strategy)
        updates, opt_state = self.optimizer(hp).update(grads, state.opt_state, params)
        new_params = optax.apply_updates(params, updates)
        strategy_state = state.strategy
        if strat.accumulate is not None:
            strategy_state = strat.accumulate(strategy_state, params, new_params, task_grads, hp.strategy)
        if strat.observe is not None:
            strategy_state = strat.observe(strategy_state, params, samples, src, k_observe, hp.strategy)
        if strat.renew is not None:  # a stream of its own: the three above are the same with or without the hook
            strategy_state, new_params, reset = strat.renew(strategy_state, new_params, samples, src,
                                                            jax.random.fold_in(key, 3), hp.strategy)
            opt_state = self.reset_moments(hp, opt_state, reset)
        finite = all_finite(loss, penalty, grads, new_params)
        new = state._replace(params=new_params, opt_state=opt_state, strategy=strategy_state, model_state=model_state)
        new = jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, state)
        trace = {"loss": loss, "penalty": penalty, "finite": finite}
        trace.update({k: v for k, v in aux.items() if jnp.ndim(v) == 0})
        if strat.trace is not None:
            trace.update(strat.trace(new.strategy))
        for monitor, m_state in zip(self.monitors, new.monitors):
            if monitor.update is not None:
                previous = (new.params, params) if monitor.update_with_previous else (new.params,)
                trace.update(monitor.update(m_state, *previous))
        return new, trace

    # ----- one task ---------------------------------------------------------------------------------------
    def _train_task(self, state: TrainState, tasks, key, task_id, hp: HParams):
        task = task_at(tasks, task_id)
        if self.strategy.boundary is not None:
            state = self._boundary(state, jax.random.fold_in(key, 3), task_id, hp)
        if self.config.reset_optimizer:
            state = state._replace(opt_state=self.optimizer(hp).init(state.params))

        src = self.source
        streaming = bool(capability(src, "streaming"))

        def episode(carry, k):
            st, stream = carry
            k_batch, k_update = jax.random.split(k)
            if streaming:
                batch, stream = src.stream_batch(k_batch, st.params, task, hp.source, stream)
            else:
                batch = src.batch(k_batch, st.params, task, hp.source)
            st, trace = self.learn(st, batch, k_update, hp)
            return (st, stream), trace

        E = self.config.episodes_per_task
        keys = jax.random.split(jax.random.fold_in(key, 0), E)
        # a streaming source's environments start afresh with every task and continue from one batch to the next
        stream = src.stream_init(jax.random.fold_in(key, 2), task, hp.source) if streaming else None
        measuring = [(m, i) for i, m in enumerate(self.monitors) if m.measure is not None]
        measured = set()  # the names of the measurements (NaN between two of them)
        if not measuring:
            (state, _), trace = jax.lax.scan(episode, (state, stream), keys)
        else:
            every = self.config.measure_every or E

            def chunk(carry, ks):
                (st, stream), tr = jax.lax.scan(episode, carry, ks)
                for monitor, i in measuring:
                    src_now = bind_model_state(self.source, st.model_state)
                    for name, value in monitor.measure(st.monitors[i], st.params, src_now).items():
                        measured.add(name)
                        tr[name] = jnp.full((every,), jnp.nan, jnp.result_type(value)).at[-1].set(value)
                return (st, stream), tr

            (state, _), trace = jax.lax.scan(chunk, (state, stream), keys.reshape((E // every, every)))
            trace = jax.tree.map(lambda x: x.reshape((E,)), trace)
        if self.config.traces == "tasks":
            trace = summarize_trace(trace, measured)
        return self._consolidate(state, jax.random.fold_in(key, 1), task_id, task, hp), trace

    def _boundary(self, state: TrainState, key, task_id, hp: HParams) -> TrainState:
        """The strategy's ``boundary`` hook at the start of every task but the first (it may replace the parameters)."""
        def renew(st):
            src = bind_model_state(self.source, st.model_state)
            strategy_state, params = self.strategy.boundary(st.strategy, st.params, src, key, hp.strategy)
            return st._replace(strategy=strategy_state, params=params)

        return jax.lax.cond(task_id > 0, renew, lambda st: st, state)

    def learn(self, state: TrainState, batch, key, hp: HParams):
        """What one episode's batch teaches: one :meth:`update` on it, or, when the source splits a batch into
        minibatches (``source.minibatch_passes > 1``: e.g. several PPO epochs of minibatches over one collected
        rollout) or streams (``source.streaming``: a continued rollout is always learned from what
        ``source.minibatches`` makes of it, even as one pass), one update per minibatch in the order
        ``source.minibatches(key, batch, hp)`` gives them. The trace is the mean over those updates (``finite``: all
        of them)."""
        src = self.source
        passes = int(capability(src, "minibatch_passes"))
        if passes == 1 and not capability(src, "streaming"):
            return self.update(state, batch, key, hp)
        k_split, k_update = jax.random.split(key)
        minibatches = src.minibatches(k_split, batch, hp.source)

        def one(st, x):
            mb, k = x
            return self.update(st, mb, k, hp)

        state, traces = jax.lax.scan(one, state, (minibatches, jax.random.split(k_update, passes)))
        trace = {name: jnp.all(v) if name == "finite" else jnp.mean(v, axis=0) for name, v in traces.items()}
        return state, trace

    def _consolidate(self, state: TrainState, key, task_id, task, hp: HParams) -> TrainState:
        k_data, k_consolidate = jax.random.split(key)
        data = self.source.fisher_data(k_data, state.params, task, hp.source) if self.needs_data() else None
        return self.consolidate(state, k_consolidate, task_id, data, hp)

    def needs_data(self) -> bool:
        """Whether a consolidation uses the task's data (an importance, a strategy or a monitor asks for it)."""
        return bool(self._importance_kinds()) or self.strategy.uses_data or any(m.uses_data for m in self.monitors)

    def consolidate(self, state: TrainState, key, slot, data, hp: HParams) -> TrainState:
        """The end of a task: the importance the strategy and the monitors ask for (computed once, on ``data``, the
        task's per-sample ``(inputs, targets)``; None when :meth:`needs_data` is False), then the strategy's and the
        monitors' consolidation. ``slot`` is the task's index (where monitors keep what they remember of it)."""
        importance = {kind: self.importance(key, state.params, data, hp, kind, state.model_state)
                      for kind in self._importance_kinds()}
        src = bind_model_state(self.source, state.model_state)
        strategy_state = state.strategy
        if self.strategy.consolidate is not None:
            strategy_state = self.strategy.consolidate(
                strategy_state, state.params, hp.strategy, importance=importance.get(self.strategy.importance),
                data=data if self.strategy.uses_data else None)
        monitors = tuple(
            m.consolidate(s, state.params, slot, src, importance=importance.get(m.importance),
                          data=data if m.uses_data else None) if m.consolidate is not None else s
            for m, s in zip(self.monitors, state.monitors))
        return state._replace(strategy=strategy_state, monitors=monitors, tasks_done=state.tasks_done + 1)

    def task_step_on(self, state: TrainState, tasks, key, task_id, hp: HParams):
        """One task and the evaluation after it: ``(state, R_row, traces)`` (traceable; :meth:`train_task`
        compiles it). The row is :meth:`evaluate_row`'s."""
        _, k_eval, k_tasks = self.split_key(key)
        state, trace = self._train_task(state, tasks, jax.random.fold_in(k_tasks, task_id), task_id, hp)
        row = self.evaluate_row(state.params, tasks, k_eval, task_id, hp, state.model_state,
                                self.evaluated_state(state))
        return state, row, trace

    def run_on(self, tasks, key, hp: HParams):
        """The whole run over the task arrays ``tasks`` (traceable; ``run(key, hp)`` compiles it)."""
        state = self.init_on(tasks, key, hp)
        _, k_eval, k_tasks = self.split_key(key)
        n = self.source.num_tasks

        # Traced once: the shapes for the skipped branch come from the same (cached) trace the cond then reuses.
        train = jax.jit(lambda st, task_id: self._train_task(st, tasks, jax.random.fold_in(k_tasks, task_id),
                                                             task_id, hp))
        trace_shape = jax.eval_shape(train, state, jnp.int32(0))[1]

        def phase(st, i):
            ss = self.evaluated_state(st)
            if self.config.evaluate_every == 1:
                row = self.evaluate_on(st.params, tasks, k_eval, hp, st.model_state, ss)
            else:  # the baseline (phase 0) in full, then the row after task i - 1
                row = jax.lax.cond(i == 0, lambda p: self.evaluate_on(p, tasks, k_eval, hp, st.model_state, ss),
                                   lambda p: self.evaluate_row(p, tasks, k_eval, i - 1, hp, st.model_state, ss),
                                   st.params)
            skip = lambda s, _: (s, jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), trace_shape))  # noqa
            st, trace = jax.lax.cond(i < n, train, skip, st, jnp.minimum(i, n - 1))
            return st, (row, trace)

        state, (rows, traces) = jax.lax.scan(phase, state, jnp.arange(n + 1))
        return state, RunResults(rows[1:], rows[0], jax.tree.map(lambda x: x[:n], traces))

    # ----- public, jitted ---------------------------------------------------------------------------------
    def __call__(self, key, hp: HParams):
        """The whole run, one compiled program: ``(final_state, RunResults)``."""
        key = self._checked(key, hp)
        return _jit_run(self, self.source.tasks, key, hp)

    def seeds(self, keys, hp: HParams, devices=None):
        """The whole run for every key of ``keys [S]`` at once: ``(final_state, RunResults)`` with a leading seed
        axis, the seeds split over ``devices`` (None: every device; a count: the first that many; or a sequence of
        devices) with :func:`clloop_jax.workflow.sharding.shard_seeds`. On one device this is ``jax.vmap(run)``; on
        several, each device runs its share of the seeds and the results stay sharded over the seed axis (equal to one
        device's up to float32 rounding)."""
        keys = check_key("keys", keys, ndim=1)
        self._check_single(hp)
        return shard_seeds(self, keys, hp, devices=devices)

    def init(self, key, hp: HParams) -> TrainState:
        """The state before the first task (``key`` is the run's key, as given to ``run``)."""
        key = self._checked(key, hp)
        return _jit_init(self, self.source.tasks, key, hp)

    def train_task(self, state: TrainState, key, task_id, hp: HParams):
        """One task, compiled once for all tasks: ``(state, R_row, traces)``; ``key`` is the run key."""
        key = self._checked(key, hp)
        if not isinstance(task_id, jax.core.Tracer):
            check_int("task_id", task_id, min=0, max=self.source.num_tasks - 1)
        if not isinstance(state, TrainState):
            raise TypeError(f"state must be a TrainState (from run.init or an earlier train_task), "
                            f"got {type(state).__name__}")
        return _jit_task_step(self, state, self.source.tasks, key, jnp.asarray(task_id, jnp.int32), hp)

    def evaluate(self, params, key, hp: HParams, model_state=(), strategy_state=None):
        """Scores of ``params`` on every task, with the run's fixed evaluation keys (derived from the run key); a
        batch-norm model needs its running averages ``model_state`` (``state.model_state``), a strategy with an
        ``evaluate`` hook its state ``strategy_state`` (``state.strategy``; ignored by the others)."""
        key = self._checked(key, hp)
        if capability(self.source, "model_state") and not jax.tree.leaves(model_state):
            raise ValueError("model_state: this run's model has batch norm; pass its running averages, "
                             "run.evaluate(state.params, key, hp, state.model_state)")
        if self.strategy.evaluate is None:
            return jit_evaluate(self.source, params, self.source.tasks, self.split_key(key)[1], hp.source,
                                model_state)
        self._check_strategy_state(strategy_state)
        return _jit_evaluate_strategy(self, params, self.source.tasks, self.split_key(key)[1], hp, model_state,
                                      strategy_state)

    def run_stepwise(self, key, hp: HParams, callback: Optional[Callable] = None, state: Optional[TrainState] = None,
                     start_task: int = 0, results: Optional[RunResults] = None):
        """The same run as ``run(key, hp)``, stepped on the host one task at a time.

        ``callback(task_id, state, row, trace)`` is called after each task (progress, checkpoints). To resume, pass
        the ``state`` after ``start_task`` tasks and the ``results`` recorded so far (their first ``start_task``
        rows and traces). Returns ``(final_state, RunResults)`` with the same numbers as the compiled whole run.
        """
        key = self._checked(key, hp)
        n = self.source.num_tasks
        if not is_int(start_task) or not 0 <= start_task <= n:
            raise ValueError(f"start_task must be an integer in [0, {n}], got {start_task!r}")
        if state is None:
            if start_task:
                raise ValueError("start_task > 0 needs the state after those tasks (state=...)")
            state = self.init(key, hp)
        rows, traces = [], []
        if results is not None:
            rows = list(results.R[:start_task])
            traces = [jax.tree.map(lambda x: x[i], results.traces) for i in range(start_task)]
            baseline = results.baseline
        else:
            if start_task:
                raise ValueError("start_task > 0 needs the results recorded so far (results=...)")
            baseline = self.evaluate(state.params, key, hp, state.model_state, self.evaluated_state(state))
        after = None if callback is None else (
            lambda task_id, before, state, rows, traces: callback(task_id, state, rows[-1], traces[-1]))
        state = task_loop(lambda st, task_id: self.train_task(st, key, task_id, hp), state, n, start_task, rows,
                          traces, after)
        stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *traces)
        return state, RunResults(jnp.stack(rows), baseline, stacked)


_jit_run = Program(Run.run_on)


_jit_init = Program(Run.init_on)


_jit_task_step = Program(Run.task_step_on)


_jit_evaluate_strategy = Program(Run.evaluate_on)


def make_run(config: RunConfig, source) -> Run:
    """``run = make_run(config, source)``; ``run(key, hparams) -> (final_state, RunResults)``."""
    if not isinstance(config, RunConfig):
        raise TypeError(f"config must be a RunConfig, got {type(config).__name__}")
    check_source(source)
    per_task = getattr(source, "updates_per_task", None)
    if per_task is not None and config.episodes_per_task != per_task:
        raise ValueError(f"config.episodes_per_task must be {per_task} for this source: it presents each task's "
                         f"training samples once, in {per_task} batches (sampling='epoch'), got "
                         f"{config.episodes_per_task}")
    strategy = get_strategy(config.strategy)
    if strategy.check_source is not None:  # before anything is traced: the strategy says what it needs
        strategy.check_source(source)
    return Run(config, source, strategy, tuple(get_monitor(m) for m in config.monitors))
