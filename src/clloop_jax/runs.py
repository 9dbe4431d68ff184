"""Run folders, atomic files, orbax checkpoints after every task, resume, and the NaN alarm.

One folder per run::

    config.json        the resolved configuration, library / jax / flax / optax versions, platform, config hash
    seeds.json         the seeds
    traces.jsonl       one line per (seed, task, episode): every per-episode record of the run
    R_seed{k}.csv      the performance matrix of seed k (first row: the untrained baseline)
    summary.md/.json   mean and 95% interval across seeds of every metric (:func:`clloop_jax.report.summary`)
    plots/*.png        matrix.png, scores.png, divergence.png
    checkpoints/       task_{i}/ (orbax) and task_{i}.json, one per finished task

Every file is written to a temporary name and renamed, and a checkpoint's ``.json`` is written only after its orbax
folder is complete, so an interrupted run never leaves a half-written file or checkpoint: the last complete
checkpoint is the one ``resume`` continues from, and resuming gives bitwise the numbers of an uninterrupted run.
:func:`execute` drives a run over seeds (``jax.vmap``) one task at a time; when an update becomes non-finite it raises
:class:`~clloop_jax.loop.DivergenceError` naming the seed, task and episode, keeping the last good checkpoint and
writing nothing for the diverged task.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import hashlib
import io
import json
import os
import platform
import shutil
import sys
from typing import Any, Callable, Dict, Optional

import jax
import jax.numpy as jnp
import numpy as np

from clloop_jax.loop import DivergenceError, Run, RunResults, check_finite
from clloop_jax.sharding import batch_mesh, sharded_vmap

__all__ = ["RunFolder", "config_hash", "jsonable", "write_atomic", "execute", "CheckpointError"]


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: truncated, corrupted, or of another configuration, size or dtype."""


