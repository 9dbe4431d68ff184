"""The Avalanche comparison's own side runs end to end at a tiny size without PyTorch, writes the JSON its table is
made from, and compares the two sides' numbers correctly (times are recorded, never asserted: the machines are
shared)."""
import json
import math
import pathlib
import sys

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import peer_avalanche as pa  # noqa: E402


def test_ours_only_writes_accuracies_and_times_without_pytorch(tmp_path, capsys):
    out = tmp_path / "peer.json"
    loaded = {name: name in sys.modules for name in ("torch", "avalanche")}   # another test may have loaded torch
    pa.main(["--ours-only", "--seeds", "2", "--updates", "3", "--strategies", "none", "--out", str(out)])
    blob = json.loads(out.read_text())
    assert {name: name in sys.modules for name in loaded} == loaded          # our side imports neither
    assert blob["machine"]["cpu_count"] >= 1 and blob["machine"]["cpu_model"] and blob["machine"]["jax"]
    assert len(blob["machine"]["load_avg"]) == 3 and "torch" not in blob["machine"]
    assert blob["ours_settings"]["seeds"] == 2 and blob["ours_settings"]["updates"] == 3
    assert set(blob["ours_settings"]["strategies"]) == set(pa.STRATEGIES)
    assert "avalanche" not in blob or not blob["avalanche"]
    res = blob["ours"]["none"]
    R = np.asarray(res["R"])
    assert R.shape == (2, 5, 5) and np.all((R >= 0) & (R <= 1))
    np.testing.assert_allclose(res["final_acc"], R[:, -1].mean(axis=1))
    assert res["compile_s"] > 0 and res["run_s"] > 0
    (row,) = blob["rows"]
    assert row["strategy"] == "none" and "avalanche" not in row and "run_ratio" not in row
    assert math.isclose(row["ours"]["total_s"], res["compile_s"] + res["run_s"])
    assert 0 <= row["ours"]["acc_mean"] <= 1
    capsys.readouterr()
    pa.main(["--table", "--out", str(out)])
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("| strategy | clloop_jax ACC | Avalanche ACC |") and len(lines) == 3
    assert lines[2].startswith("| none | ") and lines[2].split("|")[3].strip() == "-"  # no Avalanche result


def test_rows_compare_the_sides_on_given_numbers():
    blob = {"ours": {"agem": {"final_acc": [0.70, 0.72, 0.74], "compile_s": 10.0, "run_s": 5.0}},
            "avalanche": {"agem": {"final_acc": [0.88, 0.88, 0.88], "compile_s": 0.0, "run_s": 60.0}}}
    (row,) = pa.summarize(blob)
    assert math.isclose(row["run_ratio"], 12.0) and math.isclose(row["total_ratio"], 4.0)
    assert math.isclose(row["acc_difference"], -0.16)
    assert math.isclose(row["ours"]["acc_ci95"], 4.302652729749464 * 0.02 / math.sqrt(3), rel_tol=1e-6)
    assert row["avalanche"]["acc_ci95"] == 0 and row["intervals_overlap"] is False
    blob["avalanche"]["agem"]["final_acc"] = [0.70, 0.74, 0.78]
    assert pa.summarize(blob)[0]["intervals_overlap"] is True
    assert pa.ratio(3.0, 2.0) == 1.5 and math.isnan(pa.ratio(1.0, 0.0)) and math.isnan(pa.ratio(None, 2.0))
    assert "| agem | 0.720 ± 0.050 | 0.740 ± 0.099 | 10.0 | 5.0 | 60.0 | 12.00 | 4.00 |" in pa.table(blob)
