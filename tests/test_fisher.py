"""Tests for clloop_jax.importance.fisher against NumPy float64 references.

Two small models: a 1-hidden-layer tanh MLP (reference: hand-written float64 backprop and the closed-form
Jacobian) applied to one input or per position of a short sequence, and an Elman RNN over 3 steps (reference:
float64 central finite differences of each sample's log-likelihood).

The per-layer method (dense layers' scores contracted after the backward pass) is checked against flax twins of
both models and their references, and against the per-sample method on the library's models (MLP,
SequenceClassifier, CrossModalModel with feedback and attention) and on a model mixing dense layers with other
parameters.
"""

import itertools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from clloop_jax.importance import dense_taps
from clloop_jax.importance import fisher as F
from clloop_jax.model import MLP, CrossModalModel, SequenceClassifier

D, H, K = 3, 4, 3          # input, hidden, classes/outputs
N = 7                      # samples (7 so that chunk sizes 2, 3, 4 do not divide it)
T = 2                      # positions of the sequence-shaped MLP input
SIGMA = 0.7

STATIC = ("apply_fn", "likelihood", "variant", "num_samples", "chunk_size", "method")
fisher_jit = jax.jit(F.fisher_diagonal, static_argnames=STATIC)
psg_jit = jax.jit(F.per_sample_grads, static_argnames=("loss_fn", "chunk_size"))
mas_jit = jax.jit(F.mas_importance, static_argnames=("apply_fn", "chunk_size", "method"))

LIKELIHOODS = {"categorical": F.Categorical(), "gaussian": F.Gaussian(sigma=SIGMA)}


# ----------------------------------------------------------------------------------------------------------------
# Models: JAX versions and float64 NumPy references
# ----------------------------------------------------------------------------------------------------------------


def mlp_apply(p, x):
    """x [D] -> [K], or x [T, D] -> [T, K] (the same MLP at each position)."""
    h = jnp.tanh(x @ p["W1"].T + p["b1"])
    return h @ p["W2"].T + p["b2"]


def rnn_apply(p, xs):
    """Elman RNN: xs [T, D] -> logits/means [T, K]."""
    def step(h, x):
        h = jnp.tanh(p["Wx"] @ x + p["Wh"] @ h + p["b"])
        return h, p["Wo"] @ h + p["bo"]

    _, out = jax.lax.scan(step, jnp.zeros(p["b"].shape, p["b"].dtype), xs)
    return out


def np_mlp_forward(p, x):
    x = np.atleast_2d(x)
    h = np.tanh(x @ p["W1"].T + p["b1"])
    return h, h @ p["W2"].T + p["b2"]


def np_mlp_vjp(p, x, g):
    """Hand-derived backprop: sum over positions of J_t^T g_t, for x [T, D] (or [D]) and g [T, K] (or [K])."""
    x, g = np.atleast_2d(x), np.atleast_2d(g)
    h, _ = np_mlp_forward(p, x)
    da = (g @ p["W2"]) * (1.0 - h ** 2)
    return {"W1": da.T @ x, "b1": da.sum(0), "W2": g.T @ h, "b2": g.sum(0)}


def np_rnn_forward(p, xs):
    h = np.zeros(p["b"].shape)
    out = []
    for x in xs:
        h = np.tanh(p["Wx"] @ x + p["Wh"] @ h + p["b"])
        out.append(p["Wo"] @ h + p["bo"])
    return np.stack(out)


def np_softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def np_log_prob(kind, out, y):
    """Per-sample log-likelihood (sum over positions), float64."""
    if kind == "categorical":
        logp = np.log(np_softmax(out))
        return np.take_along_axis(logp, np.asarray(y)[..., None], -1).sum()
    k = out.shape[-1]
    pos = out.size // k
    return (-0.5 * np.sum(((y - out) / SIGMA) ** 2) - pos * k * np.log(SIGMA)
            - 0.5 * pos * k * np.log(2 * np.pi))


def np_fd_grad(fun, p, eps=1e-6):
    """Central finite differences of the scalar fun(params) in float64, a dict like p."""
    grads = {}
    for name, value in p.items():
        g = np.zeros_like(value)
        for idx in np.ndindex(value.shape):
            plus = {k: v.copy() for k, v in p.items()}
            minus = {k: v.copy() for k, v in p.items()}
            plus[name][idx] += eps
            minus[name][idx] -= eps
            g[idx] = (fun(plus) - fun(minus)) / (2 * eps)
        grads[name] = g
    return grads


def tree_sq_mean(list_of_trees):
    return {k: np.mean([t[k] ** 2 for t in list_of_trees], axis=0) for k in list_of_trees[0]}


def to_jax(tree, dtype):
    return jax.tree_util.tree_map(lambda a: jnp.asarray(a, dtype), tree)


def assert_tree_close(actual, expected, rtol, atol=0.0):
    assert set(actual) == set(expected)
    for k in expected:
        np.testing.assert_allclose(np.asarray(actual[k]), expected[k], rtol=rtol, atol=atol, err_msg=k)


def tree_rel_err(a, b):
    num = sum(np.sum((np.asarray(a[k], np.float64) - b[k]) ** 2) for k in b)
    den = sum(np.sum(np.asarray(b[k], np.float64) ** 2) for k in b)
    return float(np.sqrt(num / den))


# ----------------------------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mlp():
    rng = np.random.default_rng(0)
    p = {"W1": rng.normal(size=(H, D)), "b1": 0.3 * rng.normal(size=H),
         "W2": rng.normal(size=(K, H)), "b2": 0.3 * rng.normal(size=K)}
    x_seq = rng.normal(size=(N, T, D))
    data = {
        # (inputs, categorical targets, gaussian targets) for one input per sample and for T positions
        "single": (x_seq[:, 0], rng.integers(0, K, size=N), rng.normal(size=(N, K))),
        "seq": (x_seq, rng.integers(0, K, size=(N, T)), rng.normal(size=(N, T, K))),
    }
    return p, data


