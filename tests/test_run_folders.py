"""Run folders one can trust: one writer at a time (a lock naming its holder), files that are whole and consistent
after any interruption, a configuration that cannot be edited behind the run's back, a clean stop on SIGINT and
SIGTERM, clean errors for an --out that cannot be a run folder, a run too large for the machine refused before
anything is built, and a task that was not learned named in the summary."""
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from test_workflow import ROOT, TINY

from clloop_jax.workflow import cli, memory
from clloop_jax.workflow.execute import RunInterrupted, execute, resume_command, run_seconds, unmoved
from clloop_jax.workflow.lock import LOCK_NAME, RunFolderBusy, RunFolderError
from clloop_jax.workflow.runs import RunFolder

ARGS = ["--preset", "tiny", "--num-tasks", "3", "--quiet", "--no-cache"]
TEMP_MARKERS = (".tmp", "orbax-checkpoint-tmp")


def run(out, *extra):
    """``clloop run`` in this process on the 3-task tiny run; returns (exit code, message)."""
    try:
        return cli.main(["run", *ARGS, "--out", str(out), *extra]), ""
    except SystemExit as done:
        return done.code, str(done.code)


def files(folder):
    """Every file of a run folder with its bytes, but the insides of orbax's checkpoint folders (which hold write
    times); their arrays are compared by :func:`assert_same_run`."""
    out = {}
    for d, dirs, names in os.walk(folder):
        rel = os.path.relpath(d, folder)
        if rel.startswith(os.path.join("checkpoints", "task_")):
            continue
        for n in names:
            with open(os.path.join(d, n), "rb") as f:
                out[os.path.normpath(os.path.join(rel, n))] = f.read()
        out.update({os.path.normpath(os.path.join(rel, n)) + "/": b"" for n in dirs})
    return out


def temporaries(folder):
    return [os.path.join(d, n) for d, dirs, names in os.walk(folder) for n in dirs + names
            if any(m in n for m in TEMP_MARKERS) or n == LOCK_NAME]


