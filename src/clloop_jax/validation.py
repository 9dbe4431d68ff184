"""Argument checks shared by every public function and constructor of the library.

Each check names the argument, says what was expected and what was given, and raises before anything is traced::

    check_int("num_tasks", 0, min=1)        # ValueError: num_tasks must be an integer >= 1, got int 0
    check_float("confidence", "0.9", min=0, max=1, open_min=True, open_max=True)
                                            # TypeError: confidence must be a number in (0, 1), got str '0.9'
    check_key("key", 0)                     # TypeError: key must be a jax.random.key(...), got int 0;
                                            #            use jax.random.key(0)

Conventions:

* A value of the wrong kind raises :class:`ArgumentTypeError`, a ``TypeError`` that is also a ``ValueError`` (so
  code that caught the library's earlier ``ValueError`` keeps working); a value of the right kind outside its range
  raises ``ValueError``.
* Integers: Python and NumPy integers and concrete 0-d integer arrays; ``bool`` is refused (``True`` is not a count).
* Numbers: Python and NumPy reals and real arrays (concrete ones are checked elementwise); ``bool``, strings,
  complex numbers, ``None`` and containers are refused. Finite means finite in float32 as well (the library
  computes in float32: ``1e179`` would become ``inf``). NaN is never accepted.
* Traced values (inside ``jit``/``vmap``) cannot be inspected: only their dtype and shape are checked; the values
  are the caller's responsibility.
* Seeds: ``jax.random.key(seed)`` keeps the low 32 bits of a seed unless ``jax_enable_x64`` is on (then 63 bits),
  so two seeds that differ above those bits would give the same key; :func:`check_seed` refuses them.

Every check returns the value it accepted (converted where that is stated), so it can be used inline.
"""

from __future__ import annotations

import difflib
import math
import numbers
import operator
import os
import reprlib
from typing import Iterable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "ArgumentTypeError",
    "FLOAT32_MAX",
    "describe",
    "is_traced",
    "check_int",
    "check_float",
    "check_bool",
    "check_array",
    "check_number_tree",
    "check_key",
    "check_seed",
    "check_callable",
    "check_instance",
    "check_methods",
    "check_choice",
    "check_axis",
    "check_path",
]

#: The largest finite float32; numbers beyond it become ``inf`` when the library casts them.
FLOAT32_MAX = float(np.finfo(np.float32).max)

_repr = reprlib.Repr()
_repr.maxstring = 40
_repr.maxother = 60
_repr.maxlist = _repr.maxtuple = _repr.maxdict = 6


class ArgumentTypeError(TypeError, ValueError):
    """An argument of the wrong kind. A ``TypeError``; also a ``ValueError`` for code that catches that."""


# ----------------------------------------------------------------------------------------------------------------
# Describing values
# ----------------------------------------------------------------------------------------------------------------


def is_traced(value) -> bool:
    """True for a JAX tracer (a value inside ``jit``/``vmap``/``grad`` whose numbers are not known yet)."""
    return isinstance(value, jax.core.Tracer)


def _is_key_dtype(dtype) -> bool:
    try:
        return jnp.issubdtype(dtype, jax.dtypes.prng_key)
    except TypeError:
        return False


def describe(value) -> str:
    """A short description of ``value`` for an error message: its kind and (briefly) its value.

    ``int 0``, ``str '0.9'``, ``None``, ``the class Gaussian``, ``float32 array of shape (3,) [1.0, 2.0, 3.0]``,
    ``a traced float32 value of shape ()``.
    """
    if value is None:
        return "None"
    if isinstance(value, type):
        return f"the class {value.__name__}"
    if is_traced(value):
        return f"a traced {value.dtype} value of shape {tuple(value.shape)}"
    if isinstance(value, (bool, int, float, complex, str, bytes)):
        return f"{type(value).__name__} {_repr.repr(value)}"
    if isinstance(value, np.generic):
        try:
            return f"numpy.{type(value).__name__} {_repr.repr(value.item())}"
        except Exception:  # pragma: no cover - exotic NumPy scalars
            return f"numpy.{type(value).__name__}"
    if isinstance(value, (np.ndarray, jax.Array)):
        shape = tuple(value.shape)
        if _is_key_dtype(value.dtype):
            return f"a {value.dtype} key array of shape {shape}"
        text = f"{value.dtype} array of shape {shape}"
        if value.size <= 6 and value.dtype != object:
            try:
                text += " " + np.array2string(np.asarray(value), separator=", ", precision=6)
            except Exception:  # pragma: no cover - e.g. an array deleted or not addressable here
                pass
        return text
    if callable(value) and hasattr(value, "__name__"):
        return f"{type(value).__name__} {value.__name__}"
    return f"{type(value).__name__} {_repr.repr(value)}"


