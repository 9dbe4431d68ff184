"""Continual-learning task streams over labelled data, and the masked losses of their scenarios.

See :mod:`clloop_jax.data.loaders` for the scenarios' table of heads, labels and masks.
"""

from __future__ import annotations

from typing import Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from clloop_jax.data.loaders import check_xy, numpy_rng, train_test_split
from clloop_jax.validation import check_bool, check_choice, check_float, check_int

__all__ = ["SCENARIOS", "MASK_VALUE", "TaskStream", "permuted_stream", "split_stream", "masked_logits",
           "masked_cross_entropy", "accuracy", "PIXEL_VALUES", "pixel_values"]


SCENARIOS = ("task", "domain", "class")

#: What a pixel byte ``v`` reads as: ``v / 255`` computed in float64 and rounded to float32, the values
#: :func:`~clloop_jax.data.loaders.load_mnist` gives. A lookup, not a division in the program: XLA divides by a
#: constant as a multiplication by its reciprocal, one unit in the last place away for half the bytes.
PIXEL_VALUES = (np.arange(256, dtype=np.float64) / 255.0).astype(np.float32)


def pixel_values(x: jax.Array) -> jax.Array:
    """``x`` as model inputs: uint8 pixel bytes read as float32 in ``[0, 1]`` (:data:`PIXEL_VALUES`), anything else
    unchanged. A stream of uint8 images holds a quarter of float32's memory; this turns the rows a source draws into
    exactly the floats a float32 stream of the same images (scaled by ``/ 255``) would hold."""
    if x.dtype != jnp.uint8:
        return x
    return jnp.asarray(PIXEL_VALUES)[x.astype(jnp.int32)]


#: The logit given to masked-out classes: finite (no ``inf - inf`` nans), and ``exp(MASK_VALUE - max)`` is
#: exactly 0 in float32 and float64, so masked classes get zero probability.
MASK_VALUE = -1e9


@struct.dataclass
class TaskStream:
    """A sequence of labelled tasks. Every array has a leading task axis ``T``, so ``jax.tree.map(lambda a: a[i],
    stream)`` (or :meth:`task`) selects task ``i``, also with a traced ``i``.

    Attributes:
      x: ``[T, N, D]`` float32 training inputs of each task, or uint8 pixel values (0..255, kept as bytes when the
        stream is built from uint8 images; a labelled source reads them with :func:`pixel_values`).
      y: ``[T, N]`` int32 training labels, in the scenario's head (``0 <= y < num_classes``).
      x_test: ``[T, M, D]`` test inputs, of ``x``'s dtype.
      y_test: ``[T, M]`` int32 test labels.
      task_ids: ``[T]`` int32, ``0..T-1``.
      mask: ``[T, num_classes]`` bool: the head outputs that belong to each task.
      train_mask: ``[T, num_classes]`` bool: the outputs active when training on each task.
      test_mask: ``[T, num_classes]`` bool: the outputs active when evaluating each task.
      classes: ``[T, K]`` int32: the original dataset classes in each task.
      permutations: ``[T, D]`` int32: the input permutation of each task (``x[t] = x_orig[:, permutations[t]]``);
        the identity for split streams.
      num_classes: size of the output head (static).
      scenario: ``"task"``, ``"domain"`` or ``"class"`` (static).
      kind: ``"permuted"`` or ``"split"`` (static).
    """

    x: jax.Array
    y: jax.Array
    x_test: jax.Array
    y_test: jax.Array
    task_ids: jax.Array
    mask: jax.Array
    train_mask: jax.Array
    test_mask: jax.Array
    classes: jax.Array
    permutations: jax.Array
    num_classes: int = struct.field(pytree_node=False)
    scenario: str = struct.field(pytree_node=False)
    kind: str = struct.field(pytree_node=False)

    @property
    def num_tasks(self) -> int:
        return int(self.task_ids.shape[0])

    @property
    def input_dim(self) -> int:
        return int(self.x.shape[-1])

    def task(self, i) -> "TaskStream":
        """Task ``i`` alone (every leaf indexed on its task axis; ``i`` may be traced)."""
        return jax.tree.map(lambda a: a[i], self)


def _train_test(x, y, x_test, y_test, seed, test_fraction):
    x, y = check_xy(x, y)
    check_float("test_fraction", test_fraction, min=0, max=1, open_min=True, open_max=True, scalar=True)
    if (x_test is None) != (y_test is None):
        raise ValueError("x_test and y_test must be given together (or both left out for a seeded split)")
    if x_test is None:
        return train_test_split(x, y, test_fraction=test_fraction, seed=seed)
    x_test, y_test = check_xy(x_test, y_test, "x_test", "y_test")
    if x_test.shape[1] != x.shape[1]:
        raise ValueError(f"x_test must have D={x.shape[1]} features like x (shape {x.shape}), "
                         f"got shape {x_test.shape}")
    if (x.dtype == np.uint8) != (x_test.dtype == np.uint8):
        raise ValueError(f"x_test must be pixel bytes (uint8) exactly when x is, got x {x.dtype} and x_test "
                         f"{x_test.dtype}")
    return x, y, x_test, y_test


