"""Importance-weighted penalties against NumPy float64 references and the papers' formulas."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given
from hypothesis import strategies as st

from clloop_jax.strategies import regularizers as reg_lib
from clloop_jax.strategies.regularizers import make_regularizer

SHAPES = {"dense": {"kernel": (3, 2), "bias": (2,)}, "gain": ()}
QUADRATIC = ("l2", "ewc", "online_ewc", "si", "mas", "ewc_budget")


def random_tree(rng, shapes=SHAPES, positive=False, scale=1.0):
    def leaf(shape):
        x = rng.normal(size=shape) * scale
        return np.abs(x) if positive else x

    return jax.tree.map(leaf, shapes, is_leaf=lambda s: isinstance(s, tuple))


def f32(tree):
    return jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), tree)


def flat64(tree):
    return np.concatenate([np.ravel(np.asarray(x, np.float64)) for x in jax.tree.leaves(tree)])


def task_importance(reg, rng):
    return None if reg.importance_kind == "none" else f32(random_tree(rng, positive=True))


def consolidated(name, rng, lam=1.5, tasks=1, **kw):
    """A state after ``tasks`` consolidations at random parameters (SI: after a few random steps per task)."""
    reg = make_regularizer(name, lam=lam, **kw)
    params = f32(random_tree(rng))
    state = reg.init(params)
    for _ in range(tasks):
        for _ in range(3):
            new = f32(random_tree(rng))
            state = reg.accumulate(state, params, new, f32(random_tree(rng)))
            params = new
        state = reg.consolidate(state, params, task_importance(reg, rng))
    return reg, state


# ------------------------------------------------------------------------------------------------------------------
# Properties shared by every strategy
# ------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", reg_lib.STRATEGIES)
def test_penalty_exactly_zero_before_first_consolidation(name):
    rng = np.random.default_rng(0)
    reg = make_regularizer(name, lam=3.0)
    p0 = f32(random_tree(rng))
    state = reg.init(p0)
    for _ in range(3):
        p1 = f32(random_tree(rng, scale=10.0))
        state = reg.accumulate(state, p0, p1, f32(random_tree(rng)))
        assert float(reg.penalty(state, p1)) == 0.0
        g = jax.grad(lambda p: reg.penalty(state, p))(p1)
        assert all(float(jnp.max(jnp.abs(x))) == 0.0 for x in jax.tree.leaves(g))
        p0 = p1
    # The budget's dual step waits for a constraint; fine-tuning has no strength at all.
    assert float(state.lam) == (0.0 if name == "none" else 3.0)


@given(st.integers(0, 2**31 - 1), st.sampled_from(QUADRATIC), st.floats(0.0, 20.0))
def test_penalty_nonnegative_zero_at_anchor_and_closed_form_gradient(seed, name, lam):
    rng = np.random.default_rng(seed)
    reg, state = consolidated(name, rng, lam=lam)
    theta = f32(random_tree(rng, scale=3.0))
    omega, anchor = flat64(state.importance), flat64(state.anchor)
    t = flat64(theta)
    lam32 = float(np.float32(lam))
    ref_value = 0.5 * lam32 * np.sum(omega * (t - anchor) ** 2)
    ref_grad = lam32 * omega * (t - anchor)

    value, grad = jax.value_and_grad(reg.penalty, argnums=1)(state, theta)
    assert float(value) >= 0.0
    np.testing.assert_allclose(value, ref_value, rtol=2e-5, atol=1e-6)
    np.testing.assert_allclose(flat64(grad), ref_grad, rtol=2e-5, atol=1e-6)
    # jax.grad agrees with the closed form lam * Omega * (theta - theta*) to rounding
    np.testing.assert_allclose(flat64(grad), flat64(reg_lib.penalty_gradient(state, theta)), rtol=1e-6, atol=1e-6)
    assert float(reg.penalty(state, state.anchor)) == 0.0
    assert np.all(omega >= 0.0)


@given(st.integers(0, 2**31 - 1))
def test_l2_none_and_mas_consolidation(seed):
    rng = np.random.default_rng(seed)
    p1, p2 = f32(random_tree(rng)), f32(random_tree(rng))
    m1, m2 = f32(random_tree(rng, positive=True)), f32(random_tree(rng, positive=True))

    l2 = make_regularizer("l2", lam=2.0)
    s = l2.consolidate(l2.consolidate(l2.init(p1), p1, None), p2, None)
    np.testing.assert_array_equal(flat64(s.importance), 1.0)
    np.testing.assert_array_equal(flat64(s.anchor), flat64(p2))
    theta = f32(random_tree(rng))
    np.testing.assert_allclose(l2.penalty(s, theta), np.sum((flat64(theta) - flat64(p2)) ** 2), rtol=1e-5)

    # MAS: the per-task importances are summed, anchored at the latest parameters
    mas = make_regularizer("mas", lam=1.0)
    s = mas.consolidate(mas.consolidate(mas.init(p1), p1, m1), p2, m2)
    np.testing.assert_allclose(flat64(s.importance), flat64(m1) + flat64(m2), rtol=1e-6)
    np.testing.assert_array_equal(flat64(s.anchor), flat64(p2))

    none = make_regularizer("none", lam=5.0)
    s = none.consolidate(none.init(p1), p1, None)
    assert float(none.penalty(s, theta)) == 0.0


# ------------------------------------------------------------------------------------------------------------------
# EWC: the summed form equals the per-task sum; online EWC
# ------------------------------------------------------------------------------------------------------------------


@given(st.integers(0, 2**31 - 1), st.floats(0.1, 50.0))
def test_summed_ewc_equals_explicit_per_task_sum(seed, lam):
    rng = np.random.default_rng(seed)
    reg = make_regularizer("ewc", lam=lam, num_tasks=3)
    anchors = [f32(random_tree(rng)) for _ in range(3)]
    fishers = [f32(random_tree(rng, positive=True)) for _ in range(3)]
    # a coordinate with zero Fisher in some tasks and zero in all tasks
    fishers[0]["gain"] = jnp.float32(0.0)
    for f in fishers:
        f["dense"]["bias"] = f["dense"]["bias"].at[0].set(0.0)
    state = reg.init(anchors[0])
    for a, f in zip(anchors, fishers):
        state = reg.consolidate(state, a, f)
    lam32 = float(np.float32(lam))

    for theta in [f32(random_tree(rng, scale=2.0)), anchors[1]]:
        t = flat64(theta)
        ref_value = sum(0.5 * lam32 * np.sum(flat64(f) * (t - flat64(a)) ** 2) for a, f in zip(anchors, fishers))
        ref_grad = sum(lam32 * flat64(f) * (t - flat64(a)) for a, f in zip(anchors, fishers))
        value, grad = jax.value_and_grad(reg.penalty, argnums=1)(state, theta)
        np.testing.assert_allclose(value, ref_value, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(flat64(grad), ref_grad, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(flat64(state.importance), sum(flat64(f) for f in fishers), rtol=1e-6)
    assert float(state.constant) >= 0.0


def test_summed_ewc_hand_worked():
    # one coordinate: F1 = 1 at 0, F2 = 3 at 4 -> Omega 4, anchor 3, C = 1*0 + 3*16 - 4*9 = 12
    reg = make_regularizer("ewc", lam=2.0)
    s = reg.init(jnp.zeros(1))
    s = reg.consolidate(s, jnp.array([0.0]), jnp.array([1.0]))
    s = reg.consolidate(s, jnp.array([4.0]), jnp.array([3.0]))
    np.testing.assert_allclose(s.importance, [4.0])
    np.testing.assert_allclose(s.anchor, [3.0])
    np.testing.assert_allclose(s.constant, 12.0, rtol=1e-6)
    # at theta = 1: 1 * 1 + 3 * 9 = 28, times lam / 2 = 28
    np.testing.assert_allclose(reg.penalty(s, jnp.array([1.0])), 28.0, rtol=1e-6)


@given(st.integers(0, 2**31 - 1), st.floats(0.0, 1.0))
def test_online_ewc_decays_and_equals_summed_at_gamma_one(seed, gamma):
    rng = np.random.default_rng(seed)
    anchors = [f32(random_tree(rng)) for _ in range(3)]
    fishers = [f32(random_tree(rng, positive=True)) for _ in range(3)]
    ewc, online = make_regularizer("ewc"), make_regularizer("online_ewc", gamma=1.0)
    decayed = make_regularizer("online_ewc", gamma=gamma)
    s_e, s_o, s_d = ewc.init(anchors[0]), online.init(anchors[0]), decayed.init(anchors[0])
    for a, f in zip(anchors, fishers):
        s_e, s_o, s_d = ewc.consolidate(s_e, a, f), online.consolidate(s_o, a, f), decayed.consolidate(s_d, a, f)
    np.testing.assert_allclose(flat64(s_o.importance), flat64(s_e.importance), rtol=1e-6)
    np.testing.assert_array_equal(flat64(s_o.anchor), flat64(anchors[-1]))
    g = float(np.float32(gamma))
    expected = g * g * flat64(fishers[0]) + g * flat64(fishers[1]) + flat64(fishers[2])
    np.testing.assert_allclose(flat64(s_d.importance), expected, rtol=1e-5, atol=1e-7)


# ------------------------------------------------------------------------------------------------------------------
# SI: the path integral on a quadratic trained by gradient descent
# ------------------------------------------------------------------------------------------------------------------


def si_on_quadratic(h, c, theta0, lr, steps, xi):
    """Runs SI's accumulate inside a lax.scan of gradient descent on 0.5 * sum h (theta - c)^2."""
    reg = make_regularizer("si", lam=1.0, xi=xi)
    grad_fn = jax.grad(lambda th: 0.5 * jnp.sum(h * (th - c) ** 2))

    def step(carry, _):
        th, s = carry
        g = grad_fn(th)
        new = th - lr * g
        return (new, reg.accumulate(s, th, new, g)), None

    @jax.jit
    def run(theta0):
        (theta, state), _ = jax.lax.scan(step, (theta0, reg.init(theta0)), None, length=steps)
        return theta, state, reg.consolidate(state, theta, None)

    return run(theta0)


