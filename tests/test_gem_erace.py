"""ER-ACE and GEM: the asymmetric cross-entropy against a float64 reference with the logits masked by hand, GEM's
projection against the dual quadratic program solved by SciPy (and the primal by SLSQP), both strategies through
``make_run`` under ``jax.vmap`` over seeds and a swept hyperparameter, chained with EWC, and their argument errors."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.optimize import minimize, nnls

from clloop_jax.run.config import RunConfig
from clloop_jax.run.sequential import make_run
from clloop_jax.sources.supervised import SupervisedBatch
from clloop_jax.strategies import get_strategy
from clloop_jax.strategies.gem import gem, gem_project, nnls_gram
from clloop_jax.strategies.rehearsal import ace_mask, er_ace, memory_sample, reservoir_add
from conftest import digits_source

EPISODES = 8


@pytest.fixture(scope="module")
def source(digits):
    """Digits, five class-incremental tasks of two classes, a tiny MLP."""
    return digits_source(digits, 2, "class", fisher_size=16, eval_size=50)


def cross_entropy64(logits, labels, mask):
    """Mean softmax cross-entropy in float64 with the classes where ``mask`` is False removed from the softmax."""
    logits = np.asarray(logits, np.float64)
    z = np.where(mask, logits, -np.inf)
    z = z - z.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return -np.mean(logp[np.arange(len(labels)), labels])


# ----------------------------------------------------------------------------------------------------------------
# ER-ACE
# ----------------------------------------------------------------------------------------------------------------


def test_ace_mask_by_hand():
    # Training mask: classes 0-3 seen; the batch holds classes 1 and 3 only: the incoming softmax runs over {1, 3}.
    masks = jnp.array([[1, 1, 1, 1, 0]] * 3, bool)
    want = np.array([[0, 1, 0, 1, 0]] * 3, bool)
    np.testing.assert_array_equal(ace_mask(masks, jnp.array([3, 1, 3])), want)
    with pytest.raises(ValueError, match="masks"):
        ace_mask(masks[0], jnp.array([1]))


def test_er_ace_loss_is_the_masked_incoming_cross_entropy_plus_the_plain_memory_one(source):
    """Task 1 (classes 2, 3; training mask {0, 1, 2, 3}) with an incoming batch of class 2 only and a memory of task
    0's samples: ER-ACE's replay loss, which replaces the run's task loss, is CE(incoming | {2}) + alpha *
    CE(memory | {0, 1, 2, 3}), each recomputed in float64 from the model's logits."""
    stream = source.stream
    params = source.init_params(jax.random.key(0))
    x1, y1 = np.asarray(stream.x[1]), np.asarray(stream.y[1])
    rows = np.flatnonzero(y1 == 2)[:6]
    batch = SupervisedBatch(jnp.asarray(x1[rows]), jnp.asarray(y1[rows]), stream.train_mask[1])
    samples = source.samples(batch)
    strategy = er_ace(capacity=10, batch_size=7, alpha=0.7)
    example = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape[1:], a.dtype), samples)
    memory = strategy.init(params, strategy.hparams, example, source)
    assert strategy.replaces_task_loss
    assert float(strategy.replay_loss(memory, params, samples, source, jax.random.key(1), strategy.hparams)) == \
        pytest.approx(cross_entropy64(source.model.apply(params, batch.x), y1[rows], np.arange(10) == 2),
                      abs=1e-5)   # empty memory: no memory term
    task0 = ((stream.x[0, :10], jnp.broadcast_to(stream.train_mask[0], (10, 10))), stream.y[0, :10])
    memory = reservoir_add(memory, task0, jax.random.key(2))
    key = jax.random.key(3)
    total = float(strategy.replay_loss(memory, params, samples, source, key, strategy.hparams))
    (xm, _), ym = memory_sample(memory, jax.random.split(key)[0], 7)   # the draw the strategy makes
    incoming = cross_entropy64(source.model.apply(params, batch.x), y1[rows], np.arange(10) == 2)
    remembered = cross_entropy64(source.model.apply(params, xm), np.asarray(ym), np.arange(10) < 4)
    assert total == pytest.approx(incoming + 0.7 * remembered, rel=1e-5)
    assert remembered > 0 and incoming != pytest.approx(float(source.loss(params, batch, None)[0]), rel=1e-3)


