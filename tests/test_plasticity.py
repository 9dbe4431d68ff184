"""Plasticity: the l2_init and shrink_perturb strategies against float64 references and through whole runs, and the
param_norm, update_norm, dormant and effective_rank monitors on hand-worked cases and in a run."""
import dataclasses
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from clloop_jax import plasticity as plast
from clloop_jax.data.loaders import load_digits_data
from clloop_jax.data.streams import split_stream
from clloop_jax.model import MLP
from clloop_jax.monitors import dormant_monitor, get_monitor
from clloop_jax.run.config import RunConfig
from clloop_jax.run.sequential import make_run
from clloop_jax.sources.supervised import SupervisedSource
from clloop_jax.strategies import get_strategy, l2_init, shrink_perturb
from clloop_jax.taskfree import make_taskfree_run

KEY = jax.random.key(0)
EPISODES = 3


@pytest.fixture(scope="module")
def source():
    x, y = load_digits_data()
    stream = split_stream(x, y, classes_per_task=5, seed=0, scenario="task")
    return SupervisedSource(MLP(output_dim=stream.num_classes, hidden=(8, 6)), stream, batch_size=16,
                            fisher_size=8, eval_size=50)


def run_of(source, strategy, monitors=()):
    return make_run(RunConfig(strategy=strategy, episodes_per_task=EPISODES, monitors=monitors), source)


@pytest.fixture(scope="module")
def fine_tuned(source):
    run = run_of(source, "none")
    return run(KEY, run.hparams(learning_rate=1e-2))


def tree(rng, scale=1.0):
    return {"dense": {"kernel": rng.normal(size=(3, 2)) * scale, "bias": rng.normal(size=(2,)) * scale},
            "gain": np.asarray(rng.normal() * scale)}


def f32(t):
    return jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), t)


def flat64(t):
    return np.concatenate([np.ravel(np.asarray(x, np.float64)) for x in jax.tree.leaves(t)])


def assert_trees_equal(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


# ----- l2_init -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("lam", [0.0, 0.37, 25.0])
def test_l2_init_penalty_and_gradient_match_a_float64_reference(lam):
    rng = np.random.default_rng(1)
    theta0, theta = f32(tree(rng)), f32(tree(rng, scale=3.0))
    strategy = l2_init(lam=lam)
    state = strategy.init(theta0, strategy.hparams)
    value, grad = jax.value_and_grad(lambda p: strategy.penalty(state, p, strategy.hparams))(theta)
    diff = flat64(theta) - flat64(theta0)
    assert float(value) == pytest.approx(0.5 * lam * np.sum(diff ** 2), rel=1e-5, abs=1e-6)
    np.testing.assert_allclose(flat64(grad), lam * diff, rtol=1e-5, atol=1e-6)
    assert float(strategy.penalty(state, theta0, strategy.hparams)) == 0.0
    assert strategy.consolidate is None  # nothing at a task's end can move the anchor


def test_l2_init_keeps_the_initial_parameters_as_its_anchor_through_a_run(source):
    run = run_of(source, "l2_init")
    hp = run.hparams(learning_rate=1e-2, lam=0.5)
    state, res = run(KEY, hp)
    start = run.init(KEY, hp)
    assert_trees_equal(state.strategy.anchor, start.params)       # two consolidations later, still theta0
    pen = np.asarray(res.traces["penalty"])
    assert pen[0, 0] == 0.0 and np.all(pen.ravel()[1:] > 0)       # 0 at theta0 only
    # The last penalty recorded is (lam/2)|theta - theta0|^2 at the parameters before the last update, so of the
    # size of the same quantity at the final parameters (one small Adam step away).
    final = 0.5 * 0.5 * np.sum((flat64(state.params) - flat64(start.params)) ** 2)
    assert pen[-1, -1] == pytest.approx(final, rel=0.5)


# ----- shrink_perturb ----------------------------------------------------------------------------------------------


def test_shrink_perturb_is_shrink_theta_plus_sigma_times_a_fresh_initialisation(source):
    k_params, k_boundary = jax.random.split(jax.random.key(3))
    params = source.init_params(k_params)
    params = jax.tree.map(lambda p: p + 0.25, params)              # biases away from their zero initialisation
    strategy = shrink_perturb(shrink=0.3, sigma=0.7)
    state, new = strategy.boundary((), params, source, k_boundary, strategy.hparams)
    fresh = source.init_params(k_boundary)                         # the model's own initialiser, the hook's key
    assert state == ()
    np.testing.assert_allclose(flat64(new), 0.3 * flat64(params) + 0.7 * flat64(fresh), rtol=1e-6, atol=1e-7)
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(new))
    same = shrink_perturb(shrink=1.0, sigma=0.0)
    _, unchanged = same.boundary((), params, source, k_boundary, same.hparams)
    assert_trees_equal(unchanged, params)


