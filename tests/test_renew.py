"""The renew hook and the strategies that renew hidden units: continual_backprop and redo against NumPy float64
references of one step on a tiny MLP with hand-set weights, the optimizer's moments zeroed at exactly the renewed
weights, runs equal to fine-tuning bit for bit when nothing is renewed, the chain, task-free runs and the errors."""
import dataclasses
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from clloop_jax.data.streams import permuted_stream, split_stream
from clloop_jax.model import MLP
from clloop_jax.run.config import RunConfig
from clloop_jax.run.sequential import make_run
from clloop_jax.sources.supervised import SupervisedSource
from clloop_jax.strategies import (ContinualBackpropState, ReDoState, Strategy, chain, continual_backprop,
                                   get_strategy, redo)
from clloop_jax import taskfree as tf
from clloop_jax.tree import task_at

KEY = jax.random.key(0)
EPISODES = 4


@pytest.fixture(scope="module")
def source(digits):
    x, y = digits
    stream = split_stream(x, y, classes_per_task=5, seed=0, scenario="task")
    return SupervisedSource(MLP(output_dim=stream.num_classes, hidden=(8, 6)), stream, batch_size=16,
                            fisher_size=8, eval_size=50)


def run_of(source, strategy):
    return make_run(RunConfig(strategy=strategy, episodes_per_task=EPISODES, monitors=()), source)


@pytest.fixture(scope="module")
def fine_tuned(source):
    run = run_of(source, "none")
    return run(KEY, run.hparams(learning_rate=1e-2))


def assert_trees_equal(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


# ----- one step against a float64 reference, on hand-set weights ---------------------------------------------------

class TinySource(NamedTuple):
    """What the renewing hooks read of a source: its MLP and its initialiser (inputs of 3 features)."""

    model: MLP

    def init_params(self, key):
        return self.model.init(key, jnp.zeros((3,)))


TINY = TinySource(MLP(output_dim=2, hidden=(4, 3)))
X = np.array([[1.0, 0.5, 2.0], [0.0, 1.0, 1.0], [2.0, 0.0, 0.5]])


def hand_params():
    """Hidden layer 0 (3 -> 4): unit 0 never fires on X (negative weights), unit 2 barely; layer 1 (4 -> 3); head."""
    k0 = np.array([[1.0, 0.2, 0.005, 0.5], [0.5, -0.3, 0.005, 1.0], [0.2, 0.4, 0.01, -0.2]]) * np.array([-1, 1, 1, 1])
    k1 = np.array([[0.3, -0.2, 0.6], [1.0, 0.4, -0.5], [0.2, 0.1, 0.3], [-0.4, 0.9, 0.2]])
    head = np.array([[0.5, -1.0], [0.05, 0.02], [1.5, 0.3]])
    p = {"hidden_0": {"kernel": k0, "bias": np.array([0.0, 0.1, 0.0, -0.1])},
         "hidden_1": {"kernel": k1, "bias": np.array([0.05, 0.0, 0.2])},
         "head": {"kernel": head, "bias": np.array([0.1, -0.1])}}
    return jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), {"params": p})


def np64(tree):
    return jax.tree.map(lambda a: np.asarray(a, np.float64), tree)


def features64(p, x):
    h0 = np.maximum(x @ p["hidden_0"]["kernel"] + p["hidden_0"]["bias"], 0.0)
    h1 = np.maximum(h0 @ p["hidden_1"]["kernel"] + p["hidden_1"]["bias"], 0.0)
    return [h0, h1]


def renewed64(p, fresh, chosen):
    """The reference of a renewal: incoming columns and biases from ``fresh``, outgoing rows 0, in layer order."""
    p = {k: dict(v) for k, v in np64(p)["params"].items()}
    fresh = np64(fresh)["params"]
    mask = {k: {n: np.zeros(a.shape, bool) for n, a in v.items()} for k, v in p.items()}
    for (name, nxt), c in zip([("hidden_0", "hidden_1"), ("hidden_1", "head")], chosen):
        p[name]["kernel"] = p[name]["kernel"].copy()
        p[name]["kernel"][:, c] = fresh[name]["kernel"][:, c]
        p[name]["bias"] = np.where(c, fresh[name]["bias"], p[name]["bias"])
        p[nxt]["kernel"] = p[nxt]["kernel"].copy()
        p[nxt]["kernel"][c, :] = 0.0
        mask[name]["kernel"][:, c] = True
        mask[name]["bias"][c] = True
        mask[nxt]["kernel"][c, :] = True
    return {"params": p}, {"params": mask}


