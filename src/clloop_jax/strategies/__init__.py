"""Continual-learning strategies behind one small interface (:class:`Strategy`), and the name registry.

* :mod:`~clloop_jax.strategies.base`: the interface, hyperparameter checks and the registry.
* :mod:`~clloop_jax.strategies.penalties`: none, l2, ewc, online_ewc, si, mas, ewc_budget.
* :mod:`~clloop_jax.strategies.rehearsal`: replay, agem, lwf, derpp, er_ace, and the memory they share.
* :mod:`~clloop_jax.strategies.gem`: gem (a memory per task, the gradient projected by the paper's quadratic program).
* :mod:`~clloop_jax.strategies.memories`: the class-balanced memory (GDumb), a ring per task, herding (iCaRL).
* :mod:`~clloop_jax.strategies.streaming`: streaming_ewc, streaming_si (no consolidation event: task-free streams).
* :mod:`~clloop_jax.strategies.plasticity`: l2_init, shrink_perturb, continual_backprop, redo (against the loss of
  plasticity).
* :mod:`~clloop_jax.strategies.classifiers`: icarl, gdumb (strategies that change what the run evaluates).
* :mod:`~clloop_jax.strategies.compose`: chain, several strategies as one (``ewc+replay``).
"""

from clloop_jax.strategies.base import NoHParams, Strategy, get_strategy, register, registered
from clloop_jax.strategies.penalties import (PENALTIES, BudgetHParams, OnlineEWCHParams, PenaltyHParams,
                                             RegularizerState, SIHParams, ewc, ewc_budget, l2, mas, none,
                                             online_ewc, penalty_gradient, quadratic_form, si)
from clloop_jax.strategies.rehearsal import REHEARSAL, agem, derpp, er_ace, lwf, replay
from clloop_jax.strategies.gem import gem
from clloop_jax.strategies.streaming import (STREAMING, StreamingEWCHParams, StreamingSIHParams, StreamingState,
                                             streaming_ewc, streaming_si)
from clloop_jax.strategies.plasticity import (PLASTICITY, ContinualBackpropHParams, ContinualBackpropState,
                                               InitAnchor, L2InitHParams, ReDoHParams, ReDoState,
                                               ShrinkPerturbHParams, continual_backprop, l2_init, redo,
                                               shrink_perturb)
from clloop_jax.strategies.classifiers import (CLASSIFIERS, GDumbHParams, ICaRLHParams, ICaRLState, gdumb,
                                                icarl)
from clloop_jax.strategies.compose import chain, chain_parts

__all__ = ["NoHParams", "Strategy", "get_strategy", "register", "registered", "PENALTIES", "BudgetHParams",
           "OnlineEWCHParams", "PenaltyHParams", "RegularizerState", "SIHParams", "ewc", "ewc_budget", "l2", "mas",
           "none", "online_ewc", "penalty_gradient", "quadratic_form", "si", "REHEARSAL", "agem", "derpp", "er_ace",
           "gem", "lwf", "replay", "STREAMING", "StreamingEWCHParams", "StreamingSIHParams", "StreamingState",
           "streaming_ewc", "streaming_si", "PLASTICITY", "InitAnchor", "L2InitHParams", "ShrinkPerturbHParams",
           "l2_init", "shrink_perturb", "ContinualBackpropHParams", "ContinualBackpropState", "ReDoHParams",
           "ReDoState", "continual_backprop", "redo", "CLASSIFIERS", "GDumbHParams", "ICaRLHParams", "ICaRLState",
           "gdumb", "icarl", "chain", "chain_parts"]
