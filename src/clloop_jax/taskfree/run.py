"""Task-free continual learning: a stream that never says when its task changes.

A task-free run learns from one long stream of episodes (closed-loop rollouts, or minibatches) whose task changes at
times the learner is not told. It finds the changes itself, from its own training loss, and consolidates there
exactly as a run with known boundaries does at a task's end; or it uses a boundary-free strategy that needs no
consolidation at all (:mod:`clloop_jax.strategies.streaming`). The whole stream is one compiled program.

**Streams** (:class:`Schedule`): per episode, the weights of the tasks, ``weights [E, K]``. Each parallel world of a
closed-loop episode (each sample of a minibatch) draws its task from that episode's weights, so a blend is a
mixture. :func:`abrupt_schedule` switches from one task to the next at given episodes, :func:`irregular_schedule` at
random, irregular ones, :func:`gradual_schedule` blends consecutive tasks linearly over a window. The schedule is the
hidden truth: it decides what the world serves, it is recorded for the metrics, and it never reaches the learner
(the update step, the strategy and the detector see the batches and the loss only).

**Shift detection** (:class:`PageHinkley`): the Page-Hinkley test, one-sided (an increase of the loss), on the
training loss standardised against running statistics of its in-control past. See the class for the statistic,
the drift allowance ``delta``, the threshold ``lambda`` and the false-alarm rate.

**The run** (:func:`make_taskfree_run`)::

    state = run.init
    R[-1] = score on every task                                     # the untrained baseline
    for t in scan(E):                                               # one compiled program
        batch = each world draws its task from weights[t]           # the hidden truth acts here only
        state, trace = run.update(state, batch, key, hp)            # the one update step
        alarm = page_hinkley(trace["loss"])
        cond(consolidate now): run.consolidate(state, key, slot, data, hp)
        cond(t ends a true segment): R[i] = score on every task      # the performance matrix, for metrics

What triggers a consolidation is the run's ``boundaries``: ``"detect"`` (the detector's alarms; the consolidation uses
the parameters and the batch of the last episode at which the test statistic was 0, i.e. the end of the old task
as the detector sees it), ``"oracle"`` (the true segment ends, with that episode's parameters and batch: EWC given
the true boundaries, fed the same kind of data), or ``"none"`` (never: fine-tuning, and the boundary-free
strategies). The detector runs in every mode, so its alarms are recorded for the metrics whatever triggers the
consolidations.

:meth:`TaskFreeRun.__call__` is one seed and vmaps like any JAX function (a vmapped ``lax.cond`` whose predicate
differs between seeds evaluates both branches). :meth:`TaskFreeRun.seeds` runs many seeds in one program with the
consolidation and the evaluation branches run only on the episodes where some seed needs them.

**Metrics**: :func:`detection_metrics` (detection delay, missed changes, false alarms against the truth) and
:func:`taskfree_summary` (those, and :func:`clloop_jax.metrics.summarize` of the performance matrix evaluated at the
true boundaries).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, NamedTuple, Optional

import jax
import jax.numpy as jnp

from clloop_jax.run.config import HParams, RunConfig
from clloop_jax.run.programs import Program
from clloop_jax.run.sequential import Run, make_run
from clloop_jax.sources.mixture import check_mixture, mixture_batch
from clloop_jax.sources.supervised import SupervisedBatch
from clloop_jax.taskfree.detect import PageHinkley
from clloop_jax.taskfree.schedules import Schedule, ScheduleArrays
from clloop_jax.validation import check_key

__all__ = ["TaskFreeRun", "TaskFreeResults", "make_taskfree_run", "BOUNDARIES"]


BOUNDARIES = ("detect", "oracle", "none")


class TaskFreeResults(NamedTuple):
    """What a task-free run reports.

    ``R [S, K]``: ``R[i, j]`` = score on task ``j`` after the last episode of segment ``i`` (the true boundaries);
    ``baseline [K]``: the untrained scores; ``alarms [E]``: the detector's alarms (in every mode);
    ``consolidated [E]``: where the run consolidated; ``traces``: ``{name: [E]}`` per-episode records of the update
    step (``loss``, ``penalty``, ``finite``, ``score``, the strategy's and the monitors' entries) and the detector's
    ``ph_stat``.
    """

    R: jax.Array
    baseline: jax.Array
    alarms: jax.Array
    consolidated: jax.Array
    traces: Dict[str, jax.Array]


def _where(flag, new, old):
    return jax.tree.map(lambda n, o: jnp.where(flag, n, o), new, old)


@dataclasses.dataclass(frozen=True)
class TaskFreeRun:
    """A task-free run over ``run``'s source and strategy (built by :func:`make_taskfree_run`)."""

    run: Run
    boundaries: str
    detector: PageHinkley

    def hparams(self, **values) -> HParams:
        """The underlying run's hyperparameters (see :meth:`clloop_jax.run.sequential.Run.hparams`)."""
        return self.run.hparams(**values)

    # ----- the program ------------------------------------------------------------------------------------
    def _program(self, axis_name, tasks, key, hp: HParams, sched: ScheduleArrays):
        run, src, det = self.run, self.run.source, self.detector
        K, S = src.num_tasks, sched.order.shape[0]
        _, k_eval, k_stream = jax.random.split(key, 3)
        state = run.init_on(tasks, key, hp)
        baseline = self.run.evaluate_on(state.params, tasks, k_eval, hp, state.model_state,
                                           self.run.evaluated_state(state))
        needs_data = run.needs_data()

        def any_seed(flag):
            return flag if axis_name is None else jax.lax.psum(flag.astype(jnp.int32), axis_name) > 0

        def batch_of(params, k):
            return mixture_batch(src.base, k, params, tasks, sched.weights[0], hp.source)

        samples_shape = jax.eval_shape(lambda p, k: src.samples(batch_of(p, k)), state.params, k_stream)
        zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), samples_shape)
        snapshot = (state.params, zeros if needs_data else None)

        def episode(carry, xs):
            st, det_state, snap, R = carry
            t, weights, row, end = xs
            k_batch, k_update, k_cons = jax.random.split(jax.random.fold_in(k_stream, t), 3)
            batch = mixture_batch(src.base, k_batch, st.params, tasks, weights, hp.source)
            st, trace = run.update(st, batch, k_update, hp)
            det_state, alarm, in_control, stat = det.step(det_state, trace["loss"])
            samples = src.samples(batch) if needs_data else None
            trigger = jnp.array(False)
            if self.boundaries != "none":
                if self.boundaries == "detect":
                    trigger, (params_c, data_c) = alarm, snap
                else:
                    trigger, params_c, data_c = end, st.params, samples

                def consolidate(s):
                    slot = jnp.minimum(s.tasks_done, K - 1)
                    new = run.consolidate(s._replace(params=params_c), k_cons, slot, data_c, hp)
                    new = new._replace(params=s.params)
                    if run.config.reset_optimizer:
                        new = new._replace(opt_state=run.optimizer(hp).init(s.params))
                    return _where(trigger, new, s)

                st = jax.lax.cond(any_seed(trigger), consolidate, lambda s: s, st)
                if self.boundaries == "detect":
                    snap = _where(in_control, (st.params, samples), snap)

            def evaluate(r):
                scores = self.run.evaluate_on(st.params, tasks, k_eval, hp, st.model_state,
                                              self.run.evaluated_state(st))
                return jnp.where(row >= 0, r.at[jnp.maximum(row, 0)].set(scores), r)

            R = jax.lax.cond(any_seed(row >= 0), evaluate, lambda r: r, R)
            trace = dict(trace, ph_stat=stat)
            return (st, det_state, snap, R), (trace, alarm, trigger)

        E = sched.weights.shape[0]
        R0 = jnp.zeros((S, K), baseline.dtype)
        xs = (jnp.arange(E), sched.weights, sched.eval_row, sched.segment_end)
        (state, _, _, R), (traces, alarms, consolidated) = jax.lax.scan(
            episode, (state, det.init(), snapshot, R0), xs)
        return state, TaskFreeResults(R, baseline, alarms, consolidated, traces)

    # ----- public -----------------------------------------------------------------------------------------
    def _checked(self, hp, schedule):
        self.run.check_hparams(hp)
        if not isinstance(schedule, Schedule):
            raise TypeError(f"schedule must be a Schedule (abrupt_schedule, irregular_schedule, gradual_schedule), "
                            f"got {type(schedule).__name__}")
        if schedule.num_tasks != self.run.source.num_tasks:
            raise ValueError(f"schedule has {schedule.num_tasks} tasks, the source {self.run.source.num_tasks}")
        return schedule.arrays()

    def __call__(self, key, hp: HParams, schedule: Schedule):
        """One seed over the stream ``schedule``, one compiled program: ``(final_state, TaskFreeResults)``.
        ``jax.vmap`` it over keys for seeds, or use :meth:`seeds`."""
        key = check_key("key", key)
        arrays = self._checked(hp, schedule)
        return _jit_taskfree(self, self.run.source.tasks, key, hp, arrays)

    def seeds(self, keys, hp: HParams, schedule):
        """Many seeds in one program: ``keys [N]``; ``schedule`` one :class:`Schedule` for every seed or a sequence of
        ``N`` schedules of the same shape (each seed its own stream). Consolidations and evaluations run only on
        the episodes where some seed needs them. Returns ``(final_states, TaskFreeResults)`` with a leading axis
        ``N``."""
        keys = check_key("keys", keys, ndim=1)
        n = int(jnp.shape(keys)[0])
        if isinstance(schedule, Schedule):
            arrays = self._checked(hp, schedule)
        else:
            schedules = list(schedule)
            if len(schedules) != n:
                raise ValueError(f"schedule must be one Schedule or {n} (one per key), got {len(schedules)}")
            parts = [self._checked(hp, s) for s in schedules]
            shapes = {tuple(x.shape for x in p) for p in parts}
            if len(shapes) != 1:
                raise ValueError(f"the schedules must have equal shapes (episodes, tasks, segments), got {shapes}")
            arrays = jax.tree.map(lambda *xs: jnp.stack(xs), *parts)
        return _jit_taskfree_seeds(self, self.run.source.tasks, keys, hp, arrays)


