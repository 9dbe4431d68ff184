"""``ContinualLearningLoop``: a small stateful object over the pure run, handy in a notebook.

It holds the model, the environment, the hyperparameters and what the last cycle learned, and delegates all work to
:func:`clloop_jax.loop.make_run` (compiled once per configuration and reused across calls)::

    loop = ContinualLearningLoop(model=model, environment=env, learning_rate=1e-3, ewc_lambda=0.5,
                                 feedback_weight=0.3)
    metrics = loop.continual_learning_cycle(num_tasks=3, episodes_per_task=10, verbose=True)
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from clloop_jax import metrics as metrics_lib
from clloop_jax.loop import HParams, RunConfig, make_regularizer, make_run
from clloop_jax.sources import EnvSource, check_model_matches_env, sequence_mse


class ContinualLearningLoop:
    """An agent learning task after task in a closed loop with an environment.

    Args:
      model: a :class:`~clloop_jax.model.CrossModalModel` whose sizes match ``environment``.
      environment: a :class:`~clloop_jax.envs.MultiModalEnv` with a task family (``tasks(num_tasks)``).
      learning_rate: Adam's step size.
      ewc_lambda: the penalty strength lambda of the strategy.
      feedback_weight: scale of the environment's feedback (reward, previous action) fed back to the model.
      strategy: ``none``, ``l2``, ``ewc``, ``online_ewc``, ``si``, ``mas`` or ``ewc_budget``.
      seed: the run's seed (a ``jax.random.key``).
      num_envs: parallel environments per training episode.
      **config: further :class:`~clloop_jax.loop.RunConfig` fields (``fisher_variant``, ``num_probes``, ...) or
        :class:`~clloop_jax.loop.HParams` fields (``gamma``, ``xi``, ``budget``, ``dual_lr``).
    """

    def __init__(self, model, environment, learning_rate: float = 1e-3, ewc_lambda: float = 0.5,
                 feedback_weight: float = 0.3, *, strategy: str = "ewc", seed: int = 0, num_envs: int = 8,
                 **config: Any):
        check_model_matches_env(model, environment)
        hp_fields = {k: config.pop(k) for k in list(config) if k in HParams._fields}
        run_fields = {f.name for f in dataclasses.fields(RunConfig)} - {"strategy", "episodes_per_task"}
        unknown = sorted(set(config) - run_fields)
        if unknown:
            raise ValueError(f"unknown option(s) {unknown}; valid ones are the RunConfig fields {sorted(run_fields)} "
                             f"and the HParams fields {list(HParams._fields)}")
        self.hparams = HParams.create(learning_rate=learning_rate, reg_lambda=ewc_lambda,
                                      feedback_weight=feedback_weight, **hp_fields)
        self.model, self.environment = model, environment
        self.strategy, self.num_envs, self.config_overrides = strategy, num_envs, config
        RunConfig(strategy=strategy, **config)  # validate eagerly
        self.key = jax.random.key(seed)
        self.params = model.init_params(jax.random.fold_in(self.key, 1))
        self.state = None
        self.results = None
        self._runs: dict = {}
        self._train_step = None
        self._opt_state = None

    def _run_for(self, num_tasks: int, episodes_per_task: int):
        cache_key = (num_tasks, episodes_per_task)
        if cache_key not in self._runs:
            source = EnvSource(self.model, self.environment, num_tasks=num_tasks, num_envs=self.num_envs)
            config = RunConfig(strategy=self.strategy, episodes_per_task=episodes_per_task, **self.config_overrides)
            self._runs[cache_key] = make_run(config, source)
        return self._runs[cache_key]

    def continual_learning_cycle(self, num_tasks: int = 3, episodes_per_task: int = 10,
                                 verbose: bool = False) -> dict:
        """Learns ``num_tasks`` tasks in sequence, evaluating on all of them after each one.

        Returns a dict of Python floats and lists: ``average_performance``, ``backward_transfer``,
        ``forward_transfer``, ``average_forgetting``, the performance matrix ``R`` (list of rows) and the
        untrained ``baseline`` scores. The final state stays on the object (``params``, ``state``, ``results``).
        """
        for name, value in (("num_tasks", num_tasks), ("episodes_per_task", episodes_per_task)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        run = self._run_for(int(num_tasks), int(episodes_per_task))

        def report(task_id, state, row, trace):
            if verbose:
                scores = " ".join(f"{s:+.3f}" for s in np.asarray(row))
                print(f"task {task_id + 1}/{num_tasks}: loss {float(trace.loss[-1]):.4f}  "
                      f"penalty {float(trace.penalty[-1]):.4f}  scores on all tasks [{scores}]", flush=True)

        self.state, self.results = run.run_stepwise(self.key, self.hparams, callback=report)
        self.params = self.state.params
        self._opt_state = None  # train_step starts a fresh optimizer from the new parameters
        R, baseline = np.asarray(self.results.R), np.asarray(self.results.baseline)
        summary = {k: float(v) for k, v in metrics_lib.summarize(R, baseline).items() if np.ndim(v) == 0}
        summary.update(R=R.tolist(), baseline=baseline.tolist())
        if verbose:
            print(metrics_lib.format_matrix(R))
            print(metrics_lib.format_summary(metrics_lib.summarize(R, baseline)))
        return summary

    def train_step(self, observations, target, feedback=None) -> float:
        """One Adam step of the model towards ``target`` actions on given observations; returns the loss.

        ``observations``: ``[M, D]`` (one step), ``[B, M, D]`` (a batch of single steps) or ``[T, B, M, D]``
        (time-major sequences, trained with backpropagation through time); ``target``: the same leading axes
        with ``output_dim`` last; ``feedback``: the same leading axes with ``feedback_dim`` last (zeros if None).
        The penalty of the last consolidated task is added when a cycle has run.
        """
        obs = jnp.asarray(observations, jnp.float32)
        target = jnp.asarray(target, jnp.float32)
        M, dims = self.model.num_modalities, tuple(self.model.modality_dims)
        if len(set(dims)) != 1:
            raise ValueError(f"observations must be one array [..., M, D], which needs equal modality sizes; the "
                             f"model has modality sizes {dims}")
        if obs.ndim not in (2, 3, 4) or obs.shape[-2:] != (M, dims[0]):
            raise ValueError(f"observations must have shape [M, D], [B, M, D] or [T, B, M, D] with (M, D) = "
                             f"{(M, dims[0])}, got shape {obs.shape}")
        lead = obs.shape[:-2]
        if target.shape != lead + (self.model.output_dim,):
            raise ValueError(f"target must have shape {lead + (self.model.output_dim,)} for observations of shape "
                             f"{obs.shape}, got {target.shape}")
        if feedback is None:
            feedback = jnp.zeros(lead + (self.model.feedback_dim,), jnp.float32)
        feedback = jnp.asarray(feedback, jnp.float32)
        if feedback.shape != lead + (self.model.feedback_dim,):
            raise ValueError(f"feedback must have shape {lead + (self.model.feedback_dim,)}, got {feedback.shape}")
        if obs.ndim == 2:
            obs, target, feedback = obs[None, None], target[None, None], feedback[None, None]
        elif obs.ndim == 3:
            obs, target, feedback = obs[None], target[None], feedback[None]
        if self._train_step is None:
            self._train_step = self._make_train_step()
        if self._opt_state is None:
            self._opt_state = self._optimizer.init(self.params)
        reg_state = self.state.reg_state if self.state is not None else None
        self.params, self._opt_state, loss = self._train_step(self.params, self._opt_state, reg_state, obs,
                                                              feedback, target)
        return float(loss)

    def _make_train_step(self):
        model, hp = self.model, self.hparams
        self._optimizer = optax.adam(hp.learning_rate)
        num_tasks = lambda: self.results.R.shape[0]  # noqa: E731  (the consolidated run's task count)

        @jax.jit
        def step(params, opt_state, reg_state, obs, feedback, target):
            def loss_fn(p):
                loss, _ = sequence_mse(model, p, obs, feedback, target)
                if reg_state is not None:
                    loss = loss + make_regularizer(self.strategy, hp, num_tasks()).penalty(reg_state, p)
                return loss

            loss, grads = jax.value_and_grad(loss_fn)(params)
            updates, opt_state = self._optimizer.update(grads, opt_state, params)
            return optax.apply_updates(params, updates), opt_state, loss

        return step
