"""The README's code blocks run as written and print what the README says they print.

Every ``python`` block of the README is run here (and only here), each checked against the README's own words.
"""
import contextlib
import io
import pathlib
import re

import numpy as np
import pytest

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"

QUICK_START = "for ewc_lambda in (0.0, 3.0):"
FUNCTIONAL = "over_lam = jax.vmap(run"
CHECKED = (QUICK_START, FUNCTIONAL)


def python_blocks():
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def block_with(marker: str) -> str:
    found = [b for b in python_blocks() if marker in b]
    assert len(found) == 1, f"expected one README python block containing {marker!r}, found {len(found)}"
    return found[0]


def run_block(code: str) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, str(README), "exec"), {"__name__": "readme_example"})
    return out.getvalue()


def test_every_readme_block_is_checked_here():
    blocks = python_blocks()
    assert len(blocks) == len(CHECKED)
    assert all(sum(marker in b for marker in CHECKED) == 1 for b in blocks)

@pytest.mark.slow
def test_quick_start_learns_and_forgets_visibly():
    """The quick start's claim: fine-tuning learns task 1 and forgets it; EWC keeps most of it."""
    printed = run_block(block_with(QUICK_START))
    rows = re.findall(r"lambda ([\d.]+): task 1 scores ([+-][\d.]+) after learning it, ([+-][\d.]+) after task 2",
                      printed)
    assert [r[0] for r in rows] == ["0.0", "3.0"], printed
    (_, learned_ft, after_ft), (_, learned_ewc, after_ewc) = [(r[0], float(r[1]), float(r[2])) for r in rows]
    assert learned_ft > 0.5 and learned_ewc > 0.5            # task 1 is learned
    assert learned_ft - after_ft > 0.4                       # and fine-tuning forgets it
    assert after_ewc > after_ft + 0.4                        # EWC keeps it
    assert learned_ft == learned_ewc                         # lambda acts only once task 1 is consolidated

@pytest.mark.slow
def test_functional_block_runs_seeds_times_lambdas_in_one_program():
    printed = run_block(block_with(FUNCTIONAL)).splitlines()
    assert printed[0] == "(4, 3, 2, 2)"
    per_lambda = np.array(printed[1].strip("[]").split(), dtype=float)
    assert per_lambda.shape == (3,) and np.all(np.isfinite(per_lambda)) and np.all(np.abs(per_lambda) <= 1)
