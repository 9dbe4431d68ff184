"""Rehearsal strategies: experience replay, A-GEM, learning without forgetting (LwF), DER++ and ER-ACE (GEM, whose
memory is kept per task, is in :mod:`~clloop_jax.strategies.gem`).

They remember per-sample data (the task source's ``samples(batch)`` form: ``(inputs, targets)`` with a leading
sample axis), so the same strategies serve labelled streams (images with their labels and masks) and the closed loop
(episodes of observations and feedback with the expert's actions). The memory is a fixed-size pytree buffer:

* :class:`Memory` and :func:`reservoir_add`: Vitter's algorithm R over the stream of items (explicit key): after
  ``n`` items, each of them is in a buffer of capacity ``k`` with probability ``min(1, k / n)``;
* :func:`memory_sample`: ``m`` items drawn uniformly (with replacement) from the filled slots.

Strategies (the loss on memory is the source's own objective, ``source.sample_loss``):

* :func:`replay` (experience replay, e.g. Chaudhry et al. 2019, "On tiny episodic memories in continual learning"):
  a reservoir of the whole stream (or, with ``memory="balanced"``, GDumb's class-balanced memory of
  :mod:`~clloop_jax.strategies.memories`); every update adds ``alpha * loss(memory sample)`` to the task loss.
* :func:`agem` (Chaudhry et al. 2019, "Efficient lifelong learning with A-GEM"): a memory of earlier tasks' data
  (filled at each task's end); the update's gradient ``g`` is projected when it conflicts with the memory's gradient
  ``g_ref``: ``g - (g . g_ref / g_ref . g_ref) g_ref`` if ``g . g_ref < 0`` (:func:`agem_project`).
* :func:`lwf` (Li & Hoiem 2017): the model at the end of the previous task is a teacher; the current batch's outputs
  are pulled to the teacher's, ``alpha * distillation(student, teacher)`` (:func:`distillation_loss`: ``T^2`` times
  the KL divergence of temperature-``T`` softmaxes for logits, the squared error for continuous outputs).
* :func:`derpp` (Buzzega et al. 2020, "Dark experience for general continual learning"): a reservoir of samples with
  the model's outputs when they were seen; adds ``alpha * |f(x_m) - z_m|^2`` (mean over outputs) on one memory sample
  and ``beta * loss(x_m', y_m')`` on another.
* :func:`er_ace` (Caccia et al. 2022, "New insights on reducing abrupt representation change in online continual
  learning"): experience replay with the asymmetric cross-entropy: the incoming batch's loss only over the classes
  present in that batch, the memory batch's over every class seen so far (:func:`ace_mask`).

Memory sizes and replay batch sizes are static (part of the compiled program); ``alpha``, ``beta`` and the temperature
are traced hyperparameters that sweeps can vmap.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from clloop_jax.divergence import tree_sum
from clloop_jax.importance.fisher import Categorical
from clloop_jax.sources.base import capability, sample_outputs
from clloop_jax.strategies.base import NoHParams, Strategy, check_hparams, nonnegative, positive, register

__all__ = ["Memory", "memory_init", "reservoir_add", "memory_sample", "agem_project", "distillation_loss",
           "ace_mask", "memory_capacity", "rehearsed_inputs", "ReplayHParams", "DERHParams", "LwFHParams", "replay",
           "agem", "lwf", "derpp", "er_ace", "REHEARSAL"]

PyTree = Any


# ----------------------------------------------------------------------------------------------------------------
# The memory
# ----------------------------------------------------------------------------------------------------------------


class Memory(NamedTuple):
    """A fixed-size buffer: ``items`` (leaves ``[capacity, ...]``) and ``seen``, the number of stream items offered."""

    items: PyTree
    seen: jax.Array


def memory_init(example, capacity: int) -> Memory:
    """An empty memory for items shaped like one ``example`` (a pytree of per-item arrays)."""
    if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1:
        raise ValueError(f"capacity must be an integer >= 1, got {capacity!r}")
    items = jax.tree.map(lambda x: jnp.zeros((capacity,) + jnp.shape(x), jnp.result_type(x)), example)
    return Memory(items, jnp.zeros((), jnp.int32))


def memory_capacity(memory: Memory) -> int:
    return jax.tree.leaves(memory.items)[0].shape[0]


def reservoir_add(memory: Memory, items: PyTree, key) -> Memory:
    """Offers ``items`` (leading axis: items, in stream order) to the memory by algorithm R (Vitter 1985): the
    ``t``-th item of the stream (``t = 0, 1, ...``) takes slot ``t`` while the memory has room, then replaces the slot
    ``j ~ U{0..t}`` when ``j < capacity`` and is dropped otherwise."""
    capacity = memory_capacity(memory)
    n = jax.tree.leaves(items)[0].shape[0]
    draws = jax.random.randint(key, (n,), 0, jnp.iinfo(jnp.int32).max)

    def offer(stored, i):
        t = memory.seen + i
        j = draws[i] % (t + 1)
        slot = jnp.where(t < capacity, t, j)
        keep = slot < capacity
        item = jax.tree.map(lambda x: x[i], items)
        stored = jax.tree.map(lambda s, x: s.at[jnp.minimum(slot, capacity - 1)].set(
            jnp.where(keep, x, s[jnp.minimum(slot, capacity - 1)])), stored, item)
        return stored, None

    stored, _ = jax.lax.scan(offer, memory.items, jnp.arange(n))
    return Memory(stored, memory.seen + n)


def memory_sample(memory: Memory, key, n: int) -> PyTree:
    """``n`` items drawn uniformly, with replacement, from the filled slots (slot 0 while the memory is empty)."""
    filled = jnp.maximum(jnp.minimum(memory.seen, memory_capacity(memory)), 1)
    idx = jax.random.randint(key, (n,), 0, filled)
    return jax.tree.map(lambda x: x[idx], memory.items)


def _is_filled(memory: Memory) -> jax.Array:
    return memory.seen > 0


# ----------------------------------------------------------------------------------------------------------------
# Gradient projection and distillation
# ----------------------------------------------------------------------------------------------------------------


def agem_project(grads: PyTree, ref_grads: PyTree) -> PyTree:
    """A-GEM's projection: ``g`` when ``g . g_ref >= 0``, else ``g - (g . g_ref / g_ref . g_ref) g_ref``, so that the
    result never increases the memory's loss to first order (its inner product with ``g_ref`` is 0)."""
    dot = tree_sum(jax.tree.map(lambda g, r: g * r, grads, ref_grads))
    norm = tree_sum(jax.tree.map(jnp.square, ref_grads))
    scale = jnp.where((dot < 0) & (norm > 0), dot / jnp.where(norm > 0, norm, 1.0), 0.0)
    return jax.tree.map(lambda g, r: g - (scale * r).astype(g.dtype), grads, ref_grads)


