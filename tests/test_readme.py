"""The README's code examples run as written and print what the README says they print."""
import contextlib
import io
import pathlib
import re

import pytest

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


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


def test_custom_world_example_prints_expert_score_one():
    printed = run_block(block_with("class Reach(MultiModalEnv)"))
    assert printed.strip() == "(50, 4, 2, 2) 1.0"


def test_own_strategy_example_runs():
    printed = run_block(block_with("class PullHP(NamedTuple)"))
    assert printed.strip() == "(2, 5)"


@pytest.mark.slow
def test_functional_api_example_runs_seeds_and_sweep():
    printed = run_block(block_with("summarize(results.R"))
    assert printed.startswith("(4, 3, 3) [")


@pytest.mark.slow
def test_seed_example_runs():
    printed = run_block(block_with("ContinualLearningLoop(model=model, environment=environment"))
    assert "task 3/3" in printed and "average_performance" in printed
