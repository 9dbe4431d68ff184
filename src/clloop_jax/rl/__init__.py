"""Reinforcement-learning maths for the actor-critic task source :class:`clloop_jax.sources.gymnax.GymnaxSource`.
"""

from clloop_jax.rl.ppo import (RLHParams, RLBatch, PPOMinibatch, RolloutState, GaussianPolicyLikelihood, gae,
                               clipped_surrogate, minibatch_indices)  # noqa: F401
from clloop_jax.rl.tasks import task_params  # noqa: F401

__all__ = ["RLHParams", "RLBatch", "PPOMinibatch", "RolloutState", "GaussianPolicyLikelihood", "gae",
           "clipped_surrogate", "minibatch_indices", "task_params"]
