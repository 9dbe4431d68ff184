"""Checks of integers, seeds, real numbers, booleans, arrays and trees of numbers."""

from __future__ import annotations

import math
import numbers
import operator
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from clloop_jax.validation.describe import (FLOAT32_MAX, fail_type, fail_value, is_key_dtype, is_traced, join_text,
                                            range_text)

__all__ = ["check_int", "check_float", "check_bool", "check_array", "check_number_tree", "check_seed"]


def int_value(value) -> Optional[int]:
    """``value`` as a Python int when it is an integer (not a bool), else None; tracers raise TypeError."""
    if isinstance(value, (bool, np.bool_)):
        return None
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, (np.ndarray, jax.Array)) and value.ndim == 0 and not is_traced(value):
        if not is_key_dtype(value.dtype) and np.issubdtype(value.dtype, np.integer):
            return int(operator.index(value))
    return None


def check_int(name: str, value, *, min: Optional[int] = None, max: Optional[int] = None,
              allow_none: bool = False) -> Optional[int]:
    """An integer in ``[min, max]`` (either bound optional), returned as a Python ``int`` (or None if allowed).

    Accepts Python and NumPy integers and concrete 0-d integer arrays; refuses ``bool``, floats (also ``2.0``),
    strings and traced values (a count must be known before tracing).
    """
    lo, hi = min, max
    expected = join_text("an integer", range_text(lo, hi, False, False)) + (" or None" if allow_none else "")
    if value is None:
        if allow_none:
            return None
        fail_type(name, expected, value)
    if is_traced(value):
        fail_type(name, expected, value, "a count or size must be a concrete Python integer, known before "
                                         "jit/vmap traces the program")
    number = int_value(value)
    if number is None:
        hint = None
        if isinstance(value, (float, np.floating)) and math.isfinite(value) and float(value).is_integer():
            hint = f"pass {int(value)}"
        elif isinstance(value, str):
            hint = "pass a number, not a string"
        fail_type(name, expected, value, hint)
    if (lo is not None and number < lo) or (hi is not None and number > hi):
        fail_value(name, expected, value)
    return number


def check_seed(name: str, seed) -> int:
    """A seed for ``jax.random.key``: an integer in ``[0, 2**32)``, or ``[0, 2**63)`` with ``jax_enable_x64``.

    ``jax.random.key`` keeps only the low 32 bits of a seed when 64-bit mode is off (so ``2**32 + 5`` would give
    the key of ``5``) and cannot convert seeds of ``2**63`` or more at all; negative seeds wrap around.
    """
    x64 = bool(jax.config.jax_enable_x64)
    bits = 63 if x64 else 32
    expected = f"an integer in [0, 2**{bits}) (a seed for jax.random.key"
    expected += ", with jax_enable_x64 on)" if x64 else "; it keeps 32 bits unless jax_enable_x64 is on)"
    if is_traced(seed):
        fail_type(name, expected, seed, "pass a Python integer, or a jax.random.key made from the traced value")
    number = int_value(seed)
    if number is None:
        fail_type(name, expected, seed)
    if not 0 <= number < 2 ** bits:
        fail_value(name, expected, seed)
    return number


def _number_kind_error(value) -> Optional[str]:
    """None when ``value`` is a real number or a real array; otherwise a hint about what is wrong ("" for none)."""
    if isinstance(value, (bool, np.bool_)):
        return "a bool is not a number here"
    if isinstance(value, (str, bytes)):
        return "pass a number, not a string"
    if isinstance(value, (complex, np.complexfloating)):
        return "complex numbers are not accepted"
    if isinstance(value, numbers.Real):
        return None
    if isinstance(value, (np.ndarray, jax.Array)):
        dtype = value.dtype
        if is_key_dtype(dtype):
            return "a PRNG key is not a number"
        if dtype == np.bool_:
            return "a boolean array is not a number here"
        if np.issubdtype(dtype, np.complexfloating):
            return "complex numbers are not accepted"
        if not (np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating)
                or dtype == jnp.bfloat16):
            return f"arrays of dtype {dtype} are not numbers"
        return None
    if isinstance(value, (list, tuple)):
        return "pass a number or an array (jnp.asarray(...)), not a Python " + type(value).__name__
    return ""


def check_float(name: str, value, *, min: Optional[float] = None, max: Optional[float] = None,
                open_min: bool = False, open_max: bool = False, finite: bool = True, allow_none: bool = False,
                scalar: bool = False):
    """A real number (or a real array, checked elementwise) in the given range; returns ``value`` unchanged.

    Args:
      name: the argument's name, as the caller spells it.
      value: a Python or NumPy real number, or a NumPy/JAX array of integers or floats; with ``scalar=True``
        only 0-d values. Traced values are checked for dtype and shape only.
      min, max: optional bounds, closed unless ``open_min`` / ``open_max``.
      finite: refuse ``+-inf`` and values beyond the float32 range (they would become ``inf``). NaN is always
        refused.
      allow_none: accept ``None`` (returned as is).
      scalar: refuse arrays with axes (a single number is expected).
    """
    lo, hi = min, max
    rng = range_text(lo, hi, open_min, open_max)
    kind = "a finite number" if finite else "a number"
    if not scalar:
        kind += " (or an array of them)"
    expected = join_text(kind, rng) + (" or None" if allow_none else "")
    if value is None:
        if allow_none:
            return None
        fail_type(name, expected, value)
    hint = _number_kind_error(value)
    if hint is not None:
        fail_type(name, expected, value, hint or None)
    if scalar and np.ndim(value) != 0:
        fail_type(name, expected, value, "pass a single number")
    if is_traced(value):
        return value
    arr = np.asarray(value, dtype=np.float64)
    if arr.size == 0:
        fail_value(name, expected, value, "the array is empty")
    if np.isnan(arr).any():
        fail_value(name, expected, value)
    if finite and not (np.abs(arr) <= FLOAT32_MAX).all():
        hint = None if np.isinf(arr).any() else "it overflows float32 to inf"
        fail_value(name, expected, value, hint)
    ok = np.ones(arr.shape, bool)
    if lo is not None:
        ok &= arr > lo if open_min else arr >= lo
    if hi is not None:
        ok &= arr < hi if open_max else arr <= hi
    if not ok.all():
        fail_value(name, expected, value)
    return value


