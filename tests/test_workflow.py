"""The research workflow: typed configs and the command line, run folders, plots, checkpoints, resume, the NaN alarm."""
import dataclasses
import json
import os
import signal
import struct
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from clloop_jax import cli
from clloop_jax.config import PRESETS, ExperimentConfig, TrainConfig, WorldConfig
from clloop_jax.loop import DivergenceError
from clloop_jax.runs import CheckpointError, RunFolder, execute

TINY = PRESETS["tiny"]
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def png_size(path):
    with open(path, "rb") as f:
        head = f.read(24)
    assert head[:8] == b"\x89PNG\r\n\x1a\n", path
    return struct.unpack(">II", head[16:24])


def test_command_line_round_trips_a_config_and_documents_every_field(tmp_path, capsys):
    import tyro
    args = tyro.cli(cli.RunArgs, args=["--out", "x", "--strategy", "si", "--seeds", "3", "--hidden-dim", "16",
                                       "--lam", "7.5", "--num-tasks", "4"], default=cli.RunArgs(out="", experiment=TINY))
    exp = args.experiment
    assert (exp.train.strategy, exp.seeds, exp.model.hidden_dim, exp.train.lam, exp.world.num_tasks) == \
        ("si", 3, 16, 7.5, 4)
    assert exp.world.observation_dim == TINY.world.observation_dim  # the preset's other fields stay
    with pytest.raises(SystemExit) as done:
        cli.main(["run", "--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    for field in ("--strategy", "--seeds", "--hidden-dim", "--episodes-per-task", "--overwrite", "--resume",
                  "--quiet", "(default: ewc)"):
        assert field in text, field
    with pytest.raises(SystemExit) as bad:
        cli.main(["run", "--preset", "tiny", "--out", str(tmp_path / "bad"), "--strategy", "ewk"])
    assert bad.value.code == 2 and "strategy must be one of" in capsys.readouterr().err
    with pytest.raises(ValueError, match="seeds"):
        dataclasses.replace(TINY, seeds=0)
    # --devices: unset keeps the default device, 0 means every device, more than there are is refused by name
    # (the sharded run itself is checked on 8 simulated devices in tests/test_sharding.py).
    assert tyro.cli(cli.RunArgs, args=["--out", "x", "--devices", "0"]).devices == 0
    assert (cli._devices(None), cli._devices(0)) == (None, jax.device_count())
    with pytest.raises(ValueError, match="--devices"):
        cli._devices(jax.device_count() + 1)


def test_runs_built_alike_are_equal_and_share_their_compiled_programs():
    """Every monitor, the functional one included, compares by value; so the same configuration built twice (two
    run folders, a resumed run) is one run to the driver's cache and compiles once."""
    from clloop_jax.runs import _programs
    (a, _), (b, _) = TINY.build(), TINY.build()
    assert "functional" in [m.name for m in a.monitors]
    assert a == b and hash(a) == hash(b) and _programs(a) is _programs(b)
    longer = dataclasses.replace(TINY.train, episodes_per_task=1 + TINY.train.episodes_per_task)
    assert dataclasses.replace(TINY, train=longer).build()[0] != a


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("runs") / "tiny")
    cli.main(["run", "--preset", "tiny", "--out", out, "--quiet", "--no-cache"])
    return out


def test_run_writes_every_file(tiny_run):
    names = set(os.listdir(tiny_run))
    assert {"config.json", "seeds.json", "traces.jsonl", "R_seed0.csv", "R_seed1.csv", "summary.md", "summary.json",
            "plots", "checkpoints"} <= names
    config = json.load(open(os.path.join(tiny_run, "config.json")))
    assert config["config"]["train"]["strategy"] == "ewc" and len(config["config_hash"]) == 16
    assert {"clloop_jax", "jax", "flax", "optax", "platform"} <= set(config["versions"])
    summary = json.load(open(os.path.join(tiny_run, "summary.json")))
    assert summary["metrics"]["average_performance"]["n"] == 2
    rows = [json.loads(line) for line in open(os.path.join(tiny_run, "traces.jsonl"))]
    E = TINY.train.episodes_per_task
    assert len(rows) == 2 * TINY.world.num_tasks * E and {"seed", "task", "episode", "loss", "finite"} <= set(rows[0])
    csv_rows = open(os.path.join(tiny_run, "R_seed0.csv")).read().splitlines()
    assert csv_rows[0] == "after,task_0,task_1" and len(csv_rows) == 2 + TINY.world.num_tasks
    for name in ("matrix.png", "scores.png", "divergence.png"):
        w, h = png_size(os.path.join(tiny_run, "plots", name))
        assert w > 200 and h > 200 and os.path.getsize(os.path.join(tiny_run, "plots", name)) > 5000
    assert sorted(os.listdir(os.path.join(tiny_run, "checkpoints"))) == ["task_0", "task_0.json", "task_1",
                                                                          "task_1.json"]
    assert not [n for n in os.listdir(tiny_run) if ".tmp" in n]   # no temporary file left behind


def test_existing_folder_is_refused(tiny_run):
    with pytest.raises(SystemExit, match="exists and is not empty"):
        cli.main(["run", "--preset", "tiny", "--out", tiny_run, "--quiet"])
    with pytest.raises(FileExistsError):
        RunFolder(tiny_run)


