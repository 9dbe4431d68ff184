"""Rehearsal memories beyond the reservoir: GDumb's class-balanced memory, the per-task ring and iCaRL's herding,
against examples worked by hand, a float64 reference of the greedy rule, and vmap over seeds."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from clloop_jax.data.loaders import load_digits_data
from clloop_jax.data.streams import split_stream
from clloop_jax.model import MLP
from clloop_jax.sources.supervised import SupervisedBatch, SupervisedSource
from clloop_jax.strategies import get_strategy, replay
from clloop_jax.strategies.memories import (balanced_add, balanced_init, herding_select, ring_add, ring_filled,
                                            ring_init, ring_sample)
from clloop_jax.strategies.rehearsal import memory_init, memory_sample, reservoir_add

# ----------------------------------------------------------------------------------------------------------------
# Class-balanced memory
# ----------------------------------------------------------------------------------------------------------------

# Capacity 7; sample i is the integer i, offered with label STREAM[i].
STREAM = [0, 0, 0, 0, 0, 1, 1, 0, 2, 1, 1, 0]
# Worked by hand (c: the new sample's class count, M: the largest class count):
#   t=0..6  room left: slots 0..6 <- samples 0..6              counts {0: 5, 1: 2}
#   t=7  label 0: c=5 == M=5 (the unique largest): dropped      {0: 5, 1: 2}
#   t=8  label 2: c=0 <  M=5: replaces one of class 0's slots   {0: 4, 1: 2, 2: 1}
#   t=9  label 1: c=2 <  M=4: replaces one of class 0's slots   {0: 3, 1: 3, 2: 1}
#   t=10 label 1: c=3 == M=3 (tied with class 0): dropped       {0: 3, 1: 3, 2: 1}
#   t=11 label 0: c=3 == M=3 (tied with class 1): dropped       {0: 3, 1: 3, 2: 1}
# So class 1 holds exactly samples {5, 6, 9}, class 2 exactly {8}, class 0 three of {0..4} (which three depends on
# the key), slots 5 and 6 still hold samples 5 and 6 (only class-0 slots were ever replaced), seen = 12.
FINAL_COUNTS = {0: 3, 1: 3, 2: 1}


def offer_stream(key, batches=(12,)):
    memory = balanced_init(jnp.int32(0), 7)
    labels, start = jnp.array(STREAM), 0
    for b, size in enumerate(batches):
        memory = balanced_add(memory, jnp.arange(start, start + size), labels[start: start + size],
                              jax.random.fold_in(key, b))
        start += size
    return memory


@pytest.mark.parametrize("batches", [(12,), (5, 4, 3)])
def test_balanced_memory_by_hand(batches):
    offer = jax.jit(lambda key: offer_stream(key, batches))
    for seed in range(4):
        memory = offer(jax.random.key(seed))
        items, labels = (np.asarray(a) for a in memory.items)
        assert int(memory.seen) == 12
        assert {c: int(np.sum(labels == c)) for c in (0, 1, 2)} == FINAL_COUNTS
        assert sorted(items[labels == 1]) == [5, 6, 9] and list(items[labels == 2]) == [8]
        assert set(items[labels == 0]) <= {0, 1, 2, 3, 4} and len(set(items[labels == 0])) == 3
        assert list(items[5:7]) == [5, 6] and list(labels[5:7]) == [1, 1]
        np.testing.assert_array_equal(np.array(STREAM)[items], labels)  # every slot keeps its sample's label


def test_balanced_memory_breaks_ties_uniformly_over_the_tied_classes():
    """Capacity 4 holding classes {0: 2, 1: 2}; a sample of class 2 replaces a slot of class 0 or class 1, each with
    probability 1/2 (uniform over the 4 tied slots). Over 2,000 keys the class-0 count is Binomial(2000, 1/2): mean
    1000, sd 22.4; within 5 sd, and each of the four slots is replaced about 500 times."""
    memory = balanced_add(balanced_init(jnp.int32(0), 4), jnp.arange(4), jnp.array([0, 1, 0, 1]), jax.random.key(0))

    def offer(key):
        return balanced_add(memory, jnp.array([9]), jnp.array([2]), key).items

    items, labels = jax.vmap(offer)(jax.random.split(jax.random.key(1), 2000))
    replaced = np.argmax(np.asarray(labels) == 2, axis=1)
    assert np.all(np.sum(np.asarray(labels) == 2, axis=1) == 1)
    lost_zero = np.sum(replaced % 2 == 0)  # slots 0 and 2 held class 0
    assert abs(lost_zero - 1000) < 5 * 22.4
    assert np.all(np.abs(np.bincount(replaced, minlength=4) - 500) < 5 * np.sqrt(2000 * 0.25 * 0.75))


def test_balanced_memory_under_vmap_equals_each_seed_alone():
    keys = jax.random.split(jax.random.key(3), 4)
    labels = jax.random.randint(jax.random.key(4), (40,), 0, 5)
    samples = (jnp.arange(40.0)[:, None] * jnp.ones(3), jnp.arange(40))

    def fill(key):
        return balanced_add(balanced_init((jnp.zeros(3), jnp.int32(0)), 10), samples, labels, key)

    batched = jax.jit(jax.vmap(fill))(keys)
    for s, key in enumerate(keys):
        alone = fill(key)
        jax.tree.map(lambda a, b: np.testing.assert_array_equal(a[s], b), batched, alone)
    assert len({tuple(np.asarray(batched.items[1][s])) for s in range(len(keys))}) > 1  # the keys matter


def balanced_reference(capacity, labels, keys, batch):
    """GDumb's rule in NumPy on the stream ``labels`` (sample i is the integer i), offered in batches of ``batch``
    with one key each; class sizes recounted from scratch at every step; the documented draw convention."""
    items, held, seen = np.zeros(capacity, int), np.zeros(capacity, int), 0
    for b, key in enumerate(keys):
        chunk = labels[b * batch: (b + 1) * batch]
        draws = np.asarray(jax.random.randint(key, (len(chunk),), 0, np.iinfo(np.int32).max))
        for i, y in enumerate(chunk):
            t = seen + i
            if t < capacity:
                items[t], held[t] = b * batch + i, y
                continue
            sizes = np.array([np.sum(held == c) for c in held])
            if np.sum(held == y) < sizes.max():
                candidates = np.flatnonzero(sizes == sizes.max())
                slot = candidates[draws[i] % len(candidates)]
                items[slot], held[slot] = b * batch + i, y
        seen += len(chunk)
    return items, held


@pytest.mark.parametrize("seed", range(3))
def test_balanced_memory_matches_a_recounting_reference(seed):
    """Random streams of 60 labels over 6 classes (skewed towards class 0), capacity 9, in batches of 12: the
    memory equals the NumPy reference's slot by slot, so the class sizes kept up to date inside a call and carried
    across calls are the recounted ones."""
    rng = np.random.default_rng(seed)
    labels = rng.choice(6, size=60, p=[0.4, 0.2, 0.1, 0.1, 0.1, 0.1])
    keys = jax.random.split(jax.random.key(seed), 5)
    memory, add = balanced_init(jnp.int32(0), 9), jax.jit(balanced_add)
    for b, key in enumerate(keys):
        memory = add(memory, jnp.arange(12 * b, 12 * b + 12), jnp.asarray(labels[12 * b: 12 * b + 12]), key)
    items, held = balanced_reference(9, labels, keys, 12)
    np.testing.assert_array_equal(memory.items[0], items)
    np.testing.assert_array_equal(memory.items[1], held)


def test_balanced_memory_draws_like_a_reservoir():
    memory = balanced_add(balanced_init(jnp.float32(0), 5), jnp.arange(3.0), jnp.array([0, 1, 1]), jax.random.key(0))
    drawn, labels = memory_sample(memory, jax.random.key(1), 200)
    assert set(np.asarray(drawn).tolist()) == {0.0, 1.0, 2.0}
    np.testing.assert_array_equal(np.asarray(labels), np.array([0, 1, 1])[np.asarray(drawn).astype(int)])


# ----------------------------------------------------------------------------------------------------------------
# Ring per task
# ----------------------------------------------------------------------------------------------------------------


def test_ring_keeps_each_tasks_most_recent_items():
    """Capacity 6 over 3 tasks: 2 slots per task (task k: slots 2k, 2k+1). Task 1 is offered 10, 11, 12, 13, 14:
    t=0 -> slot 2, t=1 -> slot 3, t=2 -> slot 2, t=3 -> slot 3, t=4 -> slot 2, so slots 2, 3 hold 14, 13. Task 0 is
    offered 1 (slot 0) and task 2 nothing; the overfilled task never writes another task's slots."""
    memory = ring_init(jnp.int32(0), 6, 3)
    memory = ring_add(memory, jnp.array([10, 11, 12]), 1)
    memory = ring_add(memory, jnp.array([1]), 0)
    memory = ring_add(memory, jnp.array([13, 14]), jnp.int32(1))
    np.testing.assert_array_equal(memory.items, [1, 0, 14, 13, 0, 0])
    np.testing.assert_array_equal(memory.seen, [1, 5, 0])
    np.testing.assert_array_equal(ring_filled(memory), [True, False, True, True, False, False])
    assert set(np.asarray(ring_sample(memory, jax.random.key(0), 300)).tolist()) == {1, 13, 14}
    assert int(ring_sample(ring_init(jnp.int32(0), 6, 3), jax.random.key(0), 1)[0]) == 0  # empty: slot 0


