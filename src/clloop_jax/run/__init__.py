"""The continual-learning run: its configuration and hyperparameters (``config``), the update step and the sequential
run over a task source (``sequential``), what it carries and reports (``state``), how it scores (``evaluation``), the
host's loop over tasks (``host``), the joint upper bound, the compiled programs they share and the NaN alarm.
"""

from clloop_jax.run.config import AdamLinearDecay, HParams, RunConfig, FISHER_VARIANTS, TRACE_MODES  # noqa: F401
from clloop_jax.run.errors import DivergenceError, NonFiniteError, check_finite  # noqa: F401
from clloop_jax.run.sequential import Run, RunResults, TrainState, make_run  # noqa: F401
from clloop_jax.run.host import task_loop  # noqa: F401
from clloop_jax.tree import task_at  # noqa: F401
from clloop_jax.run.joint import make_joint_run  # noqa: F401

__all__ = ["HParams", "RunConfig", "AdamLinearDecay", "FISHER_VARIANTS", "TRACE_MODES", "NonFiniteError", "DivergenceError", "check_finite", "Run",
           "RunResults", "TrainState", "make_run", "task_at", "make_joint_run", "task_loop"]
