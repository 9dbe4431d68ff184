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


def test_notebook_code_parses_and_uses_names_the_library_has():
    """The fast check of every notebook: its code is valid Python, each name it imports from clloop_jax exists, and
    so does each attribute it reads from a clloop_jax module it imported (``report.plot_sweep``, ...)."""
    import ast
    import importlib
    for path in sorted(NOTEBOOKS.glob("*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        tree = ast.parse("\n\n".join(c.source for c in nb.cells if c.cell_type == "code"), filename=path.name)
        modules = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("clloop_jax"):
                module = importlib.import_module(node.module)
                for alias in node.names:
                    try:   # a name of the module, or one of its submodules (from clloop_jax import report)
                        value = getattr(module, alias.name, None) or importlib.import_module(
                            f"{node.module}.{alias.name}")
                    except ImportError:
                        raise AssertionError(f"{path.name}: {node.module} has no {alias.name}") from None
                    if isinstance(value, type(module)):
                        modules[alias.asname or alias.name] = value
        used = [(node.value.id, node.attr) for node in ast.walk(tree)
                if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in modules]
        for name, attr in used:
            assert hasattr(modules[name], attr), f"{path.name}: {name}.{attr} does not exist"

@pytest.mark.slow
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
    # EWC's penalty: zero while learning the first task; on the second, zero at its first update (the parameters are
    # still at the anchor) and positive once they have moved away from it
    penalty = np.asarray(rec["penalty"])
    assert penalty.shape == (2, rec["episodes"]) and np.all(penalty[0] == 0)
    assert abs(penalty[1, 0]) < 1e-6 and np.all(penalty[1, 1:] > 1e-6)
    # the report's figure shows inline as the cell's value, and so does the user's own plt figure after it
    matrix_cell, plt_cell = cell_with(nb, "report.plot_matrix"), cell_with(nb, "plt.show()")
    assert [o.output_type for o in matrix_cell.outputs] == ["execute_result"]
    assert len(pngs_of(matrix_cell)) == 1 and pngs_of(matrix_cell)[0][:8] == PNG
    assert len(pngs_of(plt_cell)) == 1 and pngs_of(plt_cell)[0][:8] == PNG
    assert rec["fignums"] == [] and "inline" in rec["backend"]


@pytest.mark.slow
def test_seeds_and_sweep(tmp_path):
    probe = ('{"R": R.tolist(), "baseline": baseline.tolist(), "R_sweep": R_sweep.tolist(), '
             '"baseline_sweep": baseline_sweep.tolist(), "lambdas": LAMBDAS, "seeds": SEEDS, '
             '"mean": float(mean), "half": float(half)}')
    nb, rec = run_notebook("seeds_and_sweep.ipynb", tmp_path, probe)
    R, b = np.asarray(rec["R"]), np.asarray(rec["baseline"])
    R_sweep, b_sweep = np.asarray(rec["R_sweep"]), np.asarray(rec["baseline_sweep"])
    S, K = rec["seeds"], len(rec["lambdas"])
    assert R.shape == (S, 2, 2) and R_sweep.shape == (K, S, 2, 2) and np.all(np.isfinite(R_sweep))
    # seeds differ from one another, and the untrained scores do not depend on lambda
    assert not np.allclose(R[0], R[1])
    np.testing.assert_allclose(b_sweep, np.broadcast_to(b, b_sweep.shape), atol=1e-5)
    # with lambda = 0 nothing holds the first task, so lambda's column in the sweep changes the results
    assert not np.allclose(R_sweep[0], R_sweep[-1])
    # the printed interval is mean_ci of the per-seed average performance
    from clloop_jax.metrics import mean_ci
    m, h = mean_ci(R[:, -1].mean(axis=-1))
    assert rec["mean"] == pytest.approx(m, abs=1e-6) and rec["half"] == pytest.approx(h, abs=1e-6)
    out = text_of(cell_with(nb, "report.summary(R, baseline)"))
    assert f"average_performance: {m:+.3f} +- {h:.3f}  (n = {S})" in out
    # one printed line per lambda, with the report's cell of that lambda's seeds
    sweep_text = text_of(cell_with(nb, "grid(keys, sweep)"))
    from clloop_jax import report
    for lam, R_k, b_k in zip(rec["lambdas"], R_sweep, b_sweep):
        acc = report.cell(report.summary(R_k, b_k)["average_performance"]["values"])
        assert f"lambda {lam:>5g}: average performance {acc}" in sweep_text
    assert "| lambda 10 |" in text_of(cell_with(nb, "paired_table"))
    plot = cell_with(nb, "report.plot_sweep")
    assert len(pngs_of(plot)) == 1 and pngs_of(plot)[0][:8] == PNG


@pytest.mark.slow
def test_your_own_strategy(tmp_path):
    probe = ('{"R": {k: v[0].tolist() for k, v in results.items()}, "held": held, '
             '"penalty": {k: v["penalty"].tolist() for k, v in traces.items()}, "fraction": 0.3}')
    nb, rec = run_notebook("your_own_strategy.ipynb", tmp_path, probe)
    R = {k: np.asarray(v) for k, v in rec["R"].items()}
    assert set(R) == {"fine-tuning", "ewc", "top_fisher"} and all(np.all(np.isfinite(r)) for r in R.values())
    # the custom strategy ran its own hooks: nothing held during task 0; on task 1 no pull at its first update (the
    # parameters are at the anchor), a positive one after; each of the two consolidations adds at most the fraction
    pen = {k: np.asarray(v) for k, v in rec["penalty"].items()}
    assert np.all(pen["top_fisher"][:, 0] == 0) and np.all(pen["top_fisher"][:, 1, 0] == 0)
    assert np.all(pen["top_fisher"][:, 1, 1:] > 1e-6)
    assert 0.9 * rec["fraction"] <= rec["held"] <= 2 * rec["fraction"]
    assert np.all(pen["fine-tuning"] == 0) and np.all(pen["ewc"][:, 1, 1:] > 1e-6)   # lam = 0 is fine-tuning
    assert f"share of weights held (mean over seeds): {rec['held']:.3f}" in text_of(cell_with(nb, "held ="))
    table = text_of(cell_with(nb, "report.summary_table(results)"))
    from clloop_jax import report
    for name, r in R.items():
        assert f"| {name} | {report.cell(r[:, -1].mean(axis=-1))} |" in table
    plot = cell_with(nb, "report.plot_comparison")
    assert len(pngs_of(plot)) == 1 and pngs_of(plot)[0][:8] == PNG


@pytest.mark.slow
def test_continual_rl_gymnax(tmp_path):
    probe = ('{"returns": returns.tolist(), "random_return": random_return.tolist(), '
             '"R": {k: v[0].tolist() for k, v in results.items()}, "tasks": len(TASKS), "seeds": SEEDS}')
    nb, rec = run_notebook("continual_rl_gymnax.ipynb", tmp_path, probe)
    returns, random_return = np.asarray(rec["returns"]), np.asarray(rec["random_return"])
    T, S = rec["tasks"], rec["seeds"]
    assert returns.shape == (2, S, T, T) and np.all(returns < 0) and np.all(random_return < 0)  # Pendulum's costs
    # the normalization: 0 = the random policy's return, 1 = a return of zero
    for k, name in enumerate(rec["R"]):
        np.testing.assert_allclose(rec["R"][name], 1.0 - returns[k] / random_return, rtol=1e-6)
    # the same seeds start from the same agent, so both lambdas agree after the first task (no penalty yet)
    np.testing.assert_allclose(returns[0, :, 0], returns[1, :, 0], rtol=1e-4)
    assert "| fine-tuning |" in text_of(cell_with(nb, "report.summary_table"))
    plot = cell_with(nb, "report.plot_comparison")
    assert len(pngs_of(plot)) == 1 and pngs_of(plot)[0][:8] == PNG
