"""Run folders, atomic files, orbax checkpoints after every task, resume, and the NaN alarm.

One folder per run::

    config.json        the resolved configuration, library / jax / flax / optax versions, platform, command, the
                       configuration's hash and the hash of the file's own contents
    seeds.json         the seeds
    traces.jsonl       one line per (seed, task, episode): every per-episode record of the run (``task`` and
                       ``episode`` are array indices, from 0); one line per (seed, task), without ``episode``, when
                       the run keeps one summary per task (``RunConfig(traces="tasks")``)
    R_seed{k}.csv      the performance matrix of seed k (first row: the untrained baseline; rows and columns
                       labelled task_1 ... task_T, as tables and figures number tasks; a task not evaluated after
                       some task, ``RunConfig(evaluate_every=k > 1)``, is ``nan`` there)
    summary.md/.json   mean and 95% interval across seeds of every metric (:func:`clloop_jax.report.summary`)
    plots/*.png        matrix.png, scores.png, divergence.png
    checkpoints/       task_{i}/ (orbax) and task_{i}.json, one per finished task (i the task's index, from 0)
    .lock              while a run writes the folder: its PID, host, start time and command (``fcntl.flock``)
    tensorboard/ wandb/  with ``clloop run --log``: the live mirrors of :mod:`clloop_jax.workflow.trackers`

Every file is written to a temporary name and renamed, and a checkpoint's ``.json`` is written only after its orbax
folder is complete, so an interrupted run never leaves a half-written file or checkpoint: the last complete
checkpoint is the one ``resume`` continues from, and resuming gives bitwise the numbers of an uninterrupted run.
One process writes a folder at a time (:class:`RunFolder`'s lock; a second one gets :class:`RunFolderBusy`); resume
removes what a killed writer left (temporary files, unsealed checkpoints), writes again the files of the run's start
that are missing, and refuses a ``config.json`` edited by hand. SIGINT and SIGTERM stop a run between tasks
(:class:`RunInterrupted`).
:func:`execute` drives a run over seeds (``jax.vmap``) one task at a time; when an update becomes non-finite it raises
:class:`~clloop_jax.run.errors.NonFiniteError` naming the seed, task and episode, keeping the last good checkpoint and
writing nothing for the diverged task.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import sys
from typing import Dict, Optional

import jax
import jax.numpy as jnp
import numpy as np

from clloop_jax.workflow.files import (CheckpointError, config_differences, config_hash, contents_hash, hash_of,
                                       jsonable, versions, write_atomic)
from clloop_jax.workflow import results as results_lib
from clloop_jax.workflow.lock import LOCK_NAME, FolderLock, RunFolderError, check_place, say

__all__ = ["RunFolder"]


#: The files a run writes; tensorboard/ and wandb/ by the trackers of ``clloop run --log``, detection.json and
#: schedule.json by a stream with hidden switches.
_RESULT_FILES = ("config.json", "seeds.json", "traces.jsonl", "summary.md", "summary.json", "timing.json", "plots",
                 "checkpoints", "tensorboard", "wandb", "detection.json", "schedule.json")


_TEMP = re.compile(r"^\..+\.tmp\d+$|.+\.tmp\.png$|.+\.orbax-checkpoint-tmp.*$")


_SEAL = re.compile(r"^task_(\d+)\.json$")


_CKPT = re.compile(r"^task_(\d+)$")


def _upgraded_hash(stored, config) -> Optional[str]:
    """For an :class:`~clloop_jax.workflow.experiment.ExperimentConfig`, the hash of the experiment the stored settings
    ``stored`` describe, the fields they lack taking today's defaults (None when ``config`` is another kind of
    configuration or the settings no longer parse)."""
    from clloop_jax.workflow.experiment import ExperimentConfig, experiment_from_dict
    if not isinstance(config, ExperimentConfig) or not isinstance(stored, dict):
        return None
    try:
        return config_hash(experiment_from_dict(stored))
    except (TypeError, ValueError):
        return None


@dataclasses.dataclass
class RunFolder:
    """A run's folder. ``overwrite`` empties an existing one; ``resume`` continues in it; otherwise an existing
    non-empty folder is refused (``FileExistsError``), so nothing is lost by accident.

    Constructing one only checks (the path, and that the folder's state fits the mode); nothing is created or
    removed until the folder is locked, by :func:`execute` or ``with folder:``. The lock (``.lock`` inside, an
    exclusive ``fcntl.flock``) is held for the whole run: a second writer, ``overwrite`` included, is refused with
    :class:`RunFolderBusy` naming the holder before anything is touched; the lock of a process that died is taken
    over with a message. Once locked, the folder is made consistent: temporary files of a writer that died are
    removed, a checkpoint whose orbax folder is missing no longer counts (its seal is removed, and the run falls back
    to the last complete task), and each such repair is printed to stderr and listed in ``notes``. A folder with
    no ``config.json`` and no sealed checkpoint holds no run: it counts as empty (a plain run reuses it, ``resume``
    starts it).
    """

    path: str
    overwrite: bool = False
    resume: bool = False

    def __post_init__(self):
        for name in ("overwrite", "resume"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"RunFolder: {name} must be True or False, got {getattr(self, name)!r}")
        if self.overwrite and self.resume:
            raise ValueError("overwrite and resume exclude each other")
        check_place(self.path)
        self.path = os.fspath(self.path)
        self.notes: list = []
        self._lock: Optional[FolderLock] = None
        self._depth = 0
        self._made = False
        self._check_mode()

    # ----- the folder's state ------------------------------------------------------------------------------
    def _entries(self, sub: str = "") -> list:
        folder = os.path.join(self.path, sub)
        return sorted(os.listdir(folder)) if os.path.isdir(folder) else []

    def _seals(self) -> list:
        return sorted(int(m.group(1)) for m in map(_SEAL.match, self._entries("checkpoints")) if m)

    def _foreign(self) -> list:
        """The entries that a run does not write."""
        return [n for n in self._entries() if n not in _RESULT_FILES and n != LOCK_NAME
                and not re.match(r"^R_seed\d+\.csv$", n) and not _TEMP.match(n)]

    def holds_run(self) -> bool:
        """Whether the folder holds a run: a ``config.json`` or a sealed checkpoint."""
        return os.path.isfile(self.file("config.json")) or bool(self._seals())

    def _check_mode(self) -> None:
        exists = os.path.isdir(self.path)
        if self.resume:
            if not exists:
                raise FileNotFoundError(f"--resume: {self.path!r} holds no run (the folder does not exist)")
            if not self.holds_run() and self._foreign():
                raise FileNotFoundError(f"--resume: {self.path!r} holds no run (no config.json, no finished task)")
        elif self.overwrite:
            if exists and not self.holds_run() and self._foreign():
                raise RunFolderError(f"--overwrite: {self.path!r} does not look like a run folder (it holds "
                                     f"{', '.join(self._foreign()[:5])}); --overwrite deletes run folders only")
        elif exists and (self.holds_run() or self._foreign()):
            raise FileExistsError(f"the run folder {self.path!r} exists and is not empty; pass --overwrite to replace "
                                  f"it or --resume to continue it")

    def _leftovers(self) -> list:
        """Temporary files and folders of a writer that stopped, and checkpoints without a seal (relative paths)."""
        out = [n for n in self._entries() if _TEMP.match(n)]
        out += [os.path.join("plots", n) for n in self._entries("plots") if _TEMP.match(n)]
        seals = set(self._seals())
        for n in self._entries("checkpoints"):
            m = _CKPT.match(n)
            if _TEMP.match(n) or (m and int(m.group(1)) not in seals):
                out.append(os.path.join("checkpoints", n))
        return out

    @staticmethod
    def _remove(path: str) -> None:
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        elif os.path.lexists(path):
            os.unlink(path)

    def _prepare(self) -> None:
        """Under the lock: the mode's checks again (the folder may have changed since), then the repairs."""
        self._check_mode()
        if self.overwrite or not self.holds_run():
            keep = {LOCK_NAME} | (set() if self.overwrite else set(self._foreign()))
            removed = [n for n in self._entries() if n not in keep]
            for n in removed:
                self._remove(self.file(n))
            if not self.overwrite and (self.resume or removed):
                say(self.path, "holds no run yet (no config.json, no finished task): starting it"
                     + (f" (removed what an interrupted start left: {', '.join(removed)})" if removed else ""),
                     self.notes)
            return
        leftovers = self._leftovers()
        for rel in leftovers:
            self._remove(self.file(rel))
        if leftovers:
            say(self.path, f"removed what an interrupted writer left: {', '.join(leftovers)}", self.notes)
        seals = self._seals()
        orphans = [t for t in seals if not os.path.isdir(self._ckpt(t))]
        for t in orphans:
            os.unlink(self._ckpt(t) + ".json")
        if orphans:
            last = self.latest_checkpoint()
            say(self.path, ", ".join(f"checkpoints/task_{t}/" for t in orphans) + " missing though sealed (seal "
                 "removed); " + (f"continuing from task {last}, the last complete one" if last is not None
                    else "no complete checkpoint is left: starting from the first task"), self.notes)

    # ----- the lock ----------------------------------------------------------------------------------------
    def __enter__(self) -> "RunFolder":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def acquire(self) -> "RunFolder":
        """Locks the folder for this process (creating it when missing) and makes it consistent (see the class);
        nested calls count. :class:`RunFolderBusy` when another live process holds it."""
        if self._depth:
            self._depth += 1
            return self
        check_place(self.path)
        self._check_mode()
        if not os.path.isdir(self.path):
            try:
                os.makedirs(self.path)
            except OSError as err:
                raise RunFolderError(f"{self.path!r}: cannot create the run folder ({err.strerror})") from None
            self._made = True
        self._lock = FolderLock(self.path, self.notes)
        self._depth = 1
        try:
            self._prepare()
        except BaseException:
            self.release()
            raise
        return self

    def release(self) -> None:
        """Unlocks the folder (after the last nested :meth:`acquire`); a folder this process made and left empty
        is removed again."""
        if not self._depth:
            return
        self._depth -= 1
        if self._depth:
            return
        lock, self._lock = self._lock, None
        lock.release()
        if self._made and not os.listdir(self.path):
            try:
                os.rmdir(self.path)
            except OSError:
                pass
            self._made = False

    @property
    def locked(self) -> bool:
        """Whether this object holds the folder's lock."""
        return bool(self._depth)

    def file(self, name: str) -> str:
        return os.path.join(self.path, name)

    def write_json(self, name: str, value) -> str:
        return write_atomic(self.file(name), json.dumps(jsonable(value), indent=1) + "\n")

    def write_text(self, name: str, text: str) -> str:
        return write_atomic(self.file(name), text)

    # ----- the configuration -----------------------------------------------------------------------------
    def write_config(self, config, seeds) -> str:
        """``config.json`` (resolved config, versions, platform, the config's hash and the hash of the file's own
        contents) and ``seeds.json``; returns the config's hash.

        A folder that holds a run keeps its files: ``config.json`` is checked against this configuration and against
        its own hash (a file edited by hand is refused naming the fields that differ), ``seeds.json`` against these
        seeds; either one missing is written again (``config.json`` only when the folder's sealed checkpoints were
        saved by this configuration). ``CheckpointError`` naming the file otherwise."""
        digest = config_hash(config)
        seeds = [int(s) for s in seeds]
        path = self.file("config.json")
        had_config = os.path.exists(path)
        if had_config:
            digest = self._check_config(path, config, digest)
        else:
            seals = self._seals()
            if seals:
                meta = self._seal(seals[-1])
                if meta.get("config_hash") != digest:
                    raise CheckpointError(f"{self._ckpt(seals[-1])}.json: saved by a run of another configuration "
                                          f"(hash {meta.get('config_hash')}, this run {digest}); config.json is "
                                          f"missing, so it cannot be written again for this run")
                say(self.path, "config.json was missing: written again (this configuration is the one its "
                     "checkpoints were saved with)", self.notes)
            record = {"config": jsonable(config), "config_hash": digest, "versions": versions(),
                      "command": list(sys.argv)}
            record["contents_hash"] = contents_hash(record)
            self.write_json("config.json", record)
        path = self.file("seeds.json")
        if os.path.exists(path):
            try:
                with open(path) as f:
                    stored = json.load(f)
            except (OSError, ValueError) as err:
                raise CheckpointError(f"{path}: cannot read the seeds ({err})") from None
            if stored != seeds:
                raise CheckpointError(f"{path}: the folder's run has seeds {stored}, this run {seeds}")
        else:
            if had_config:
                say(self.path, "seeds.json was missing: written again", self.notes)
            self.write_json("seeds.json", seeds)
        return digest

    def _seal(self, task: int) -> dict:
        try:
            with open(self._ckpt(task) + ".json") as f:
                return json.load(f)
        except (OSError, ValueError) as err:
            raise CheckpointError(f"{self._ckpt(task)}.json: cannot read the checkpoint's metadata ({err})") from None

    def holds(self, config) -> bool:
        """Whether the folder's ``config.json`` records ``config``: the same hash, or, for an experiment, settings
        that give ``config`` once the fields they lack take their defaults (a folder written before those fields
        existed)."""
        try:
            with open(self.file("config.json")) as f:
                stored = json.load(f)
        except (OSError, ValueError):
            return False
        return isinstance(stored, dict) and config_hash(config) in (stored.get("config_hash"),
                                                                    _upgraded_hash(stored.get("config"), config))

    def _check_config(self, path: str, config, digest: str) -> str:
        """Refuses a ``config.json`` edited by hand or of another configuration; returns the hash the folder's
        checkpoints carry (the stored one, also when it was written before some fields of ``config`` existed and
        their defaults give ``config``)."""
        try:
            with open(path) as f:
                stored = json.load(f)
            if not isinstance(stored, dict):
                raise ValueError("not a JSON object")
        except (OSError, ValueError) as err:
            raise CheckpointError(f"{path}: cannot read the run's configuration ({err})") from None
        diffs = config_differences(stored.get("config"), jsonable(config))
        listed = "; ".join(f"{k} ({a!r} in config.json, {b!r} in this run)" for k, a, b in diffs[:10])
        if "contents_hash" in stored:
            edited = stored["contents_hash"] != contents_hash(stored)
        else:   # written before config.json carried its own hash
            edited = stored.get("config_hash") != hash_of(stored.get("config"))
        if edited:
            raise CheckpointError(f"{path} was edited after the run wrote it (its contents no longer match their "
                                  f"hash); " + (f"fields that differ from this run's configuration: {listed}" if diffs
                                                else "its configuration equals this run's, so a field outside it, or "
                                                     "the hash, was changed")
                                  + "; restore the file, or start a new folder")
        if stored.get("config_hash") != digest and _upgraded_hash(stored.get("config"), config) == digest:
            say(self.path, "config.json was written before some settings existed; their defaults give this run's "
                "configuration", self.notes)
            return stored["config_hash"]
        if stored.get("config_hash") != digest:
            raise CheckpointError(f"{path}: the folder holds a run of another configuration (hash "
                                  f"{stored.get('config_hash')}, this one {digest})"
                                  + (f": {listed}" if listed else "")
                                  + "; resume it with its own configuration or start a new folder")
        return digest

    # ----- checkpoints -----------------------------------------------------------------------------------
    def _ckpt(self, task: int) -> str:
        return os.path.join(self.path, "checkpoints", f"task_{task}")

    def save_checkpoint(self, task: int, tree, digest: str, notes: Optional[dict] = None) -> str:
        """Saves the pytree of arrays ``tree`` after task ``task`` (orbax), then its metadata (the checkpoint's seal),
        which carries ``notes`` (JSON: what the run found so far that is no array, read back by
        :meth:`checkpoint_notes`)."""
        import orbax.checkpoint as ocp
        leaves, treedef = jax.tree.flatten(tree)
        path = self._ckpt(task)
        if os.path.exists(path + ".json"):   # unseal first: a checkpoint being replaced never counts half-written
            os.unlink(path + ".json")
        if os.path.exists(path):
            shutil.rmtree(path)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        checkpointer = ocp.StandardCheckpointer()
        checkpointer.save(os.path.abspath(path), {f"leaf_{i:05d}": np.asarray(x) for i, x in enumerate(leaves)})
        checkpointer.wait_until_finished()
        meta = {"task": task, "config_hash": digest, "treedef": str(treedef),
                "shapes": [list(np.shape(x)) for x in leaves], "dtypes": [str(np.asarray(x).dtype) for x in leaves]}
        if notes is not None:
            meta["notes"] = jsonable(notes)
        write_atomic(path + ".json", json.dumps(meta) + "\n")
        return path

    def checkpoint_notes(self, task: int) -> dict:
        """The ``notes`` saved with the checkpoint of task ``task`` (empty for one saved without)."""
        notes = self._seal(task).get("notes", {})
        return notes if isinstance(notes, dict) else {}

    def latest_checkpoint(self) -> Optional[int]:
        """The last task whose checkpoint is complete (sealed), or None."""
        done = [t for t in self._seals() if os.path.isdir(self._ckpt(t))]
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

    # ----- results (clloop_jax.workflow.results) -----------------------------------------------------------
    def read_results(self):
        """``(R [S, T, T], baseline [S, T], seeds)`` of the finished run (:func:`~clloop_jax.workflow.results.read_results`)."""
        return results_lib.read_results(self)

    def read_seeds(self) -> Optional[list]:
        """The seeds of the folder's run (``seeds.json``); None for a folder without a readable one."""
        try:
            with open(self.file("seeds.json")) as f:
                return [int(s) for s in json.load(f)]
        except (OSError, ValueError, TypeError):
            return None

    def read_timing(self) -> Optional[dict]:
        """The run's ``timing.json``, written after each task: ``task_seconds`` (each task's wall-clock seconds in
        the session that trained it; None for a task trained before timings were kept), their sum ``seconds``, and
        ``session_starts`` (the first task of each session: its time includes that session's compilation); None for
        a folder without the file. The one file of a folder that depends on the machine's speed, not only on the
        run."""
        try:
            with open(self.file("timing.json")) as f:
                return json.load(f)
        except (OSError, ValueError):
            return None

    def read_traces(self) -> Dict[str, np.ndarray]:
        """The finished run's traces by name (:func:`~clloop_jax.workflow.results.read_traces`)."""
        return results_lib.read_traces(self)

    def write_results(self, R, baseline, traces: Dict[str, np.ndarray], seeds, not_learned=(), lengths=None) -> None:
        """The run's result files (:func:`~clloop_jax.workflow.results.write_results`)."""
        results_lib.write_results(self, R, baseline, traces, seeds, not_learned, lengths)