def _single(tf: TaskFreeRun, tasks, key, hp, arrays):
    return tf._program(None, tasks, key, hp, arrays)


def _many(tf: TaskFreeRun, tasks, keys, hp, arrays):
    in_axes = (0, None, 0 if arrays.weights.ndim == 3 else None)
    return jax.vmap(lambda k, h, a: tf._program("seed", tasks, k, h, a), in_axes=in_axes,
                    axis_name="seed")(keys, hp, arrays)


_jit_taskfree = Program(_single)


_jit_taskfree_seeds = Program(_many)


@dataclasses.dataclass(frozen=True)
class _StreamSource:
    """``base`` with per-sample task masks understood by ``samples`` (a mixed minibatch has one mask per row)."""

    base: Any

    def __getattr__(self, name):
        if name == "base":
            raise AttributeError(name)
        return getattr(self.base, name)

    def samples(self, batch):
        if isinstance(batch, SupervisedBatch) and batch.mask.ndim == 2:
            return (batch.x, batch.mask), batch.y
        return self.base.samples(batch)


def make_taskfree_run(config: RunConfig, source, boundaries: str = "detect",
                      detector: Optional[PageHinkley] = None) -> TaskFreeRun:
    """A task-free run: ``tf = make_taskfree_run(config, source)``; ``tf(key, hp, schedule)``.

    ``config`` is the :class:`~clloop_jax.run.config.RunConfig` of the update step and the consolidation (its strategy,
    Fisher variant, monitors, clipping, optimizer; ``reset_optimizer`` resets the optimizer at every
    consolidation); its ``episodes_per_task`` is not used (the schedule gives the stream's length).
    ``boundaries``: ``"detect"``, ``"oracle"`` or ``"none"`` (see the module docstring). ``detector``: the
    :class:`PageHinkley` test (default settings when None).
    """
    if not isinstance(config, RunConfig):
        raise TypeError(f"config must be a RunConfig, got {type(config).__name__}")
    if boundaries not in BOUNDARIES:
        raise ValueError(f"boundaries must be one of {list(BOUNDARIES)}, got {boundaries!r}")
    detector = PageHinkley() if detector is None else detector
    if not isinstance(detector, PageHinkley):
        raise TypeError(f"detector must be a PageHinkley, got {type(detector).__name__}")
    if config.evaluate_every != 1 or config.traces != "episodes":
        raise ValueError(f"config.evaluate_every ({config.evaluate_every!r}) and config.traces ({config.traces!r}) "
                         f"shape a run with known task boundaries; a task-free stream evaluates at every switch and "
                         f"records every episode: leave them at 1 and 'episodes'")
    if getattr(source, "sampling", "random") != "random":
        raise ValueError(f"source.sampling must be 'random' for a task-free stream (its batches mix tasks), got "
                         f"{source.sampling!r}")
    check_mixture(source)
    run = make_run(config, _StreamSource(source))
    if run.strategy.boundary is not None:
        raise ValueError(f"strategy {run.strategy.name!r} acts at the start of each task (a boundary hook); a "
                         f"task-free stream has no task starts")
    return TaskFreeRun(run, boundaries, detector)