def distillation_loss(student, teacher, temperature=2.0, categorical: bool = True) -> jax.Array:
    """The distillation loss of ``student`` outputs towards ``teacher`` outputs (``[..., C]``), averaged over samples.

    Categorical (logits): ``T^2 * KL(softmax(teacher / T) || softmax(student / T))`` summed over classes, the ``T^2``
    keeping its gradient's scale independent of ``T`` (Hinton et al. 2015); classes the teacher gives probability 0
    (masked-out logits) contribute nothing. Continuous outputs: the squared error summed over the last axis. Zero
    exactly when the student equals the teacher.
    """
    teacher = jax.lax.stop_gradient(teacher)
    if not categorical:
        return jnp.mean(jnp.sum(jnp.square(student - teacher), axis=-1))
    log_p = jax.nn.log_softmax(teacher / temperature, axis=-1)
    log_q = jax.nn.log_softmax(student / temperature, axis=-1)
    p = jnp.exp(log_p)
    kl = jnp.sum(jnp.where(p > 0, p * (log_p - log_q), 0.0), axis=-1)
    return temperature ** 2 * jnp.mean(kl)


def ace_mask(masks, labels) -> jax.Array:
    """ER-ACE's mask of the incoming batch (Caccia et al. 2022): each sample's training mask ``masks [n, C]`` kept only
    on the classes present among the batch's ``labels [n]``, so the incoming samples' softmax runs over the classes
    of this batch alone (``C_curr`` in the paper's asymmetric cross-entropy), never pushing down the logits of the
    classes that only the memory holds."""
    masks, labels = jnp.asarray(masks, bool), jnp.asarray(labels)
    if masks.ndim != 2 or labels.shape != masks.shape[:1]:
        raise ValueError(f"ace_mask takes masks [n, C] and labels [n], got shapes {masks.shape} and {labels.shape}")
    present = jnp.any(jax.nn.one_hot(labels, masks.shape[1], dtype=bool), axis=0)
    return masks & present[None, :]


