"""The continual-learning run: one jittable program over any task source.

``make_run(config, source)`` returns a :class:`Run`. Calling it, ``run(key, hparams)``, trains on every task of the
source in sequence and evaluates on every task after each one, as one compiled program::

    for task in scan(tasks):
        for episode in scan(episodes):
            batch = source.batch(key, params, task)          # a closed-loop rollout, or a minibatch
            loss  = source.loss(params, batch) + regularizer.penalty(params)
            params, opt_state = optax update
            regularizer.accumulate(...)                       # SI's path integral, the budget's dual step
            record loss, penalty, score, divergences
        consolidate: Fisher / MAS importance, anchor
        R[task, :] = score on every task (fixed evaluation keys)

The same per-task function is also exposed on its own (``run.init``, ``run.train_task``, ``run.evaluate``), jitted
once and reused for every task, so a host loop can report progress, checkpoint or resume between tasks without
recompiling; ``run.run_stepwise`` does exactly that and gives the same numbers as ``run(key, hparams)``.

Numbers users sweep (learning rate, penalty strength, feedback weight, ...) are fields of :class:`HParams`, traced
arrays: ``jax.vmap(run, in_axes=(0, None))(keys, hparams)`` runs many seeds with one compilation, and a batched
``HParams`` field sweeps a hyperparameter.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from clloop_jax import divergence as div_lib
from clloop_jax import fisher as fisher_lib
from clloop_jax import regularizers as reg_lib

FISHER_VARIANTS = ("empirical", "sampled", "exact")


class HParams(NamedTuple):
    """Numeric hyperparameters, traced (vmap any field to sweep it).

    Attributes:
      learning_rate: the optimizer's step size.
      reg_lambda: the penalty strength lambda (the initial one for ``ewc_budget``).
      feedback_weight: scale of the environment's feedback before it reaches the model.
      gamma: online EWC's decay of the running Fisher.
      xi: SI's damping.
      budget: the Fisher-weighted divergence budget (``ewc_budget``).
      dual_lr: the dual-ascent step size of lambda (``ewc_budget``).
    """

    learning_rate: Any = 1e-3
    reg_lambda: Any = 1.0
    feedback_weight: Any = 1.0
    gamma: Any = 1.0
    xi: Any = 0.1
    budget: Any = 1.0
    dual_lr: Any = 0.1

    @classmethod
    def create(cls, **kwargs) -> "HParams":
        """Builds validated float32 hyperparameters; unknown names and out-of-range values raise ``ValueError``."""
        unknown = set(kwargs) - set(cls._fields)
        if unknown:
            raise ValueError(f"unknown hyperparameter(s) {sorted(unknown)}; valid names are {list(cls._fields)}")
        hp = cls(**kwargs)
        hp.validate()
        return jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), hp)

    @classmethod
    def sweep_axes(cls, *names: str) -> "HParams":
        """``in_axes`` for ``jax.vmap`` that batches the named fields (axis 0) and broadcasts the others::

            hp = hp._replace(reg_lambda=jnp.array([0.0, 1.0, 10.0]))
            jax.vmap(run, in_axes=(None, HParams.sweep_axes("reg_lambda")))(key, hp)
        """
        unknown = set(names) - set(cls._fields)
        if unknown:
            raise ValueError(f"unknown hyperparameter(s) {sorted(unknown)}; valid names are {list(cls._fields)}")
        return cls(**{f: (0 if f in names else None) for f in cls._fields})

    def validate(self) -> None:
        """Checks concrete values (traced ones are skipped): non-negative rates and strengths, gamma in [0, 1]."""
        for name in ("learning_rate", "reg_lambda", "feedback_weight", "budget", "dual_lr"):
            _check_concrete(name, getattr(self, name), lambda v: v >= 0, ">= 0")
        _check_concrete("gamma", self.gamma, lambda v: (v >= 0) & (v <= 1), "in [0, 1]")
        _check_concrete("xi", self.xi, lambda v: v > 0, "> 0")


def _check_concrete(name, value, ok, expected):
    if isinstance(value, jax.core.Tracer):
        return
    arr = np.asarray(value)
    if not np.all(ok(arr)):
        raise ValueError(f"{name} must be {expected}, got {value!r}")


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """Static configuration of a continual-learning run (changing it recompiles).

    Attributes:
      strategy: a regularizer name of :mod:`clloop_jax.regularizers` (``none``, ``l2``, ``ewc``, ``online_ewc``,
        ``si``, ``mas``, ``ewc_budget``).
      episodes_per_task: optimizer updates per task, one per episode (batch).
      fisher_variant: ``empirical``, ``sampled`` or ``exact`` (see :func:`clloop_jax.fisher.fisher_diagonal`).
      fisher_samples: label draws per input for the ``sampled`` Fisher.
      fisher_chunk_size: per-sample gradients computed this many at a time (bounds memory); None = all at once.
      num_probes: inputs kept per task to measure functional divergence (0 turns it off).
      max_grad_norm: global-norm clipping of the gradient before the optimizer (None = no clipping).
      reset_optimizer: start each task with a fresh optimizer state.
      optimizer: ``learning_rate -> optax.GradientTransformation``; Adam by default.
    """

    strategy: str = "ewc"
    episodes_per_task: int = 10
    fisher_variant: str = "sampled"
    fisher_samples: int = 1
    fisher_chunk_size: Optional[int] = None
    num_probes: int = 4
    max_grad_norm: Optional[float] = 1.0
    reset_optimizer: bool = True
    optimizer: Callable[[Any], optax.GradientTransformation] = optax.adam

    def __post_init__(self):
        if self.strategy not in reg_lib.STRATEGIES:
            raise ValueError(f"strategy must be one of {list(reg_lib.STRATEGIES)}, got {self.strategy!r}")
        if not isinstance(self.episodes_per_task, int) or self.episodes_per_task < 1:
            raise ValueError(f"episodes_per_task must be an integer >= 1, got {self.episodes_per_task!r}")
        if self.fisher_variant not in FISHER_VARIANTS:
            raise ValueError(f"fisher_variant must be one of {list(FISHER_VARIANTS)}, got {self.fisher_variant!r}")
        if not isinstance(self.fisher_samples, int) or self.fisher_samples < 1:
            raise ValueError(f"fisher_samples must be an integer >= 1, got {self.fisher_samples!r}")
        if self.fisher_chunk_size is not None and (
                not isinstance(self.fisher_chunk_size, int) or self.fisher_chunk_size < 1):
            raise ValueError(f"fisher_chunk_size must be an integer >= 1 or None, got {self.fisher_chunk_size!r}")
        if not isinstance(self.num_probes, int) or self.num_probes < 0:
            raise ValueError(f"num_probes must be an integer >= 0, got {self.num_probes!r}")
        if self.max_grad_norm is not None and not self.max_grad_norm > 0:
            raise ValueError(f"max_grad_norm must be > 0 or None, got {self.max_grad_norm!r}")


class ProbeMemory(NamedTuple):
    """Inputs of earlier tasks and the model's outputs on them when each task ended (functional divergence)."""

    inputs: Any      # leaves [num_tasks, num_probes, ...]
    outputs: Any     # [num_tasks, num_probes, ...]
    seen: jax.Array  # [num_tasks] bool


