"""Rehearsal: the reservoir memory, A-GEM's projection and distillation against their definitions, and replay
beating fine-tuning in class-incremental learning."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from clloop_jax.data.loaders import load_digits_data
from clloop_jax.data.streams import split_stream
from clloop_jax.model import MLP
from clloop_jax.run.config import RunConfig
from clloop_jax.run.sequential import make_run
from clloop_jax.sources.supervised import SupervisedSource
from clloop_jax.strategies.rehearsal import agem_project, distillation_loss, memory_init, memory_sample, reservoir_add


def test_reservoir_keeps_a_uniform_sample_of_the_stream():
    """A stream of N = 40 items offered in batches of 8 to a memory of k = 10: each item ends in the memory with
    probability k / N = 0.25. Over 4,000 independent keys each item's count is Binomial(4000, 0.25) (mean 1000, sd
    27.4); every count lies within 5 sd, and the counts are not those of a first-come memory (items 0..9 only)."""
    N, k, reps = 40, 10, 4000
    stream = jnp.arange(N)

    def fill(key):
        memory = memory_init(jnp.int32(0), k)
        for b in range(N // 8):
            memory = reservoir_add(memory, stream[8 * b: 8 * b + 8], jax.random.fold_in(key, b))
        return memory.items, memory.seen

    items, seen = jax.jit(jax.vmap(fill))(jax.random.split(jax.random.key(0), reps))
    assert np.all(np.asarray(seen) == N)
    assert all(len(set(row.tolist())) == k for row in np.asarray(items)[:50])  # no item stored twice
    counts = np.bincount(np.asarray(items).ravel(), minlength=N)
    mean, sd = reps * k / N, np.sqrt(reps * (k / N) * (1 - k / N))
    assert np.all(np.abs(counts - mean) < 5 * sd), counts
    # While the memory has room, items go to slots in order; sampling draws only filled slots.
    memory = reservoir_add(memory_init(jnp.float32(0), 5), jnp.arange(3.0), jax.random.key(1))
    np.testing.assert_array_equal(memory.items, [0.0, 1.0, 2.0, 0.0, 0.0])
    draws = memory_sample(memory, jax.random.key(2), 200)
    assert set(np.asarray(draws).tolist()) == {0.0, 1.0, 2.0}


def test_agem_projection_by_hand():
    # A conflict: g = (1, 0), g_ref = (-1, 1), g.g_ref = -1, |g_ref|^2 = 2: g - (-1/2) g_ref = (0.5, 0.5).
    g, ref = {"w": jnp.array([1.0, 0.0])}, {"w": jnp.array([-1.0, 1.0])}
    np.testing.assert_allclose(agem_project(g, ref)["w"], [0.5, 0.5])
    # No conflict: unchanged.
    g2 = {"w": jnp.array([1.0, 1.0])}
    np.testing.assert_array_equal(agem_project(g2, {"w": jnp.array([1.0, 0.0])})["w"], [1.0, 1.0])


@given(st.integers(0, 2**31 - 1))
def test_agem_projection_never_conflicts_with_the_memory(seed):
    rng = np.random.default_rng(seed)
    g = {"a": jnp.asarray(rng.normal(size=(3, 2)), jnp.float32), "b": jnp.asarray(rng.normal(size=4), jnp.float32)}
    ref = {"a": jnp.asarray(rng.normal(size=(3, 2)), jnp.float32), "b": jnp.asarray(rng.normal(size=4), jnp.float32)}
    out = agem_project(g, ref)
    dot = lambda x, y: sum(float(jnp.sum(x[k] * y[k])) for k in x)  # noqa: E731
    assert dot(out, ref) >= -1e-5 * (1 + dot(ref, ref))
    if dot(g, ref) >= 0:
        for k in g:
            np.testing.assert_array_equal(out[k], g[k])


def test_distillation_is_zero_at_the_teacher_and_positive_away():
    rng = np.random.default_rng(0)
    t = jnp.asarray(rng.normal(size=(5, 4)), jnp.float32)
    assert float(distillation_loss(t, t, 2.0)) == pytest.approx(0.0, abs=1e-6)
    assert float(distillation_loss(t + 1.0, t, 2.0)) == pytest.approx(0.0, abs=1e-6)  # softmax ignores a shift
    assert float(distillation_loss(t * 2.0, t, 2.0)) > 1e-3
    assert float(distillation_loss(t, t, categorical=False)) == 0.0
    # Masked-out classes (probability 0 under the teacher) contribute nothing and give no NaN.
    masked = t.at[:, 3].set(-1e9)
    assert np.isfinite(float(distillation_loss(masked, masked, 2.0)))
    # By hand: teacher logits (0, 0), student (log 3, 0) at T = 1: KL((.5, .5) || (.75, .25))
    # = .5 ln(.5 / .75) + .5 ln(.5 / .25) = 0.143841.
    got = distillation_loss(jnp.array([[np.log(3.0), 0.0]]), jnp.zeros((1, 2)), 1.0)
    assert float(got) == pytest.approx(0.5 * np.log(0.5 / 0.75) + 0.5 * np.log(2.0), rel=1e-5)
    # At T = 2 the same logits: T^2 KL(softmax(0, 0) || softmax(ln 3 / 2, 0)).
    q = np.exp([np.log(3.0) / 2, 0.0]) / np.exp([np.log(3.0) / 2, 0.0]).sum()
    want = 4.0 * (0.5 * np.log(0.5 / q[0]) + 0.5 * np.log(0.5 / q[1]))
    assert float(distillation_loss(jnp.array([[np.log(3.0), 0.0]]), jnp.zeros((1, 2)), 2.0)) == pytest.approx(want,
                                                                                                             rel=1e-5)


@pytest.fixture(scope="module")
def class_incremental():
    x, y = load_digits_data()
    stream = split_stream(x, y, classes_per_task=5, seed=0, scenario="class")
    source = SupervisedSource(MLP(output_dim=stream.num_classes, hidden=(32,)), stream, batch_size=32,
                              fisher_size=64)
    keys = jax.random.split(jax.random.key(0), 2)

    def final_accuracy(strategy):
        run = make_run(RunConfig(strategy=strategy, episodes_per_task=100, monitors=()), source)
        _, res = jax.vmap(run, in_axes=(0, None))(keys, run.hparams(learning_rate=1e-2))
        return np.asarray(res.R)[:, -1].mean(axis=1)

    return final_accuracy


def test_remembered_samples_keep_their_own_head_except_in_class_incremental_learning():
    """Replaying a task-0 sample while task 1 trains: in task-incremental learning under task 0's own pair of
    outputs (its head), in class-incremental learning under the classes seen so far (task 1's training mask)."""
    x, y = load_digits_data()[:2]
    for scenario, expected in (("task", [1, 1, 0, 0]), ("class", [1, 1, 1, 1])):
        stream = split_stream(x, y, classes_per_task=2, scenario=scenario)
        source = SupervisedSource(MLP(output_dim=stream.num_classes, hidden=(8,)), stream, batch_size=4)
        remembered = (stream.x[0, :3], jnp.broadcast_to(stream.train_mask[0], (3, stream.num_classes)))
        current = ((stream.x[1, :2], jnp.broadcast_to(stream.train_mask[1], (2, stream.num_classes))),
                   stream.y[1, :2])
        _, mask = source.rehearse(remembered, current)
        assert mask.shape == (3, stream.num_classes)
        np.testing.assert_array_equal(np.asarray(mask[:, :4], int), np.tile(expected, (3, 1)))
        assert not np.asarray(mask[:, 4:]).any()


def test_replay_beats_fine_tuning_in_class_incremental_learning(class_incremental):
    none, replayed = class_incremental("none"), class_incremental("replay")
    # Fine-tuning forgets the first five classes (final accuracy about 0.48 on digits); replay keeps them.
    assert np.all(none < 0.55) and np.all(replayed > none + 0.3), (none, replayed)


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["agem", "lwf", "derpp", "er_ace", "gem"])
def test_every_rehearsal_strategy_beats_fine_tuning(class_incremental, strategy):
    assert np.all(class_incremental(strategy) > class_incremental("none") + 0.15)


