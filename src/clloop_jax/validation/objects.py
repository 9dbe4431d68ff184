"""Checks of keys, callables, instances, duck-typed objects, choices, axes and paths."""

from __future__ import annotations

import difflib
import os
from typing import Iterable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from clloop_jax.validation.describe import fail_type, fail_value, is_key_dtype, is_traced
from clloop_jax.validation.numbers import int_value

__all__ = ["check_key", "check_callable", "check_instance", "check_methods", "check_choice", "check_axis", "check_path"]


def check_key(name: str, key, *, ndim: int = 0):
    """A ``jax.random.key`` (typed key array with ``ndim`` axes; 0 = one key), returned as a typed key.

    A legacy ``jax.random.PRNGKey`` (uint32 array of shape ``[..., 2]``) is accepted and wrapped into a typed key.
    Traced keys are checked by dtype and shape.
    """
    shape_text = "a single jax.random.key(...)" if ndim == 0 else \
        f"a batch of jax.random.key(...) with {ndim} batch axis" + ("es" if ndim > 1 else "")
    hint_ctor = "use jax.random.key(seed)"
    number = int_value(key)
    if number is not None:
        fail_type(name, shape_text, key, f"use jax.random.key({number})" if ndim == 0 else
                   f"use jax.random.split(jax.random.key({number}), n)")
    if not isinstance(key, (jax.Array, np.ndarray)) and not is_traced(key):
        fail_type(name, shape_text, key, hint_ctor)
    if is_key_dtype(key.dtype):
        if key.ndim != ndim:
            hint = "vmap over the keys, or pass keys[0]" if key.ndim > ndim else \
                "use jax.random.split(key, n) for a batch of keys"
            fail_value(name, shape_text, key, hint)
        return key
    if key.dtype == np.uint32 and key.ndim == ndim + 1 and key.shape[-1] == 2:
        return jax.random.wrap_key_data(jnp.asarray(key))
    fail_type(name, shape_text, key, hint_ctor)


def check_callable(name: str, value, *, signature: Optional[str] = None):
    """A callable; ``signature`` describes what it is called with (``"(params, batch) -> scalar"``)."""
    if callable(value) and not isinstance(value, type):
        return value
    expected = "callable" + (f" {signature}" if signature else "")
    hint = None
    if isinstance(value, str):
        hint = "pass the function itself, not its name"
    fail_type(name, expected, value, hint)


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
        fail_type(name, expected, value, f"pass an instance {value.__name__}()")
    fail_type(name, expected, value, hint)


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
    fail_type(name, expected, value, hint)


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
    fail_value(name, f"one of {list(choices)}", value, hint)


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
        fail_type(name, expected, axis)
    if allow_tuple and isinstance(axis, tuple):
        out = tuple(check_axis(name, a, ndim, allow_none=False) for a in axis)
        if len({a % ndim for a in out}) != len(out):
            fail_value(name, "a tuple of distinct axes", axis)
        return out
    number = int_value(axis)
    if number is None:
        fail_type(name, expected, axis)
    if not -ndim <= number < ndim:
        fail_value(name, expected, axis, f"the array has {ndim} axes")
    return number


def check_path(name: str, value, *, allow_none: bool = False):
    """A file system path: ``str`` or ``os.PathLike`` (or None if allowed); returned as given."""
    if value is None and allow_none:
        return None
    if isinstance(value, (str, os.PathLike)):
        return value
    fail_type(name, "a path (str or os.PathLike)" + (" or None" if allow_none else ""), value)
