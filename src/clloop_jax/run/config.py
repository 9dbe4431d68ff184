"""The static configuration of a run and its traced hyperparameters.

:class:`RunConfig` holds what changes the compiled program (strategy, monitors, Fisher variant, sizes);
:class:`HParams` holds the numbers a run traces (learning rate, the strategy's and the source's hyperparameters),
which ``vmap`` sweeps.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Dict, NamedTuple, Optional, Tuple, Union

import jax
import jax.numpy as jnp
import numpy as np
import optax

from clloop_jax.importance import fisher as fisher_lib
from clloop_jax.monitors import Monitor, get_monitor
from clloop_jax.strategies.base import (NoHParams, Strategy, check_hparam, check_hparams, get_strategy,
                                        hparam_paths, is_hparams, matching_paths, path_value, with_path)
from clloop_jax.sources.base import capability
from clloop_jax.validation import check_bool, check_choice, check_float, check_key, is_int

__all__ = ["HParams", "RunConfig", "Hyperparameters", "FISHER_VARIANTS", "TRACE_MODES", "AdamLinearDecay"]


FISHER_VARIANTS = ("empirical", "sampled", "exact")

#: What a run's traces keep (``RunConfig.traces``): every update's record, or one summary per task.
TRACE_MODES = ("episodes", "tasks")


class HParams(NamedTuple):
    """Numeric hyperparameters of a run, traced: ``learning_rate`` (the optimizer's), ``strategy`` (the strategy's
    own ``NamedTuple``) and ``source`` (the task source's). Build it with :meth:`Run.hparams`."""

    learning_rate: Any = 1e-3
    strategy: Any = NoHParams()
    source: Any = NoHParams()

    def _path(self, name: str) -> tuple:
        """The one path that ``name`` (flat, or dotted for a chain's part: ``"ewc.lam"``) designates."""
        paths = hparam_paths(self)
        hits = matching_paths(paths, name)
        if not hits:
            raise ValueError(f"unknown hyperparameter {name!r}; this run has {self.names()}")
        if len(hits) > 1:
            labels = [_display(p) for p in hits]
            if len(set(labels)) < len(labels):  # the strategy's and the source's field of one name
                labels = [".".join(p) for p in hits]
            raise ValueError(f"hyperparameter {name!r} is ambiguous: {labels} all have it; name one of them")
        return hits[0]

    def names(self) -> list:
        """Every hyperparameter's name: flat (``lam``), dotted for a chain's parts (``ewc.lam``, ``replay.alpha``)."""
        return [_display(p) for p in hparam_paths(self)]

    def flat(self) -> Dict[str, Any]:
        """``{name: value}`` for every hyperparameter (names as in :meth:`names`)."""
        return {_display(p): path_value(self, p) for p in hparam_paths(self)}

    def replace(self, **values) -> "HParams":
        """The same hyperparameters with the named ones changed, validated. Names are those of :meth:`names`, or a
        part's field alone (``lam``) where only one part of the run has it; an ambiguous name is refused."""
        hp = self
        for name, value in values.items():
            hp = with_path(hp, hp._path(name), value)
        hp.validate()
        return jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), hp)

    def axes(self, *names: str) -> "HParams":
        """``in_axes`` for ``jax.vmap`` that batch the named fields (axis 0) and broadcast the others."""
        chosen = {self._path(name) for name in names}

        def mark(tup, prefix):
            return type(tup)(*[mark(v, prefix + (f,)) if is_hparams(v) else (0 if prefix + (f,) in chosen else None)
                               for f, v in zip(tup._fields, tup)])

        return mark(self, ())

    def validate(self) -> None:
        """Checks concrete values (traced ones are skipped): finite numbers, a positive learning rate, and each
        part's own ranges. Raises ``ValueError``/``TypeError`` naming the field."""
        for part in ("strategy", "source"):
            value = getattr(self, part)
            if not (isinstance(value, tuple) and hasattr(value, "_fields")):
                raise TypeError(f"HParams.{part} must be a NamedTuple of hyperparameters, got "
                                f"{type(value).__name__}")
        check_hparam("learning_rate", self.learning_rate, lambda v: v > 0, "a finite number > 0")
        check_hparams(self.strategy, "strategy")
        check_hparams(self.source, "source")


