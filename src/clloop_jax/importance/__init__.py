"""Importances of parameters: Fisher diagonals from per-sample gradients (:mod:`.fisher`), per-layer taps
of dense layers (:mod:`.dense_taps`), MAS, and reductions that XLA's CPU runs fast (:mod:`.reductions`).
"""

from clloop_jax.importance.fisher import (VARIANTS, METHODS, Gaussian, Categorical, per_sample_grads, fisher_diagonal,
                                          mas_importance, squared_batch_gradient)  # noqa: F401

__all__ = ["VARIANTS", "METHODS", "Gaussian", "Categorical", "per_sample_grads", "fisher_diagonal", "mas_importance",
           "squared_batch_gradient"]
