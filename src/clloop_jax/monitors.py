"""Monitors: opt-in measurements of how far the parameters and the behaviour drift, recorded in the run's traces.

A :class:`Monitor` is a small value of pure functions, like a strategy: it keeps its own state through the run and
adds named scalars to the traces. The run calls

* ``init(params, data_shape, num_tasks, source) -> state`` before the first task (``data_shape``: the
  ``jax.ShapeDtypeStruct`` tree of a task's per-sample ``(inputs, targets)`` when ``uses_data``, else None); with
  ``init_with_data`` set, ``data_shape`` is instead one draw of the first task's per-sample data itself (the
  source's ``fisher_data``, from a key of its own): a fixed probe batch for measurements of the features;
* ``update(state, params) -> dict`` after every update (cheap measurements, every episode); with
  ``update_with_previous`` set, ``update(state, params, previous)`` with ``previous`` the parameters before it;
* ``measure(state, params, source) -> dict`` every ``RunConfig.measure_every`` episodes (by default once, at the
  end of each task); the other episodes record NaN for these entries;
* ``consolidate(state, params, task_id, source, importance=None, data=None) -> state`` at the end of every task.

Only the monitors named in ``RunConfig.monitors`` are in the compiled program, and the Fisher diagonal is computed
at a consolidation only when the strategy or a monitor asks for it (``importance="fisher"``).

Built in (names for configs: ``"parameter"``, ``"fisher"``, ``"functional"``):

* :func:`parameter_divergence`: ``param_l2 = |theta - theta_start|`` and ``param_relative = |theta -
  theta_start| / |theta_start|`` from the parameters at the start of the current task.
* :func:`fisher_divergence`: ``fisher_distance = sum_i F_i (theta_i - theta_start_i)^2`` with ``F`` the sum of the
  Fisher diagonals of the tasks consolidated so far (0 during the first task).
* :func:`functional_divergence`: ``functional``, the mean output divergence (KL for a categorical likelihood, MSE
  otherwise) on ``num_probes`` inputs kept from each earlier task, against the outputs the model gave them when
  that task ended (0 before any task ended).

and, against the loss of plasticity (definitions and papers in :mod:`clloop_jax.plasticity`; names
``"param_norm"``, ``"update_norm"``, ``"dormant"``, ``"effective_rank"``, ``"feature_norm"``):

* :func:`param_norm_monitor`: ``param_norm = |theta|``, every episode.
* :func:`update_norm_monitor`: ``update_norm = |theta_t - theta_{t-1}|``, the size of each update (0 for a skipped,
  non-finite one), every episode.
* :func:`dormant_monitor`: ``dormant_0`` and ``dormant_0.1``, the fractions of tau-dormant hidden units (Sokar et
  al., 2023) over the model's hidden layers on a fixed probe batch, measured like ``functional``.
* :func:`effective_rank_monitor`: ``effective_rank`` of the last hidden layer's features (the representation the
  output reads) on the same kind of fixed probe batch, measured like ``functional``.
* :func:`feature_norm_monitor`: ``feature_norm``, the mean L2 norm of those features on that probe batch.

The probe batch of the last three is drawn once, from the first task's data (the source's ``fisher_data``; up to
``num_probes`` of its samples), and kept for the whole run, so every measurement sees the same inputs. The hidden
layers are what the source's ``features`` capability returns (:mod:`clloop_jax.sources.base`): an MLP's layers on a
labelled stream; the recurrent agent's fusion layer and recurrent state in the closed loop (at every step of the
probe episodes) and on gymnax (at the probe states). A source without it is refused when the run is traced.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Dict, NamedTuple, Optional

import jax
import jax.numpy as jnp

from clloop_jax import divergence as div_lib
from clloop_jax import plasticity as plast_lib
from clloop_jax.importance import fisher as fisher_lib
from clloop_jax.sources.base import capability
from clloop_jax.strategies.base import MethodHook

PyTree = Any


@dataclasses.dataclass(frozen=True)
class Monitor:
    """A measurement recorded in the traces (see the module docstring for each hook's contract)."""

    name: str
    init: Callable
    update: Optional[Callable] = None
    measure: Optional[Callable] = None
    consolidate: Optional[Callable] = None
    importance: Optional[str] = None
    uses_data: bool = False
    update_with_previous: bool = False
    init_with_data: bool = False

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"Monitor.name must be a non-empty string, got {self.name!r}")
        for hook in ("init", "update", "measure", "consolidate"):
            value = getattr(self, hook)
            if value is not None and not callable(value):
                raise TypeError(f"Monitor.{hook} must be callable or None, got {type(value).__name__}")
        if self.importance not in (None, "fisher", "mas"):
            raise ValueError(f"Monitor.importance must be 'fisher', 'mas' or None, got {self.importance!r}")


