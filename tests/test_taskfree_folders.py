"""Streams with hidden switches described by the experiment's configuration (``taskfree``: abrupt, irregular or
gradual switches) and run into folders: each seed's own switch times, segments of unequal length in the traces,
the hidden truth and the detection on disk, read back without training again."""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
import pytest

from clloop_jax.taskfree import abrupt_schedule, detection_metrics, gradual_schedule, irregular_schedule
from clloop_jax.workflow.execute import run_or_read
from clloop_jax.workflow.experiment import PRESETS, ExperimentConfig, TaskFreeConfig, experiment_from_dict
from clloop_jax.workflow.files import CheckpointError
from clloop_jax.workflow.runs import RunFolder


def same_schedule(a, b):
    return (a.kind == b.kind and np.array_equal(a.weights, b.weights) and np.array_equal(a.order, b.order)
            and np.array_equal(a.boundaries, b.boundaries) and np.array_equal(a.changes, b.changes))


def test_the_configured_schedules_are_the_library_schedules_of_those_lengths():
    """Tasks of 20 episodes: abrupt switches every 20; irregular ones drawn per seed with the seed's number, each
    segment at least int(0.6 * 20) = 12; a gradual blend of int(0.5 * 20) = 10 episodes."""
    assert same_schedule(TaskFreeConfig().schedules(3, 20, range(2)), abrupt_schedule([20, 20, 20]))
    assert same_schedule(TaskFreeConfig(schedule="gradual").schedules(3, 20, range(2)),
                         gradual_schedule([20, 20, 20], blend=10))
    per_seed = TaskFreeConfig(schedule="irregular").schedules(3, 20, [0, 1, 7])
    for seed, s in zip([0, 1, 7], per_seed):
        assert same_schedule(s, irregular_schedule(3, 60, 12, seed=seed))
        assert s.num_episodes == 60 and np.diff(np.concatenate([[0], s.boundaries, [60]])).min() >= 12
    assert len({tuple(s.boundaries.tolist()) for s in per_seed}) == 3          # each seed its own switches
    assert np.array_equal(TaskFreeConfig(schedule="irregular", min_segment=1.0).schedules(3, 20, [4])[0].boundaries,
                          [20, 40])                                              # no room left: the abrupt stream
    assert TaskFreeConfig("irregular", min_segment=0.29, blend=0.57).episodes(100) == {"min_length": 29, "blend": 57}