@pytest.mark.parametrize("lr,steps", [(0.05, 40), (0.002, 1000)])
def test_si_path_integral_matches_numpy(lr, steps):
    rng = np.random.default_rng(5)
    h = rng.uniform(0.5, 2.0, size=6)
    c = rng.normal(size=6)
    theta0 = c + rng.normal(size=6) * 2.0
    xi = 0.1
    theta_t, state, final = si_on_quadratic(*(jnp.asarray(v, jnp.float32) for v in (h, c, theta0)), lr, steps, xi)

    # NumPy float64: w = sum_k -g_k * (theta_{k+1} - theta_k)
    th, w = theta0.copy(), np.zeros(6)
    for _ in range(steps):
        g = h * (th - c)
        new = th - lr * g
        w += -g * (new - th)
        th = new
    np.testing.assert_allclose(state.path, w, rtol=1e-4)
    expected = np.maximum(0.0, w / ((th - theta0) ** 2 + xi))
    np.testing.assert_allclose(final.importance, expected, rtol=1e-4)
    np.testing.assert_allclose(final.anchor, th, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(final.path, 0.0)
    np.testing.assert_array_equal(final.start, final.anchor)

    # on a quadratic, gradient descent's loss decrease is exactly w * (1 - h lr / 2)
    decrease = 0.5 * h * ((theta0 - c) ** 2 - (th - c) ** 2)
    np.testing.assert_allclose(decrease, w * (1.0 - 0.5 * h * lr), rtol=1e-10)
    # so in the small-step limit the path integral approaches the per-parameter loss decrease
    rel_err = np.abs(np.asarray(state.path, np.float64) - decrease) / decrease
    assert np.all(rel_err <= 0.5 * h * lr / (1 - 0.5 * h * lr) + 1e-4)
    if lr < 0.01:
        assert np.all(rel_err < 3e-3)


def test_si_accumulates_over_tasks_and_clips_negative_contributions():
    reg = make_regularizer("si", lam=1.0, xi=0.5)
    p0 = jnp.array([0.0, 0.0])
    s = reg.init(p0)
    # task 1: parameter 0 moves downhill (w > 0), parameter 1 uphill (w < 0 -> clipped to 0)
    p1 = jnp.array([1.0, 1.0])
    s = reg.accumulate(s, p0, p1, jnp.array([-2.0, 3.0]))
    np.testing.assert_allclose(s.path, [2.0, -3.0])
    s = reg.consolidate(s, p1, None)
    np.testing.assert_allclose(s.importance, [2.0 / 1.5, 0.0], rtol=1e-6)
    # task 2 starts at p1: delta = (-1, 0) for theta_end = (0, 1)
    p2 = jnp.array([0.0, 1.0])
    s = reg.accumulate(s, p1, p2, jnp.array([1.0, 0.0]))
    s = reg.consolidate(s, p2, None)
    np.testing.assert_allclose(s.importance, [2.0 / 1.5 + 1.0 / 1.5, 0.0], rtol=1e-6)
    np.testing.assert_array_equal(s.anchor, p2)


# ------------------------------------------------------------------------------------------------------------------
# The divergence budget: dual ascent on lambda
# ------------------------------------------------------------------------------------------------------------------


def test_budget_dual_ascent_steps_exactly():
    budget, dual_lr = 2.0, 0.25
    reg = make_regularizer("ewc_budget", lam=1.0, budget=budget, dual_lr=dual_lr, gamma=0.5)
    anchor = jnp.zeros(3)
    fisher = jnp.array([1.0, 2.0, 0.0])
    s = reg.consolidate(reg.init(anchor), anchor, fisher)
    grads = jnp.zeros(3)

    far = jnp.array([1.0, 1.0, 5.0])            # D = 1 + 2 = 3 > budget: lam rises by 0.25
    s = reg.accumulate(s, anchor, far, grads)
    np.testing.assert_allclose(s.lam, 1.0 + dual_lr * (3.0 - budget), rtol=1e-7)
    s = reg.accumulate(s, far, far, grads)
    np.testing.assert_allclose(s.lam, 1.5, rtol=1e-7)

    near = jnp.array([0.5, 0.0, 9.0])            # D = 0.25 < budget: lam falls by 0.4375 per step
    lams = []
    for _ in range(5):
        s = reg.accumulate(s, near, near, grads)
        lams.append(float(s.lam))
    np.testing.assert_allclose(lams[:3], [1.5 - 0.4375, 1.5 - 0.875, 1.5 - 1.3125], rtol=1e-6)
    assert lams[3] == 0.0 and lams[4] == 0.0     # clipped at 0, and stays there
    # online importance: gamma * F + F_new
    s = reg.consolidate(s, near, fisher)
    np.testing.assert_allclose(s.importance, 1.5 * fisher)
    np.testing.assert_array_equal(s.anchor, near)


def test_budget_inside_jitted_scan_vmapped_over_budget():
    anchor = jnp.zeros(2)

    def run(budget):
        reg = make_regularizer("ewc_budget", lam=0.0, budget=budget, dual_lr=0.1)
        s = reg.consolidate(reg.init(anchor), anchor, jnp.ones(2))
        theta = jnp.array([1.0, 1.0])  # D = 2

        def step(s, _):
            return reg.accumulate(s, theta, theta, jnp.zeros(2)), s.lam

        return jax.lax.scan(step, s, None, length=4)[1]

    lams = jax.jit(jax.vmap(run))(jnp.array([1.0, 3.0]))
    np.testing.assert_allclose(lams[0], [0.0, 0.1, 0.2, 0.3], rtol=1e-6)   # D > budget: rises by 0.1
    np.testing.assert_allclose(lams[1], [0.0, 0.0, 0.0, 0.0])                # D < budget: held at 0


# ------------------------------------------------------------------------------------------------------------------
# The optax transform equals the loss term; jit and vmap over lambda
# ------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["ewc", "si", "none"])
def test_transform_matches_loss_term_gradient(name):
    rng = np.random.default_rng(2)
    reg, state = consolidated(name, rng, lam=4.0, tasks=2)
    params = f32(random_tree(rng))
    target = f32(random_tree(rng))

    def task_loss(p):
        return 0.5 * sum(jnp.sum((a - b) ** 2) for a, b in zip(jax.tree.leaves(p), jax.tree.leaves(target)))

    g_task = jax.grad(task_loss)(params)
    g_total = jax.grad(lambda p: task_loss(p) + reg.penalty(state, p))(params)
    tx = reg_lib.penalty_gradient_transform(reg)
    added, _ = tx.update(g_task, tx.init(params), params, reg_state=state)
    np.testing.assert_allclose(flat64(added), flat64(g_total), rtol=1e-5, atol=1e-6)

    # chained before Adam, it gives the same updates as Adam on the gradient of loss + penalty
    chained = optax.chain(reg_lib.penalty_gradient_transform(reg), optax.adam(0.1))
    plain = optax.adam(0.1)
    u1, _ = jax.jit(lambda g, p, s: chained.update(g, chained.init(p), p, reg_state=s))(g_task, params, state)
    u2, _ = plain.update(g_total, plain.init(params), params)
    np.testing.assert_allclose(flat64(u1), flat64(u2), rtol=1e-5, atol=1e-6)


def test_jit_and_vmap_over_lambda():
    rng = np.random.default_rng(4)
    anchors = [f32(random_tree(rng)) for _ in range(2)]
    fishers = [f32(random_tree(rng, positive=True)) for _ in range(2)]
    theta = f32(random_tree(rng))

    def penalty_at(lam):
        reg = make_regularizer("ewc", lam=lam, num_tasks=2)
        s = reg.init(anchors[0])
        for a, f in zip(anchors, fishers):
            s = reg.consolidate(s, a, f)
        return reg.penalty(s, theta)

    lams = jnp.array([0.0, 0.5, 2.0, 10.0])
    values = jax.jit(jax.vmap(penalty_at))(lams)
    unit = penalty_at(1.0)
    np.testing.assert_allclose(values, lams * unit, rtol=1e-5)
    assert float(unit) > 0.0


def test_state_structure_is_stable_under_jit_for_every_strategy():
    rng = np.random.default_rng(6)
    params = f32(random_tree(rng))
    for name in reg_lib.STRATEGIES:
        reg = make_regularizer(name, lam=1.0)
        state = reg.init(params)
        imp = None if reg.importance_kind == "none" else f32(random_tree(rng, positive=True))
        after = jax.jit(reg.consolidate)(state, params, imp)
        after = jax.jit(reg.accumulate)(after, params, params, params)
        assert jax.tree.structure(after) == jax.tree.structure(state), name
        for a, b in zip(jax.tree.leaves(after), jax.tree.leaves(state)):
            assert a.shape == b.shape and a.dtype == b.dtype, name


# ------------------------------------------------------------------------------------------------------------------
# Bad input
# ------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs,match", [
    (dict(name="ewk"), r"name must be one of \['none', 'l2', 'ewc', 'online_ewc', 'si', 'mas', 'ewc_budget'\].*ewk"),
    (dict(name="ewc", lam=-1.0), "lam must be.*>= 0.*-1.0"),
    (dict(name="ewc", lam=float("nan")), "lam must be"),
    (dict(name="online_ewc", gamma=1.5), r"gamma must be in \[0, 1\].*1.5"),
    (dict(name="online_ewc", gamma=-0.1), "gamma must be"),
    (dict(name="si", xi=0.0), "xi must be.*> 0.*0.0"),
    (dict(name="si", xi=-1.0), "xi must be"),
    (dict(name="ewc_budget", budget=-2.0), "budget must be"),
    (dict(name="ewc_budget", dual_lr=-0.1), "dual_lr must be"),
    (dict(name="ewc", num_tasks=0), "num_tasks must be"),
    (dict(name="ewc", lam=jnp.array([1.0, -1.0])), "lam must be"),
])
def test_bad_hyperparameters_raise(kwargs, match):
    name = kwargs.pop("name")
    with pytest.raises(ValueError, match=match):
        make_regularizer(name, **kwargs)


def test_bad_trees_raise():
    params = {"w": jnp.zeros((3, 2)), "b": jnp.zeros(2)}
    reg = make_regularizer("ewc")
    state = reg.init(params)
    with pytest.raises(ValueError, match="importance.*None"):
        reg.consolidate(state, params, None)
    with pytest.raises(ValueError, match=r"importance.*\['w'\].*\(3, 2\).*\(2, 3\)"):
        reg.consolidate(state, params, {"w": jnp.zeros((2, 3)), "b": jnp.zeros(2)})
    with pytest.raises(ValueError, match=r"params.*structure"):
        reg.penalty(state, {"w": jnp.zeros((3, 2))})
    si = make_regularizer("si")
    with pytest.raises(ValueError, match="grads"):
        si.accumulate(si.init(params), params, params, {"w": jnp.zeros((3, 2)), "b": jnp.zeros(3)})
    tx = reg_lib.penalty_gradient_transform(reg)
    with pytest.raises(ValueError, match="reg_state"):
        tx.update(params, tx.init(params), params)
    with pytest.raises(ValueError, match="params"):
        tx.update(params, tx.init(params), reg_state=state)
    with pytest.raises(ValueError, match="regularizer"):
        reg_lib.penalty_gradient_transform("ewc")