def test_ring_under_jit_and_vmap_over_tasks():
    memory = ring_init((jnp.zeros(2), jnp.int32(0)), 8, 4)
    samples = (jnp.ones((3, 2)), jnp.array([7, 8, 9]))
    added = jax.jit(jax.vmap(lambda k: ring_add(memory, samples, k)))(jnp.arange(4))
    for k in range(4):
        alone = ring_add(memory, samples, k)
        jax.tree.map(lambda a, b: np.testing.assert_array_equal(a[k], b), added, alone)
        # 3 items into 2 slots: slot 2k holds the third (9), slot 2k+1 the second (8)
        assert list(np.asarray(alone.items[1][2 * k: 2 * k + 2])) == [9, 8]
    # A traced task id outside the range leaves the memory unchanged.
    out = jax.jit(ring_add)(memory, samples, jnp.int32(4))
    jax.tree.map(np.testing.assert_array_equal, out, memory)


# ----------------------------------------------------------------------------------------------------------------
# Herding
# ----------------------------------------------------------------------------------------------------------------


def herding_reference(features, m):
    """The greedy rule in NumPy float64, and the smallest gap between the best and second-best score of any step."""
    f = np.asarray(features, np.float64)
    norms = np.linalg.norm(f, axis=1, keepdims=True)
    phi = f / np.where(norms > 0, norms, 1.0)
    mu = phi.mean(axis=0)
    total, picks, gap = np.zeros(f.shape[1]), [], np.inf
    for k in range(1, m + 1):
        dist = np.sum((mu - (phi + total) / k) ** 2, axis=1)
        dist[picks] = np.inf
        order = np.argsort(dist, kind="stable")
        if len(order) > k:
            gap = min(gap, dist[order[1]] - dist[order[0]])
        picks.append(int(order[0]))
        total = total + phi[order[0]]
    return picks, gap


