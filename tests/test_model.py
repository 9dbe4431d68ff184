"""Tests of CrossModalModel: a float64 NumPy reference of one step, shapes, scan == loop,
jit == eager, gradients reach every parameter, modality/feedback sensitivity, causality in time,
and eager shape validation."""
import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from clloop_jax.model import MLP, CrossModalModel, SequenceClassifier, reflection_orthogonal

# Small sizes keep compilation cheap; unequal modality sizes and feedback exercise every branch.
MAIN = dict(input_dim=(5, 3), hidden_dim=8, output_dim=3, num_modalities=2, num_heads=2, feedback_dim=2)


def _normal(seed, shape, scale=1.0):
    """Test data from NumPy (cheap: no per-shape compilation), as float32 arrays."""
    return jnp.asarray(scale * np.random.default_rng(seed).standard_normal(shape), jnp.float32)


def _rand_obs(seed, model, batch_shape, lead=()):
    return tuple(
        _normal((seed, m), lead + tuple(batch_shape) + (d,)) for m, d in enumerate(model.modality_dims)
    )


def _rand_fb(seed, model, batch_shape, lead=()):
    if model.feedback_dim == 0:
        return None
    return _normal(seed, lead + tuple(batch_shape) + (model.feedback_dim,))


def _random_params(model, seed, scale=0.3):
    """Parameters of the model's structure with every leaf drawn N(0, scale^2), so biases,
    LayerNorm scales and the head all matter (initialisation is tested separately)."""
    leaves, treedef = jax.tree_util.tree_flatten(jax.eval_shape(model.init_params, jax.random.key(0)))
    return jax.tree_util.tree_unflatten(treedef, [_normal((seed, i), x.shape, scale) for i, x in enumerate(leaves)])


@pytest.fixture(scope="module")
def main():
    model = CrossModalModel(**MAIN)
    init = jax.jit(model.init_params)
    variables = _random_params(model, 1)
    step = jax.jit(model.apply)
    seq = jax.jit(lambda v, c, o, f: model.apply(v, c, o, f, method=model.sequence))
    return model, variables, step, seq, init


# ----------------------------------------------------------------------------- configuration


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(input_dim=0), "input_dim"),
        (dict(input_dim=(5, 0), num_modalities=2), r"input_dim\[1\]"),
        (dict(input_dim=(5, 3, 2), num_modalities=2), "input_dim"),
        (dict(input_dim="abc"), "input_dim"),
        (dict(hidden_dim=0), "hidden_dim"),
        (dict(hidden_dim=6, num_heads=4), "hidden_dim"),
        (dict(output_dim=-1), "output_dim"),
        (dict(num_modalities=0, input_dim=4), "num_modalities"),
        (dict(num_heads=0), "num_heads"),
        (dict(feedback_dim=-1), "feedback_dim"),
        (dict(hidden_dim=8.0), "hidden_dim"),
        (dict(head_init_scale=0.0), "head_init_scale"),
    ],
)
def test_config_validation(kwargs, field):
    base = dict(input_dim=4, hidden_dim=8, output_dim=2, num_heads=2)
    base.update(kwargs)
    with pytest.raises(ValueError, match=f"CrossModalModel.{field}.*got"):
        CrossModalModel(**base)


def test_modality_dims_and_unbound_helpers():
    m = CrossModalModel(input_dim=[4, 7, 1], hidden_dim=8, output_dim=2, num_modalities=3, num_heads=2)
    assert m.modality_dims == (4, 7, 1)
    assert m.input_dim == (4, 7, 1)  # a list is stored as a tuple, so the module is hashable
    hash(m)
    assert CrossModalModel(input_dim=6, hidden_dim=8, output_dim=2, num_modalities=3).modality_dims == (6, 6, 6)
    c = m.initial_carry((2, 3))
    assert c.shape == (2, 3, 8) and c.dtype == jnp.float32 and not np.any(np.asarray(c))
    assert m.initial_carry().shape == (8,)
    assert m.initial_carry(4).shape == (4, 8)


# ----------------------------------------------------------------------------- reference


