"""Parameter and functional divergence against NumPy float64 hand computations."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from clloop_jax import divergence as div

SHAPES = [
    {"w": (3, 2), "b": (2,)},
    {"layer": {"kernel": (4, 3), "bias": (3,)}, "scale": ()},
    {"a": (5,)},
]


def random_tree(seed, shapes, scale=1.0, positive=False):
    rng = np.random.default_rng(seed)

    def leaf(shape):
        x = rng.normal(size=shape) * scale
        return np.abs(x) if positive else x

    return jax.tree.map(leaf, shapes, is_leaf=lambda s: isinstance(s, tuple))


def as_f32(tree):
    return jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), tree)


def flat64(tree):
    leaves = jax.tree.leaves(tree)
    return np.concatenate([np.ravel(np.asarray(x, np.float64)) for x in leaves])


trees = st.tuples(st.integers(0, 2**31 - 1), st.sampled_from(range(len(SHAPES))))


# ------------------------------------------------------------------------------------------------------------------
# Parameter divergence
# ------------------------------------------------------------------------------------------------------------------


@given(trees)
def test_parameter_divergences_match_numpy(seed_and_shape):
    seed, which = seed_and_shape
    shapes = SHAPES[which]
    theta = random_tree(seed, shapes)
    anchor = random_tree(seed + 1, shapes)
    fisher = random_tree(seed + 2, shapes, positive=True)
    t, a, f = flat64(theta), flat64(anchor), flat64(fisher)
    l2 = np.sqrt(np.sum((t - a) ** 2))
    rel = l2 / (np.sqrt(np.sum(a ** 2)) + 1e-8)
    fw = np.sum(f * (t - a) ** 2)

    out = div.parameter_divergence(as_f32(theta), as_f32(anchor), as_f32(fisher))
    assert set(out) == {"l2", "relative", "fisher_weighted"}
    np.testing.assert_allclose(out["l2"], l2, rtol=1e-5)
    np.testing.assert_allclose(out["relative"], rel, rtol=1e-5)
    np.testing.assert_allclose(out["fisher_weighted"], fw, rtol=1e-5)
    np.testing.assert_allclose(div.l2_distance(as_f32(theta), as_f32(anchor)), l2, rtol=1e-5)
    np.testing.assert_allclose(div.relative_change(as_f32(theta), as_f32(anchor)), rel, rtol=1e-5)
    np.testing.assert_allclose(div.fisher_weighted_distance(as_f32(theta), as_f32(anchor), as_f32(fisher)), fw,
                               rtol=1e-5)


def test_hand_worked_example():
    theta = {"x": jnp.array([1.0, 2.0]), "y": jnp.array(3.0)}
    anchor = {"x": jnp.array([1.0, 0.0]), "y": jnp.array(4.0)}
    fisher = {"x": jnp.array([10.0, 0.5]), "y": jnp.array(2.0)}
    out = div.parameter_divergence(theta, anchor, fisher)
    # diff = (0, 2, -1): l2 = sqrt(5); ||anchor|| = sqrt(17); fisher = 0.5 * 4 + 2 * 1 = 4
    np.testing.assert_allclose(out["l2"], np.sqrt(5.0), rtol=1e-6)
    np.testing.assert_allclose(out["relative"], np.sqrt(5.0) / (np.sqrt(17.0) + 1e-8), rtol=1e-6)
    np.testing.assert_allclose(out["fisher_weighted"], 4.0, rtol=1e-6)


def test_no_fisher_key_without_fisher_and_zero_at_anchor():
    theta = as_f32(random_tree(0, SHAPES[1]))
    out = div.parameter_divergence(theta, theta)
    assert set(out) == {"l2", "relative"}
    assert float(out["l2"]) == 0.0 and float(out["relative"]) == 0.0


def test_parameter_divergence_jit_and_vmap():
    theta = as_f32(random_tree(3, SHAPES[0]))
    anchor = as_f32(random_tree(4, SHAPES[0]))
    fisher = as_f32(random_tree(5, SHAPES[0], positive=True))
    eager = div.parameter_divergence(theta, anchor, fisher)
    jitted = jax.jit(div.parameter_divergence)(theta, anchor, fisher)
    for k in eager:
        np.testing.assert_allclose(jitted[k], eager[k], rtol=1e-6)
    scales = jnp.array([0.0, 1.0, 2.0])
    batched = jax.vmap(lambda s: div.parameter_divergence(
        jax.tree.map(lambda t, a: a + s * (t - a), theta, anchor), anchor, fisher))(scales)
    np.testing.assert_allclose(batched["l2"], scales * eager["l2"], rtol=1e-5)
    np.testing.assert_allclose(batched["fisher_weighted"], scales ** 2 * eager["fisher_weighted"], rtol=1e-5)


def test_mismatched_trees_raise():
    theta = {"w": jnp.zeros((3, 2)), "b": jnp.zeros(2)}
    with pytest.raises(ValueError, match=r"anchor.*structure"):
        div.l2_distance(theta, {"w": jnp.zeros((3, 2))})
    with pytest.raises(ValueError, match=r"anchor.*\['b'\].*\(2,\).*\(3,\)"):
        div.parameter_divergence(theta, {"w": jnp.zeros((3, 2)), "b": jnp.zeros(3)})
    with pytest.raises(ValueError, match=r"fisher.*\['w'\].*\(3, 2\).*\(2, 3\)"):
        div.parameter_divergence(theta, theta, {"w": jnp.zeros((2, 3)), "b": jnp.zeros(2)})
    with pytest.raises(ValueError, match="fisher"):
        div.fisher_weighted_distance(theta, theta, {"w": jnp.zeros((3, 2)), "c": jnp.zeros(2)})


# ------------------------------------------------------------------------------------------------------------------
# Functional divergence
# ------------------------------------------------------------------------------------------------------------------


def linear(params, x):
    return x @ params["w"] + params["b"]


def np_linear(params, x):
    return x @ np.asarray(params["w"], np.float64) + np.asarray(params["b"], np.float64)


def np_log_softmax(z):
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


LIN_SHAPES = {"w": (4, 3), "b": (3,)}


@given(st.integers(0, 2**31 - 1))
def test_functional_mse_and_kl_match_numpy(seed):
    params = random_tree(seed, LIN_SHAPES)
    anchor = random_tree(seed + 1, LIN_SHAPES)
    x = np.random.default_rng(seed + 2).normal(size=(6, 4))
    o, o_star = np_linear(params, x), np_linear(anchor, x)
    mse = np.mean((o - o_star) ** 2)
    lq, lp = np_log_softmax(o_star), np_log_softmax(o)
    kl = np.mean(np.sum(np.exp(lq) * (lq - lp), axis=-1))

    got_mse = div.functional_divergence(linear, as_f32(params), as_f32(anchor), jnp.asarray(x, jnp.float32))
    got_kl = div.functional_divergence(linear, as_f32(params), as_f32(anchor), jnp.asarray(x, jnp.float32),
                                       kind="kl")
    np.testing.assert_allclose(got_mse, mse, rtol=1e-5)
    np.testing.assert_allclose(got_kl, kl, rtol=1e-4, atol=1e-6)
    assert float(got_kl) >= 0.0


def test_kl_is_directional_and_zero_only_for_equal_distributions():
    params = as_f32(random_tree(7, LIN_SHAPES))
    anchor = as_f32(random_tree(8, LIN_SHAPES))
    x = jnp.asarray(np.random.default_rng(9).normal(size=(5, 4)), jnp.float32)
    assert float(div.functional_divergence(linear, params, params, x, kind="kl")) == 0.0
    assert float(div.functional_divergence(linear, params, params, x, kind="mse")) == 0.0
    # a constant shift of the logits leaves the distribution unchanged: KL 0, but MSE > 0
    shifted = {"w": params["w"], "b": params["b"] + 3.0}
    assert float(div.functional_divergence(linear, shifted, params, x, kind="kl")) < 1e-6
    np.testing.assert_allclose(div.functional_divergence(linear, shifted, params, x, kind="mse"), 9.0, rtol=1e-5)
    forward = float(div.functional_divergence(linear, params, anchor, x, kind="kl"))
    backward = float(div.functional_divergence(linear, anchor, params, x, kind="kl"))
    assert forward > 1e-3 and backward > 1e-3 and abs(forward - backward) > 1e-6


def test_output_divergence_per_probe_over_positions():
    rng = np.random.default_rng(11)
    out = rng.normal(size=(3, 4, 5))
    ref = rng.normal(size=(3, 4, 5))
    mse = ((out - ref) ** 2).reshape(3, -1).mean(axis=1)
    lq, lp = np_log_softmax(ref), np_log_softmax(out)
    kl = np.sum(np.exp(lq) * (lq - lp), axis=-1).mean(axis=1)
    f32 = lambda a: jnp.asarray(a, jnp.float32)  # noqa: E731
    np.testing.assert_allclose(div.output_divergence(f32(out), f32(ref), "mse"), mse, rtol=1e-5)
    np.testing.assert_allclose(div.output_divergence(f32(out), f32(ref), "kl"), kl, rtol=1e-4)


def test_functional_divergence_jit_and_pytree_probes():
    def apply(params, x):
        return x["a"] @ params["w"] + x["s"] * params["b"]

    params = as_f32(random_tree(1, LIN_SHAPES))
    anchor = as_f32(random_tree(2, LIN_SHAPES))
    rng = np.random.default_rng(3)
    probes = {"a": jnp.asarray(rng.normal(size=(4, 4)), jnp.float32),
              "s": jnp.asarray(rng.normal(size=(4, 1)), jnp.float32)}
    o = np.asarray(probes["a"], np.float64) @ np.asarray(params["w"], np.float64) + \
        np.asarray(probes["s"], np.float64) * np.asarray(params["b"], np.float64)
    o_star = np.asarray(probes["a"], np.float64) @ np.asarray(anchor["w"], np.float64) + \
        np.asarray(probes["s"], np.float64) * np.asarray(anchor["b"], np.float64)
    fn = jax.jit(div.functional_divergence, static_argnums=(0, 4))
    np.testing.assert_allclose(fn(apply, params, anchor, probes, "mse"), np.mean((o - o_star) ** 2), rtol=1e-5)


def test_functional_bad_input_raises():
    params = as_f32(random_tree(1, LIN_SHAPES))
    x = jnp.zeros((2, 4))
    with pytest.raises(ValueError, match=r"kind.*\['mse', 'kl'\].*'js'"):
        div.functional_divergence(linear, params, params, x, kind="js")
    with pytest.raises(ValueError, match=r"anchor_params.*\['w'\]"):
        div.functional_divergence(linear, params, {"w": jnp.zeros((3, 3)), "b": jnp.zeros(3)}, x)
    with pytest.raises(ValueError, match="probe_inputs"):
        div.functional_divergence(linear, params, params, {"a": jnp.zeros((2, 4)), "b": jnp.zeros((3, 4))})
    with pytest.raises(ValueError, match=r"anchor_outputs.*\(2, 3\).*\(2, 4\)"):
        div.output_divergence(jnp.zeros((2, 3)), jnp.zeros((2, 4)))
    with pytest.raises(ValueError, match="outputs"):
        div.output_divergence(jnp.zeros((2,)), jnp.zeros((2,)), "kl")


def test_arguments_of_the_wrong_kind_are_named():
    params = {"w": jnp.ones((2,))}
    with pytest.raises(ValueError, match=r"^kind must be one of \['mse', 'kl'\], got str 'KL'"):
        div.output_divergence(jnp.ones((2, 3)), jnp.ones((2, 3)), kind="KL")
    with pytest.raises(TypeError, match=r"^apply_fn must be callable"):
        div.functional_divergence("f", params, params, jnp.ones((2, 2)))
    for eps, error in ((-1e-8, ValueError), ("1e-8", TypeError), (float("nan"), ValueError)):
        with pytest.raises(error, match=r"^eps must be a finite number > 0"):
            div.relative_change(params, params, eps=eps)
