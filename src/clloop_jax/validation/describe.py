"""Describing values in messages, and the two kinds of failure every check raises."""

from __future__ import annotations

import numbers
import reprlib
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["ArgumentTypeError", "FLOAT32_MAX", "describe", "is_traced", "is_int", "positive_int"]


#: The largest finite float32; numbers beyond it become ``inf`` when the library casts them.
FLOAT32_MAX = float(np.finfo(np.float32).max)


_repr = reprlib.Repr()


class ArgumentTypeError(TypeError, ValueError):
    """An argument of the wrong kind. A ``TypeError``; also a ``ValueError`` for code that catches that."""


def is_traced(value) -> bool:
    """True for a JAX tracer (a value inside ``jit``/``vmap``/``grad`` whose numbers are not known yet)."""
    return isinstance(value, jax.core.Tracer)


def is_int(value) -> bool:
    """True for a Python or NumPy integer that is not a ``bool``."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def positive_int(name: str, value, allow_none: bool = False) -> None:
    """Refuse anything but an integer >= 1 (or None with ``allow_none``), naming ``name``."""
    if value is None and allow_none:
        return
    if not is_int(value) or value < 1:
        expected = "an integer >= 1 or None" if allow_none else "an integer >= 1"
        raise ValueError(f"{name} must be {expected}, got {value!r}")


def is_key_dtype(dtype) -> bool:
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
        if is_key_dtype(value.dtype):
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


def fail_type(name: str, expected: str, value, hint: Optional[str] = None):
    message = f"{name} must be {expected}, got {describe(value)}"
    raise ArgumentTypeError(message + (f"; {hint}" if hint else ""))


def fail_value(name: str, expected: str, value, hint: Optional[str] = None):
    message = f"{name} must be {expected}, got {describe(value)}"
    raise ValueError(message + (f"; {hint}" if hint else ""))


def _fmt(x) -> str:
    if isinstance(x, float) and x.is_integer() and abs(x) < 1e16:
        return str(int(x))
    return str(x)


def range_text(lo, hi, open_lo: bool, open_hi: bool) -> str:
    if lo is not None and hi is not None:
        return f"in {'(' if open_lo else '['}{_fmt(lo)}, {_fmt(hi)}{')' if open_hi else ']'}"
    if lo is not None:
        return f"{'>' if open_lo else '>='} {_fmt(lo)}"
    if hi is not None:
        return f"{'<' if open_hi else '<='} {_fmt(hi)}"
    return ""


def join_text(*parts: str) -> str:
    return " ".join(p for p in parts if p)