def _display(path: tuple) -> str:
    """A hyperparameter's name from its path in :class:`HParams`: the part (``strategy``, ``source``) left out."""
    return ".".join(path[1:] if path[0] in ("strategy", "source") else path)


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """Static configuration of a continual-learning run (changing it recompiles).

    Attributes:
      strategy: a registered strategy name (``none``, ``l2``, ``ewc``, ``online_ewc``, ``si``, ``mas``,
        ``ewc_budget``, ...) or a :class:`~clloop_jax.strategies.Strategy`.
      episodes_per_task: optimizer updates per task, one per episode (batch).
      fisher_variant: ``empirical``, ``sampled`` or ``exact`` (see
      :func:`clloop_jax.importance.fisher.fisher_diagonal`). fisher_samples: label draws per input for the ``sampled``
      Fisher. fisher_chunk_size: per-sample gradients computed this many at a time (bounds memory); None = all at once.
      fisher_method: how per-sample scores are formed for the Fisher and MAS importances: ``"auto"`` (the dense
        layers' scores contracted after the backward pass where the source's model allows it, else one
        vector-Jacobian product per sample), ``"per_layer"`` or ``"per_sample"``; the numbers agree up to rounding
        (see :func:`clloop_jax.importance.fisher.fisher_diagonal`).
      monitors: the measurements recorded in the traces: names (``"parameter"``, ``"fisher"``, ``"functional"``)
        or :class:`~clloop_jax.monitors.Monitor` values; those not named are not in the program.
      measure_every: the monitors' ``measure`` (functional divergence) runs every this many episodes; None = once per
        task, after its last episode. Must divide ``episodes_per_task``.
      max_grad_norm: global-norm clipping of the gradient before the optimizer (None = no clipping).
      reset_optimizer: start each task with a fresh optimizer state.
      optimizer: ``learning_rate -> optax.GradientTransformation``; Adam by default.
      evaluate_every: the full row of the performance matrix (every task evaluated) is computed after every this
        many tasks (tasks ``k-1, 2k-1, ...``, numbered from 0) and after the last task; after the other tasks only
        the task just learned is evaluated (the diagonal ``R[i, i]``, the learning accuracy of Riemer et al. 2019,
        always present) and the rest of the row is NaN. The skipped evaluations do not run, so ``n`` tasks cost
        ``O(n^2 / k)`` task evaluations instead of ``O(n^2)`` (Dohare et al. 2024's loss-of-plasticity streams of
        hundreds of tasks). 1 (the default) evaluates every task after every task.
      traces: ``"episodes"`` (default) keeps every update's record, ``traces[name]`` of shape ``[tasks,
        episodes_per_task]``; ``"tasks"`` keeps one summary per task, ``[tasks]``: the mean over the task's updates
        (the monitors' measurements: the mean of those taken; ``finite``: True when every update was), so the
        traces' memory is ``O(tasks)`` rather than ``O(tasks * episodes_per_task)``.
    """

    strategy: Union[str, Strategy] = "ewc"
    episodes_per_task: int = 10
    fisher_variant: str = "sampled"
    fisher_samples: int = 1
    fisher_chunk_size: Optional[int] = None
    fisher_method: str = "auto"
    monitors: Tuple[Union[str, Monitor], ...] = ("parameter",)
    measure_every: Optional[int] = None
    max_grad_norm: Optional[float] = 1.0
    reset_optimizer: bool = True
    optimizer: Callable[[Any], optax.GradientTransformation] = optax.adam
    evaluate_every: int = 1
    traces: str = "episodes"

    def __post_init__(self):
        get_strategy(self.strategy)  # a clear error for an unknown name or a wrong type
        if not is_int(self.episodes_per_task) or self.episodes_per_task < 1:
            raise ValueError(f"episodes_per_task must be an integer >= 1, got {self.episodes_per_task!r}")
        if self.fisher_variant not in FISHER_VARIANTS:
            raise ValueError(f"fisher_variant must be one of {list(FISHER_VARIANTS)}, got {self.fisher_variant!r}")
        if not is_int(self.fisher_samples) or self.fisher_samples < 1:
            raise ValueError(f"fisher_samples must be an integer >= 1, got {self.fisher_samples!r}")
        if self.fisher_chunk_size is not None and (not is_int(self.fisher_chunk_size) or self.fisher_chunk_size < 1):
            raise ValueError(f"fisher_chunk_size must be an integer >= 1 or None, got {self.fisher_chunk_size!r}")
        check_choice("fisher_method", self.fisher_method, fisher_lib.METHODS)
        if isinstance(self.monitors, (str, Monitor)) or not isinstance(self.monitors, (tuple, list)):
            raise ValueError(f"monitors must be a tuple of monitor names or Monitor values, got {self.monitors!r}")
        object.__setattr__(self, "monitors", tuple(self.monitors))
        try:
            names = [get_monitor(m).name for m in self.monitors]
        except (TypeError, ValueError) as err:
            raise type(err)(f"monitors: {err}") from None
        if len(set(names)) != len(names):
            raise ValueError(f"monitors must not repeat a monitor, got {names}")
        if self.measure_every is not None and (not is_int(self.measure_every) or self.measure_every < 1
                                               or self.episodes_per_task % self.measure_every):
            raise ValueError(f"measure_every must be None or an integer >= 1 dividing episodes_per_task="
                             f"{self.episodes_per_task}, got {self.measure_every!r}")
        check_float("max_grad_norm", self.max_grad_norm, min=0, open_min=True, allow_none=True, scalar=True)
        check_bool("reset_optimizer", self.reset_optimizer)
        if not is_int(self.evaluate_every) or self.evaluate_every < 1:
            raise ValueError(f"evaluate_every must be an integer >= 1 (evaluate every task after every this many "
                             f"tasks), got {self.evaluate_every!r}")
        check_choice("traces", self.traces, TRACE_MODES)
        if not callable(self.optimizer):
            raise TypeError(f"optimizer must be a callable learning_rate -> optax.GradientTransformation, "
                            f"got {self.optimizer!r}")