# ----- parameter divergence ------------------------------------------------------------------------------------


def _start_init(params, data_shape, num_tasks, source):
    return params


def _parameter_update(start, params):
    return {"param_l2": div_lib.l2_distance(params, start), "param_relative": div_lib.relative_change(params, start)}


def _start_consolidate(start, params, task_id, source, importance=None, data=None):
    return params


def parameter_divergence() -> Monitor:
    """L2 and relative distance of the parameters from where the current task began, every episode."""
    return Monitor("parameter", _start_init, update=_parameter_update, consolidate=_start_consolidate)


# ----- Fisher-weighted divergence ------------------------------------------------------------------------------


class FisherMonitorState(NamedTuple):
    start: PyTree       # parameters when the current task began
    fisher_sum: PyTree  # sum of the Fisher diagonals of the tasks consolidated so far


def _fisher_init(params, data_shape, num_tasks, source):
    return FisherMonitorState(params, jax.tree.map(jnp.zeros_like, params))


def _fisher_update(state, params):
    return {"fisher_distance": div_lib.fisher_weighted_distance(params, state.start, state.fisher_sum)}


def _fisher_consolidate(state, params, task_id, source, importance=None, data=None):
    return FisherMonitorState(params, jax.tree.map(jnp.add, state.fisher_sum, importance))


def fisher_divergence() -> Monitor:
    """The Fisher-weighted distance from where the current task began (Fisher of the earlier tasks), every episode."""
    return Monitor("fisher", _fisher_init, update=_fisher_update, consolidate=_fisher_consolidate,
                   importance="fisher")


# ----- functional divergence -----------------------------------------------------------------------------------


class ProbeMemory(NamedTuple):
    """Inputs of earlier tasks and the model's outputs on them when each task ended."""

    inputs: Any      # leaves [num_tasks, num_probes, ...]
    outputs: Any     # [num_tasks, num_probes, ...]
    seen: jax.Array  # [num_tasks] bool


@dataclasses.dataclass(frozen=True)
class _Functional:
    num_probes: int

    def init(self, params, data_shape, num_tasks, source):
        probes = jax.tree.map(lambda s: jax.ShapeDtypeStruct((self.num_probes,) + s.shape[1:], s.dtype),
                              data_shape[0])
        outputs = jax.eval_shape(jax.vmap(source.predict, in_axes=(None, 0)), params, probes)
        stack = lambda s: jnp.zeros((num_tasks,) + s.shape, s.dtype)  # noqa: E731
        return ProbeMemory(jax.tree.map(stack, probes), jax.tree.map(stack, outputs), jnp.zeros((num_tasks,), bool))

    def measure(self, memory, params, source):
        kind = "kl" if isinstance(source.likelihood, fisher_lib.Categorical) else "mse"
        flat = lambda x: x.reshape((-1,) + x.shape[2:])  # noqa: E731
        outputs = jax.vmap(source.predict, in_axes=(None, 0))(params, jax.tree.map(flat, memory.inputs))
        per_probe = div_lib.output_divergence(outputs, flat(memory.outputs), kind=kind)
        per_task = per_probe.reshape(memory.seen.shape[0], -1).mean(axis=1)
        count = jnp.maximum(memory.seen.sum(), 1)
        return {"functional": jnp.sum(jnp.where(memory.seen, per_task, 0.0)) / count}

    def consolidate(self, memory, params, task_id, source, importance=None, data=None):
        inputs = jax.tree.map(lambda x: x[: self.num_probes], data[0])
        outputs = jax.vmap(source.predict, in_axes=(None, 0))(params, inputs)
        put = lambda stack, x: stack.at[task_id].set(x)  # noqa: E731
        return ProbeMemory(jax.tree.map(put, memory.inputs, inputs), put(memory.outputs, outputs),
                           memory.seen.at[task_id].set(True))


