"""Checks of configuration fields in plain Python (no JAX): each names the field and what it must be."""

from __future__ import annotations

import math
import numbers
import struct

__all__ = ["count_setting", "number_setting"]


def count_setting(owner: str, name: str, value) -> None:
    """``ValueError`` naming ``owner.name`` unless ``value`` is an integer >= 1."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{owner}.{name} must be an integer >= 1, got {value!r}")


_FLOAT32_MAX = 3.4028234663852886e38


def _float32(value: float) -> float:
    """``value`` rounded to float32 (the dtype the run traces hyperparameters in); for ``|value| <= _FLOAT32_MAX``."""
    return struct.unpack("f", struct.pack("f", value))[0]


def number_setting(owner, name, value, low, high=math.inf, open_low=False):
    """A finite real number in ``[low, high]`` (``(low, high]`` with ``open_low``) that stays so in float32."""
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value > low if open_low else value >= low) and value <= high
    hint = ""
    if ok and abs(value) > _FLOAT32_MAX:
        ok, hint = False, " (it overflows float32 to inf)"
    elif ok and open_low and not _float32(value) > low:
        ok, hint = False, f" (it rounds to {_float32(value):g} in float32)"
    if not ok:
        what = f"a finite number {'>' if open_low else '>='} {low:g}" + (f" and <= {high:g}" if high < math.inf
                                                                         else "")
        raise ValueError(f"{owner}.{name} must be {what}, got {value!r}{hint}")
