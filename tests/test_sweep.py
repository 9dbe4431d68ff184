"""``clloop sweep``: a grid of traced hyperparameters over seeds as one batch, its folders, its choice on held-out
seeds, its refusals and its resume."""
import dataclasses
import glob
import importlib.util
import json
import os
import shutil

import numpy as np
import pytest

from clloop_jax.workflow.cli import main
from clloop_jax.workflow.execute import execute
from clloop_jax.workflow.experiment import PRESETS
from clloop_jax.workflow.runs import RunFolder
from clloop_jax.workflow.sweep import SweepConfig, best_point, run_sweep, split_grid

BASE = PRESETS["tiny-digits"].with_strategy("ewc")          # 2 reported seeds
GRID = (("lam", (1.0, 1000.0)), ("learning_rate", (1e-3, 1e-2)))
HELD_OUT = (5,)
LOG = "tensorboard" if importlib.util.find_spec("tensorboardX") else ""   # the points mirrored live


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("sweep") / "s")
    sweep = SweepConfig(BASE, GRID, select_on=HELD_OUT)
    return sweep, run_sweep(sweep, RunFolder(path), log=LOG), path


def test_every_point_equals_its_own_run(swept):
    """Member (point, seed) of the batch trains exactly what a run of that point alone trains with that seed."""
    sweep, res, path = swept
    run, _ = BASE.build()
    seeds = list(HELD_OUT) + list(range(BASE.seeds))
    for p, point in enumerate(sweep.points()):
        experiment = sweep.experiment_at(point)
        assert experiment.train.learning_rate == point["learning_rate"] and experiment.train.lam == point["lam"]
        _, alone = execute(run, experiment.hparams_of(run), seeds)
        R = np.asarray(alone.R, np.float64)
        np.testing.assert_allclose(res.R[p], R[len(HELD_OUT):], atol=1e-5)
        folder = os.path.join(path, sweep.point_name(point))
        stored_R, _, stored_seeds = RunFolder(folder, resume=True).read_results()
        assert stored_seeds == list(range(BASE.seeds))   # the point's folder holds the reported seeds' matrices
        np.testing.assert_allclose(stored_R, R[len(HELD_OUT):], atol=2e-6)
        stored = json.load(open(os.path.join(folder, "config.json")))["config"]["train"]
        assert (stored["lam"], stored["learning_rate"]) == (point["lam"], point["learning_rate"])
    # the points differ: the grid is not the same run four times
    assert np.ptp([r.mean() for r in res.R]) > 1e-3


@pytest.mark.skipif(not LOG, reason="tensorboardX is not installed")
def test_each_point_is_mirrored_as_its_own_run_of_its_reported_seeds(swept):
    """``--log tensorboard``: one event file per point, holding that point's folder's numbers, its reported seeds
    only (the held-out seed chooses the point and is not part of its record)."""
    from test_trackers import tensorboard_scalars
    sweep, res, path = swept
    for point in sweep.points():
        name = sweep.point_name(point)
        (events,) = glob.glob(os.path.join(path, "tensorboard", name, "events.out.tfevents.*"))
        scalars, texts = tensorboard_scalars(events)
        summary = json.load(open(os.path.join(path, name, "summary.json")))
        mean_R = np.asarray(summary["mean_R"])
        T = mean_R.shape[0]
        for j in range(T):
            assert scalars[f"score/task_{j + 1}/mean"] == pytest.approx(
                {i + 1: mean_R[i, j] for i in range(T)}, abs=1e-6)
        seeds = {tag.split("/seed_")[1] for tag in scalars if "/seed_" in tag}
        assert seeds == {str(s) for s in range(BASE.seeds)}
        stats = summary["metrics"]["average_performance"]
        assert scalars["summary/average_performance/mean"] == {T: pytest.approx(stats["mean"], abs=1e-6)}
        config = json.loads("\n".join(line[4:] for line in texts["config/text_summary"].splitlines()))
        assert (config["config"]["train"]["lam"], config["config"]["train"]["learning_rate"]) == (
            point["lam"], point["learning_rate"])


def test_the_choice_is_the_best_held_out_mean(swept):
    sweep, res, path = swept
    means = res.held_out.mean(axis=1)
    assert res.held_out.shape == (4, 1) and res.reported.shape == (4, BASE.seeds)
    assert res.best == int(np.argmax(means)) and "held-out seeds [5]" in res.chosen_on
    saved = json.load(open(os.path.join(path, "sweep.json")))
    assert saved["best"]["values"] == sweep.points()[res.best]
    for p, entry in enumerate(saved["points"]):   # the reported numbers are those of the point's own folder
        summary = json.load(open(os.path.join(path, entry["folder"], "summary.json")))
        assert entry["reported"] == pytest.approx(summary["metrics"]["average_performance"]["values"])
        assert entry["held_out"] == pytest.approx(res.held_out[p].tolist())
    best_row = [line for line in open(os.path.join(path, "sweep.md")) if line.rstrip().endswith("| best |")]
    assert len(best_row) == 1 and best_row[0].startswith(f"| {sweep.points()[res.best]['lam']:g} |")
    assert os.path.isfile(os.path.join(path, "sweep_lam.png"))
    assert os.path.isfile(os.path.join(path, "sweep_learning_rate.png"))


