"""Typed, frozen configurations of an experiment in the closed loop, validated eagerly, and what they build.

``ExperimentConfig(world=WorldConfig(...), model=ModelConfig(...), train=TrainConfig(...))`` describes one run; its
:meth:`~ExperimentConfig.build` gives the :class:`~clloop_jax.run.sequential.Run` and its
:class:`~clloop_jax.run.config.HParams`.
:data:`PRESETS` names ready-made ones (``tiny``: a few seconds after compilation; ``default``: the README's forgetting
experiment). The command line (:mod:`clloop_jax.workflow.cli`) is these dataclasses, field for field; each field's
docstring is its help text there.

A configuration is a description: constructing one checks every field in plain Python (sizes, names, the ranges of
the numeric hyperparameters) and imports nothing heavy, so the command line parses its arguments and prints its help
without loading JAX. The world, the agent and the run are made by :meth:`ExperimentConfig.build` when an experiment
is run; the library's own checks of the world, the agent and the hyperparameters run there as well.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import struct
from typing import TYPE_CHECKING, Optional, Tuple

if TYPE_CHECKING:  # annotations only: importing these loads JAX
    from clloop_jax.envs import Environment
    from clloop_jax.run.config import HParams
    from clloop_jax.run.sequential import Run

__all__ = ["WorldConfig", "ModelConfig", "TrainConfig", "ExperimentConfig", "PRESETS", "DEFAULT_LAMBDA",
           "DEFAULT_GAMMA", "STRATEGY_NAMES", "MONITOR_NAMES", "FISHER_VARIANTS", "describe_preset"]

#: Penalty strength per strategy in the default world (chosen on seed 0 of a shorter run; README, "Results").
DEFAULT_LAMBDA = {"none": 0.0, "l2": 0.3, "ewc": 3.0, "online_ewc": 3.0, "si": 30.0, "mas": 1.0, "ewc_budget": 3.0}

#: The decay of the running importance (``gamma``) of online_ewc and ewc_budget when it is not given.
DEFAULT_GAMMA = 0.9

#: The built-in strategies by name: :func:`clloop_jax.strategies.registered` before anything else is registered,
#: known here without importing JAX. A strategy registered later (:func:`clloop_jax.strategies.register`) is accepted
#: as well.
STRATEGY_NAMES = ("none", "l2", "ewc", "online_ewc", "si", "mas", "ewc_budget", "replay", "agem", "lwf", "derpp",
                  "streaming_ewc", "streaming_si")

#: The Fisher estimators, as :data:`clloop_jax.run.config.FISHER_VARIANTS`.
FISHER_VARIANTS = ("empirical", "sampled", "exact")


def _positive_int(owner, name, value):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{owner}.{name} must be an integer >= 1, got {value!r}")


_FLOAT32_MAX = 3.4028234663852886e38


def _float32(value: float) -> float:
    """``value`` rounded to float32 (the dtype the run traces hyperparameters in); for ``|value| <= _FLOAT32_MAX``."""
    return struct.unpack("f", struct.pack("f", value))[0]


def _number(owner, name, value, low, high=math.inf, open_low=False):
    """A finite real number in ``[low, high]`` (``(low, high]`` with ``open_low``) that stays so in float32."""
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value > low if open_low else value >= low) and value <= high
    hint = ""
    if ok and abs(value) > _FLOAT32_MAX:
        ok, hint = False, " (it overflows float32 to inf)"
    elif ok and open_low and not _float32(value) > low:
        ok, hint = False, f" (it rounds to {_float32(value):g} in float32)"
    if not ok:
        what = f"a finite number {'>' if open_low else '>='} {low:g}" + (f" and <= {high:g}" if high < math.inf
                                                                         else "")
        raise ValueError(f"{owner}.{name} must be {what}, got {value!r}{hint}")


#: The built-in monitors by name, as :data:`clloop_jax.monitors.MONITORS` before anything else is added there.
MONITOR_NAMES = ("parameter", "fisher", "functional")


def _check_monitor_names(names) -> None:
    """Each name a monitor (a built-in one, or one added to the registry), none repeated."""
    unknown = [m for m in names if m not in MONITOR_NAMES]
    if unknown:
        from clloop_jax.monitors import MONITORS
        unknown = [m for m in unknown if m not in MONITORS]
        if unknown:
            raise ValueError(f"train.monitors must be names of {sorted(set(MONITOR_NAMES) | set(MONITORS))}, got "
                             f"{unknown[0]!r}")
    if len(set(names)) != len(names):
        raise ValueError(f"train.monitors must not repeat a monitor, got {list(names)}")


@dataclasses.dataclass(frozen=True)
class WorldConfig:
    """The closed-loop world: a family of tasks that share sensors and actuators and differ in their hidden
    dynamics and goals."""

    observation_dim: int = 64
    """features of each sensory modality"""
    action_dim: int = 32
    """size of the action the agent sends to the world"""
    num_modalities: int = 2
    """number of sensory modalities"""
    latent_dim: int = 8
    """size of the world's hidden state"""
    episode_length: int = 40
    """steps of one closed-loop episode"""
    num_tasks: int = 3
    """tasks learned one after the other"""
    world_seed: int = 0
    """the seed that draws the family of tasks (an integer >= 0)"""

    def __post_init__(self):
        for f in dataclasses.fields(self):
            if f.name != "world_seed":
                _positive_int("world", f.name, getattr(self, f.name))
        if isinstance(self.world_seed, bool) or not isinstance(self.world_seed, numbers.Integral) \
                or not 0 <= self.world_seed < 2 ** 32:
            raise ValueError(f"world.world_seed must be an integer >= 0 and < 2**32 (a seed for jax.random.key), "
                             f"got {self.world_seed!r}")

    def make(self) -> "Environment":
        """The world (:class:`~clloop_jax.envs.Environment`), with its own checks."""
        from clloop_jax.envs import Environment
        return Environment(observation_dim=self.observation_dim, action_dim=self.action_dim,
                           num_modalities=self.num_modalities, latent_dim=self.latent_dim,
                           episode_length=self.episode_length, num_tasks=self.num_tasks, world_seed=self.world_seed)


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """The agent: a cross-modal attention model; its input and output sizes come from the world."""

    hidden_dim: int = 64
    """width of the agent's hidden layers (a multiple of num-heads)"""
    num_heads: int = 4
    """attention heads across the modalities"""

    def __post_init__(self):
        _positive_int("model", "hidden_dim", self.hidden_dim)
        _positive_int("model", "num_heads", self.num_heads)
        if self.hidden_dim % self.num_heads:
            raise ValueError(f"model.hidden_dim must be a multiple of model.num_heads={self.num_heads}, "
                             f"got {self.hidden_dim}")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """How the agent learns: the strategy and its strength, the optimizer, the monitors."""

    strategy: str = "ewc"
    """the continual-learning strategy, one of the names listed above (none = plain fine-tuning)"""
    episodes_per_task: int = 150
    """closed-loop episodes (one update each) per task"""
    num_envs: int = 8
    """worlds run in parallel in each episode"""
    learning_rate: float = 1e-3
    """the optimizer's (Adam's) learning rate (> 0)"""
    lam: Optional[float] = None
    """penalty strength (>= 0), for the strategies that have one (refused for the others); unset: the strategy's
    default (l2 0.3, ewc 3, online_ewc 3, si 30, mas 1, ewc_budget 3)"""
    gamma: Optional[float] = None
    """decay of the running importance, in [0, 1]; used by online_ewc and ewc_budget only (refused for the other
    strategies); unset: 0.9"""
    feedback_weight: float = 0.3
    """scale of the world's feedback (reward, previous action) the agent sees (>= 0)"""
    fisher_variant: str = "sampled"
    """how the Fisher information is estimated: empirical, sampled or exact"""
    monitors: Tuple[str, ...] = ("parameter", "fisher", "functional")
    """measurements recorded during training: parameter, fisher, functional (none: pass no names)"""

    def __post_init__(self):
        if not isinstance(self.strategy, str):
            raise TypeError(f"train.strategy must be a strategy name, one of {list(STRATEGY_NAMES)}, got "
                            f"{type(self.strategy).__name__}")
        if self.strategy not in STRATEGY_NAMES:  # registered by the user, or a mistake: the registry decides
            from clloop_jax.strategies import get_strategy
            get_strategy(self.strategy)
        _positive_int("train", "episodes_per_task", self.episodes_per_task)
        _positive_int("train", "num_envs", self.num_envs)
        _number("train", "learning_rate", self.learning_rate, 0, open_low=True)
        if self.lam is not None:
            _number("train", "lam", self.lam, 0)
        if self.gamma is not None:
            _number("train", "gamma", self.gamma, 0, 1)
        _number("train", "feedback_weight", self.feedback_weight, 0)
        if self.fisher_variant not in FISHER_VARIANTS:
            raise ValueError(f"train.fisher_variant must be one of {list(FISHER_VARIANTS)}, got "
                             f"{self.fisher_variant!r}")
        if isinstance(self.monitors, str) or not isinstance(self.monitors, (tuple, list)) \
                or not all(isinstance(m, str) for m in self.monitors):
            raise TypeError(f"train.monitors must be a tuple of monitor names, got {self.monitors!r}")
        object.__setattr__(self, "monitors", tuple(self.monitors))
        _check_monitor_names(self.monitors)

    @property
    def strength(self) -> float:
        return DEFAULT_LAMBDA.get(self.strategy, 1.0) if self.lam is None else self.lam

    @property
    def decay(self) -> float:
        """``gamma``, or its default when unset."""
        return DEFAULT_GAMMA if self.gamma is None else self.gamma

    def check_strategy_options(self) -> None:
        """``ValueError`` when ``lam`` or ``gamma`` is set and the strategy has no such hyperparameter (it would be
        recorded as if used). Looks the strategy up in the registry, which imports JAX."""
        from clloop_jax.strategies import get_strategy
        fields = get_strategy(self.strategy).hparams._fields
        for name in ("lam", "gamma"):
            if getattr(self, name) is not None and name not in fields:
                has = ", ".join(f for f in ("lam", "gamma") if f in fields)
                raise ValueError(f"train.{name} (--{name} {getattr(self, name)!r}) is not used by the strategy "
                                 f"{self.strategy!r} ({f'it has {has}' if has else 'it has neither lam nor gamma'}"
                                 f"); leave it unset")


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
    """One experiment: the world, the agent, how it learns, and how many seeds (0 to seeds - 1)."""

    world: WorldConfig = WorldConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    seeds: int = 5
    """independent runs (seeds 0, 1, ...), trained at once in one program"""

    def __post_init__(self):
        _positive_int("experiment", "seeds", self.seeds)
        for name, cls in (("world", WorldConfig), ("model", ModelConfig), ("train", TrainConfig)):
            if not isinstance(getattr(self, name), cls):
                raise TypeError(f"experiment.{name} must be a {cls.__name__}, got {type(getattr(self, name)).__name__}")

    def memory_estimate(self):
        """The memory this run needs, from these numbers alone (nothing is built):
        :class:`~clloop_jax.workflow.memory.MemoryEstimate`, whose ``check()`` refuses a run the machine cannot
        hold."""
        from clloop_jax.workflow.memory import estimate_experiment
        return estimate_experiment(self)

    def with_strategy(self, strategy: str, lam: float | None = None) -> "ExperimentConfig":
        return dataclasses.replace(self, train=dataclasses.replace(self.train, strategy=strategy, lam=lam))

    def build(self) -> Tuple["Run", "HParams"]:
        """The run and its hyperparameters. The world, the agent and the run's configuration are made (and checked
        by the library) before the world's tasks are drawn, the first computation that compiles."""
        from clloop_jax.model import CrossModalModel
        from clloop_jax.run.config import RunConfig
        from clloop_jax.run.sequential import make_run
        from clloop_jax.sources.world import EnvSource
        self.train.check_strategy_options()
        env = self.world.make()
        model = CrossModalModel(input_dim=self.world.observation_dim, hidden_dim=self.model.hidden_dim,
                                output_dim=self.world.action_dim, num_modalities=self.world.num_modalities,
                                num_heads=self.model.num_heads)
        t = self.train
        config = RunConfig(strategy=t.strategy, episodes_per_task=t.episodes_per_task,
                           fisher_variant=t.fisher_variant, monitors=t.monitors)
        source = EnvSource(model, env, num_tasks=self.world.num_tasks, num_envs=self.train.num_envs)
        run = make_run(config, source)
        names = run.hparams().names()
        own = {k: v for k, v in (("lam", t.strength), ("gamma", t.decay)) if k in names}
        return run, run.hparams(learning_rate=t.learning_rate, feedback_weight=t.feedback_weight, **own)


#: Ready-made experiments by name. They are descriptions (nothing is built or compiled until one is run).
PRESETS = {
    "default": ExperimentConfig(),
    "tiny": ExperimentConfig(
        world=WorldConfig(observation_dim=8, action_dim=4, num_modalities=2, latent_dim=4, episode_length=8,
                          num_tasks=2),
        model=ModelConfig(hidden_dim=8, num_heads=2),
        train=TrainConfig(episodes_per_task=10, num_envs=4, learning_rate=1e-2),
        seeds=2),
}


def describe_preset(name: str) -> str:
    """One line on the preset ``name``: its tasks, episodes, sizes and seeds."""
    if name not in PRESETS:
        raise ValueError(f"name must be one of {list(PRESETS)}, got {name!r}")
    e = PRESETS[name]
    return (f"{e.world.num_tasks} tasks x {e.train.episodes_per_task} episodes, observation {e.world.observation_dim} "
            f"x {e.world.num_modalities} modalities, action {e.world.action_dim}, hidden {e.model.hidden_dim}, "
            f"strategy {e.train.strategy}, {e.seeds} seeds")
