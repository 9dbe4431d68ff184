"""Continual-learning strategies behind one small interface (:class:`Strategy`), and the name registry.

* :mod:`~clloop_jax.strategies.base`: the interface, hyperparameter checks and the registry.
* :mod:`~clloop_jax.strategies.penalties`: none, l2, ewc, online_ewc, si, mas, ewc_budget.
"""

from clloop_jax.strategies.base import NoHParams, Strategy, get_strategy, register, registered
from clloop_jax.strategies.penalties import (PENALTIES, BudgetHParams, OnlineEWCHParams, PenaltyHParams,
                                             RegularizerState, SIHParams, ewc, ewc_budget, l2, mas, none,
                                             online_ewc, penalty_gradient, quadratic_form, si)

__all__ = ["NoHParams", "Strategy", "get_strategy", "register", "registered", "PENALTIES", "BudgetHParams",
           "OnlineEWCHParams", "PenaltyHParams", "RegularizerState", "SIHParams", "ewc", "ewc_budget", "l2", "mas",
           "none", "online_ewc", "penalty_gradient", "quadratic_form", "si"]