def test_new_values_compile_nothing(swept, tmp_path):
    """The values are traced: ``clloop sweep`` of other values on a grid of the same size reuses every program."""
    out = str(tmp_path / "other")
    main(["sweep", "--preset", "tiny-digits", "--strategy", "ewc", "--lam", "3,30", "--learning-rate", "3e-3,3e-2",
          "--select-on", "5", "--out", out, "--quiet", "--no-cache"])
    saved = json.load(open(os.path.join(out, "sweep.json")))
    assert saved["compilations"] == 0
    assert [p["values"] for p in saved["points"]] == [{"lam": a, "learning_rate": b} for a in (3.0, 30.0)
                                                      for b in (3e-3, 3e-2)]
    assert not np.allclose([p["reported"] for p in saved["points"]], swept[1].reported)


def test_best_point_by_hand():
    assert best_point([[0.5], [0.7], [0.6]], "average_performance") == 1
    assert best_point([[0.1, 0.3], [0.2, 0.2], [0.3, 0.1]], "average_performance") == 0   # equal means: the first
    assert best_point([[0.5], [0.7], [0.2]], "average_forgetting") == 2                 # lower is better


def test_resume_gives_the_same_sweep(swept, tmp_path):
    """A sweep stopped after its first task resumes from the checkpoint to the same numbers, bitwise."""
    sweep, res, path = swept
    copy = str(tmp_path / "copy")
    shutil.copytree(path, copy)
    checkpoints = os.path.join(copy, "checkpoints")
    for name in os.listdir(checkpoints):   # as if killed right after task 1
        if not name.startswith("task_0"):
            target = os.path.join(checkpoints, name)
            shutil.rmtree(target) if os.path.isdir(target) else os.unlink(target)
    os.unlink(os.path.join(copy, "sweep.json"))
    again = run_sweep(sweep, RunFolder(copy, resume=True))
    np.testing.assert_array_equal(again.R, res.R)
    np.testing.assert_array_equal(again.held_out, res.held_out)
    assert json.load(open(os.path.join(copy, "sweep.json")))["best"] == \
        json.load(open(os.path.join(path, "sweep.json")))["best"]


def test_split_grid():
    grid, rest = split_grid(["--lam", "1,10", "--seeds", "3", "--learning-rate=1e-3,3e-3", "--gamma", "0.9"])
    assert grid == (("lam", (1.0, 10.0)), ("learning_rate", (1e-3, 3e-3)))
    assert rest == ["--seeds", "3", "--gamma", "0.9"]          # a single value is a fixed option
    for argv, words in ((["--lam", "1,x"], "--lam: 'x'"), (["--lam", "1,nan"], "finite"),
                        (["--lam", "1,1"], "twice"), (["--seeds", "3"], "nothing to sweep"),
                        (["--lam", "1,2", "--lam=3,4"], "given twice")):
        with pytest.raises(ValueError, match=words):
            split_grid(argv)


def test_split_grid_takes_a_strategys_own_hyperparameters():
    grid, rest = split_grid(["--strategy-hparams", "alpha=0.1,1", "beta=2", "--lam", "1,10", "--seeds", "3"])
    assert grid == (("strategy_hparams.alpha", (0.1, 1.0)), ("lam", (1.0, 10.0)))
    assert rest == ["--strategy-hparams", "beta=2", "--seeds", "3"]                     # a fixed one stays an option
    grid, rest = split_grid(["--strategy-hparams=replay.alpha=0.5,2"])
    assert grid == (("strategy_hparams.replay.alpha", (0.5, 2.0)),) and rest == []
    for argv, words in ((["--strategy-hparams", "alpha=0.1,x"], "--strategy-hparams alpha: 'x'"),
                        (["--strategy-hparams", "alpha=1,2", "alpha=3,4"], "alpha is given twice"),
                        (["--strategy-hparams", "alpha=1"], "nothing to sweep")):
        with pytest.raises(ValueError, match=words):
            split_grid(argv)
    sweep = SweepConfig(PRESETS["tiny-digits"], (("strategy_hparams.alpha", (0.25, 4.0)),))
    point = sweep.points()[1]
    assert sweep.point_name(point) == "alpha=4"
    assert sweep.experiment_at(point).train.strategy_hparams == ("alpha=4.0",)
    fixed = PRESETS["tiny-digits"].with_strategy("derpp")
    fixed = dataclasses.replace(fixed, train=dataclasses.replace(fixed.train, strategy_hparams=("alpha=0.3", "beta=0.7")))
    at = SweepConfig(fixed, (("strategy_hparams.alpha", (0.5,)),)).experiment_at({"strategy_hparams.alpha": 0.5})
    assert at.train.strategy_hparams == ("beta=0.7", "alpha=0.5")                     # the swept value replaces its own