def _check_scenario(scenario: str) -> None:
    check_choice("scenario", scenario, SCENARIOS)


def _masks(scenario: str, mask: np.ndarray):
    """``(train_mask, test_mask)`` from each task's own outputs ``mask [T, C]``."""
    if scenario in ("task", "domain"):
        return mask, mask
    seen = np.logical_or.accumulate(mask, axis=0)  # class-incremental: classes of tasks 0..t
    return seen, np.ones_like(mask)


def _stream(**fields) -> TaskStream:
    arrays = {k: jnp.asarray(v) for k, v in fields.items() if k not in ("num_classes", "scenario", "kind")}
    return TaskStream(**arrays, num_classes=int(fields["num_classes"]), scenario=fields["scenario"],
                      kind=fields["kind"])


def permuted_stream(x, y, num_tasks: int, seed=0, *, x_test=None, y_test=None, scenario: str = "domain",
                    first_identity: bool = False, test_fraction: float = 0.2) -> TaskStream:
    """Permuted-input tasks: task ``t`` holds every sample with its features reordered by ``permutations[t]``.

    Args:
      x, y: training inputs ``[N, D]`` and integer labels ``[N]`` (classes ``0..C-1``).
      num_tasks: ``T``, the number of tasks.
      seed: integer seed or JAX key; fixes the permutations (and the train/test split when one is drawn).
      x_test, y_test: the dataset's own test split; when both are None, a seeded stratified split of ``x, y``
        with ``test_fraction`` of each class is used.
      scenario: ``"domain"`` (default: one head over the ``C`` original classes), ``"task"`` or ``"class"``
        (a head of ``T*C`` outputs, one block per task; see the module docstring).
      first_identity: when True task 0 keeps the original feature order; by default every task, task 0
        included, has a random permutation, as in the literature.

    Returns:
      a :class:`TaskStream` with ``kind="permuted"``.
    """
    _check_scenario(scenario)
    num_tasks = check_int("num_tasks", num_tasks, min=1)
    first_identity = check_bool("first_identity", first_identity)
    rng = numpy_rng(seed)
    split_seed = int(rng.integers(2 ** 31 - 1))
    x, y, x_test, y_test = _train_test(x, y, x_test, y_test, split_seed, test_fraction)
    D = x.shape[1]
    C = int(max(y.max(), y_test.max())) + 1
    perms = np.stack([rng.permutation(D) for _ in range(num_tasks)]).astype(np.int32)
    if first_identity:
        perms[0] = np.arange(D, dtype=np.int32)
    T = int(num_tasks)
    xs, xs_test = np.empty((T,) + x.shape, x.dtype), np.empty((T,) + x_test.shape, x_test.dtype)
    for t, p in enumerate(perms):   # filled in place: a stream of hundreds of tasks is built without a second copy
        xs[t], xs_test[t] = x[:, p], x_test[:, p]
    if scenario == "domain":
        offsets = np.zeros(T, np.int32)
        num_classes = C
        mask = np.ones((T, C), bool)
    else:
        offsets = (np.arange(T) * C).astype(np.int32)
        num_classes = T * C
        mask = np.zeros((T, T * C), bool)
        for t in range(T):
            mask[t, t * C:(t + 1) * C] = True
    train_mask, test_mask = _masks(scenario, mask)
    return _stream(
        x=xs, y=(y[None, :] + offsets[:, None]).astype(np.int32),
        x_test=xs_test, y_test=(y_test[None, :] + offsets[:, None]).astype(np.int32),
        task_ids=np.arange(T, dtype=np.int32), mask=mask, train_mask=train_mask, test_mask=test_mask,
        classes=np.tile(np.arange(C, dtype=np.int32), (T, 1)), permutations=perms,
        num_classes=num_classes, scenario=scenario, kind="permuted")