class TrainState(NamedTuple):
    """Everything a run carries from one episode (and task) to the next."""

    params: Any
    opt_state: Any
    reg_state: reg_lib.RegularizerState
    task_start: Any      # params when the current task began: the reference of the parameter divergence
    fisher_sum: Any      # sum of the Fisher diagonals of the tasks so far: weights the monitored divergence
    probes: ProbeMemory
    tasks_done: jax.Array


class EpisodeTrace(NamedTuple):
    """Per-episode records of a task (leaves [episodes_per_task]; [num_tasks, episodes] for a whole run)."""

    loss: jax.Array
    penalty: jax.Array
    score: jax.Array
    reg_lambda: jax.Array
    param_l2: jax.Array
    param_relative: jax.Array
    fisher_distance: jax.Array
    functional: jax.Array


class RunResults(NamedTuple):
    """What a run reports: ``R[i, j]`` = score on task j after training on tasks 0..i; ``baseline[j]`` = score of
    the untrained model; ``traces`` = per-episode records. Metrics: :func:`clloop_jax.metrics.summarize`."""

    R: jax.Array
    baseline: jax.Array
    traces: EpisodeTrace


def make_regularizer(strategy: str, hp: HParams, num_tasks: int) -> reg_lib.Regularizer:
    """The strategy ``strategy`` with its numbers taken from ``hp`` (traced values are fine)."""
    return reg_lib.make_regularizer(strategy, lam=hp.reg_lambda, gamma=hp.gamma, xi=hp.xi, budget=hp.budget,
                                    dual_lr=hp.dual_lr, num_tasks=num_tasks)


