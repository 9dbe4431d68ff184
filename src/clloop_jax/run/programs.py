"""Compiled programs shared by configuration, not by object (the run, the facade and the task-free run)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from clloop_jax.sources.base import bind_model_state

#: XLA options for the run's programs on a CPU: LLVM's most expensive passes off, backend optimisation level 1. On the
#: demo's configuration they cut the whole run's compile time by about a fifth and leave its steady state as fast
#: (``benchmarks/bench_compile.py``). Set to ``{}`` to compile with XLA's defaults.
CPU_COMPILER_OPTIONS = {"xla_llvm_disable_expensive_passes": True, "xla_backend_optimization_level": 1}


class Program:
    """``jax.jit(fn, static_argnums=0)`` with :data:`CPU_COMPILER_OPTIONS` on a CPU backend (unless the session already
    asked for unoptimised programs with ``jax_disable_most_optimizations``); one compilation cache per variant.

    JAX accepts compiler options only on a top-level ``jit``: called inside another ``jit`` (``jax.jit(jax.vmap(run))``)
    the program is traced into the caller's, compiled with the caller's options."""

    def __init__(self, fn):
        self._fn = fn
        self._variants = {}

    def _jitted(self, top_level: bool = True):
        options = {}
        if top_level and jax.default_backend() == "cpu" and not jax.config.read("jax_disable_most_optimizations"):
            options = dict(CPU_COMPILER_OPTIONS)
        variant = tuple(sorted(options.items()))
        if variant not in self._variants:
            self._variants[variant] = jax.jit(self._fn, static_argnums=0, compiler_options=options or None)
        return self._variants[variant]

    def __call__(self, *args):
        try:
            return self._jitted()(*args)
        except ValueError as err:
            if "compiler_options" not in str(err):
                raise
            return self._jitted(top_level=False)(*args)

    def lower(self, *args):
        return self._jitted().lower(*args)

    def _cache_size(self) -> int:
        return self._jitted()._cache_size()


def evaluate_source(source, params, tasks, key, hp_source, model_state=()):
    """The one evaluation: ``source.score`` of ``params`` on every task of ``tasks``, task ``i`` with the key
    ``fold_in(key, i)``, as one vmapped call: ``[num_tasks]`` scores. A batch-norm model scores with its running
    averages ``model_state`` (inference mode; ignored by a source without the ``model_state`` capability)."""
    source = bind_model_state(source, model_state)
    keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(source.num_tasks))
    return jax.vmap(lambda task, k: source.score(k, params, task, hp_source))(tasks, keys)


jit_evaluate = Program(evaluate_source)