def functional_divergence(num_probes: int = 4) -> Monitor:
    """How far the outputs on ``num_probes`` inputs of each earlier task moved since that task ended."""
    if isinstance(num_probes, bool) or not isinstance(num_probes, int) or num_probes < 1:
        raise ValueError(f"num_probes must be an integer >= 1, got {num_probes!r}")
    f = _Functional(num_probes)
    return Monitor("functional", MethodHook(f, "init"), measure=MethodHook(f, "measure"),
                   consolidate=MethodHook(f, "consolidate"), uses_data=True)


# ----- plasticity ----------------------------------------------------------------------------------------------


def _no_state(params, data_shape, num_tasks, source):
    return ()


def param_norm_monitor() -> Monitor:
    """The global L2 norm of the parameters, every episode."""
    return Monitor("param_norm", _no_state, update=lambda state, params: {"param_norm": plast_lib.global_norm(params)})


def _update_norm(state, params, previous):
    return {"update_norm": plast_lib.update_norm(params, previous)}


def update_norm_monitor() -> Monitor:
    """The L2 norm of each update's change of the parameters, every episode."""
    return Monitor("update_norm", _no_state, update=_update_norm, update_with_previous=True)


@dataclasses.dataclass(frozen=True)
class _Features:
    num_probes: int

    def init(self, params, data, num_tasks, source):
        probe = plast_lib.probe_inputs(data, self.num_probes)
        self.features(source, params, probe)   # a source without hidden layers to read is refused here
        return probe

    @staticmethod
    def features(source, params, probe):
        read = capability(source, "features")
        if read is None:
            raise ValueError(f"the plasticity monitors read the hidden layers of the source's model (its features("
                             f"params, inputs) capability), and a {type(source).__name__} has none")
        return read(params, probe)

    def dormant(self, probe, params, source):
        features = self.features(source, params, probe)
        return {f"dormant_{tau:g}": plast_lib.dormant_fraction(features, tau) for tau in plast_lib.DORMANT_TAUS}

    def effective_rank(self, probe, params, source):
        return {"effective_rank": plast_lib.effective_rank(self.features(source, params, probe)[-1])}

    def feature_norm(self, probe, params, source):
        return {"feature_norm": plast_lib.feature_norm(self.features(source, params, probe)[-1])}


def _check_probes(num_probes):
    if isinstance(num_probes, bool) or not isinstance(num_probes, int) or num_probes < 1:
        raise ValueError(f"num_probes must be an integer >= 1, got {num_probes!r}")
    return _Features(num_probes)


def dormant_monitor(num_probes: int = 256) -> Monitor:
    """The fractions of 0- and 0.1-dormant hidden units of an MLP on a fixed probe batch (``dormant_0``,
    ``dormant_0.1``)."""
    f = _check_probes(num_probes)
    return Monitor("dormant", MethodHook(f, "init"), measure=MethodHook(f, "dormant"), init_with_data=True)


def effective_rank_monitor(num_probes: int = 256) -> Monitor:
    """The effective rank of an MLP's last hidden features on a fixed probe batch (``effective_rank``)."""
    f = _check_probes(num_probes)
    return Monitor("effective_rank", MethodHook(f, "init"), measure=MethodHook(f, "effective_rank"), init_with_data=True)


def feature_norm_monitor(num_probes: int = 256) -> Monitor:
    """The mean L2 norm of an MLP's last hidden features on a fixed probe batch (``feature_norm``)."""
    f = _check_probes(num_probes)
    return Monitor("feature_norm", MethodHook(f, "init"), measure=MethodHook(f, "feature_norm"), init_with_data=True)


MONITORS: Dict[str, Callable[[], Monitor]] = {"parameter": parameter_divergence, "fisher": fisher_divergence,
                                              "functional": functional_divergence, "param_norm": param_norm_monitor,
                                              "update_norm": update_norm_monitor, "dormant": dormant_monitor,
                                              "effective_rank": effective_rank_monitor,
                                              "feature_norm": feature_norm_monitor}


def get_monitor(monitor) -> Monitor:
    """A :class:`Monitor` from a name of :data:`MONITORS` or a monitor itself."""
    if isinstance(monitor, Monitor):
        return monitor
    if isinstance(monitor, str) and monitor in MONITORS:
        return MONITORS[monitor]()
    raise ValueError(f"monitor must be one of {list(MONITORS)} or a Monitor, got {monitor!r}")