def assert_same_run(folder, reference):
    """Bitwise the same files (names and bytes) as ``reference``, no temporary file or lock left, and bitwise the
    same arrays in the last checkpoint."""
    assert temporaries(folder) == []
    got, want = files(folder), files(reference)
    # timing.json holds wall-clock seconds, the one file that is not bitwise a function of the run
    timing = RunFolder(folder, resume=True).read_timing()
    starts = timing["session_starts"]
    assert starts[0] == 0 and starts == sorted(set(starts)) and len(starts) <= 2
    assert len(timing["task_seconds"]) == 3 and all(t > 0 for t in timing["task_seconds"])
    got.pop("timing.json"), want.pop("timing.json")
    assert sorted(got) == sorted(want)
    for name in want:
        assert got[name] == want[name], name
    last = [RunFolder(f, resume=True).latest_checkpoint() for f in (folder, reference)]
    assert last == [2, 2]
    a, b = (RunFolder(f, resume=True).checkpoint_arrays(2) for f in (folder, reference))
    assert len(a) == len(b) > 10
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted run: the result every interrupted and resumed run must equal."""
    out = tmp_path_factory.mktemp("reference") / "run"
    assert run(out) == (0, "")
    return str(out)


def copy_of(reference, tmp_path, name="run"):
    out = str(tmp_path / name)
    shutil.copytree(reference, out)
    return out


def remove(folder, *names):
    for n in names:
        path = os.path.join(folder, n)
        shutil.rmtree(path) if os.path.isdir(path) else os.unlink(path)


def half(folder, name, source=None, size=None):
    """A temporary file as a writer killed during its write leaves it: ``size`` bytes (default half) of ``source``."""
    data = open(os.path.join(folder, source), "rb").read() if source else b'{"half": '
    with open(os.path.join(folder, name), "wb") as f:
        f.write(data[: len(data) // 2 if size is None else size])


# ----- the path given to --out ---------------------------------------------------------------------------------


def test_an_out_that_cannot_be_a_run_folder_is_named_and_nothing_is_created(tmp_path, monkeypatch):
    a_file = tmp_path / "notes.txt"
    a_file.write_text("mine")
    code, message = run(a_file)
    assert code != 0 and repr(str(a_file)) in message and "is a file, not a folder" in message
    code, message = run(a_file / "sub" / "run")
    assert repr(str(a_file)) in message and "is a file, so no folder can be made under it" in message
    assert a_file.read_text() == "mine"
    # A place without write permission (faked: the suite may run as root, who may write anywhere).
    monkeypatch.setattr(os, "access", lambda path, mode: not str(path).startswith(str(tmp_path / "locked")))
    (tmp_path / "locked").mkdir()
    code, message = run(tmp_path / "locked" / "run")
    assert repr(str(tmp_path / "locked")) in message and "permission denied" in message
    monkeypatch.undo()
    # A place where the folder cannot be made at all: the system's error, named.
    def refuse(path, *a, **k):
        raise PermissionError(13, "Permission denied", path)
    monkeypatch.setattr(os, "makedirs", refuse)
    code, message = run(tmp_path / "forbidden")
    assert "forbidden" in message and "cannot create the run folder (Permission denied)" in message
    monkeypatch.undo()
    assert sorted(os.listdir(tmp_path)) == ["locked", "notes.txt"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_a_read_only_place_is_named(tmp_path):
    (tmp_path / "ro").mkdir(mode=0o500)
    code, message = run(tmp_path / "ro" / "run")
    assert "permission denied" in message and repr(str(tmp_path / "ro")) in message


def test_a_validation_error_leaves_the_folder_as_it_was_found(tmp_path, capsys):
    out = tmp_path / "run"
    code, message = run(out, "--devices", "5")
    assert code != 0 and "--devices" in message and not out.exists()
    out.mkdir()
    code, message = run(out, "--devices", "5")
    assert "--devices" in message and os.listdir(out) == []
    # An out-of-range value is named with its range (the float32 hint only where float32 overflows).
    for option, value, text in (("--learning-rate", "0", "learning_rate must be a finite number > 0, got 0.0"),
                                ("--gamma", "2", "gamma must be a finite number >= 0 and <= 1, got 2.0"),
                                ("--lam", "-1", "lam must be a finite number >= 0, got -1.0"),
                                ("--lam", "1e39", "(it overflows float32")):
        capsys.readouterr()
        code, message = run(out, "--strategy", "online_ewc", option, value)
        assert code not in (0, None)  # refused: by the parser (2, on stderr) or when the run is built (one line)
        err = " ".join((capsys.readouterr().err + message).replace("│", " ").split())
        assert text in err and ("overflow" in err) == ("e39" in value), err
    assert os.listdir(out) == []


# ----- the memory a run needs ----------------------------------------------------------------------------------


def state_bytes(exp):
    """What ``jax.eval_shape`` says the state of ``exp``'s run takes for all its seeds."""
    run, hp = exp.build()
    state = jax.eval_shape(lambda k: run.init_on(run.source.tasks, k, hp), jax.random.key(0))
    return run, hp, exp.seeds * sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(state))


@pytest.mark.parametrize("strategy", ["ewc", "derpp"])
def test_the_plain_estimate_of_the_tiny_run_agrees_with_eval_shape(strategy):
    exp = TINY.with_strategy(strategy)
    plain = exp.memory_estimate()
    run, hp, state = state_bytes(exp)
    ratio = (plain.part("parameters") + plain.part("rehearsal")) / state    # the state: close to exact
    assert 0.9 < ratio < 1.1, ratio
    traced = memory.estimate_run_memory(run, hp, exp.seeds)
    assert traced.part("parameters") == state
    assert 1 / 3 < plain.total / traced.total < 3, (plain.total, traced.total)
    assert 10_000 < plain.total < 10_000_000


@pytest.mark.parametrize("option, value", [("--hidden-dim", "1000000"), ("--seeds", "1000000000"),
                                           ("--episode-length", "100000000"), ("--num-envs", "1000000000"),
                                           ("--observation-dim", "1000000000"), ("--num-modalities", "1000000000"),
                                           ("--action-dim", "1000000000"), ("--latent-dim", "1000000"),
                                           ("--num-tasks", "1000000"), ("--episodes-per-task", "10000000000")])