# Four points whose normalised features are (1, 0), (0, 1), (0.6, 0.8), (-0.6, 0.8); mu = (0.25, 0.65).
POINTS = [[2.0, 0.0], [0.0, 0.5], [3.0, 4.0], [-6.0, 8.0]]
# By hand, squared distances |mu - (S + phi_i) / k|^2:
#   k=1: phi0 0.985, phi1 0.185, phi2 0.145, phi3 0.745                    -> 2, S = (0.6, 0.8)
#   k=2: phi0 (0.8, 0.4): 0.365, phi1 (0.3, 0.9): 0.065, phi3 (0, 0.8): 0.085 -> 1, S = (0.6, 1.8)
#   k=3: phi0 (0.533, 0.6): 0.0828, phi3 (0, 0.867): 0.1094                 -> 0, then 3
# Nearest-to-the-mean ordering would be 2, 1, 3, 0: herding differs at the third pick.


def test_herding_by_hand():
    assert herding_select(jnp.array(POINTS), 4).tolist() == [2, 1, 0, 3]
    assert herding_select(jnp.array(POINTS), 2).tolist() == [2, 1]
    assert herding_reference(POINTS, 4)[0] == [2, 1, 0, 3]
    # Ties go to the lowest index: four points symmetric about the origin have mu = 0 and equal distances.
    assert herding_select(jnp.array([[1.0, 0], [0, 1], [-1, 0], [0, -1]]), 4).tolist() == [0, 2, 1, 3]


def test_herding_matches_the_float64_reference_and_vmaps_over_seeds():
    n, d, m = 30, 6, 12
    feats = jax.random.normal(jax.random.key(7), (8, n, d)) + 0.5
    picks = jax.jit(jax.vmap(lambda f: herding_select(f, m)))(feats)
    for s in range(feats.shape[0]):
        want, gap = herding_reference(np.asarray(feats[s]), m)
        assert gap > 1e-5, gap  # no near tie that float32 could resolve otherwise
        assert picks[s].tolist() == want
        assert herding_select(feats[s], m).tolist() == want
        assert len(set(want)) == m


