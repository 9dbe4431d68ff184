"""Live mirrors of a run folder (``clloop run --log tensorboard,wandb``): the numbers they hold are the folder's,
a resumed run logs only the tasks it runs, and a bad ``--log`` is refused before anything is made."""
import csv
import glob
import json
import os
import pathlib
import shutil
import struct
import subprocess
import sys

import numpy as np
import pytest
from test_workflow import TINY

from clloop_jax.workflow import cli
from clloop_jax.workflow.execute import execute
from clloop_jax.workflow.runs import RunFolder
from clloop_jax.workflow.trackers import TensorBoardTracker, Trackers, tracker_names

pytest.importorskip("tensorboardX")
pytest.importorskip("wandb")


@pytest.fixture(scope="module")
def mirrored(tmp_path_factory):
    """The tiny run (2 tasks, 2 seeds) mirrored to TensorBoard and to an offline W&B run. The command runs in its own
    process: W&B leaves its service threads running in the process that used it, and the suite's other programs
    compile beside them."""
    out = str(tmp_path_factory.mktemp("mirrored") / "run")
    env = {k: v for k, v in os.environ.items() if k != "WANDB_MODE"}
    env["JAX_DISABLE_MOST_OPTIMIZATIONS"] = "1"   # compiled as the suite compiles
    proc = subprocess.run([sys.executable, "-m", "clloop_jax", "run", "--preset", "tiny", "--out", out, "--quiet",
                           "--log", "tensorboard,wandb"], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def folder_numbers(folder):
    """``(R [S, T, T] from R_seed*.csv (6 decimals), summary.json, {name: [S, T, E]} from traces.jsonl)``."""
    summary = json.loads(pathlib.Path(folder, "summary.json").read_text())
    R = []
    for seed in summary["seeds"]:
        rows = list(csv.reader(pathlib.Path(folder, f"R_seed{seed}.csv").read_text().splitlines()))
        R.append([[float(v) for v in row[1:]] for row in rows[2:]])   # after the header and the untrained row
    S, T = len(summary["seeds"]), len(R[0])
    lines = [json.loads(line) for line in pathlib.Path(folder, "traces.jsonl").read_text().splitlines()]
    E = 1 + max(line["episode"] for line in lines)
    traces = {}
    for line in lines:
        for name, value in line.items():
            if name not in ("seed", "task", "episode"):
                traces.setdefault(name, np.full((S, T, E), np.nan))[
                    summary["seeds"].index(line["seed"]), line["task"], line["episode"]] = float(value)
    return np.asarray(R), summary, traces


def tensorboard_scalars(path):
    """``{tag: {step: value}}`` and ``{tag: text}`` of one event file, read by its TFRecord framing (8-byte
    little-endian length, 4-byte crc, payload, 4-byte crc), each payload a tensorboardX ``Event``."""
    from tensorboardX.proto.event_pb2 import Event
    data, pos, scalars, texts = pathlib.Path(path).read_bytes(), 0, {}, {}
    while pos < len(data):
        (length,) = struct.unpack("<Q", data[pos:pos + 8])
        event = Event.FromString(data[pos + 12:pos + 12 + length])
        pos += 12 + length + 4
        for value in event.summary.value:
            if value.HasField("simple_value"):
                steps = scalars.setdefault(value.tag, {})
                assert event.step not in steps, f"{value.tag} logged twice at step {event.step}"
                steps[event.step] = value.simple_value
            elif value.HasField("tensor") and value.tensor.string_val:
                texts[value.tag] = value.tensor.string_val[0].decode()
    return scalars, texts

@pytest.mark.slow
def test_tensorboard_holds_the_folders_scores_traces_and_summary(mirrored):
    R, summary, traces = folder_numbers(mirrored)
    (events,) = glob.glob(os.path.join(mirrored, "tensorboard", "events.out.tfevents.*"))
    scalars, texts = tensorboard_scalars(events)
    T, E = traces["loss"].shape[1:]
    mean_R = np.asarray(summary["mean_R"])
    for j in range(T):   # per task: the mean over seeds (summary.json's mean_R) and each seed's (R_seed*.csv)
        assert scalars[f"score/task_{j + 1}/mean"] == {i + 1: np.float32(mean_R[i, j]) for i in range(T)}
        for s, seed in enumerate(summary["seeds"]):
            got = scalars[f"score/task_{j + 1}/seed_{seed}"]
            assert sorted(got) == list(range(1, T + 1))
            np.testing.assert_allclose([got[i + 1] for i in range(T)], R[s, :, j], rtol=0, atol=6e-7)
    for name in ("loss", "score"):   # per episode, over every task: the mean over seeds of traces.jsonl
        want = traces[name].mean(axis=0).reshape(T * E)
        assert scalars[f"episode/{name}/mean"] == {k: np.float32(v) for k, v in enumerate(want)}
    measured = np.isfinite(traces["functional"].mean(axis=0).reshape(T * E))
    assert sorted(scalars["episode/functional/mean"]) == list(np.flatnonzero(measured))   # NaN: not logged
    for metric, stats in summary["metrics"].items():
        if np.isfinite(stats["mean"]):
            assert scalars[f"summary/{metric}/mean"] == {T: np.float32(stats["mean"])}
        if np.isfinite(stats["ci"]):
            assert scalars[f"summary/{metric}/ci95"] == {T: np.float32(stats["ci"])}
    assert "summary/average_performance/ci95" in scalars
    config = json.loads("\n".join(line[4:] for line in texts["config/text_summary"].splitlines()))
    assert config["seeds"] == summary["seeds"] and config["config"]["train"]["episodes_per_task"] == E


def wandb_records(path):
    """The records of an offline W&B run's ``.wandb`` file (W&B's LevelDB-style log: a 7-byte header, then 32 KiB
    blocks of chunks with a 4-byte crc, 2-byte length and 1-byte type), each a ``wandb_internal_pb2.Record``."""
    from wandb.proto import wandb_internal_pb2
    data, pos, block, records, pending = pathlib.Path(path).read_bytes(), 7, 32768, [], b""
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        if block - pos % block < 7:   # a block's tail too short for a chunk's header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0:
            pos += block - pos % block
            continue
        pending += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):   # a whole record, or the last chunk of one
            records.append(wandb_internal_pb2.Record.FromString(pending))
            pending = b""
    return records

