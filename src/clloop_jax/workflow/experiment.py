"""Typed, frozen configurations of an experiment, validated eagerly, and what they build.

``ExperimentConfig(world=WorldConfig(...), model=ModelConfig(...), train=TrainConfig(...))`` describes one run in the
closed loop; ``ExperimentConfig(source="mnist", data=DataConfig(...), train=...)`` one over a labelled benchmark's
stream of tasks (``mnist``, ``digits`` or ``mnist1d``: split or permuted, task, domain or class incremental). Its
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
from typing import TYPE_CHECKING, Optional, Tuple

if TYPE_CHECKING:  # annotations only: importing these loads JAX
    from clloop_jax.envs import Environment
    from clloop_jax.run.config import HParams
    from clloop_jax.run.sequential import Run

__all__ = ["WorldConfig", "ModelConfig", "DataConfig", "GymnaxConfig", "TrainConfig", "ExperimentConfig", "PRESETS",
           "DEFAULT_LAMBDA", "DATA_LAMBDA", "DEFAULT_GAMMA", "DEFAULT_MEMORY", "STRATEGY_NAMES", "FISHER_VARIANTS",
           "SOURCES", "MEMORY_STRATEGIES", "describe_preset", "experiment_from_dict", "load_experiment"]

#: Penalty strength per strategy in the default world (chosen on seed 0 of a shorter run; README, "Results").
DEFAULT_LAMBDA = {"none": 0.0, "l2": 0.3, "ewc": 3.0, "online_ewc": 3.0, "si": 30.0, "mas": 1.0, "ewc_budget": 3.0}

#: Penalty strength per strategy away from the world: chosen on split digits, class-incremental, for the labelled
#: benchmarks (experiments/scenarios.py); EWC's and online EWC's 1000 is also experiments/continual_rl.py's on gymnax.
#: The other strategies take 1.
DATA_LAMBDA = {"none": 0.0, "ewc": 1000.0, "online_ewc": 1000.0, "si": 100.0}

#: The decay of the running importance (``gamma``) of online_ewc and ewc_budget when it is not given.
DEFAULT_GAMMA = 0.9

#: The built-in strategies by name: :func:`clloop_jax.strategies.registered` before anything else is registered,
#: known here without importing JAX. A strategy registered later (:func:`clloop_jax.strategies.register`) is accepted
#: as well.
STRATEGY_NAMES = ("none", "l2", "ewc", "online_ewc", "si", "mas", "ewc_budget", "replay", "agem", "lwf", "derpp",
                  "streaming_ewc", "streaming_si")

#: The Fisher estimators, as :data:`clloop_jax.run.config.FISHER_VARIANTS`.
FISHER_VARIANTS = ("empirical", "sampled", "exact")

#: Where a run's tasks come from: the closed-loop world, a labelled benchmark (:func:`clloop_jax.data.load_dataset`),
#: or a gymnax environment learned from reward.
SOURCES = ("world", "mnist", "digits", "mnist1d", "gymnax")

#: The strategies that keep a rehearsal memory, and its size (samples) when ``memory`` is not given.
MEMORY_STRATEGIES = ("replay", "agem", "derpp")
DEFAULT_MEMORY = 500


def _positive_int(owner, name, value):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{owner}.{name} must be an integer >= 1, got {value!r}")


def _number(owner, name, value, low, high=math.inf, open_low=False):
    """A finite real number in ``[low, high]`` (``(low, high]`` with ``open_low``)."""
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value > low if open_low else value >= low) and value <= high
    if not ok:
        what = f"a finite number {'>' if open_low else '>='} {low:g}" + (f" and <= {high:g}" if high < math.inf
                                                                         else "")
        raise ValueError(f"{owner}.{name} must be {what}, got {value!r}")


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
                or self.world_seed < 0:
            raise ValueError(f"world.world_seed must be an integer >= 0, got {self.world_seed!r}")

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
class DataConfig:
    """A labelled benchmark (--source mnist, digits or mnist1d): its stream of tasks and the classifier."""

    stream: str = "split"
    """split: the classes in groups of classes-per-task, one group per task; permuted: permuted-tasks tasks of
    all classes, each with its own fixed permutation of the input features"""
    scenario: str = "class"
    """task, domain or class incremental (van de Ven & Tolias 2019): the task's own classes with the task known,
    the position within the group, or every class seen so far"""
    classes_per_task: int = 2
    """classes in each task of a split stream"""
    permuted_tasks: int = 5
    """tasks of a permuted stream"""
    mlp_hidden: Tuple[int, ...] = (400, 400)
    """widths of the classifier's hidden layers (a multilayer perceptron with ReLU)"""
    batch_size: int = 128
    """training samples per update"""
    fisher_size: int = 256
    """samples of a task that estimate its Fisher information (and fill a rehearsal memory)"""
    data_seed: int = 0
    """the stream's seed: the permutations, the equal-size subsets of a split (an integer >= 0)"""

    def __post_init__(self):
        for name, choices in (("stream", ("split", "permuted")), ("scenario", ("task", "domain", "class"))):
            if getattr(self, name) not in choices:
                raise ValueError(f"data.{name} must be one of {list(choices)}, got {getattr(self, name)!r}")
        for name in ("classes_per_task", "permuted_tasks", "batch_size", "fisher_size"):
            _positive_int("data", name, getattr(self, name))
        if isinstance(self.mlp_hidden, (str, bytes)) or not isinstance(self.mlp_hidden, (tuple, list)):
            raise TypeError(f"data.mlp_hidden must be a tuple of layer widths, got {self.mlp_hidden!r}")
        for width in self.mlp_hidden:
            _positive_int("data", "mlp_hidden", width)
        object.__setattr__(self, "mlp_hidden", tuple(self.mlp_hidden))
        if isinstance(self.data_seed, bool) or not isinstance(self.data_seed, numbers.Integral) or self.data_seed < 0:
            raise ValueError(f"data.data_seed must be an integer >= 0, got {self.data_seed!r}")

    def make_source(self, dataset: str):
        """The :class:`~clloop_jax.sources.supervised.SupervisedSource` of ``dataset`` (loaded from the installed
        package that ships it: ``pip install -e ".[data]"``)."""
        from clloop_jax.data import load_dataset, permuted_stream, split_stream
        from clloop_jax.model import MLP
        from clloop_jax.sources.supervised import SupervisedSource
        x, y, x_test, y_test = load_dataset(dataset)
        if self.stream == "split":
            stream = split_stream(x, y, classes_per_task=self.classes_per_task, seed=self.data_seed, x_test=x_test,
                                  y_test=y_test, scenario=self.scenario)
        else:
            stream = permuted_stream(x, y, self.permuted_tasks, seed=self.data_seed, x_test=x_test, y_test=y_test,
                                     scenario=self.scenario)
        return SupervisedSource(MLP(output_dim=stream.num_classes, hidden=self.mlp_hidden), stream,
                                batch_size=self.batch_size, fisher_size=self.fisher_size)


