"""The parts of an experiment's configuration, each a typed, frozen dataclass checked in plain Python.

:class:`WorldConfig` and :class:`ModelConfig` (the closed loop and its agent), :class:`DataConfig` (a labelled
benchmark), :class:`GymnaxConfig` (a gymnax environment learned from reward) and :class:`TrainConfig` (how the agent
learns), with the defaults they share. Nothing here imports JAX: the command line reads these to parse its options.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from typing import TYPE_CHECKING, Annotated, Optional, Tuple

import tyro

if TYPE_CHECKING:  # annotations only: importing these loads JAX
    from clloop_jax.envs import Environment


__all__ = ["WorldConfig", "ModelConfig", "DataConfig", "GymnaxConfig", "TrainConfig", "DEFAULT_LAMBDA", "DATA_LAMBDA",
           "DEFAULT_GAMMA", "DEFAULT_MEMORY", "STRATEGY_NAMES", "MONITOR_NAMES", "FISHER_VARIANTS", "SOURCES",
           "MEMORY_STRATEGIES", "BOUNDARY_MODES", "TRACE_MODES", "LR_SCHEDULES", "count_setting", "default_strength"]


from clloop_jax.workflow.fields import count_setting, number_setting
from clloop_jax.workflow.names import (BACKBONES, BOUNDARY_MODES, BUNDLED_DATASETS, DATA_LAMBDA,  # noqa: F401
                                       DEFAULT_GAMMA, DEFAULT_LAMBDA, DEFAULT_MEMORY, FILE_DATASETS, FISHER_VARIANTS,
                                       LR_SCHEDULES, MEMORY_POLICIES, MEMORY_STRATEGIES, POLICY_STRATEGIES, SOURCES,
                                       STRATEGY_NAMES, TRACE_MODES, WORLD_ID)


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
                count_setting("world", f.name, getattr(self, f.name))
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
        count_setting("model", "hidden_dim", self.hidden_dim)
        count_setting("model", "num_heads", self.num_heads)
        if self.hidden_dim % self.num_heads:
            raise ValueError(f"model.hidden_dim must be a multiple of model.num_heads={self.num_heads}, "
                             f"got {self.hidden_dim}")


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """A labelled benchmark (--source mnist, digits or mnist1d, bundled; or cifar10, cifar100, mnist_idx,
    fashion_mnist, kmnist or tinyimagenet, read from the files in --data-dir): its stream of tasks and the
    classifier."""

    stream: str = "split"
    """split: the classes in groups of classes-per-task, one group per task; permuted: permuted-tasks tasks of
    all classes, each with its own fixed permutation of the input features"""
    scenario: str = "class"
    """task, domain or class incremental (van de Ven & Tolias 2019): the task's own classes with the task known,
    the position within the group, or every class seen so far"""
    classes_per_task: int = 2
    """classes in each task of a split stream"""
    permuted_tasks: Annotated[int, tyro.conf.arg(aliases=("--tasks",))] = 5
    """tasks of a permuted stream (also --tasks); each task holds its own permuted copy of the images (MNIST: about
    16 MB per task)"""
    mlp_hidden: Tuple[int, ...] = (400, 400)
    """widths of the classifier's hidden layers (a multilayer perceptron with ReLU)"""
    batch_size: int = 128
    """training samples per update"""
    fisher_size: int = 256
    """samples of a task that estimate its Fisher information (and fill a rehearsal memory)"""
    data_seed: int = 0
    """the stream's seed: the permutations, the equal-size subsets of a split (an integer >= 0)"""
    sampling: str = "random"
    """random: every update draws its batch afresh from the task's training images; epoch: online learning, each
    training image seen once per task in a random order (Dohare et al. 2024), so episodes-per-task must be the
    number of training images // batch-size (MNIST: 4000 // batch-size)"""
    pixel_bytes: bool = False
    """MNIST only: keep the images as bytes in the run (a quarter of float32's memory, for long permuted streams);
    they are read as the same floats, so the run's numbers do not change (the file sources always keep bytes)"""
    data_dir: str = ""
    """the folder holding a file source's data (cifar-10-batches-py, cifar-100-python, the IDX files, TinyImageNet's
    train/ and val/); required for those sources, unused by the others"""
    backbone: str = "mlp"
    """the classifier: mlp (hidden layers mlp-hidden), convnet (a small conv net with batch norm), resnet18 (the
    reduced ResNet-18 of the GEM and DER papers, width 20, with batch norm), the last two for images; or recurrent
    (the cross-modal recurrent model of --hidden-dim and --num-heads reading the input as a sequence of chunks:
    digits 8 values per step, mnist1d 4, mnist 28; classified from the last step's output)"""
    augment: bool = False
    """random crop (zero padding 4) and horizontal flip of every training image, drawn per sample in the program
    (image sources: mnist, digits and the file sources)"""

    def __post_init__(self):
        for name, choices in (("stream", ("split", "permuted")), ("scenario", ("task", "domain", "class")),
                              ("sampling", ("random", "epoch"))):
            if getattr(self, name) not in choices:
                raise ValueError(f"data.{name} must be one of {list(choices)}, got {getattr(self, name)!r}")
        for name in ("classes_per_task", "permuted_tasks", "batch_size", "fisher_size"):
            count_setting("data", name, getattr(self, name))
        if isinstance(self.mlp_hidden, (str, bytes)) or not isinstance(self.mlp_hidden, (tuple, list)):
            raise TypeError(f"data.mlp_hidden must be a tuple of layer widths, got {self.mlp_hidden!r}")
        for width in self.mlp_hidden:
            count_setting("data", "mlp_hidden", width)
        object.__setattr__(self, "mlp_hidden", tuple(self.mlp_hidden))
        if isinstance(self.data_seed, bool) or not isinstance(self.data_seed, numbers.Integral) or self.data_seed < 0:
            raise ValueError(f"data.data_seed must be an integer >= 0, got {self.data_seed!r}")
        for name in ("pixel_bytes", "augment"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"data.{name} must be True or False, got {getattr(self, name)!r}")
        if not isinstance(self.data_dir, str):
            raise TypeError(f"data.data_dir must be a folder (a str), got {self.data_dir!r}")
        if self.backbone not in BACKBONES:
            raise ValueError(f"data.backbone must be one of {list(BACKBONES)}, got {self.backbone!r}")

    def make_source(self, dataset: str, model: Optional[ModelConfig] = None):
        """The :class:`~clloop_jax.sources.supervised.SupervisedSource` of ``dataset`` (the recurrent backbone of
        ``model``'s sizes; :func:`~clloop_jax.workflow.labelled.make_labelled_source`)."""
        from clloop_jax.workflow.labelled import make_labelled_source
        return make_labelled_source(self, dataset, model)

    def check_source(self, dataset: str) -> None:
        """``ValueError`` for settings the labelled source ``dataset`` cannot take
        (:func:`~clloop_jax.workflow.labelled.check_labelled_source`)."""
        from clloop_jax.workflow.labelled import check_labelled_source
        check_labelled_source(self, dataset)