def test_corrupted_and_mismatched_checkpoints_are_named(tiny_run, tmp_path):
    import shutil
    copy = str(tmp_path / "copy")
    shutil.copytree(tiny_run, copy)
    folder = RunFolder(copy, resume=True)
    run, hp = TINY.build()
    like_run, _ = dataclasses.replace(TINY, model=dataclasses.replace(TINY.model, hidden_dim=16)).build()
    # Another configuration: refused by the folder's config.json.
    other = dataclasses.replace(TINY, train=dataclasses.replace(TINY.train, learning_rate=0.5))
    with pytest.raises(CheckpointError, match="config.json.*another configuration"):
        folder.write_config(other, [0, 1])
    # Other sizes: refused by the checkpoint's metadata, naming the file and the shapes.
    digest = json.load(open(os.path.join(copy, "config.json")))["config_hash"]
    keys = jax.random.split(jax.random.key(0), 2)
    wrong = jax.eval_shape(jax.vmap(lambda k: like_run._init(like_run.source.tasks, k, hp), in_axes=0), keys)
    with pytest.raises(CheckpointError, match=r"task_0.json.*structure|task_0.json: array \d+ has shape"):
        folder.restore_checkpoint(0, {"state": wrong}, digest)
    # A truncated array file: refused, naming the checkpoint.
    data_files = [os.path.join(d, f) for d, _, fs in os.walk(os.path.join(copy, "checkpoints", "task_1")) for f in fs
                  if os.path.getsize(os.path.join(d, f)) > 100]
    for path in data_files:
        with open(path, "r+b") as f:
            f.truncate(os.path.getsize(path) // 3)
    with pytest.raises(CheckpointError, match="task_1"):
        cli.run_command(cli.RunArgs(out=copy, experiment=TINY, resume=True, quiet=True, no_cache=True))


DRIVER = textwrap.dedent("""
    import dataclasses, os, signal, sys
    from clloop_jax.config import PRESETS
    from clloop_jax.runs import RunFolder, execute
    folder, kill_after, resume = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "resume"
    exp = dataclasses.replace(PRESETS["tiny"], world=dataclasses.replace(PRESETS["tiny"].world, num_tasks=3))
    run, hp = exp.build()
    def progress(done, total):
        if done == kill_after:
            os.kill(os.getpid(), signal.SIGKILL)
    execute(run, hp, [0, 1], folder=RunFolder(folder, resume=resume), config=exp, progress=progress)
""")


def drive(folder, kill_after=-1, resume=False):
    return subprocess.run([sys.executable, "-c", DRIVER, folder, str(kill_after), "resume" if resume else "new"],
                          cwd=ROOT, capture_output=True, env=dict(os.environ, CLLOOP_JAX_NO_CACHE="1"))


@pytest.mark.slow
def test_a_killed_run_resumes_to_bitwise_the_uninterrupted_result(tmp_path):
    """SIGKILL after task 2 of 3, then --resume, in fresh processes: the final metrics, traces and parameters are
    bitwise those of an uninterrupted run."""
    killed, straight = str(tmp_path / "killed"), str(tmp_path / "straight")
    proc = drive(killed, kill_after=2)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    assert RunFolder(killed, resume=True).latest_checkpoint() == 1
    assert not os.path.exists(os.path.join(killed, "summary.json"))
    assert drive(killed, resume=True).returncode == 0
    assert drive(straight).returncode == 0
    for name in ("summary.json", "traces.jsonl", "R_seed0.csv", "R_seed1.csv"):
        assert open(os.path.join(killed, name)).read() == open(os.path.join(straight, name)).read(), name
    # The last checkpoint holds the final state (parameters, optimizer, strategy, monitors) and the results.
    final = [RunFolder(f, resume=True).checkpoint_arrays(2) for f in (killed, straight)]
    assert len(final[0]) == len(final[1]) > 10
    for a, b in zip(*final):
        np.testing.assert_array_equal(a, b)


def test_a_diverging_run_stops_naming_where_and_keeps_the_last_good_checkpoint(tmp_path):
    exp = dataclasses.replace(TINY, train=dataclasses.replace(TINY.train, lam=1e38))  # the penalty overflows
    out = str(tmp_path / "nan")
    with pytest.raises(SystemExit, match=r"diverged at seed \d, task 1, episode \d+"):
        cli.main(["run", "--preset", "tiny", "--lam", "1e38", "--out", out, "--quiet", "--no-cache"])
    folder_files = sorted(os.listdir(os.path.join(out, "checkpoints")))
    assert folder_files == ["task_0", "task_0.json"]           # task 0's checkpoint kept, nothing of task 1
    assert not os.path.exists(os.path.join(out, "summary.json"))
    run, hp = exp.build()
    with pytest.raises(DivergenceError) as err:
        execute(run, hp, [0, 1])
    assert err.value.task == 1 and err.value.episode is not None


def test_compare_writes_one_table_paired_gains_and_one_figure(tmp_path):
    out = str(tmp_path / "cmp")
    cli.main(["compare", "--preset", "tiny", "--out", out, "--strategies", "none,ewc:5", "--quiet", "--no-cache"])
    assert sorted(n for n in os.listdir(out)) == ["comparison.json", "comparison.md", "comparison.png", "ewc", "none"]
    table = open(os.path.join(out, "comparison.md")).read()
    assert "| none | - |" in table and "| ewc | 5 |" in table and "minus none's (paired by seed)" in table
    blob = json.load(open(os.path.join(out, "comparison.json")))
    assert blob["paired_vs_none"]["ewc"]["n"] == TINY.seeds
    w, h = png_size(os.path.join(out, "comparison.png"))
    assert w > 200 and h > 200
    # Each strategy has a complete run folder of its own.
    assert json.load(open(os.path.join(out, "ewc", "config.json")))["config"]["train"]["lam"] == 5.0