def test_a_run_too_large_for_the_machine_is_refused_at_once_naming_the_estimate(option, value, tmp_path):
    out = tmp_path / "run"
    compiled = []
    listen = lambda name, secs, **kw: compiled.append(name) if name.endswith("backend_compile_duration") else None
    jax.monitoring.register_event_duration_secs_listener(listen)
    try:
        code, message = run(out, option, value)
    finally:
        jax.monitoring.unregister_event_duration_listener(listen)
    limit, where = memory.machine_memory()
    assert re.match(rf"clloop run: this run would need about [0-9.]+ [KMGTPE]iB of memory, more than the "
                    rf"{re.escape(memory.format_bytes(limit))} of {where}; the largest parts: .+: [0-9.]+ [KMGTPE]iB",
                    message), message
    assert option[2:].replace("-", "_") + " " in message        # the size that makes it too large, with its value
    assert "\n" not in message and not out.exists()
    assert compiled == []                                  # refused before anything is compiled


def test_compare_checks_the_memory_of_every_strategy_before_running_one(tmp_path):
    out = tmp_path / "cmp"
    with pytest.raises(SystemExit) as refused:
        cli.main(["compare", *ARGS, "--out", str(out), "--strategies", "none,replay", "--episode-length",
                  "100000000"])
    assert str(refused.value.code).startswith("clloop compare: the run of none would need about ")
    assert not out.exists()


