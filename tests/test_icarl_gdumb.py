"""iCaRL and GDumb through the strategies' ``evaluate`` hook: the nearest-mean classifier, the exemplar sets and the
distillation loss against float64 references worked in NumPy, GDumb's memory against a hand-worked stream and its
score against a model trained from scratch by hand, both through ``make_run`` under ``jax.vmap``, the hook's
composition and errors, and a small class-incremental stream where both beat fine-tuning."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from clloop_jax.data.streams import split_stream
from clloop_jax.model import MLP
from clloop_jax.plasticity import mlp_features
from clloop_jax.run.config import RunConfig
from clloop_jax.run.programs import evaluate_source
from clloop_jax.run.sequential import Run, make_run
from clloop_jax.sources.supervised import SupervisedSource
from clloop_jax.strategies import chain, ewc, gdumb, get_strategy, icarl, registered, replay
from clloop_jax.strategies.memories import balanced_init
from clloop_jax.strategies.classifiers import (gdumb_train, icarl_loss, icarl_reduce, nearest_mean_logits,
                                               normalized_features)
from conftest import digits_source

EPISODES = 6


@pytest.fixture(scope="module")
def source(digits):
    """Digits, five class-incremental tasks of two classes, a tiny MLP."""
    return digits_source(digits, 2, "class", fisher_size=32, eval_size=40)


def normalize64(f):
    f = np.asarray(f, np.float64)
    n = np.linalg.norm(f, axis=1, keepdims=True)
    return f / np.where(n > 0, n, 1.0)


def herding64(phi, m):
    """iCaRL's herding in float64 (Rebuffi et al. 2017, Algorithm 4) over normalised rows ``phi``."""
    mu, total, picked = phi.mean(axis=0), np.zeros(phi.shape[1]), []
    for k in range(1, m + 1):
        d = np.sum((mu - (phi + total) / k) ** 2, axis=1)
        d[picked] = np.inf
        i = int(np.argmin(d))
        picked.append(i)
        total = total + phi[i]
    return picked


def identity_params(d):
    """An MLP ``D -> D -> C`` whose hidden layer is the identity: its features are ``relu(x)``."""
    return {"params": {"hidden_0": {"kernel": jnp.eye(d), "bias": jnp.zeros(d)},
                       "head": {"kernel": jnp.zeros((d, 4)), "bias": jnp.zeros(4)}}}


# ----------------------------------------------------------------------------------------------------------------
# iCaRL
# ----------------------------------------------------------------------------------------------------------------


def test_features_are_the_mlps_last_hidden_layer_normalised(source):
    params = source.init_params(jax.random.key(0))
    x = source.stream.x[0, :5]
    want = normalize64(mlp_features(source.model, params, x)[-1])
    np.testing.assert_allclose(normalized_features(params, x), want, atol=1e-6)


def test_nearest_mean_of_exemplars_by_hand():
    """Hand-made normalised features and class means; the class each test point gets is the float64 argmin of the
    distance over the usable classes (class 3 has no exemplar and is never chosen, even where it is nearest)."""
    rng = np.random.default_rng(0)
    phi = normalize64(rng.normal(size=(12, 3)))
    means = normalize64(rng.normal(size=(4, 3)))
    means[3] = phi[0]                                   # nearest to point 0, but unusable
    usable = np.array([True, True, True, False])
    got = np.argmax(nearest_mean_logits(jnp.asarray(phi, jnp.float32), jnp.asarray(means, jnp.float32),
                                        jnp.asarray(usable)), axis=1)
    d = ((phi[:, None, :] - means[None]) ** 2).sum(-1)
    d[:, ~usable] = np.inf
    np.testing.assert_array_equal(got, np.argmin(d, axis=1))
    assert got[0] != 3


def consolidate(strategy, state, params, x, y, C=4):
    mask = np.zeros((len(y), C), bool)
    return strategy.consolidate(state, params, strategy.hparams,
                                data=((jnp.asarray(x), jnp.asarray(mask)), jnp.asarray(y, jnp.int32)))


