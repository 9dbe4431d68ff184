"""Typed, frozen configurations of an experiment in the closed loop, validated eagerly, and what they build.

``ExperimentConfig(world=WorldConfig(...), model=ModelConfig(...), train=TrainConfig(...))`` describes one run; its
:meth:`~ExperimentConfig.build` gives the :class:`~clloop_jax.loop.Run` and its :class:`~clloop_jax.loop.HParams`.
:data:`PRESETS` names ready-made ones (``tiny``: a few seconds after compilation; ``default``: the README's forgetting
experiment). The command line (:mod:`clloop_jax.cli`) is these dataclasses, field for field.
"""

from __future__ import annotations

import dataclasses
from typing import Tuple

from clloop_jax.envs import Environment
from clloop_jax.loop import FISHER_VARIANTS, HParams, Run, RunConfig, make_run
from clloop_jax.model import CrossModalModel
from clloop_jax.sources import EnvSource
from clloop_jax.strategies import get_strategy

__all__ = ["WorldConfig", "ModelConfig", "TrainConfig", "ExperimentConfig", "PRESETS", "DEFAULT_LAMBDA"]

#: Penalty strength per strategy in the default world (chosen on seed 0 of a shorter run; README, "Results").
DEFAULT_LAMBDA = {"none": 0.0, "l2": 0.3, "ewc": 3.0, "online_ewc": 3.0, "si": 30.0, "mas": 1.0, "ewc_budget": 3.0}


def _positive_int(owner, name, value):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{owner}.{name} must be an integer >= 1, got {value!r}")


@dataclasses.dataclass(frozen=True)
class WorldConfig:
    """The default closed-loop world (:class:`~clloop_jax.envs.Environment`)."""

    observation_dim: int = 64
    action_dim: int = 32
    num_modalities: int = 2
    latent_dim: int = 8
    episode_length: int = 40
    num_tasks: int = 3
    world_seed: int = 0

    def __post_init__(self):
        for f in dataclasses.fields(self):
            if f.name != "world_seed":
                _positive_int("world", f.name, getattr(self, f.name))
        self.make()  # the world's own checks

    def make(self) -> Environment:
        return Environment(observation_dim=self.observation_dim, action_dim=self.action_dim,
                           num_modalities=self.num_modalities, latent_dim=self.latent_dim,
                           episode_length=self.episode_length, num_tasks=self.num_tasks, world_seed=self.world_seed)


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """The agent (:class:`~clloop_jax.model.CrossModalModel`); its input and output sizes come from the world."""

    hidden_dim: int = 64
    num_heads: int = 4

    def __post_init__(self):
        _positive_int("model", "hidden_dim", self.hidden_dim)
        _positive_int("model", "num_heads", self.num_heads)
        if self.hidden_dim % self.num_heads:
            raise ValueError(f"model.hidden_dim must be a multiple of model.num_heads={self.num_heads}, "
                             f"got {self.hidden_dim}")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """How the agent learns: the strategy and its strength, the optimizer, the monitors.

    ``lam`` None takes :data:`DEFAULT_LAMBDA` of the strategy; ``gamma`` reaches only the strategies that decay
    (``online_ewc``, ``ewc_budget``).
    """

    strategy: str = "ewc"
    episodes_per_task: int = 150
    num_envs: int = 8
    learning_rate: float = 1e-3
    lam: float | None = None
    gamma: float = 0.9
    feedback_weight: float = 0.3
    fisher_variant: str = "sampled"
    monitors: Tuple[str, ...] = ("parameter", "fisher", "functional")

    def __post_init__(self):
        get_strategy(self.strategy)
        _positive_int("train", "episodes_per_task", self.episodes_per_task)
        _positive_int("train", "num_envs", self.num_envs)
        if self.fisher_variant not in FISHER_VARIANTS:
            raise ValueError(f"train.fisher_variant must be one of {list(FISHER_VARIANTS)}, got {self.fisher_variant!r}")
        object.__setattr__(self, "monitors", tuple(self.monitors))

    @property
    def strength(self) -> float:
        return DEFAULT_LAMBDA.get(self.strategy, 1.0) if self.lam is None else self.lam


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
    """One experiment: the world, the agent, how it learns, and how many seeds (``0..seeds-1``)."""

    world: WorldConfig = WorldConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    seeds: int = 5

    def __post_init__(self):
        _positive_int("experiment", "seeds", self.seeds)
        for name, cls in (("world", WorldConfig), ("model", ModelConfig), ("train", TrainConfig)):
            if not isinstance(getattr(self, name), cls):
                raise TypeError(f"experiment.{name} must be a {cls.__name__}, got {type(getattr(self, name)).__name__}")
        self.build()  # every hyperparameter checked now, before anything is traced

    def with_strategy(self, strategy: str, lam: float | None = None) -> "ExperimentConfig":
        return dataclasses.replace(self, train=dataclasses.replace(self.train, strategy=strategy, lam=lam))

    def build(self) -> Tuple[Run, HParams]:
        """The run and its hyperparameters."""
        env = self.world.make()
        model = CrossModalModel(input_dim=self.world.observation_dim, hidden_dim=self.model.hidden_dim,
                                output_dim=self.world.action_dim, num_modalities=self.world.num_modalities,
                                num_heads=self.model.num_heads)
        source = EnvSource(model, env, num_tasks=self.world.num_tasks, num_envs=self.train.num_envs)
        t = self.train
        run = make_run(RunConfig(strategy=t.strategy, episodes_per_task=t.episodes_per_task,
                                 fisher_variant=t.fisher_variant, monitors=t.monitors), source)
        names = run.hparams().names()
        own = {k: v for k, v in (("lam", t.strength), ("gamma", t.gamma)) if k in names}
        return run, run.hparams(learning_rate=t.learning_rate, feedback_weight=t.feedback_weight, **own)


PRESETS = {
    "default": ExperimentConfig(),
    "tiny": ExperimentConfig(
        world=WorldConfig(observation_dim=8, action_dim=4, num_modalities=2, latent_dim=4, episode_length=8,
                          num_tasks=2),
        model=ModelConfig(hidden_dim=8, num_heads=2),
        train=TrainConfig(episodes_per_task=10, num_envs=4, learning_rate=1e-2),
        seeds=2),
}