def assert_renewal(got_params, got_reset, ref_params, ref_reset):
    for g, r in zip(jax.tree.leaves(got_reset), jax.tree.leaves(ref_reset), strict=True):
        np.testing.assert_array_equal(np.asarray(g), r)
    for g, r in zip(jax.tree.leaves(got_params), jax.tree.leaves(ref_params), strict=True):
        np.testing.assert_allclose(np.asarray(g, np.float64), r, rtol=1e-6, atol=1e-7)


def test_continual_backprop_renews_the_mature_units_of_smallest_utility_once_a_whole_one_is_due():
    params, key = hand_params(), jax.random.key(4)
    strategy = continual_backprop(replacement_rate=0.25, decay=0.8, maturity=3)
    hp = strategy.hparams
    # Layer 0: unit 3 is immature (age 2 -> 3, not > 3) and has the smallest utility; 3 eligible units add 0.75 to
    # the pending 0.5: one renewal. Layer 1: 3 eligible units add 0.75 to 0.1: none due.
    utility = (jnp.array([0.30, 0.40, 0.20, 0.01]), jnp.array([0.5, 0.1, 0.2]))
    age = (jnp.array([10, 50, 4, 2], jnp.int32), jnp.array([9, 9, 9], jnp.int32))
    state = ContinualBackpropState(utility, age, (jnp.float32(0.5), jnp.float32(0.1)), jnp.int32(7))
    samples = ((jnp.asarray(X, jnp.float32), jnp.ones((3, 2), bool)), jnp.zeros((3,), jnp.int32))
    new_state, new_params, reset = strategy.renew(state, params, samples, TINY, key, hp)

    p = np64(params)["params"]
    h = features64(p, X)
    chosen, ref_u, ref_a, ref_pending = [], [], [], []
    for layer, (hl, w_out) in enumerate(zip(h, [p["hidden_1"]["kernel"], p["head"]["kernel"]])):
        u = 0.8 * np.asarray(utility[layer], np.float64) + 0.2 * np.abs(hl).mean(0) * np.abs(w_out).sum(1)
        a = np.asarray(age[layer]) + 1
        eligible = a > 3
        pending = float(state.pending[layer]) + 0.25 * eligible.sum()
        n = int(np.floor(pending))
        corrected = np.where(eligible, u / (1 - 0.8 ** a), np.inf)
        c = np.zeros(len(u), bool)
        c[np.argsort(corrected, kind="stable")[:n]] = True
        chosen.append(c)
        ref_u.append(np.where(c, 0.0, u))
        ref_a.append(np.where(c, 0, a))
        ref_pending.append(pending - n)
    assert chosen[0].tolist() == [False, False, True, False] and not chosen[1].any()   # the hand-worked picks
    ref_params, ref_reset = renewed64(params, TINY.init_params(key), chosen)
    assert_renewal(new_params, reset, ref_params, ref_reset)
    for layer in range(2):
        np.testing.assert_allclose(np.asarray(new_state.utility[layer], np.float64), ref_u[layer], rtol=1e-6)
        np.testing.assert_array_equal(np.asarray(new_state.age[layer]), ref_a[layer])
        assert float(new_state.pending[layer]) == pytest.approx(ref_pending[layer], rel=1e-6)
    assert int(new_state.renewed) == 8
    # The renewed unit's outgoing weights are 0 and its incoming ones the fresh draw's; the others are untouched.
    assert np.all(np.asarray(new_params["params"]["hidden_1"]["kernel"])[2] == 0.0)
    np.testing.assert_array_equal(new_params["params"]["head"]["kernel"], params["params"]["head"]["kernel"])


def test_redo_renews_exactly_the_tau_dormant_units_every_so_many_updates():
    params, key = hand_params(), jax.random.key(5)
    strategy = redo(tau=0.1, every=2)
    samples = ((jnp.asarray(X, jnp.float32), jnp.ones((3, 2), bool)), jnp.zeros((3,), jnp.int32))
    state = strategy.init(params, strategy.hparams)
    state, same, reset = strategy.renew(state, params, samples, TINY, key, strategy.hparams)   # update 1 of 2
    assert_trees_equal(same, params)
    assert not any(bool(np.any(r)) for r in jax.tree.leaves(reset)) and int(state.updates) == 1
    state, new_params, reset = strategy.renew(state, params, samples, TINY, key, strategy.hparams)  # update 2

    chosen = []
    for hl in features64(np64(params)["params"], X):
        mean_abs = np.abs(hl).mean(0)
        chosen.append(mean_abs / mean_abs.mean() <= 0.1)
    assert chosen[0].tolist() == [True, False, True, False]   # the unit that never fires, the one that barely does
    ref_params, ref_reset = renewed64(params, TINY.init_params(key), chosen)
    assert_renewal(new_params, reset, ref_params, ref_reset)
    assert state == ReDoState(2, int(sum(c.sum() for c in chosen)))
    _, _, none = strategy.renew(state, params, samples, TINY, key, strategy.hparams._replace(tau=-1.0))
    assert not any(bool(np.any(r)) for r in jax.tree.leaves(none))


