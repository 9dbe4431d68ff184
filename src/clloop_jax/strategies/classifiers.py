"""Strategies whose classifier is not the network the run trains: iCaRL and GDumb, through the ``evaluate`` hook.

* :func:`icarl` (Rebuffi et al. 2017, "iCaRL: incremental classifier and representation learning", CVPR): a memory
  of exemplars per class chosen by herding (:func:`~clloop_jax.strategies.memories.herding_select`), the network
  trained with the paper's sigmoid loss (classification on the new classes, distillation on the old ones,
  :func:`icarl_loss`) on the current batch and exemplars, and classification by the nearest mean of exemplars
  (:func:`nearest_mean_logits`).
* :func:`gdumb` (Prabhu et al. 2020, "GDumb: a simple approach that questions our progress in continual learning",
  ECCV): a class-balanced greedy memory of the stream (:func:`~clloop_jax.strategies.memories.balanced_add`), and
  before every evaluation a model trained from scratch on that memory alone (:func:`gdumb_train`), which is what the
  run scores.

Both need a labelled source with an MLP (:class:`~clloop_jax.sources.supervised.SupervisedSource`); ``make_run``
refuses others through ``check_source``. Sizes (capacity, exemplars per update, GDumb's updates and batch size) are
static; the temperature and GDumb's learning rate are traced hyperparameters that sweeps can vmap.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from clloop_jax.sources.base import capability
from clloop_jax.strategies.base import Strategy, check_hparams, positive, register
from clloop_jax.strategies.memories import balanced_add, balanced_init, herding_select
from clloop_jax.strategies.rehearsal import Memory

__all__ = ["ICaRLHParams", "ICaRLState", "GDumbHParams", "normalized_features", "nearest_mean_logits", "icarl_loss",
           "icarl_reduce", "gdumb_train", "icarl", "gdumb", "CLASSIFIERS"]

PyTree = Any


def _check_size(name, value):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")


def _check_mlp_source(name: str, source):
    """The source must be a labelled stream (``SupervisedSource``) whose model is an MLP with a hidden layer."""
    from clloop_jax.model import MLP
    from clloop_jax.sources.supervised import SupervisedSource
    while not isinstance(source, SupervisedSource) and hasattr(source, "base"):  # a wrapped one (the task-free run's)
        source = source.base
    if not isinstance(source, SupervisedSource):
        raise ValueError(f"{name} needs a labelled source (SupervisedSource: integer class labels, class masks), got "
                         f"{type(source).__name__}")
    if not isinstance(source.model, MLP) or not source.model.hidden:
        raise ValueError(f"{name} reads its features from the last hidden layer of an MLP (clloop_jax.model.MLP with "
                         f"at least one hidden layer); got {source.model!r}")


# ----------------------------------------------------------------------------------------------------------------
# iCaRL
# ----------------------------------------------------------------------------------------------------------------


def normalized_features(params, x) -> jax.Array:
    """iCaRL's feature map ``phi(x) = f(x) / |f(x)|``: ``f`` the last hidden layer (after its ReLU) of a
    :class:`~clloop_jax.backbones.MLP` with parameters ``params`` on ``x [n, D]`` (what
    :func:`clloop_jax.plasticity.mlp_features` reads, computed from the parameters alone), each row L2-normalised (a
    zero row stays zero): ``[n, h]``."""
    layers = params["params"]
    h = jnp.asarray(x, jnp.float32)
    for i in range(sum(name.startswith("hidden_") for name in layers)):
        dense = layers[f"hidden_{i}"]
        h = jax.nn.relu(h @ dense["kernel"] + dense["bias"])
    norms = jnp.linalg.norm(h, axis=-1, keepdims=True)
    return h / jnp.where(norms > 0, norms, 1.0)


def nearest_mean_logits(phi, means, usable) -> jax.Array:
    """The nearest-mean-of-exemplars classifier (Rebuffi et al. 2017, Algorithm 1) as scores: ``-|phi_i - mu_c|^2``
    for the normalised features ``phi [n, h]`` and class means ``means [C, h]``, ``-inf`` for the classes that are
    not ``usable [C]`` (no exemplar). The argmax is ``argmin_c |phi(x) - mu_c|``; ties go to the lowest class."""
    d2 = jnp.sum(jnp.square(phi[:, None, :] - means[None, :, :]), axis=-1)
    return jnp.where(usable[None, :], -d2, -jnp.inf)


def icarl_loss(logits, teacher_logits, labels, classes, old, temperature=1.0) -> jax.Array:
    """iCaRL's representation-learning loss (Rebuffi et al. 2017, Algorithm 3), averaged over samples:

    ``sum_{y in classes} -[t_y log s(g_y / T') + (1 - t_y) log(1 - s(g_y / T'))]``, ``s`` the sigmoid, with target
    ``t_y = delta_{y = label}`` (classification) for the classes not ``old`` and ``t_y = s(q_y / T)`` (distillation of
    the previous network's output ``q``) for the ``old`` ones; ``T' = T`` on old classes, 1 on the others. The paper's
    loss is ``T = 1``. ``logits``, ``teacher_logits``: ``[n, C]``; ``labels [n]``; ``classes``, ``old``: ``bool [C]``.
    """
    t = jnp.asarray(temperature, logits.dtype)
    teacher = jax.lax.stop_gradient(teacher_logits)
    onehot = jax.nn.one_hot(labels, logits.shape[-1], dtype=logits.dtype)
    target = jnp.where(old[None, :], jax.nn.sigmoid(teacher / t), onehot)
    z = jnp.where(old[None, :], logits / t, logits)
    bce = jax.nn.softplus(z) - target * z           # -[t log s(z) + (1 - t) log(1 - s(z))]
    return jnp.mean(jnp.sum(jnp.where(classes[None, :], bce, 0.0), axis=-1))


def icarl_reduce(count, m) -> jax.Array:
    """iCaRL's ReduceExemplarSet: each class keeps the first ``m`` exemplars of its herding order (``count [C]`` the
    numbers kept so far; the slots stay in herding order, so the kept ones are slots ``0..min(count, m) - 1``)."""
    return jnp.minimum(count, m)


class ICaRLHParams(NamedTuple):
    """``temperature``: the distillation's temperature ``T`` (> 0; 1 is the paper's loss)."""

    temperature: Any = 1.0

    def check(self):
        positive("temperature", self.temperature)


class ICaRLState(NamedTuple):
    """The exemplars (``exemplars [C, P, D]``, class ``c``'s first ``count[c]`` slots valid, in herding order), the
    classes ``seen [C]`` so far, their means ``means [C, h]`` (normalised features of the exemplars, at the last
    task's end), the previous network (``teacher``) and the number of tasks consolidated."""

    exemplars: jax.Array
    count: jax.Array
    seen: jax.Array
    means: jax.Array
    teacher: PyTree
    tasks: jax.Array


@dataclasses.dataclass(frozen=True)
class _ICaRL:
    capacity: int
    batch_size: int

    def check_source(self, source):
        _check_mlp_source("icarl", source)

    def init(self, params, hp, example, source):
        (x, _), _ = example
        C = source.stream.num_classes
        slots = min(self.capacity, source.fisher_size)  # a class never has more candidates than a task's draw
        h = source.model.hidden[-1]
        return ICaRLState(jnp.zeros((C, slots) + tuple(x.shape), x.dtype), jnp.zeros((C,), jnp.int32),
                          jnp.zeros((C,), bool), jnp.zeros((C, h), jnp.float32), params, jnp.zeros((), jnp.int32))

    def consolidate(self, state, params, hp, importance=None, data=None):
        (x, _), y = data
        C, P = state.count.shape[0], state.exemplars.shape[1]
        present = jnp.any(jax.nn.one_hot(y, C, dtype=bool), axis=0)
        new = present & ~state.seen
        seen = state.seen | present
        m = self.capacity // jnp.maximum(jnp.sum(seen), 1)        # exemplars per class from now on
        phi = normalized_features(params, x)
        picks = jax.vmap(lambda c: herding_select(phi, P, valid=y == c) if P <= x.shape[0]
                         else jnp.zeros((P,), jnp.int32))(jnp.arange(C))
        available = jnp.sum(y[None, :] == jnp.arange(C)[:, None], axis=1)
        exemplars = jnp.where(new[:, None, None], x[picks].reshape(state.exemplars.shape), state.exemplars)
        count = jnp.where(new, jnp.minimum(jnp.minimum(m, available), P), icarl_reduce(state.count, m))
        means = _class_means(params, exemplars, count)
        return ICaRLState(exemplars, count, seen, means, params, state.tasks + 1)

    def replay_loss(self, state, params, samples, source, key, hp):
        (x, mask), y = samples
        C, P = state.exemplars.shape[:2]
        filled = (jnp.arange(P)[None, :] < state.count[:, None]).reshape(-1)
        any_filled = jnp.any(filled)
        idx = jax.random.categorical(key, jnp.where(filled | ~any_filled, 0.0, -jnp.inf), shape=(self.batch_size,))
        xe = state.exemplars.reshape((C * P,) + state.exemplars.shape[2:])[idx]
        ye = (idx // P).astype(y.dtype)
        inputs = jnp.concatenate([x, xe])
        labels = jnp.concatenate([y, ye])
        weight = jnp.concatenate([jnp.ones(y.shape), jnp.full(ye.shape, any_filled, jnp.float32)])
        classes = mask[0] | state.seen
        logits = source.model.apply(params, inputs)
        teacher = source.model.apply(state.teacher, inputs)
        per_sample = jax.vmap(lambda g, q, lab: icarl_loss(g[None], q[None], lab[None], classes, state.seen,
                                                           hp.temperature))(logits, teacher, labels)
        return jnp.sum(weight * per_sample) / jnp.sum(weight)   # the whole objective: it replaces the task loss

    def evaluate(self, state, params, source, key, hp):
        del key, hp
        usable = state.count > 0

        def score(k, task, source_hp):
            nmc = source.test_accuracy(
                k, lambda xs: nearest_mean_logits(normalized_features(params, xs), state.means, usable),
                task, mask=task.test_mask & usable)
            network = source.score(k, params, task, source_hp)
            return jnp.where(jnp.any(task.test_mask & usable), nmc, network)

        return score


def _class_means(params, exemplars, count):
    """``[C, h]``: each class's mean of its exemplars' normalised features, normalised again (0 without exemplars)."""
    C, P = count.shape[0], exemplars.shape[1]
    phi = normalized_features(params, exemplars.reshape((C * P,) + exemplars.shape[2:])).reshape(C, P, -1)
    valid = jnp.arange(P)[None, :] < count[:, None]
    mean = jnp.sum(jnp.where(valid[..., None], phi, 0.0), axis=1) / jnp.maximum(count, 1)[:, None]
    norms = jnp.linalg.norm(mean, axis=-1, keepdims=True)
    return mean / jnp.where(norms > 0, norms, 1.0)


def icarl(capacity: int = 2000, batch_size: int = 32, temperature=1.0) -> Strategy:
    """iCaRL (Rebuffi et al. 2017, "iCaRL: incremental classifier and representation learning", CVPR).

    * **Exemplars** (Algorithms 4 and 5): ``capacity`` samples in all, ``m = capacity // (classes seen)`` per class.
      At each task's end, every class already held keeps the first ``m`` of its exemplars (ReduceExemplarSet,
      :func:`icarl_reduce`), and every new class gets ``m`` exemplars chosen by herding
      (:func:`~clloop_jax.strategies.memories.herding_select`) on the normalised features, in herding order. The
      candidates are the task's consolidation draw (``source.fisher_size`` samples; ``fisher_size=None`` takes
      ``min(256, N)``, raise it to herd over more of the task), so a class has at most as many exemplars as it has
      samples there.
    * **Representation learning** (Algorithm 3): on the current batch plus ``batch_size`` exemplars drawn uniformly,
      the sigmoid binary cross-entropy of :func:`icarl_loss` over the classes of the current training mask and every
      class seen before: classification targets for the new classes, the previous network's sigmoid outputs for the
      old ones. It replaces the run's own cross-entropy on the batch (``replaces_task_loss``): the objective is
      iCaRL's loss alone.
    * **Classification** (Algorithm 1): the nearest mean of exemplars. At each task's end, the class means of the
      exemplars' normalised features are recomputed with the current network (and normalised); a test sample is
      assigned the class whose mean is nearest its normalised feature, among the classes of the task's test mask
      that hold exemplars (:func:`nearest_mean_logits`), through the strategy's ``evaluate`` hook. A task none of
      whose classes holds exemplars yet (the baseline, the tasks not learned) is scored by the network itself.

    The features are the last hidden layer (after its ReLU) of a :class:`~clloop_jax.backbones.MLP`; other models are
    refused by ``check_source``. The paper's data augmentation (flipped images for the means) is left out.

    Args:
      capacity: ``K``, the exemplars in all (static, >= 1).
      batch_size: exemplars drawn per update (static, >= 1).
      temperature: the distillation's temperature (> 0, traced; 1 is the paper's loss).
    """
    _check_size("capacity", capacity)
    _check_size("batch_size", batch_size)
    hp = ICaRLHParams(temperature)
    check_hparams(hp, "strategy")
    hooks = _ICaRL(capacity, batch_size)
    return Strategy("icarl", hp, init=hooks.init, consolidate=hooks.consolidate, replay_loss=hooks.replay_loss,
                    uses_data=True, init_with_example=True, check_source=hooks.check_source, evaluate=hooks.evaluate,
                    replaces_task_loss=True)


# ----------------------------------------------------------------------------------------------------------------
# GDumb
# ----------------------------------------------------------------------------------------------------------------


class GDumbHParams(NamedTuple):
    """``lr``: the learning rate of Adam for the model trained from scratch (> 0)."""

    lr: Any = 1e-3

    def check(self):
        positive("lr", self.lr)


def gdumb_train(source, memory: Memory, key, updates: int, batch_size: int, lr) -> PyTree:
    """GDumb's learner: a model trained from scratch on the memory alone.

    ``params = source.init_params(k_init)`` with ``k_init, k_draw = jax.random.split(key)``, then ``updates`` steps
    of Adam (``optax.adam(lr)``) on ``source.sample_loss`` of ``batch_size`` memory items, step ``t`` drawing slots
    ``jax.random.randint(keys[t], (batch_size,), 0, filled)`` with ``keys = jax.random.split(k_draw, updates)`` and
    ``filled = min(seen, capacity)``. The items are learned under the union of the stored training masks in
    class-incremental learning (every class in memory, ``source.rehearse``), under their own task's mask otherwise.
    An empty memory gives the untrained ``params``. ``memory`` comes from
    :func:`~clloop_jax.strategies.memories.balanced_init` over items ``((x, mask), y)``.
    """
    k_init, k_draw = jax.random.split(key)
    params = source.init_params(k_init)
    (((x, mask), y), _) = memory.items
    capacity = y.shape[0]
    filled = jnp.minimum(memory.seen, capacity)
    in_use = jnp.arange(capacity) < filled
    union = jnp.any(mask & in_use[:, None], axis=0)
    rehearse = capability(source, "rehearse")
    opt = optax.adam(lr)

    def step(carry, k):
        p, o = carry
        idx = jax.random.randint(k, (batch_size,), 0, jnp.maximum(filled, 1))
        inputs = (x[idx], mask[idx])
        if rehearse is not None:
            inputs = rehearse(inputs, ((x[idx][:1], union[None]), y[idx][:1]))
        grads = jax.grad(lambda q: source.sample_loss(q, inputs, y[idx]))(p)
        updates_, o = opt.update(grads, o, p)
        return (optax.apply_updates(p, updates_), o), None

    (trained, _), _ = jax.lax.scan(step, (params, opt.init(params)), jax.random.split(k_draw, updates))
    return jax.tree.map(lambda a, b: jnp.where(filled > 0, a, b), trained, params)


@dataclasses.dataclass(frozen=True)
class _GDumb:
    capacity: int
    updates: int
    batch_size: int

    def check_source(self, source):
        _check_mlp_source("gdumb", source)
        if source.model_state:
            raise ValueError("gdumb trains a fresh model on its memory and scores it; a batch-norm model's running "
                             "averages would be the run's, so use a model without batch norm")

    def init(self, params, hp, example, source):
        return balanced_init(example, self.capacity)

    def observe(self, memory, params, samples, source, key, hp):
        return balanced_add(memory, samples, samples[1], key)

    def evaluate(self, memory, params, source, key, hp):
        del params
        trained = gdumb_train(source, memory, key, self.updates, self.batch_size, hp.lr)
        return lambda k, task, source_hp: source.score(k, trained, task, source_hp)


def gdumb(capacity: int = 500, updates: int = 500, batch_size: int = 32, lr=1e-3) -> Strategy:
    """GDumb (Prabhu et al. 2020, "GDumb: a simple approach that questions our progress in continual learning", ECCV):
    a greedy class-balanced sampler and a learner trained from scratch on the memory alone.

    * **Sampler**: every update's batch is offered to a memory of ``capacity`` samples by GDumb's greedy rule
      (:func:`~clloop_jax.strategies.memories.balanced_add`: while there is room every sample is kept; then a sample
      of a class smaller than the largest replaces one of the largest class's).
    * **Learner**: before every evaluation (each row of ``R``, the baseline included), a model is initialised afresh
      (``source.init_params`` with a key of its own, derived from the evaluation key) and trained for ``updates``
      steps of Adam at the learning rate ``lr`` on ``batch_size`` samples drawn from the memory
      (:func:`gdumb_train`), inside the compiled program (one ``lax.scan``); every task of that evaluation is scored
      with that one model, under the usual test masks (the paper's masking at inference).

    The run still trains its own network on the stream (its traces are recorded as for any strategy), but GDumb's
    scores never read it: they depend on the memory alone. The paper's SGD with a cosine schedule and cutmix are
    replaced by plain Adam. Needs a labelled source with integer labels and a model without batch norm.

    Args:
      capacity: the memory's size in samples (static, >= 1).
      updates: Adam steps of each from-scratch training (static, >= 1).
      batch_size: memory samples per step (static, >= 1).
      lr: Adam's learning rate (> 0, traced).
    """
    _check_size("capacity", capacity)
    _check_size("updates", updates)
    _check_size("batch_size", batch_size)
    hp = GDumbHParams(lr)
    check_hparams(hp, "strategy")
    hooks = _GDumb(capacity, updates, batch_size)
    return Strategy("gdumb", hp, init=hooks.init, observe=hooks.observe, init_with_example=True,
                    check_source=hooks.check_source, evaluate=hooks.evaluate)


CLASSIFIERS = {"icarl": icarl, "gdumb": gdumb}

for _name, _factory in CLASSIFIERS.items():
    register(_name, _factory)