def icarl_state(strategy, params, d=3, n=8, C=4):
    stream = split_stream(np.zeros((40, d), np.float32), np.repeat(np.arange(C), 10), classes_per_task=2, seed=0,
                          scenario="class")
    src = SupervisedSource(MLP(output_dim=C, hidden=(d,)), stream, batch_size=2, fisher_size=n)
    example = ((jax.ShapeDtypeStruct((d,), jnp.float32), jax.ShapeDtypeStruct((C,), jnp.bool_)),
               jax.ShapeDtypeStruct((), jnp.int32))
    return strategy.init(params, strategy.hparams, example, src)


def test_icarl_exemplars_herding_reduction_and_class_means():
    """Capacity 4: after task 0 (classes 0, 1; four candidates each) each class keeps m = 2 exemplars, the first two
    of its float64 herding order; after task 1 (classes 2, 3) m = 1: classes 0 and 1 keep only their first, and the
    class means are those of the kept exemplars' normalised features."""
    rng = np.random.default_rng(1)
    params = identity_params(3)
    strategy = icarl(capacity=4)
    state = icarl_state(strategy, params)
    x0 = np.abs(rng.normal(size=(8, 3))).astype(np.float32)
    y0 = np.array([0, 1, 0, 1, 0, 1, 0, 1])
    state = jax.jit(lambda s: consolidate(strategy, s, params, x0, y0))(state)
    order = {c: np.flatnonzero(y0 == c)[herding64(normalize64(x0[y0 == c]), 4)] for c in (0, 1)}
    np.testing.assert_array_equal(state.count, [2, 2, 0, 0])
    for c in (0, 1):
        np.testing.assert_array_equal(state.exemplars[c, :2], x0[order[c][:2]])
        np.testing.assert_allclose(state.means[c], normalize64(normalize64(x0[order[c][:2]]).mean(0)[None])[0],
                                   atol=1e-6)
    x1 = np.abs(rng.normal(size=(8, 3))).astype(np.float32)
    y1 = np.array([2, 3, 3, 2, 2, 3, 2, 3])
    state = jax.jit(lambda s: consolidate(strategy, s, params, x1, y1))(state)
    np.testing.assert_array_equal(state.count, [1, 1, 1, 1])
    np.testing.assert_array_equal(state.seen, [True] * 4)
    for c in (0, 1):  # reduced: the first of the herding order stays
        np.testing.assert_array_equal(state.exemplars[c, 0], x0[order[c][0]])
        np.testing.assert_allclose(state.means[c], normalize64(x0[order[c][:1]])[0], atol=1e-6)
    for c in (2, 3):
        first = np.flatnonzero(y1 == c)[herding64(normalize64(x1[y1 == c]), 1)[0]]
        np.testing.assert_array_equal(state.exemplars[c, 0], x1[first])
    np.testing.assert_array_equal(icarl_reduce(jnp.array([5, 2, 0]), 3), [3, 2, 0])


def icarl_loss64(g, q, labels, classes, old, T):
    g, q = np.asarray(g, np.float64), np.asarray(q, np.float64)
    sig = lambda z: 1 / (1 + np.exp(-z))  # noqa: E731
    onehot = np.eye(g.shape[1])[labels]
    t = np.where(old, sig(q / T), onehot)
    z = np.where(old, g / T, g)
    bce = -(t * np.log(sig(z)) + (1 - t) * np.log(1 - sig(z)))
    return np.mean(np.sum(np.where(classes, bce, 0.0), axis=1))


@pytest.mark.parametrize("T", [1.0, 2.5])
def test_icarl_distillation_loss_against_float64(T):
    rng = np.random.default_rng(2)
    g, q = rng.normal(size=(6, 5)) * 2, rng.normal(size=(6, 5)) * 2
    labels = np.array([2, 3, 3, 2, 0, 1])
    classes = np.array([True, True, True, True, False])
    old = np.array([True, True, False, False, False])
    got = icarl_loss(jnp.asarray(g, jnp.float32), jnp.asarray(q, jnp.float32), jnp.asarray(labels),
                     jnp.asarray(classes), jnp.asarray(old), T)
    assert float(got) == pytest.approx(icarl_loss64(g, q, labels, classes, old, T), rel=1e-5)