def test_shrink_perturb_acts_between_tasks_only(source, fine_tuned):
    """shrink=1, sigma=0 is fine-tuning bit for bit (the hook moves no other key stream); otherwise the first task
    and its scores are untouched (the hook runs at the second task's start) and the second task starts elsewhere."""
    run = run_of(source, "shrink_perturb")
    ref_state, ref = fine_tuned
    state, res = run(KEY, run.hparams(learning_rate=1e-2, shrink=1.0, sigma=0.0))
    assert_trees_equal((state.params, res.R, res.baseline, res.traces["loss"]),
                       (ref_state.params, ref.R, ref.baseline, ref.traces["loss"]))
    state, res = run(KEY, run.hparams(learning_rate=1e-2, shrink=0.5, sigma=0.1))
    assert_trees_equal((res.R[0], res.traces["loss"][0]), (ref.R[0], ref.traces["loss"][0]))
    assert not np.array_equal(np.asarray(res.traces["loss"][1]), np.asarray(ref.traces["loss"][1]))
    # Swept under vmap with the other hyperparameters broadcast: one program, each entry the single run's.
    sweep = run.hparams(learning_rate=1e-2, sigma=0.1).replace(shrink=jnp.array([0.5, 1.0]))
    _, swept = jax.vmap(run, in_axes=(None, sweep.axes("shrink")))(KEY, sweep)
    np.testing.assert_allclose(swept.traces["loss"][0], res.traces["loss"], rtol=1e-4, atol=1e-5)


