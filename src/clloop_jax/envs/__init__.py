"""gymnax-compatible multi-modal environments with task switching, and closed-loop rollouts."""
from clloop_jax.envs.base import MultiModalEnv, check_world, normalized_score
from clloop_jax.envs.latent import EnvParams, EnvState, Environment, LatentWorld
from clloop_jax.envs.rollout import PrivilegedPolicy, Trajectory, expert_policy, rollout

__all__ = [
    "EnvParams",
    "EnvState",
    "Environment",
    "LatentWorld",
    "MultiModalEnv",
    "PrivilegedPolicy",
    "Trajectory",
    "check_world",
    "expert_policy",
    "normalized_score",
    "rollout",
]