def test_a_strategy_hyperparameter_sweep_is_one_program_whose_points_are_their_own_runs(tmp_path):
    sweep = SweepConfig(PRESETS["tiny-digits"], (("strategy_hparams.alpha", (0.0, 4.0)),))   # replay's weight
    res = run_sweep(sweep, RunFolder(str(tmp_path / "s")))
    run, _ = PRESETS["tiny-digits"].build()
    for p, point in enumerate(sweep.points()):
        experiment = sweep.experiment_at(point)
        _, alone = execute(run, experiment.hparams_of(run), list(range(PRESETS["tiny-digits"].seeds)))
        np.testing.assert_allclose(res.R[p], np.asarray(alone.R, np.float64), atol=1e-5)
        stored = json.load(open(tmp_path / "s" / sweep.point_name(point) / "config.json"))["config"]["train"]
        assert stored["strategy_hparams"] == [f"alpha={point['strategy_hparams.alpha']!r}"]
    assert np.abs(res.R[0] - res.R[1]).max() > 1e-3                                   # the weight changes the run
    text = (tmp_path / "s" / "sweep.md").read_text()
    assert "| alpha |" in text and (tmp_path / "s" / "sweep_alpha.png").is_file()


@pytest.mark.parametrize("argv, words", [
    (["--strategy", "none", "--lam", "1,10"], "the point lam=1: train.lam"),
    (["--strategy", "replay", "--strategy-hparams", "beta=1,2"], "unknown hyperparameter(s) ['beta']"),
    (["--strategy", "ewc", "--lam", "1,10", "--select-on", "1"], "must be held out"),
    (["--strategy", "ewc", "--lam", "1,10", "--select-on", "a"], "--select-on must be"),
    (["--strategy", "ewc", "--feedback-weight", "0.1,0.2"], "--feedback-weight 0.1 is not used"),
    (["--strategy", "ewc", "--discount", "0.9,0.99"], "--discount 0.9 is not used"),
    (["--strategy", "ewc", "--lam", "1,10", "--metric", "accuracy"], "metric must be one of"),
    (["--strategy", "ewc", "--lam", "1,10", "--boundaries", "detect"], "known boundaries"),
    (["--strategy", "ewc"], "nothing to sweep"),
    (["--strategy", "ewc", "--lam", "1,10", "--log", "tensorbord"], "--log: unknown tracker 'tensorbord'"),
])
def test_refusals_are_one_line_and_touch_nothing(argv, words, tmp_path):
    out = str(tmp_path / "never")
    with pytest.raises(SystemExit) as err:
        main(["sweep", "--preset", "tiny-digits", "--out", out, "--quiet"] + argv)
    assert str(err.value).startswith("clloop sweep: ") and words in str(err.value)
    assert "\n" not in str(err.value) and not os.path.exists(out)


@pytest.mark.slow
def test_held_out_choice_equals_the_mnist_tuning(tmp_path):
    """``clloop sweep`` with a held-out seed chooses the strength ``experiments/mnist.py --tune`` chose (split MNIST,
    task-incremental, EWC, 100 updates per task, held-out seed 100), with the same held-out accuracies up to the
    rounding of a differently batched program."""
    tuned = json.load(open(os.path.join(os.path.dirname(__file__), "..", "experiments", "results",
                                        "mnist_tune.json")))["split/task"]
    assert tuned["updates"] == 100
    out = str(tmp_path / "lam")
    main(["sweep", "--preset", "split-mnist", "--strategy", "ewc", "--scenario", "task", "--episodes-per-task", "100",
          "--lam", "10,100,1000,10000", "--select-on", "100", "--seeds", "1", "--out", out, "--quiet"])
    saved = json.load(open(os.path.join(out, "sweep.json")))
    ours = {p["values"]["lam"]: p["held_out"][0] for p in saved["points"]}
    theirs = {float(k): v for k, v in tuned["ewc"].items()}
    assert saved["best"]["values"]["lam"] == max(theirs, key=theirs.get) == 10000.0
    assert ours == pytest.approx(theirs, abs=5e-3)


def test_an_option_is_refused_exactly_where_the_source_does_not_use_it():
    """The experiment decides which options its source uses: gymnax feeds the feedback weight to its policy (so it
    sweeps), a labelled benchmark does not (refused above)."""
    sweep = SweepConfig(PRESETS["tiny-cartpole"], (("feedback_weight", (0.5, 1.0)),))
    assert [sweep.experiment_at(p).train.feedback_weight for p in sweep.points()] == [0.5, 1.0]
    with pytest.raises(ValueError, match="--discount 0.9 is not used with --source world"):
        SweepConfig(PRESETS["tiny"], (("discount", (0.9, 0.99)),))
