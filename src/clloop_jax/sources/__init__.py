"""Task sources: what the continual trainer learns from, one task at a time (see :mod:`.base`).

The one protocol, :class:`~clloop_jax.sources.base.TaskSource`, and the sources that ship: the closed loop
(:mod:`.world`), labelled streams (:mod:`.supervised`), gymnax environments learned from reward (:mod:`.gymnax`),
and mixtures of a source's tasks (:mod:`.mixture`).
"""

from clloop_jax.sources.base import TaskSource  # noqa: F401
from clloop_jax.sources.world import (EnvHParams, EnvSource, ImitationLoss, imitation_loss, squared_error,
                                      sequence_actions, pair_with_env, check_model_matches_env)  # noqa: F401
from clloop_jax.sources.supervised import SupervisedBatch, SupervisedSource  # noqa: F401
from clloop_jax.sources.gymnax import GymnaxSource  # noqa: F401
from clloop_jax.sources.mixture import draw_tasks, mixture_batch  # noqa: F401

__all__ = ["TaskSource", "EnvHParams", "EnvSource", "ImitationLoss", "imitation_loss", "squared_error",
           "sequence_actions", "pair_with_env", "check_model_matches_env", "SupervisedBatch", "SupervisedSource",
           "GymnaxSource", "draw_tasks", "mixture_batch"]
