"""clloop_jax: continual learning in a closed loop, in JAX/Flax."""

__version__ = "0.1.0"