@dataclasses.dataclass(frozen=True)
class GymnaxConfig:
    """A gymnax environment learned from reward by an actor-critic (--source gymnax): its tasks and the learner."""

    env_id: str = "CartPole-v1"
    """a registered gymnax environment with a flat observation: CartPole-v1, Acrobot-v1, Pendulum-v1, ..."""
    variants: str = "family"
    """the tasks: family (the library's variants of CartPole-v1 or Pendulum-v1: a longer, heavier pole or
    pendulum, stronger gravity) or a JSON list of EnvParams overrides, one per task, such as [{}, {"length": 1.5}]"""
    rollout_steps: int = 64
    """steps of each environment's rollout per update (num-envs environments run in parallel)"""
    ppo_epochs: int = 1
    """passes over each rollout (1 with one minibatch: one actor-critic step per rollout; more: PPO)"""
    ppo_minibatches: int = 1
    """minibatches of each pass over a rollout"""
    persistent_envs: bool = False
    """environments continue from one rollout to the next within a task (reset when a task starts)"""
    policy_hidden: int = 32
    """width of the policy's hidden state (a cross-modal model reading the observation)"""
    discount: float = 0.99
    """the return's discount, in [0, 1]"""
    gae_lambda: float = 0.95
    """generalized advantage estimation's lambda, in [0, 1]"""
    entropy_coef: float = 0.01
    """weight of the policy's entropy bonus (>= 0)"""
    reward_scale: float = 1.0
    """rewards are multiplied by this before the advantages (> 0)"""

    def __post_init__(self):
        if not isinstance(self.env_id, str) or not self.env_id:
            raise ValueError(f"gymnax.env_id must be a gymnax environment id, got {self.env_id!r}")
        if not isinstance(self.variants, str):
            raise TypeError(f"gymnax.variants must be 'family' or a JSON list of overrides, got {self.variants!r}")
        if self.variants != "family":
            self.overrides()
        for name in ("rollout_steps", "ppo_epochs", "ppo_minibatches", "policy_hidden"):
            _positive_int("gymnax", name, getattr(self, name))
        if not isinstance(self.persistent_envs, bool):
            raise TypeError(f"gymnax.persistent_envs must be True or False, got {self.persistent_envs!r}")
        _number("gymnax", "discount", self.discount, 0, 1)
        _number("gymnax", "gae_lambda", self.gae_lambda, 0, 1)
        _number("gymnax", "entropy_coef", self.entropy_coef, 0)
        _number("gymnax", "reward_scale", self.reward_scale, 0, open_low=True)

    def overrides(self) -> list:
        """The tasks' ``EnvParams`` overrides: the family's, or the JSON list of ``variants``."""
        if self.variants == "family":
            from clloop_jax.rl.tasks import TASK_FAMILIES
            if self.env_id not in TASK_FAMILIES:
                raise ValueError(f"gymnax.variants 'family' is defined for {sorted(TASK_FAMILIES)}, not "
                                 f"{self.env_id!r}; give the tasks as a JSON list of EnvParams overrides")
            return [dict(o) for o in TASK_FAMILIES[self.env_id]]
        import json
        try:
            values = json.loads(self.variants)
        except ValueError:
            values = None
        if not isinstance(values, list) or not values or not all(isinstance(v, dict) for v in values):
            raise ValueError(f"gymnax.variants must be 'family' or a JSON list of EnvParams overrides (one dict per "
                             f"task, such as [{{}}, {{\"length\": 1.5}}]), got {self.variants!r}")
        return values

    def make_source(self, num_envs: int):
        """The :class:`~clloop_jax.sources.gymnax.GymnaxSource` of these tasks with ``num_envs`` environments."""
        from clloop_jax.sources.gymnax import GymnaxSource
        return GymnaxSource(self.env_id, self.overrides(), hidden_dim=self.policy_hidden, num_envs=num_envs,
                            num_steps=self.rollout_steps, epochs=self.ppo_epochs, num_minibatches=self.ppo_minibatches,
                            persistent_envs=self.persistent_envs)

    def hparams(self) -> dict:
        """The actor-critic's traced hyperparameters set here."""
        return {"discount": self.discount, "gae_lambda": self.gae_lambda, "entropy_coef": self.entropy_coef,
                "reward_scale": self.reward_scale}


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """How the agent learns: the strategy and its strength, the optimizer, the monitors."""

    strategy: str = "ewc"
    """the continual-learning strategy, one of the names listed above (none = plain fine-tuning)"""
    episodes_per_task: int = 150
    """updates per task: closed-loop episodes, or minibatches of a labelled stream"""
    num_envs: int = 8
    """worlds run in parallel in each episode"""
    learning_rate: float = 1e-3
    """the optimizer's (Adam's) learning rate (> 0)"""
    lam: Optional[float] = None
    """penalty strength (>= 0), for the strategies that have one (refused for the others); unset: the strategy's
    default (in the world: l2 0.3, ewc 3, online_ewc 3, si 30, mas 1, ewc_budget 3; on the other sources: ewc
    1000, online_ewc 1000, si 100, the others 1)"""
    gamma: Optional[float] = None
    """decay of the running importance, in [0, 1]; used by online_ewc and ewc_budget only (refused for the other
    strategies); unset: 0.9"""
    feedback_weight: float = 0.3
    """scale of the world's feedback (reward, previous action) the agent sees (>= 0)"""
    fisher_variant: str = "sampled"
    """how the Fisher information is estimated: empirical, sampled or exact"""
    monitors: Tuple[str, ...] = ("parameter", "fisher", "functional")
    """measurements recorded during training: parameter, fisher, functional (none: pass no names)"""
    memory: Optional[int] = None
    """rehearsal memory in samples (>= 1), for replay, agem and derpp (refused for the others); unset: 500"""
    max_grad_norm: Optional[float] = 1.0
    """clip the gradient to this global norm before each update (> 0); None: no clipping"""

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
        if self.memory is not None:
            _positive_int("train", "memory", self.memory)
        if self.max_grad_norm is not None:
            _number("train", "max_grad_norm", self.max_grad_norm, 0, open_low=True)

    @property
    def strength(self) -> float:
        """``lam``, or the strategy's default strength in the world (:data:`DEFAULT_LAMBDA`) when unset."""
        return DEFAULT_LAMBDA.get(self.strategy, 1.0) if self.lam is None else self.lam

    @property
    def decay(self) -> float:
        """``gamma``, or its default when unset."""
        return DEFAULT_GAMMA if self.gamma is None else self.gamma

    def strategy_value(self):
        """The strategy as the run takes it: its name, or the rehearsal strategy built with ``memory`` samples."""
        if self.memory is None:
            return self.strategy
        from clloop_jax.strategies import get_strategy
        return get_strategy(self.strategy, capacity=self.memory)

    def check_strategy_options(self) -> None:
        """``ValueError`` when ``lam`` or ``gamma`` is set and the strategy has no such hyperparameter (it would be
        recorded as if used). Looks the strategy up in the registry, which imports JAX."""
        from clloop_jax.strategies import get_strategy
        fields = get_strategy(self.strategy).hparams._fields
        if self.memory is not None and self.strategy not in MEMORY_STRATEGIES:
            raise ValueError(f"train.memory (--memory {self.memory!r}) is used only by the rehearsal strategies "
                             f"{', '.join(MEMORY_STRATEGIES)}, not by {self.strategy!r}; leave it unset")
        for name in ("lam", "gamma"):
            if getattr(self, name) is not None and name not in fields:
                has = ", ".join(f for f in ("lam", "gamma") if f in fields)
                raise ValueError(f"train.{name} (--{name} {getattr(self, name)!r}) is not used by the strategy "
                                 f"{self.strategy!r} ({f'it has {has}' if has else 'it has neither lam nor gamma'}"
                                 f"); leave it unset")


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
    """One experiment: where the tasks come from, the agent, how it learns, and how many seeds (0 to seeds - 1)."""

    source: str = "world"
    """where the tasks come from: world (the closed loop), a labelled benchmark (mnist, digits or mnist1d) or
    gymnax (an environment learned from reward)"""
    world: WorldConfig = WorldConfig()
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    gymnax: GymnaxConfig = GymnaxConfig()
    train: TrainConfig = TrainConfig()
    seeds: int = 5
    """independent runs (seeds 0, 1, ...), trained at once in one program"""

    def __post_init__(self):
        _positive_int("experiment", "seeds", self.seeds)
        if self.source not in SOURCES:
            raise ValueError(f"experiment.source must be one of {list(SOURCES)}, got {self.source!r}")
        for name, cls in (("world", WorldConfig), ("model", ModelConfig), ("data", DataConfig),
                          ("gymnax", GymnaxConfig), ("train", TrainConfig)):
            if not isinstance(getattr(self, name), cls):
                raise TypeError(f"experiment.{name} must be a {cls.__name__}, got {type(getattr(self, name)).__name__}")
        unused = self.unused_options()
        if unused:
            raise ValueError(f"{', '.join(unused)} {'is' if len(unused) == 1 else 'are'} not used with --source "
                             f"{self.source}; leave {'it' if len(unused) == 1 else 'them'} unset")

    def unused_options(self) -> list:
        """The options (as ``--name value``) set away from their defaults in a part the source does not use: for the
        world, the data and gymnax parts; for a labelled benchmark, the world, the agent, gymnax, ``num_envs`` and
        ``feedback_weight``; for gymnax, the world, the agent and the data."""
        used = self.used_parts()
        defaults = {"world": WorldConfig(), "model": ModelConfig(), "data": DataConfig(), "gymnax": GymnaxConfig()}
        out = []
        for part, default in defaults.items():
            if part in used:
                continue
            for f in dataclasses.fields(default):
                value = getattr(getattr(self, part), f.name)
                if value != getattr(default, f.name):
                    out.append(f"--{f.name.replace('_', '-')} {value!r}")
        if self.source in ("mnist", "digits", "mnist1d"):
            for name in ("num_envs", "feedback_weight"):
                if getattr(self.train, name) != getattr(TrainConfig, name):
                    out.append(f"--{name.replace('_', '-')} {getattr(self.train, name)!r}")
        return out

    def used_parts(self) -> tuple:
        """The parts of the configuration this source uses (besides ``train``)."""
        return {"world": ("world", "model"), "gymnax": ("gymnax",)}.get(self.source, ("data",))

    @property
    def strength(self) -> float:
        """The penalty strength the run uses: ``lam``, or the strategy's default for this source (the world's
        from :data:`DEFAULT_LAMBDA`, the others' from :data:`DATA_LAMBDA`)."""
        if self.source == "world" or self.train.lam is not None:
            return self.train.strength
        return DATA_LAMBDA.get(self.train.strategy, 1.0)

    def resolved(self) -> dict:
        """The parts of the configuration the run uses, as a dict of dataclasses: what ``config.json`` records (a
        labelled benchmark's run holds no world or agent section, a world's run no data or gymnax section)."""
        parts = {part: getattr(self, part) for part in self.used_parts()}
        return {"source": self.source, **parts, "train": self.train, "seeds": self.seeds}

    def with_strategy(self, strategy: str, lam: float | None = None) -> "ExperimentConfig":
        return dataclasses.replace(self, train=dataclasses.replace(self.train, strategy=strategy, lam=lam))

    def build(self) -> Tuple["Run", "HParams"]:
        """The run and its hyperparameters. The world (or the benchmark's stream), the agent and the run's
        configuration are made (and checked by the library) before the first computation that compiles."""
        from clloop_jax.run.config import RunConfig
        from clloop_jax.run.sequential import make_run
        self.train.check_strategy_options()
        t = self.train
        config = RunConfig(strategy=t.strategy_value(), episodes_per_task=t.episodes_per_task,
                           fisher_variant=t.fisher_variant, monitors=t.monitors, max_grad_norm=t.max_grad_norm)
        run = make_run(config, self.make_source())
        names = run.hparams().names()
        values = {"lam": self.strength, "gamma": t.decay, "feedback_weight": t.feedback_weight}
        if self.source == "gymnax":
            values.update(self.gymnax.hparams())
        own = {k: v for k, v in values.items() if k in names}
        return run, run.hparams(learning_rate=t.learning_rate, **own)

    def make_source(self):
        """The task source: the closed loop in the world, or the benchmark's stream of labelled tasks."""
        if self.source == "gymnax":
            return self.gymnax.make_source(self.train.num_envs)
        if self.source != "world":
            return self.data.make_source(self.source)
        from clloop_jax.model import CrossModalModel
        from clloop_jax.sources.world import EnvSource
        env = self.world.make()
        model = CrossModalModel(input_dim=self.world.observation_dim, hidden_dim=self.model.hidden_dim,
                                output_dim=self.world.action_dim, num_modalities=self.world.num_modalities,
                                num_heads=self.model.num_heads)
        return EnvSource(model, env, num_tasks=self.world.num_tasks, num_envs=self.train.num_envs)