@dataclasses.dataclass(frozen=True)
class GymnaxConfig:
    """A gymnax environment learned from reward by an actor-critic (--source gymnax): its tasks and the learner."""

    env_id: str = "CartPole-v1"
    """a registered gymnax environment with a flat observation: CartPole-v1, Acrobot-v1, Pendulum-v1, ...; or
    LatentWorld: the closed-loop world of the world options (its num-tasks tasks) learned from its reward alone and
    scored like imitation (1 = the expert's action, 0 = the zero action)"""
    variants: str = "family"
    """the tasks: family (the library's variants of CartPole-v1 or Pendulum-v1: a longer, heavier pole or
    pendulum, stronger gravity), random:N or random:N:SEED (N variants of CartPole-v1 or Pendulum-v1 with their
    physics drawn uniformly from fixed ranges, seed 0 by default: a long task sequence) or a JSON list of EnvParams
    overrides, one per task, such as [{}, {"length": 1.5}]"""
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
    eval_envs: int = 16
    """environments whose first episode's return is a task's score"""

    def __post_init__(self):
        if not isinstance(self.env_id, str) or not self.env_id:
            raise ValueError(f"gymnax.env_id must be a gymnax environment id, got {self.env_id!r}")
        if not isinstance(self.variants, str):
            raise TypeError(f"gymnax.variants must be 'family', 'random:N[:SEED]' or a JSON list of overrides, got "
                            f"{self.variants!r}")
        if self.variants != "family":
            self.overrides()
        for name in ("rollout_steps", "ppo_epochs", "ppo_minibatches", "policy_hidden", "eval_envs"):
            count_setting("gymnax", name, getattr(self, name))
        if not isinstance(self.persistent_envs, bool):
            raise TypeError(f"gymnax.persistent_envs must be True or False, got {self.persistent_envs!r}")
        number_setting("gymnax", "discount", self.discount, 0, 1)
        number_setting("gymnax", "gae_lambda", self.gae_lambda, 0, 1)
        number_setting("gymnax", "entropy_coef", self.entropy_coef, 0)
        number_setting("gymnax", "reward_scale", self.reward_scale, 0, open_low=True)

    def overrides(self) -> list:
        """The tasks' ``EnvParams`` overrides: the family's, or the JSON list of ``variants`` (none for the world,
        whose tasks are its own)."""
        if self.env_id == WORLD_ID:
            if self.variants != "family":
                raise ValueError(f"gymnax.variants: the tasks of {WORLD_ID} are the world's own (--num-tasks, "
                                 f"--world-seed); leave --variants unset, got {self.variants!r}")
            return []
        if self.variants == "family":
            from clloop_jax.rl.tasks import TASK_FAMILIES
            if self.env_id not in TASK_FAMILIES:
                raise ValueError(f"gymnax.variants 'family' is defined for {sorted(TASK_FAMILIES)}, not "
                                 f"{self.env_id!r}; give the tasks as a JSON list of EnvParams overrides")
            return [dict(o) for o in TASK_FAMILIES[self.env_id]]
        if self.variants.startswith("random:"):
            from clloop_jax.rl.tasks import VARIANT_RANGES, random_variants
            parts = self.variants.split(":")[1:]
            if len(parts) not in (1, 2) or not all(p.isdigit() for p in parts) or int(parts[0]) < 1:
                raise ValueError(f"gymnax.variants 'random:N' or 'random:N:SEED' needs N >= 1 and SEED >= 0 as "
                                 f"integers, got {self.variants!r}")
            if self.env_id not in VARIANT_RANGES:
                raise ValueError(f"gymnax.variants 'random:N' is defined for {sorted(VARIANT_RANGES)}, not "
                                 f"{self.env_id!r}; give the tasks as a JSON list of EnvParams overrides")
            return random_variants(self.env_id, int(parts[0]), int(parts[1]) if len(parts) == 2 else 0)
        import json
        try:
            values = json.loads(self.variants)
        except ValueError:
            values = None
        if not isinstance(values, list) or not values or not all(isinstance(v, dict) for v in values):
            raise ValueError(f"gymnax.variants must be 'family', 'random:N[:SEED]' or a JSON list of EnvParams "
                             f"overrides (one dict per task, such as [{{}}, {{\"length\": 1.5}}]), got "
                             f"{self.variants!r}")
        return values

    def make_source(self, num_envs: int, world: Optional[WorldConfig] = None):
        """The :class:`~clloop_jax.sources.gymnax.GymnaxSource` of these tasks with ``num_envs`` environments (for
        ``LatentWorld``, the tasks of ``world``, scored like imitation)."""
        from clloop_jax.sources.gymnax import GymnaxSource
        settings = dict(hidden_dim=self.policy_hidden, num_envs=num_envs, num_steps=self.rollout_steps,
                        epochs=self.ppo_epochs, num_minibatches=self.ppo_minibatches,
                        persistent_envs=self.persistent_envs, eval_envs=self.eval_envs)
        if self.env_id != WORLD_ID:
            return GymnaxSource(self.env_id, self.overrides(), **settings)
        env = (world or WorldConfig()).make()
        return GymnaxSource(WORLD_ID, environment=env, tasks=env.tasks(), score_kind="imitation", **settings)

    def hparams(self) -> dict:
        """The actor-critic's traced hyperparameters set here."""
        return {"discount": self.discount, "gae_lambda": self.gae_lambda, "entropy_coef": self.entropy_coef,
                "reward_scale": self.reward_scale}


