"""How much memory a run needs, estimated before anything is built or compiled, and how much the machine has.

Two estimates, both plain bookkeeping of array sizes (nothing is allocated, nothing compiled):

* :func:`estimate_experiment` works from the numbers of an
  :class:`~clloop_jax.workflow.experiment.ExperimentConfig` alone (``ExperimentConfig.memory_estimate()``), so
  absurd sizes are refused before the world, which itself allocates, is made. The command line uses it.
* :func:`estimate_run_memory` works on any built :class:`~clloop_jax.run.sequential.Run`: the shapes of its state
  and of one batch come from ``jax.eval_shape``, the arrays that backpropagation keeps from the residuals of
  ``jax.vjp`` of the loss (also only traced).

:meth:`MemoryEstimate.check` compares an estimate with :func:`machine_memory` (the physical memory of the host, or
a cgroup's limit if lower; on a GPU or TPU, the memory the device reports) and raises a ``ValueError`` that names
the estimate, its largest parts (with the sizes they grow with) and the machine's memory. The numbers are estimates: the compiled program may
need less (XLA frees and reuses buffers) or somewhat more (temporaries); they serve to refuse runs that are off by
orders of magnitude, before they end in an allocation failure minutes later.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from typing import Optional, Tuple

__all__ = ["MemoryEstimate", "estimate_experiment", "estimate_run_memory", "machine_memory", "format_bytes",
           "parameter_count"]

F32 = 4

#: Copies of the parameters each built-in strategy keeps in its state, whether its consolidation (or, for
#: streaming_ewc, every update) computes a per-sample importance, and the samples of its rehearsal memory (with
#: the model's outputs stored alongside for derpp). A strategy registered later counts as 4 copies.
_STRATEGIES = {
    "none": (2, False, 0, False), "l2": (2, False, 0, False), "ewc": (2, True, 0, False),
    "online_ewc": (2, True, 0, False), "si": (4, False, 0, False), "mas": (2, True, 0, False),
    "ewc_budget": (2, True, 0, False), "replay": (0, False, 500, False), "agem": (0, False, 500, False),
    "lwf": (1, False, 0, False), "derpp": (0, False, 500, True), "er_ace": (0, False, 500, False),
    "gem": (0, False, 500, False), "streaming_ewc": (2, True, 0, False),
    "streaming_si": (3, False, 0, False), "icarl": (1, False, 2000, False), "gdumb": (3, False, 500, False),
}
_UNKNOWN_STRATEGY = (4, False, 0, False)

#: Copies of the parameters each monitor keeps, and whether it asks for the Fisher diagonal.
_MONITORS = {"parameter": (1, False), "fisher": (2, True), "functional": (0, False)}

_PROBES = 4        # inputs kept per task by the functional monitor
_EVAL_ENVS = 16    # environments of an evaluation rollout (EnvSource's default)


def format_bytes(n: float) -> str:
    """``1536`` -> ``'1.5 KiB'``; works for any size (Python integers do not overflow)."""
    n = float(n)
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"):
        if n < 1024 or unit == "EiB":
            return f"{n:.0f} bytes" if unit == "bytes" else f"{n:.3g} {unit}"
        n /= 1024
    return f"{n:.3g} EiB"  # pragma: no cover


@dataclasses.dataclass(frozen=True)
class MemoryEstimate:
    """The memory a run is expected to need: ``parts`` is a tuple of ``(what, bytes, sizes)``, ``sizes`` the names
    of the configuration's sizes the part grows with; ``values`` gives those sizes' values (``(name, value)``);
    ``total`` is the sum of the parts."""

    parts: Tuple[Tuple[str, int, Tuple[str, ...]], ...]
    values: Tuple[Tuple[str, int], ...] = ()

    @property
    def total(self) -> int:
        return sum(p[1] for p in self.parts)

    def part(self, name: str) -> int:
        """The bytes of the part whose description starts with ``name``."""
        for what, b, _ in self.parts:
            if what.startswith(name):
                return b
        raise KeyError(f"no part {name!r}; parts: {[p[0] for p in self.parts]}")

    def largest(self, n: int = 3) -> list:
        return sorted(self.parts, key=lambda p: -p[1])[:n]

    def describe(self, n: int = 3) -> str:
        """The ``n`` largest parts (those of 1% of the total or more), ``<what>: 7.2 TiB; <what>: 90 GiB; ...``,
        and the sizes they grow with."""
        largest = [p for p in self.largest(n) if p[1] and 100 * p[1] >= self.total]
        text = "; ".join(f"{what}: {format_bytes(b)}" for what, b, _ in largest)
        values = dict(self.values)
        names = [name for _, _, sizes in largest for name in sizes]
        names = sorted(dict.fromkeys(n for n in names if n in values), key=lambda n: -values[n])
        if names:
            text += " (they grow with " + ", ".join(f"{n} {values[n]:,}" for n in names) + ")"
        return text

    def check(self, available: Optional[Tuple[int, str]] = None, what: str = "the run", devices=None) -> None:
        """``ValueError`` naming the estimate, its largest parts, the sizes they grow with and the machine's memory
        when ``total`` exceeds ``available`` (``(bytes, description)``; default :func:`machine_memory`)."""
        if available is None:
            available = machine_memory(self.total, devices=devices)
        limit, where = available
        if self.total > limit:
            raise ValueError(f"{what} would need about {format_bytes(self.total)} of memory, more than the "
                             f"{format_bytes(limit)} of {where}; the largest parts: {self.describe()}; make the "
                             f"largest sizes smaller (nothing was built or written)")


# ----- the machine --------------------------------------------------------------------------------------------


def _host_memory() -> Tuple[int, str]:
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # a platform without these names
        return 2 ** 62, "this machine (its memory is unknown)"
    out = (int(total), "physical memory on this machine")
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            with open(path) as f:
                limit = int(f.read().strip())
        except (OSError, ValueError):   # absent, or "max"
            continue
        if 0 < limit < out[0]:
            out = (limit, "memory this process's control group may use")
        break
    return out


def machine_memory(needed: Optional[int] = None, devices=None) -> Tuple[int, str]:
    """``(bytes, description)``: the memory a run may use. The host's physical memory (or its control group's
    limit, if lower); when JAX is loaded and the devices are GPUs or TPUs that report ``bytes_limit``, the smaller
    of that and the sum of the limits of ``devices`` (a count, a sequence of devices, or None for the default
    device). With ``needed`` larger than the host's memory, JAX is not consulted at all."""
    host = _host_memory()
    if (needed is not None and needed > host[0]) or "jax" not in sys.modules:
        return host
    import jax
    if devices is None:
        used = jax.devices()[:1]
    elif isinstance(devices, int):
        used = jax.devices()[:devices or None]
    else:
        used = list(devices)
    if not used or used[0].platform == "cpu":
        return host
    limits = []
    for d in used:
        try:
            stats = d.memory_stats() or {}
        except Exception:  # some backends do not implement it
            stats = {}
        if "bytes_limit" not in stats:
            return host
        limits.append(int(stats["bytes_limit"]))
    total = sum(limits)
    if total < host[0]:
        return total, f"memory on {len(used)} {used[0].platform.upper()} device{'s' if len(used) > 1 else ''}"
    return host