def jsonable(value) -> Any:
    """``value`` as JSON-ready data: dataclasses and NamedTuples as dicts, arrays as lists, callables by name."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, tuple) and hasattr(value, "_asdict"):
        return {k: jsonable(v) for k, v in value._asdict().items()}
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, (np.ndarray, jax.Array)):
        return np.asarray(value).tolist()
    if isinstance(value, (np.integer, np.floating, np.bool_)):
        return value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return str(value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if callable(value):
        return f"{getattr(value, '__module__', '')}.{getattr(value, '__qualname__', repr(value))}"
    return repr(value)


def config_hash(config) -> str:
    """A stable 16-hex-digit hash of the configuration's JSON form."""
    text = json.dumps(jsonable(config), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def write_atomic(path: str, data) -> str:
    """Writes ``data`` (str or bytes) to ``path`` through a temporary file in the same folder and a rename."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".{os.path.basename(path)}.tmp{os.getpid()}")
    mode = "wb" if isinstance(data, bytes) else "w"
    try:
        with open(tmp, mode) as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def _versions() -> dict:
    import flax
    import optax

    from clloop_jax import __version__
    return {"clloop_jax": __version__, "jax": jax.__version__, "flax": flax.__version__, "optax": optax.__version__,
            "python": platform.python_version(), "platform": platform.platform(),
            "devices": [str(d) for d in jax.devices()]}


@dataclasses.dataclass
class RunFolder:
    """A run's folder. ``overwrite`` empties an existing one; ``resume`` continues in it; otherwise an existing
    non-empty folder is refused (``FileExistsError``), so nothing is lost by accident."""

    path: str
    overwrite: bool = False
    resume: bool = False

    def __post_init__(self):
        if self.overwrite and self.resume:
            raise ValueError("overwrite and resume exclude each other")
        exists = os.path.isdir(self.path) and bool(os.listdir(self.path))
        if exists and not (self.overwrite or self.resume):
            raise FileExistsError(f"the run folder {self.path!r} exists and is not empty; pass --overwrite to replace "
                                  f"it or --resume to continue it")
        if self.resume and not os.path.exists(os.path.join(self.path, "config.json")):
            raise FileNotFoundError(f"--resume: {self.path!r} holds no run (no config.json)")
        if exists and self.overwrite:
            shutil.rmtree(self.path)
        os.makedirs(os.path.join(self.path, "plots"), exist_ok=True)
        os.makedirs(os.path.join(self.path, "checkpoints"), exist_ok=True)

    def file(self, name: str) -> str:
        return os.path.join(self.path, name)

    def write_json(self, name: str, value) -> str:
        return write_atomic(self.file(name), json.dumps(jsonable(value), indent=1) + "\n")

    def write_text(self, name: str, text: str) -> str:
        return write_atomic(self.file(name), text)

    # ----- the configuration -----------------------------------------------------------------------------
    def write_config(self, config, seeds) -> str:
        """``config.json`` (resolved config, versions, platform, hash) and ``seeds.json``; on resume, checks that
        the folder's configuration is this one (``CheckpointError`` naming the file otherwise)."""
        digest = config_hash(config)
        if self.resume:
            with open(self.file("config.json")) as f:
                stored = json.load(f)
            if stored.get("config_hash") != digest:
                raise CheckpointError(f"{self.file('config.json')}: the folder holds a run of another configuration "
                                      f"(hash {stored.get('config_hash')}, this one {digest}); resume it with its own "
                                      f"configuration or start a new folder")
            return digest
        self.write_json("config.json", {"config": config, "config_hash": digest, "versions": _versions(),
                                        "command": sys.argv})
        self.write_json("seeds.json", list(seeds))
        return digest

    # ----- checkpoints -----------------------------------------------------------------------------------
    def _ckpt(self, task: int) -> str:
        return os.path.join(self.path, "checkpoints", f"task_{task}")

    def save_checkpoint(self, task: int, tree, digest: str) -> str:
        """Saves the pytree of arrays ``tree`` after task ``task`` (orbax), then its metadata (the checkpoint's seal)."""
        import orbax.checkpoint as ocp
        leaves, treedef = jax.tree.flatten(tree)
        path = self._ckpt(task)
        if os.path.exists(path):
            shutil.rmtree(path)
        checkpointer = ocp.StandardCheckpointer()
        checkpointer.save(os.path.abspath(path), {f"leaf_{i:05d}": np.asarray(x) for i, x in enumerate(leaves)})
        checkpointer.wait_until_finished()
        meta = {"task": task, "config_hash": digest, "treedef": str(treedef),
                "shapes": [list(np.shape(x)) for x in leaves], "dtypes": [str(np.asarray(x).dtype) for x in leaves]}
        write_atomic(path + ".json", json.dumps(meta) + "\n")
        return path

    def latest_checkpoint(self) -> Optional[int]:
        """The last task whose checkpoint is complete (sealed), or None."""
        folder = os.path.join(self.path, "checkpoints")
        done = [int(n[len("task_"):-len(".json")]) for n in os.listdir(folder)
                if n.startswith("task_") and n.endswith(".json")]
        return max(done) if done else None

    def restore_checkpoint(self, task: int, like, digest: str):
        """The pytree saved after task ``task``, with the structure of ``like``; ``CheckpointError`` naming the file
        when it is missing, truncated, corrupted, or of another configuration, shape or dtype."""
        path = self._ckpt(task)
        try:
            with open(path + ".json") as f:
                meta = json.load(f)
        except (OSError, json.JSONDecodeError) as err:
            raise CheckpointError(f"{path}.json: cannot read the checkpoint's metadata ({err})") from None
        leaves, treedef = jax.tree.flatten(like)
        if meta.get("config_hash") != digest:
            raise CheckpointError(f"{path}.json: saved by a run of another configuration (hash "
                                  f"{meta.get('config_hash')}, this run {digest})")
        shapes = [list(np.shape(x)) for x in leaves]
        dtypes = [str(jnp.result_type(x)) for x in leaves]
        if meta.get("treedef") != str(treedef) or len(meta.get("shapes", [])) != len(leaves):
            raise CheckpointError(f"{path}.json: the saved state has another structure than this run's "
                                  f"({len(meta.get('shapes', []))} arrays saved, {len(leaves)} expected)")
        for i, (a, b) in enumerate(zip(meta["shapes"], shapes)):
            if a != b:
                raise CheckpointError(f"{path}.json: array {i} has shape {tuple(a)}, this run needs {tuple(b)} "
                                      f"(other model or world sizes, or another number of seeds)")
        for i, (a, b) in enumerate(zip(meta["dtypes"], dtypes)):
            if a != b:
                raise CheckpointError(f"{path}.json: array {i} has dtype {a}, this run needs {b}")
        return jax.tree.unflatten(treedef, [jnp.asarray(v) for v in self.checkpoint_arrays(task)])

    def checkpoint_arrays(self, task: int) -> list:
        """The arrays saved after task ``task``, flat, as NumPy arrays (``CheckpointError`` naming the file when the
        checkpoint is missing, truncated or corrupted)."""
        import orbax.checkpoint as ocp
        path = self._ckpt(task)
        try:
            with open(path + ".json") as f:
                meta = json.load(f)
            target = {f"leaf_{i:05d}": jax.ShapeDtypeStruct(tuple(s), np.dtype(d))
                      for i, (s, d) in enumerate(zip(meta["shapes"], meta["dtypes"]))}
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise CheckpointError(f"{path}.json: cannot read the checkpoint's metadata ({err})") from None
        try:
            restored = ocp.StandardCheckpointer().restore(os.path.abspath(path), target)
        except Exception as err:  # orbax and tensorstore raise many kinds; all mean the same here
            raise CheckpointError(f"{path}: the checkpoint is truncated or corrupted ({type(err).__name__}: "
                                  f"{str(err)[:300]})") from None
        return [np.asarray(restored[f"leaf_{i:05d}"]) for i in range(len(target))]

    # ----- results -----------------------------------------------------------------------------------------
    def write_results(self, R, baseline, traces: Dict[str, np.ndarray], seeds) -> None:
        """``traces.jsonl``, ``R_seed{k}.csv`` (baseline first), ``summary.md`` / ``summary.json`` and the plots."""
        from clloop_jax import report
        R, baseline = np.asarray(R, np.float64), np.asarray(baseline, np.float64)
        S, T = R.shape[:2]
        lines = []
        names = sorted(traces)
        arrays = {n: np.asarray(traces[n]) for n in names}
        E = arrays[names[0]].shape[-1] if names else 0
        for s in range(S):
            for t in range(T):
                for e in range(E):
                    row = {"seed": int(seeds[s]), "task": t, "episode": e}
                    row.update({n: jsonable(arrays[n][s, t, e]) for n in names})
                    lines.append(json.dumps(row))
        write_atomic(self.file("traces.jsonl"), "\n".join(lines) + "\n")
        for s in range(S):
            buf = io.StringIO()
            writer = csv.writer(buf)
            writer.writerow(["after"] + [f"task_{j}" for j in range(T)])
            writer.writerow(["untrained"] + [f"{v:.6f}" for v in baseline[s]])
            for i in range(T):
                writer.writerow([f"task_{i}"] + [f"{v:.6f}" for v in R[s, i]])
            write_atomic(self.file(f"R_seed{seeds[s]}.csv"), buf.getvalue())
        stats = report.summary(R, baseline)
        self.write_json("summary.json", {"seeds": list(seeds), "metrics": stats,
                                         "mean_R": R.mean(axis=0), "mean_baseline": baseline.mean(axis=0)})
        table = ["| metric | mean ± 95% interval | seeds |", "|---|---:|---:|"]
        for name, st in stats.items():
            table.append(f"| {name} | {report.cell(st['values'])} | {st['n']} |")
        from clloop_jax.metrics import format_matrix
        self.write_text("summary.md", "\n".join(table) + "\n\nMean performance matrix over seeds:\n\n"
                        + format_matrix(R.mean(axis=0), b=baseline.mean(axis=0)) + "\n")
        report.plot_matrix(R, self.file("plots/matrix.png"))
        report.plot_scores(R, arrays, self.file("plots/scores.png"))
        report.plot_divergence(arrays, self.file("plots/divergence.png"))


# ----------------------------------------------------------------------------------------------------------------
# Driving a run over seeds, one task at a time
# ----------------------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=64)
def _programs(run: Run, devices: Optional[tuple] = None):
    """The vmapped per-seed programs of ``run``: init, baseline evaluation, one task (compiled once for every task,
    and shared by every run of the same configuration: the task arrays are arguments). With ``devices``, each
    program's seed axis is split over them (:func:`~clloop_jax.sharding.sharded_vmap`)."""
    def batched(fn, in_axes):
        if devices is None:
            return jax.jit(jax.vmap(fn, in_axes=in_axes))
        return sharded_vmap(fn, in_axes=in_axes, devices=list(devices))

    init = batched(lambda tasks, k, hp: run._init(tasks, k, hp), (None, 0, None))
    evaluate = batched(lambda tasks, p, k, hp: run._evaluate(p, tasks, Run._keys(k)[1], hp), (None, 0, 0, None))
    step = batched(lambda tasks, s, k, t, hp: run._task_step(s, tasks, k, t, hp), (None, 0, 0, None, None))
    return init, evaluate, step


def execute(run: Run, hp, seeds, folder: Optional[RunFolder] = None, config=None,
            progress: Optional[Callable] = None, label: str = "run", devices=None) -> RunResults:
    """Runs ``run`` for every seed at once (``jax.vmap``), one task at a time: checkpoints after every task, resumes
    from the folder's last complete checkpoint when ``folder.resume``, raises :class:`DivergenceError` (naming seed,
    task and episode) as soon as a task's updates became non-finite, before anything of that task is written.

    ``devices`` spreads the seeds over several devices (a count, or a sequence of devices; see
    :mod:`clloop_jax.sharding`); None runs them all on the default device. Results agree to float32 rounding.

    Returns :class:`RunResults` with a leading seed axis; writes the folder's result files and plots when done.
    ``progress(task_done, num_tasks)`` is called after each task.
    """
    seeds = [int(s) for s in seeds]
    keys = jax.vmap(jax.random.key)(jnp.asarray(seeds, jnp.uint32))
    T = run.source.num_tasks
    tasks = run.source.tasks
    mesh = None if devices is None else tuple(batch_mesh(devices).devices.flat)
    init, evaluate, step = (functools.partial(f, tasks) for f in _programs(run, mesh))
    state = init(keys, hp)
    digest = None
    start, rows, traces = 0, [], []
    if folder is not None:
        digest = folder.write_config(config if config is not None else run.config, seeds)
    baseline = evaluate(state.params, keys, hp)
    if folder is not None and folder.resume:
        last = folder.latest_checkpoint()
        if last is not None:
            trace_like = jax.eval_shape(functools.partial(_programs(run)[2], tasks), state, keys, jnp.int32(0),
                                        hp)[2]
            like = {"state": state, "rows": jnp.zeros((last + 1,) + baseline.shape[:1] + (T,), baseline.dtype),
                    "traces": jax.tree.map(lambda x: jnp.zeros((last + 1,) + x.shape, x.dtype), trace_like),
                    "baseline": baseline}
            saved = folder.restore_checkpoint(last, like, digest)
            state, baseline = saved["state"], saved["baseline"]
            rows = list(saved["rows"])
            traces = [jax.tree.map(lambda x: x[i], saved["traces"]) for i in range(last + 1)]
            start = last + 1
    for task in range(start, T):
        new_state, row, trace = step(state, keys, jnp.int32(task), hp)
        finite = np.asarray(trace["finite"])  # [S, E]
        if not finite.all():
            try:
                check_finite(finite[:, None, :], where=label)
            except DivergenceError as err:
                seed = seeds[err.seed]
                raise DivergenceError(f"{label} diverged at seed {seed}, task {task}, episode {err.episode}: the loss, "
                                      f"a gradient or the parameters became non-finite (lower the learning rate or "
                                      f"the penalty strength); nothing of task {task} was written, the last good "
                                      f"checkpoint is kept", seed=seed, task=task, episode=err.episode) from None
        state = new_state
        rows.append(row)
        traces.append(trace)
        if folder is not None:
            folder.save_checkpoint(task, {"state": state, "rows": jnp.stack(rows),
                                          "traces": jax.tree.map(lambda *x: jnp.stack(x), *traces),
                                          "baseline": baseline}, digest)
        if progress is not None:
            progress(task + 1, T)
    R = jnp.stack(rows, axis=1)                                              # [S, T, T]
    stacked = jax.tree.map(lambda *x: jnp.stack(x, axis=1), *traces)      # [S, T, E]
    results = RunResults(R, baseline, stacked)
    if folder is not None:
        folder.write_results(R, baseline, {k: np.asarray(v) for k, v in stacked.items()}, seeds)
    return state, results
