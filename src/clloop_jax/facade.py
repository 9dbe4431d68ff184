"""``ContinualLearningLoop``: a small stateful object over the pure run, handy in a notebook.

It holds the model, the environment, the hyperparameters and the agent's current state, and delegates all work to
:func:`clloop_jax.run.sequential.make_run` (compiled once per configuration, shared by every loop with that
configuration)::

    loop = ContinualLearningLoop(model=model, environment=env, learning_rate=1e-3, ewc_lambda=0.5,
                                 feedback_weight=0.3)
    metrics = loop.continual_learning_cycle(num_tasks=3, episodes_per_task=10, verbose=True)
    loss = loop.train_step(observations, target)      # one update through the run's own update step
"""

from __future__ import annotations

import dataclasses
import numbers
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from clloop_jax import metrics as metrics_lib
from clloop_jax.envs.base import check_world
from clloop_jax.envs.rollout import Trajectory
from clloop_jax.run.config import HParams, RunConfig
from clloop_jax.run.errors import NonFiniteError, check_finite
from clloop_jax.run.programs import Program
from clloop_jax.run.sequential import TrainState, make_run
from clloop_jax.sources.world import EnvSource, check_model_matches_env, imitation_loss, pair_with_env, squared_error
from clloop_jax.strategies import get_strategy
from clloop_jax.validation import check_array, check_bool, check_callable, check_float, check_seed
from clloop_jax.workflow.compilation import enable_compilation_cache

_RUN_FIELDS = tuple(f.name for f in dataclasses.fields(RunConfig) if f.name not in ("strategy", "episodes_per_task"))


def _check_count(name, value):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return int(value)


