"""Driving a run over seeds one task at a time into its folder: checkpoints, resume, the NaN alarm and signals."""

from __future__ import annotations

import functools
import os
import shlex
import signal
import sys
import threading
import time
from typing import Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from clloop_jax.run.errors import NonFiniteError, check_finite
from clloop_jax.run.host import task_loop
from clloop_jax.run.sequential import Run, RunResults
from clloop_jax.workflow.runs import RunFolder
from clloop_jax.workflow.sharding import batch_mesh, sharded_vmap
from clloop_jax.workflow.trackers import Trackers

__all__ = ["execute", "execute_taskfree", "RunInterrupted", "resume_command",
           "check_memory", "unmoved", "not_learned_text", "run_or_read", "run_seconds", "joint_bound"]


class RunInterrupted(KeyboardInterrupt):
    """A run stopped by SIGINT or SIGTERM at a safe point: every finished task is checkpointed, no file is
    half-written, and ``resume`` continues it. ``signum``, ``done`` (tasks finished), ``total``, ``path``."""

    def __init__(self, signum: int, done: int, total: int, path: str, immediate: bool = False):
        self.signum, self.done, self.total, self.path = signum, done, total, path
        if immediate:
            text = f"stopped during task {done + 1} of {total} ({done} finished tasks are kept)"
        elif done:
            text = f"stopped after task {done} of {total}"
        else:
            text = f"stopped before task 1 of {total} was done"
        super().__init__(text)

    @property
    def exit_code(self) -> int:
        """128 + the signal's number: 130 for SIGINT, 143 for SIGTERM."""
        return 128 + int(self.signum)


def resume_command(prog: str, argv) -> str:
    """The command line that resumes the run started by ``prog argv`` (``--overwrite`` dropped, ``--resume`` added)."""
    args = [a for a in argv if a not in ("--overwrite", "--no-overwrite", "--no-resume")]
    if "--resume" not in args:
        args.append("--resume")
    return " ".join([prog] + [shlex.quote(str(a)) for a in args])


@functools.lru_cache(maxsize=64)
def _programs(run: Run, devices: Optional[tuple] = None, batched_hp: bool = False):
    """The vmapped per-seed programs of ``run``: init, baseline evaluation, one task (compiled once for every task,
    and shared by every run of the same configuration: the task arrays are arguments). With ``devices``, each
    program's seed axis is split over them (:func:`~clloop_jax.workflow.sharding.sharded_vmap`). ``batched_hp``:
    the hyperparameters have the seed axis too (one set per member of the batch: a sweep)."""
    def batched(fn, in_axes):
        if devices is None:
            return jax.jit(jax.vmap(fn, in_axes=in_axes))
        return sharded_vmap(fn, in_axes=in_axes, devices=list(devices))

    h = 0 if batched_hp else None
    init = batched(lambda tasks, k, hp: run.init_on(tasks, k, hp), (None, 0, h))
    evaluate = batched(lambda tasks, p, ms, ss, k, hp: run.evaluate_on(p, tasks, Run.split_key(k)[1], hp, ms, ss),
                       (None, 0, 0, 0, 0, h))
    step = batched(lambda tasks, s, k, t, hp: run.task_step_on(s, tasks, k, t, hp), (None, 0, 0, None, h))
    return init, evaluate, step