def experiment_from_dict(values: dict, where: str = "the configuration") -> ExperimentConfig:
    """The :class:`ExperimentConfig` of ``values``, a dict such as ``config.json``'s ``"config"`` (what
    :meth:`ExperimentConfig.resolved` gives, as JSON): sections and fields left out take their defaults; an unknown
    one is refused naming it."""
    parts = {"world": WorldConfig, "model": ModelConfig, "data": DataConfig, "gymnax": GymnaxConfig,
             "train": TrainConfig}
    if not isinstance(values, dict):
        raise TypeError(f"{where} must be a table of settings, got {type(values).__name__}")
    known = {"source", "seeds", *parts}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"{where}: unknown setting(s) {unknown}; expected some of {sorted(known)}")
    out = {k: values[k] for k in ("source", "seeds") if k in values}
    for part, cls in parts.items():
        section = values.get(part, {})
        if not isinstance(section, dict):
            raise TypeError(f"{where}: {part} must be a table of settings, got {type(section).__name__}")
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(section) - fields)
        if unknown:
            raise ValueError(f"{where}: unknown setting(s) {unknown} in {part}; expected some of {sorted(fields)}")
        out[part] = cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in section.items()})
    return ExperimentConfig(**out)


def load_experiment(path: str) -> ExperimentConfig:
    """The experiment a file describes: a run folder's ``config.json`` (its ``"config"``), or a JSON, TOML or YAML
    file of the same settings (``source``, ``seeds`` and the tables ``world``, ``model``, ``data``, ``train``)."""
    import json
    import os
    ext = os.path.splitext(path)[1].lower()
    with open(path, "rb") as f:
        raw = f.read()
    try:
        if ext == ".toml":
            import tomllib
            values = tomllib.loads(raw.decode())
        elif ext in (".yaml", ".yml"):
            try:
                import yaml
            except ImportError:
                raise ImportError(f"{path}: reading YAML needs the PyYAML package (pip install pyyaml)") from None
            try:
                values = yaml.safe_load(raw)
            except yaml.YAMLError as err:
                raise ValueError(str(err)) from None
        else:
            values = json.loads(raw)
    except ValueError as err:  # JSON, TOML and YAML errors are ValueErrors
        raise ValueError(f"{path}: cannot read the configuration ({err})") from None
    if isinstance(values, dict) and "config" in values and "config_hash" in values:  # a run folder's config.json
        values = values["config"]
    return experiment_from_dict(values, where=path)


