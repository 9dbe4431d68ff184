"""The notebooks in docs/notebooks run from top to bottom, headless, in their tiny setting (CLLOOP_NOTEBOOK_FAST=1),
and what they show holds: the numbers they print and the figures they display.

Each notebook runs in a fresh python3 kernel whose working directory is a temporary folder and whose PYTHONPATH
starts with the clloop_jax this test imports. After the notebook's own cells, a probe cell prints a JSON record of
the kernel's variables, so the assertions check the results themselves, not only that no cell raised.
"""
import base64
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

import clloop_jax  # noqa: E402

NOTEBOOKS = Path(__file__).resolve().parent.parent / "docs" / "notebooks"
PNG = b"\x89PNG\r\n\x1a\n"
PROBE_MARK = "PROBE:"


def _kernel_env():
    src = str(Path(clloop_jax.__file__).resolve().parent.parent)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([src] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    env["CLLOOP_NOTEBOOK_FAST"] = "1"
    # As the suite's conftest does in-process: XLA's optimisation passes off, so compilation takes half the time.
    env.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")
    env.setdefault("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    return env


def run_notebook(name, tmp_path, probe=None, timeout=600):
    """Executes ``docs/notebooks/name`` (plus a ``probe`` cell that prints a JSON record) and returns
    ``(notebook, record)``; raises nbclient's CellExecutionError naming the cell that failed."""
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in nb.cells
               if c.cell_type == "code"), f"{name} is committed with outputs"
    n_own = len(nb.cells)
    if probe is not None:
        nb.cells.append(nbformat.v4.new_code_cell(f"import json as _json\nprint({PROBE_MARK!r} + _json.dumps({probe}))"))
    client = nbclient.NotebookClient(nb, kernel_name="python3", timeout=timeout, allow_errors=False,
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute(env=_kernel_env())
    record = None
    if probe is not None:
        text = "".join(o.get("text", "") for o in nb.cells[-1].outputs if o.output_type == "stream")
        record = json.loads(text.split(PROBE_MARK, 1)[1])
        nb.cells = nb.cells[:n_own]
    return nb, record


def text_of(cell):
    return "".join(o.get("text", "") if o.output_type == "stream" else o.get("data", {}).get("text/plain", "")
                   for o in cell.outputs)


def pngs_of(cell):
    """The PNG images a cell displayed, as bytes (its value's and those shown by display / plt.show)."""
    return [base64.b64decode(o["data"]["image/png"]) for o in cell.outputs
            if o.output_type in ("display_data", "execute_result") and "image/png" in o.get("data", {})]


def cell_with(nb, needle):
    cells = [c for c in nb.cells if c.cell_type == "code" and needle in c.source]
    assert cells, f"no code cell contains {needle!r}"
    return cells[0]


def test_notebooks_are_valid_and_have_a_fast_switch():
    names = sorted(p.name for p in NOTEBOOKS.glob("*.ipynb"))
    assert names == ["continual_rl_gymnax.ipynb", "quickstart.ipynb", "seeds_and_sweep.ipynb",
                     "your_own_strategy.ipynb"]
    for name in names:
        nb = nbformat.read(NOTEBOOKS / name, as_version=4)
        nbformat.validate(nb)
        assert nb.metadata.kernelspec.name == "python3"
        assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith("# ")
        first_code = next(c for c in nb.cells if c.cell_type == "code")
        assert 'os.environ.get("CLLOOP_NOTEBOOK_FAST") == "1"' in first_code.source, name
        assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), f"{name} has outputs"


def test_quickstart(tmp_path):
    probe = ('{"R": {k: v["R"] for k, v in results.items()}, "baseline": results["EWC"]["baseline"], '
             '"acc": {k: v["average_performance"] for k, v in results.items()}, '
             '"penalty": np.asarray(loop.results.traces["penalty"]).tolist(), '
             '"fisher_total": sum(float(jnp.sum(x)) for x in jax.tree.leaves(fisher)), '
             '"fisher_shapes_match": jax.tree.structure(fisher) == jax.tree.structure(params), '
             '"episodes": EPISODES_PER_TASK, "fignums": plt.get_fignums(), "backend": plt.get_backend()}')
    nb, rec = run_notebook("quickstart.ipynb", tmp_path, probe)
    # the rollout cell: the expert scores exactly 1 against its own targets; the untrained agent is far from it
    scores = dict(re.findall(r"(untrained agent|expert): ([+-]\d+\.\d+)", text_of(cell_with(nb, "expert_policy(env)"))))
    assert float(scores["expert"]) == pytest.approx(1.0, abs=1e-3) and float(scores["untrained agent"]) < 0.5
    assert rec["fisher_shapes_match"] and rec["fisher_total"] > 0
    # both runs: a 2 x 2 matrix; the printed metrics are the matrices' (ACC = mean of the last row)
    printed = dict(re.findall(r"(fine-tuning|EWC): average performance ([+-]\d\.\d{3})",
                              text_of(cell_with(nb, "continual_learning_cycle"))))
    for name, R in rec["R"].items():
        R = np.asarray(R)
        assert R.shape == (2, 2) and np.all(np.isfinite(R))
        assert float(printed[name]) == pytest.approx(R[-1].mean(), abs=1e-3)
    # EWC's penalty is zero while learning the first task and positive on the second
    penalty = np.asarray(rec["penalty"])
    assert penalty.shape == (2, rec["episodes"]) and np.all(penalty[0] == 0) and np.all(penalty[1] > 0)
    # the report's figure shows inline as the cell's value, and so does the user's own plt figure after it
    matrix_cell, plt_cell = cell_with(nb, "report.plot_matrix"), cell_with(nb, "plt.show()")
    assert [o.output_type for o in matrix_cell.outputs] == ["execute_result"]
    assert len(pngs_of(matrix_cell)) == 1 and pngs_of(matrix_cell)[0][:8] == PNG
    assert len(pngs_of(plt_cell)) == 1 and pngs_of(plt_cell)[0][:8] == PNG
    assert rec["fignums"] == [] and "inline" in rec["backend"]