def task_at(tasks, task_id):
    """Slice one task out of a stacked task pytree (``task_id`` may be traced)."""
    return jax.tree.map(lambda x: x[task_id], tasks)


@dataclasses.dataclass(frozen=True)
class Run:
    """A compiled continual-learning run over ``source``, built by :func:`make_run`."""

    config: RunConfig
    source: Any

    # ----- pieces --------------------------------------------------------------------------------------------
    def regularizer(self, hp: HParams) -> reg_lib.Regularizer:
        return make_regularizer(self.config.strategy, hp, self.source.num_tasks)

    def optimizer(self, hp: HParams) -> optax.GradientTransformation:
        opt = self.config.optimizer(hp.learning_rate)
        if self.config.max_grad_norm is not None:
            opt = optax.chain(optax.clip_by_global_norm(self.config.max_grad_norm), opt)
        return opt

    def _keys(self, key):
        k_init, k_eval, k_tasks = jax.random.split(key, 3)
        return k_init, k_eval, k_tasks

    def init(self, key, hp: HParams) -> TrainState:
        """The state before the first task (``key`` is the run's key, as given to ``run``)."""
        k_init, _, k_tasks = self._keys(key)
        params = self.source.init_params(k_init)
        zeros = jax.tree.map(jnp.zeros_like, params)
        probe_shape = jax.eval_shape(self._probe, params, task_at(self.source.tasks, 0), k_tasks, hp)
        stack = lambda s: jnp.zeros((self.source.num_tasks,) + s.shape, s.dtype)  # noqa: E731
        probes = ProbeMemory(jax.tree.map(stack, probe_shape[0]), jax.tree.map(stack, probe_shape[1]),
                             jnp.zeros((self.source.num_tasks,), bool))
        return TrainState(params, self.optimizer(hp).init(params), self.regularizer(hp).init(params), params,
                          zeros, probes, jnp.zeros((), jnp.int32))

    def _probe(self, params, task, key, hp):
        n = self.config.num_probes
        inputs, _ = self.source.fisher_data(key, params, task, hp)
        inputs = jax.tree.map(lambda x: x[:n], inputs)
        return inputs, jax.vmap(self.source.predict, in_axes=(None, 0))(params, inputs)

    def functional_divergence(self, params, probes: ProbeMemory):
        """Mean output divergence from each earlier task's end, over the tasks seen (0 before any)."""
        kind = "kl" if isinstance(self.source.likelihood, fisher_lib.Categorical) else "mse"
        flat = lambda x: x.reshape((-1,) + x.shape[2:])  # noqa: E731
        outputs = jax.vmap(self.source.predict, in_axes=(None, 0))(params, jax.tree.map(flat, probes.inputs))
        per_probe = div_lib.output_divergence(outputs, flat(probes.outputs), kind=kind)
        per_task = per_probe.reshape(probes.seen.shape[0], -1).mean(axis=1)
        count = jnp.maximum(probes.seen.sum(), 1)
        return jnp.sum(jnp.where(probes.seen, per_task, 0.0)) / count

    def importance(self, key, params, task, hp, kind: str):
        """The importance a consolidation needs: the Fisher diagonal or MAS's output-norm sensitivity."""
        inputs, targets = self.source.fisher_data(key, params, task, hp)
        if kind == "mas":
            return fisher_lib.mas_importance(self.source.predict, params, inputs,
                                             chunk_size=self.config.fisher_chunk_size)
        return fisher_lib.fisher_diagonal(
            self.source.predict, params, inputs, targets, likelihood=self.source.likelihood,
            variant=self.config.fisher_variant, key=jax.random.fold_in(key, 1),
            num_samples=self.config.fisher_samples, chunk_size=self.config.fisher_chunk_size)

    # ----- one task ------------------------------------------------------------------------------------------
    def _train_task(self, state: TrainState, key, task_id, hp: HParams):
        task = task_at(self.source.tasks, task_id)
        reg, opt = self.regularizer(hp), self.optimizer(hp)
        if self.config.reset_optimizer:
            state = state._replace(opt_state=opt.init(state.params))
        state = state._replace(task_start=state.params)

        def episode(st: TrainState, k):
            batch = self.source.batch(k, st.params, task, hp)
            (loss, aux), task_grads = jax.value_and_grad(self.source.loss, has_aux=True)(st.params, batch, hp)
            penalty, pen_grads = jax.value_and_grad(lambda p: reg.penalty(st.reg_state, p))(st.params)
            grads = jax.tree.map(jnp.add, task_grads, pen_grads)
            updates, opt_state = opt.update(grads, st.opt_state, st.params)
            params = optax.apply_updates(st.params, updates)
            reg_state = reg.accumulate(st.reg_state, st.params, params, task_grads)
            pdiv = div_lib.parameter_divergence(params, st.task_start, st.fisher_sum)
            functional = (self.functional_divergence(params, st.probes) if self.config.num_probes
                          else jnp.zeros(()))
            trace = EpisodeTrace(loss, penalty, aux.get("score", jnp.nan), st.reg_state.lam, pdiv["l2"],
                                 pdiv["relative"], pdiv["fisher_weighted"], functional)
            return st._replace(params=params, opt_state=opt_state, reg_state=reg_state), trace

        keys = jax.random.split(jax.random.fold_in(key, 0), self.config.episodes_per_task)
        state, trace = jax.lax.scan(episode, state, keys)
        return self._consolidate(state, jax.random.fold_in(key, 1), task_id, task, hp, reg), trace

    def _consolidate(self, state: TrainState, key, task_id, task, hp, reg):
        k_fisher, k_probe = jax.random.split(key)
        fisher = self.importance(k_fisher, state.params, task, hp, "fisher")
        kind = reg.importance_kind
        task_importance = {"fisher": fisher, "none": None}.get(kind)
        if kind == "mas":
            task_importance = self.importance(k_fisher, state.params, task, hp, "mas")
        reg_state = reg.consolidate(state.reg_state, state.params, task_importance)
        probes = state.probes
        if self.config.num_probes:
            inputs, outputs = self._probe(state.params, task, k_probe, hp)
            put = lambda stack, x: stack.at[task_id].set(x)  # noqa: E731
            probes = ProbeMemory(jax.tree.map(put, probes.inputs, inputs), jax.tree.map(put, probes.outputs, outputs),
                                 probes.seen.at[task_id].set(True))
        return state._replace(reg_state=reg_state, fisher_sum=jax.tree.map(jnp.add, state.fisher_sum, fisher),
                              probes=probes, tasks_done=state.tasks_done + 1)

    def _evaluate(self, params, key, hp):
        keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(self.source.num_tasks))
        return jax.vmap(lambda task, k: self.source.score(k, params, task, hp))(self.source.tasks, keys)

    # ----- public, jitted ------------------------------------------------------------------------------------
    def __post_init__(self):
        object.__setattr__(self, "_jit_init", jax.jit(self.init))
        object.__setattr__(self, "_jit_train_task", jax.jit(self._task_step))
        object.__setattr__(self, "_jit_evaluate", jax.jit(self.evaluate))
        object.__setattr__(self, "_jit_run", jax.jit(self._run))

    def _task_step(self, state: TrainState, key, task_id, hp: HParams):
        """Train on task ``task_id`` with the run key ``key``, then score every task: one row of R."""
        _, k_eval, k_tasks = self._keys(key)
        state, trace = self._train_task(state, jax.random.fold_in(k_tasks, task_id), task_id, hp)
        return state, self._evaluate(state.params, k_eval, hp), trace

    def evaluate(self, params, key, hp: HParams):
        """Scores of ``params`` on every task, with the run's fixed evaluation keys (derived from the run key)."""
        return self._evaluate(params, self._keys(key)[1], hp)

    def _run(self, key, hp: HParams):
        state = self.init(key, hp)
        baseline = self.evaluate(state.params, key, hp)

        def body(st, task_id):
            st, row, trace = self._task_step(st, key, task_id, hp)
            return st, (row, trace)

        state, (R, traces) = jax.lax.scan(body, state, jnp.arange(self.source.num_tasks))
        return state, RunResults(R, baseline, traces)

    def __call__(self, key, hp: HParams):
        """The whole run, compiled once: ``(final_state, RunResults)``."""
        return self._jit_run(key, hp)

    def train_task(self, state: TrainState, key, task_id, hp: HParams):
        """One task, jitted once for all tasks: ``(state, R_row, EpisodeTrace)``; ``key`` is the run key."""
        return self._jit_train_task(state, key, jnp.asarray(task_id, jnp.int32), hp)

    def run_stepwise(self, key, hp: HParams, callback: Optional[Callable] = None):
        """The same run as ``run(key, hp)``, stepped on the host one task at a time.

        ``callback(task_id, state, row, trace)`` is called after each task (progress, checkpoints). Returns
        ``(final_state, RunResults)`` with the same numbers as the compiled whole run.
        """
        state = self._jit_init(key, hp)
        baseline = self._jit_evaluate(state.params, key, hp)
        rows, traces = [], []
        for task_id in range(self.source.num_tasks):
            state, row, trace = self.train_task(state, key, task_id, hp)
            rows.append(row)
            traces.append(trace)
            if callback is not None:
                callback(task_id, state, row, trace)
        stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *traces)
        return state, RunResults(jnp.stack(rows), baseline, stacked)