#: Ready-made experiments by name. They are descriptions (nothing is built or compiled until one is run).
PRESETS = {
    "default": ExperimentConfig(),
    "tiny": ExperimentConfig(
        world=WorldConfig(observation_dim=8, action_dim=4, num_modalities=2, latent_dim=4, episode_length=8,
                          num_tasks=2),
        model=ModelConfig(hidden_dim=8, num_heads=2),
        train=TrainConfig(episodes_per_task=10, num_envs=4, learning_rate=1e-2),
        seeds=2),
    "split-mnist": ExperimentConfig(
        source="mnist", train=TrainConfig(strategy="replay", episodes_per_task=300, monitors=(), max_grad_norm=None)),
    "cartpole": ExperimentConfig(
        source="gymnax", gymnax=GymnaxConfig(reward_scale=0.1),
        train=TrainConfig(episodes_per_task=1000, num_envs=8, monitors=(), fisher_variant="exact", max_grad_norm=0.5)),
    "tiny-cartpole": ExperimentConfig(
        source="gymnax", gymnax=GymnaxConfig(rollout_steps=16, policy_hidden=8, reward_scale=0.1),
        train=TrainConfig(episodes_per_task=5, num_envs=4, monitors=(), fisher_variant="exact", max_grad_norm=0.5),
        seeds=2),
    "tiny-digits": ExperimentConfig(
        source="digits", data=DataConfig(mlp_hidden=(32,), batch_size=32, fisher_size=64),
        train=TrainConfig(strategy="replay", episodes_per_task=20, monitors=(), max_grad_norm=None), seeds=2),
}


