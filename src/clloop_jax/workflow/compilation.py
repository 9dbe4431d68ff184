"""JAX's persistent compilation cache, for entry points (scripts, the command line, notebooks that want it).

Importing the library changes no global JAX setting; an entry point calls :func:`enable_compilation_cache` once, and
a second process that compiles the same programs loads them from disk instead of running XLA again.

The folder is, in order: the ``path`` argument, the environment variable ``CLLOOP_JAX_CACHE_DIR``, or
``~/.cache/clloop_jax/xla``. Setting ``CLLOOP_JAX_NO_CACHE=1`` (or passing ``enabled=False``) leaves the cache off.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import jax

DEFAULT_CACHE_DIR = Path("~/.cache/clloop_jax/xla")
ENV_DIR = "CLLOOP_JAX_CACHE_DIR"
ENV_OFF = "CLLOOP_JAX_NO_CACHE"


def compilation_cache_dir(path: Optional[os.PathLike] = None) -> Path:
    """The folder :func:`enable_compilation_cache` would use."""
    if path is not None:
        return Path(path).expanduser()
    return Path(os.environ.get(ENV_DIR) or DEFAULT_CACHE_DIR).expanduser()


def enable_compilation_cache(path: Optional[os.PathLike] = None, enabled: bool = True) -> Optional[Path]:
    """Turns on JAX's persistent compilation cache in ``path`` (see the module docstring for the default) and
    returns the folder, or returns None and changes nothing when ``enabled`` is False or ``CLLOOP_JAX_NO_CACHE`` is
    set to a non-empty value other than ``0``."""
    if not isinstance(enabled, bool):
        raise TypeError(f"enabled must be True or False, got {enabled!r}")
    if not enabled or os.environ.get(ENV_OFF, "0") not in ("", "0"):
        return None
    folder = compilation_cache_dir(path)
    folder.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(folder))
    # Cache every program, however quick to compile: a run is many small programs on a CPU.
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
    return folder