@pytest.fixture(scope="module")
def rnn():
    rng = np.random.default_rng(1)
    Tr, Hr, Nr = 3, 3, 3
    p = {"Wx": rng.normal(size=(Hr, D)), "Wh": 0.8 * rng.normal(size=(Hr, Hr)), "b": 0.2 * rng.normal(size=Hr),
         "Wo": rng.normal(size=(K, Hr)), "bo": 0.2 * rng.normal(size=K)}
    xs = rng.normal(size=(Nr, Tr, D))
    return p, xs, rng.integers(0, K, size=(Nr, Tr)), rng.normal(size=(Nr, Tr, K))


def targets_for(kind, data):
    x, yc, yg = data
    return x, (yc if kind == "categorical" else yg)


# ----------------------------------------------------------------------------------------------------------------
# NumPy references for the MLP
# ----------------------------------------------------------------------------------------------------------------


def ref_mlp_empirical(kind, p, x, y):
    grads = []
    for xi, yi in zip(x, y):
        _, out = np_mlp_forward(p, xi)
        if kind == "categorical":
            g = np.eye(K)[np.atleast_1d(yi)] - np_softmax(out)
        else:
            g = (np.atleast_2d(yi) - out) / SIGMA ** 2
        grads.append(np_mlp_vjp(p, xi, g))
    return tree_sq_mean(grads)


def ref_mlp_exact_categorical(p, x):
    """Enumerate every joint label assignment over the positions: E_y[(grad log p(y|x))^2]."""
    out_acc = []
    for xi in x:
        _, out = np_mlp_forward(p, xi)
        probs = np_softmax(out)                       # [P, K]
        acc = {k: np.zeros_like(v) for k, v in p.items()}
        for labels in itertools.product(range(K), repeat=out.shape[0]):
            weight = np.prod(probs[np.arange(out.shape[0]), labels])
            g = np_mlp_vjp(p, xi, np.eye(K)[list(labels)] - probs)
            for k in acc:
                acc[k] += weight * g[k] ** 2
        out_acc.append(acc)
    return {k: np.mean([a[k] for a in out_acc], axis=0) for k in p}


def ref_mlp_exact_gaussian(p, x):
    """Closed form diag(J^T J) / sigma^2 for out = W2 tanh(W1 x + b1) + b2, summed over positions."""
    acc = {k: np.zeros_like(v) for k, v in p.items()}
    for xi in x:
        h, _ = np_mlp_forward(p, xi)                  # [P, H]
        s = (1 - h ** 2) ** 2                         # [P, H]
        w2 = (p["W2"] ** 2).sum(0)                    # [H]: sum_k W2[k, j]^2
        xs = np.atleast_2d(xi)
        acc["W2"] += np.broadcast_to((h ** 2).sum(0), (K, H))
        acc["b2"] += np.full(K, h.shape[0], dtype=np.float64)
        acc["W1"] += (w2[None, :, None] * s[:, :, None] * (xs ** 2)[:, None, :]).sum(0)
        acc["b1"] += (w2[None, :] * s).sum(0)
    return {k: v / (len(x) * SIGMA ** 2) for k, v in acc.items()}


def ref_mlp_mas(p, x):
    grads = [np_mlp_vjp(p, xi, 2 * np_mlp_forward(p, xi)[1]) for xi in x]
    return {k: np.mean([np.abs(g[k]) for g in grads], axis=0) for k in p}


# ----------------------------------------------------------------------------------------------------------------
# Likelihoods
# ----------------------------------------------------------------------------------------------------------------


def test_log_probs_match_numpy():
    rng = np.random.default_rng(2)
    out = rng.normal(size=(2, 5, K))
    yg = rng.normal(size=(2, 5, K))
    yc = rng.integers(0, K, size=(2, 5))
    with jax.enable_x64(True):
        g = np.asarray(F.Gaussian(SIGMA).log_prob(jnp.asarray(out), jnp.asarray(yg)))
        c = np.asarray(F.Categorical().log_prob(jnp.asarray(out), jnp.asarray(yc)))
        soft = np_softmax(rng.normal(size=(2, 5, K)))
        cs = np.asarray(F.Categorical().log_prob(jnp.asarray(out), jnp.asarray(soft)))
    ref_g = (-0.5 * (((yg - out) / SIGMA) ** 2).sum(-1) - K * np.log(SIGMA) - 0.5 * K * np.log(2 * np.pi))
    logp = np.log(np_softmax(out))
    np.testing.assert_allclose(g, ref_g, rtol=1e-12)
    np.testing.assert_allclose(c, np.take_along_axis(logp, yc[..., None], -1)[..., 0], rtol=1e-12)
    np.testing.assert_allclose(cs, (soft * logp).sum(-1), rtol=1e-12)


def test_fisher_factors_reproduce_output_fisher():
    """L L^T is the output-space Fisher: diag(p) - p p^T (categorical), I / sigma^2 (Gaussian)."""
    logits = np.array([[0.3, -1.0, 2.0], [0.0, 0.0, 0.0]])
    with jax.enable_x64(True):
        lc = np.asarray(F.Categorical().fisher_factor(jnp.asarray(logits)))
        lg = np.asarray(F.Gaussian(SIGMA).fisher_factor(jnp.asarray(logits)))
    for row, l_c, l_g in zip(logits, lc, lg):
        p = np_softmax(row)
        np.testing.assert_allclose(l_c @ l_c.T, np.diag(p) - np.outer(p, p), atol=1e-14)
        np.testing.assert_allclose(l_g @ l_g.T, np.eye(K) / SIGMA ** 2, atol=1e-14)


