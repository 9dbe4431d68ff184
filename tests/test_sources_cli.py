"""``clloop run`` and ``compare`` over a labelled benchmark: --source digits / mnist / mnist1d with its stream and
scenario, rehearsal memory from the command line, run folders with resume, and refusals of options the source does
not use."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import sys

import jax
import numpy as np
import pytest

from clloop_jax.workflow import cli
from clloop_jax.workflow.experiment import PRESETS, DataConfig, ExperimentConfig, TrainConfig

ARGS = ["--preset", "tiny-digits", "--quiet", "--no-cache"]


def run(out, *extra, command="run", capsys=None):
    """The command line in this process; returns the exit code and the message of a refusal (the one line of
    ``clloop``, or the parser's box on stderr, its frame removed, with ``capsys``)."""
    try:
        return cli.main([command, *ARGS, "--out", str(out), *extra]), ""
    except SystemExit as done:
        said = str(done.code) if not isinstance(done.code, int) else ""
        if capsys is not None:
            said += " ".join(re.sub(r"[│╭╮╰╯─]", " ", capsys.readouterr().err).split())
        return 2 if isinstance(done.code, str) else done.code, said


def matrix(folder, seed=0):
    with open(os.path.join(folder, f"R_seed{seed}.csv")) as f:
        rows = [line.strip().split(",") for line in f][1:]
    return np.array([[float(v) for v in row[1:]] for row in rows])


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("digits") / "run"
    code, message = run(folder)
    assert code == 0, message
    return folder


def test_a_digits_run_writes_a_complete_folder_that_records_only_what_it_used(digits_run):
    with open(digits_run / "config.json") as f:
        config = json.load(f)["config"]
    assert config["source"] == "digits" and set(config) == {"source", "data", "train", "seeds", "boundaries"}
    assert config["data"]["stream"] == "split" and config["data"]["scenario"] == "class"
    for seed in (0, 1):
        R = matrix(digits_run, seed)
        assert R.shape == (6, 5) and np.all((0 <= R) & (R <= 1))  # the untrained row, then one per task
        # each task is learned: its accuracy right after training beats the untrained one
        assert np.all(np.diag(R[1:]) > R[0] + 0.2)
    summary = json.load(open(digits_run / "summary.json"))
    assert 0 < summary["metrics"]["average_performance"]["mean"] < 1
    assert sorted(os.listdir(digits_run / "plots")) == ["divergence.png", "matrix.png", "scores.png"]


def test_a_digits_run_resumed_after_two_tasks_equals_the_uninterrupted_one(digits_run, tmp_path):
    folder = tmp_path / "resumed"
    shutil.copytree(digits_run, folder)
    for name in os.listdir(folder / "checkpoints"):  # as if stopped after task 2 of 5
        if not name.startswith(("task_0", "task_1")):
            path = folder / "checkpoints" / name
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    for name in ("summary.md", "summary.json", "R_seed0.csv", "R_seed1.csv", "traces.jsonl"):
        (folder / name).unlink()
    code, message = run(folder, "--resume")
    assert code == 0, message
    for name in ("R_seed0.csv", "R_seed1.csv", "traces.jsonl", "summary.json"):
        assert (folder / name).read_bytes() == (digits_run / name).read_bytes(), name


@pytest.mark.parametrize("extra, message", [
    (["--source", "mnist", "--num-tasks", "4"], "--num-tasks 4 is not used with --source mnist"),
    (["--hidden-dim", "16"], "--hidden-dim 16 is not used with --source digits"),
    (["--source", "world", "--num-tasks", "2"], "--mlp-hidden (32,)"),
    (["--strategy", "ewc", "--memory", "100"], "train.memory (--memory 100) is used only by the rehearsal strategies"),
    (["--strategy", "lwf", "--memory-batch", "8"], "train.memory_batch (--memory-batch 8) is used only by the rehearsal"),
    (["--strategy", "replay", "--memory-batch", "0"], "train.memory_batch must be an integer >= 1, got 0"),
    (["--strategy", "agem", "--memory-policy", "balanced"], "train.memory_policy (--memory-policy balanced) is used only "
                                                            "by replay and er_ace"),
    (["--strategy", "gem", "--memory-policy", "balanced"], "is used only by replay and er_ace, not by 'gem'"),
    (["--strategy", "replay", "--memory-policy", "ring"], "train.memory_policy must be one of ['reservoir', 'balanced']"),
    (["--stream", "spiral"], "data.stream must be one of ['split', 'permuted'], got 'spiral'"),
    (["--scenario", "joint"], "data.scenario must be one of ['task', 'domain', 'class'], got 'joint'"),
    (["--mlp-hidden", "0"], "data.mlp_hidden must be an integer >= 1, got 0"),
    (["--source", "cifar"], "experiment.source must be one of ['world', 'mnist', 'digits', 'mnist1d', 'cifar10'"),
    (["--max-grad-norm", "0"], "train.max_grad_norm must be a finite number > 0"),
    (["--strategy", "replay", "--strategy-hparams", "beta=0.5"], "unknown hyperparameter(s) ['beta'] for "
                                                                 "train.strategy_hparams of strategy 'replay'"),
    (["--strategy", "replay", "--strategy-hparams", "alpha"], "expected name=number"),
    (["--strategy", "ewc", "--strategy-hparams", "lam=3"], "set 'lam' with --lam"),
    (["--pixel-bytes"], "data.pixel_bytes keeps MNIST's images as bytes; the digits source has no pixel bytes"),
    (["--schedule", "gradual"], "--schedule 'gradual' is not used with --boundaries known; leave it unset"),
    (["--boundaries", "none", "--schedule", "gradual", "--blend", "0.05"], "--blend 0.05 of 20 episodes per task is 1 "
                                                                          "episode(s); a blend needs at least 2"),
    (["--boundaries", "none", "--schedule", "irregular", "--min-segment", "0"], "taskfree.min_segment must be a "
                                                                               "finite number > 0 and <= 1, got 0"),
    (["--boundaries", "none", "--schedule", "sudden"], "taskfree.schedule must be one of ['abrupt', 'irregular', "
                                                       "'gradual'], got 'sudden'"),
])
def test_options_the_source_does_not_use_or_cannot_take_are_refused_before_the_folder(extra, message, tmp_path,
                                                                                     capsys):
    code, said = run(tmp_path / "out", *extra, capsys=capsys)
    assert code == 2 and message in said
    assert not (tmp_path / "out").exists()


def test_mnist_pixel_bytes_hold_the_images_as_uint8_and_read_as_the_same_floats():
    from clloop_jax.data import PIXEL_VALUES
    plain = DataConfig(stream="permuted", permuted_tasks=3, mlp_hidden=(8,)).make_source("mnist")
    small = DataConfig(stream="permuted", permuted_tasks=3, mlp_hidden=(8,), pixel_bytes=True).make_source("mnist")
    assert small.stream.x.dtype == np.uint8 and small.stream.x.nbytes * 4 == plain.stream.x.nbytes
    np.testing.assert_array_equal(PIXEL_VALUES[np.asarray(small.stream.x)], plain.stream.x)
    np.testing.assert_array_equal(PIXEL_VALUES[np.asarray(small.stream.x_test)], plain.stream.x_test)


def test_memory_reaches_the_rehearsal_strategy_and_is_recorded():
    experiment = ExperimentConfig(source="digits", data=DataConfig(mlp_hidden=(8,), batch_size=16, fisher_size=32),
                                  train=TrainConfig(strategy="replay", memory=40, episodes_per_task=2, monitors=()),
                                  seeds=1)
    run_, hp = experiment.build()
    state = jax.eval_shape(run_.init, jax.random.key(0), hp)
    sizes = {leaf.shape[0] for leaf in jax.tree.leaves(state.strategy) if leaf.ndim >= 2}
    assert sizes == {40}  # every memory array holds 40 samples
    assert experiment.resolved()["train"].memory == 40
    default = jax.eval_shape(ExperimentConfig(**{**experiment.__dict__, "train": TrainConfig(
        strategy="replay", episodes_per_task=2, monitors=())}).build()[0].init, jax.random.key(0), hp)
    assert {leaf.shape[0] for leaf in jax.tree.leaves(default.strategy) if leaf.ndim >= 2} == {500}


def test_strategy_hparams_reach_the_run_and_a_chain_part_by_its_dotted_name():
    e = dataclasses.replace(PRESETS["tiny-digits"], train=dataclasses.replace(
        PRESETS["tiny-digits"].train, strategy="ewc+replay", lam=3.0, strategy_hparams=("replay.alpha=0.25",)))
    run_, hp = e.build()
    assert float(hp.strategy.replay.alpha) == 0.25 and float(hp.strategy.ewc.lam) == 3.0
    e = dataclasses.replace(e, train=dataclasses.replace(e.train, strategy="continual_backprop", lam=None,
                                                         strategy_hparams=("replacement_rate=0.01", "decay=0.5")))
    _, hp = e.build()
    assert (float(hp.strategy.replacement_rate), float(hp.strategy.decay)) == (pytest.approx(0.01), 0.5)
    with pytest.raises(ValueError, match="given twice"):
        TrainConfig(strategy="replay", strategy_hparams=("alpha=1", "alpha=2"))


def test_a_benchmark_uses_its_own_default_strength():
    assert ExperimentConfig(source="digits", train=TrainConfig(strategy="ewc", monitors=())).strength == 1000.0
    assert ExperimentConfig(train=TrainConfig(strategy="ewc")).strength == 3.0
    assert ExperimentConfig(source="digits", train=TrainConfig(strategy="ewc", lam=7.0, monitors=())).strength == 7.0


def test_a_missing_data_package_is_one_line_naming_the_install(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    code, said = run(tmp_path / "out", capsys=capsys)
    assert code == 2 and "load_digits_data needs the scikit-learn package" in said and "pip install" in said


def test_memory_and_memory_batch_reach_the_rehearsal_strategy():
    from clloop_jax.workflow.settings import TrainConfig

    def sizes(train):   # the memory's size and the samples drawn per update, as the strategy's hooks hold them
        strategy = train.strategy_value()
        hooks = (strategy.replay_loss or strategy.project).owner
        return hooks.capacity, hooks.batch_size

    for name, default_batch in (("replay", 32), ("agem", 64), ("derpp", 32), ("er_ace", 32), ("gem", None)):
        assert TrainConfig(strategy=name).strategy_value() == name              # unset: the strategy's defaults
        assert sizes(TrainConfig(strategy=name, memory=200, memory_batch=128)) == (200, 128)
        assert sizes(TrainConfig(strategy=name, memory_batch=16)) == (500, 16)
        assert sizes(TrainConfig(strategy=name, memory=300)) == (300, default_batch)
    balanced = TrainConfig(strategy="replay", memory=40, memory_policy="balanced").strategy_value()
    assert balanced.replay_loss.owner.memory == "balanced" and balanced.replay_loss.owner.capacity == 40
    assert TrainConfig(strategy="replay", memory=40).strategy_value().replay_loss.owner.memory == "reservoir"
    ace = TrainConfig(strategy="er_ace", memory=40, memory_policy="balanced").strategy_value()
    assert ace.replay_loss.owner.memory == "balanced" and ace.replay_loss.owner.kind == "er_ace"


def test_presets_of_benchmarks_are_described_and_valid():
    assert PRESETS["split-mnist"].source == "mnist" and PRESETS["split-mnist"].train.episodes_per_task == 300
    assert "digits split (2 classes per task, class-incremental)" in cli.overview()


@pytest.mark.slow
def test_compare_over_a_benchmark_writes_one_folder_per_strategy(tmp_path):
    code, said = run(tmp_path / "cmp", "--strategies", "none,replay", "--memory", "50", command="compare")
    assert code == 0, said
    memory = {name: json.load(open(tmp_path / "cmp" / name / "config.json"))["config"]["train"]["memory"]
              for name in ("none", "replay")}
    assert memory == {"none": None, "replay": 50}  # --memory reaches the strategy that has a memory only
    assert sorted(os.listdir(tmp_path / "cmp")) == ["comparison.json", "comparison.md", "comparison.png", "none",
                                                      "replay"]
    table = (tmp_path / "cmp" / "comparison.md").read_text()
    assert "replay" in table and "none" in table


def test_config_of_a_run_folder_runs_that_run_again_bitwise(digits_run, tmp_path):
    try:
        code = cli.main(["run", "--config", str(digits_run / "config.json"), "--out", str(tmp_path / "again"),
                         "--quiet", "--no-cache"])
    except SystemExit as done:
        code = done.code
    assert code == 0
    assert json.load(open(tmp_path / "again" / "config.json"))["config_hash"] == \
        json.load(open(digits_run / "config.json"))["config_hash"]
    for name in ("R_seed0.csv", "R_seed1.csv", "traces.jsonl", "summary.json"):
        assert (tmp_path / "again" / name).read_bytes() == (digits_run / name).read_bytes(), name


def test_a_toml_file_of_settings_is_an_experiment_and_unknown_settings_are_named(tmp_path):
    from clloop_jax.workflow.experiment import load_experiment
    path = tmp_path / "study.toml"
    path.write_text('source = "digits"\nseeds = 3\n[data]\nstream = "permuted"\nmlp_hidden = [64, 32]\n'
                    '[train]\nstrategy = "si"\nlam = 30.0\nmonitors = []\n')
    assert load_experiment(str(path)) == ExperimentConfig(
        source="digits", seeds=3, data=DataConfig(stream="permuted", mlp_hidden=(64, 32)),
        train=TrainConfig(strategy="si", lam=30.0, monitors=()))
    path.write_text('source = "digits"\n[train]\nstrategi = "si"\n')
    with pytest.raises(ValueError, match=r"unknown setting\(s\) \['strategi'\] in train"):
        load_experiment(str(path))
    path.write_text('source = "digits"\n[train\n')
    with pytest.raises(ValueError, match=r"study\.toml: cannot read the configuration"):
        load_experiment(str(path))
    with pytest.raises(SystemExit, match="--preset and --config both"):
        cli.main(["run", "--preset", "tiny", "--config", str(path), "--out", str(tmp_path / "x")])


def test_a_gymnax_experiment_builds_its_tasks_and_traced_hyperparameters():
    from clloop_jax.workflow.experiment import GymnaxConfig
    experiment = dataclasses.replace(PRESETS["tiny-cartpole"], gymnax=GymnaxConfig(
        variants='[{}, {"length": 1.5}]', rollout_steps=8, policy_hidden=8, discount=0.9, entropy_coef=0.0))
    run_, hp = experiment.build()
    assert run_.source.num_tasks == 2 and float(run_.source.tasks.length[1]) == 1.5
    assert (hp.source.discount, hp.source.entropy_coef) == (np.float32(0.9), 0.0)  # the run's float32
    assert hp.source.feedback_weight == np.float32(experiment.train.feedback_weight)
    assert float(hp.strategy.lam) == 1000.0  # EWC away from the world
    assert set(experiment.resolved()) == {"source", "gymnax", "train", "seeds", "boundaries"}


def test_a_linear_schedule_decays_each_tasks_rate_to_zero_over_its_optimizer_steps():
    """Hand-worked: under a constant gradient Adam's bias-corrected step is the rate itself (over 1 + eps), so the
    parameter moves by lr * (1 - k / steps) at step k and no more once the steps are spent. An experiment's linear
    schedule spans a task's updates times gymnax's PPO passes."""
    import optax
    from clloop_jax.run.config import AdamLinearDecay
    from clloop_jax.workflow.experiment import GymnaxConfig
    opt = AdamLinearDecay(4)(0.1)
    x = jax.numpy.zeros(())
    state, moves = opt.init(x), []
    for _ in range(6):
        update, state = opt.update(jax.numpy.ones(()), state, x)
        moves.append(float(update))
    np.testing.assert_allclose(moves, [-0.1, -0.075, -0.05, -0.025, 0.0, 0.0], rtol=3e-5, atol=1e-12)  # float32
    pendulum = PRESETS["pendulum"]
    assert (pendulum.train.lr_schedule, pendulum.gymnax.env_id) == ("linear", "Pendulum-v1")
    e = dataclasses.replace(pendulum, gymnax=dataclasses.replace(pendulum.gymnax, ppo_epochs=3, ppo_minibatches=2,
                                                                 eval_envs=5),
                            train=dataclasses.replace(pendulum.train, episodes_per_task=7))
    source = e.make_source()
    assert (source.eval_envs, source.minibatch_passes) == (5, 6)
    assert e.run_config(source).optimizer == e.run_config().optimizer == AdamLinearDecay(7 * 6)
    assert PRESETS["cartpole"].run_config().optimizer is optax.adam and PRESETS["cartpole"].make_source().eval_envs == 16
    with pytest.raises(ValueError, match="train.lr_schedule must be one of"):
        TrainConfig(lr_schedule="cosine")
    with pytest.raises(ValueError, match="gymnax.eval_envs must be an integer >= 1"):
        GymnaxConfig(eval_envs=0)
    with pytest.raises(ValueError, match="steps must be an integer >= 1"):
        AdamLinearDecay(0)


def test_the_world_learned_from_its_reward_is_a_gymnax_experiment_of_the_worlds_own_tasks():
    """--env-id LatentWorld: the tasks are the world options' (its seed draws them), scored like imitation; the
    world options are used (recorded in config.json), --variants is refused."""
    from clloop_jax.workflow.experiment import GymnaxConfig, WorldConfig
    world = WorldConfig(observation_dim=8, action_dim=4, latent_dim=4, episode_length=8, num_tasks=2, world_seed=3)
    e = dataclasses.replace(PRESETS["tiny-cartpole"], world=world, gymnax=dataclasses.replace(
        PRESETS["tiny-cartpole"].gymnax, env_id="LatentWorld", rollout_steps=8))
    source = e.make_source()
    assert (source.score_kind, source.num_tasks) == ("imitation", 2)
    for a, b in zip(jax.tree.leaves(source.tasks), jax.tree.leaves(world.make().tasks())):
        np.testing.assert_array_equal(a, b)
    other = dataclasses.replace(e, world=dataclasses.replace(world, world_seed=4)).make_source()
    assert not np.array_equal(jax.tree.leaves(other.tasks)[0], jax.tree.leaves(source.tasks)[0])
    with pytest.raises(ValueError, match="the tasks of LatentWorld are the world's own"):
        GymnaxConfig(env_id="LatentWorld", variants="[{}]")
    assert set(e.resolved()) == {"source", "gymnax", "world", "train", "seeds", "boundaries"}


@pytest.mark.slow
def test_clloop_runs_the_world_from_its_reward_into_a_folder(tmp_path):
    folder = tmp_path / "reward"
    assert cli.main(["run", "--preset", "tiny-cartpole", "--quiet", "--no-cache", "--env-id", "LatentWorld",
                     "--rollout-steps", "8", "--observation-dim", "8", "--action-dim", "4", "--latent-dim", "4",
                     "--episode-length", "8", "--num-tasks", "2", "--world-seed", "3", "--out", str(folder)]) == 0
    stored = json.load(open(folder / "config.json"))["config"]
    assert stored["world"]["world_seed"] == 3 and stored["gymnax"]["env_id"] == "LatentWorld"
    summary = json.load(open(folder / "summary.json"))
    scores = np.array(summary["mean_R"] + [summary["mean_baseline"]], dtype=float)
    assert np.all((scores >= -1.0) & (scores <= 1.0)) and np.all(np.isfinite(scores))  # imitation scores, not returns


def test_random_variants_are_a_seeded_draw_inside_their_ranges():
    from clloop_jax.rl.tasks import VARIANT_RANGES, random_variants, task_params
    from clloop_jax.workflow.experiment import GymnaxConfig
    many = random_variants("CartPole-v1", 200, seed=3)
    assert len(many) == 200 and many == random_variants("CartPole-v1", 200, seed=3)
    assert len({json.dumps(v, sort_keys=True) for v in many}) == 200                  # every task a new variant
    for name, (low, high) in VARIANT_RANGES["CartPole-v1"].items():
        values = np.array([v[name] for v in many])
        assert low <= values.min() and values.max() <= high
        assert values.min() < low + 0.1 * (high - low) and values.max() > high - 0.1 * (high - low)   # uniform
    assert random_variants("CartPole-v1", 4, seed=4) != random_variants("CartPole-v1", 4, seed=3)
    assert GymnaxConfig(variants="random:6:3").overrides() == random_variants("CartPole-v1", 6, seed=3)
    assert GymnaxConfig(env_id="Pendulum-v1", variants="random:2").overrides() == random_variants("Pendulum-v1", 2)
    _, tasks = task_params("CartPole-v1", many[:3])
    np.testing.assert_allclose(tasks.polemass_length, [v["masspole"] * v["length"] for v in many[:3]], rtol=1e-6)
    with pytest.raises(ValueError, match="num_tasks must be an integer >= 1"):
        random_variants("CartPole-v1", 0)


@pytest.mark.parametrize("extra, message", [
    (["--variants", "[{}, 3]"], "gymnax.variants must be 'family', 'random:N[:SEED]' or a JSON list of EnvParams"),
    (["--variants", "random:0"], "gymnax.variants 'random:N' or 'random:N:SEED' needs N >= 1 and SEED >= 0"),
    (["--variants", "random:5", "--env-id", "Acrobot-v1"], "'random:N' is defined for ['CartPole-v1', 'Pendulum"),
    (["--env-id", "Acrobot-v1"], "gymnax.variants 'family' is defined for ['CartPole-v1', 'Pendulum-v1']"),
    (["--variants", '[{"lenght": 2.0}]'], "overrides[0] names unknown EnvParams fields ['lenght'] of CartPole-v1"),
    (["--discount", "1.5"], "gymnax.discount must be a finite number >= 0 and <= 1"),
    (["--stream", "permuted"], "--stream 'permuted' is not used with --source gymnax"),
])
def test_gymnax_options_are_checked_before_the_folder(extra, message, tmp_path, capsys):
    try:
        cli.main(["run", "--preset", "tiny-cartpole", "--quiet", "--no-cache", "--out", str(tmp_path / "out"), *extra])
        said = ""
    except SystemExit as done:
        said = (str(done.code) if not isinstance(done.code, int) else "") + " ".join(
            re.sub(r"[│╭╮╰╯─]", " ", capsys.readouterr().err).split())
    assert message in said
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_a_gymnax_run_folder_resumes_bitwise(tmp_path):
    args = ["run", "--preset", "tiny-cartpole", "--quiet"]
    assert cli.main([*args, "--out", str(tmp_path / "full")]) == 0
    assert cli.main([*args, "--out", str(tmp_path / "part")]) == 0
    for name in os.listdir(tmp_path / "part" / "checkpoints"):  # as if stopped after task 1 of 3
        if not name.startswith("task_0"):
            path = tmp_path / "part" / "checkpoints" / name
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    for name in ("summary.md", "summary.json", "R_seed0.csv", "R_seed1.csv", "traces.jsonl"):
        (tmp_path / "part" / name).unlink()
    assert cli.main([*args, "--out", str(tmp_path / "part"), "--resume"]) == 0
    for name in ("R_seed0.csv", "R_seed1.csv", "traces.jsonl", "summary.json"):
        assert (tmp_path / "part" / name).read_bytes() == (tmp_path / "full" / name).read_bytes(), name


def test_a_stream_with_hidden_switches_runs_into_a_folder_with_its_detection(tmp_path, capsys):
    """--boundaries detect: the same five digit tasks as one stream switching every 20 episodes unannounced; the
    folder holds the matrix at the true switches, each episode's alarm and consolidation, and the detection."""
    code, said = run(tmp_path / "tf", "--boundaries", "detect")
    assert code == 0, said
    folder = tmp_path / "tf"
    detection = json.load(open(folder / "detection.json"))
    timing = json.load(open(folder / "timing.json"))                               # one program, timed whole
    assert timing["task_seconds"] == [] and timing["seconds"] > 0 and timing["session_starts"] == [0]
    assert len(detection["missed"]) == 2 and len(detection["delay"][0]) == 4      # 2 seeds, 4 hidden switches
    assert all(c >= 1 for c in detection["consolidations"])
    rows = [json.loads(line) for line in open(folder / "traces.jsonl")]
    assert len(rows) == 2 * 5 * 20 and {"alarm", "consolidated", "ph_stat"} <= set(rows[0])
    consolidated = [r for r in rows if r["consolidated"] and r["seed"] == 0]
    assert len(consolidated) == detection["consolidations"][0]
    assert matrix(folder).shape == (6, 5)
    assert json.load(open(folder / "config.json"))["config"]["boundaries"] == "detect"
    code, said = run(folder, "--boundaries", "detect", "--resume", capsys=capsys)
    assert code == 2 and "one compiled program with no checkpoint between tasks" in said


def test_hidden_switches_need_a_source_that_mixes_tasks(tmp_path, capsys):
    try:
        cli.main(["run", "--preset", "tiny-cartpole", "--boundaries", "oracle", "--out", str(tmp_path / "x")])
    except SystemExit:
        pass
    said = " ".join(re.sub(r"[│╭╮╰╯─]", " ", capsys.readouterr().err).split())
    assert "--boundaries oracle needs a source that serves batches of mixed tasks" in said
    assert not (tmp_path / "x").exists()


def test_hidden_switches_run_on_the_default_device_and_say_so_for_devices(tmp_path):
    code, said = run(tmp_path / "tf", "--boundaries", "oracle", "--devices", "1")
    assert code == 2 and "--devices: a stream with hidden boundaries (--boundaries oracle) runs on the default" in said
    assert not (tmp_path / "tf").exists()


def test_run_or_read_reads_a_finished_folder_and_refuses_another_configuration(digits_run, tmp_path, monkeypatch):
    from clloop_jax.workflow.execute import run_or_read
    from clloop_jax.workflow.files import CheckpointError
    copy = tmp_path / "copy"
    shutil.copytree(digits_run, copy)
    monkeypatch.setattr(ExperimentConfig, "build", lambda self: pytest.fail("a finished folder is trained again"))
    R, baseline = run_or_read(PRESETS["tiny-digits"], str(copy))
    for seed in range(PRESETS["tiny-digits"].seeds):
        np.testing.assert_array_equal(R[seed], matrix(copy, seed)[1:])
        np.testing.assert_array_equal(baseline[seed], matrix(copy, seed)[0])
    monkeypatch.undo()
    other = dataclasses.replace(PRESETS["tiny-digits"], seeds=1)
    with pytest.raises(CheckpointError, match="holds a run of another configuration"):
        run_or_read(other, str(copy))


def test_the_permuted_mnist_preset_takes_the_long_stream_options_from_the_command_line():
    from clloop_jax.workflow.cli import RunArgs, _split_preset
    import tyro
    experiment, rest = _split_preset(["--preset", "permuted-mnist", "--tasks", "500", "--evaluate-every", "25"])
    args = tyro.cli(RunArgs, args=rest + ["--out", "x"], default=RunArgs(out="", experiment=experiment),
                    config=(tyro.conf.FlagCreatePairsOff,))
    e = args.experiment
    assert (e.data.permuted_tasks, e.train.evaluate_every, e.train.traces, e.data.sampling) == (500, 25, "tasks",
                                                                                                 "epoch")
    config = e.run_config()
    assert (config.evaluate_every, config.traces, config.episodes_per_task) == (25, "tasks", 4000 // e.data.batch_size)
    with pytest.raises(ValueError, match="train.evaluate_every"):
        TrainConfig(evaluate_every=0)
    with pytest.raises(ValueError, match="train.traces"):
        TrainConfig(traces="task")
    with pytest.raises(ValueError, match="data.sampling"):
        DataConfig(sampling="online")


def test_a_run_that_evaluates_every_second_task_writes_nan_rows_and_per_task_traces(tmp_path):
    """Digits split into 5 tasks, each learned in one pass (sampling epoch) with every task evaluated after tasks 2, 4
    and 5 only: the folder's matrices hold the diagonal elsewhere, the summary reads them, traces.jsonl has one line
    per seed and task."""
    folder = tmp_path / "long"
    code, message = run(tmp_path / "refused", "--sampling", "epoch", "--episodes-per-task", "9")
    assert code == 2 and "episodes_per_task must be 8" in message, message
    code, message = run(folder, "--evaluate-every", "2", "--traces", "tasks", "--sampling", "epoch",
                        "--episodes-per-task", "8", "--strategy", "none")   # 283 training samples per task // 32
    assert code == 0, message
    for seed in (0, 1):
        R = matrix(folder, seed)[1:]
        for i in range(5):
            off = np.delete(R[i], i)
            assert (np.isnan(off).all() if i in (0, 2) else np.isfinite(off).all()), (i, R[i])
        assert np.isfinite(np.diag(R)).all()
    summary = json.load(open(folder / "summary.json"))["metrics"]
    assert np.isfinite(summary["average_forgetting"]["mean"]) and np.isfinite(summary["forward_transfer"]["mean"])
    lines = [json.loads(line) for line in open(folder / "traces.jsonl")]
    assert len(lines) == 2 * 5 and all("episode" not in line for line in lines)
    assert sorted(os.listdir(folder / "plots")) == ["divergence.png", "matrix.png", "scores.png"]