class _StopOnSignals:
    """While active (in the main thread): the first SIGINT or SIGTERM asks the run to stop at its next safe point
    (between tasks); a second one stops it at once."""

    def __init__(self, total: int, path: str):
        self.total, self.path, self.done, self.signum, self.previous = total, path, 0, None, {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        self.previous = {}

    def _handle(self, signum, frame):
        if self.signum is not None:
            raise RunInterrupted(signum, self.done, self.total, self.path, immediate=True)
        self.signum = signum
        if sys.stderr.isatty():
            print(f"\n{self.path}: stopping after the current task (again to stop at once)", file=sys.stderr,
                  flush=True)

    def check(self, done: int) -> None:
        self.done = done
        if self.signum is not None and done < self.total:
            raise RunInterrupted(self.signum, done, self.total, self.path)


def execute(run: Run, hp, seeds, folder: Optional[RunFolder] = None, config=None,
            progress: Optional[Callable] = None, label: str = "run", devices=None, trackers=(), *,
            batched_hp: bool = False, members: Optional[Sequence[str]] = None,
            write_results: bool = True) -> RunResults:
    """Runs ``run`` for every seed at once (``jax.vmap``), one task at a time: checkpoints after every task, resumes
    from the folder's last complete checkpoint when ``folder.resume``, raises :class:`NonFiniteError` (naming seed,
    task and episode) as soon as a task's updates became non-finite, before anything of that task is written.

    ``devices`` spreads the seeds over several devices (a count, or a sequence of devices; see
    :mod:`clloop_jax.workflow.sharding`); None runs them all on the default device. Results agree to float32 rounding.

    With a ``folder``, the folder is locked for the whole run (:class:`RunFolder`), its configuration is checked or
    written before anything is compiled, and SIGINT / SIGTERM (in the main thread) stop the run at the next safe
    point, between tasks, raising :class:`RunInterrupted` (a second signal stops it at once; files stay whole).

    Before anything is compiled or the folder touched, the memory the run needs is estimated (from ``config``'s
    numbers when it is an :class:`~clloop_jax.workflow.experiment.ExperimentConfig`, else from the shapes of the
    run's state and batch) and a run the machine cannot hold is refused with a ``ValueError`` naming both.

    A task after which no parameter of a seed moved beyond float32 rounding was not learned by that seed (a penalty
    so strong that every update is lost, a learning rate that rounds away): one line says so on stderr, and
    ``summary.json`` (``not_learned``) and ``summary.md`` record it.

    Returns ``(final_state, RunResults)``, results with a leading seed axis; writes the folder's result files and
    plots when done (unless ``write_results`` is False: the folder then holds the configuration and checkpoints).
    ``progress(task_done, num_tasks)`` is called after each task.

    A sweep runs several hyperparameter sets in the same batch: with ``batched_hp``, every leaf of ``hp`` has a
    leading axis as long as ``seeds`` (member ``i`` trains with seed ``seeds[i]`` and ``hp[i]``; seeds may repeat),
    and ``members`` names each member in messages (default ``seed {s}``).

    ``trackers`` (:mod:`clloop_jax.workflow.trackers`, from ``open_trackers``) mirror the run live: started once
    the configuration is written, given each task once its checkpoint is written, the summary at the end, and
    closed however the run ends. A resumed run logs from the first task it runs, not the restored ones: a resumed
    TensorBoard run shows the interrupted run's tasks from its event file and the rest from a new one in the same
    folder, on the same steps.
    """
    seeds = [int(s) for s in seeds]
    if members is not None and len(members) != len(seeds):
        raise ValueError(f"members must name each of the {len(seeds)} seeds, got {len(members)} names")
    mesh = None if devices is None else tuple(batch_mesh(devices).devices.flat)
    # before the folder is locked (and made); the arrays a member needs do not depend on its hyperparameters
    check_memory(run, jax.tree.map(lambda x: x[0], hp) if batched_hp else hp, seeds, config, mesh)
    how = dict(mesh=mesh, batched_hp=batched_hp, members=members)
    if folder is None:
        with Trackers(trackers) as group:
            state, results, _ = _execute(run, hp, seeds, None, config, progress, label, None, group, **how)
            group.finish(results.R, results.baseline)
        return state, results
    with folder, _StopOnSignals(run.source.num_tasks, folder.path) as stop, Trackers(trackers) as group:
        state, results, not_learned = _execute(run, hp, seeds, folder, config, progress, label, stop, group, **how)
        if write_results:
            folder.write_results(results.R, results.baseline, {k: np.asarray(v) for k, v in results.traces.items()},
                                 seeds, not_learned=[{"task": int(t) + 1, "task_index": int(t), "seeds": s,
                                                      "text": not_learned_text(int(t), s, hp)}
                                                     for t, s in not_learned.items()])
        group.finish(results.R, results.baseline)
    return state, results


def run_or_read(experiment, path: str, label: Optional[str] = None, seeds: Optional[Sequence[int]] = None):
    """``(R [S, T, T], baseline [S, T])`` of ``experiment``'s run (an
    :class:`~clloop_jax.workflow.experiment.ExperimentConfig`) on ``seeds`` (unset: ``0 .. experiment.seeds - 1``;
    held-out tuning seeds are others, as many) in the folder ``path``: trained there first unless the folder already
    holds that run finished (a run with known boundaries resumed from its last checkpoint when it was interrupted; a
    stream with hidden switches, one program, run again whole; a folder of another configuration or other seeds is
    refused), then read from the folder's files, so that a table made right after training equals one made later
    from the folders. What experiment scripts build their tables from."""
    from clloop_jax.workflow.files import CheckpointError
    seeds = list(range(experiment.seeds)) if seeds is None else [int(s) for s in seeds]
    if len(seeds) != experiment.seeds:
        raise ValueError(f"seeds must be experiment.seeds = {experiment.seeds} seeds, got {seeds}")
    exists = os.path.isdir(path)
    folder = RunFolder(path, resume=exists)
    held = os.path.isfile(folder.file("config.json"))
    if held and (not folder.holds(experiment) or folder.read_seeds() not in (None, seeds)):
        raise CheckpointError(f"{path!r} holds a run of another configuration or other seeds; give another folder")
    if not os.path.isfile(folder.file("summary.json")):
        if experiment.boundaries != "known":
            run, hp, schedule = experiment.build_taskfree(seeds)
            execute_taskfree(run, hp, schedule, seeds, RunFolder(path, overwrite=exists), config=experiment,
                             label=label or experiment.train.strategy)
        else:
            run, hp = experiment.build()
            execute(run, hp, seeds, folder=folder, config=experiment, label=label or experiment.train.strategy)
    R, baseline, _ = folder.read_results()
    return R, baseline


def joint_bound(experiment) -> np.ndarray:
    """The multi-task upper bound of ``experiment``'s tasks (:func:`~clloop_jax.run.joint.make_joint_run`: one model
    trained on every task at once, with the experiment's settings and no strategy; a labelled benchmark's tasks under
    their evaluation masks) on the experiment's seeds, with the keys its run folders use: scores ``[S, T]``."""
    from clloop_jax.run.joint import make_joint_run
    from clloop_jax.run.sequential import make_run
    experiment = experiment.with_strategy("none")
    source = experiment.make_source()
    if "data" in experiment.used_parts():
        source = source.joint()
    config = experiment.run_config(source)
    hp = experiment.hparams_of(make_run(config, source))
    keys = jax.vmap(jax.random.key)(np.arange(experiment.seeds, dtype=np.uint32))
    return np.asarray(jax.jit(jax.vmap(make_joint_run(config, source), in_axes=(0, None)))(keys, hp), np.float64)


def run_seconds(path: str) -> Optional[float]:
    """The wall-clock seconds the run in the folder ``path`` trained for, summed over the sessions that trained it
    (each session's compilation included), from its ``timing.json``; None for a folder written before timings were
    kept. What an experiment reports as a run's time, also when it reads the folder back."""
    timing = RunFolder(path, resume=True).read_timing()
    return None if timing is None else timing.get("seconds")


def execute_taskfree(run, hp, schedule, seeds, folder: RunFolder, config=None, label: str = "run"):
    """Runs the task-free ``run`` (:class:`~clloop_jax.taskfree.run.TaskFreeRun`) over ``schedule`` (one
    :class:`~clloop_jax.taskfree.schedules.Schedule` for every seed, or one per seed) for every seed in one compiled
    program and writes ``folder``: the configuration, the performance matrix at the true switches, every episode's
    record (``task`` the segment, ``episode`` the episode within it; with the detector's ``alarm`` and where the run
    ``consolidated``), the summary and plots, ``schedule.json`` (each seed's hidden truth: the schedule's kind, the
    segments' tasks, the switches and where each change begins) and ``detection.json`` (delays, missed switches,
    false alarms, mean delay and consolidations per seed). The stream is one program: there is no checkpoint between
    tasks, so ``folder.resume`` is refused. Raises :class:`NonFiniteError` naming seed, segment and episode when an
    update went non-finite."""
    from clloop_jax.taskfree import Schedule, taskfree_summary
    if folder.resume:
        raise ValueError(f"--resume: a stream with hidden boundaries is one compiled program with no checkpoint "
                         f"between tasks; run {folder.path!r} again with --overwrite")
    seeds = [int(s) for s in seeds]
    schedules = [schedule] * len(seeds) if isinstance(schedule, Schedule) else list(schedule)
    if len(schedules) != len(seeds):
        raise ValueError(f"schedule must be one Schedule or one per seed ({len(seeds)}), got {len(schedules)}")
    check_memory(run.run, hp, seeds)
    keys = jax.vmap(jax.random.key)(jnp.asarray(seeds, jnp.uint32))
    with folder:
        folder.write_config(config if config is not None else run.run.config, seeds)
        t0 = time.perf_counter()
        state, res = run.seeds(keys, hp, schedule)
        res = jax.tree.map(np.asarray, res)
        seconds = round(time.perf_counter() - t0, 3)   # one program: no time of its own for each task
        folder.write_json("timing.json", {"task_seconds": [], "seconds": seconds, "session_starts": [0]})
        starts = [np.concatenate([[0], s.boundaries]) for s in schedules]
        lengths = np.stack([np.diff(np.append(b, s.num_episodes)) for b, s in zip(starts, schedules)])  # [S, K]
        flat = dict(res.traces, alarm=res.alarms, consolidated=res.consolidated)
        per_task = {name: _segments(v, starts, lengths) for name, v in flat.items()}
        try:
            check_finite(per_task["finite"] | (np.arange(lengths.max()) >= lengths[..., None]), where=label)
        except NonFiniteError as err:   # named by the seed's number and the segment, as the folder numbers them
            raise NonFiniteError(f"{label} diverged at seed {seeds[err.seed]}, segment {err.task}, episode "
                                 f"{err.episode}: the loss, a gradient or the parameters became non-finite (lower "
                                 f"the learning rate or the penalty strength); the updates from there on were "
                                 f"skipped", seed=seeds[err.seed], task=err.task, episode=err.episode) from None
        folder.write_json("schedule.json", [{"seed": seed, "kind": s.kind, "order": s.order, "boundaries":
                                             s.boundaries, "changes": s.changes, "episodes": s.num_episodes}
                                            for seed, s in zip(seeds, schedules)])
        summary = taskfree_summary(res, schedule)
        folder.write_json("detection.json", {k: summary[k] for k in (
            "delay", "missed", "false_alarms", "mean_delay", "consolidations") if k in summary})
        folder.write_results(res.R, res.baseline, per_task, seeds, lengths=lengths)   # summary.json last: finished
    return state, res


def _segments(values: np.ndarray, starts, lengths: np.ndarray) -> np.ndarray:
    """``[S, E]`` per-episode values cut into ``[S, K, L]`` segments (``L`` the longest; the rest of a shorter
    segment is zero and is not written, see ``write_results``'s ``lengths``)."""
    S, K = lengths.shape
    out = np.zeros((S, K, int(lengths.max())), values.dtype)
    for s in range(S):
        for k in range(K):
            out[s, k, :lengths[s, k]] = values[s, starts[s][k]:starts[s][k] + lengths[s, k]]
    return out


def check_memory(run: Run, hp, seeds, config=None, devices=None) -> None:
    """``ValueError`` when the run cannot fit in the machine's memory (see :func:`execute`)."""
    from clloop_jax.workflow.experiment import ExperimentConfig
    from clloop_jax.workflow.memory import estimate_run_memory
    if isinstance(config, ExperimentConfig) and config.seeds == len(seeds) and config.source == "world":
        estimate = config.memory_estimate()
    else:
        estimate = estimate_run_memory(run, hp, seeds)
    estimate.check(what="this run", devices=list(devices) if devices is not None else None)


#: How far a parameter may move and still count as not moved: this many units in the last place of float32.
ROUNDING_ULPS = 4


def unmoved(before, after) -> np.ndarray:
    """``[S]`` bool: True for each seed (the leading axis of every leaf) whose parameters ``after`` a task differ
    from those ``before`` it by no more than float32 rounding (:data:`ROUNDING_ULPS` units in the last place of
    the larger magnitude) anywhere."""
    still = None
    for b, a in zip(jax.tree.leaves(before), jax.tree.leaves(after)):
        b, a = np.asarray(b, np.float32), np.asarray(a, np.float32)
        tolerance = ROUNDING_ULPS * np.spacing(np.maximum(np.abs(b), np.abs(a)))
        same = (np.abs(a.astype(np.float64) - b) <= tolerance).reshape(b.shape[0], -1).all(axis=1)
        still = same if still is None else still & same
    return still


def not_learned_text(task: int, seeds, hp) -> str:
    """The line that says task ``task`` (an index; printed numbered from 1) was not learned by ``seeds`` (seed
    numbers, or the names of a sweep's members)."""
    who = ", ".join(str(s) for s in seeds)
    if all(isinstance(s, (int, np.integer)) for s in seeds):
        who = f"seed{'s' if len(seeds) > 1 else ''} {who}"
    text = f"task {task + 1} was not learned by {who}: no parameter moved beyond float32 rounding"
    strategy = getattr(hp, "strategy", None)
    if strategy is not None and "lam" in strategy._fields and np.ndim(strategy.lam) == 0:
        return text + f"; the penalty (lam {float(strategy.lam):g}) may be too strong"
    return text + f"; the learning rate ({float(np.max(hp.learning_rate)):g}) may be too small"


def _member(i: int, seeds, members) -> str:
    """How messages name member ``i`` of the batch."""
    return f"seed {seeds[i]}" if members is None else members[i]


def _execute(run, hp, seeds, folder, config, progress, label, stop, trackers, mesh, batched_hp, members):
    clock = [time.perf_counter()]
    timing = {"task_seconds": [], "session_starts": [0]}
    keys = jax.vmap(jax.random.key)(jnp.asarray(seeds, jnp.uint32))
    T = run.source.num_tasks
    tasks = run.source.tasks
    digest = None
    if folder is not None:
        digest = folder.write_config(config if config is not None else run.config, seeds)
    init, evaluate, step = (functools.partial(f, tasks) for f in _programs(run, mesh, batched_hp))
    state = init(keys, hp)
    start, rows, traces, not_learned = 0, [], [], {}
    baseline = evaluate(state.params, state.model_state, run.evaluated_state(state), keys, hp)
    if folder is not None and folder.resume:
        last = folder.latest_checkpoint()
        if last is not None:
            trace_like = jax.eval_shape(functools.partial(_programs(run, None, batched_hp)[2], tasks), state, keys,
                                        jnp.int32(0), hp)[2]
            like = {"state": state, "rows": jnp.zeros((last + 1,) + baseline.shape[:1] + (T,), baseline.dtype),
                    "traces": jax.tree.map(lambda x: jnp.zeros((last + 1,) + x.shape, x.dtype), trace_like),
                    "baseline": baseline}
            saved = folder.restore_checkpoint(last, like, digest)
            state, baseline = saved["state"], saved["baseline"]
            rows = list(saved["rows"])
            traces = [jax.tree.map(lambda x: x[i], saved["traces"]) for i in range(last + 1)]
            start = last + 1
            not_learned = folder.checkpoint_notes(last).get("not_learned", {})
            timing = folder.read_timing() or {}
            kept = list(timing.get("task_seconds", []))[:start]
            timing = {"task_seconds": kept + [None] * (start - len(kept)),
                      "session_starts": [t for t in timing.get("session_starts", [0]) if t < start] + [start]}
    trackers.start(config if config is not None else run.config, seeds, first_task=start)

    def after(task, before, new, rows, traces):
        finite = np.asarray(traces[-1]["finite"])  # [S, E], or [S] with one summary per task
        if not finite.all():
            try:
                check_finite(finite.reshape(finite.shape[0], 1, -1), where=label)
            except NonFiniteError as err:
                seed = seeds[err.seed]
                episode = f"episode {err.episode}" if finite.ndim == 2 else "an episode"
                raise NonFiniteError(f"{label} diverged at {_member(err.seed, seeds, members)}, task {task}, {episode}"
                                      f": the loss, a gradient or the parameters became non-finite "
                                      f"(lower the learning rate or "
                                      f"the penalty strength); nothing of task {task} was written, the last good "
                                      f"checkpoint is kept", seed=seed, task=task,
                                      episode=err.episode if finite.ndim == 2 else None) from None
        now = time.perf_counter()   # the task's results are on the host: its work is done
        timing["task_seconds"].append(round(now - clock[0], 3))
        timing["seconds"] = round(sum(t for t in timing["task_seconds"] if t is not None), 3)
        clock[0] = now
        still = np.flatnonzero(unmoved(before.params, new.params))
        if still.size:
            not_learned[str(task)] = [seeds[i] if members is None else members[i] for i in still]
            print(f"{label}: {not_learned_text(task, not_learned[str(task)], hp)}", file=sys.stderr, flush=True)
        if folder is not None:
            folder.save_checkpoint(task, {"state": new, "rows": jnp.stack(rows),
                                          "traces": jax.tree.map(lambda *x: jnp.stack(x), *traces),
                                          "baseline": baseline}, digest, notes={"not_learned": not_learned})
            folder.write_json("timing.json", timing)
        trackers.task(task, rows[-1], traces[-1])
        if progress is not None:
            progress(task + 1, T)
        if stop is not None:
            stop.check(task + 1)

    if stop is not None:
        stop.check(start)
    state = task_loop(lambda st, task: step(st, keys, jnp.int32(task), hp), state, T, start, rows, traces, after)
    R = jnp.stack(rows, axis=1)                                              # [S, T, T]
    stacked = jax.tree.map(lambda *x: jnp.stack(x, axis=1), *traces)      # [S, T, E]
    return state, RunResults(R, baseline, stacked), not_learned
