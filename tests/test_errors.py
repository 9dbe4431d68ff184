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