def check_bool(name: str, value) -> bool:
    """``True`` or ``False`` (also ``np.bool_``), returned as a Python ``bool``; 0/1 and strings are refused."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    fail_type(name, "True or False", value)


_ARRAY_KINDS = {
    "number": ("a real numeric array", lambda d: np.issubdtype(d, np.integer) or np.issubdtype(d, np.floating)
               or d == jnp.bfloat16),
    "float": ("a floating-point array", lambda d: np.issubdtype(d, np.floating) or d == jnp.bfloat16),
    "integer": ("an integer array", lambda d: np.issubdtype(d, np.integer)),
    "bool": ("a boolean array", lambda d: d == np.bool_),
}


def check_array(name: str, value, *, kind: str = "number", ndim: Optional[int] = None,
                min_ndim: Optional[int] = None, allow_bool: bool = False):
    """An array-like of the given ``kind`` (``"number"``, ``"float"``, ``"integer"`` or ``"bool"``).

    JAX arrays and tracers are returned unchanged; anything else is converted with ``np.asarray`` (a ragged list,
    a string, ``None`` or an object array raises a clear error) and returned as a NumPy array. ``ndim`` fixes the
    number of axes, ``min_ndim`` gives a minimum. ``allow_bool`` accepts boolean arrays as numbers (0/1).
    """
    what, ok_dtype = _ARRAY_KINDS[kind]
    shape_text = "" if ndim is None else f" with {ndim} axes"
    shape_text += "" if min_ndim is None else f" with at least {min_ndim} axes"
    expected = what + shape_text
    if value is None or isinstance(value, (str, bytes, dict, set)) or isinstance(value, type):
        fail_type(name, expected, value)
    if isinstance(value, (np.ndarray, jax.Array)) or is_traced(value):
        arr = value
    else:
        try:
            arr = np.asarray(value)
        except (ValueError, TypeError):
            fail_type(name, expected, value, "its elements do not form a rectangular array of numbers")
    dtype = arr.dtype
    if is_key_dtype(dtype) or not (ok_dtype(dtype) or (allow_bool and dtype == np.bool_)):
        fail_type(name, expected, value, f"its dtype is {dtype}")
    if ndim is not None and arr.ndim != ndim:
        fail_value(name, expected, value)
    if min_ndim is not None and arr.ndim < min_ndim:
        fail_value(name, expected, value)
    return arr


def _is_number_list(x) -> bool:
    return type(x) in (list, tuple) and len(x) > 0 and all(
        isinstance(e, (numbers.Number, np.generic, np.ndarray, jax.Array)) or type(e) in (list, tuple) for e in x)


def _path_name(name: str, path) -> str:
    if not path:
        return name
    parts = []
    for entry in path:
        if isinstance(entry, jax.tree_util.GetAttrKey):
            parts.append(f".{entry.name}")
        elif isinstance(entry, jax.tree_util.DictKey):
            key = entry.key
            parts.append(f".{key}" if isinstance(key, str) and key.isidentifier() else f"[{key!r}]")
        elif isinstance(entry, jax.tree_util.SequenceKey):
            parts.append(f"[{entry.idx}]")
        else:
            parts.append(str(entry))
    return name + "".join(parts)


def check_number_tree(name: str, tree, *, min: Optional[float] = None, max: Optional[float] = None,
                      open_min: bool = False, open_max: bool = False, finite: bool = True,
                      lists: str = "array"):
    """A pytree of numbers (hyperparameters): every concrete leaf checked by :func:`check_float`, tracers skipped.

    The message names the leaf by its path (``hp.optimizer.learning_rate``). ``None`` leaves, strings and other
    non-numbers are refused. A Python list or tuple of numbers in the tree (``learning_rate=[1e-3, 1e-2]``) is,
    with ``lists="array"``, turned into one array leaf (``jnp.asarray``; a sweep axis), or with
    ``lists="refuse"`` refused with a hint. Returns the tree (with lists converted).
    """
    if lists not in ("array", "refuse"):
        raise ValueError(f"lists must be one of ['array', 'refuse'], got {lists!r}")
    if tree is None or isinstance(tree, (str, bytes)):
        fail_type(name, "a pytree of numbers", tree)
    paths, treedef = jax.tree_util.tree_flatten_with_path(
        tree, is_leaf=lambda x: x is None or _is_number_list(x))
    if not paths:
        fail_value(name, "a pytree with at least one number", tree)
    leaves = []
    for path, leaf in paths:
        leaf_name = _path_name(name, path)
        if _is_number_list(leaf):
            if lists == "refuse":
                fail_type(leaf_name, "a number or an array", leaf,
                           "wrap a list of values in jnp.asarray(...) to sweep them")
            try:
                arr = np.asarray(leaf)
            except (ValueError, TypeError):
                fail_type(leaf_name, "a number or a rectangular list of numbers", leaf)
            check_float(leaf_name, arr, min=min, max=max, open_min=open_min, open_max=open_max, finite=finite)
            leaf = jnp.asarray(leaf)
        else:
            check_float(leaf_name, leaf, min=min, max=max, open_min=open_min, open_max=open_max, finite=finite)
        leaves.append(leaf)
    return jax.tree_util.tree_unflatten(treedef, leaves)