def test_samples_follow_the_predictive_distribution():
    out = jnp.array([[0.5, -1.0, 1.0]])
    key = jax.random.key(3)
    draws = jax.vmap(lambda k: F.Categorical().sample(k, out))(jax.random.split(key, 20000))
    assert draws.shape == (20000, 1) and jnp.issubdtype(draws.dtype, jnp.integer)
    freq = np.bincount(np.asarray(draws[:, 0]), minlength=K) / 20000
    np.testing.assert_allclose(freq, np_softmax(np.asarray(out[0], np.float64)), atol=0.015)
    g = jax.vmap(lambda k: F.Gaussian(SIGMA).sample(k, out))(jax.random.split(key, 20000))
    np.testing.assert_allclose(np.asarray(g.mean(0)), np.asarray(out), atol=0.02)
    np.testing.assert_allclose(np.asarray(g.std(0)), SIGMA, rtol=0.02)


# ----------------------------------------------------------------------------------------------------------------
# Per-sample gradients
# ----------------------------------------------------------------------------------------------------------------


def mlp_ce_loss(p, x, y):
    return -jnp.sum(F.Categorical().log_prob(mlp_apply(p, x), y))


@pytest.mark.parametrize("chunk_size", [None, 1, 3, 7, 10])
def test_per_sample_grads_match_hand_backprop(mlp, chunk_size):
    p, data = mlp
    x, y, _ = data["seq"]
    with jax.enable_x64(True):
        got = psg_jit(mlp_ce_loss, to_jax(p, jnp.float64), jnp.asarray(x), jnp.asarray(y),
                                 chunk_size=chunk_size)
        got = jax.tree_util.tree_map(np.asarray, got)
    for i in range(N):
        _, out = np_mlp_forward(p, x[i])
        ref = np_mlp_vjp(p, x[i], -(np.eye(K)[y[i]] - np_softmax(out)))
        for k in p:
            assert got[k].shape == (N,) + p[k].shape
            np.testing.assert_allclose(got[k][i], ref[k], rtol=1e-10, atol=1e-12)


# ----------------------------------------------------------------------------------------------------------------
# Fisher diagonals on the MLP (hand backprop / closed form / enumeration)
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", ["single", "seq"])
@pytest.mark.parametrize("kind", ["categorical", "gaussian"])
@pytest.mark.parametrize("variant", ["empirical", "exact"])
def test_mlp_fisher_matches_float64_reference(mlp, shape, kind, variant):
    p, data = mlp
    x, y = targets_for(kind, data[shape])
    if variant == "empirical":
        ref = ref_mlp_empirical(kind, p, x, y)
    elif kind == "categorical":
        ref = ref_mlp_exact_categorical(p, x)
    else:
        ref = ref_mlp_exact_gaussian(p, x)
    with jax.enable_x64(True):
        got = fisher_jit(mlp_apply, to_jax(p, jnp.float64), jnp.asarray(x), jnp.asarray(y),
                         likelihood=LIKELIHOODS[kind], variant=variant)
        got = jax.tree_util.tree_map(np.asarray, got)
    assert all(got[k].dtype == np.float64 for k in got)
    assert_tree_close(got, ref, rtol=1e-10, atol=1e-13)
    if shape == "single":
        return
    # float32 (the default) agrees to float32 accuracy
    got32 = fisher_jit(mlp_apply, to_jax(p, jnp.float32), jnp.asarray(x, jnp.float32),
                       jnp.asarray(y, jnp.int32 if kind == "categorical" else jnp.float32),
                       likelihood=LIKELIHOODS[kind], variant=variant)
    assert_tree_close(got32, ref, rtol=1e-4, atol=1e-6)


def test_exact_is_the_expectation_of_the_empirical_fisher(mlp):
    """Exact categorical Fisher = sum over labels of p(y|x) * empirical Fisher with target y (per sample)."""
    p, data = mlp
    x = data["single"][0][:1]
    with jax.enable_x64(True):
        pj = to_jax(p, jnp.float64)
        probs = jax.nn.softmax(mlp_apply(pj, jnp.asarray(x[0])))
        exact = fisher_jit(mlp_apply, pj, jnp.asarray(x), likelihood=F.Categorical(), variant="exact")
        mix = None
        for c in range(K):
            emp = fisher_jit(mlp_apply, pj, jnp.asarray(x), jnp.array([c]), likelihood=F.Categorical(),
                             variant="empirical")
            term = jax.tree_util.tree_map(lambda a: probs[c] * a, emp)
            mix = term if mix is None else jax.tree_util.tree_map(jnp.add, mix, term)
        assert_tree_close(jax.tree_util.tree_map(np.asarray, exact),
                          jax.tree_util.tree_map(np.asarray, mix), rtol=1e-12, atol=1e-15)


# ----------------------------------------------------------------------------------------------------------------
# Fisher diagonals on the Elman RNN (finite differences)
# ----------------------------------------------------------------------------------------------------------------


def ref_rnn(kind, variant, p, xs, y):
    per_sample = []
    for i, x in enumerate(xs):
        if variant == "empirical":
            g = np_fd_grad(lambda q: np_log_prob(kind, np_rnn_forward(q, x), y[i]), p)
            per_sample.append({k: v ** 2 for k, v in g.items()})
        elif kind == "categorical":     # enumerate all K^T label sequences
            probs = np_softmax(np_rnn_forward(p, x))
            acc = {k: np.zeros_like(v) for k, v in p.items()}
            for labels in itertools.product(range(K), repeat=len(x)):
                w = np.prod(probs[np.arange(len(x)), labels])
                g = np_fd_grad(lambda q: np_log_prob(kind, np_rnn_forward(q, x), np.array(labels)), p)
                for k in acc:
                    acc[k] += w * g[k] ** 2
            per_sample.append(acc)
        else:                            # diag(J^T J) / sigma^2 with J by finite differences of the outputs
            acc = {k: np.zeros_like(v) for k, v in p.items()}
            for t, j in np.ndindex(len(x), K):
                g = np_fd_grad(lambda q: np_rnn_forward(q, x)[t, j], p)
                for k in acc:
                    acc[k] += g[k] ** 2 / SIGMA ** 2
            per_sample.append(acc)
    return {k: np.mean([s[k] for s in per_sample], axis=0) for k in p}


