"""clloop_jax: continual learning in a closed loop, in JAX/Flax.

The public names are gathered here; each lives in the module named next to it:

* the agent: :class:`CrossModalModel`, :class:`SequenceClassifier`, :class:`MLP` (``model``);
* the world: :class:`Environment` / :class:`LatentWorld`, :class:`MultiModalEnv`, :func:`rollout` (``envs``);
* what a run learns from: :class:`EnvSource` (the closed loop), :class:`SupervisedSource` (labelled streams over
  ``data``), :class:`GymnaxSource` (reward, with the PPO maths of ``rl``) (``sources``);
* the science: :func:`fisher_diagonal`, :func:`per_sample_grads`, :func:`mas_importance` (``importance``), the
  strategies behind one interface, :class:`Strategy`, :func:`get_strategy` and :func:`chain` (several strategies as
  one) (``strategies``), a strategy bound to
  its numbers, :func:`make_regularizer` (``strategies.regularizers``), :func:`parameter_divergence`,
  :func:`functional_divergence` (``divergence``), opt-in monitors (``monitors``), :func:`summarize` and the field's
  metrics (``metrics``);
* the run: :func:`make_run`, :func:`make_joint_run`, :class:`RunConfig`, :class:`HParams` (``run``);
* task-free streams (hidden task boundaries): :func:`abrupt_schedule`, :func:`irregular_schedule`,
  :func:`gradual_schedule`, the :class:`PageHinkley` shift detector, :func:`make_taskfree_run`,
  :func:`detection_metrics`, :func:`taskfree_summary` (``taskfree``); boundary-free ``streaming_ewc`` and
  ``streaming_si`` strategies (``strategies.streaming``);
* the object API: :class:`ContinualLearningLoop` (``facade``);
* studies: configurations, run folders, the ``clloop`` command line, :func:`enable_compilation_cache` for entry
  points, sharding over devices (``workflow``).

Importing the package is cheap: each public name is imported from its module the first time it is used
(``from clloop_jax import make_run`` imports ``clloop_jax.run.sequential`` then), so the ``clloop`` command line
starts without loading JAX; ``clloop_jax.run`` and the other subpackages are reachable as attributes as well.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the same names, for type checkers and editors
    from clloop_jax.workflow.compilation import enable_compilation_cache
    from clloop_jax.divergence import functional_divergence, output_divergence, parameter_divergence
    from clloop_jax.envs import (EnvParams, EnvState, Environment, LatentWorld, MultiModalEnv, PrivilegedPolicy,
                                 Trajectory, expert_policy, normalized_score, rollout)
    from clloop_jax.facade import ContinualLearningLoop
    from clloop_jax.importance.fisher import Categorical, Gaussian, fisher_diagonal, mas_importance, per_sample_grads
    from clloop_jax.run.errors import DivergenceError, NonFiniteError
    from clloop_jax.run.config import HParams, RunConfig
    from clloop_jax.run.sequential import RunResults, TrainState, make_run
    from clloop_jax.run.joint import make_joint_run
    from clloop_jax.metrics import (average_forgetting, average_performance, backward_transfer, forward_transfer,
                                    mean_ci, summarize)
    from clloop_jax.backbones import ConvNet, ResNet18
    from clloop_jax.model import MLP, CrossModalModel, SequenceClassifier
    from clloop_jax.strategies.regularizers import STRATEGIES, make_regularizer, penalty_gradient_transform
    from clloop_jax.monitors import Monitor
    from clloop_jax.sources.gymnax import GymnaxSource
    from clloop_jax.rl.ppo import RLHParams
    from clloop_jax.sources.world import EnvHParams, EnvSource
    from clloop_jax.sources.supervised import SupervisedBatch, SupervisedSource
    from clloop_jax.strategies import Strategy, chain, get_strategy, register
    from clloop_jax.taskfree.detect import PageHinkley
    from clloop_jax.taskfree.schedules import Schedule, abrupt_schedule, gradual_schedule, irregular_schedule
    from clloop_jax.taskfree.run import TaskFreeResults, TaskFreeRun, make_taskfree_run
    from clloop_jax.taskfree.metrics import detection_metrics, taskfree_summary

__version__ = "0.1.0"

#: Where each public name lives.
_EXPORTS = {
    "functional_divergence": "divergence", "output_divergence": "divergence", "parameter_divergence": "divergence",
    "EnvParams": "envs", "EnvState": "envs", "Environment": "envs", "LatentWorld": "envs", "MultiModalEnv": "envs",
    "PrivilegedPolicy": "envs", "Trajectory": "envs", "expert_policy": "envs", "normalized_score": "envs",
    "rollout": "envs",
    "ContinualLearningLoop": "facade",
    "Categorical": "importance.fisher", "Gaussian": "importance.fisher", "fisher_diagonal": "importance.fisher",
    "mas_importance": "importance.fisher", "per_sample_grads": "importance.fisher",
    "average_forgetting": "metrics", "average_performance": "metrics", "backward_transfer": "metrics",
    "forward_transfer": "metrics", "mean_ci": "metrics", "summarize": "metrics",
    "ConvNet": "backbones", "ResNet18": "backbones", "MLP": "model", "CrossModalModel": "model",
    "SequenceClassifier": "model",
    "Monitor": "monitors",
    "RLHParams": "rl.ppo",
    "HParams": "run.config", "RunConfig": "run.config",
    "NonFiniteError": "run.errors", "DivergenceError": "run.errors",
    "make_joint_run": "run.joint",
    "RunResults": "run.sequential", "TrainState": "run.sequential", "make_run": "run.sequential",
    "GymnaxSource": "sources.gymnax",
    "SupervisedBatch": "sources.supervised", "SupervisedSource": "sources.supervised",
    "EnvHParams": "sources.world", "EnvSource": "sources.world",
    "Strategy": "strategies", "chain": "strategies", "get_strategy": "strategies", "register": "strategies",
    "STRATEGIES": "strategies.regularizers", "make_regularizer": "strategies.regularizers",
    "penalty_gradient_transform": "strategies.regularizers",
    "PageHinkley": "taskfree.detect",
    "detection_metrics": "taskfree.metrics", "taskfree_summary": "taskfree.metrics",
    "TaskFreeResults": "taskfree.run", "TaskFreeRun": "taskfree.run", "make_taskfree_run": "taskfree.run",
    "Schedule": "taskfree.schedules", "abrupt_schedule": "taskfree.schedules",
    "gradual_schedule": "taskfree.schedules", "irregular_schedule": "taskfree.schedules",
    "enable_compilation_cache": "workflow.compilation",
}

__all__ = ["Categorical", "ContinualLearningLoop", "ConvNet", "CrossModalModel", "DivergenceError", "NonFiniteError",
           "EnvHParams",
           "EnvParams", "EnvSource", "EnvState", "Environment", "Gaussian", "GymnaxSource", "HParams", "LatentWorld",
           "MLP", "Monitor", "MultiModalEnv", "PageHinkley", "PrivilegedPolicy", "RLHParams", "ResNet18",
           "RunConfig", "RunResults",
           "STRATEGIES", "Schedule", "SequenceClassifier", "Strategy", "SupervisedBatch", "SupervisedSource",
           "TaskFreeResults", "TaskFreeRun", "TrainState", "Trajectory", "abrupt_schedule", "average_forgetting",
           "average_performance", "backward_transfer", "chain", "detection_metrics", "enable_compilation_cache",
           "expert_policy",
           "fisher_diagonal", "forward_transfer", "functional_divergence", "get_strategy", "gradual_schedule",
           "irregular_schedule", "make_joint_run", "make_regularizer", "make_run", "make_taskfree_run",
           "mas_importance", "mean_ci", "normalized_score", "output_divergence", "parameter_divergence",
           "penalty_gradient_transform", "per_sample_grads", "register", "rollout", "summarize", "taskfree_summary"]


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