def swept_run(source, strategy, name, values):
    """Two seeds times the swept ``name``, in one vmapped program; returns (state, results) batched [seed, value]."""
    run = make_run(RunConfig(strategy=strategy, episodes_per_task=EPISODES, monitors=()), source)
    hp = run.hparams(learning_rate=1e-2, **{name: jnp.asarray(values, jnp.float32)})
    keys = jax.random.split(jax.random.key(0), 2)
    over_values = jax.vmap(run, in_axes=(None, hp.axes(name)))
    return jax.jit(jax.vmap(over_values, in_axes=(0, None)))(keys, hp), run, hp


def test_er_ace_trains_under_vmap_over_seeds_and_a_swept_alpha(source):
    (state, res), run, hp = swept_run(source, er_ace(capacity=40, batch_size=8), "alpha", [0.0, 1.0])
    R = np.asarray(res.R)
    assert R.shape == (2, 2, 5, 5) and np.all(np.isfinite(R))
    assert int(np.asarray(state.strategy.seen)[0, 0]) == 5 * EPISODES * 16   # every incoming sample offered
    # alpha is live: the runs that replay differ from those that do not
    assert not np.array_equal(R[:, 0], R[:, 1])
    # one (seed, alpha) of the vmapped program is that run alone
    _, alone = run(jax.random.split(jax.random.key(0), 2)[1], hp.replace(alpha=1.0))
    np.testing.assert_allclose(R[1, 1], alone.R, atol=1e-5)


def test_ewc_chained_with_er_ace_keeps_both_terms(source):
    strategy = get_strategy("ewc+er_ace", capacity=40, batch_size=8, lam=10.0)
    assert strategy.name == "ewc+er_ace" and strategy.hparams.er_ace.alpha == 1.0
    run = make_run(RunConfig(strategy=strategy, episodes_per_task=EPISODES, monitors=()), source)
    _, res = run(jax.random.key(0), run.hparams(learning_rate=1e-2))
    assert np.all(np.isfinite(res.R))
    penalty = np.asarray(res.traces["penalty"])
    assert np.all(penalty[0] == 0.0) and np.all(penalty[1:, 1:] > 0)   # EWC pulls from the second task on
    assert np.all(np.asarray(res.traces["replay_loss"])[1:] != 0.0)     # ER-ACE's terms throughout


def test_a_strategy_that_replaces_the_task_loss_is_the_whole_gradient(source):
    """``replaces_task_loss``: the update differentiates the strategy's objective alone. An objective that does not
    depend on the parameters leaves them exactly where they were, while the source's loss is still recorded; the
    same hook without the flag adds the source's gradient and moves them."""
    from clloop_jax.strategies.base import Strategy
    from clloop_jax.divergence import tree_sum
    flat = lambda state, params, samples, source, key, hp: 0.0 * tree_sum(params)  # noqa: E731
    moved = {}
    for replaces in (True, False):
        strategy = Strategy("flat", replay_loss=flat, replaces_task_loss=replaces)
        run = make_run(RunConfig(strategy=strategy, episodes_per_task=EPISODES, monitors=(), max_grad_norm=None),
                       source)
        hp = run.hparams(learning_rate=1e-2)
        state = run.init(jax.random.key(0), hp)
        batch = source.batch(jax.random.key(1), state.params, jax.tree.map(lambda a: a[0], source.tasks), None)
        new, trace = jax.jit(run.update)(state, batch, jax.random.key(2), hp)
        moved[replaces] = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(jax.tree.leaves(new.params),
                                                                             jax.tree.leaves(state.params)))
        assert float(trace["loss"]) == (0.0 if replaces else pytest.approx(float(source.loss(state.params, batch,
                                                                                               None)[0])))
        assert 0.0 <= float(trace["score"]) <= 1.0 and bool(trace["finite"])
    assert moved[True] == 0.0 and moved[False] > 1e-3


