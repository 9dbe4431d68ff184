"""Shared test settings: a deterministic hypothesis profile, fast compilation, and XLA's CPU pool in a safe mode.

Compilation dominates these small tests, so XLA's optimisation passes are switched off for the whole session
(``jax_disable_most_optimizations``): compile time roughly halves. Semantics do not change; every numerical
comparison in the suite has a float32 tolerance, and paths compared with each other are compiled the same way.
"""
import os

# XLA's multi-threaded Eigen pool on CPU can deadlock while running large vmapped programs (seen with jax 0.10 on
# 2-core machines); one intra-op thread avoids it. Set before any test starts jax; no effect on GPU or TPU.
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false").strip()

import jax  # noqa: E402
import pytest  # noqa: E402
from hypothesis import settings  # noqa: E402

settings.register_profile("ci", deadline=None, derandomize=True, max_examples=25, print_blob=True)
settings.load_profile("ci")


@pytest.fixture(scope="session", autouse=True)
def _fast_compile():
    previous = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.config.update("jax_disable_most_optimizations", previous)