@pytest.mark.slow
def test_an_offline_wandb_run_in_the_folder_holds_the_same_numbers(mirrored):
    R, summary, traces = folder_numbers(mirrored)
    (run_dir,) = glob.glob(os.path.join(mirrored, "wandb", "offline-run-*"))
    (path,) = glob.glob(os.path.join(run_dir, "run-*.wandb"))
    records = wandb_records(path)
    history, final, config = [], {}, {}
    for record in records:
        kind = record.WhichOneof("record_type")
        if kind == "history":
            history.append({"/".join(i.nested_key) or i.key: json.loads(i.value_json) for i in record.history.item})
        elif kind == "summary":
            final.update({"/".join(u.nested_key) or u.key: json.loads(u.value_json) for u in record.summary.update})
        elif kind == "run":
            assert record.run.project == "clloop_jax" and record.run.display_name == "run"
            config = {u.key: json.loads(u.value_json) for u in record.run.config.update}
    assert config["seeds"] == summary["seeds"] and config["train"]["episodes_per_task"] == traces["loss"].shape[2]
    tasks = [row for row in history if "tasks_finished" in row]
    T = R.shape[1]
    assert [row["tasks_finished"] for row in tasks] == list(range(1, T + 1))
    for i, row in enumerate(tasks):
        for j in range(T):
            assert row[f"score/task_{j + 1}/mean"] == summary["mean_R"][i][j]
            for s, seed in enumerate(summary["seeds"]):
                assert abs(row[f"score/task_{j + 1}/seed_{seed}"] - R[s, i, j]) <= 5e-7
    episodes = [row for row in history if "episode" in row]
    assert [row["episode"] for row in episodes] == list(range(traces["loss"].size // len(summary["seeds"])))
    np.testing.assert_array_equal([row["episode/loss/mean"] for row in episodes],
                                  traces["loss"].mean(axis=0).reshape(-1))
    for metric, stats in summary["metrics"].items():
        assert final[f"summary/{metric}/mean"] == stats["mean"]
    assert final["summary/average_performance/ci95"] == summary["metrics"]["average_performance"]["ci"]
    assert any(r.WhichOneof("record_type") == "exit" and r.exit.exit_code == 0 for r in records)


class Recorder:
    """A tracker that writes down what it is given and checks that the folder holds each task it is shown."""

    def __init__(self, folder):
        self.folder, self.calls = folder, []

    def start(self, config, seeds, first_task=0):
        self.calls.append(("start", first_task))

    def task(self, task_index, rows, traces):
        assert os.path.isfile(os.path.join(self.folder, "checkpoints", f"task_{task_index}.json"))
        self.calls.append(("task", task_index))

    def finish(self, metrics, num_tasks):
        self.calls.append(("finish", num_tasks))

    def close(self):
        self.calls.append(("close",))

@pytest.mark.slow
def test_a_resumed_run_logs_only_the_tasks_it_runs(mirrored, tmp_path):
    folder = str(tmp_path / "run")
    shutil.copytree(mirrored, folder)
    for name in ("checkpoints/task_1", "checkpoints/task_1.json"):   # as if stopped after the first task
        path = os.path.join(folder, name)
        shutil.rmtree(path) if os.path.isdir(path) else os.unlink(path)
    run, hp = TINY.build()
    recorder = Recorder(folder)
    execute(run, hp, [0, 1], folder=RunFolder(folder, resume=True), config=TINY,
            trackers=[recorder, TensorBoardTracker(folder)])
    assert recorder.calls == [("start", 1), ("task", 1), ("finish", 2), ("close",)]
    first, resumed = sorted(glob.glob(os.path.join(folder, "tensorboard", "events.out.tfevents.*")),
                            key=os.path.getmtime)
    before, after = tensorboard_scalars(first)[0], tensorboard_scalars(resumed)[0]
    assert sorted(after["score/task_1/mean"]) == [2]   # task 1 was restored, not logged again
    assert after["score/task_1/mean"][2] == before["score/task_1/mean"][2]   # the uninterrupted run's number


class Failing(Recorder):
    def close(self):
        raise RuntimeError("the service is gone")


def test_a_tracker_that_fails_to_close_does_not_hide_why_the_run_stopped(tmp_path, capsys):
    other = Recorder(str(tmp_path))
    with pytest.raises(KeyboardInterrupt), Trackers([Failing(str(tmp_path)), other]):
        raise KeyboardInterrupt
    assert other.calls == [("close",)]   # the others are closed all the same
    assert "failed to close after the run stopped: RuntimeError: the service is gone" in capsys.readouterr().err
    with pytest.raises(RuntimeError, match="the service is gone"), Trackers([Failing(str(tmp_path))]):
        pass   # after a run that ended well, the failure is the error


@pytest.mark.parametrize("command", ["run", "compare"])
@pytest.mark.parametrize("value,words", [("tensorbord", "unknown tracker 'tensorbord'"),
                                         ("tensorboard,tensorboard", "names a tracker twice"),
                                         ("wandb,", "unknown tracker ''")])
def test_a_bad_log_is_refused_with_one_line_and_no_folder(command, value, words, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as done:
        cli.main([command, "--preset", "tiny", "--out", str(out), "--quiet", "--log", value])
    message = str(done.value.code)
    assert message.startswith(f"clloop {command}: --log") and words in message and "\n" not in message
    assert "the valid names are tensorboard, wandb" in message
    assert not out.exists()


@pytest.mark.parametrize("log,name,module", [("tensorboard", "tensorboard", "tensorboardX"),
                                             ("tensorboard,wandb", "wandb", "wandb")])
def test_a_missing_package_names_the_extra_to_install(log, name, module, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, module, None)   # `import module` raises ImportError
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as done:
        cli.main(["run", "--preset", "tiny", "--out", str(out), "--quiet", "--log", log])
    assert f"pip install 'clloop_jax[{name}]'" in str(done.value.code) and "\n" not in str(done.value.code)
    assert not out.exists()
    with pytest.raises(ImportError, match=rf"--log {name} needs the {module} package"):
        tracker_names(name)


def test_no_log_is_no_tracker():
    assert tracker_names("") == () and tracker_names(" tensorboard , wandb ") == ("tensorboard", "wandb")