def default_strength(defaults: dict, strategy: str) -> float:
    """The default penalty strength of ``strategy`` in ``defaults``; for a chain (``"ewc+replay"``) that of its first
    part listed there; 1 when none is."""
    return next((defaults[part] for part in strategy.split("+") if part in defaults), 1.0)


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
    lr_schedule: str = "constant"
    """constant: the learning rate throughout; linear: it decays linearly to 0 over each task's optimizer steps
    (episodes-per-task times gymnax's ppo-epochs x ppo-minibatches; the optimizer restarts with every task)"""
    lam: Optional[float] = None
    """penalty strength (>= 0), for the strategies that have one (refused for the others); unset: the strategy's
    default (in the world: l2 0.3, ewc 3, online_ewc 3, si 30, mas 1, ewc_budget 3; on the other sources: ewc
    1000, online_ewc 1000, si 100, the others 1)"""
    gamma: Optional[float] = None
    """decay of the running importance, in [0, 1]; used by online_ewc and ewc_budget only (refused for the other
    strategies); unset: 0.9"""
    strategy_hparams: Tuple[str, ...] = ()
    """any other of the strategy's hyperparameters, as name=value (replacement_rate=0.001 tau=0.05 alpha=0.5;
    dotted for one part of a chain: replay.alpha=0.5); a name the strategy does not have is refused"""
    feedback_weight: float = 0.3
    """scale of the world's feedback (reward, previous action) the agent sees (>= 0)"""
    fisher_variant: str = "sampled"
    """how the Fisher information is estimated: empirical, sampled or exact"""
    monitors: Tuple[str, ...] = ("parameter", "fisher", "functional")
    """measurements recorded during training: parameter, fisher, functional (none: pass no names)"""
    memory: Optional[int] = None
    """rehearsal memory in samples (>= 1), for replay, agem, derpp, er_ace, gem, icarl and gdumb (gem splits it equally
    over the tasks, icarl over the classes seen; refused for the others); unset: 500 (icarl: 2000)"""
    memory_batch: Optional[int] = None
    """memory samples drawn per update (>= 1), for replay, agem, derpp, er_ace, gem (per earlier task), icarl (exemplars
    next to the batch) and gdumb (per step of its from-scratch training); refused for the others; unset: 32 (replay,
    derpp, er_ace, icarl, gdumb), 64 (agem) or gem's whole memory of each task"""
    memory_policy: Optional[str] = None
    """what replay's memory keeps: reservoir (a uniform sample of the stream) or balanced (GDumb's class-balanced
    greedy memory); replay and er_ace only; unset: reservoir"""
    max_grad_norm: Optional[float] = 1.0
    """clip the gradient to this global norm before each update (> 0); None: no clipping"""
    evaluate_every: int = 1
    """evaluate every task after every this many tasks and after the last; after the others only the task just
    learned (the rest of that row of the performance matrix is nan): n tasks cost n^2 / k task evaluations, not n^2"""
    traces: str = "episodes"
    """episodes: record every update (traces.jsonl has a line per episode); tasks: one summary per task (the mean
    over its updates), so long streams keep O(tasks) records"""

    def __post_init__(self):
        if not isinstance(self.strategy, str):
            raise TypeError(f"train.strategy must be a strategy name, one of {list(STRATEGY_NAMES)}, got "
                            f"{type(self.strategy).__name__}")
        if self.strategy not in STRATEGY_NAMES:  # registered by the user, or a mistake: the registry decides
            from clloop_jax.strategies import get_strategy
            get_strategy(self.strategy)
        count_setting("train", "episodes_per_task", self.episodes_per_task)
        count_setting("train", "num_envs", self.num_envs)
        number_setting("train", "learning_rate", self.learning_rate, 0, open_low=True)
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"train.lr_schedule must be one of {list(LR_SCHEDULES)}, got {self.lr_schedule!r}")
        if self.lam is not None:
            number_setting("train", "lam", self.lam, 0)
        if self.gamma is not None:
            number_setting("train", "gamma", self.gamma, 0, 1)
        number_setting("train", "feedback_weight", self.feedback_weight, 0)
        if self.fisher_variant not in FISHER_VARIANTS:
            raise ValueError(f"train.fisher_variant must be one of {list(FISHER_VARIANTS)}, got "
                             f"{self.fisher_variant!r}")
        if isinstance(self.monitors, str) or not isinstance(self.monitors, (tuple, list)) \
                or not all(isinstance(m, str) for m in self.monitors):
            raise TypeError(f"train.monitors must be a tuple of monitor names, got {self.monitors!r}")
        object.__setattr__(self, "monitors", tuple(self.monitors))
        _check_monitor_names(self.monitors)
        for name in ("memory", "memory_batch"):
            if getattr(self, name) is not None:
                count_setting("train", name, getattr(self, name))
        if self.memory_policy is not None and self.memory_policy not in MEMORY_POLICIES:
            raise ValueError(f"train.memory_policy must be one of {list(MEMORY_POLICIES)}, got {self.memory_policy!r}")
        if self.max_grad_norm is not None:
            number_setting("train", "max_grad_norm", self.max_grad_norm, 0, open_low=True)
        count_setting("train", "evaluate_every", self.evaluate_every)
        if self.traces not in TRACE_MODES:
            raise ValueError(f"train.traces must be one of {list(TRACE_MODES)}, got {self.traces!r}")
        if isinstance(self.strategy_hparams, str) or not isinstance(self.strategy_hparams, (tuple, list)):
            raise TypeError(f"train.strategy_hparams must be a tuple of name=value texts, got {self.strategy_hparams!r}")
        object.__setattr__(self, "strategy_hparams", tuple(self.strategy_hparams))
        self.strategy_values()

    def strategy_values(self) -> dict:
        """``strategy_hparams`` as ``{name: value}``; ``ValueError`` naming an item that is not ``name=number`` (or
        names ``lam``/``gamma``, which have their own options, or one name twice)."""
        out = {}
        for item in self.strategy_hparams:
            name, sep, text = item.partition("=") if isinstance(item, str) else ("", "", "")
            try:
                value = float(text)
            except ValueError:
                value = None
            if not sep or not name.strip() or value is None or not math.isfinite(value):
                raise ValueError(f"train.strategy_hparams: expected name=number (e.g. replacement_rate=0.001), got "
                                 f"{item!r}")
            name = name.strip()
            if name in ("lam", "gamma"):
                raise ValueError(f"train.strategy_hparams: set {name!r} with --{name}, not here (a chain's part's "
                                 f"own value is dotted: ewc.{name}=...)")
            if name in out:
                raise ValueError(f"train.strategy_hparams: {name!r} is given twice")
            out[name] = value
        return out

    @property
    def strength(self) -> float:
        """``lam``, or the strategy's default strength in the world (:data:`DEFAULT_LAMBDA`) when unset."""
        return default_strength(DEFAULT_LAMBDA, self.strategy) if self.lam is None else self.lam

    @property
    def decay(self) -> float:
        """``gamma``, or its default when unset."""
        return DEFAULT_GAMMA if self.gamma is None else self.gamma

    def strategy_value(self):
        """The strategy as the run takes it: its name, or the rehearsal strategy built with ``memory`` samples and
        ``memory_batch`` of them per update, kept by ``memory_policy``."""
        options = {k: v for k, v in (("capacity", self.memory), ("batch_size", self.memory_batch),
                                     ("memory", self.memory_policy)) if v is not None}
        if not options:
            return self.strategy
        from clloop_jax.strategies import get_strategy
        return get_strategy(self.strategy, **options)

    def check_strategy_options(self) -> None:
        """``ValueError`` when ``lam`` or ``gamma`` is set and the strategy has no such hyperparameter (it would be
        recorded as if used). Looks the strategy up in the registry, which imports JAX."""
        from clloop_jax.strategies import get_strategy
        from clloop_jax.strategies.base import hparam_paths
        fields = {path[-1] for path in hparam_paths(get_strategy(self.strategy).hparams)}  # a chain's parts' too
        for name in ("memory", "memory_batch"):
            if getattr(self, name) is not None and not set(self.strategy.split("+")) & set(MEMORY_STRATEGIES):
                raise ValueError(f"train.{name} (--{name.replace('_', '-')} {getattr(self, name)!r}) is used only by "
                                 f"the rehearsal strategies {', '.join(MEMORY_STRATEGIES)}, not by {self.strategy!r}; "
                                 f"leave it unset")
        if self.memory_policy is not None and not set(self.strategy.split("+")) & set(POLICY_STRATEGIES):
            raise ValueError(f"train.memory_policy (--memory-policy {self.memory_policy}) is used only by "
                             f"{' and '.join(POLICY_STRATEGIES)}, not by {self.strategy!r}; leave it unset")
        if self.strategy_hparams:
            from clloop_jax.strategies.base import replace_hparams
            replace_hparams(get_strategy(self.strategy).hparams, self.strategy_values(),
                            owner=f"train.strategy_hparams of strategy {self.strategy!r}")
        for name in ("lam", "gamma"):
            if getattr(self, name) is not None and name not in fields:
                has = ", ".join(f for f in ("lam", "gamma") if f in fields)
                raise ValueError(f"train.{name} (--{name} {getattr(self, name)!r}) is not used by the strategy "
                                 f"{self.strategy!r} ({f'it has {has}' if has else 'it has neither lam nor gamma'}"
                                 f"); leave it unset")
