"""Shared test settings: a deterministic hypothesis profile (and a thorough one for local runs) and fast
compilation.

Compilation dominates these small tests, so XLA's optimisation passes are switched off for the whole session
(``jax_disable_most_optimizations``): compile time roughly halves. Semantics do not change; every numerical
comparison in the suite has a float32 tolerance, and paths compared with each other are compiled the same way.
"""
import jax
import pytest
from hypothesis import settings

settings.register_profile("ci", deadline=None, derandomize=True, max_examples=25, print_blob=True)
# Locally, many more examples: `python -m pytest tests/test_invalid_inputs.py --hypothesis-profile=thorough`.
settings.register_profile("thorough", deadline=None, max_examples=200, print_blob=True)
settings.load_profile("ci")


@pytest.fixture(scope="session", autouse=True)
def _fast_compile():
    previous = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.config.update("jax_disable_most_optimizations", previous)
