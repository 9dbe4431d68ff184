"""Task-free continual learning: streams whose task changes at hidden times (:mod:`.schedules`), a shift
detector (:mod:`.detect`), the run that consolidates where it detects a change (:mod:`.run`) and its metrics
(:mod:`.metrics`).
"""

from clloop_jax.taskfree.schedules import Schedule, abrupt_schedule, irregular_schedule, gradual_schedule  # noqa: F401
from clloop_jax.sources.mixture import draw_tasks, mixture_batch  # noqa: F401
from clloop_jax.taskfree.detect import PageHinkley, DetectorState, detect, siegmund_arl  # noqa: F401
from clloop_jax.taskfree.run import TaskFreeRun, TaskFreeResults, make_taskfree_run, BOUNDARIES  # noqa: F401
from clloop_jax.taskfree.metrics import detection_metrics, taskfree_summary  # noqa: F401

__all__ = ["Schedule", "abrupt_schedule", "irregular_schedule", "gradual_schedule", "draw_tasks", "mixture_batch",
           "PageHinkley", "DetectorState", "detect", "siegmund_arl", "TaskFreeRun", "TaskFreeResults",
           "make_taskfree_run", "BOUNDARIES", "detection_metrics", "taskfree_summary"]