def _fail_type(name: str, expected: str, value, hint: Optional[str] = None):
    message = f"{name} must be {expected}, got {describe(value)}"
    raise ArgumentTypeError(message + (f"; {hint}" if hint else ""))


def _fail_value(name: str, expected: str, value, hint: Optional[str] = None):
    message = f"{name} must be {expected}, got {describe(value)}"
    raise ValueError(message + (f"; {hint}" if hint else ""))


def _fmt(x) -> str:
    if isinstance(x, float) and x.is_integer() and abs(x) < 1e16:
        return str(int(x))
    return str(x)


def _range_text(lo, hi, open_lo: bool, open_hi: bool) -> str:
    if lo is not None and hi is not None:
        return f"in {'(' if open_lo else '['}{_fmt(lo)}, {_fmt(hi)}{')' if open_hi else ']'}"
    if lo is not None:
        return f"{'>' if open_lo else '>='} {_fmt(lo)}"
    if hi is not None:
        return f"{'<' if open_hi else '<='} {_fmt(hi)}"
    return ""


def _join(*parts: str) -> str:
    return " ".join(p for p in parts if p)


# ----------------------------------------------------------------------------------------------------------------
# Integers
# ----------------------------------------------------------------------------------------------------------------


def _as_int(value) -> Optional[int]:
    """``value`` as a Python int when it is an integer (not a bool), else None; tracers raise TypeError."""
    if isinstance(value, (bool, np.bool_)):
        return None
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, (np.ndarray, jax.Array)) and value.ndim == 0 and not is_traced(value):
        if not _is_key_dtype(value.dtype) and np.issubdtype(value.dtype, np.integer):
            return int(operator.index(value))
    return None


def check_int(name: str, value, *, min: Optional[int] = None, max: Optional[int] = None,
              allow_none: bool = False) -> Optional[int]:
    """An integer in ``[min, max]`` (either bound optional), returned as a Python ``int`` (or None if allowed).

    Accepts Python and NumPy integers and concrete 0-d integer arrays; refuses ``bool``, floats (also ``2.0``),
    strings and traced values (a count must be known before tracing).
    """
    lo, hi = min, max
    expected = _join("an integer", _range_text(lo, hi, False, False)) + (" or None" if allow_none else "")
    if value is None:
        if allow_none:
            return None
        _fail_type(name, expected, value)
    if is_traced(value):
        _fail_type(name, expected, value, "a count or size must be a concrete Python integer, known before "
                                         "jit/vmap traces the program")
    as_int = _as_int(value)
    if as_int is None:
        hint = None
        if isinstance(value, (float, np.floating)) and math.isfinite(value) and float(value).is_integer():
            hint = f"pass {int(value)}"
        elif isinstance(value, str):
            hint = "pass a number, not a string"
        _fail_type(name, expected, value, hint)
    if (lo is not None and as_int < lo) or (hi is not None and as_int > hi):
        _fail_value(name, expected, value)
    return as_int


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
        _fail_type(name, expected, seed, "pass a Python integer, or a jax.random.key made from the traced value")
    as_int = _as_int(seed)
    if as_int is None:
        _fail_type(name, expected, seed)
    if not 0 <= as_int < 2 ** bits:
        _fail_value(name, expected, seed)
    return as_int