def test_icarl_objective_is_its_loss_on_batch_and_exemplars(source):
    """iCaRL's replay loss, which replaces the run's cross-entropy, is iCaRL's loss on the batch and the exemplars it
    draws, recomputed in float64 from the logits (old classes distilled from the teacher)."""
    strategy = icarl(capacity=20, batch_size=5, temperature=1.0)
    run = make_run(RunConfig(strategy=strategy, episodes_per_task=2), source)
    hp = run.hparams()
    state = run.init(jax.random.key(0), hp)
    params = state.params
    data = source.fisher_data(jax.random.key(1), params, jax.tree.map(lambda a: a[0], source.tasks), None)
    st = strategy.consolidate(state.strategy, params, hp.strategy, data=data)
    student = jax.tree.map(lambda p: p + 0.1, params)
    batch = source.batch(jax.random.key(2), student, jax.tree.map(lambda a: a[1], source.tasks), None)
    samples = source.samples(batch)
    key = jax.random.key(3)
    assert strategy.replaces_task_loss
    total = float(strategy.replay_loss(st, student, samples, source, key, hp.strategy))
    C, P = st.exemplars.shape[:2]
    filled = (np.arange(P)[None] < np.asarray(st.count)[:, None]).reshape(-1)
    idx = np.asarray(jax.random.categorical(key, jnp.where(filled, 0.0, -jnp.inf), shape=(5,)))
    xs = np.concatenate([np.asarray(batch.x), np.asarray(st.exemplars).reshape(C * P, -1)[idx]])
    ys = np.concatenate([np.asarray(batch.y), idx // P])
    classes = np.asarray(batch.mask) | np.asarray(st.seen)
    want = icarl_loss64(source.model.apply(student, xs), source.model.apply(params, xs), ys, classes,
                        np.asarray(st.seen), 1.0)
    assert total == pytest.approx(want, rel=1e-4)
    assert np.asarray(st.seen).tolist() == [c in set(np.asarray(data[1]).tolist()) for c in range(10)]


def test_icarl_scores_by_nearest_mean(source):
    """After a run, the final row equals the nearest-mean accuracy recomputed in NumPy from the state's means and
    the final network's features, on the test samples score draws."""
    run = make_run(RunConfig(strategy=icarl(capacity=30), episodes_per_task=EPISODES), source)
    hp = run.hparams(learning_rate=3e-3)
    key = jax.random.key(0)
    state, res = run(key, hp)
    k_eval = Run.split_key(key)[1]
    means, usable = np.asarray(state.strategy.means, np.float64), np.asarray(state.strategy.count) > 0
    for i in range(source.num_tasks):
        task = jax.tree.map(lambda a: a[i], source.tasks)
        idx = np.asarray(jax.random.choice(jax.random.fold_in(k_eval, i), task.x_test.shape[0], (40,), replace=False))
        x, y = np.asarray(task.x_test)[idx], np.asarray(task.y_test)[idx]
        phi = normalize64(mlp_features(source.model, state.params, jnp.asarray(x))[-1])
        d = ((phi[:, None] - means[None]) ** 2).sum(-1)
        d[:, ~(usable & np.asarray(task.test_mask))] = np.inf
        assert float(res.R[-1, i]) == pytest.approx(np.mean(np.argmin(d, axis=1) == y), abs=1e-6)


# ----------------------------------------------------------------------------------------------------------------
# GDumb
# ----------------------------------------------------------------------------------------------------------------

STREAM = [0, 0, 0, 0, 0, 1, 1, 0, 2, 1, 1, 0]  # tests/test_memories.py's hand-worked stream, capacity 7


def test_gdumb_memory_is_the_hand_worked_balanced_memory():
    strategy = gdumb(capacity=7)
    example = ((jax.ShapeDtypeStruct((1,), jnp.float32), jax.ShapeDtypeStruct((3,), jnp.bool_)),
               jax.ShapeDtypeStruct((), jnp.int32))
    memory = balanced_init(example, 7)  # what gdumb's init builds (its source check needs a SupervisedSource)
    samples = ((jnp.arange(12, dtype=jnp.float32)[:, None], jnp.ones((12, 3), bool)), jnp.array(STREAM))
    for seed in range(3):
        m = strategy.observe(memory, None, samples, None, jax.random.key(seed), strategy.hparams)
        items, labels = np.asarray(m.items[0][0][0][:, 0]).astype(int), np.asarray(m.items[1])
        assert {c: int(np.sum(labels == c)) for c in (0, 1, 2)} == {0: 3, 1: 3, 2: 1}
        assert sorted(items[labels == 1]) == [5, 6, 9] and list(items[labels == 2]) == [8]
        np.testing.assert_array_equal(np.array(STREAM)[items], labels)


def gdumb_by_hand(source, memory, key, updates, batch_size, lr):
    """GDumb's learner written out: a fresh model, ``updates`` Adam steps on memory draws, in a Python loop."""
    k_init, k_draw = jax.random.split(key)
    params = source.init_params(k_init)
    (((x, mask), y), _) = memory.items
    filled = int(min(int(memory.seen), y.shape[0]))
    union = np.any(np.asarray(mask)[:filled], axis=0)
    opt = optax.adam(lr)
    o = opt.init(params)
    for k in jax.random.split(k_draw, updates):
        idx = jax.random.randint(k, (batch_size,), 0, filled)
        m = jnp.broadcast_to(jnp.asarray(union), (batch_size, union.shape[0]))  # class-incremental: every class held
        grads = jax.grad(lambda p: source.sample_loss(p, (x[idx], m), y[idx]))(params)
        upd, o = opt.update(grads, o, params)
        params = optax.apply_updates(params, upd)
    return params


def test_gdumb_scores_a_model_trained_from_scratch_on_its_memory(source):
    """Under vmap over two seeds with two learning rates (one compilation): each member's final row is the score of
    a fresh model trained by hand on that member's final memory (the same key, fold_in(eval_key, num_tasks), and the
    same 12 updates), and the run's own learning rate does not change GDumb's scores."""
    strategy = gdumb(capacity=24, updates=12, batch_size=8)
    run = make_run(RunConfig(strategy=strategy, episodes_per_task=EPISODES), source)
    keys = jax.random.split(jax.random.key(0), 2)
    hp = run.hparams(lr=jnp.array([1e-3, 1e-2]))
    swept = jax.jit(jax.vmap(run.run_on, in_axes=(None, 0, hp.axes("lr"))))
    states, res = swept(source.tasks, keys, hp)
    for s in range(2):
        memory = jax.tree.map(lambda a: a[s], states.strategy)
        k_eval = Run.split_key(keys[s])[1]
        trained = gdumb_by_hand(source, memory, jax.random.fold_in(k_eval, source.num_tasks), 12, 8,
                                float(hp.strategy.lr[s]))
        want = [float(source.score(jax.random.fold_in(k_eval, i), trained, jax.tree.map(lambda a: a[i], source.tasks),
                                   None)) for i in range(source.num_tasks)]
        np.testing.assert_allclose(res.R[s, -1], want, atol=1e-6)
        jitted = jax.jit(lambda m, k: gdumb_train(source, m, k, 12, 8, hp.strategy.lr[s]))
        direct = jitted(memory, jax.random.fold_in(k_eval, source.num_tasks))
        assert jax.tree.all(jax.tree.map(lambda a, b: np.allclose(a, b, atol=1e-5), direct, trained))
    assert not np.allclose(res.R[0], res.R[1])
    other = jax.jit(jax.vmap(run.run_on, in_axes=(None, 0, hp.axes("lr"))))(
        source.tasks, keys, hp.replace(learning_rate=0.5))[1]
    np.testing.assert_array_equal(other.R, res.R)           # the stream's training never reaches GDumb's score


# ----------------------------------------------------------------------------------------------------------------
# The hook in every path of the run
# ----------------------------------------------------------------------------------------------------------------


def test_hook_in_every_evaluation_path(source):
    """evaluate_every=2 (diagonal-only rows), run_stepwise (train_task, Run.evaluate) and the whole run agree, and
    Run.evaluate asks for the strategy's state."""
    run = make_run(RunConfig(strategy=gdumb(capacity=16, updates=4, batch_size=4), episodes_per_task=3,
                             evaluate_every=2), source)
    hp = run.hparams()
    key = jax.random.key(5)
    state, res = run(key, hp)
    _, stepwise = run.run_stepwise(key, hp)
    np.testing.assert_array_equal(res.R, stepwise.R)
    np.testing.assert_array_equal(res.baseline, stepwise.baseline)
    assert np.isnan(res.R[0, 1]) and not np.isnan(res.R[0, 0]) and not np.isnan(res.R[1]).any()
    np.testing.assert_allclose(run.evaluate(state.params, key, hp, strategy_state=state.strategy), res.R[-1])
    with pytest.raises(ValueError, match="strategy_state"):
        run.evaluate(state.params, key, hp)


def test_without_the_hook_the_evaluation_is_the_sources(source):
    """A strategy without the hook evaluates through evaluate_source: the same StableHLO with or without a strategy
    state passed, and equal to evaluate_source's own program."""
    run = make_run(RunConfig(strategy=chain(ewc(), replay(capacity=8)), episodes_per_task=2), source)
    assert run.strategy.evaluate is None
    hp = run.hparams()
    state = run.init(jax.random.key(0), hp)
    lower = lambda f: jax.jit(f).lower(state.params, jax.random.key(1)).as_text()  # noqa: E731
    with_state = lower(lambda p, k: run.evaluate_on(p, source.tasks, k, hp, (), state.strategy))
    plain = lower(lambda p, k: evaluate_source(source, p, source.tasks, k, hp.source))
    assert with_state == plain


def test_chain_takes_one_evaluating_part_and_the_taskfree_run(source):
    from clloop_jax import taskfree as tf
    with pytest.raises(ValueError, match="at most one part"):
        chain(icarl(), gdumb())
    both = chain(ewc(), gdumb(capacity=16, updates=4, batch_size=4))
    assert both.evaluate is not None and chain(ewc(), replay()).evaluate is None
    # the task-free run scores through the hook too: its last row is GDumb's model trained on the final memory
    free = tf.make_taskfree_run(RunConfig(strategy=both), source, boundaries="oracle")
    key = jax.random.key(0)
    state, res = free(key, free.hparams(), tf.abrupt_schedule([2] * source.num_tasks))
    k_eval = Run.split_key(key)[1]
    trained = jax.jit(lambda m, k: gdumb_train(source, m, k, 4, 4, 1e-3))(state.strategy[1],
                                                                            jax.random.fold_in(k_eval, 5))
    want = [float(source.score(jax.random.fold_in(k_eval, i), trained, jax.tree.map(lambda a: a[i], source.tasks),
                               None)) for i in range(source.num_tasks)]
    np.testing.assert_allclose(res.R[-1], want, atol=1e-6)


def test_errors():
    for bad, match in [(lambda: icarl(capacity=0), "capacity"), (lambda: icarl(batch_size=True), "batch_size"),
                       (lambda: icarl(temperature=0.0), "temperature"), (lambda: gdumb(updates=0), "updates"),
                       (lambda: gdumb(capacity=2.5), "capacity"), (lambda: gdumb(lr=-1.0), "lr"),
                       (lambda: gdumb(batch_size=0), "batch_size")]:
        with pytest.raises(ValueError, match=match):
            bad()
    assert registered()[-2:] == ("icarl", "gdumb")
    assert get_strategy("gdumb", capacity=9).name == "gdumb"


def test_icarl_and_gdumb_refuse_a_model_without_features(digits):
    x, y = digits
    stream = split_stream(x, y, classes_per_task=2, seed=0, scenario="class")
    linear = SupervisedSource(MLP(output_dim=10, hidden=()), stream, batch_size=8)
    for strategy in (icarl(), gdumb()):
        with pytest.raises(ValueError, match="MLP"):
            make_run(RunConfig(strategy=strategy), linear)


@pytest.mark.slow
def test_both_beat_fine_tuning_on_class_incremental_digits(digits):
    x, y = digits
    stream = split_stream(x, y, classes_per_task=2, seed=0, scenario="class")
    src = SupervisedSource(MLP(output_dim=10, hidden=(32,)), stream, batch_size=32, fisher_size=64)
    keys = jax.random.split(jax.random.key(0), 2)
    final = {}
    for name, strategy in [("none", "none"), ("icarl", icarl(capacity=100)),
                           ("gdumb", gdumb(capacity=100, updates=200))]:
        run = make_run(RunConfig(strategy=strategy, episodes_per_task=60), src)
        _, res = run.seeds(keys, run.hparams(learning_rate=3e-3))
        final[name] = float(np.mean(res.R[:, -1]))
    assert final["none"] < 0.3
    assert final["icarl"] > final["none"] + 0.4 and final["gdumb"] > final["none"] + 0.4
