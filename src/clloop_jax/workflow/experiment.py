"""Typed, frozen configurations of an experiment, validated eagerly, and what they build.

``ExperimentConfig(world=WorldConfig(...), model=ModelConfig(...), train=TrainConfig(...))`` describes one run in the
closed loop; ``ExperimentConfig(source="mnist", data=DataConfig(...), train=...)`` one over a labelled benchmark's
stream of tasks (``mnist``, ``digits`` or ``mnist1d``: split or permuted, task, domain or class incremental). Its
:meth:`~ExperimentConfig.build` gives the :class:`~clloop_jax.run.sequential.Run` and its
:class:`~clloop_jax.run.config.HParams`.
:data:`PRESETS` names ready-made ones (``tiny``: a few seconds after compilation; ``default``: the README's forgetting
experiment; ``permuted-mnist``: a long stream of permuted MNIST learned online, one pass over each task's 4,000
training images in batches of 100, as in the loss-of-plasticity experiments of Dohare et al. 2024, Nature 632, with
the full performance matrix row every 10 tasks and one trace summary per task: ``--tasks 500 --evaluate-every 10``). The command line (:mod:`clloop_jax.workflow.cli`) is these dataclasses, field for field; each field's
docstring is its help text there.

A configuration is a description: constructing one checks every field in plain Python (sizes, names, the ranges of
the numeric hyperparameters) and imports nothing heavy, so the command line parses its arguments and prints its help
without loading JAX. The world, the agent and the run are made by :meth:`ExperimentConfig.build` when an experiment
is run; the library's own checks of the world, the agent and the hyperparameters run there as well.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Tuple

if TYPE_CHECKING:  # annotations only: importing these loads JAX
    from clloop_jax.run.config import HParams
    from clloop_jax.run.sequential import Run

from clloop_jax.workflow.settings import (  # noqa: F401 (the parts, importable from here too)
    BOUNDARY_MODES, WorldConfig, ModelConfig, DataConfig, GymnaxConfig, TrainConfig, DEFAULT_LAMBDA, DATA_LAMBDA,  # noqa: F401
    DEFAULT_GAMMA, DEFAULT_MEMORY, STRATEGY_NAMES, MONITOR_NAMES, FISHER_VARIANTS, SOURCES, MEMORY_STRATEGIES,  # noqa: F401
    count_setting)
from clloop_jax.workflow.settings import BUNDLED_DATASETS, FILE_DATASETS, WORLD_ID, default_strength
from clloop_jax.workflow.taskfree import TaskFreeConfig

__all__ = ["ExperimentConfig", "TaskFreeConfig", "PRESETS", "describe_preset", "experiment_from_dict", "load_experiment"]


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
    """One experiment: where the tasks come from, the agent, how it learns, and how many seeds (0 to seeds - 1)."""

    source: str = "world"
    """where the tasks come from: world (the closed loop), a labelled benchmark (mnist, digits or mnist1d, bundled;
    cifar10, cifar100, mnist_idx, fashion_mnist, kmnist or tinyimagenet, read from --data-dir) or gymnax (an
    environment learned from reward)"""
    world: WorldConfig = WorldConfig()
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    gymnax: GymnaxConfig = GymnaxConfig()
    train: TrainConfig = TrainConfig()
    seeds: int = 5
    """independent runs (seeds 0, 1, ...), trained at once in one program"""
    boundaries: str = "known"
    """known: the tasks one after the other, each learned and consolidated as such; detect, oracle or none: one
    stream whose task switches without the learner being told (when: --schedule), consolidated where a shift
    detector fires, at the true switches, or never (world and labelled benchmarks)"""
    taskfree: TaskFreeConfig = TaskFreeConfig()

    def __post_init__(self):
        count_setting("experiment", "seeds", self.seeds)
        if self.source not in SOURCES:
            raise ValueError(f"experiment.source must be one of {list(SOURCES)}, got {self.source!r}")
        for name, cls in (("world", WorldConfig), ("model", ModelConfig), ("data", DataConfig),
                          ("gymnax", GymnaxConfig), ("train", TrainConfig), ("taskfree", TaskFreeConfig)):
            if not isinstance(getattr(self, name), cls):
                raise TypeError(f"experiment.{name} must be a {cls.__name__}, got {type(getattr(self, name)).__name__}")
        if self.boundaries not in BOUNDARY_MODES:
            raise ValueError(f"experiment.boundaries must be one of {list(BOUNDARY_MODES)}, got {self.boundaries!r}")
        if self.boundaries != "known" and self.source == "gymnax":
            raise ValueError(f"--boundaries {self.boundaries} needs a source that serves batches of mixed tasks: the "
                             f"world or a labelled benchmark, not gymnax")
        if self.source in BUNDLED_DATASETS + FILE_DATASETS:
            self.data.check_source(self.source)
        for parts, where in ((("world", "model", "data", "gymnax"), f"--source {self.source}"),
                             (("taskfree",), "--boundaries known")):
            unused = self.unused_options(parts)
            if unused:
                raise ValueError(f"{', '.join(unused)} {'is' if len(unused) == 1 else 'are'} not used with {where}; "
                                 f"leave {'it' if len(unused) == 1 else 'them'} unset")
        if self.boundaries != "known":
            self.taskfree.episodes(self.train.episodes_per_task)

    def unused_options(self, parts=("world", "model", "data", "gymnax", "taskfree")) -> list:
        """The options (as ``--name value``) set away from their defaults in a part of ``parts`` the run does not
        use: for the world, the data and gymnax parts; for a labelled benchmark, the world, gymnax, ``num_envs``,
        ``feedback_weight`` and (unless the backbone is the recurrent agent) the agent; for gymnax, the agent, the
        data and (unless it learns the world) the world; with known boundaries, the hidden switches' schedule."""
        used = self.used_parts()
        defaults = {"world": WorldConfig(), "model": ModelConfig(), "data": DataConfig(), "gymnax": GymnaxConfig(),
                    "taskfree": TaskFreeConfig()}
        out = []
        for part in parts:
            default = defaults[part]
            if part in used:
                continue
            for f in dataclasses.fields(default):
                value = getattr(getattr(self, part), f.name)
                if value != getattr(default, f.name):
                    out.append(f"--{f.name.replace('_', '-')} {value!r}")
        if self.source in BUNDLED_DATASETS + FILE_DATASETS and "data" in parts:
            for name in ("num_envs", "feedback_weight"):
                if getattr(self.train, name) != getattr(TrainConfig, name):
                    out.append(f"--{name.replace('_', '-')} {getattr(self.train, name)!r}")
        return out

    def used_parts(self) -> tuple:
        """The parts of the configuration this run uses (besides ``train``): its source's, and ``taskfree`` for a
        stream with hidden switches."""
        hidden = ("taskfree",) if self.boundaries != "known" else ()
        if self.source == "gymnax":
            return ("gymnax", "world") if self.gymnax.env_id == WORLD_ID else ("gymnax",)
        if self.source == "world":
            return ("world", "model") + hidden
        return (("data", "model") if self.data.backbone == "recurrent" else ("data",)) + hidden

    @property
    def strength(self) -> float:
        """The penalty strength the run uses: ``lam``, or the strategy's default for this source (the world's
        from :data:`DEFAULT_LAMBDA`, the others' from :data:`DATA_LAMBDA`)."""
        if self.source == "world" or self.train.lam is not None:
            return self.train.strength
        return default_strength(DATA_LAMBDA, self.train.strategy)

    def resolved(self) -> dict:
        """The parts of the configuration the run uses, as a dict of dataclasses: what ``config.json`` records (a
        labelled benchmark's run holds no world or agent section, a world's run no data or gymnax section)."""
        parts = {part: getattr(self, part) for part in self.used_parts()}
        return {"source": self.source, **parts, "train": self.train, "seeds": self.seeds, "boundaries": self.boundaries}

    def memory_estimate(self):
        """The memory this run needs, from these numbers alone (nothing is built):
        :class:`~clloop_jax.workflow.memory.MemoryEstimate`, whose ``check()`` refuses a run the machine cannot
        hold. For the world only: the other sources' runs are estimated once built
        (:func:`~clloop_jax.workflow.memory.estimate_run_memory`, before anything is compiled); None for them."""
        if self.source != "world":
            return None
        from clloop_jax.workflow.memory import estimate_experiment
        return estimate_experiment(self)

    def with_strategy(self, strategy: str, lam: float | None = None) -> "ExperimentConfig":
        return dataclasses.replace(self, train=dataclasses.replace(self.train, strategy=strategy, lam=lam))

    def build(self) -> Tuple["Run", "HParams"]:
        """The run and its hyperparameters. The world (or the benchmark's stream), the agent and the run's
        configuration are made (and checked by the library) before the first computation that compiles."""
        from clloop_jax.run.sequential import make_run
        source = self.make_source()
        run = make_run(self.run_config(source), source)
        return run, self.hparams_of(run)

    def build_taskfree(self, seeds=None):
        """``(taskfree_run, hparams, schedule)`` of a stream with hidden task boundaries (``boundaries`` detect,
        oracle or none): the same tasks in order, switching as ``taskfree`` says (:meth:`TaskFreeConfig.schedules`:
        one schedule for every seed, or one per seed of ``seeds``, unset: ``0 .. seeds - 1``)."""
        from clloop_jax.taskfree import make_taskfree_run
        if self.boundaries == "known":
            raise ValueError("build_taskfree needs boundaries detect, oracle or none; build() makes the run with "
                             "known boundaries")
        source = self.make_source()
        config = self.run_config(source)
        run = make_taskfree_run(config, source, boundaries=self.boundaries)
        seeds = range(self.seeds) if seeds is None else seeds
        schedule = self.taskfree.schedules(source.num_tasks, self.train.episodes_per_task, seeds)
        return run, self.hparams_of(run), schedule

    def run_config(self, source=None):
        """The :class:`~clloop_jax.run.config.RunConfig` of ``train`` (its strategy's options checked first). A
        linear ``lr_schedule`` decays over each task's optimizer steps: the episodes times the source's
        ``minibatch_passes`` (``source``: the one :meth:`make_source` gives, made here when not passed)."""
        import optax
        from clloop_jax.run.config import AdamLinearDecay, RunConfig
        from clloop_jax.sources.base import capability
        t = self.train
        t.check_strategy_options()
        optimizer = optax.adam
        if t.lr_schedule == "linear":
            passes = capability(self.make_source() if source is None else source, "minibatch_passes")
            optimizer = AdamLinearDecay(t.episodes_per_task * int(passes))
        return RunConfig(strategy=t.strategy_value(), episodes_per_task=t.episodes_per_task,
                         fisher_variant=t.fisher_variant, monitors=t.monitors, max_grad_norm=t.max_grad_norm,
                         evaluate_every=t.evaluate_every, traces=t.traces, optimizer=optimizer)

    def hparams_of(self, run) -> "HParams":
        """``run``'s hyperparameters with this experiment's values, each set where the run has it; the strategy's own
        (``train.strategy_hparams``) last."""
        t = self.train
        values = {"lam": self.strength, "gamma": t.decay, "feedback_weight": t.feedback_weight}
        if self.source == "gymnax":
            values.update(self.gymnax.hparams())
        names = run.hparams().names()  # a chain's are dotted (ewc.lam): lam reaches every part that has it
        shared = {n: v for k, v in values.items() for n in names if n == k or n.endswith("." + k)}
        return run.hparams(learning_rate=t.learning_rate, **{**shared, **t.strategy_values()})

    def make_source(self):
        """The task source: the closed loop in the world, or the benchmark's stream of labelled tasks."""
        if self.source == "gymnax":
            return self.gymnax.make_source(self.train.num_envs, self.world)
        if self.source != "world":
            return self.data.make_source(self.source, self.model)
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
             "train": TrainConfig, "taskfree": TaskFreeConfig}
    if not isinstance(values, dict):
        raise TypeError(f"{where} must be a table of settings, got {type(values).__name__}")
    known = {"source", "seeds", "boundaries", *parts}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"{where}: unknown setting(s) {unknown}; expected some of {sorted(known)}")
    out = {k: values[k] for k in ("source", "seeds", "boundaries") if k in values}
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
    file of the same settings (``source``, ``seeds``, ``boundaries`` and the tables ``world``, ``model``, ``data``,
    ``gymnax``, ``train``, ``taskfree``)."""
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
    # Continual Pendulum-v1 (its task family): PPO proper, 5 epochs of 16 minibatches over each rollout of 16
    # environments x 256 steps that keep running between updates, each task's learning rate decaying to 0.
    "pendulum": ExperimentConfig(
        source="gymnax", gymnax=GymnaxConfig(env_id="Pendulum-v1", rollout_steps=256, ppo_epochs=5, ppo_minibatches=16,
                                             persistent_envs=True, discount=0.9, entropy_coef=0.0, reward_scale=0.1),
        train=TrainConfig(episodes_per_task=40, num_envs=16, feedback_weight=0.1, lr_schedule="linear", monitors=(),
                          fisher_variant="exact", max_grad_norm=0.5)),
    "tiny-cartpole": ExperimentConfig(
        source="gymnax", gymnax=GymnaxConfig(rollout_steps=16, policy_hidden=8, reward_scale=0.1),
        train=TrainConfig(episodes_per_task=5, num_envs=4, monitors=(), fisher_variant="exact", max_grad_norm=0.5),
        seeds=2),
    "tiny-digits": ExperimentConfig(
        source="digits", data=DataConfig(mlp_hidden=(32,), batch_size=32, fisher_size=64),
        train=TrainConfig(strategy="replay", episodes_per_task=20, monitors=(), max_grad_norm=None), seeds=2),
    "permuted-mnist": ExperimentConfig(
        source="mnist", data=DataConfig(stream="permuted", scenario="domain", permuted_tasks=100, mlp_hidden=(100, 100),
                                        batch_size=100, sampling="epoch"),
        train=TrainConfig(strategy="none", episodes_per_task=40, monitors=(), max_grad_norm=None, evaluate_every=10,
                          traces="tasks", learning_rate=1e-3)),
    # The image benchmarks of the GEM, DER and Mammoth papers, for machines that have the files (--data-dir): the
    # reduced ResNet-18 with batch norm, random crop and flip, class-incremental, replay of 500 samples.
    "split-cifar10": ExperimentConfig(
        source="cifar10", data=DataConfig(classes_per_task=2, backbone="resnet18", augment=True, batch_size=32),
        train=TrainConfig(strategy="replay", episodes_per_task=1500, monitors=(), max_grad_norm=None), seeds=3),
    "split-cifar100": ExperimentConfig(
        source="cifar100", data=DataConfig(classes_per_task=10, backbone="resnet18", augment=True, batch_size=32),
        train=TrainConfig(strategy="replay", episodes_per_task=1500, monitors=(), max_grad_norm=None), seeds=3),
    "split-tinyimagenet": ExperimentConfig(
        source="tinyimagenet", data=DataConfig(classes_per_task=20, backbone="resnet18", augment=True,
                                               batch_size=32),
        train=TrainConfig(strategy="replay", episodes_per_task=3000, monitors=(), max_grad_norm=None), seeds=3),
}


def describe_preset(name: str) -> str:
    """One line on the preset ``name``: its tasks, episodes, sizes and seeds."""
    if name not in PRESETS:
        raise ValueError(f"name must be one of {list(PRESETS)}, got {name!r}")
    e = PRESETS[name]
    if e.source == "gymnax":
        g = e.gymnax
        tasks = "its task family" if g.variants == "family" else f"{len(g.overrides())} tasks"
        ppo = f", PPO {g.ppo_epochs} epochs x {g.ppo_minibatches} minibatches" if g.ppo_epochs > 1 else ""
        decay = ", rate decaying to 0" if e.train.lr_schedule == "linear" else ""
        return (f"{g.env_id} ({tasks}) x {e.train.episodes_per_task} updates of {e.train.num_envs} x "
                f"{g.rollout_steps} steps{ppo}{decay}, policy hidden {g.policy_hidden}, strategy {e.train.strategy}, "
                f"{e.seeds} seeds")
    if e.source != "world":
        d = e.data
        tasks = (f"{d.classes_per_task} classes per task" if d.stream == "split" else f"{d.permuted_tasks} tasks")
        online = ", one pass" if d.sampling == "epoch" else ""
        every = f", all tasks scored every {e.train.evaluate_every}" if e.train.evaluate_every > 1 else ""
        model = {"mlp": f"MLP {'-'.join(map(str, d.mlp_hidden))}", "convnet": "ConvNet",
                 "resnet18": "reduced ResNet-18"}[d.backbone] + (", crop and flip" if d.augment else "")
        files = " (files from --data-dir)" if e.source in FILE_DATASETS else ""
        return (f"{e.source}{files} {d.stream} ({tasks}, {d.scenario}-incremental) x {e.train.episodes_per_task} "
                f"updates of {d.batch_size}{online}{every}, {model}, strategy {e.train.strategy}, {e.seeds} seeds")
    return (f"{e.world.num_tasks} tasks x {e.train.episodes_per_task} episodes, observation {e.world.observation_dim} "
            f"x {e.world.num_modalities} modalities, action {e.world.action_dim}, hidden {e.model.hidden_dim}, "
            f"strategy {e.train.strategy}, {e.seeds} seeds")
