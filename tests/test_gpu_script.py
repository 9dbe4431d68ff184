"""The accelerator benchmark's driver (benchmarks/gpu.py) without running the benchmarks: its budget, the record of a
step that fails, times out or is skipped, Avalanche's 64-seed estimate, and the suite's size options."""
import json
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks import gpu, run  # noqa: E402


def test_estimate_is_64_times_the_mean_seed_time():
    peer = {"avalanche": {"none": {"seconds_per_seed": [2.0, 4.0]}, "ewc": {"seconds_per_seed": []}}}
    assert gpu._estimate_64(peer) == {"none": {"seconds_per_seed": 3.0, "estimated_64_s": 192.0}}


def test_step_records_failure_timeout_and_skip(tmp_path):
    import time
    log = {}
    deadline = time.monotonic() + 600
    assert gpu.step("bad", ["-c", "import sys; print('boom'); sys.exit(3)"], str(tmp_path / "x.json"),
                    deadline, 0.5, log) is None
    assert log["bad"]["status"] == "failed" and log["bad"]["returncode"] == 3 and "boom" in log["bad"]["tail"]
    out = tmp_path / "ok.json"
    code = f"import json; json.dump({{'v': 1}}, open({str(out)!r}, 'w'))"
    assert gpu.step("ok", ["-c", code], str(out), deadline, 0.5, log) == {"v": 1}
    assert log["ok"]["status"] == "ok"
    assert gpu.step("slow", ["-c", "import time; time.sleep(30)"], str(tmp_path / "s.json"),
                    time.monotonic() + 4, 0.5, log, min_seconds=1) is None     # a share of 2 s of the 4 left
    assert log["slow"]["status"].startswith("timed out")
    assert gpu.step("late", ["-c", "pass"], str(tmp_path / "l.json"), time.monotonic() + 10, 0.9, log) is None
    assert log["late"]["status"] == "skipped" and "budget" in log["late"]["reason"]


@pytest.mark.parametrize("argv", [["--budget", "0"], ["--budget", "-5"]])
def test_budget_must_be_positive(argv, capsys):
    with pytest.raises(SystemExit):
        gpu.main(argv)
    assert "--budget must be > 0" in capsys.readouterr().err


@pytest.mark.parametrize("value", ["", "1,x", "0,4"])
def test_suite_refuses_bad_counts(value, capsys):
    with pytest.raises(SystemExit):
        run.main(["--only", "peak", "--worlds", value])
    assert "--worlds: expected comma-separated positive integers" in capsys.readouterr().err


def test_suite_takes_world_and_seed_counts(tmp_path):
    out = tmp_path / "b.json"
    run.main(["--quick", "--only", "peak", "--worlds", "2,8", "--seeds", "3", "--out", str(out)])
    sizes = json.loads(out.read_text())["sizes"]
    assert sizes["worlds"] == [2, 8] and sizes["seeds"] == [3]