def _gelu(x):  # tanh approximation, as jax.nn.gelu(approximate=True)
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _reference_step(p, model, carry, obs, fb):
    """One step of the documented architecture in float64 NumPy."""
    p = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), p)
    h = np.asarray(carry, np.float64)
    dense = lambda x, q: x @ q["kernel"] + q.get("bias", 0.0)
    tokens = [_gelu(dense(np.asarray(x, np.float64), p[f"encoder_{m}"])) for m, x in enumerate(obs)]
    tokens.append(_gelu(dense(h, p["state_encoder"])))
    if fb is not None:
        tokens.append(_gelu(dense(np.asarray(fb, np.float64), p["feedback_encoder"])))
    X = np.stack(tokens, axis=-2) + p["token_embedding"]  # [..., N, H]
    a = p["attention"]
    proj = lambda name: np.einsum("...nh,hkd->...nkd", X, a[name]["kernel"]) + a[name]["bias"]
    q, k, v = proj("query"), proj("key"), proj("value")
    head_dim = q.shape[-1]
    logits = np.einsum("...qkd,...nkd->...kqn", q / math.sqrt(head_dim), k)
    w = np.exp(logits - logits.max(-1, keepdims=True))
    w = w / w.sum(-1, keepdims=True)
    att = np.einsum("...kqn,...nkd->...qkd", w, v)
    att = np.einsum("...qkd,kdh->...qh", att, a["out"]["kernel"]) + a["out"]["bias"]
    Y = X + att
    mu = Y.mean(-1, keepdims=True)
    var = ((Y - mu) ** 2).mean(-1, keepdims=True)
    Y = (Y - mu) / np.sqrt(var + 1e-6) * p["attention_norm"]["scale"] + p["attention_norm"]["bias"]
    fused = _gelu(dense(Y.reshape(Y.shape[:-2] + (-1,)), p["fusion"]))
    g = p["gru"]
    r = _sigmoid(dense(fused, g["ir"]) + dense(h, g["hr"]))
    z = _sigmoid(dense(fused, g["iz"]) + dense(h, g["hz"]))
    n = np.tanh(dense(fused, g["in"]) + r * dense(h, g["hn"]))
    h_new = (1.0 - z) * n + z * h
    return h_new, dense(h_new, p["head"])


