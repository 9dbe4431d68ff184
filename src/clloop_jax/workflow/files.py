"""Files of a run folder written whole or not at all, JSON of configurations, and their hashes."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import platform
from typing import Any

import jax
import numpy as np

__all__ = ["config_hash", "jsonable", "write_atomic", "CheckpointError"]


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: truncated, corrupted, or of another configuration, size or dtype."""


def jsonable(value) -> Any:
    """``value`` as JSON-ready data: dataclasses and NamedTuples as dicts (a dataclass with a ``resolved()`` method
    as what that returns), arrays as lists, callables by name; a non-finite number as the text ``"nan"``, ``"inf"``
    or ``"-inf"`` (JSON has no such numbers: strict readers refuse Python's ``NaN``)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type) and hasattr(value, "resolved"):
        return jsonable(value.resolved())
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, tuple) and hasattr(value, "_asdict"):
        return {k: jsonable(v) for k, v in value._asdict().items()}
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, (np.ndarray, jax.Array)):
        array = np.asarray(value)
        listed = array.tolist()
        return listed if not np.issubdtype(array.dtype, np.floating) or np.isfinite(array).all() else jsonable(listed)
    if isinstance(value, (np.integer, np.floating, np.bool_)):
        return jsonable(value.item())
    if isinstance(value, float) and not np.isfinite(value):
        return str(value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if callable(value):
        return f"{getattr(value, '__module__', '')}.{getattr(value, '__qualname__', repr(value))}"
    return repr(value)


def config_hash(config) -> str:
    """A stable 16-hex-digit hash of the configuration's JSON form."""
    return hash_of(jsonable(config))


def hash_of(value) -> str:
    text = json.dumps(value, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def contents_hash(record: dict) -> str:
    """The hash of a ``config.json`` record's every field but ``contents_hash`` itself."""
    return hash_of({k: v for k, v in jsonable(record).items() if k != "contents_hash"})


def config_differences(a, b, prefix: str = "") -> list:
    """``(dotted name, value in a, value in b)`` for every leaf where the JSON values ``a`` and ``b`` differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b), key=str):
            out += config_differences(a.get(k, "<missing>"), b.get(k, "<missing>"), f"{prefix}{k}.")
        return out
    return [] if a == b else [(prefix[:-1] or "config", a, b)]


def write_atomic(path: str, data) -> str:
    """Writes ``data`` (str or bytes) to ``path`` through a temporary file in the same folder and a rename."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".{os.path.basename(path)}.tmp{os.getpid()}")
    mode = "wb" if isinstance(data, bytes) else "w"
    try:
        with open(tmp, mode) as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def versions() -> dict:
    import flax
    import optax

    from clloop_jax import __version__
    return {"clloop_jax": __version__, "jax": jax.__version__, "flax": flax.__version__, "optax": optax.__version__,
            "python": platform.python_version(), "platform": platform.platform(),
            "devices": [str(d) for d in jax.devices()]}