def test_at_most_one_part_of_a_chain_replaces_the_task_loss():
    from clloop_jax.strategies import chain
    from clloop_jax.strategies.base import Strategy
    from clloop_jax.strategies.classifiers import icarl
    assert chain("ewc", er_ace()).replaces_task_loss and not chain("ewc", "replay").replaces_task_loss
    with pytest.raises(ValueError, match=r"the parts \['er_ace', 'icarl'\] each replace the task loss"):
        chain(er_ace(), icarl())
    with pytest.raises(ValueError, match="replaces the task loss but has no replay_loss"):
        Strategy("empty", replaces_task_loss=True)


# ----------------------------------------------------------------------------------------------------------------
# GEM
# ----------------------------------------------------------------------------------------------------------------


def reference_projection(g, G, active, margin):
    """GEM's projection in float64: ``g`` when no active constraint is violated, else ``g + G^T v`` with ``v`` the
    solution of the dual ``min_{v >= margin} 1/2 v^T G G^T v + g^T G^T v``, written as the non-negative least squares
    ``min_{u >= 0} |G^T u + (g + margin G^T 1)|`` (``v = margin + u``) and solved by SciPy's ``nnls``."""
    Ga = G[active]
    if not np.any(Ga @ g < 0):
        return g
    u, _ = nnls(Ga.T, -(g + margin * Ga.sum(axis=0)))
    return g + Ga.T @ (u + margin)


@jax.jit
def _project(tree, rows, active, margin):
    return gem_project(tree, rows, active, margin)


def project(g, G, active, margin):
    """The library's projection of a flat ``g`` split into a two-leaf pytree, back as a flat float64 vector."""
    tree = {"a": jnp.asarray(g[:7].reshape(7, 1), jnp.float32), "b": jnp.asarray(g[7:], jnp.float32)}
    rows = {"a": jnp.asarray(G[:, :7].reshape(-1, 7, 1), jnp.float32), "b": jnp.asarray(G[:, 7:], jnp.float32)}
    out = _project(tree, rows, jnp.asarray(active), jnp.float32(margin))
    return np.concatenate([np.asarray(out["a"], np.float64).ravel(), np.asarray(out["b"], np.float64)])


@pytest.mark.parametrize("margin", [0.0, 0.5])
def test_gem_projection_equals_the_float64_dual_solution(margin):
    rng = np.random.default_rng(int(margin * 10))
    projected = 0
    for _ in range(40):   # six tasks, of which a random subset (from none to all) constrains the update
        K = 6
        G = rng.normal(size=(K, 40))
        g = rng.normal(size=40) - rng.uniform(0, 1.5) * G.sum(axis=0)   # often against the memories
        active = rng.uniform(size=K) < rng.uniform(0, 1)
        G, g = G.astype(np.float32).astype(np.float64), g.astype(np.float32).astype(np.float64)
        got, want = project(g, G, active, margin), reference_projection(g, G, active, margin)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.linalg.norm(want))
        scale = np.linalg.norm(g) * np.linalg.norm(G, axis=1)
        assert np.all((G @ got)[active] >= -1e-5 * scale[active])   # every constraint holds
        if not np.any((G @ g)[active] < 0):
            np.testing.assert_array_equal(got, g)      # nothing to project: g itself, bit for bit
        else:
            projected += 1
    assert projected >= 10


def test_gem_projection_with_no_margin_solves_the_primal():
    """With margin 0 the dual's answer is the primal's: the closest point to g with <z, g_k> >= 0 (SLSQP, float64)."""
    rng = np.random.default_rng(5)
    G, g = rng.normal(size=(3, 9)), rng.normal(size=9)
    g = g - 2.0 * G[0] - 1.0 * G[2]
    active = np.array([True, True, True])
    assert np.any(G @ g < 0)
    primal = minimize(lambda z: 0.5 * np.sum((z - g) ** 2), g, jac=lambda z: z - g, method="SLSQP",
                      constraints=[{"type": "ineq", "fun": lambda z, k=k: G[k] @ z, "jac": lambda z, k=k: G[k]}
                                   for k in range(3)], options={"ftol": 1e-14, "maxiter": 500}).x
    np.testing.assert_allclose(project(g, G, active, 0.0), primal, rtol=1e-4, atol=1e-5)