@pytest.mark.parametrize("feedback_dim", [0, 2])
def test_step_matches_float64_reference(feedback_dim):
    model = CrossModalModel(**{**MAIN, "feedback_dim": feedback_dim})
    variables = _random_params(model, 4)
    batch = (4,)
    carry = _normal(50, batch + (model.hidden_dim,), 0.5)
    obs, fb = _rand_obs(51, model, batch), _rand_fb(52, model, batch)
    with jax.default_matmul_precision("highest"):
        new_carry, out = jax.jit(model.apply)(variables, carry, obs, fb)
    ref_carry, ref_out = _reference_step(variables["params"], model, carry, obs, fb)
    np.testing.assert_allclose(new_carry, ref_carry, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(out, ref_out, rtol=1e-4, atol=1e-5)
    assert np.abs(ref_out).max() > 0.1  # the comparison is not between near-zero numbers


# ----------------------------------------------------------------------------- shapes


@pytest.mark.parametrize("num_modalities", [1, 2, 3, 4])
@pytest.mark.parametrize("equal", [True, False])
def test_shapes_batched_and_unbatched(num_modalities, equal):
    dims = 4 if equal else tuple(range(2, 2 + num_modalities))
    F = num_modalities % 2  # with and without feedback
    model = CrossModalModel(
        input_dim=dims, hidden_dim=8, output_dim=3, num_modalities=num_modalities, num_heads=2, feedback_dim=F
    )
    # Shapes only: abstract evaluation (no compilation) keeps this sweep cheap.
    variables = jax.eval_shape(model.init_params, jax.random.key(0))
    sds = lambda shape: jax.ShapeDtypeStruct(shape, jnp.float32)
    for batch in [(), (3,), (2, 3)]:
        obs = tuple(sds(batch + (d,)) for d in model.modality_dims)
        fb = sds(batch + (F,)) if F else None
        forms = [obs] + ([sds(batch + (num_modalities, 4))] if equal else [])
        for o in forms:
            c, y = jax.eval_shape(model.apply, variables, sds(batch + (8,)), o, fb)
            assert c.shape == batch + (8,) and y.shape == batch + (3,)
    T, batch = 3, (2,)
    obs_seq = tuple(sds((T,) + batch + (d,)) for d in model.modality_dims)
    fb_seq = sds((T,) + batch + (F,)) if F else None
    cT, ys = jax.eval_shape(
        lambda v, c, o, f: model.apply(v, c, o, f, method=CrossModalModel.sequence),
        variables, sds(batch + (8,)), obs_seq, fb_seq,
    )
    assert cT.shape == batch + (8,) and ys.shape == (T,) + batch + (3,)
    # one token per modality + state (+ feedback) in the attention
    assert variables["params"]["token_embedding"].shape == (num_modalities + 1 + F, 8)
    assert ("feedback_encoder" in variables["params"]) == bool(F)


def test_stacked_array_obs_equals_tuple_obs():
    model = CrossModalModel(input_dim=4, hidden_dim=8, output_dim=3, num_modalities=3, num_heads=2)
    variables = _random_params(model, 1)
    step = jax.jit(model.apply)
    obs = _rand_obs(2, model, (2,))
    c = _normal(3, (2, 8), 0.3)
    c1, y1 = step(variables, c, obs)
    c2, y2 = step(variables, c, jnp.stack(obs, axis=-2))
    np.testing.assert_allclose(c1, c2, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(y1, y2, rtol=1e-6, atol=1e-7)
    # permuting the modality order changes the output: each modality has its own encoder
    _, y3 = step(variables, c, (obs[1], obs[0], obs[2]))
    assert np.abs(np.asarray(y3 - y1)).max() > 1e-4


def test_batched_equals_vmap_of_unbatched(main):
    model, variables, step, _, _ = main
    batch = (5,)
    carry = _normal(7, batch + (model.hidden_dim,), 0.3)
    obs, fb = _rand_obs(8, model, batch), _rand_fb(9, model, batch)
    c_b, y_b = step(variables, carry, obs, fb)
    c_v, y_v = jax.vmap(step, in_axes=(None, 0, 0, 0))(variables, carry, obs, fb)
    np.testing.assert_allclose(c_b, c_v, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(y_b, y_v, rtol=1e-5, atol=1e-6)


def test_untrained_head_output_is_small(main):
    model, _, step, seq, init = main  # head_init_scale=1e-2 by default
    v = init(jax.random.key(2))
    head = v["params"]["head"]
    assert not np.any(np.asarray(head["bias"]))
    # kernel ~ truncated normal with std sqrt(scale / fan_in) (0.035 here; a unit-scale init gives 0.35)
    std = float(np.std(np.asarray(head["kernel"])))
    expected = math.sqrt(model.head_init_scale / model.hidden_dim)
    assert 0.4 * expected < std < 2.0 * expected
    T, batch = 4, (16,)
    _, ys = seq(v, model.initial_carry(batch), _rand_obs(3, model, batch, (T,)), _rand_fb(4, model, batch, (T,)))
    ys = np.asarray(ys)
    assert 0 < np.abs(ys).max() < 0.1  # near-zero actions, since |carry| <= 1 for a GRU


# ----------------------------------------------------------------------------- time


def test_sequence_equals_loop_of_steps_and_jit_equals_eager(main):
    model, variables, step, seq, _ = main
    T, batch = 6, (3,)
    carry0 = _normal(10, batch + (model.hidden_dim,), 0.2)
    obs_seq = _rand_obs(11, model, batch, lead=(T,))
    fb_seq = _rand_fb(12, model, batch, lead=(T,))

    cT, ys = seq(variables, carry0, obs_seq, fb_seq)
    c, outs = carry0, []
    for t in range(T):
        c, y = step(variables, c, tuple(o[t] for o in obs_seq), fb_seq[t])
        outs.append(y)
    np.testing.assert_allclose(ys, np.stack(outs), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(cT, c, rtol=1e-5, atol=1e-6)
    # outputs really change over time (so the loop comparison is not trivial)
    assert np.abs(np.diff(np.asarray(ys), axis=0)).max() > 1e-3

    # eager (no jit) gives the same numbers as the jitted step
    c_e, y_e = model.apply(variables, carry0, tuple(o[0] for o in obs_seq), fb_seq[0])
    c_j, y_j = step(variables, carry0, tuple(o[0] for o in obs_seq), fb_seq[0])
    np.testing.assert_allclose(y_e, y_j, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(c_e, c_j, rtol=1e-5, atol=1e-6)


def test_deterministic_and_key_dependent_init(main):
    model, variables, step, _, init = main
    obs, fb = _rand_obs(0, model, (2,)), _rand_fb(1, model, (2,))
    carry = model.initial_carry((2,))
    a, b = step(variables, carry, obs, fb), step(variables, carry, obs, fb)
    jax.tree_util.tree_map(np.testing.assert_array_equal, a, b)
    v1, v2, v3 = (init(jax.random.key(k)) for k in (0, 0, 1))
    jax.tree_util.tree_map(np.testing.assert_array_equal, v1, v2)
    assert not np.array_equal(v1["params"]["encoder_0"]["kernel"], v3["params"]["encoder_0"]["kernel"])
    # initialising through `sequence` gives the same parameter tree as through a single step
    obs_seq = _rand_obs(0, model, (), lead=(2,))
    fb_seq = _rand_fb(1, model, (), lead=(2,))
    v4 = jax.eval_shape(
        lambda k: model.init(k, model.initial_carry(), obs_seq, fb_seq, method=model.sequence), jax.random.key(0)
    )
    assert jax.tree_util.tree_structure(v4) == jax.tree_util.tree_structure(v1)
    jax.tree_util.tree_map(lambda x, y: np.testing.assert_equal(x.shape, y.shape), v1, v4)


def test_every_parameter_gets_a_gradient(main):
    model, variables, _, seq, init = main
    T, batch = 3, (2,)
    obs_seq = _rand_obs(20, model, batch, lead=(T,))
    fb_seq = _rand_fb(21, model, batch, lead=(T,))
    fresh = init(jax.random.key(22))  # unperturbed init, small head

    def loss(v):
        return jnp.sum(seq(v, model.initial_carry(batch), obs_seq, fb_seq)[1] ** 2)

    grad = jax.jit(jax.grad(loss))
    for v in (variables, fresh):
        grads = grad(v)
        flat = jax.tree_util.tree_flatten_with_path(grads)[0]
        assert len(flat) == len(jax.tree_util.tree_leaves(v))
        for path, g in flat:
            assert np.all(np.isfinite(g)), jax.tree_util.keystr(path)
            assert np.linalg.norm(np.asarray(g, np.float64)) > 0, jax.tree_util.keystr(path)


def test_output_depends_on_each_modality_feedback_and_carry(main):
    model, variables, step, _, _ = main
    batch = (2,)
    carry = _normal(30, batch + (model.hidden_dim,), 0.3)
    obs, fb = _rand_obs(31, model, batch), _rand_fb(32, model, batch)
    _, y0 = step(variables, carry, obs, fb)
    _, y0_again = step(variables, carry, (obs[0], obs[1]), fb)
    np.testing.assert_array_equal(y0, y0_again)
    changed = {
        "modality 2": (carry, (obs[0], obs[1] + 1.0), fb),
        "modality 1": (carry, (obs[0] + 1.0, obs[1]), fb),
        "feedback": (carry, obs, fb + 1.0),
        "carry": (carry + 0.5, obs, fb),
    }
    for what, args in changed.items():
        _, y = step(variables, *args)
        assert np.abs(np.asarray(y - y0)).max() > 1e-4, what


def test_causality_through_the_carry(main):
    model, variables, _, seq, _ = main
    T, t = 5, 3
    obs_seq = _rand_obs(40, model, (), lead=(T,))
    fb_seq = _rand_fb(41, model, (), lead=(T,))

    def out_t(obs, fb):
        return jnp.sum(seq(variables, model.initial_carry(), obs, fb)[1][t])

    g_obs, g_fb = jax.jit(jax.grad(out_t, argnums=(0, 1)))(obs_seq, fb_seq)
    for g in (*g_obs, g_fb):
        g = np.asarray(g)
        for s in range(t + 1):  # past and present inputs reach output[t] (for s < t only via the carry)
            assert np.abs(g[s]).max() > 1e-7, s
        np.testing.assert_array_equal(g[t + 1 :], 0.0)  # the future does not


# ----------------------------------------------------------------------------- bad inputs


def test_bad_inputs_raise_with_shapes(main):
    model, variables, _, _, _ = main
    H, F = model.hidden_dim, model.feedback_dim
    c = jnp.zeros((3, H))
    good = (jnp.zeros((3, 5)), jnp.zeros((3, 3)))
    fb = jnp.zeros((3, F))
    apply = model.apply
    cases = [
        # wrong number of modalities
        ((c, good[:1], fb), r"obs: expected a tuple of 2 modality arrays.*received 1 arrays with shapes \[\(3, 5\)\]"),
        # wrong feature size for modality 1
        ((c, (good[0], jnp.zeros((3, 4))), fb), re.escape("obs[1]: expected shape [..., 3]") + r".*received \(3, 4\)"),
        # one stacked array although sizes differ
        ((c, jnp.zeros((3, 2, 5)), fb), r"modalities have different sizes \(5, 3\).*received one array of shape \(3, 2, 5\)"),
        # modality batch dims disagree
        ((c, (good[0], jnp.zeros((4, 3))), fb), re.escape("obs[1]: expected leading shape (3,)") + r".*received \(4,\)"),
        # wrong feedback size
        ((c, good, jnp.zeros((3, 5))), re.escape("feedback: expected shape (3, 2)") + r".*received \(3, 5\)"),
        # feedback batch mismatch
        ((c, good, jnp.zeros((4, F))), re.escape("feedback: expected shape (3, 2)") + r".*received \(4, 2\)"),
        # missing feedback
        ((c, good, None), re.escape("feedback: expected an array of shape [..., 2]") + ".*received None"),
        # wrong carry size
        ((jnp.zeros((3, H + 1)), good, fb), re.escape("carry: expected shape [..., 8]") + r".*received \(3, 9\)"),
        # carry batch mismatch
        ((jnp.zeros((2, H)), good, fb), re.escape("carry: expected shape (3, 8)") + r".*received \(2, 8\)"),
        ((jnp.zeros((H,)), good, fb), re.escape("carry: expected shape (3, 8)") + r".*received \(8,\)"),
    ]
    for args, pattern in cases:
        with pytest.raises(ValueError, match=pattern):
            apply(variables, *args)

    # feedback given to a model without feedback
    m0 = CrossModalModel(**{**MAIN, "feedback_dim": 0})
    with pytest.raises(ValueError, match=r"feedback: the model has feedback_dim=0.*received an array of shape \(3, 2\)"):
        m0.init(jax.random.key(0), c, good, fb)
    # stacked array with the wrong modality count, for equal sizes
    meq = CrossModalModel(input_dim=4, hidden_dim=8, output_dim=2, num_modalities=3, num_heads=2)
    with pytest.raises(ValueError, match=re.escape("obs: expected shape [..., 3, 4]") + r".*received \(3, 2, 4\)"):
        meq.init(jax.random.key(0), c, jnp.zeros((3, 2, 4)))


def test_bad_sequence_inputs_raise_with_shapes(main):
    model, variables, _, _, _ = main
    H, F, T = model.hidden_dim, model.feedback_dim, 4
    c = jnp.zeros((3, H))
    obs = (jnp.zeros((T, 3, 5)), jnp.zeros((T, 3, 3)))
    fb = jnp.zeros((T, 3, F))
    seq = lambda *a: model.apply(variables, *a, method=model.sequence)
    cases = [
        ((c, (obs[0], jnp.zeros((T + 1, 3, 3))), fb), re.escape("obs_seq[1]: expected leading shape (4, 3)") + r".*received \(5, 3\)"),
        ((c, obs, jnp.zeros((T - 1, 3, F))), re.escape("feedback_seq: expected shape (4, 3, 2)") + r".*received \(3, 3, 2\)"),
        ((c, obs, None), re.escape("feedback_seq: expected an array of shape [T, ..., 2]") + ".*received None"),
        ((jnp.zeros((4, H)), obs, fb), re.escape("carry: expected shape (3, 8)") + r".*received \(4, 8\)"),
        ((jnp.zeros((H,)), (jnp.zeros((5,)), jnp.zeros((3,))), jnp.zeros((F,))), r"obs_seq: expected a leading time axis"),
    ]
    for args, pattern in cases:
        with pytest.raises(ValueError, match=pattern):
            seq(*args)


# ---------------------------------------------------------------- initialisation without QR
@pytest.mark.parametrize("shape", [(16, 16), (9, 4), (4, 9)])
def test_reflection_orthogonal_is_orthonormal_and_seeded(shape):
    init = reflection_orthogonal(scale=2.0)
    q = np.asarray(init(jax.random.key(0), shape), np.float64) / 2.0
    assert q.shape == shape
    small = min(shape)
    gram = q.T @ q if shape[0] >= shape[1] else q @ q.T
    np.testing.assert_allclose(gram, np.eye(small), atol=1e-5)
    np.testing.assert_array_equal(init(jax.random.key(0), shape), init(jax.random.key(0), shape))
    assert not np.allclose(init(jax.random.key(0), shape), init(jax.random.key(1), shape))
    with pytest.raises(ValueError, match="2-D shape"):
        init(jax.random.key(0), (2, 2, 2))


def test_vmapped_init_has_no_lapack_call():
    # Many seeds initialise under vmap as plain array programs: no custom call (a batched QR's CPU kernels can
    # deadlock), and the recurrent kernels come out orthonormal.
    model = CrossModalModel(input_dim=4, hidden_dim=8, output_dim=2, num_modalities=1, num_heads=2)
    keys = jax.random.split(jax.random.key(0), 3)
    init = jax.jit(jax.vmap(model.init_params))
    assert "custom_call" not in init.lower(keys).as_text()
    params = init(keys)
    for name in ("hr", "hz", "hn"):
        k = np.asarray(params["params"]["gru"][name]["kernel"], np.float64)   # [3, 8, 8]
        np.testing.assert_allclose(np.einsum("sij,sik->sjk", k, k), np.broadcast_to(np.eye(8), (3, 8, 8)),
                                   atol=1e-5)


@pytest.mark.parametrize("kwargs,error,pattern", [
    (dict(head_init_scale=float("inf")), ValueError, r"^CrossModalModel.head_init_scale must be a finite number > 0, got float inf"),
    (dict(head_init_scale=float("nan")), ValueError, r"^CrossModalModel.head_init_scale .* got float nan"),
    (dict(head_init_scale="0.01"), TypeError, r"^CrossModalModel.head_init_scale .* got str '0.01'"),
    (dict(hidden_dim=True), TypeError, r"^CrossModalModel.hidden_dim must be an integer >= 1, got bool True"),
    (dict(output_dim=True), TypeError, r"^CrossModalModel.output_dim .* got bool True"),
    (dict(num_heads=True), TypeError, r"^CrossModalModel.num_heads .* got bool True"),
    (dict(feedback_dim=True), TypeError, r"^CrossModalModel.feedback_dim must be an integer >= 0 or None, got bool True"),
    (dict(input_dim=True), ValueError, r"^CrossModalModel.input_dim"),
    (dict(input_dim=[4, True], num_modalities=2), TypeError, r"^CrossModalModel.input_dim\[1\] .* got bool True"),
    (dict(input_dim=b"\x04\x04", num_modalities=2), ValueError, r"^CrossModalModel.input_dim"),  # bytes: no sizes
])
def test_counts_refuse_bools_and_scales_must_be_finite(kwargs, error, pattern):
    base = dict(input_dim=4, hidden_dim=8, output_dim=2, num_heads=2)
    base.update(kwargs)
    with pytest.raises(error, match=pattern):
        CrossModalModel(**base)


def test_numpy_integers_are_counts_and_other_constructors_are_checked():
    model = CrossModalModel(input_dim=np.int64(4), hidden_dim=np.int32(8), output_dim=np.int64(2), num_heads=2)
    assert model.modality_dims == (4,)
    assert model.initial_carry(np.int64(3)).shape == (3, 8)
    assert model.initial_carry((np.int64(2), 3)).shape == (2, 3, 8)
    with pytest.raises(TypeError, match=r"^batch_shape must be an integer >= 0, got bool True"):
        model.initial_carry(True)
    with pytest.raises(TypeError, match=r"^batch_shape\[1\] must be an integer >= 0, got float 2.0"):
        model.initial_carry((3, 2.0))
    with pytest.raises(TypeError, match=r"^MLP.output_dim must be an integer >= 1, got bool True"):
        MLP(output_dim=True)
    with pytest.raises(TypeError, match=r"^MLP.hidden\[0\] must be an integer >= 1, got float 4.5"):
        MLP(output_dim=2, hidden=(4.5,))
    with pytest.raises(TypeError, match=r"^SequenceClassifier.model must be an instance of CrossModalModel, "
                                        r"got the class CrossModalModel; pass an instance CrossModalModel\(\)"):
        SequenceClassifier(model=CrossModalModel, chunk=4)
    with pytest.raises(TypeError, match=r"^SequenceClassifier.chunk must be an integer >= 1, got bool True"):
        SequenceClassifier(model=model, chunk=True)