# ----- in the update step: the optimizer's moments -----------------------------------------------------------------


@pytest.mark.parametrize("strategy", [continual_backprop(replacement_rate=0.5, maturity=0), redo(tau=0.5, every=1)],
                         ids=["continual_backprop", "redo"])
def test_the_update_zeroes_the_moments_of_exactly_the_renewed_weights(source, strategy):
    run, plain = run_of(source, strategy), run_of(source, "none")
    hp, hp_plain = run.hparams(learning_rate=1e-2), plain.hparams(learning_rate=1e-2)
    state = run.init(KEY, hp)
    batch = source.batch(jax.random.key(1), state.params, task_at(source.tasks, 0), hp.source)
    key = jax.random.key(2)
    for _ in range(2):   # a second update, so that the moments are not all fresh
        state_plain = state._replace(strategy=())
        after_plain, _ = plain.update(state_plain, batch, key, hp_plain)
        after, trace = run.update(state, batch, key, hp)
        # What the hook does to the plain step's parameters, with its own key stream:
        _, params, reset = strategy.renew(state.strategy, after_plain.params, source.samples(batch), source,
                                          jax.random.fold_in(key, 3), hp.strategy)
        assert sum(int(np.sum(r)) for r in jax.tree.leaves(reset)) > 0
        assert_trees_equal(after.params, params)
        get, zeroed = optax.tree_utils.tree_get, 0
        assert int(get(after.opt_state, "count")) == int(get(after_plain.opt_state, "count")) > 0
        for moment in ("mu", "nu"):   # Adam's first and second moments
            moments, plain_moments = get(after.opt_state, moment), get(after_plain.opt_state, moment)
            for m, mp, r in zip(jax.tree.leaves(moments), jax.tree.leaves(plain_moments), jax.tree.leaves(reset),
                                strict=True):
                m, mp, r = np.asarray(m), np.asarray(mp), np.asarray(r)
                np.testing.assert_array_equal(m[r], 0.0)
                np.testing.assert_array_equal(m[~r], mp[~r])
                zeroed += int(np.sum(mp[r] != 0.0))
        assert zeroed > 0                                                    # moments that were not 0 before
        state, key = after, jax.random.fold_in(key, 1)


# ----- whole runs --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name,values", [("continual_backprop", {"replacement_rate": 0.0, "maturity": 0.0}),
                                         ("redo", {"tau": -1.0, "every": 1})])
def test_a_renewal_that_renews_nothing_is_fine_tuning_bitwise(source, fine_tuned, name, values):
    run = run_of(source, name)
    state, res = run(KEY, run.hparams(learning_rate=1e-2, **values))
    ref_state, ref = fine_tuned
    assert_trees_equal((state.params, res.R, res.baseline, res.traces["loss"], res.traces["score"]),
                       (ref_state.params, ref.R, ref.baseline, ref.traces["loss"], ref.traces["score"]))
    assert np.all(np.asarray(res.traces["renewed_units"]) == 0)


def test_the_hook_is_in_the_program_only_when_a_strategy_has_it(source):
    def text(strategy):
        run = run_of(source, strategy)
        hp = run.hparams()
        return jax.jit(lambda k, h: run.run_on(source.tasks, k, h)).lower(KEY, hp).as_text()

    sorts = {name: text(name).count("stablehlo.sort") for name in ("none", "ewc", "continual_backprop")}
    assert sorts["none"] == sorts["ewc"] < sorts["continual_backprop"]   # the ranking of the units


@pytest.mark.slow
def test_continual_backprop_chained_with_ewc_sweeps_its_rate_over_seeds_in_one_compilation(source):
    strategy = chain(continual_backprop(maturity=2), "ewc")
    run = run_of(source, strategy)
    hp = run.hparams(learning_rate=1e-2, lam=100.0).replace(replacement_rate=jnp.array([0.0, 0.3]))
    keys = jax.random.split(KEY, 2)
    program = jax.jit(jax.vmap(jax.vmap(run, in_axes=(0, None)), in_axes=(None, hp.axes("replacement_rate"))))
    state, res = program(keys, hp)
    assert program._cache_size() == 1
    renewed = np.asarray(res.traces["renewed_units"])
    assert np.all(renewed[0] == 0) and np.all(renewed[1][:, :, -1] > 0)
    penalty = np.asarray(res.traces["penalty"])
    assert np.all(penalty[:, :, 1] > 0)                                # EWC acts on the second task in both
    # Rate 0 is EWC alone; rate 0.3 changes the results; and EWC changes what continual backprop alone gives.
    ewc_run = run_of(source, "ewc")
    _, ewc_alone = jax.vmap(ewc_run, in_axes=(0, None))(keys, ewc_run.hparams(learning_rate=1e-2, lam=100.0))
    np.testing.assert_allclose(res.traces["loss"][0], ewc_alone.traces["loss"], rtol=1e-5, atol=1e-6)
    assert not np.allclose(res.traces["loss"][1], ewc_alone.traces["loss"])
    cbp_run = run_of(source, continual_backprop(maturity=2))
    _, cbp_alone = jax.vmap(cbp_run, in_axes=(0, None))(keys, cbp_run.hparams(learning_rate=1e-2,
                                                                             replacement_rate=0.3))
    assert not np.allclose(res.traces["loss"][1][:, 1], cbp_alone.traces["loss"][:, 1])