# ----------------------------------------------------------------------------------------------------------------
# Replay over either memory
# ----------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits():
    """Class-incremental digits in two tasks (classes 0-4, then 5-9), a small MLP, and 160 samples of each task
    as 5 update batches of 32."""
    x, y = load_digits_data()
    stream = split_stream(x, y, classes_per_task=5, seed=0, scenario="class")
    source = SupervisedSource(MLP(output_dim=stream.num_classes, hidden=(8,)), stream, batch_size=32)
    batches = [source.samples(SupervisedBatch(stream.x[t, 32 * b: 32 * b + 32], stream.y[t, 32 * b: 32 * b + 32],
                                              stream.train_mask[t])) for t in range(2) for b in range(5)]
    example = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape[1:], a.dtype), batches[0])
    params = source.model.init(jax.random.key(0), stream.x[0, :1])
    return source, batches, example, params


def fill(strategy, digits):
    source, batches, example, params = digits
    hp = strategy.hparams
    state = strategy.init(params, hp, example, source)
    observe = jax.jit(lambda st, s, k: strategy.observe(st, params, s, source, k, hp))
    for b, samples in enumerate(batches):
        state = observe(state, samples, jax.random.key(b))
    return state


def test_replay_by_default_keeps_the_reservoir_bitwise(digits):
    """``replay()`` (memory="reservoir" by default): the memory is exactly what reservoir_add builds from the same
    keys, and the replay loss exactly ``alpha`` times the source's loss on memory_sample's draw."""
    source, batches, example, params = digits
    want, add = memory_init(example, 16), jax.jit(reservoir_add)
    for b, samples in enumerate(batches):
        want = add(want, samples, jax.random.key(b))
    for strategy in (replay(16, 8, 0.7),):  # the default; memory="reservoir" builds the same hooks
        state = fill(strategy, digits)
        jax.tree.map(np.testing.assert_array_equal, state, want)
        key = jax.random.key(42)
        loss = strategy.replay_loss(state, params, batches[-1], source, key, strategy.hparams)
        x, y = memory_sample(want, jax.random.split(key)[0], 8)
        ref = 0.7 * source.sample_loss(params, source.rehearse(x, batches[-1]), y)
        assert np.asarray(loss).tobytes() == np.asarray(ref).tobytes()


def test_balanced_replay_by_name_keeps_every_class_equally(digits):
    """20 slots after 160 samples of classes 0-4 then 160 of classes 5-9 (about 32 of each class): every class
    keeps exactly 2 slots, each slot holding one of the offered samples with its own label."""
    source, batches, _, params = digits
    strategy = get_strategy("replay", capacity=20, batch_size=8, memory="balanced")
    state = fill(strategy, digits)
    (inputs, targets), labels = state.items
    np.testing.assert_array_equal(targets, labels)
    np.testing.assert_array_equal(np.bincount(np.asarray(labels), minlength=10), [2] * 10)
    offered = np.concatenate([np.asarray(b[0][0]) for b in batches])
    assert all(np.any(np.all(offered == row, axis=1)) for row in np.asarray(inputs[0]))
    loss = strategy.replay_loss(state, params, batches[-1], source, jax.random.key(0), strategy.hparams)
    assert np.isfinite(float(loss)) and float(loss) > 0
    with pytest.raises(ValueError, match="^memory"):
        replay(memory="ring")


# ----------------------------------------------------------------------------------------------------------------
# Errors
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("call, name", [
    (lambda: balanced_init(jnp.int32(0), 0), "capacity"),
    (lambda: balanced_add(balanced_init(jnp.int32(0), 3), jnp.arange(4), jnp.arange(3), jax.random.key(0)),
     "labels"),
    (lambda: balanced_add(balanced_init(jnp.int32(0), 3), jnp.arange(2), jnp.zeros(2), jax.random.key(0)), "labels"),
    (lambda: ring_init(jnp.int32(0), 7, 3), "capacity"),
    (lambda: ring_init(jnp.int32(0), 6, 0), "num_tasks"),
    (lambda: ring_add(ring_init(jnp.int32(0), 6, 3), jnp.arange(2), 3), "task_id"),
    (lambda: ring_sample(ring_init(jnp.int32(0), 6, 3), jax.random.key(0), 0), "n"),
    (lambda: herding_select(jnp.ones((4, 2)), 5), "m"),
    (lambda: herding_select(jnp.ones((4, 2)), 0), "m"),
    (lambda: herding_select(jnp.ones(4), 1), "features"),
])
def test_bad_sizes_raise_naming_the_argument(call, name):
    with pytest.raises(ValueError, match=rf"^{name}\b"):
        call()