@pytest.mark.parametrize("settings, message", [
    (dict(schedule="sometimes"), "taskfree.schedule must be one of ['abrupt', 'irregular', 'gradual']"),
    (dict(blend=0.0), "taskfree.blend must be a finite number > 0 and <= 1, got 0.0"),
    (dict(min_segment=1.5), "taskfree.min_segment must be a finite number > 0 and <= 1, got 1.5"),
    (dict(blend=True), "taskfree.blend must be a finite number > 0 and <= 1, got True"),
])
def test_bad_schedule_settings_are_refused_naming_the_field(settings, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        TaskFreeConfig(**settings)


def test_the_schedule_is_part_of_a_hidden_stream_only():
    known = PRESETS["tiny-digits"]
    hidden = dataclasses.replace(known, boundaries="oracle", taskfree=TaskFreeConfig(schedule="irregular"))
    assert "taskfree" not in known.resolved() and hidden.resolved()["taskfree"] == TaskFreeConfig("irregular")
    assert experiment_from_dict(json.loads(json.dumps({"source": "digits", "boundaries": "oracle", "taskfree": {
        "schedule": "irregular"}}))).taskfree == TaskFreeConfig("irregular")
    with pytest.raises(ValueError, match="--schedule 'irregular' is not used with --boundaries known"):
        dataclasses.replace(hidden, boundaries="known")
    with pytest.raises(ValueError, match="--min-segment 0.01 of 20 episodes per task is shorter than one episode"):
        dataclasses.replace(hidden, taskfree=TaskFreeConfig("irregular", min_segment=0.01))
    with pytest.raises(ValueError, match=r"^--hidden-dim 16 is not used with --source digits"):   # each by its cause
        ExperimentConfig(source="digits", model=dataclasses.replace(known.model, hidden_dim=16),
                         taskfree=TaskFreeConfig("gradual"))


def test_an_irregular_stream_consolidates_at_each_seeds_own_switches_and_keeps_them_on_disk(tmp_path, monkeypatch):
    """The oracle consolidates after the last episode of every segment but the last: at each seed's own switch
    times. The folder holds every seed's segments at their own lengths, the truth they were drawn from, and the
    detection of its alarms; a second call reads the folder without training, and another configuration is
    refused there."""
    experiment = dataclasses.replace(PRESETS["tiny-digits"], boundaries="oracle",
                                     taskfree=TaskFreeConfig(schedule="irregular", min_segment=0.5))
    path = str(tmp_path / "irregular")
    R, baseline = run_or_read(experiment, path)
    schedules = experiment.taskfree.schedules(5, 20, range(2))
    truth = json.load(open(os.path.join(path, "schedule.json")))
    assert [t["boundaries"] for t in truth] == [s.boundaries.tolist() for s in schedules]
    assert truth[0]["boundaries"] != truth[1]["boundaries"] and [t["seed"] for t in truth] == [0, 1]

    rows = [json.loads(line) for line in open(os.path.join(path, "traces.jsonl"))]
    detection = json.load(open(os.path.join(path, "detection.json")))
    for seed, s in enumerate(schedules):
        lengths = np.diff(np.concatenate([[0], s.boundaries, [s.num_episodes]]))
        mine = [r for r in rows if r["seed"] == seed]
        for k, n in enumerate(lengths):
            assert [r["episode"] for r in mine if r["task"] == k] == list(range(n))
        consolidated = np.array([r["consolidated"] for r in mine])       # stream order: segments in turn
        assert np.flatnonzero(consolidated).tolist() == (s.boundaries - 1).tolist()
        alarms = np.array([r["alarm"] for r in mine])
        found = detection_metrics(alarms, s)
        assert detection["missed"][seed] == found["missed"] and detection["false_alarms"][seed] == found["false_alarms"]
        assert detection["consolidations"][seed] == len(s.boundaries)
    traces = RunFolder(path, resume=True).read_traces()                        # [S, K, longest]: NaN beyond a segment
    longest = max(np.diff(np.concatenate([[0], s.boundaries, [100]])).max() for s in schedules)
    assert traces["loss"].shape == (2, 5, longest) and np.isnan(traces["loss"]).sum() == 2 * 5 * longest - 200
    assert R.shape == (2, 5, 5) and baseline.shape == (2, 5)

    monkeypatch.setattr(ExperimentConfig, "build_taskfree", lambda *a, **k: pytest.fail("a finished folder ran again"))
    again, _ = run_or_read(experiment, path)
    np.testing.assert_array_equal(again, R)
    other = dataclasses.replace(experiment, taskfree=TaskFreeConfig(schedule="gradual"))
    before = open(os.path.join(path, "config.json")).read()
    with pytest.raises(CheckpointError, match="holds a run of another configuration or other seeds"):
        run_or_read(other, path)
    with pytest.raises(CheckpointError, match="holds a run of another configuration or other seeds"):
        run_or_read(experiment, path, seeds=[100, 101])                       # held-out seeds: another folder
    with pytest.raises(ValueError, match=r"seeds must be experiment.seeds = 2 seeds, got \[100\]"):
        run_or_read(experiment, path, seeds=[100])
    assert open(os.path.join(path, "config.json")).read() == before


def test_held_out_seeds_train_their_own_folder_with_their_own_switches(tmp_path):
    """Tuning seeds (100, 101) are trained into a folder of their own: seeds.json holds them and each one's switch
    times are drawn with its number, as the reported seeds' are with theirs."""
    experiment = dataclasses.replace(PRESETS["tiny-digits"], boundaries="none",
                                     taskfree=TaskFreeConfig(schedule="irregular"))
    path = tmp_path / "tuning"
    R, _ = run_or_read(experiment, str(path), seeds=[100, 101])
    assert json.loads((path / "seeds.json").read_text()) == [100, 101] and R.shape == (2, 5, 5)
    truth = json.loads((path / "schedule.json").read_text())
    assert [t["seed"] for t in truth] == [100, 101]
    assert [t["boundaries"] for t in truth] == [irregular_schedule(5, 100, 12, seed=s).boundaries.tolist()
                                                for s in (100, 101)]


def test_a_diverging_hidden_stream_names_the_seed_by_its_number(tmp_path):
    """A learning rate that makes the loss non-finite: the stream stops with the seed as the folder numbers it (a
    held-out 100, not its place in the batch), the segment and the episode, and no finished folder is left."""
    from clloop_jax.run.errors import NonFiniteError
    experiment = dataclasses.replace(PRESETS["tiny-digits"], boundaries="none",
                                     train=dataclasses.replace(PRESETS["tiny-digits"].train, learning_rate=1e30))
    with pytest.raises(NonFiniteError, match=r"diverged at seed 100, segment 0, episode \d+") as caught:
        run_or_read(experiment, str(tmp_path / "diverged"), seeds=[100, 101])
    assert caught.value.seed == 100 and caught.value.task == 0
    assert not (tmp_path / "diverged" / "summary.json").exists()