def test_execute_refuses_a_built_run_the_machine_cannot_hold_before_the_folder_is_made(tmp_path, monkeypatch):
    run_, hp, _ = state_bytes(TINY)
    need = memory.estimate_run_memory(run_, hp, [0, 1]).total
    monkeypatch.setattr(memory, "_host_memory", lambda: (need // 2, "a machine this test pretends is small"))
    out = tmp_path / "run"
    for config in (None, TINY):     # the shapes of the built run, or the plain estimate of the configuration
        with pytest.raises(ValueError, match=r"^this run would need about .+ of memory, more than the .+ of a "
                                             r"machine this test pretends is small; the largest parts: "):
            execute(run_, hp, [0, 1], folder=RunFolder(str(out)), config=config)
        assert not out.exists()


# ----- a task that was not learned ------------------------------------------------------------------------------


def test_only_moves_within_float32_rounding_count_as_unmoved():
    w = np.tile(np.array([1.0, 0.0, -3.0, 1e6], np.float32), (5, 1))
    moved = w.copy()
    moved[1, 0] = np.nextafter(np.nextafter(w[1, 0], 2), 2)            # 2 units in the last place: rounding
    moved[1, 3] = np.nextafter(w[1, 3], 0)
    moved[2, 1] = 1e-30                                                  # a zero that moves at all has moved
    moved[3, 3] = w[3, 3] + 1.0                                          # 16 units in the last place of 1e6
    moved[4, 2] = -3.0001
    before, after = {"w": w, "b": np.zeros((5, 2), np.float32)}, {"w": moved, "b": np.zeros((5, 2), np.float32)}
    assert unmoved(before, after).tolist() == [True, True, False, False, False]
    assert unmoved(before, jax.tree.map(lambda x: x + 0.5, before)).tolist() == [False] * 5


def test_a_task_the_penalty_kept_from_being_learned_is_named_in_the_summary(reference, tmp_path, capsys):
    def summary(folder):
        return json.load(open(os.path.join(folder, "summary.json"))), open(os.path.join(folder, "summary.md")).read()
    normal, text = summary(reference)                                    # the default lam: every task learned
    assert normal["not_learned"] == [] and "not learned" not in text
    out = str(tmp_path / "strong")
    capsys.readouterr()
    assert run(out, "--lam", "1e30") == (0, "")
    lines = [f"task {t} was not learned by seeds 0, 1: no parameter moved beyond float32 rounding; the penalty "
             f"(lam 1e+30) may be too strong" for t in (2, 3)]
    assert [line for line in capsys.readouterr().err.splitlines() if "learned" in line] == [f"ewc: {x}" for x in lines]
    strong, text = summary(out)
    assert [(w["task"], w["task_index"], w["seeds"], w["text"]) for w in strong["not_learned"]] == \
        [(2, 1, [0, 1], lines[0]), (3, 2, [0, 1], lines[1])]
    assert text.endswith("\nWarnings:\n\n- " + lines[0] + "\n- " + lines[1] + "\n")
    R = np.array(strong["mean_R"])                                       # the premise: nothing changed after task 1
    assert (R[1] == R[0]).all() and (R[2] == R[0]).all() and not (np.array(normal["mean_R"])[1] == R[0]).all()
    # Resumed after task 2, the run still names task 2 (its finding is kept with the checkpoint).
    resumed = copy_of(out, tmp_path, "resumed")
    remove(resumed, "checkpoints/task_2", "checkpoints/task_2.json", "summary.json", "summary.md")
    assert run(resumed, "--lam", "1e30", "--resume") == (0, "")
    assert summary(resumed) == summary(out)


# ----- the lock ------------------------------------------------------------------------------------------------


def test_a_locked_folder_refuses_a_second_writer_naming_the_holder_and_is_left_untouched(tmp_path):
    out = str(tmp_path / "run")
    with RunFolder(out) as first:
        assert first.locked
        holder = json.load(open(os.path.join(out, LOCK_NAME)))
        assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname()
        open(os.path.join(out, "config.json"), "w").write("{}")     # the first writer's work so far
        before = files(out)
        for mode in ({"overwrite": True}, {"resume": True}):
            with pytest.raises(RunFolderBusy, match=rf"in use by another run \(PID {os.getpid()} on "
                                                    rf"{socket.gethostname()}, started 20") as err:
                RunFolder(out, **mode).acquire()
            assert err.value.holder["pid"] == os.getpid()
        assert files(out) == before                                  # --overwrite deleted nothing
        # The command line says the same, without a traceback.
        code, message = run(out, "--overwrite", "--lam", "10")
        assert "is in use by another run (PID" in message
    assert not first.locked and LOCK_NAME not in os.listdir(out)     # released: the lock file goes with it


def test_a_dead_writers_lock_is_taken_over_and_another_hosts_is_not(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (out / LOCK_NAME).write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname(),
                                             "started": "2025-01-01T00:00:00", "command": ["clloop", "run"]}))
    with RunFolder(str(out)) as folder:
        assert json.load(open(out / LOCK_NAME))["pid"] == os.getpid()
    assert f"took over the lock of a run that ended without releasing it (PID {dead.pid}" in folder.notes[0]
    assert "took over the lock" in capsys.readouterr().err
    (out / LOCK_NAME).write_text(json.dumps({"pid": 1, "host": "elsewhere", "started": "x"}))
    with pytest.raises(RunFolderBusy, match="on elsewhere.*delete .*\\.lock"):
        RunFolder(str(out)).acquire()


def test_a_second_writer_started_during_a_run_is_refused_and_the_first_ends_intact(reference, tmp_path,
                                                                                    monkeypatch):
    """`--overwrite --lam 10` and a concurrent `--resume`, started while a run is between its tasks, are refused
    naming the running process; the running one ends with bitwise the files of an undisturbed run."""
    out = str(tmp_path / "run")
    refusals = []
    save = RunFolder.save_checkpoint

    def save_then_intrude(self, task, tree, digest, **kwargs):
        path = save(self, task, tree, digest, **kwargs)
        if task == 0:
            refusals.append(run(out, "--overwrite", "--lam", "10"))
            refusals.append(run(out, "--resume"))
        return path
    monkeypatch.setattr(RunFolder, "save_checkpoint", save_then_intrude)
    assert run(out) == (0, "")
    assert len(refusals) == 2
    for code, message in refusals:
        assert f"is in use by another run (PID {os.getpid()}" in message
    assert json.load(open(os.path.join(out, "config.json")))["config"]["train"]["lam"] is None
    assert_same_run(out, reference)


# ----- interrupted writes, then --resume -----------------------------------------------------------------------