# ----- from an experiment's numbers -------------------------------------------------------------------------------


def parameter_count(observation_dim: int, action_dim: int, num_modalities: int, hidden_dim: int) -> int:
    """The number of parameters of the cross-modal agent (:class:`~clloop_jax.model.CrossModalModel`) acting in
    the default world (feedback ``1 + action_dim`` numbers)."""
    M, D, A, H = num_modalities, observation_dim, action_dim, hidden_dim
    F, N = 1 + A, M + 2                          # feedback size; tokens: modalities, state, feedback
    return (M * (D * H + H) + (H * H + H) + (F * H + H) + N * H  # encoders, token embedding
            + 4 * (H * H + H) + 2 * H                                # attention, its LayerNorm
            + (N * H * H + H) + (6 * H * H + 4 * H) + (H * A + A))   # fusion, GRU cell, head


def estimate_experiment(config) -> MemoryEstimate:
    """The memory of the run ``config`` (an :class:`~clloop_jax.workflow.experiment.ExperimentConfig`) describes,
    from its numbers alone: nothing is imported, built or allocated."""
    w, m, t, S = config.world, config.model, config.train, config.seeds
    M, D, A, L, T = w.num_modalities, w.observation_dim, w.action_dim, w.latent_dim, w.episode_length
    K, H, heads, E, B = w.num_tasks, m.hidden_dim, m.num_heads, t.episodes_per_task, t.num_envs
    E = 1 if t.traces == "tasks" else E                          # one summary per task
    F, N = 1 + A, M + 2
    P = parameter_count(D, A, M, H)
    copies, importance, capacity, logits = _STRATEGIES.get(t.strategy, _UNKNOWN_STRATEGY)
    if capacity and t.memory is not None:                        # --memory sets a rehearsal memory's size
        capacity = t.memory
    copies += 3                                                  # the parameters and Adam's two moments
    for name in t.monitors:
        c, fisher = _MONITORS.get(name, (2, False))
        copies += c
        importance = importance or fisher
    step = M * D + F + 2 * A + 2                                 # one step of a trajectory
    sample = T * (M * D + F + A)                                 # one episode as a per-sample input and target
    probes = K * _PROBES * (sample + T * A) if "functional" in t.monitors else 0
    backprop = 20 * N * H + 2 * heads * N * N + 3 * M * D + 4 * F + 4 * A  # kept per step and environment
    entries = 5 + 2 * len(t.monitors)                            # numbers recorded per episode
    n = max(L, A)
    memory = capacity * (sample + (T * A if logits else 0))
    model = ("hidden_dim", "observation_dim", "num_modalities", "action_dim")
    episode = ("episode_length", "observation_dim", "num_modalities", "action_dim")
    parts = [
        (f"parameters with optimizer, strategy and monitor state ({S:,} seeds x {copies} copies of {P:,} "
         f"parameters)", S * (copies * P + probes) * F32, ("seeds", *model)),
        (f"rehearsal memory ({S:,} seeds x {capacity:,} episodes of {T:,} steps)", S * memory * F32,
         ("seeds", "memory", *episode)),
        ("the state's copy on the host for each checkpoint", S * (copies * P + probes + memory) * F32,
         ("seeds", *model)),
        (f"one episode's trajectories and what backpropagation keeps ({S:,} seeds x {B:,} environments x {T:,} "
         f"steps)", S * (T * B * (step + backprop) + 3 * P) * F32, ("seeds", "num_envs", *episode, "hidden_dim")),
        (f"per-sample gradients of the importance ({S:,} seeds x {B:,} episodes x {P:,} parameters)",
         S * B * P * F32 if importance else 0, ("seeds", "num_envs", *model)),
        (f"evaluation on every task ({S:,} seeds x {K:,} tasks x {_EVAL_ENVS} environments x {T:,} steps)",
         S * K * _EVAL_ENVS * T * step * F32, ("seeds", "num_tasks", *episode)),
        (f"per-episode traces of all tasks, in memory and as text ({S:,} seeds x {K:,} tasks x {E:,} episodes)",
         S * K * E * entries * (3 * F32 + 25), ("seeds", "num_tasks", "episodes_per_task")),
        (f"performance matrices ({S:,} seeds x {K:,} x {K:,} tasks)", S * K * K * 40, ("seeds", "num_tasks")),
        (f"the world's tasks ({K:,} tasks, latent size {L:,})",
         K * (2 * L * L + 2 * L * A + M * D * L + M * D + 3 * n * n) * F32,
         ("num_tasks", "latent_dim", "observation_dim", "num_modalities", "action_dim")),
    ]
    values = (("seeds", S), ("memory", capacity), ("num_tasks", K), ("episodes_per_task", E), ("num_envs", B), ("episode_length", T),
              ("hidden_dim", H), ("observation_dim", D), ("num_modalities", M), ("action_dim", A), ("latent_dim", L))
    return MemoryEstimate(tuple(parts), values)