@pytest.mark.parametrize("kind", ["categorical", "gaussian"])
@pytest.mark.parametrize("variant", ["empirical", "exact"])
def test_rnn_fisher_matches_finite_differences(rnn, kind, variant):
    p, xs, yc, yg = rnn
    y = yc if kind == "categorical" else yg
    ref = ref_rnn(kind, variant, p, xs, y)
    with jax.enable_x64(True):
        got = fisher_jit(rnn_apply, to_jax(p, jnp.float64), jnp.asarray(xs), jnp.asarray(y),
                         likelihood=LIKELIHOODS[kind], variant=variant, chunk_size=2)
        got = jax.tree_util.tree_map(np.asarray, got)
    assert_tree_close(got, ref, rtol=1e-6, atol=1e-9)


def test_rnn_mas_matches_finite_differences(rnn):
    p, xs, _, _ = rnn
    grads = [np_fd_grad(lambda q: np.sum(np_rnn_forward(q, x) ** 2), p) for x in xs]
    ref = {k: np.mean([np.abs(g[k]) for g in grads], axis=0) for k in p}
    with jax.enable_x64(True):
        got = jax.tree_util.tree_map(np.asarray, mas_jit(rnn_apply, to_jax(p, jnp.float64), jnp.asarray(xs)))
    assert_tree_close(got, ref, rtol=1e-6, atol=1e-9)


def test_mlp_mas_matches_hand_backprop(mlp):
    p, data = mlp
    x = data["seq"][0]
    with jax.enable_x64(True):
        got = jax.tree_util.tree_map(np.asarray, mas_jit(mlp_apply, to_jax(p, jnp.float64), jnp.asarray(x)))
    assert_tree_close(got, ref_mlp_mas(p, x), rtol=1e-10, atol=1e-13)


# ----------------------------------------------------------------------------------------------------------------
# Sampled Fisher converges to the exact one
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["categorical", "gaussian"])
def test_sampled_converges_to_exact(mlp, kind):
    p, data = mlp
    x = data["seq"][0]
    pj = to_jax(p, jnp.float32)
    xj = jnp.asarray(x, jnp.float32)
    lik = LIKELIHOODS[kind]
    exact = jax.tree_util.tree_map(np.asarray, fisher_jit(mlp_apply, pj, xj, likelihood=lik, variant="exact"))
    errs = {}
    for m in (2, 4000):
        est = fisher_jit(mlp_apply, pj, xj, likelihood=lik, variant="sampled", key=jax.random.key(4),
                         num_samples=m)
        errs[m] = tree_rel_err(est, exact)
    assert errs[4000] < 0.05, errs
    assert errs[2] > 3 * errs[4000], errs
    # different keys give different estimates, the same key the same one
    a = fisher_jit(mlp_apply, pj, xj, likelihood=lik, variant="sampled", key=jax.random.key(5), num_samples=2)
    b = fisher_jit(mlp_apply, pj, xj, likelihood=lik, variant="sampled", key=jax.random.key(5), num_samples=2)
    c = fisher_jit(mlp_apply, pj, xj, likelihood=lik, variant="sampled", key=jax.random.key(6), num_samples=2)
    assert tree_rel_err(a, jax.tree_util.tree_map(np.asarray, b)) == 0.0
    assert tree_rel_err(a, jax.tree_util.tree_map(np.asarray, c)) > 1e-3


# ----------------------------------------------------------------------------------------------------------------
# Chunking
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant,chunk_size", [("empirical", 1), ("empirical", 3), ("sampled", 3),
                                                ("exact", 3), ("exact", 50)])
def test_chunked_equals_unchunked(mlp, variant, chunk_size):
    p, data = mlp
    x, y = targets_for("categorical", data["seq"])
    args = (mlp_apply, to_jax(p, jnp.float32), jnp.asarray(x, jnp.float32), jnp.asarray(y))
    kw = dict(likelihood=F.Categorical(), variant=variant, key=jax.random.key(7), num_samples=3)
    full = jax.tree_util.tree_map(np.asarray, fisher_jit(*args, **kw))
    chunked = jax.tree_util.tree_map(np.asarray, fisher_jit(*args, chunk_size=chunk_size, **kw))
    assert_tree_close(chunked, full, rtol=1e-5, atol=1e-7)
    if variant == "empirical":
        mas_full = mas_jit(mlp_apply, args[1], args[2])
        mas_chunked = mas_jit(mlp_apply, args[1], args[2], chunk_size=chunk_size)
        assert_tree_close(mas_chunked, jax.tree_util.tree_map(np.asarray, mas_full), rtol=1e-5, atol=1e-7)


def test_eager_equals_jit(mlp):
    p, data = mlp
    x, y = targets_for("gaussian", data["single"])
    args = (mlp_apply, to_jax(p, jnp.float32), jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32))
    kw = dict(likelihood=F.Gaussian(SIGMA), variant="exact", chunk_size=3)
    assert_tree_close(F.fisher_diagonal(*args, **kw),
                      jax.tree_util.tree_map(np.asarray, fisher_jit(*args, **kw)), rtol=1e-6)