def split_stream(x, y, classes_per_task: int = 2, seed=0, *, class_order: Union[None, str, Sequence[int]] = None,
                 x_test=None, y_test=None, scenario: str = "task", test_fraction: float = 0.2) -> TaskStream:
    """Split tasks: the classes, in ``class_order``, are cut into consecutive groups of ``classes_per_task``.

    Args:
      x, y: training inputs ``[N, D]`` and integer labels ``[N]`` (classes ``0..C-1``).
      classes_per_task: ``k``; must divide the number of classes ``C``. ``T = C / k`` tasks.
      seed: integer seed or JAX key; fixes which samples are kept when tasks are cut to equal size, the sample
        order within each task, the ``"shuffle"`` class order and the train/test split when one is drawn.
      class_order: None for ``0..C-1`` (tasks ``{0, 1}, {2, 3}, ...``), ``"shuffle"`` for a seeded random order,
        or an explicit permutation of ``0..C-1``.
      x_test, y_test: the dataset's own test split; when both are None, a seeded stratified split is used.
      scenario: ``"task"`` (default), ``"domain"`` or ``"class"``; see the module docstring for the label maps.

    Every task is cut to the size of the smallest task (train and test separately), after a seeded shuffle.

    Returns:
      a :class:`TaskStream` with ``kind="split"`` and identity ``permutations``.
    """
    _check_scenario(scenario)
    classes_per_task = check_int("classes_per_task", classes_per_task, min=1)
    rng = numpy_rng(seed)
    split_seed = int(rng.integers(2 ** 31 - 1))
    x, y, x_test, y_test = _train_test(x, y, x_test, y_test, split_seed, test_fraction)
    C = int(max(y.max(), y_test.max())) + 1
    if C % classes_per_task != 0:
        raise ValueError(f"classes_per_task={classes_per_task} must divide the number of classes C={C}")
    if class_order is None:
        order = np.arange(C)
    elif isinstance(class_order, str):
        if class_order != "shuffle":
            raise ValueError(f"class_order must be None, 'shuffle' or a permutation of 0..{C - 1}, "
                             f"got {class_order!r}")
        order = rng.permutation(C)
    else:
        order = np.asarray(class_order)
        if order.shape != (C,) or not np.array_equal(np.sort(order), np.arange(C)):
            raise ValueError(f"class_order must be a permutation of 0..{C - 1} (shape ({C},)), got {class_order!r}")
    order = order.astype(np.int32)
    k = int(classes_per_task)
    T = C // k
    groups = order.reshape(T, k)
    position = np.empty(C, np.int32)
    position[order] = np.arange(C, dtype=np.int32)  # class -> its index in the class order

    def per_task(xa, ya, what):
        idx = [rng.permutation(np.flatnonzero(np.isin(ya, g))) for g in groups]
        n = min(i.size for i in idx)
        if n == 0:
            empty = [t for t, i in enumerate(idx) if i.size == 0]
            raise ValueError(f"{what} has no sample of the classes of task(s) {empty} "
                             f"(classes {groups[empty].tolist()})")
        idx = np.stack([i[:n] for i in idx])
        return xa[idx], ya[idx]

    xs, ys = per_task(x, y, "y")
    xs_test, ys_test = per_task(x_test, y_test, "y_test")
    if scenario == "domain":
        label = lambda v: position[v] % k  # noqa: E731
        num_classes = k
        mask = np.ones((T, k), bool)
    else:
        label = lambda v: position[v]  # noqa: E731
        num_classes = C
        mask = np.zeros((T, C), bool)
        for t in range(T):
            mask[t, t * k:(t + 1) * k] = True
    train_mask, test_mask = _masks(scenario, mask)
    D = x.shape[1]
    return _stream(
        x=xs, y=label(ys).astype(np.int32), x_test=xs_test, y_test=label(ys_test).astype(np.int32),
        task_ids=np.arange(T, dtype=np.int32), mask=mask, train_mask=train_mask, test_mask=test_mask,
        classes=groups, permutations=np.tile(np.arange(D, dtype=np.int32), (T, 1)),
        num_classes=num_classes, scenario=scenario, kind="split")


def _check_mask(logits, mask):
    if mask.shape[-1] != logits.shape[-1]:
        raise ValueError(f"mask must have the logits' class axis {logits.shape[-1]} last (logits shape "
                         f"{logits.shape}), got mask shape {mask.shape}")


def masked_logits(logits, mask):
    """Logits with masked-out classes (``mask`` False) set to :data:`MASK_VALUE`, so their softmax probability is
    exactly 0. ``mask [..., C]`` broadcasts against ``logits [..., C]``; ``mask=None`` returns the logits."""
    logits = jnp.asarray(logits)
    if mask is None:
        return logits
    mask = jnp.asarray(mask, dtype=bool)
    _check_mask(logits, mask)
    return jnp.where(mask, logits, jnp.asarray(MASK_VALUE, logits.dtype))


def _check_labels(logits, y):
    logits, y = jnp.asarray(logits), jnp.asarray(y)
    if y.shape != logits.shape[:-1]:
        raise ValueError(f"y must have shape {logits.shape[:-1]} (the logits' shape without the class axis), "
                         f"got {y.shape}")
    return logits, y


def masked_cross_entropy(logits, y, mask=None):
    """Mean softmax cross-entropy of integer labels ``y [...]`` under ``masked_logits(logits [..., C], mask)``."""
    logits, y = _check_labels(logits, y)
    logp = jax.nn.log_softmax(masked_logits(logits, mask), axis=-1)
    return -jnp.mean(jnp.take_along_axis(logp, y[..., None].astype(jnp.int32), axis=-1)[..., 0])


def accuracy(logits, y, mask=None):
    """Fraction of samples whose highest unmasked logit is the label ``y``; ``logits [..., C]``, ``y [...]``."""
    logits, y = _check_labels(logits, y)
    pred = jnp.argmax(masked_logits(logits, mask), axis=-1)
    return jnp.mean((pred == y).astype(jnp.float32))
