"""SupervisedSource, MLP and SequenceClassifier: numbers against NumPy float64 references, and the compiled run
over labelled task streams in the three scenarios."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from clloop_jax.data.streams import permuted_stream, split_stream
from clloop_jax.importance.fisher import Categorical, fisher_diagonal
from clloop_jax.model import MLP, CrossModalModel, SequenceClassifier
from clloop_jax.monitors import functional_divergence
from clloop_jax.run.config import RunConfig
from clloop_jax.run.joint import make_joint_run
from clloop_jax.run.sequential import make_run
from clloop_jax.sources.supervised import SupervisedBatch, SupervisedSource

# ----------------------------------------------------------------------------------------------------------------
# Fixtures and float64 references
# ----------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def streams(digits):
    """2-task split digits ({0..4}, {5..9}) in each scenario."""
    x, y = digits
    return {s: split_stream(x, y, classes_per_task=5, seed=0, scenario=s) for s in ("task", "domain", "class")}


@pytest.fixture(scope="module")
def tiny(streams):
    """A one-hidden-layer MLP on the class-incremental stream, with parameters away from initialisation."""
    stream = streams["class"]
    source = SupervisedSource(MLP(output_dim=stream.num_classes, hidden=(6,)), stream, batch_size=8,
                              fisher_size=2, eval_size=None)
    params = source.init_params(jax.random.key(3))
    params = jax.tree.map(lambda p: p + 0.3 * jax.random.normal(jax.random.key(4), p.shape), params)
    return source, params


def np_params(params):
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)["params"]
    return p["hidden_0"]["kernel"], p["hidden_0"]["bias"], p["head"]["kernel"], p["head"]["bias"]


def np_forward(params, x):
    W1, b1, W2, b2 = np_params(params)
    pre = np.asarray(x, np.float64) @ W1 + b1
    return pre, np.maximum(pre, 0.0) @ W2 + b2


def np_log_softmax_masked(logits, mask):
    z = np.where(mask, logits, -np.inf)
    m = np.max(z, axis=-1, keepdims=True)
    return np.where(mask, z - m - np.log(np.sum(np.exp(z - m), axis=-1, keepdims=True)), -np.inf)


# ----------------------------------------------------------------------------------------------------------------
# Loss, score, batches
# ----------------------------------------------------------------------------------------------------------------


def test_loss_and_batch_accuracy_match_numpy_on_a_masked_hand_case(tiny):
    source, params = tiny
    rng = np.random.default_rng(0)
    x = rng.normal(size=(5, 64)).astype(np.float32)
    y = np.array([0, 3, 1, 2, 3], np.int32)
    mask = np.array([True, True, False, True, True, False, False, False, False, False])  # class 2 masked out
    keep = mask[y]                                  # drop the sample whose label is masked out
    _, logits = np_forward(params, x)
    logp = np_log_softmax_masked(logits, mask)
    batch = SupervisedBatch(jnp.asarray(x[keep]), jnp.asarray(y[keep]), jnp.asarray(mask))
    loss, aux = source.loss(params, batch, source.hparams)
    ref = -np.mean(logp[np.arange(5), y][keep])
    np.testing.assert_allclose(float(loss), ref, rtol=1e-5)
    pred = np.argmax(np.where(mask, logits, -np.inf), axis=-1)[keep]
    np.testing.assert_allclose(float(aux["score"]), np.mean(pred == y[keep]), atol=1e-7)
    # Masking matters: the unmasked cross-entropy differs.
    unmasked = -np.mean(np_log_softmax_masked(logits, np.ones(10, bool))[np.arange(5), y][keep])
    assert abs(unmasked - ref) > 1e-3


def test_score_is_test_accuracy_under_the_test_mask(streams, tiny):
    source, params = tiny
    for scenario in ("task", "class"):
        stream = streams[scenario]
        src = SupervisedSource(source.model, stream, batch_size=8)
        for t in range(stream.num_tasks):
            task = stream.task(t)
            got = float(src.score(jax.random.key(0), params, task, src.hparams))
            _, logits = np_forward(params, np.asarray(task.x_test))
            mask = np.asarray(task.test_mask)
            pred = np.argmax(np.where(mask, logits, -np.inf), axis=-1)
            want = np.mean(pred == np.asarray(task.y_test))
            np.testing.assert_allclose(got, want, atol=1e-6)
            assert 0.0 <= got <= 1.0


def test_batch_draws_distinct_samples_of_the_task_with_its_train_mask(streams, tiny):
    source, params = tiny
    stream = streams["class"]
    task = stream.task(1)
    b = source.batch(jax.random.key(7), params, task, source.hparams)
    assert b.x.shape == (8, 64) and b.y.shape == (8,)
    rows = {tuple(r) for r in np.asarray(task.x).tolist()}
    got = [tuple(r) for r in np.asarray(b.x).tolist()]
    assert all(r in rows for r in got) and len(set(got)) == 8
    # Labels travel with their rows.
    lookup = {tuple(r): int(l) for r, l in zip(np.asarray(task.x).tolist(), np.asarray(task.y))}
    assert [lookup[r] for r in got] == np.asarray(b.y).tolist()
    np.testing.assert_array_equal(b.mask, task.train_mask)
    assert np.asarray(task.train_mask).sum() == 10  # class-incremental: classes of tasks 0..1


# ----------------------------------------------------------------------------------------------------------------
# Fisher
# ----------------------------------------------------------------------------------------------------------------


def np_exact_fisher(params, x, mask):
    """Exact Fisher diagonal of the masked categorical, by enumerating the active labels (float64)."""
    W1, b1, W2, b2 = np_params(params)
    F = [np.zeros_like(W1), np.zeros_like(b1), np.zeros_like(W2), np.zeros_like(b2)]
    for xi, mi in zip(np.asarray(x, np.float64), np.asarray(mask)):
        pre, logits = np_forward(params, xi[None])
        pre, logits = pre[0], logits[0]
        p = np.exp(np_log_softmax_masked(logits, mi))
        h = np.maximum(pre, 0.0)
        for c in np.flatnonzero(mi):
            d_out = np.where(mi, np.eye(len(p))[c] - p, 0.0)   # d log p_c / d logits (active outputs)
            d_pre = (W2 @ d_out) * (pre > 0)
            grads = [np.outer(xi, d_pre), d_pre, np.outer(h, d_out), d_out]
            for f, g in zip(F, grads):
                f += p[c] * g ** 2
    return [f / len(x) for f in F]


def test_exact_fisher_of_the_source_equals_enumeration_over_active_classes(streams, tiny):
    source, params = tiny
    task = streams["class"].task(0)                       # train mask: classes 0..4 of 10
    run = make_run(RunConfig(strategy="ewc", episodes_per_task=1, fisher_variant="exact"), source)
    key = jax.random.key(11)
    inputs, targets = source.fisher_data(key, params, task, source.hparams)
    fisher = jax.jit(run.importance, static_argnames="kind")(key, params, (inputs, targets), run.hparams(),
                                                             kind="fisher")   # op by op it is ~10x slower
    assert inputs[0].shape == (2, 64) and inputs[1].shape == (2, 10) and targets.shape == (2,)
    ref = np_exact_fisher(params, *inputs)
    got = np_params(fisher)
    for g, r in zip(got, ref):
        np.testing.assert_allclose(g, r, rtol=2e-4, atol=1e-7)
    # The masked head columns carry no Fisher; an unmasked predict would give them some.
    assert np.all(got[2][:, 5:] == 0) and np.all(got[3][5:] == 0)
    unmasked = jax.jit(lambda p, i: fisher_diagonal(lambda p, x: source.model.apply(p, x[0]), p, i,
                                                    likelihood=Categorical(), variant="exact"))(params, inputs)
    assert np.max(np.abs(np_params(unmasked)[2][:, 5:])) > 1e-6


# ----------------------------------------------------------------------------------------------------------------
# The compiled run and the joint upper bound
# ----------------------------------------------------------------------------------------------------------------

CHANCE = {"task": 0.2, "domain": 0.2, "class": 0.1}


@pytest.fixture(scope="module")
def runs(streams):
    """Each scenario: a 2-task EWC run of 60 updates per task (2 seeds vmapped) and the joint bound, on a small MLP."""
    out = {}
    keys = jax.random.split(jax.random.key(0), 2)
    for scenario, stream in streams.items():
        source = SupervisedSource(MLP(output_dim=stream.num_classes, hidden=(16,)), stream, batch_size=32,
                                  fisher_size=16, eval_size=100)
        config = RunConfig(strategy="ewc", episodes_per_task=60, fisher_variant="exact",
                           monitors=(functional_divergence(2),))
        run = make_run(config, source)
        hp = run.hparams(learning_rate=1e-2, lam=10.0)
        _, res = jax.vmap(run, in_axes=(0, None))(keys, hp)
        # The joint bound where its masks differ from sequential training's (class-incremental).
        joint = make_joint_run(config, source.joint())(keys[0], hp) if scenario == "class" else None
        out[scenario] = (stream, res, joint)
    return out


@pytest.mark.parametrize("scenario", ["task", "domain", "class"])
def test_run_learns_task_zero_and_reports_accuracies(runs, scenario):
    stream, res, _ = runs[scenario]
    R, b = np.asarray(res.R), np.asarray(res.baseline)
    assert R.shape == (2, 2, 2) and b.shape == (2, 2)
    assert np.all((R >= 0) & (R <= 1)) and np.all(np.isfinite(res.traces["functional"][..., -1]))
    # Training on task 0 lifts it far above chance (and above the untrained model).
    assert np.all(R[:, 0, 0] > CHANCE[scenario] + 0.4), R[:, 0, 0]
    assert np.all(R[:, 0, 0] > b[:, 0] + 0.3)
    assert np.all(R[:, 1, 1] > CHANCE[scenario] + 0.3), R[:, 1, 1]


def test_class_incremental_without_replay_forgets_the_first_task(runs):
    _, res, _ = runs["class"]
    R = np.asarray(res.R)
    assert np.all(R[:, 1, 0] < R[:, 0, 0] - 0.4), R


def test_joint_run_learns_every_task_of_the_class_incremental_stream(runs):
    _, res, joint = runs["class"]
    joint = np.asarray(joint)
    assert joint.shape == (2,)
    # One model knows both tasks' classes at once, which sequential training never reaches here.
    assert np.all(joint > CHANCE["class"] + 0.5), joint
    assert joint.mean() > np.asarray(res.R)[:, -1].mean(axis=-1).max() + 0.2


def test_joint_source_trains_under_the_evaluation_mask(streams):
    for scenario, stream in streams.items():
        src = SupervisedSource(MLP(output_dim=stream.num_classes, hidden=(4,)), stream, batch_size=8)
        joint = src.joint()
        np.testing.assert_array_equal(joint.stream.train_mask, stream.test_mask)
        np.testing.assert_array_equal(joint.stream.test_mask, stream.test_mask)
        same = np.array_equal(np.asarray(stream.train_mask), np.asarray(stream.test_mask))
        assert same == (scenario != "class")


# ----------------------------------------------------------------------------------------------------------------
# SequenceClassifier and validation
# ----------------------------------------------------------------------------------------------------------------


def test_sequence_classifier_equals_stepping_the_model_chunk_by_chunk():
    model = CrossModalModel(input_dim=4, hidden_dim=8, output_dim=3, num_heads=2, head_init_scale=1.0)
    clf = SequenceClassifier(model, chunk=4)
    x = jax.random.normal(jax.random.key(0), (2, 12))
    params = jax.jit(clf.init)(jax.random.key(1), x[0])
    apply = jax.jit(clf.apply)
    got = apply(params, x)
    inner = {"params": params["params"]["model"]}
    step = jax.jit(lambda c, chunk: model.apply(inner, c, (chunk,)))
    for i in range(2):
        carry = model.initial_carry()
        for t in range(3):
            carry, out = step(carry, x[i, 4 * t:4 * (t + 1)])
        np.testing.assert_allclose(got[i], out, rtol=1e-5, atol=1e-6)
    # The first chunk matters to the last output.
    x2 = x.at[:, 0].add(1.0)
    assert not np.allclose(apply(params, x2), got)
    with pytest.raises(ValueError, match="chunk"):
        clf.apply(params, jnp.zeros((2, 10)))
    with pytest.raises(ValueError, match="input_dim"):
        SequenceClassifier(model, chunk=5)


def test_sequence_classifier_serves_as_the_model_of_a_source(digits):
    x, y = digits
    stream = permuted_stream(x[:200], y[:200], num_tasks=2, seed=0, scenario="domain")
    clf = SequenceClassifier(CrossModalModel(input_dim=8, hidden_dim=8, output_dim=10, num_heads=2), chunk=8)
    source = SupervisedSource(clf, stream, batch_size=4, fisher_size=2)
    params = jax.jit(source.init_params)(jax.random.key(0))
    batch = jax.jit(source.batch)(jax.random.key(1), params, stream.task(0), source.hparams)
    loss, aux = jax.jit(source.loss)(params, batch, source.hparams)
    # An untrained head (small initial scale) predicts near uniform: loss close to log(10).
    np.testing.assert_allclose(float(loss), np.log(10.0), atol=0.1)
    assert 0.0 <= float(aux["score"]) <= 1.0


def test_bad_configuration_is_rejected_naming_the_field(streams):
    stream = streams["task"]
    model = MLP(output_dim=stream.num_classes, hidden=(4,))
    n_train = stream.x.shape[1]
    with pytest.raises(ValueError, match="batch_size"):
        SupervisedSource(model, stream, batch_size=n_train + 1)
    with pytest.raises(ValueError, match="fisher_size"):
        SupervisedSource(model, stream, fisher_size=n_train + 1)
    with pytest.raises(ValueError, match="eval_size"):
        SupervisedSource(model, stream, eval_size=0)
    with pytest.raises(ValueError, match="model"):
        SupervisedSource(MLP(output_dim=3, hidden=(4,)), stream)
    with pytest.raises(ValueError, match="stream"):
        SupervisedSource(model, {"x": stream.x})
    with pytest.raises(ValueError, match="hidden"):
        MLP(output_dim=3, hidden=(4, 0))
    with pytest.raises(ValueError, match="output_dim"):
        MLP(output_dim=0)
    assert SupervisedSource(model, stream).fisher_size == min(256, n_train)


def test_a_stream_of_no_tasks_is_refused_naming_the_stream(streams):
    stream = streams["class"]
    model = MLP(output_dim=stream.num_classes, hidden=(4,))
    empty = jax.tree.map(lambda a: a[:0], stream)                    # what slicing a stream past its end gives
    assert empty.num_tasks == 0
    for batch_size in (8, 128):                                      # before any size is compared with the task's
        with pytest.raises(ValueError, match=r"stream must hold at least one task, got a split TaskStream of 0 "
                                             r"tasks \(x of shape \(0, \d+, 64\)\)"):
            SupervisedSource(model, empty, batch_size=batch_size)
    assert SupervisedSource(model, jax.tree.map(lambda a: a[:1], stream), batch_size=8).stream.num_tasks == 1