# ----------------------------------------------------------------------------------------------------------------
# Not the squared batch gradient
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["categorical", "gaussian"])
def test_squared_batch_gradient_is_smaller(mlp, kind):
    p, data = mlp
    x, y = targets_for(kind, data["seq"])
    with jax.enable_x64(True):
        pj, xj, yj = to_jax(p, jnp.float64), jnp.asarray(x), jnp.asarray(y)
        sq = jax.tree_util.tree_map(np.asarray, F.squared_batch_gradient(mlp_apply, pj, xj, yj,
                                                                         likelihood=LIKELIHOODS[kind]))
        emp = jax.tree_util.tree_map(np.asarray, fisher_jit(mlp_apply, pj, xj, yj, likelihood=LIKELIHOODS[kind],
                                                             variant="empirical"))
    # reference: the square of the mean of the hand-computed per-sample scores
    grads = []
    for xi, yi in zip(x, y):
        _, out = np_mlp_forward(p, xi)
        g = (np.eye(K)[yi] - np_softmax(out)) if kind == "categorical" else (yi - out) / SIGMA ** 2
        grads.append(np_mlp_vjp(p, xi, g))
    ref = {k: np.mean([g[k] for g in grads], axis=0) ** 2 for k in p}
    assert_tree_close(sq, ref, rtol=1e-10, atol=1e-14)
    # Jensen: (mean g)^2 <= mean g^2 elementwise, strictly smaller in total
    for k in p:
        assert np.all(sq[k] <= emp[k] * (1 + 1e-12)), k
    total = lambda t: sum(float(np.sum(v)) for v in t.values())
    assert total(sq) < 0.5 * total(emp)


def test_sum_leading_is_the_sum_over_the_leading_axis():
    from clloop_jax.importance.reductions import sum_leading
    rng = np.random.default_rng(9)
    for n in range(1, 10):
        a = rng.normal(size=(n, 3, 2))
        with jax.enable_x64(True):
            np.testing.assert_allclose(np.asarray(sum_leading(jnp.asarray(a))), a.sum(0), rtol=1e-13, atol=1e-14)
    with pytest.raises(ValueError, match="sum_leading.*non-empty leading axis"):
        sum_leading(jnp.zeros((0, 2)))


# ----------------------------------------------------------------------------------------------------------------
# Bad input
# ----------------------------------------------------------------------------------------------------------------


def test_bad_input_raises_value_errors(mlp):
    p, data = mlp
    x, y, _ = data["single"]
    pj, xj, yj = to_jax(p, jnp.float32), jnp.asarray(x, jnp.float32), jnp.asarray(y)
    cat = F.Categorical()
    with pytest.raises(ValueError, match="variant.*empirical.*sampled.*exact.*'fisher'"):
        F.fisher_diagonal(mlp_apply, pj, xj, yj, likelihood=cat, variant="fisher")
    with pytest.raises(ValueError, match="key"):
        F.fisher_diagonal(mlp_apply, pj, xj, likelihood=cat, variant="sampled")
    with pytest.raises(ValueError, match="key"):
        F.fisher_diagonal(mlp_apply, pj, xj, likelihood=cat, variant="sampled", key=3)
    with pytest.raises(ValueError, match="targets"):
        F.fisher_diagonal(mlp_apply, pj, xj, likelihood=cat, variant="empirical")
    with pytest.raises(ValueError, match="num_samples"):
        F.fisher_diagonal(mlp_apply, pj, xj, likelihood=cat, variant="sampled", key=jax.random.key(0),
                          num_samples=0)
    for bad in (0, -2, 1.5, True):
        with pytest.raises(ValueError, match="chunk_size"):
            F.fisher_diagonal(mlp_apply, pj, xj, yj, likelihood=cat, variant="empirical", chunk_size=bad)
        with pytest.raises(ValueError, match="chunk_size"):
            F.per_sample_grads(mlp_ce_loss, pj, xj, yj, chunk_size=bad)
        with pytest.raises(ValueError, match="chunk_size"):
            F.mas_importance(mlp_apply, pj, xj, chunk_size=bad)
    with pytest.raises(ValueError, match=r"targets has 6 samples.*inputs has 7"):
        F.fisher_diagonal(mlp_apply, pj, xj, yj[:6], likelihood=cat, variant="empirical")
    with pytest.raises(ValueError, match=r"inputs.*leading sample axis.*\[7, 5\]"):
        F.fisher_diagonal(mlp_apply, pj, {"a": xj, "b": xj[:5]}, likelihood=cat)
    with pytest.raises(ValueError, match=r"batch\[1\] has 6 samples"):
        F.per_sample_grads(mlp_ce_loss, pj, xj, yj[:6])
    with pytest.raises(ValueError, match="targets has 5"):
        F.squared_batch_gradient(mlp_apply, pj, xj, yj[:5], likelihood=cat)
    with pytest.raises(ValueError, match="likelihood.*fisher_factor"):
        F.fisher_diagonal(mlp_apply, pj, xj, likelihood=object(), variant="exact")
    with pytest.raises(ValueError, match="sigma"):
        F.Gaussian(sigma=0.0)
    with pytest.raises(ValueError, match="target"):
        F.fisher_diagonal(mlp_apply, pj, xj, yj[:, None], likelihood=cat, variant="empirical")
    with pytest.raises(ValueError, match="target"):
        F.fisher_diagonal(mlp_apply, pj, xj, yj, likelihood=F.Gaussian(), variant="empirical")


