"""The benchmark suite of clloop_jax: ``python -m benchmarks`` (see :mod:`benchmarks.run`)."""