RESULTS = ("traces.jsonl", "R_seed0.csv", "R_seed1.csv", "summary.md", "summary.json", "plots")


def killed_writing_config(d):
    remove(d, *os.listdir(d))
    half(d, ".config.json.tmp99999")


def killed_writing_seeds(d):
    remove(d, *[n for n in os.listdir(d) if n != "config.json"])
    half(d, ".seeds.json.tmp99999")


def seeds_lost_after_checkpoints(d):                 # the state a kill while seeds.json was written used to leave
    remove(d, "seeds.json")
    half(d, ".seeds.json.tmp99999")


def config_lost_after_checkpoints(d):
    remove(d, "config.json")


def killed_writing_a_checkpoint(d):
    remove(d, *RESULTS, "checkpoints/task_1.json", "checkpoints/task_2", "checkpoints/task_2.json")
    os.rename(os.path.join(d, "checkpoints/task_1"), os.path.join(d, "checkpoints/task_1.orbax-checkpoint-tmp-17"))


def killed_writing_a_seal(d):
    remove(d, *RESULTS, "checkpoints/task_2.json")
    half(d, "checkpoints/.task_2.json.tmp99999", "checkpoints/task_1.json")


def killed_writing_traces(d):
    remove(d, *RESULTS)
    half(d, ".traces.jsonl.tmp99999", size=0)


def killed_writing_a_csv(d):
    remove(d, "R_seed1.csv", "summary.md", "summary.json", "plots")
    half(d, ".R_seed1.csv.tmp99999", "R_seed0.csv")


def killed_writing_a_plot(d):
    remove(d, "plots/scores.png", "plots/divergence.png")
    half(d, "plots/scores.png.tmp.png", "plots/matrix.png")


def checkpoint_folder_deleted(d):
    remove(d, "checkpoints/task_2", "summary.json")


SCENARIOS = {
    "config.json": (killed_writing_config, "holds no run yet"),
    "seeds.json": (killed_writing_seeds, "removed what an interrupted writer left: .seeds.json.tmp99999"),
    "seeds.json after checkpoints": (seeds_lost_after_checkpoints, "seeds.json was missing: written again"),
    "config.json after checkpoints": (config_lost_after_checkpoints, "config.json was missing: written again"),
    "a checkpoint": (killed_writing_a_checkpoint, "checkpoints/task_1.orbax-checkpoint-tmp-17"),
    "a checkpoint's seal": (killed_writing_a_seal, "checkpoints/.task_2.json.tmp99999, checkpoints/task_2"),
    "traces.jsonl": (killed_writing_traces, ".traces.jsonl.tmp99999"),
    "a CSV": (killed_writing_a_csv, ".R_seed1.csv.tmp99999"),
    "a plot": (killed_writing_a_plot, "plots/scores.png.tmp.png"),
    "a deleted checkpoint folder": (checkpoint_folder_deleted, "checkpoints/task_2/ missing though sealed (seal "
                                    "removed); continuing from task 1, the last complete one"),
}


@pytest.mark.parametrize("where", list(SCENARIOS))
def test_resume_after_a_kill_during_a_write_gives_the_uninterrupted_files(where, reference, tmp_path, capsys):
    """The folder a kill during each write leaves (the temporary file half-written, the target missing), resumed:
    every file bitwise as in an uninterrupted run, no temporary file left, and the repair named on stderr."""
    break_it, message = SCENARIOS[where]
    out = copy_of(reference, tmp_path)
    break_it(out)
    capsys.readouterr()
    assert run(out, "--resume") == (0, "")
    assert message in capsys.readouterr().err
    assert_same_run(out, reference)
    # the tasks the resumed session restored keep the seconds the first session measured
    timing, first = (RunFolder(f, resume=True).read_timing() for f in (out, reference))
    start = timing["session_starts"][-1]
    assert first["session_starts"] == [0] and timing["task_seconds"][:start] == first["task_seconds"][:start]
    assert run_seconds(out) == pytest.approx(sum(timing["task_seconds"]), abs=1e-2)