def describe_preset(name: str) -> str:
    """One line on the preset ``name``: its tasks, episodes, sizes and seeds."""
    if name not in PRESETS:
        raise ValueError(f"name must be one of {list(PRESETS)}, got {name!r}")
    e = PRESETS[name]
    if e.source == "gymnax":
        g = e.gymnax
        tasks = "its task family" if g.variants == "family" else f"{len(g.overrides())} tasks"
        return (f"{g.env_id} ({tasks}) x {e.train.episodes_per_task} updates of {e.train.num_envs} x "
                f"{g.rollout_steps} steps, policy hidden {g.policy_hidden}, strategy {e.train.strategy}, "
                f"{e.seeds} seeds")
    if e.source != "world":
        d = e.data
        tasks = (f"{d.classes_per_task} classes per task" if d.stream == "split" else f"{d.permuted_tasks} tasks")
        return (f"{e.source} {d.stream} ({tasks}, {d.scenario}-incremental) x {e.train.episodes_per_task} updates of "
                f"{d.batch_size}, MLP {'-'.join(map(str, d.mlp_hidden))}, strategy {e.train.strategy}, {e.seeds} seeds")
    return (f"{e.world.num_tasks} tasks x {e.train.episodes_per_task} episodes, observation {e.world.observation_dim} "
            f"x {e.world.num_modalities} modalities, action {e.world.action_dim}, hidden {e.model.hidden_dim}, "
            f"strategy {e.train.strategy}, {e.seeds} seeds")