def rehearsed_inputs(source, memory_inputs, current_samples):
    """Remembered inputs as the source trains them now (``source.rehearse``; unchanged when it has none): a labelled
    stream puts them under the current training mask, so in class-incremental learning remembered classes compete with
    the new ones, as they do in joint training."""
    rehearse = capability(source, "rehearse")
    return memory_inputs if rehearse is None else rehearse(memory_inputs, current_samples)


# ----------------------------------------------------------------------------------------------------------------
# Strategies
# ----------------------------------------------------------------------------------------------------------------


class ReplayHParams(NamedTuple):
    """``alpha``: the weight of the loss on memory samples (>= 0)."""

    alpha: Any = 1.0

    def check(self):
        nonnegative("alpha", self.alpha)


class DERHParams(NamedTuple):
    """``alpha``: the weight of the logit (output) matching; ``beta``: the weight of the label loss on memory."""

    alpha: Any = 0.5
    beta: Any = 0.5

    def check(self):
        nonnegative("alpha", self.alpha)
        nonnegative("beta", self.beta)


class LwFHParams(NamedTuple):
    """``alpha``: the weight of the distillation; ``temperature``: the softmax temperature (> 0)."""

    alpha: Any = 1.0
    temperature: Any = 2.0

    def check(self):
        nonnegative("alpha", self.alpha)
        positive("temperature", self.temperature)


def _check_masked_labels(example, source):
    """ER-ACE masks classes: it needs per-sample inputs ``(x, mask)`` with a boolean class mask and one integer label
    per sample (a labelled source such as :class:`~clloop_jax.sources.supervised.SupervisedSource`)."""
    inputs, target = example
    ok = (isinstance(inputs, tuple) and len(inputs) == 2 and jnp.ndim(inputs[1]) == 1
          and jnp.result_type(inputs[1]) == jnp.bool_ and jnp.shape(target) == ()
          and jnp.issubdtype(jnp.result_type(target), jnp.integer) and hasattr(source, "sample_loss"))
    if not ok:
        raise ValueError(f"er_ace needs a labelled source whose per-sample items are ((x, class mask [C] bool), integer "
                         f"label), such as SupervisedSource; {type(source).__name__} gives {example!r}")


def _ace_incoming(source, params, samples):
    """``L_ce(X_in; C_in)``: the incoming batch's cross-entropy under :func:`ace_mask`. ER-ACE replaces the run's
    task loss with it (``replaces_task_loss``), so the batch is passed forward and backward once."""
    (x, mask), y = samples
    return source.sample_loss(params, (x, ace_mask(mask, y)), y)


def _check_size(name, value):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")


