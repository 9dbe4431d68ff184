"""experiments/plasticity.py without its runs: the curves' windows by hand, and what a strategy's own training process
is handed (every option but the strategy list)."""
import importlib.util
import pathlib

import numpy as np
import pytest

PATH = pathlib.Path(__file__).resolve().parents[1] / "experiments" / "plasticity.py"
spec = importlib.util.spec_from_file_location("plasticity_study", PATH)
study = importlib.util.module_from_spec(spec)
spec.loader.exec_module(study)


def test_windows_average_consecutive_tasks_the_last_one_shorter():
    x = np.array([[1.0, 2.0, 3.0, 4.0, 5.0], [0.0, 0.0, 1.0, 1.0, np.nan]])
    np.testing.assert_allclose(study.windows(x, 2), [[1.5, 3.5, 5.0], [0.0, 1.0, np.nan]])


def test_each_strategy_trains_with_every_option_but_the_list(monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr(study, "study", lambda args: calls.append(args) or {})
    monkeypatch.setattr(study, "figures", lambda args, res: None)
    study.main(["--tasks", "30", "--strategies", "none,redo", "--runs", str(tmp_path), "--out", str(tmp_path / "o"),
                "--figures", str(tmp_path), "--no-cache"])
    args = calls[0]
    assert args.strategies == ["none", "redo"]
    assert args.forward == ["--tasks", "30", "--runs", str(tmp_path), "--out", str(tmp_path / "o"), "--figures",
                            str(tmp_path), "--no-cache"]
    with pytest.raises(SystemExit):
        study.main(["--tasks", "1"])


def test_the_closed_loop_study_is_the_cartpole_preset_over_random_variants_with_the_monitors(monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr(study, "study", lambda args: calls.append(args) or {})
    monkeypatch.setattr(study, "figures", lambda args, res: None)
    study.main(["--source", "gymnax", "--tasks", "12", "--updates", "7", "--runs", str(tmp_path), "--out",
                str(tmp_path / "o"), "--figures", str(tmp_path), "--no-cache"])
    args = calls[0]
    assert args.strategies == list(study.RL_STRATEGIES) and args.seeds == 3 and args.prefix == "rl_plasticity"
    experiment = study.experiment_for(args, "ewc")
    assert experiment.source == "gymnax" and experiment.gymnax.variants == "random:12"
    assert len(experiment.gymnax.overrides()) == 12
    assert experiment.train.episodes_per_task == 7 and experiment.train.monitors == study.MONITORS
    assert (experiment.train.lam, experiment.train.learning_rate, experiment.seeds) == (1000.0, 3e-3, 3)
    assert study.experiment_for(args, "none").train.lam is None
    assert study.folders_of(args) == str(tmp_path / "cartpole_12x7")
    assert (tmp_path / "o.md").read_text().startswith("CartPole-v1, 12 variants drawn by `--variants random:12`")