def test_arguments_of_the_wrong_kind_are_named(mlp):
    p, data = mlp
    x, y, _ = data["single"]
    pj, xj, yj = to_jax(p, jnp.float32), jnp.asarray(x, jnp.float32), jnp.asarray(y)
    # The class instead of an instance: said so, with the fix.
    with pytest.raises(TypeError, match=r"^likelihood must be an object with methods .*got the class Gaussian; "
                                        r"pass an instance Gaussian\(\)"):
        F.fisher_diagonal(mlp_apply, pj, xj, likelihood=F.Gaussian)
    with pytest.raises(TypeError, match=r"got the class Categorical; pass an instance Categorical\(\)"):
        F.squared_batch_gradient(mlp_apply, pj, xj, yj, likelihood=F.Categorical)
    with pytest.raises(TypeError, match=r"^key must be a single jax.random.key\(...\), got int 3; "
                                        r"use jax.random.key\(3\)"):
        F.fisher_diagonal(mlp_apply, pj, xj, likelihood=F.Categorical(), variant="sampled", key=3)
    with pytest.raises(TypeError, match=r"^num_samples must be an integer >= 1, got bool True"):
        F.fisher_diagonal(mlp_apply, pj, xj, likelihood=F.Categorical(), variant="sampled",
                          key=jax.random.key(0), num_samples=True)
    with pytest.raises(TypeError, match=r"^apply_fn must be callable"):
        F.fisher_diagonal("mlp", pj, xj, likelihood=F.Categorical())
    with pytest.raises(TypeError, match=r"^loss_fn must be callable"):
        F.per_sample_grads(None, pj, xj)
    with pytest.raises(TypeError, match=r"^apply_fn must be callable"):
        F.mas_importance(3, pj, xj)
    for sigma, error in (("1", TypeError), (float("inf"), ValueError), (True, TypeError), (-1.0, ValueError)):
        with pytest.raises(error, match=r"^Gaussian.sigma must be a finite number > 0"):
            F.Gaussian(sigma=sigma)
    # A legacy uint32[2] key still works and gives the typed key's numbers.
    typed = F.fisher_diagonal(mlp_apply, pj, xj, likelihood=F.Categorical(), variant="sampled",
                              key=jax.random.key(1))
    legacy = F.fisher_diagonal(mlp_apply, pj, xj, likelihood=F.Categorical(), variant="sampled",
                               key=jax.random.PRNGKey(1))
    jax.tree.map(np.testing.assert_array_equal, typed, legacy)


# ----------------------------------------------------------------------------------------------------------------
# The per-layer method (dense layers contracted after the backward pass) equals the per-sample one
# ----------------------------------------------------------------------------------------------------------------

class TanhMLP(nn.Module):
    """``mlp_apply`` as a flax model: kernels are the transposed ``W1``, ``W2``."""

    @nn.compact
    def __call__(self, x):
        return nn.Dense(K, name="out")(jnp.tanh(nn.Dense(H, name="hidden")(x)))


class ElmanRNN(nn.Module):
    """``rnn_apply`` as a flax model: ``nn.scan`` over time, carrying the tap collection per step."""

    @nn.compact
    def __call__(self, xs):
        def step(cell, h, x):
            h = jnp.tanh(nn.Dense(h.shape[-1], name="Wx")(x) + nn.Dense(h.shape[-1], use_bias=False, name="Wh")(h))
            return h, nn.Dense(K, name="Wo")(h)

        scan = nn.scan(step, variable_broadcast="params", split_rngs={"params": False},
                       variable_axes={dense_taps.TAP_COLLECTION: 0})
        hidden = self.param("h0", nn.initializers.zeros, (3,), xs.dtype)   # a non-dense leaf (gradient unused)
        return scan(self, jnp.zeros_like(hidden) + 0 * hidden, xs)[1]


class Mixed(nn.Module):
    """Dense layers (one called twice, DenseGeneral over a non-last axis and over two axes) among LayerNorm, a free
    parameter and a convolution, which keep the per-sample path."""

    @nn.compact
    def __call__(self, x):                                               # x [T, D]
        h = nn.LayerNorm(name="norm")(nn.Dense(4, name="first")(x)) * self.param("gain", nn.initializers.ones, (4,))
        shared = nn.Dense(4, name="shared")
        h = jnp.tanh(shared(h)) + shared(jnp.sin(h))                     # two calls of one layer
        c = nn.Conv(2, kernel_size=(2,), name="conv")(h)                 # [T, 2]
        g = nn.DenseGeneral((2, 3), axis=-2, name="over_time")(jnp.concatenate([h, c], -1))   # [6, 2, 3]
        return nn.DenseGeneral(K, axis=(-2, -1), name="two_axes")(g)     # [6, K]


class UntappedScan(nn.Module):
    """A dense layer inside an ``nn.scan`` that does not carry the tap collection."""

    @nn.compact
    def __call__(self, xs):
        scan = nn.scan(lambda cell, c, x: (c, nn.Dense(K, name="cell")(x)), variable_broadcast="params",
                       split_rngs={"params": False})
        return scan(self, jnp.zeros(()), xs)[1]


def flax_apply(model):
    return lambda p, x: model.apply(p, x)


CROSS = CrossModalModel(input_dim=(3, 2), hidden_dim=4, output_dim=K, num_modalities=2, num_heads=2, feedback_dim=2)


def cross_apply(p, x):
    obs, feedback = x
    carry = CROSS.initial_carry().astype(obs[0].dtype)
    return CROSS.apply(p, carry, obs, feedback, method=CROSS.sequence)[1]


CLASSIFIER = SequenceClassifier(CrossModalModel(input_dim=2, hidden_dim=4, output_dim=K, num_heads=2, feedback_dim=0),
                                chunk=2)
FLAX_APPLY = {"tanh_mlp": flax_apply(TanhMLP()), "rnn": flax_apply(ElmanRNN()), "mixed": flax_apply(Mixed()),
              "mlp": flax_apply(MLP(output_dim=K, hidden=(4, 3))), "classifier": flax_apply(CLASSIFIER),
              "untapped": flax_apply(UntappedScan()), "cross": cross_apply}