# ----------------------------------------------------------------------------------------------------------------
# Numbers
# ----------------------------------------------------------------------------------------------------------------


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
        if _is_key_dtype(dtype):
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
    rng = _range_text(lo, hi, open_min, open_max)
    kind = "a finite number" if finite else "a number"
    if not scalar:
        kind += " (or an array of them)"
    expected = _join(kind, rng) + (" or None" if allow_none else "")
    if value is None:
        if allow_none:
            return None
        _fail_type(name, expected, value)
    hint = _number_kind_error(value)
    if hint is not None:
        _fail_type(name, expected, value, hint or None)
    if scalar and np.ndim(value) != 0:
        _fail_type(name, expected, value, "pass a single number")
    if is_traced(value):
        return value
    arr = np.asarray(value, dtype=np.float64)
    if arr.size == 0:
        _fail_value(name, expected, value, "the array is empty")
    if np.isnan(arr).any():
        _fail_value(name, expected, value)
    if finite and not (np.abs(arr) <= FLOAT32_MAX).all():
        hint = None if np.isinf(arr).any() else "it overflows float32 to inf"
        _fail_value(name, expected, value, hint)
    ok = np.ones(arr.shape, bool)
    if lo is not None:
        ok &= arr > lo if open_min else arr >= lo
    if hi is not None:
        ok &= arr < hi if open_max else arr <= hi
    if not ok.all():
        _fail_value(name, expected, value)
    return value