def test_shrink_perturb_stepped_task_by_task_gives_the_whole_run(source):
    run = run_of(source, "shrink_perturb")
    hp = run.hparams(learning_rate=1e-2, shrink=0.5, sigma=0.1)
    whole_state, whole = run(KEY, hp)
    state, stepped = run.run_stepwise(KEY, hp)
    np.testing.assert_allclose(stepped.traces["loss"], whole.traces["loss"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(flat64(state.params), flat64(whole_state.params), rtol=1e-5, atol=1e-6)


def test_plasticity_strategies_are_registered_and_checked(source):
    assert get_strategy("l2_init", lam=0.2).hparams.lam == 0.2
    assert get_strategy("shrink_perturb", shrink=0.4).hparams == shrink_perturb(0.4).hparams
    with pytest.raises(ValueError, match="shrink"):
        get_strategy("shrink_perturb", shrink=1.5)
    with pytest.raises(ValueError, match="sigma"):
        get_strategy("shrink_perturb", sigma=-1.0)
    with pytest.raises(ValueError, match="lam"):
        get_strategy("l2_init", lam=-1.0)
    with pytest.raises(ValueError, match="task-free"):
        make_taskfree_run(RunConfig(strategy="shrink_perturb"), source)


# ----- monitors: hand-worked cases ---------------------------------------------------------------------------------


def test_parameter_and_update_norms():
    params = {"a": jnp.array([3.0, 0.0]), "b": jnp.array([[4.0]])}
    assert float(plast.global_norm(params)) == 5.0
    previous = {"a": jnp.array([1.0, 1.0]), "b": jnp.array([[1.0]])}
    assert float(plast.update_norm(params, previous)) == pytest.approx(math.sqrt(4 + 1 + 9))


def test_dormant_fraction_on_a_hand_worked_activation_matrix():
    # Layer 1: mean |h| per unit (0, 0.05, 1, 2.95), layer mean 1, so scores (0, 0.05, 1, 2.95): one unit 0-dormant,
    # two 0.1-dormant. Layer 2 never fires: both units dormant. Six units in all.
    h1 = jnp.array([[0.0, 0.1, 1.0, 2.9], [0.0, 0.0, 1.0, 3.0]])
    h2 = jnp.zeros((2, 2))
    assert float(plast.dormant_fraction((h1, h2), 0.0)) == pytest.approx(3 / 6)
    assert float(plast.dormant_fraction((h1, h2), 0.1)) == pytest.approx(4 / 6)
    assert float(plast.dormant_fraction((h1,), 0.0)) == pytest.approx(1 / 4)
    assert float(plast.dormant_fraction((-h1,), 0.1)) == pytest.approx(2 / 4)   # |h|: a sign never matters


def with_singular_values(s, n, d, seed=0):
    rng = np.random.default_rng(seed)
    u = np.linalg.qr(rng.normal(size=(n, n)))[0][:, : len(s)]
    v = np.linalg.qr(rng.normal(size=(d, d)))[0][:, : len(s)]
    return (u * np.asarray(s, float)) @ v.T


def erank64(s):
    p = np.asarray(s, float) / np.sum(s)
    p = p[p > 0]
    return float(np.exp(-np.sum(p * np.log(p))))


@pytest.mark.parametrize("s,expected", [((3.0, 1.0), erank64((3.0, 1.0))), ((2.0, 2.0, 2.0, 2.0), 4.0),
                                        ((5.0,), 1.0), ((4.0, 2.0, 1.0, 1.0), erank64((4.0, 2.0, 1.0, 1.0)))])
@pytest.mark.parametrize("n,d", [(12, 4), (4, 9)])
def test_effective_rank_of_matrices_with_known_singular_values(s, expected, n, d):
    phi = with_singular_values(s, n, d)
    assert float(plast.effective_rank(jnp.asarray(phi, jnp.float32))) == pytest.approx(expected, rel=1e-4)
    top = np.sort(np.asarray(plast.singular_values(jnp.asarray(phi, jnp.float32))))[::-1][: len(s)]
    np.testing.assert_allclose(top, sorted(s, reverse=True), rtol=1e-4)


def test_effective_rank_of_zero_and_under_vmap():
    assert float(plast.effective_rank(jnp.zeros((5, 3)))) == 0.0
    batch = np.stack([with_singular_values(s, 10, 4, seed=i)
                      for i, s in enumerate([(1.0, 1.0, 1.0, 1.0), (3.0, 1.0, 0.0, 0.0), (2.0, 0.0, 0.0, 0.0)])])
    got = jax.jit(jax.vmap(plast.effective_rank))(jnp.asarray(batch, jnp.float32))
    np.testing.assert_allclose(got, [4.0, erank64((3.0, 1.0)), 1.0], rtol=1e-4)


def test_mlp_features_are_the_hidden_activations(source):
    params = source.init_params(jax.random.key(5))
    x = jnp.asarray(np.random.default_rng(0).normal(size=(7, 64)), jnp.float32)
    h1, h2 = plast.mlp_features(source.model, params, x)
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), params["params"])
    r1 = np.maximum(np.asarray(x, np.float64) @ p["hidden_0"]["kernel"] + p["hidden_0"]["bias"], 0.0)
    r2 = np.maximum(r1 @ p["hidden_1"]["kernel"] + p["hidden_1"]["bias"], 0.0)
    np.testing.assert_allclose(h1, r1, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(h2, r2, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="MLP"):
        plast.mlp_features(nn.Dense(3), params, x)


# ----- monitors in a run -------------------------------------------------------------------------------------------

PLASTIC = ("param_norm", "update_norm", "dormant", "effective_rank", "feature_norm")


@pytest.fixture(scope="module")
def monitored(source):
    run = run_of(source, "none", monitors=("parameter",) + PLASTIC)
    hp = run.hparams(learning_rate=1e-2)
    return run, hp, run(KEY, hp)


def test_plasticity_monitors_record_their_definitions_in_a_run(monitored, fine_tuned):
    run, hp, (state, res) = monitored
    tr = {k: np.asarray(v) for k, v in res.traces.items()}
    assert_trees_equal(state.params, fine_tuned[0].params)           # monitors only watch
    # The first update of each task moves the parameters from where the task began: update_norm = param_l2 there.
    np.testing.assert_allclose(tr["update_norm"][:, 0], tr["param_l2"][:, 0], rtol=1e-5)
    assert np.all(tr["update_norm"] > 0)
    assert tr["param_norm"][-1, -1] == pytest.approx(float(plast.global_norm(state.params)), rel=1e-6)
    # Measured once per task, at its end, on the fixed probe batch kept in the monitor's state.
    for name in ("dormant_0", "dormant_0.1", "effective_rank", "feature_norm"):
        assert np.all(np.isnan(tr[name][:, :-1])) and np.all(np.isfinite(tr[name][:, -1]))
    probe = state.monitors[3]                                   # the first fisher_size samples: (x, mask)
    assert_trees_equal(probe, run.init(KEY, hp).monitors[3]) and probe[0].shape == (8, 64)
    features = plast.mlp_features(run.source.model, state.params, probe[0])
    for tau in plast.DORMANT_TAUS:
        assert tr[f"dormant_{tau:g}"][-1, -1] == pytest.approx(float(plast.dormant_fraction(features, tau)))
    assert np.all(tr["dormant_0"][:, -1] <= tr["dormant_0.1"][:, -1])
    assert tr["effective_rank"][-1, -1] == pytest.approx(float(plast.effective_rank(features[-1])), rel=1e-4)
    last = np.asarray(features[-1], np.float64)
    assert tr["feature_norm"][-1, -1] == pytest.approx(np.mean(np.linalg.norm(last, axis=1)), rel=1e-5)
    assert np.all((tr["effective_rank"][:, -1] >= 1.0) & (tr["effective_rank"][:, -1] <= 6.0 + 1e-4))


def test_feature_norm_is_the_mean_row_norm_by_hand():
    phi = jnp.array([[3.0, 4.0], [0.0, 0.0], [1.0, 0.0], [0.0, 2.0]])
    assert float(plast.feature_norm(phi)) == pytest.approx((5.0 + 0.0 + 1.0 + 2.0) / 4)


def test_monitors_not_named_are_not_in_the_program(source):
    def program(monitors):
        run = run_of(source, "none", monitors=monitors)
        hp = run.hparams()
        keys = set(jax.eval_shape(run, KEY, hp)[1].traces)
        text = jax.jit(lambda k, h: run.run_on(source.tasks, k, h)).lower(KEY, hp).as_text()
        return keys, text

    lean_keys, lean = program(())
    assert lean_keys == {"loss", "penalty", "finite", "score"}
    assert "syevd" not in lean
    keys, text = program(("effective_rank",))
    assert keys == lean_keys | {"effective_rank"} and "syevd" in text
    keys, _ = program(("param_norm", "update_norm", "dormant"))
    assert keys == lean_keys | {"param_norm", "update_norm", "dormant_0", "dormant_0.1"}


def test_feature_monitors_refuse_a_model_or_source_without_features(source):
    dense = dataclasses.replace(source, model=nn.Dense(source.stream.num_classes))
    run = run_of(dense, "none", monitors=("dormant",))
    with pytest.raises(ValueError, match="MLP"):
        jax.eval_shape(run, KEY, run.hparams())

    class Featureless:   # a source that does not say what its hidden layers are
        def __init__(self, inner):
            self.inner = inner

        def __getattr__(self, name):
            if name == "features":
                raise AttributeError(name)
            return getattr(self.inner, name)

    run = run_of(Featureless(source), "none", monitors=("effective_rank",))
    with pytest.raises(ValueError, match=r"features\(params, inputs\) capability\), and a Featureless has none"):
        jax.eval_shape(run, KEY, run.hparams())
    with pytest.raises(ValueError, match="num_probes"):
        dormant_monitor(0)
    assert get_monitor("effective_rank") == get_monitor("effective_rank")   # equal runs share their programs


# ----- the same monitors in the closed loop: the recurrent agent's hidden layers ---------------------------------


def test_recurrent_features_are_the_fusion_layer_and_the_state_the_head_reads():
    from conftest import tiny_world
    model, env = tiny_world()
    params = model.init_params(jax.random.key(3))
    rng = np.random.default_rng(0)
    carry = jnp.asarray(rng.normal(size=(5, model.hidden_dim)), jnp.float32)
    obs = jnp.asarray(rng.normal(size=(5, 2, 8)), jnp.float32)
    fb = jnp.asarray(rng.normal(size=(5, env.feedback_dim)), jnp.float32)
    fused, new_carry = model.apply(params, carry, obs, fb, method=model.features)
    stepped, out = model.apply(params, carry, obs, fb)
    np.testing.assert_array_equal(new_carry, stepped)                       # the state the head reads ...
    head = params["params"]["head"]
    np.testing.assert_allclose(out, new_carry @ head["kernel"] + head["bias"], rtol=1e-5, atol=1e-6)
    _, seen = model.apply(params, carry, obs, fb, capture_intermediates=lambda m, _: m.name == "fusion",
                          mutable=["intermediates"])
    np.testing.assert_allclose(fused, nn.gelu(seen["intermediates"]["fusion"]["__call__"][0]), rtol=1e-6)   # ... and
    assert fused.shape == new_carry.shape == (5, model.hidden_dim)          # the fusion layer after its GELU


def test_the_closed_loop_records_the_plasticity_of_its_recurrent_agent():
    from conftest import tiny_world

    from clloop_jax.sources.world import EnvSource
    model, env = tiny_world()
    source = EnvSource(model, env, num_tasks=2, num_envs=3, eval_envs=2)
    run = make_run(RunConfig(strategy="none", episodes_per_task=2, monitors=("dormant", "effective_rank",
                                                                             "feature_norm")), source)
    hp = run.hparams(learning_rate=1e-2)
    state, res = run(KEY, hp)
    tr = {k: np.asarray(v) for k, v in res.traces.items()}
    probe = state.monitors[0]                                                 # 3 whole episodes: (obs, feedback)
    assert probe[0].shape[:2] == (3, env.episode_length)
    fused, carries = source.features(state.params, probe)
    steps = 3 * env.episode_length
    assert fused.shape == carries.shape == (steps, model.hidden_dim)         # every step of every probe episode
    final, _ = model.apply(state.params, model.initial_carry(3), jnp.swapaxes(probe[0], 0, 1),
                           jnp.swapaxes(probe[1], 0, 1), method=model.sequence)
    np.testing.assert_allclose(carries.reshape(3, env.episode_length, -1)[:, -1], final, rtol=1e-5, atol=1e-6)
    for tau in plast.DORMANT_TAUS:
        assert tr[f"dormant_{tau:g}"][-1, -1] == pytest.approx(float(plast.dormant_fraction((fused, carries), tau)))
    assert tr["effective_rank"][-1, -1] == pytest.approx(float(plast.effective_rank(carries)), rel=1e-4)
    assert tr["feature_norm"][-1, -1] == pytest.approx(float(np.mean(np.linalg.norm(carries, axis=1))), rel=1e-5)
    assert 1.0 <= tr["effective_rank"][-1, -1] <= model.hidden_dim


def test_gymnax_records_the_plasticity_of_its_policy():
    from clloop_jax.sources.gymnax import GymnaxSource
    source = GymnaxSource("CartPole-v1", ({}, {"length": 1.0}), hidden_dim=8, num_envs=2, num_steps=8, eval_envs=2,
                          eval_steps=10, fisher_size=8)
    run = make_run(RunConfig(strategy="none", episodes_per_task=2, monitors=("effective_rank", "dormant")), source)
    hp = run.hparams(learning_rate=1e-2)
    state, res = run(KEY, hp)
    probe = state.monitors[0]                                                 # 8 visited states (carry, obs, fb)
    assert probe[0].shape == (8, 8) and probe[1].shape == (8, 4)
    fused, carry = source.features(state.params, probe)
    _, pol, _ = source._apply(state.params, *probe)
    np.testing.assert_allclose(np.asarray(carry) @ np.asarray(state.params["model"]["params"]["head"]["kernel"])
                               [:, :2] + np.asarray(state.params["model"]["params"]["head"]["bias"])[:2], pol,
                               rtol=1e-5, atol=1e-6)                          # the state the policy reads
    tr = {k: np.asarray(v) for k, v in res.traces.items()}
    assert tr["effective_rank"][-1, -1] == pytest.approx(float(plast.effective_rank(carry)), rel=1e-4)
    assert tr["dormant_0.1"][-1, -1] == pytest.approx(float(plast.dormant_fraction((fused, carry), 0.1)))