def f64(tree):
    return jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), tree)


@pytest.fixture(scope="module")
def flax_models():
    """float64 parameters and inputs (N samples) of each flax model, categorical and Gaussian targets."""
    rng = np.random.default_rng(5)
    key = jax.random.key(5)
    n = 5
    x_cross = ((rng.normal(size=(n, 3, 3)), rng.normal(size=(n, 3, 2))), rng.normal(size=(n, 3, 2)))
    with jax.enable_x64(True):
        init = lambda model, *example: jax.jit(lambda k: model.init(k, *example))(key)
        models = {
            "mlp": (init(MLP(output_dim=K, hidden=(4, 3)), jnp.zeros(D)), rng.normal(size=(n, 2, D)), (n, 2)),
            "classifier": (init(CLASSIFIER, jnp.zeros(6)), rng.normal(size=(n, 6)), (n,)),
            "mixed": (init(Mixed(), jnp.zeros((4, D))), rng.normal(size=(n, 4, D)), (n, 6)),
            "cross": (init(CROSS, *CROSS.dummy_inputs()), x_cross, (n, 3)),
            "untapped": (init(UntappedScan(), jnp.zeros((2, D))), rng.normal(size=(n, 2, D)), (n, 2)),
        }
        out = {}
        for name, (params, x, ylead) in models.items():
            # SequenceClassifier starts from a float32 carry: float32 throughout
            cast = f64 if name != "classifier" else lambda t: jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), t)
            out[name] = (cast(params), cast(x), rng.integers(0, K, size=ylead),
                         cast(rng.normal(size=ylead + (K,))))
    return out


VARIANT_CASES = [("empirical", "gaussian", None), ("sampled", "categorical", 2), ("exact", "categorical", None),
                 ("exact", "gaussian", 3)]


@pytest.mark.parametrize("name,variant,kind,chunk_size",
                         [(name, *case) for name in ("mlp", "mixed") for case in VARIANT_CASES]
                         + [("cross", *VARIANT_CASES[2])]  # exact; sampled: the run's test in test_loop.py
                         + [("classifier", *VARIANT_CASES[1])])
def test_per_layer_equals_per_sample(flax_models, name, variant, kind, chunk_size):
    params, x, yc, yg = flax_models[name]
    y = yc if kind == "categorical" else yg
    with jax.enable_x64(True):
        kw = dict(likelihood=LIKELIHOODS[kind], variant=variant, key=jax.random.key(8), num_samples=2,
                  chunk_size=chunk_size)
        per_sample = fisher_jit(FLAX_APPLY[name], params, x, jnp.asarray(y), method="per_sample", **kw)
        per_layer = fisher_jit(FLAX_APPLY[name], params, x, jnp.asarray(y), method="per_layer", **kw)
    scale = max(float(np.max(np.abs(a))) for a in jax.tree_util.tree_leaves(per_sample))
    rtol, atol = (1e-9, 1e-13) if name != "classifier" else (2e-4, 1e-6)      # the classifier is float32
    jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=rtol, atol=atol * scale),
                 per_layer, per_sample)


@pytest.mark.parametrize("name", ["mixed"])   # CrossModalModel's taps: the Fisher tests above
def test_per_layer_mas_equals_per_sample(flax_models, name):
    params, x, _, _ = flax_models[name]
    with jax.enable_x64(True):
        per_sample = mas_jit(FLAX_APPLY[name], params, x, method="per_sample")
        per_layer = mas_jit(FLAX_APPLY[name], params, x, chunk_size=2, method="per_layer")
    jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-9, atol=1e-15),
                 per_layer, per_sample)


def test_plan_splits_dense_from_other_parameters(flax_models):
    """Dense kernels and biases (one layer called twice included) are contracted; the LayerNorm, the free gain and
    the convolution keep the per-sample path."""
    params, x, _, _ = flax_models["mixed"]
    plan = dense_taps.plan(FLAX_APPLY["mixed"], params, jax.tree.map(lambda a: a[0], x))
    paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
    dense = {paths[j] for j in plan.dense_leaves}
    free = {paths[j] for j in plan.free}
    layers = ("first", "shared", "over_time", "two_axes")
    assert dense == {f"['params']['{m}']['{leaf}']" for m in layers for leaf in ("kernel", "bias")}
    assert free == {"['params']['norm']['scale']", "['params']['norm']['bias']", "['params']['gain']",
                    "['params']['conv']['kernel']", "['params']['conv']['bias']"}
    calls = {paths[layer.kernel]: len(layer.taps) for layer in plan.layers}
    assert calls["['params']['shared']['kernel']"] == 2 and calls["['params']['first']['kernel']"] == 1
    # 'auto' (the default) is the per-layer method where it applies: the same program, the same numbers
    with jax.enable_x64(True):
        kw = dict(likelihood=F.Gaussian(SIGMA), variant="sampled", key=jax.random.key(1))
        auto = fisher_jit(FLAX_APPLY["mixed"], params, x, **kw)
        per_layer = fisher_jit(FLAX_APPLY["mixed"], params, x, method="per_layer", **kw)
    jax.tree.map(np.testing.assert_array_equal, auto, per_layer)


def tanh_mlp_params(p):
    return {"params": {"hidden": {"kernel": p["W1"].T, "bias": p["b1"]}, "out": {"kernel": p["W2"].T, "bias": p["b2"]}}}


def from_tanh_mlp(tree):
    t = tree["params"]
    return {"W1": t["hidden"]["kernel"].T, "b1": t["hidden"]["bias"],
            "W2": t["out"]["kernel"].T, "b2": t["out"]["bias"]}


