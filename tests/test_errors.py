"""The NaN alarm's check: ``all_finite`` says whether every floating-point element of its arguments is finite."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from clloop_jax.run.errors import all_finite


def tree(seed):
    rng = np.random.default_rng(seed)
    return {"w": rng.normal(size=(4, 3)).astype(np.float32), "b": rng.normal(size=(3,)).astype(np.float32),
            "layers": [rng.normal(size=(2, 2)).astype(np.float32) for _ in range(3)],
            "half": jnp.asarray(rng.normal(size=(5,)), jnp.bfloat16), "count": np.int32(7)}


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("where", ["w", "b", "layers", "half", "scalar"])
def test_one_bad_element_anywhere_is_found(bad, where):
    t = tree(0)
    assert bool(all_finite(t, jnp.float32(1.0)))
    scalar = jnp.float32(1.0)
    if where == "layers":
        t["layers"][2] = t["layers"][2].copy()
        t["layers"][2][1, 0] = bad
    elif where == "half":
        t["half"] = t["half"].at[4].set(bad)
    elif where == "scalar":
        scalar = jnp.float32(bad)
    else:
        t[where] = t[where].copy()
        t[where].flat[-1] = bad
    leaves = [np.asarray(x, np.float64) for x in jax.tree.leaves((t, scalar))]
    expected = all(np.isfinite(x).all() for x in leaves)
    assert not expected
    assert bool(all_finite(t, scalar)) == expected
    assert bool(jax.jit(all_finite)(t, scalar)) == expected


def test_integers_are_not_checked_and_nothing_is_finite():
    assert bool(all_finite({"n": np.int32(-1)}, ()))
    assert bool(all_finite())


def test_one_reduction_for_a_whole_tree():
    """A tree of 33 leaves is checked by one reduction, not one per leaf."""
    leaves = [jnp.ones((i + 1, 3)) for i in range(33)]
    text = jax.jit(all_finite).lower(leaves).as_text()
    assert text.count("stablehlo.reduce") == 1



def test_the_task_loop_resumes_and_stops_where_its_check_raises():
    """``task_loop``: the host's one loop over tasks (``Run.run_stepwise`` and the folder driver ``execute``)."""
    from clloop_jax.run import task_loop
    step = lambda s, t: (s + 10 * t, 100 + t, f"t{t}")  # noqa: E731
    seen = []
    rows, traces = [-1], ["t0"]                      # resumed after task 0
    state = task_loop(step, 1, 4, start=1, rows=rows, traces=traces,
                      after=lambda *a: seen.append((a[0], a[1], a[2], list(a[3]), list(a[4]))))
    assert state == 1 + 10 + 20 + 30
    assert rows == [-1, 101, 102, 103] and traces == ["t0", "t1", "t2", "t3"]
    assert seen == [(1, 1, 11, [-1, 101], ["t0", "t1"]), (2, 11, 31, [-1, 101, 102], ["t0", "t1", "t2"]),
                    (3, 31, 61, [-1, 101, 102, 103], ["t0", "t1", "t2", "t3"])]

    def check(task, before, new, rows, traces):
        if new > 20:
            raise FloatingPointError(f"task {task}: {before} -> {new}")

    with pytest.raises(FloatingPointError, match="task 2: 11 -> 31"):   # task 3 never runs
        task_loop(step, 1, 4, start=1, after=check)