def test_a_chain_renews_part_after_part_and_a_chain_of_one_is_the_strategy_bitwise(source):
    params, key = hand_params(), jax.random.key(6)
    cbp, dormant = continual_backprop(replacement_rate=0.5, maturity=0), redo(tau=0.1, every=1)
    both = chain(cbp, dormant)
    assert both.renew is not None and both.check_source is not None
    samples = ((jnp.asarray(X, jnp.float32), jnp.ones((3, 2), bool)), jnp.zeros((3,), jnp.int32))
    states = both.init(params, both.hparams)
    (s_cbp, s_redo), got, reset = both.renew(states, params, samples, TINY, key, both.hparams)
    s1, p1, r1 = cbp.renew(states[0], params, samples, TINY, key, cbp.hparams)
    s2, p2, r2 = dormant.renew(states[1], p1, samples, TINY, jax.random.fold_in(key, 1), dormant.hparams)
    assert_trees_equal((s_cbp, s_redo, got), (s1, s2, p2))
    assert_trees_equal(reset, jax.tree.map(np.logical_or, r1, r2))
    assert int(s1.renewed) > 0 and int(s2.renewed) > 0
    alone, chained = run_of(source, cbp), run_of(source, chain(cbp))
    hp_alone, hp_chained = alone.hparams(learning_rate=1e-2), chained.hparams(learning_rate=1e-2)
    (state_a, res_a), (state_c, res_c) = alone(KEY, hp_alone), chained(KEY, hp_chained)
    assert_trees_equal((state_a.params, res_a.R, res_a.traces), (state_c.params, res_c.R, res_c.traces))


def test_a_task_free_run_renews_units_through_the_same_update(digits):
    x, y = digits
    stream = permuted_stream(x[:300], y[:300], 2, seed=0, scenario="domain")
    source = SupervisedSource(MLP(output_dim=stream.num_classes, hidden=(8,)), stream, batch_size=16, eval_size=32)
    run = tf.make_taskfree_run(RunConfig(strategy="redo", monitors=()), source, boundaries="none")
    hp = run.hparams(learning_rate=1e-2, tau=0.5, every=3)
    state, res = run(KEY, hp, tf.abrupt_schedule([6, 6]))
    renewed = np.asarray(res.traces["renewed_units"])
    assert int(state.strategy.updates) == 12 and renewed[-1] == int(state.strategy.renewed) > 0
    steps = np.flatnonzero(np.diff(np.concatenate([[0], renewed])))
    assert set((steps + 1) % 3) == {0}                                  # renewals only at every third update


# ----- registry and errors -----------------------------------------------------------------------------------------


def test_registered_validated_and_refused_on_a_model_that_is_not_an_mlp(source):
    assert get_strategy("continual_backprop", decay=0.9).hparams.decay == 0.9
    assert get_strategy("redo", every=10).hparams == redo(every=10).hparams
    assert continual_backprop() == continual_backprop(replacement_rate=0.1) and redo() == redo(tau=0.3)
    for call, name in [(lambda: continual_backprop(replacement_rate=1.5), "replacement_rate"),
                       (lambda: continual_backprop(decay=1.0), "decay"),
                       (lambda: continual_backprop(maturity=-1), "maturity"),
                       (lambda: redo(every=0), "every"), (lambda: redo(every=2.5), "every"),
                       (lambda: redo(tau=float("nan")), "tau")]:
        with pytest.raises(ValueError, match=name):
            call()
    with pytest.raises(TypeError, match="renew"):
        Strategy("mine", renew=3)
    with pytest.raises(TypeError, match="check_source"):
        Strategy("mine", check_source="mlp")
    for name in ("continual_backprop", "redo", "continual_backprop+ewc"):
        with pytest.raises(ValueError, match=r"strategy '(continual_backprop|redo)'.*MLP.*Dense"):
            run_of(dataclasses.replace(source, model=nn.Dense(source.stream.num_classes)), name)
    linear = dataclasses.replace(source, model=MLP(output_dim=source.stream.num_classes, hidden=()))
    with pytest.raises(ValueError, match="hidden layer"):
        run_of(linear, "redo")
