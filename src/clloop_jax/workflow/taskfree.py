"""The settings of a stream with hidden task switches (``ExperimentConfig.taskfree``, used with ``--boundaries
detect``, ``oracle`` or ``none``) and the schedules they give, in plain Python: the command line reads them without
JAX; :meth:`TaskFreeConfig.schedules` imports :mod:`clloop_jax.taskfree` when a run is built.
"""

from __future__ import annotations

import dataclasses
import math

from clloop_jax.workflow.fields import number_setting
from clloop_jax.workflow.names import TASKFREE_SCHEDULES

__all__ = ["TaskFreeConfig"]


@dataclasses.dataclass(frozen=True)
class TaskFreeConfig:
    """When the task of a stream with hidden switches changes (with --boundaries detect, oracle or none)."""

    schedule: str = "abrupt"
    """abrupt: the task switches every episodes-per-task episodes; irregular: at random episodes, each seed at its
    own (drawn with the seed number), every segment at least min-segment of episodes-per-task, the stream as long
    as the abrupt one; gradual: consecutive tasks blended linearly over blend of episodes-per-task around each
    switch"""
    min_segment: float = 0.6
    """irregular: the shortest segment, as a fraction of episodes-per-task, in (0, 1]"""
    blend: float = 0.5
    """gradual: the window over which one task gives way to the next, as a fraction of episodes-per-task, in (0, 1]
    (at least 2 episodes)"""

    def __post_init__(self):
        if self.schedule not in TASKFREE_SCHEDULES:
            raise ValueError(f"taskfree.schedule must be one of {list(TASKFREE_SCHEDULES)}, got {self.schedule!r}")
        number_setting("taskfree", "min_segment", self.min_segment, 0.0, 1.0, open_low=True)
        number_setting("taskfree", "blend", self.blend, 0.0, 1.0, open_low=True)

    def episodes(self, episodes_per_task: int) -> dict:
        """The schedule's lengths in episodes for tasks of ``episodes_per_task`` episodes: ``min_length`` (the
        shortest irregular segment) and ``blend``; ``ValueError`` naming the option when one is too short."""
        # rounded first, so that a fraction such as 0.29 of 100 episodes is 29, not int(28.999999999999996)
        min_length, blend = (math.floor(round(f * episodes_per_task, 9)) for f in (self.min_segment, self.blend))
        if self.schedule == "irregular" and min_length < 1:
            raise ValueError(f"--min-segment {self.min_segment:g} of {episodes_per_task} episodes per task is "
                             f"shorter than one episode")
        if self.schedule == "gradual" and blend < 2:
            raise ValueError(f"--blend {self.blend:g} of {episodes_per_task} episodes per task is {blend} episode(s); "
                             f"a blend needs at least 2")
        return {"min_length": min_length, "blend": blend}

    def schedules(self, num_tasks: int, episodes_per_task: int, seeds):
        """The hidden truth of the stream over ``num_tasks`` tasks in order: one
        :class:`~clloop_jax.taskfree.schedules.Schedule` for every seed (abrupt, gradual), or a list of one per seed
        in ``seeds`` (irregular: seed ``s``'s switch times drawn with ``numpy.random.default_rng(s)``)."""
        from clloop_jax.taskfree.schedules import abrupt_schedule, gradual_schedule, irregular_schedule
        sizes = self.episodes(episodes_per_task)
        lengths = [episodes_per_task] * num_tasks
        if self.schedule == "abrupt":
            return abrupt_schedule(lengths)
        if self.schedule == "gradual":
            return gradual_schedule(lengths, blend=sizes["blend"])
        return [irregular_schedule(num_tasks, num_tasks * episodes_per_task, sizes["min_length"], seed=int(s))
                for s in seeds]