@pytest.mark.parametrize("kind", ["categorical", "gaussian"])
@pytest.mark.parametrize("variant", ["empirical", "exact"])
def test_per_layer_matches_float64_reference_mlp(mlp, kind, variant):
    """The flax twin of the hand-differentiated MLP, over T positions (one dense call per position)."""
    p, data = mlp
    x, y = targets_for(kind, data["seq"])
    ref = {"empirical": lambda: ref_mlp_empirical(kind, p, x, y), "exact": lambda: (
        ref_mlp_exact_categorical(p, x) if kind == "categorical" else ref_mlp_exact_gaussian(p, x))}[variant]()
    with jax.enable_x64(True):
        got = fisher_jit(FLAX_APPLY["tanh_mlp"], f64(tanh_mlp_params(p)), jnp.asarray(x), jnp.asarray(y),
                         likelihood=LIKELIHOODS[kind], variant=variant, method="per_layer")
    assert_tree_close(jax.tree.map(np.asarray, from_tanh_mlp(got)), ref, rtol=1e-10, atol=1e-13)


def rnn_params(p):
    return {"params": {"Wx": {"kernel": p["Wx"].T, "bias": p["b"]}, "Wh": {"kernel": p["Wh"].T},
                       "Wo": {"kernel": p["Wo"].T, "bias": p["bo"]}, "h0": np.zeros(3)}}


@pytest.mark.parametrize("kind", ["categorical", "gaussian"])
@pytest.mark.parametrize("variant", ["empirical", "exact"])
def test_per_layer_matches_finite_differences_rnn(rnn, kind, variant):
    """The flax twin of the Elman RNN (dense layers inside nn.scan) against float64 finite differences."""
    p, xs, yc, yg = rnn
    y = yc if kind == "categorical" else yg
    ref = ref_rnn(kind, variant, p, xs, y)
    with jax.enable_x64(True):
        got = fisher_jit(FLAX_APPLY["rnn"], f64(rnn_params(p)), jnp.asarray(xs), jnp.asarray(y),
                         likelihood=LIKELIHOODS[kind], variant=variant, chunk_size=2, method="per_layer")
    t = jax.tree.map(np.asarray, got["params"])
    assert_tree_close({"Wx": t["Wx"]["kernel"].T, "b": t["Wx"]["bias"], "Wh": t["Wh"]["kernel"].T,
                       "Wo": t["Wo"]["kernel"].T, "bo": t["Wo"]["bias"]}, ref, rtol=1e-6, atol=1e-9)
    np.testing.assert_array_equal(t["h0"], 0.0)     # h0 does not reach the output


def test_per_layer_refuses_what_it_cannot_do(flax_models, mlp):
    """method='per_layer' names why it cannot apply; 'auto' then takes the per-sample path (same numbers)."""
    p, data = mlp
    x, y, _ = data["single"]
    pj, xj, yj = to_jax(p, jnp.float32), jnp.asarray(x, jnp.float32), jnp.asarray(y)
    cat = F.Categorical()
    with pytest.raises(ValueError, match=r"^method must be one of \['auto', 'per_layer', 'per_sample'\]"):
        F.fisher_diagonal(mlp_apply, pj, xj, yj, likelihood=cat, variant="empirical", method="layers")
    with pytest.raises(ValueError, match=r"^method must be one of"):
        F.mas_importance(mlp_apply, pj, xj, method=None)
    with pytest.raises(ValueError, match=r"method='per_layer'.*params must be a flax variables dict"):
        F.fisher_diagonal(mlp_apply, pj, xj, yj, likelihood=cat, variant="empirical", method="per_layer")
    flax_p = tanh_mlp_params(pj)
    with pytest.raises(ValueError, match=r"method='per_layer'.*apply_fn makes no flax call"):
        F.fisher_diagonal(lambda q, v: mlp_apply(from_tanh_mlp(q), v), flax_p, xj, yj, likelihood=cat,
                          variant="empirical", method="per_layer")
    model = TanhMLP()
    scaled = lambda q, v: model.apply(jax.tree.map(lambda a: 2.0 * a, q), v)
    with pytest.raises(ValueError, match=r"method='per_layer'.*does not pass params unchanged"):
        F.fisher_diagonal(scaled, flax_p, xj, yj, likelihood=cat, variant="empirical", method="per_layer")
    twice = lambda q, v: model.apply(q, v) + model.apply(q, v)
    with pytest.raises(ValueError, match=r"method='per_layer'.*more than one top-level flax call"):
        F.fisher_diagonal(twice, flax_p, xj, yj, likelihood=cat, variant="empirical", method="per_layer")
    remat = lambda q, v: jax.checkpoint(lambda vv: model.apply(q, vv))(v)    # params closed over, same leaves
    with pytest.raises(ValueError, match=r"method='per_layer'.*inside a JAX transformation of its own"):
        F.fisher_diagonal(remat, flax_p, xj, yj, likelihood=cat, variant="empirical", method="per_layer")
    params, xs, yc, _ = flax_models["untapped"]
    with pytest.raises(ValueError, match=r"method='per_layer'.*no dense layer.*layer cell.*does not carry the "
                                         r"'dense_taps' collection"):
        F.mas_importance(FLAX_APPLY["untapped"], params, xs, method="per_layer")
    # 'auto' falls back to the per-sample path in every one of these cases
    for fn, q in ((mlp_apply, pj), (scaled, flax_p), (twice, flax_p), (remat, flax_p)):
        auto = F.fisher_diagonal(fn, q, xj, yj, likelihood=cat, variant="empirical")
        ref = F.fisher_diagonal(fn, q, xj, yj, likelihood=cat, variant="empirical", method="per_sample")
        jax.tree.map(np.testing.assert_array_equal, auto, ref)