def test_a_folder_stopped_before_its_configuration_is_reused_by_a_plain_run(reference, tmp_path, capsys):
    out = str(tmp_path / "run")
    os.makedirs(os.path.join(out, "plots"))
    os.makedirs(os.path.join(out, "checkpoints", "task_0"))       # unsealed: no run yet
    half(out, ".config.json.tmp4242")
    capsys.readouterr()
    assert run(out) == (0, "")
    assert "holds no run yet (no config.json, no finished task): starting it (removed what an interrupted start " \
           "left: .config.json.tmp4242, checkpoints, plots)" in capsys.readouterr().err
    assert_same_run(out, reference)


def test_a_folder_holding_other_files_is_neither_reused_nor_overwritten(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("keep")
    assert "exists and is not empty" in run(out)[1]
    assert "holds no run" in run(out, "--resume")[1]
    assert "does not look like a run folder (it holds thesis.tex)" in run(out, "--overwrite")[1]
    assert os.listdir(out) == ["thesis.tex"]


# ----- the configuration's own hash ----------------------------------------------------------------------------


def test_an_edited_config_is_refused_naming_the_fields(reference, tmp_path):
    out = copy_of(reference, tmp_path)
    path = os.path.join(out, "config.json")
    record = json.load(open(path))
    record["config"]["model"]["hidden_dim"] = 64
    record["config"]["train"]["strategy"] = "si"                   # the hashes kept
    json.dump(record, open(path, "w"), indent=1)
    before = files(out)
    code, message = run(out, "--resume")
    assert "config.json was edited after the run wrote it" in message
    assert "model.hidden_dim (64 in config.json, 8 in this run)" in message
    assert "train.strategy ('si' in config.json, 'ewc' in this run)" in message
    assert files(out) == before and temporaries(out) == []
    # Not edited, but another configuration: refused naming what differs.
    out = copy_of(reference, tmp_path, "other")
    code, message = run(out, "--resume", "--lam", "10")
    assert "holds a run of another configuration" in message and "train.lam (None in config.json, 10.0 in this run)" \
        in message


# ----- signals -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_stops_between_tasks_with_one_line_and_the_resume_command(signum, code, reference, tmp_path,
                                                                          monkeypatch, capsys):
    out = str(tmp_path / "run")
    save = RunFolder.save_checkpoint
    handlers = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)

    def save_then_signal(self, task, tree, digest, **kwargs):
        path = save(self, task, tree, digest, **kwargs)
        if task == 0:
            signal.raise_signal(signum)
        return path
    monkeypatch.setattr(RunFolder, "save_checkpoint", save_then_signal)
    capsys.readouterr()
    assert run(out) == (code, "")
    err = capsys.readouterr().err.strip().splitlines()
    command = f"clloop run {' '.join(ARGS)} --out {out} --resume"
    assert err == [f"stopped after task 1 of 3; resume with: {command}"]
    assert RunFolder(out, resume=True).latest_checkpoint() == 0 and temporaries(out) == []
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == handlers   # restored
    monkeypatch.undo()
    assert cli.main(shlex.split(command)[1:]) == 0
    assert_same_run(out, reference)


def test_run_interrupted_and_the_resume_command():
    err = RunInterrupted(signal.SIGINT, 3, 6, "D")
    assert (str(err), err.exit_code) == ("stopped after task 3 of 6", 130)
    assert str(RunInterrupted(signal.SIGTERM, 0, 6, "D")) == "stopped before task 1 of 6 was done"
    assert resume_command("clloop", ["run", "--out", "my runs/a", "--overwrite"]) == \
        "clloop run --out 'my runs/a' --resume"
    assert isinstance(RunFolderBusy("x", {}), RunFolderError) and isinstance(RunFolderError("x"), ValueError)


# ----- real processes (slow) -----------------------------------------------------------------------------------