@dataclasses.dataclass(frozen=True)
class _Rehearsal:
    """The hooks of the memory-based strategies; ``kind`` is ``replay``, ``agem``, ``derpp`` or ``er_ace``."""

    kind: str
    capacity: int
    batch_size: int
    memory: str = "reservoir"  # or "balanced" (replay, er_ace): GDumb's class-balanced memory over the targets

    def init(self, params, hp, example, source):
        if self.kind == "er_ace":
            _check_masked_labels(example, source)
        if self.kind == "derpp":
            outputs = jax.eval_shape(source.predict, params, example[0])
            example = (example, outputs)
        if self.memory == "balanced":
            from clloop_jax.strategies.memories import balanced_init  # it builds on this module's Memory
            target = example[1]
            if jnp.shape(target) != () or not jnp.issubdtype(jnp.result_type(target), jnp.integer):
                raise ValueError(f"memory='balanced' needs one integer class label per sample as the target, got "
                                 f"{jnp.result_type(target)}{jnp.shape(target)}")
            return balanced_init(example, self.capacity)
        return memory_init(example, self.capacity)

    def observe(self, memory, params, samples, source, key, hp):
        if self.kind == "derpp":
            samples = (samples, jax.lax.stop_gradient(sample_outputs(source, params, samples[0])))
        if self.memory == "balanced":
            from clloop_jax.strategies.memories import balanced_add
            return balanced_add(memory, samples, samples[1], key)
        return reservoir_add(memory, samples, key)

    def consolidate(self, memory, params, hp, importance=None, data=None):
        key = jax.random.fold_in(jax.random.key(0x5eed), memory.seen)  # the memory's own stream of draws
        return reservoir_add(memory, data, key)

    def replay_loss(self, memory, params, samples, source, key, hp):
        k1, k2 = jax.random.split(key)
        if self.kind in ("replay", "er_ace"):
            drawn = memory_sample(memory, k1, self.batch_size)
            x, y = drawn[0] if self.memory == "balanced" else drawn  # a balanced memory's items carry the labels
            loss = hp.alpha * source.sample_loss(params, rehearsed_inputs(source, x, samples), y)
            if self.kind == "er_ace":
                return _ace_incoming(source, params, samples) + jnp.where(_is_filled(memory), loss, 0.0)
        else:  # derpp: outputs matching (as they were seen) on one memory sample, the label loss on another
            (x, _), z = memory_sample(memory, k1, self.batch_size)
            logit_loss = jnp.mean(jnp.square(sample_outputs(source, params, x) - z))
            x2, y2 = memory_sample(memory, k2, self.batch_size)[0]
            loss = hp.alpha * logit_loss + hp.beta * source.sample_loss(params, rehearsed_inputs(source, x2, samples), y2)
        return jnp.where(_is_filled(memory), loss, 0.0)

    def project(self, memory, params, grads, samples, source, key, hp):
        x, y = memory_sample(memory, key, self.batch_size)
        x = rehearsed_inputs(source, x, samples)
        ref = jax.grad(lambda p: source.sample_loss(p, x, y))(params)
        projected = agem_project(grads, ref)
        return jax.tree.map(lambda a, b: jnp.where(_is_filled(memory), a, b), projected, grads)


def replay(capacity: int = 500, batch_size: int = 32, alpha=1.0, memory: str = "reservoir") -> Strategy:
    """Experience replay with a memory of ``capacity`` samples of the stream; ``batch_size`` memory samples per
    update, their loss weighted by ``alpha``. ``memory``: ``"reservoir"`` (a uniform sample of the stream) or
    ``"balanced"`` (GDumb's class-balanced memory over the targets, which must be integer class labels; see
    :func:`~clloop_jax.strategies.memories.balanced_add`)."""
    return _replay_like("replay", capacity, batch_size, alpha, memory)


def _replay_like(name: str, capacity, batch_size, alpha, memory: str) -> Strategy:
    """Replay and ER-ACE: one memory (reservoir or class-balanced) replayed with weight ``alpha``; the name selects
    the loss on the incoming batch (:class:`_Rehearsal`)."""
    _check_size("capacity", capacity)
    _check_size("batch_size", batch_size)
    if memory not in ("reservoir", "balanced"):
        raise ValueError(f"memory must be 'reservoir' or 'balanced', got {memory!r}")
    hooks = _Rehearsal(name, capacity, batch_size, memory)
    hp = ReplayHParams(alpha)
    check_hparams(hp, "strategy")
    return Strategy(name, hp, init=hooks.init, observe=hooks.observe, replay_loss=hooks.replay_loss,
                    init_with_example=True, replaces_task_loss=name == "er_ace")


def agem(capacity: int = 500, batch_size: int = 64) -> Strategy:
    """A-GEM with a memory of ``capacity`` samples of the earlier tasks (a reservoir over each task's data, added at
    the task's end) and a reference gradient from ``batch_size`` of them per update."""
    _check_size("capacity", capacity)
    _check_size("batch_size", batch_size)
    hooks = _Rehearsal("agem", capacity, batch_size)
    return Strategy("agem", NoHParams(), init=hooks.init, consolidate=hooks.consolidate, project=hooks.project,
                    uses_data=True, init_with_example=True)