class ContinualLearningLoop:
    """An agent learning task after task in a closed loop with an environment.

    Args:
      model: a :class:`~clloop_jax.model.CrossModalModel` whose sizes match ``environment`` (built without
        ``feedback_dim``, it takes the environment's).
      environment: a :class:`~clloop_jax.envs.MultiModalEnv` with a task family (``tasks(num_tasks)``).
      learning_rate: the optimizer's step size.
      ewc_lambda: the strategy's penalty strength ``lam`` (ignored by ``strategy="none"``).
      feedback_weight: scale of the environment's feedback (reward, previous action) fed back to the model.
      strategy: a registered strategy name (``none``, ``l2``, ``ewc``, ``online_ewc``, ``si``, ``mas``,
        ``ewc_budget``) or a :class:`~clloop_jax.strategies.Strategy`.
      seed: the run's seed, an integer in ``[0, 2**32)``.
      num_envs: parallel environments per training episode.
      loss_fn: ``loss_fn(actions, targets) -> scalar``, the imitation error of the cycle and of ``train_step``
        (default: mean squared error summed over action dimensions).
      objective: a whole closed-loop objective ``(params, trajectory, hparams) -> (loss, aux)`` instead of
        ``loss_fn`` (see :class:`~clloop_jax.sources.world.EnvSource`); ``train_step`` then needs none of its own.
      compilation_cache: turn on JAX's persistent compilation cache
        (:func:`~clloop_jax.workflow.compilation.enable_compilation_cache`: the folder ``CLLOOP_JAX_CACHE_DIR`` or
        ``~/.cache/clloop_jax/xla``), so that a later process loads the compiled run from disk instead of compiling it
        again. This is a process-wide JAX setting, changed here (building the loop), never on import; False, or the
        environment variable ``CLLOOP_JAX_NO_CACHE=1``, leaves JAX's settings alone. The folder used (or None) is
        ``loop.compilation_cache``.
      **config: further :class:`~clloop_jax.run.config.RunConfig` fields (``fisher_variant``, ``monitors``, ...) or the
        strategy's other hyperparameters (``gamma``, ``xi``, ``budget``, ``dual_lr``).
    """

    def __init__(self, model, environment, learning_rate: float = 1e-3, ewc_lambda: float = 0.5,
                 feedback_weight: float = 0.3, *, strategy: Any = "ewc", seed: int = 0, num_envs: int = 8,
                 loss_fn: Optional[Callable] = None, objective: Optional[Callable] = None,
                 compilation_cache: bool = True, **config: Any):
        compilation_cache = check_bool("compilation_cache", compilation_cache)
        check_world(environment)
        model = pair_with_env(model, environment)
        check_model_matches_env(model, environment)
        if loss_fn is not None and objective is not None:
            raise ValueError("give loss_fn or objective, not both")
        for name, fn in (("loss_fn", loss_fn), ("objective", objective)):
            if fn is not None:
                check_callable(name, fn)
        seed = check_seed("seed", seed)
        check_float("learning_rate", learning_rate, min=0, open_min=True, scalar=True)
        check_float("ewc_lambda", ewc_lambda, min=0, scalar=True)
        check_float("feedback_weight", feedback_weight, min=0, scalar=True)
        get_strategy(strategy)
        self.num_envs = _check_count("num_envs", num_envs)
        run_fields = {k: config.pop(k) for k in list(config) if k in _RUN_FIELDS}
        self.config_overrides = run_fields
        self.model, self.environment = model, environment
        self.loss_fn = loss_fn or squared_error
        self.objective = objective or imitation_loss(model, self.loss_fn)
        # The run's configuration names the strategy as given (a registered name stays a name), so the loop's runs
        # are the runs make_run builds from the same RunConfig: one compilation serves both.
        self._strategy_spec = strategy
        probe = self._run_for(1, 1)  # validates the configuration eagerly
        self.strategy = probe.strategy
        strategy_hp = {"lam": ewc_lambda} if "lam" in self.strategy.hparams._fields else {}
        try:
            self.hparams: HParams = probe.hparams(learning_rate=learning_rate, feedback_weight=feedback_weight,
                                                  **strategy_hp, **config)
        except ValueError as err:
            if "unknown hyperparameter" in str(err):
                raise ValueError(f"{err}; other options are the RunConfig fields {list(_RUN_FIELDS)}") from None
            raise
        self.key = jax.random.key(seed)
        self.compilation_cache = enable_compilation_cache(enabled=compilation_cache)
        self.reset()

    # ----- state ------------------------------------------------------------------------------------------
    def reset(self) -> None:
        """Back to the untrained agent (the parameters the loop started with); forgets what cycles learned."""
        self.state: Optional[TrainState] = None
        self.params = _init_params(self.model, self._run_key(1))
        self.results = None
        self._step_state: Optional[TrainState] = None  # train_step's own state (optimizer moments)
        self._step_count = 0

    def _run_key(self, i):
        return jax.random.fold_in(self.key, i)

    def _run_for(self, num_tasks: int, episodes_per_task: int):
        source = EnvSource(self.model, self.environment, num_tasks=num_tasks, num_envs=self.num_envs,
                           objective=self.objective)
        config = RunConfig(strategy=self._strategy_spec, episodes_per_task=episodes_per_task,
                           **self.config_overrides)
        return make_run(config, source)

    def _state_for(self, run) -> TrainState:
        """The loop's current state in ``run``'s layout: the current parameters with the strategy's memory of earlier
        cycles when the shapes agree, else a fresh strategy state around the current parameters."""
        fresh = run.init(self._run_key(0), self.hparams)
        fresh = fresh._replace(params=self.params, strategy=run.strategy.init(self.params, self.hparams.strategy))
        if self.state is not None and jax.tree.structure(self.state) == jax.tree.structure(fresh) and all(
                a.shape == b.shape for a, b in zip(jax.tree.leaves(self.state), jax.tree.leaves(fresh))):
            return self.state._replace(params=self.params)
        return fresh

    # ----- the cycle --------------------------------------------------------------------------------------
    def continual_learning_cycle(self, num_tasks: int = 3, episodes_per_task: int = 10,
                                 verbose: bool = False) -> dict:
        """Learns ``num_tasks`` tasks of the environment's family in sequence, evaluating on all of them after each.

        The cycle continues from the loop's current agent: its parameters (as left by ``train_step`` or an earlier
        cycle) and its strategy's memory of the tasks consolidated before. ``reset()`` starts afresh. Scores use the
        same evaluation keys in every cycle, so a cycle's ``baseline`` is the previous cycle's last row of ``R``.

        ``verbose``: print a line before compiling (the first cycle of a configuration in a process), a progress bar
        over tasks (``tqdm.auto``: a widget in a notebook, on stderr in a terminal), one line per task numbered from 1
        (its last loss and penalty and its scores on every task), then the performance matrix and the summary.

        Returns a dict of Python floats and lists: ``average_performance``, ``backward_transfer``,
        ``forward_transfer``, ``average_forgetting``, the performance matrix ``R`` (list of rows) and the scores
        before the cycle, ``baseline``. The final state stays on the object (``params``, ``state``, ``results``).
        """
        num_tasks = _check_count("num_tasks", num_tasks)
        episodes_per_task = _check_count("episodes_per_task", episodes_per_task)
        run = self._run_for(num_tasks, episodes_per_task)
        # Every cycle uses the same run key, hence the same evaluation keys: a cycle's baseline is the previous
        # cycle's last row. The training data still differ: they are rollouts of the agent as it is now.
        key = self._run_key(2)

        bar = None
        if verbose:
            if run not in _COMPILED_RUNS:
                print("compiling the run (20-60 s on a CPU the first time; cached afterwards) ...", flush=True)
            from tqdm.auto import tqdm
            bar = tqdm(total=num_tasks, desc="tasks", unit="task", leave=False, disable=None)  # no bar off a terminal

        def report(task_id, state, row, trace):
            if verbose:
                scores = " ".join(f"{s:+.3f}" for s in np.asarray(row))
                bar.write(f"task {task_id + 1}/{num_tasks}: loss {float(trace['loss'][-1]):.4f}  "
                          f"penalty {float(trace['penalty'][-1]):.4f}  scores on all tasks [{scores}]")
                bar.update(1)

        state = self._state_for(run)
        try:
            self.state, self.results = run.run_stepwise(key, self.hparams, callback=report, state=state)
        finally:
            if bar is not None:
                bar.close()
        _COMPILED_RUNS.add(run)
        self.params = self.state.params
        self._step_state = None  # the next train_step starts from the new agent with a fresh optimizer
        check_finite(self.results.traces["finite"], where="continual_learning_cycle")
        R, baseline = np.asarray(self.results.R), np.asarray(self.results.baseline)
        summary = {k: float(v) for k, v in metrics_lib.summarize(R, baseline).items() if np.ndim(v) == 0}
        summary.update(R=R.tolist(), baseline=baseline.tolist())
        if verbose:
            print(metrics_lib.format_matrix(R))
            print()
            print(metrics_lib.format_summary(metrics_lib.summarize(R, baseline)))
        return summary

    def cycle_over_seeds(self, seeds: int = 5, num_tasks: int = 3, episodes_per_task: int = 10,
                         devices: Any = None) -> dict:
        """The cycle from scratch for ``seeds`` independent agents of this loop's configuration, all in one
        compiled program, the seeds spread over ``devices`` (None: every device; a count; or a sequence of
        devices; see :meth:`clloop_jax.run.sequential.Run.seeds`). The loop's own agent is neither used nor changed.

        Seed ``i`` uses the key ``fold_in(key(seed), 1000 + i)``. Returns
        :func:`clloop_jax.report.summary` of the seeds (per metric: ``mean``, 95% interval ``ci``, ``n``, every
        seed's ``values``) with ``R [S, T, T]`` and ``baseline [S, T]`` as nested lists. Raises
        :class:`~clloop_jax.run.errors.NonFiniteError` naming the seed, task and episode where an update went
        non-finite.
        """
        from clloop_jax import report
        seeds = _check_count("seeds", seeds)
        num_tasks = _check_count("num_tasks", num_tasks)
        episodes_per_task = _check_count("episodes_per_task", episodes_per_task)
        run = self._run_for(num_tasks, episodes_per_task)
        keys = jax.vmap(lambda i: jax.random.fold_in(self.key, i))(1000 + jnp.arange(seeds))
        _, results = run.seeds(keys, self.hparams, devices=devices)
        check_finite(results.traces["finite"], where="cycle_over_seeds")
        R, baseline = np.asarray(results.R), np.asarray(results.baseline)
        out = report.summary(R, baseline)
        out.update(R=R.tolist(), baseline=baseline.tolist())
        return out

    # ----- one step ---------------------------------------------------------------------------------------
    def train_step(self, observations, target, feedback=None) -> float:
        """One update of the agent towards ``target`` actions on given observations; returns the loss.

        ``observations``: ``[M, D]`` (one step), ``[B, M, D]`` (a batch of single steps) or ``[T, B, M, D]``
        (time-major sequences, trained with backpropagation through time); ``target``: the same leading axes
        with ``output_dim`` last; ``feedback``: the same leading axes with ``feedback_dim`` last (zeros if None).
        The step is the run's own update (same optimizer, clipping and strategy penalty, so after a cycle the
        consolidated tasks stay protected); the loss returned is the objective plus the penalty. Non-finite inputs
        are refused; a step that would make the parameters non-finite raises and leaves them unchanged. Each input
        is a real numeric array (or a nested list of numbers): integer values are converted to float32 (``3`` is
        taken as ``3.0``); strings, ``None`` (but for ``feedback``), ragged lists and boolean or complex values are
        refused naming the argument.
        """
        obs, feedback = self._check_inputs(observations, feedback, ranks=(2, 3, 4),
                                           shapes="[M, D], [B, M, D] or [T, B, M, D]")
        lead = obs.shape[:-2]
        target = _finite_float32("target", target)
        if target.shape != lead + (self.model.output_dim,):
            raise ValueError(f"target must have shape {lead + (self.model.output_dim,)} for observations of shape "
                             f"{obs.shape}, got {target.shape}")
        if obs.ndim == 2:
            obs, target, feedback = obs[None, None], target[None, None], feedback[None, None]
        elif obs.ndim == 3:
            obs, target, feedback = obs[None], target[None], feedback[None]
        run = self._step_run()
        if self._step_state is None:
            self._step_state = self._state_for(run)
        zeros = jnp.zeros(target.shape[:-1])
        batch = Trajectory(obs, feedback, jnp.zeros_like(target), target, zeros, zeros.astype(bool))
        self._step_count += 1
        state, trace = _jit_update(run, self._step_state, batch, jax.random.fold_in(self._run_key(4),
                                                                                     self._step_count), self.hparams)
        if not bool(trace["finite"]):
            raise NonFiniteError("train_step: the loss, gradient or new parameters were not finite; the parameters "
                                  "were left unchanged")
        self._step_state = state
        self.params = state.params
        return float(trace["loss"] + trace["penalty"])

    def _check_inputs(self, observations, feedback, ranks, shapes):
        """``(obs, feedback)`` as float32 arrays of matching leading axes (zero feedback if None), checked."""
        obs = _finite_float32("observations", observations)
        M, dims = self.model.num_modalities, tuple(self.model.modality_dims)
        if len(set(dims)) != 1:
            raise ValueError(f"observations must be one array [..., M, D], which needs equal modality sizes; the "
                             f"model has modality sizes {dims}")
        if obs.ndim not in ranks or obs.shape[-2:] != (M, dims[0]):
            raise ValueError(f"observations must have shape {shapes} with (M, D) = {(M, dims[0])}, got shape "
                             f"{obs.shape}")
        lead = obs.shape[:-2]
        if feedback is None:
            feedback = jnp.zeros(lead + (self.model.feedback_dim,), jnp.float32)
        feedback = _finite_float32("feedback", feedback)
        if feedback.shape != lead + (self.model.feedback_dim,):
            raise ValueError(f"feedback must have shape {lead + (self.model.feedback_dim,)}, got {feedback.shape}")
        return obs, feedback

    # ----- the agent as a function ------------------------------------------------------------------------
    def act(self, observations, internal_state=None, feedback=None):
        """``output, internal_state = loop.act(observations)``: one step of the agent with the loop's current
        parameters (``self.act(observations)`` in a subclass; the stateful ``self.model(observations)`` of an
        object-oriented model).

        ``observations``: ``[M, D]`` (one step) or ``[B, M, D]`` (a batch); ``internal_state``: the recurrent carry
        ``[hidden_dim]`` / ``[B, hidden_dim]`` to start from (None: the model's initial carry, zeros);
        ``feedback``: ``[feedback_dim]`` / ``[B, feedback_dim]`` (None: zeros, as at an episode's first step).
        Returns the output ``[..., output_dim]`` and the new internal state ``[..., hidden_dim]``, the same as
        ``self.model.apply(self.params, internal_state, observations, feedback)`` with its pair swapped. Pass the
        returned state back in to step through a sequence. The result carries no gradient of the loop's training;
        a custom loss trains through ``loss_fn=`` or ``objective=`` (see ``docs/guides/description.md``).
        ``observations`` and ``feedback`` are checked as in :meth:`train_step` (integer values become float32).
        """
        obs, feedback = self._check_inputs(observations, feedback, ranks=(2, 3), shapes="[M, D] or [B, M, D]")
        lead = obs.shape[:-2]
        if internal_state is None:
            carry = self.model.initial_carry(lead)
        else:
            carry = jnp.asarray(internal_state, jnp.float32)
            if carry.shape != lead + (self.model.hidden_dim,):
                raise ValueError(f"internal_state must have shape {lead + (self.model.hidden_dim,)} (the model's "
                                 f"carry for observations of shape {obs.shape}), got {carry.shape}")
        carry, output = _jit_act(self.model, self.params, carry, obs, feedback)
        return output, carry

    def _step_run(self):
        """The run whose update ``train_step`` uses: that of the last cycle, or a one-task run before any."""
        tasks = 1 if self.results is None else int(np.shape(self.results.R)[0])
        episodes = 1 if self.results is None else int(np.shape(self.results.traces["loss"])[1])
        return self._run_for(tasks, episodes)



def _finite_float32(name, value):
    """``value`` as a float32 array: a real numeric array or nested list (integers become floats), all finite; a
    ``TypeError`` or ``ValueError`` naming ``name`` otherwise."""
    x = jnp.asarray(check_array(name, value), jnp.float32)
    if not bool(jnp.all(jnp.isfinite(x))):
        raise ValueError(f"{name} must be finite; got NaN or infinite values")
    return x


_init_params = Program(lambda model, key: model.init_params(key))
#: The runs this process has compiled (a cycle's run is compiled once per configuration, then reused).
_COMPILED_RUNS: set = set()
_jit_act = Program(lambda model, params, carry, obs, feedback: model.apply(params, carry, obs, feedback))
_jit_update = Program(lambda run, state, batch, key, hp: run.update(state, batch, key, hp))