def test_nnls_gram_handles_degenerate_gradients_and_vmaps():
    # Two identical memory gradients and a zero one: finite, every constraint met.
    G = np.array([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]], np.float32)
    g = np.array([-1.0, 1.0, 0.0], np.float32)
    out = np.asarray(gem_project({"w": jnp.asarray(g)}, {"w": jnp.asarray(G)}, jnp.ones(3, bool), 0.0)["w"])
    np.testing.assert_allclose(out, [0.0, 1.0, 0.0], atol=1e-6)
    # Under vmap each problem is solved as alone; a hand-worked case: M = I, q = (-1, 2): u = (1, 0).
    M = jnp.stack([jnp.eye(2), 2 * jnp.eye(2)])
    q = jnp.array([[-1.0, 2.0], [-4.0, -2.0]])
    np.testing.assert_allclose(jax.vmap(nnls_gram)(M, q), [[1.0, 0.0], [2.0, 1.0]], atol=1e-6)
    np.testing.assert_allclose(nnls_gram(jnp.eye(2), jnp.array([-1.0, -1.0]), jnp.array([True, False])), [1.0, 0.0])


def test_gem_trains_under_vmap_over_seeds_and_a_swept_margin(source):
    (state, res), run, hp = swept_run(source, gem(memory_per_task=6), "margin", [0.0, 0.5])
    R = np.asarray(res.R)
    assert R.shape == (2, 2, 5, 5) and np.all(np.isfinite(R))
    assert np.all(np.asarray(state.strategy.task) == 5)
    # each task's slots hold its own classes (task k: classes 2k and 2k + 1), and every slot is filled
    labels = np.asarray(state.strategy.memory.items[1]).reshape(2, 2, 5, 6)
    np.testing.assert_array_equal(labels // 2, np.broadcast_to(np.arange(5)[:, None], labels.shape))
    assert not np.array_equal(R[:, 0], R[:, 1])       # the margin is live
    _, alone = run(jax.random.split(jax.random.key(0), 2)[0], hp.replace(margin=0.5))
    np.testing.assert_allclose(R[0, 1], alone.R, atol=1e-5)


def test_gem_keeps_the_gradient_without_earlier_tasks_and_projects_after(source):
    """The first task has no earlier task: the update is the plain one, number for number (fine-tuning's); the
    second task's updates are projected against task 0's memory."""
    def first(strategy):
        run = make_run(RunConfig(strategy=strategy, episodes_per_task=EPISODES, monitors=()), source)
        hp = run.hparams(learning_rate=1e-2)
        return run.train_task(run.init(jax.random.key(4), hp), jax.random.key(4), 0, hp)[0].params

    for a, b in zip(jax.tree.leaves(first(gem(memory_per_task=4))), jax.tree.leaves(first("none")), strict=True):
        np.testing.assert_array_equal(a, b)


def test_bad_arguments_are_refused(source):
    for make, match in [(lambda: er_ace(capacity=0), "capacity"), (lambda: er_ace(batch_size=2.5), "batch_size"),
                        (lambda: er_ace(memory="ring"), "memory"), (lambda: er_ace(alpha=-1.0), "alpha"),
                        (lambda: gem(memory_per_task=0), "memory_per_task"),
                        (lambda: gem(memory_per_task=10, capacity=50), "not both"),
                        (lambda: gem(margin=-0.1), "margin"), (lambda: gem(batch_size=0), "batch_size"),
                        (lambda: gem(iterations=0), "iterations"), (lambda: gem(capacity=True), "capacity")]:
        with pytest.raises((ValueError, TypeError), match=match):
            make()
    run = make_run(RunConfig(strategy=gem(capacity=3), episodes_per_task=2, monitors=()), source)
    with pytest.raises(ValueError, match="capacity .3. must be at least the number of tasks .5."):
        run.init(jax.random.key(0), run.hparams())


def test_er_ace_needs_labels_and_class_masks():
    class Unlabelled:
        num_tasks = 2

    example = (jax.ShapeDtypeStruct((3,), jnp.float32), jax.ShapeDtypeStruct((2,), jnp.float32))
    with pytest.raises(ValueError, match="er_ace needs a labelled source"):
        er_ace().init(None, None, example, Unlabelled())