@dataclasses.dataclass(frozen=True)
class AdamLinearDecay:
    """Adam whose learning rate decays linearly from ``learning_rate`` to 0 over ``steps`` optimizer steps (and stays
    0 after them): a :class:`RunConfig` ``optimizer``. With ``reset_optimizer`` (the default) the count starts again
    with every task, so each task's rate decays over its own ``steps`` (its episodes times the source's
    ``minibatch_passes``). A value, so that equal configurations compare equal."""

    steps: int

    def __post_init__(self):
        if not is_int(self.steps) or self.steps < 1:
            raise ValueError(f"steps must be an integer >= 1 (optimizer steps to decay over), got {self.steps!r}")

    def __call__(self, learning_rate) -> optax.GradientTransformation:
        return optax.adam(optax.linear_schedule(learning_rate, 0.0, self.steps))


class Hyperparameters:
    """The hyperparameter methods of a run (mixed into :class:`~clloop_jax.run.sequential.Run`: its ``strategy`` and
    ``source`` give the defaults)."""

    # ----- hyperparameters --------------------------------------------------------------------------------
    def hparams(self, **values) -> HParams:
        """The run's hyperparameters: the strategy's and the source's defaults, with ``values`` (flat names such
        as ``learning_rate``, ``lam``, ``gamma``, ``feedback_weight``) set; validated, float32."""
        base = HParams(1e-3, self.strategy.hparams, capability(self.source, "hparams"))
        return base.replace(**values)

    def check_hparams(self, hp) -> None:
        """``TypeError``/``ValueError`` unless ``hp`` is this run's :class:`HParams` with valid concrete values."""
        if not isinstance(hp, HParams):
            raise TypeError(f"hp must be the run's HParams (from run.hparams(...)), got {type(hp).__name__}")
        for part, default in (("strategy", self.strategy.hparams),
                              ("source", capability(self.source, "hparams"))):
            if type(getattr(hp, part)) is not type(default):
                raise TypeError(f"hp.{part} must be {type(default).__name__} for this run, got "
                                f"{type(getattr(hp, part)).__name__}; build hp with run.hparams(...)")
        hp.validate()

    def _checked(self, key, hp):
        """The key as a typed key (``TypeError``/``ValueError`` unless it is one); ``hp`` checked."""
        key = check_key("key", key)
        self._check_single(hp)
        return key

    def _check_single(self, hp) -> None:
        """``hp`` checked, every concrete value a single number (a swept one goes through ``jax.vmap``)."""
        self.check_hparams(hp)
        for name, value in hp.flat().items():
            if not isinstance(value, jax.core.Tracer) and np.ndim(value) != 0:
                raise ValueError(f"hp: {name} must be a single number here, got shape {np.shape(value)}; a swept "
                                 f"value runs under jax.vmap(run, in_axes=(None, hp.axes({name!r})))")