def clloop(out, *extra):
    env = dict(os.environ, PYTHONPATH=os.path.join(ROOT, "src"))
    return subprocess.Popen([sys.executable, "-m", "clloop_jax", "run", *ARGS[:-1], "--out", str(out), *extra],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(path, proc, timeout=600):
    end = time.time() + timeout
    while not os.path.exists(path):
        assert proc.poll() is None, proc.communicate()
        assert time.time() < end
        time.sleep(0.05)


@pytest.mark.slow
def test_two_processes_one_folder_and_real_signals(tmp_path):
    """Real processes: a second writer (--overwrite --lam 10) and a concurrent --resume are refused naming the
    first's PID; the first ends as an undisturbed run. SIGINT and SIGTERM sent after the first task stop the run
    with one line and 130 / 143, and the printed command resumes it to the first run's files (this process's runs
    are compiled with other XLA settings, see conftest.py, so they are not the reference here)."""
    out = tmp_path / "run"
    first = clloop(out)
    wait_for(out / "checkpoints" / "task_0.json", first)
    first.send_signal(signal.SIGSTOP)          # held between its tasks while the others try (it keeps its lock)
    try:
        for extra in (["--overwrite", "--lam", "10"], ["--resume"]):
            second = clloop(out, *extra)
            _, err = second.communicate()
            assert second.returncode == 1 and f"is in use by another run (PID {first.pid}" in err, err
            assert "Traceback" not in err
    finally:
        first.send_signal(signal.SIGCONT)
    assert first.wait() == 0, first.communicate()
    assert json.load(open(out / "config.json"))["config"]["train"]["lam"] is None
    for signum, code in ((signal.SIGINT, 130), (signal.SIGTERM, 143)):
        stopped = tmp_path / f"stopped{signum}"
        proc = clloop(stopped)
        wait_for(stopped / "checkpoints" / "task_0.json", proc)
        proc.send_signal(signal.SIGSTOP)       # so that the signal arrives before the last task is done
        proc.send_signal(signum)
        proc.send_signal(signal.SIGCONT)
        _, err = proc.communicate()
        assert proc.returncode == code, err
        lines = [line for line in err.splitlines() if line.strip()]
        assert len(lines) == 1 and re.match(r"stopped after task [12] of 3; resume with: clloop run ", lines[0]) and \
            lines[0].endswith(f"--out {stopped} --resume"), err
        resumed = subprocess.run(shlex.split(lines[0].split("resume with: ")[1].replace("clloop", sys.executable
                                 + " -m clloop_jax", 1)), cwd=ROOT, capture_output=True,
                                 env=dict(os.environ, PYTHONPATH=os.path.join(ROOT, "src")))
        assert resumed.returncode == 0, resumed.stderr
        for name in ("traces.jsonl", "R_seed0.csv", "R_seed1.csv", "summary.json", "seeds.json"):
            assert open(stopped / name).read() == open(out / name).read(), name   # compiled alike: bitwise
        assert temporaries(stopped) == []


def _old_config_json(folder, experiment, drop, change=None):
    """A config.json as a version without the train fields ``drop`` wrote it (its own hashes), optionally with one
    stored value changed: ``change = (field, value)``."""
    from clloop_jax.workflow.files import contents_hash, hash_of, jsonable
    config = jsonable(experiment)
    for field in drop:
        del config["train"][field]
    if change:
        config["train"][change[0]] = change[1]
    record = {"config": config, "config_hash": hash_of(config), "versions": {}, "command": []}
    record["contents_hash"] = contents_hash(record)
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(record, f)
    return record["config_hash"]


def test_a_folder_written_before_a_setting_existed_is_read_with_its_default(tmp_path):
    from clloop_jax.workflow.experiment import PRESETS
    experiment = PRESETS["tiny-digits"]
    path = str(tmp_path / "old")
    stored = _old_config_json(path, experiment, drop=("evaluate_every", "traces", "memory_policy"))
    folder = RunFolder(path, resume=True)
    assert folder.holds(experiment)
    assert folder.write_config(experiment, [0, 1]) == stored      # its checkpoints keep the folder's own hash
    assert any("written before some settings existed" in note for note in folder.notes)
    # a stored value that differs from today's is still another configuration
    other = str(tmp_path / "other")
    _old_config_json(other, experiment, drop=("traces",), change=("episodes_per_task", 7))
    assert not RunFolder(other, resume=True).holds(experiment)
    with pytest.raises(Exception, match="another configuration"):
        RunFolder(other, resume=True).write_config(experiment, [0, 1])