# ----- from a built run -------------------------------------------------------------------------------------------


def _nbytes(tree) -> int:
    import jax
    import numpy as np
    return sum(int(np.prod(x.shape, dtype=object)) * np.dtype(x.dtype).itemsize
               if hasattr(x, "shape") else 0 for x in jax.tree.leaves(tree))


def estimate_run_memory(run, hp, seeds) -> MemoryEstimate:
    """The memory of ``run`` with hyperparameters ``hp`` over ``seeds`` (a count or a sequence of seeds), from
    ``jax.eval_shape`` of its state, of one batch and of the residuals backpropagation keeps for it (traced, not
    compiled, nothing allocated)."""
    import jax

    from clloop_jax.run.sequential import task_at
    from clloop_jax.sources.base import bind_model_state
    S = seeds if isinstance(seeds, int) else len(list(seeds))
    if S < 1:
        raise ValueError(f"seeds must be a count >= 1 or a non-empty sequence of seeds, got {seeds!r}")
    src, tasks = run.source, run.source.tasks
    key = jax.ShapeDtypeStruct((), jax.random.key(0).dtype)
    state = jax.eval_shape(lambda k: run.init_on(tasks, k, hp), key)
    task = lambda: task_at(tasks, 0)  # noqa: E731
    batch = jax.eval_shape(lambda k, p: src.batch(k, p, task(), hp.source), key, state.params)
    residuals = jax.eval_shape(  # a batch-norm model's loss reads its running averages, as in the run's update
        lambda p, ms, b: jax.vjp(lambda q: bind_model_state(src, ms).loss(q, b, hp.source)[0], p)[1],
        state.params, state.model_state, batch)
    P = _nbytes(state.params)
    importance = 0
    if {run.strategy.importance} | {m.importance for m in run.monitors} != {None}:
        data = jax.eval_shape(lambda k, p: src.fisher_data(k, p, task(), hp.source), key, state.params)
        samples = jax.tree.leaves(data[0])[0].shape[0]
        importance = samples * P
    K, E = src.num_tasks, (1 if run.config.traces == "tasks" else run.config.episodes_per_task)
    n_state, n_batch, n_res = _nbytes(state), _nbytes(batch), _nbytes(residuals)
    parts = [
        (f"parameters with optimizer, strategy and monitor state ({S:,} seeds x {format_bytes(n_state)})",
         S * n_state, ()),
        ("the state's copy on the host for each checkpoint", S * n_state, ()),
        (f"one batch and what backpropagation keeps ({S:,} seeds x {format_bytes(n_batch + n_res)})",
         S * (n_batch + n_res + 3 * P), ()),
        (f"per-sample gradients of the importance ({S:,} seeds)", S * importance, ()),
        (f"evaluation on every task ({S:,} seeds x {K:,} tasks x one batch)", S * K * n_batch, ()),
        (f"per-episode traces of all tasks, in memory and as text ({S:,} seeds x {K:,} tasks x {E:,} episodes)",
         S * K * E * 16 * (3 * F32 + 25), ()),
        (f"performance matrices ({S:,} seeds x {K:,} x {K:,} tasks)", S * K * K * 40, ()),
        ("the tasks", _nbytes(tasks), ()),
    ]
    return MemoryEstimate(tuple(parts))