def check_bool(name: str, value) -> bool:
    """``True`` or ``False`` (also ``np.bool_``), returned as a Python ``bool``; 0/1 and strings are refused."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    _fail_type(name, "True or False", value)


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
        _fail_type(name, expected, value)
    if isinstance(value, (np.ndarray, jax.Array)) or is_traced(value):
        arr = value
    else:
        try:
            arr = np.asarray(value)
        except (ValueError, TypeError):
            _fail_type(name, expected, value, "its elements do not form a rectangular array of numbers")
    dtype = arr.dtype
    if _is_key_dtype(dtype) or not (ok_dtype(dtype) or (allow_bool and dtype == np.bool_)):
        _fail_type(name, expected, value, f"its dtype is {dtype}")
    if ndim is not None and arr.ndim != ndim:
        _fail_value(name, expected, value)
    if min_ndim is not None and arr.ndim < min_ndim:
        _fail_value(name, expected, value)
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
        _fail_type(name, "a pytree of numbers", tree)
    paths, treedef = jax.tree_util.tree_flatten_with_path(
        tree, is_leaf=lambda x: x is None or _is_number_list(x))
    if not paths:
        _fail_value(name, "a pytree with at least one number", tree)
    leaves = []
    for path, leaf in paths:
        leaf_name = _path_name(name, path)
        if _is_number_list(leaf):
            if lists == "refuse":
                _fail_type(leaf_name, "a number or an array", leaf,
                           "wrap a list of values in jnp.asarray(...) to sweep them")
            try:
                arr = np.asarray(leaf)
            except (ValueError, TypeError):
                _fail_type(leaf_name, "a number or a rectangular list of numbers", leaf)
            check_float(leaf_name, arr, min=min, max=max, open_min=open_min, open_max=open_max, finite=finite)
            leaf = jnp.asarray(leaf)
        else:
            check_float(leaf_name, leaf, min=min, max=max, open_min=open_min, open_max=open_max, finite=finite)
        leaves.append(leaf)
    return jax.tree_util.tree_unflatten(treedef, leaves)


# ----------------------------------------------------------------------------------------------------------------
# Keys
# ----------------------------------------------------------------------------------------------------------------


def check_key(name: str, key, *, ndim: int = 0):
    """A ``jax.random.key`` (typed key array with ``ndim`` axes; 0 = one key), returned as a typed key.

    A legacy ``jax.random.PRNGKey`` (uint32 array of shape ``[..., 2]``) is accepted and wrapped into a typed key.
    Traced keys are checked by dtype and shape.
    """
    shape_text = "a single jax.random.key(...)" if ndim == 0 else \
        f"a batch of jax.random.key(...) with {ndim} batch axis" + ("es" if ndim > 1 else "")
    hint_ctor = "use jax.random.key(seed)"
    as_int = _as_int(key)
    if as_int is not None:
        _fail_type(name, shape_text, key, f"use jax.random.key({as_int})" if ndim == 0 else
                   f"use jax.random.split(jax.random.key({as_int}), n)")
    if not isinstance(key, (jax.Array, np.ndarray)) and not is_traced(key):
        _fail_type(name, shape_text, key, hint_ctor)
    if _is_key_dtype(key.dtype):
        if key.ndim != ndim:
            hint = "vmap over the keys, or pass keys[0]" if key.ndim > ndim else \
                "use jax.random.split(key, n) for a batch of keys"
            _fail_value(name, shape_text, key, hint)
        return key
    if key.dtype == np.uint32 and key.ndim == ndim + 1 and key.shape[-1] == 2:
        return jax.random.wrap_key_data(jnp.asarray(key))
    _fail_type(name, shape_text, key, hint_ctor)


# ----------------------------------------------------------------------------------------------------------------
# Objects
# ----------------------------------------------------------------------------------------------------------------


def check_callable(name: str, value, *, signature: Optional[str] = None):
    """A callable; ``signature`` describes what it is called with (``"(params, batch) -> scalar"``)."""
    if callable(value) and not isinstance(value, type):
        return value
    expected = "callable" + (f" {signature}" if signature else "")
    hint = None
    if isinstance(value, str):
        hint = "pass the function itself, not its name"
    _fail_type(name, expected, value, hint)


def _class_names(cls) -> str:
    classes = cls if isinstance(cls, tuple) else (cls,)
    return " or ".join(c.__name__ for c in classes)


def check_instance(name: str, value, cls, *, hint: Optional[str] = None):
    """An instance of ``cls`` (a class or a tuple of classes). A class passed instead of an instance gets
    ``got the class Gaussian; pass an instance Gaussian()``."""
    if isinstance(value, cls):
        return value
    expected = f"an instance of {_class_names(cls)}"
    if isinstance(value, type) and issubclass(value, cls):
        _fail_type(name, expected, value, f"pass an instance {value.__name__}()")
    _fail_type(name, expected, value, hint)


def check_methods(name: str, value, methods: Sequence[str], *, example: Optional[str] = None):
    """An object with the given callable methods (duck typing), not a class."""
    expected = f"an object with methods {list(methods)}" + (f" (e.g. {example})" if example else "")
    if isinstance(value, type):
        missing = []
        hint = f"pass an instance {value.__name__}()"
    else:
        missing = [m for m in methods if not callable(getattr(value, m, None))]
        hint = f"it lacks {missing}"
        if not missing:
            return value
    _fail_type(name, expected, value, hint)


def check_choice(name: str, value, choices: Iterable):
    """One of ``choices`` (compared with ``==``); a close misspelling gets a suggestion."""
    choices = tuple(choices)
    for c in choices:
        try:
            if type(value) is type(c) and value == c:
                return value
        except Exception:  # noqa: BLE001 - arrays and odd objects compare badly; they are not choices
            pass
    hint = None
    if isinstance(value, str):
        close = difflib.get_close_matches(value, [c for c in choices if isinstance(c, str)], n=1)
        if close:
            hint = f"did you mean {close[0]!r}?"
    _fail_value(name, f"one of {list(choices)}", value, hint)


def check_axis(name: str, axis, ndim: int, *, allow_none: bool = True, allow_tuple: bool = False):
    """An axis of an array with ``ndim`` axes: an integer in ``[-ndim, ndim)``, or (if allowed) None or a tuple
    of distinct such integers. Returned as given, with NumPy integers turned into Python ints."""
    expected = f"an integer axis in [{-ndim}, {ndim})"
    if allow_tuple:
        expected += " or a tuple of them"
    if allow_none:
        expected += " or None"
    if axis is None:
        if allow_none:
            return None
        _fail_type(name, expected, axis)
    if allow_tuple and isinstance(axis, tuple):
        out = tuple(check_axis(name, a, ndim, allow_none=False) for a in axis)
        if len({a % ndim for a in out}) != len(out):
            _fail_value(name, "a tuple of distinct axes", axis)
        return out
    as_int = _as_int(axis)
    if as_int is None:
        _fail_type(name, expected, axis)
    if not -ndim <= as_int < ndim:
        _fail_value(name, expected, axis, f"the array has {ndim} axes")
    return as_int


def check_path(name: str, value, *, allow_none: bool = False):
    """A file system path: ``str`` or ``os.PathLike`` (or None if allowed); returned as given."""
    if value is None and allow_none:
        return None
    if isinstance(value, (str, os.PathLike)):
        return value
    _fail_type(name, "a path (str or os.PathLike)" + (" or None" if allow_none else ""), value)