def make_run(config: RunConfig, source) -> Run:
    """``run = make_run(config, source)``; ``run(key, hparams) -> (final_state, RunResults)``."""
    return Run(config, source)


def make_joint_run(config: RunConfig, source) -> Callable:
    """The multi-task upper bound: one model trained on all tasks at once, every update seeing every task.

    Trains for ``episodes_per_task * num_tasks`` updates, each on a batch of every task (the mean of the task
    losses), with no penalty. Returns a jitted ``joint(key, hparams) -> scores [num_tasks]``, evaluated with the
    same fixed evaluation keys as :class:`Run` for the same run key.
    """
    run = Run(dataclasses.replace(config, strategy="none"), source)

    def joint(key, hp: HParams):
        k_init, _, k_tasks = run._keys(key)
        params = source.init_params(k_init)
        opt = run.optimizer(hp)
        task_ids = jnp.arange(source.num_tasks)

        def mean_loss(p, batches):
            losses, _ = jax.vmap(lambda b: source.loss(p, b, hp))(batches)
            return jnp.mean(losses)

        def step(carry, k):
            p, o = carry
            keys = jax.vmap(lambda i: jax.random.fold_in(k, i))(task_ids)
            batches = jax.vmap(lambda task, kk: source.batch(kk, p, task, hp))(source.tasks, keys)
            grads = jax.grad(mean_loss)(p, batches)
            updates, o = opt.update(grads, o, p)
            return (optax.apply_updates(p, updates), o), None

        keys = jax.random.split(k_tasks, config.episodes_per_task * source.num_tasks)
        (params, _), _ = jax.lax.scan(step, (params, opt.init(params)), keys)
        return run.evaluate(params, key, hp)

    return jax.jit(joint)
