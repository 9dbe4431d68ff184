"""clloop_jax: continual learning in a closed loop, in JAX/Flax.

The public names are gathered here; each lives in the module named next to it:

* the agent: :class:`CrossModalModel`, :class:`SequenceClassifier`, :class:`MLP` (``model``);
* the world: :class:`Environment` / :class:`LatentWorld`, :class:`MultiModalEnv`, :func:`rollout` (``envs``);
* the science: :func:`fisher_diagonal`, :func:`per_sample_grads`, :func:`mas_importance` (``fisher``), the
  strategies behind one interface, :class:`Strategy` and :func:`get_strategy` (``strategies``), a strategy bound to
  its numbers, :func:`make_regularizer` (``regularizers``), :func:`parameter_divergence`,
  :func:`functional_divergence` (``divergence``), opt-in monitors (``monitors``), :func:`summarize` and the field's
  metrics (``metrics``);
* the run: :func:`make_run`, :func:`make_joint_run`, :class:`RunConfig`, :class:`HParams` (``loop``) over a task
  source, :class:`EnvSource` and :class:`SupervisedSource` (``sources``); :func:`enable_compilation_cache` for entry
  points (``compilation``);
* task-free streams (hidden task boundaries): :func:`abrupt_schedule`, :func:`irregular_schedule`,
  :func:`gradual_schedule`, the :class:`PageHinkley` shift detector, :func:`make_taskfree_run`,
  :func:`detection_metrics`, :func:`taskfree_summary` (``taskfree``); boundary-free ``streaming_ewc`` and
  ``streaming_si`` strategies (``strategies.streaming``);
* the object API: :class:`ContinualLearningLoop` (``facade``).

Importing the package is cheap: each public name is imported from its module the first time it is used
(``from clloop_jax import make_run`` imports ``clloop_jax.loop`` then), so the ``clloop`` command line starts without
loading JAX; ``clloop_jax.loop`` and the other modules are reachable as attributes as well.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the same names, for type checkers and editors
    from clloop_jax.compilation import enable_compilation_cache
    from clloop_jax.divergence import functional_divergence, output_divergence, parameter_divergence
    from clloop_jax.envs import (EnvParams, EnvState, Environment, LatentWorld, MultiModalEnv, PrivilegedPolicy,
                                 Trajectory, expert_policy, normalized_score, rollout)
    from clloop_jax.facade import ContinualLearningLoop
    from clloop_jax.fisher import Categorical, Gaussian, fisher_diagonal, mas_importance, per_sample_grads
    from clloop_jax.loop import DivergenceError, HParams, RunConfig, RunResults, TrainState, make_joint_run, make_run
    from clloop_jax.metrics import (average_forgetting, average_performance, backward_transfer, forward_transfer,
                                    mean_ci, summarize)
    from clloop_jax.model import MLP, CrossModalModel, SequenceClassifier
    from clloop_jax.regularizers import STRATEGIES, make_regularizer, penalty_gradient_transform
    from clloop_jax.monitors import Monitor
    from clloop_jax.rl import GymnaxSource, RLHParams
    from clloop_jax.sources import EnvHParams, EnvSource, SupervisedBatch, SupervisedSource
    from clloop_jax.strategies import Strategy, get_strategy, register
    from clloop_jax.taskfree import (PageHinkley, Schedule, TaskFreeResults, TaskFreeRun, abrupt_schedule,
                                     detection_metrics, gradual_schedule, irregular_schedule, make_taskfree_run,
                                     taskfree_summary)

__version__ = "0.1.0"

#: Where each public name lives.
_EXPORTS = {
    "enable_compilation_cache": "compilation",
    "functional_divergence": "divergence", "output_divergence": "divergence", "parameter_divergence": "divergence",
    "EnvParams": "envs", "EnvState": "envs", "Environment": "envs", "LatentWorld": "envs", "MultiModalEnv": "envs",
    "PrivilegedPolicy": "envs", "Trajectory": "envs", "expert_policy": "envs", "normalized_score": "envs",
    "rollout": "envs",
    "ContinualLearningLoop": "facade",
    "Categorical": "fisher", "Gaussian": "fisher", "fisher_diagonal": "fisher", "mas_importance": "fisher",
    "per_sample_grads": "fisher",
    "DivergenceError": "loop", "HParams": "loop", "RunConfig": "loop", "RunResults": "loop", "TrainState": "loop",
    "make_joint_run": "loop", "make_run": "loop",
    "average_forgetting": "metrics", "average_performance": "metrics", "backward_transfer": "metrics",
    "forward_transfer": "metrics", "mean_ci": "metrics", "summarize": "metrics",
    "MLP": "model", "CrossModalModel": "model", "SequenceClassifier": "model",
    "STRATEGIES": "regularizers", "make_regularizer": "regularizers", "penalty_gradient_transform": "regularizers",
    "Monitor": "monitors",
    "GymnaxSource": "rl", "RLHParams": "rl",
    "EnvHParams": "sources", "EnvSource": "sources", "SupervisedBatch": "sources", "SupervisedSource": "sources",
    "Strategy": "strategies", "get_strategy": "strategies", "register": "strategies",
    "PageHinkley": "taskfree", "Schedule": "taskfree", "TaskFreeResults": "taskfree", "TaskFreeRun": "taskfree",
    "abrupt_schedule": "taskfree", "detection_metrics": "taskfree", "gradual_schedule": "taskfree",
    "irregular_schedule": "taskfree", "make_taskfree_run": "taskfree", "taskfree_summary": "taskfree",
}

__all__ = [
    "Categorical", "ContinualLearningLoop", "CrossModalModel", "DivergenceError", "EnvHParams", "EnvParams",
    "EnvSource", "EnvState", "Environment", "Gaussian", "GymnaxSource", "HParams", "LatentWorld", "MLP", "Monitor", "MultiModalEnv",
    "PageHinkley", "PrivilegedPolicy", "RLHParams", "RunConfig", "RunResults", "STRATEGIES", "Schedule", "SequenceClassifier",
    "Strategy", "SupervisedBatch", "SupervisedSource", "TaskFreeResults", "TaskFreeRun", "TrainState", "Trajectory",
    "abrupt_schedule", "average_forgetting", "average_performance", "backward_transfer", "detection_metrics",
    "enable_compilation_cache", "expert_policy", "fisher_diagonal", "forward_transfer", "functional_divergence",
    "get_strategy", "gradual_schedule", "irregular_schedule", "make_joint_run", "make_regularizer", "make_run",
    "make_taskfree_run", "mas_importance", "mean_ci", "normalized_score", "output_divergence",
    "parameter_divergence", "penalty_gradient_transform", "per_sample_grads", "register", "rollout", "summarize",
    "taskfree_summary",
]


def __getattr__(name: str):
    """The public names, imported from their modules on first use; the package's modules, as after an import."""
    module = _EXPORTS.get(name)
    if module is not None:
        value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
        globals()[name] = value  # later look-ups skip this function
        return value
    if not name.startswith("_") and importlib.util.find_spec(f"{__name__}.{name}") is not None:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