def test_lwf_distils_the_outputs_of_the_losss_own_pass_with_one_backward_pass(digits):
    """A labelled source's loss gives its batch's outputs (``aux["outputs"]``); LwF's distillation reuses them, so the
    update backpropagates once through the model: the same step (to float rounding) as recomputing them, in less
    arithmetic (XLA's own count of the compiled update: 0.71 of it for this MLP 64-64)."""
    import dataclasses as dc
    from typing import Any

    import optax

    from clloop_jax.run.sequential import task_at
    from clloop_jax.sources.base import KnownOutputs, sample_outputs
    from clloop_jax.strategies import lwf
    from clloop_jax.strategies.rehearsal import LwFState

    @dc.dataclass(frozen=True)
    class Recomputing:            # the same source, its loss giving no outputs
        base: Any

        def __getattr__(self, name):
            return getattr(self.base, name)

        def loss(self, params, batch, hparams):
            loss, aux = self.base.loss(params, batch, hparams)
            aux.pop("outputs")
            return loss, aux

    stream = split_stream(*digits, classes_per_task=5, seed=0, scenario="class")
    source = SupervisedSource(MLP(output_dim=stream.num_classes, hidden=(64, 64)), stream, batch_size=32)
    steps = {}
    for name, src in (("shared", source), ("recomputed", Recomputing(source))):
        # plain SGD: the step is the gradient (Adam's first step would magnify rounding in near-zero gradients)
        run = make_run(RunConfig(strategy=lwf(alpha=1.0), episodes_per_task=5, monitors=(), optimizer=optax.sgd), src)
        hp = run.hparams(learning_rate=1e-2)
        key = jax.random.key(0)
        state = run.init_on(source.tasks, key, hp)
        state = state._replace(strategy=LwFState(source.init_params(jax.random.key(9)), jnp.ones((), jnp.int32)))
        batch = source.batch(jax.random.key(1), state.params, task_at(source.tasks, 1), hp.source)
        update = jax.jit(run.update).lower(state, batch, jax.random.key(2), hp).compile()
        new, trace = update(state, batch, jax.random.key(2), hp)
        steps[name] = (new.params, float(trace["replay_loss"]), update.cost_analysis()["flops"])
    (shared, loss_s, flops_s), (again, loss_r, flops_r) = steps["shared"], steps["recomputed"]
    assert loss_s > 0 and abs(loss_s - loss_r) <= 1e-6 * loss_r
    for a, b in zip(jax.tree.leaves(shared), jax.tree.leaves(again)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    assert flops_s < 0.8 * flops_r, (flops_s, flops_r)

    x = (jnp.ones((3, 64)), jnp.ones((3, 10), bool))
    params = source.init_params(jax.random.key(0))
    view = KnownOutputs(source, params, x, "the loss's outputs")
    assert sample_outputs(view, params, x) == "the loss's outputs"                 # those very arguments only
    other = sample_outputs(view, jax.tree.map(lambda v: v + 0, params), x)
    np.testing.assert_array_equal(other, sample_outputs(source, params, x))
    assert view.num_tasks == source.num_tasks