def derpp(capacity: int = 500, batch_size: int = 32, alpha=0.5, beta=0.5) -> Strategy:
    """DER++: a reservoir of samples with the outputs the model gave them; output matching (``alpha``) and the label
    loss (``beta``) on memory samples."""
    _check_size("capacity", capacity)
    _check_size("batch_size", batch_size)
    hooks = _Rehearsal("derpp", capacity, batch_size)
    hp = DERHParams(alpha, beta)
    check_hparams(hp, "strategy")
    return Strategy("derpp", hp, init=hooks.init, observe=hooks.observe, replay_loss=hooks.replay_loss,
                    init_with_example=True)


def er_ace(capacity: int = 500, batch_size: int = 32, alpha=1.0, memory: str = "reservoir") -> Strategy:
    """ER-ACE: experience replay with the asymmetric cross-entropy (Caccia et al. 2022, "New insights on reducing
    abrupt representation change in online continual learning", ICLR, section 4):

    ``L_ace = L_ce(f(X_in); C_in) + alpha * L_ce(f(X_mem); C_seen)``,

    the incoming batch's cross-entropy with the logits of the classes *not present in the batch* masked out
    (:func:`ace_mask`: ``C_in``, the classes among the batch's labels, within the training mask), the memory batch's
    the ordinary cross-entropy over the training mask of the current task (in class-incremental learning, every class
    seen so far, as :func:`replay` trains it). The mask is that of the authors' implementation, the classes seen in
    the incoming batch; the paper's text speaks of the current task's classes, which the batch does not carry, and the
    two agree whenever a batch holds every class of its task (almost always with split tasks of a few classes and
    batches of tens of samples). The paper weights both terms equally (``alpha = 1``).

    This strategy's ``replay_loss`` is ``L_ace`` itself and replaces the run's task loss (``replaces_task_loss``: the
    source's cross-entropy over the training mask is not differentiated), so an update costs replay's arithmetic.
    It needs a labelled source whose per-sample inputs carry the class mask (``SupervisedSource``).

    Args:
      capacity: the memory's size in samples (a reservoir of the stream, as replay's).
      batch_size: memory samples per update.
      alpha: the weight of the memory term (>= 0, traced).
      memory: ``"reservoir"`` or ``"balanced"`` (GDumb's class-balanced memory), as for :func:`replay`.
    """
    return _replay_like("er_ace", capacity, batch_size, alpha, memory)


class LwFState(NamedTuple):
    """The teacher (the parameters at the end of the last task) and the number of tasks consolidated."""

    teacher: PyTree
    count: jax.Array


def _lwf_init(params, hp):
    return LwFState(params, jnp.zeros((), jnp.int32))


def _lwf_consolidate(state, params, hp, importance=None, data=None):
    return LwFState(params, state.count + 1)


@dataclasses.dataclass(frozen=True)
class _LwF:
    def replay_loss(self, state, params, samples, source, key, hp):
        inputs = samples[0]
        categorical = isinstance(source.likelihood, Categorical)
        student = sample_outputs(source, params, inputs)
        teacher = sample_outputs(source, state.teacher, inputs)
        loss = hp.alpha * distillation_loss(student, teacher, hp.temperature, categorical=categorical)
        return jnp.where(state.count > 0, loss, 0.0)


def lwf(alpha=1.0, temperature=2.0) -> Strategy:
    """Learning without forgetting: the current batch's outputs distilled towards those of the model at the end of
    the previous task (weight ``alpha``, temperature ``temperature``)."""
    hp = LwFHParams(alpha, temperature)
    check_hparams(hp, "strategy")
    return Strategy("lwf", hp, init=_lwf_init, consolidate=_lwf_consolidate, replay_loss=_LwF().replay_loss)


REHEARSAL = {"replay": replay, "agem": agem, "lwf": lwf, "derpp": derpp, "er_ace": er_ace}

for _name, _factory in REHEARSAL.items():
    register(_name, _factory)
