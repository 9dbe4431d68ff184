"""Tests of clloop_jax.data: loaders, permuted and split streams, scenario label maps and masks."""

import os
import random

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from clloop_jax import data as D


def tagged_data(counts, dim=5, seed=0):
    """Samples whose feature 0 is the class and feature 1 the sample index, so a stream's rows can be traced back."""
    y = np.concatenate([np.full(n, c) for c, n in enumerate(counts)]).astype(np.int32)
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(y.size, dim)).astype(np.float32)
    x[:, 0] = y
    x[:, 1] = np.arange(y.size)
    order = rng.permutation(y.size)
    return x[order], y[order]


@pytest.fixture(scope="module")
def small():
    x, y = tagged_data([7, 6, 8, 5, 6, 9])  # 6 classes, unequal counts
    xt, yt = tagged_data([3, 2, 4, 3, 3, 2], seed=1)
    xt[:, 1] += 1000  # test indices distinct from training ones
    return x, y, xt, yt


# ------------------------------------------------------------------------------------------------ permuted


def test_permutations_are_seeded_valid_and_distinct(small):
    x, y, xt, yt = small
    a = D.permuted_stream(x, y, 4, seed=3, x_test=xt, y_test=yt)
    b = D.permuted_stream(x, y, 4, seed=3, x_test=xt, y_test=yt)
    c = D.permuted_stream(x, y, 4, seed=4, x_test=xt, y_test=yt)
    np.testing.assert_array_equal(a.permutations, b.permutations)
    np.testing.assert_array_equal(a.x, b.x)
    assert not np.array_equal(a.permutations, c.permutations)
    perms = np.asarray(a.permutations)
    assert perms.shape == (4, x.shape[1])
    for t, p in enumerate(perms):
        np.testing.assert_array_equal(np.sort(p), np.arange(x.shape[1]))  # a true permutation
        inverse = np.argsort(p)
        np.testing.assert_array_equal(np.asarray(a.x[t])[:, inverse], x)  # invertible: recovers the data
        np.testing.assert_array_equal(np.asarray(a.x_test[t])[:, inverse], xt)
    assert len({tuple(p) for p in perms}) == 4  # different tasks, different permutations
    # By default task 0 is permuted too; first_identity keeps it.
    assert not np.array_equal(perms[0], np.arange(x.shape[1]))
    ident = D.permuted_stream(x, y, 4, seed=3, x_test=xt, y_test=yt, first_identity=True)
    np.testing.assert_array_equal(ident.permutations[0], np.arange(x.shape[1]))
    np.testing.assert_array_equal(ident.x[0], x)


def test_permuted_seed_may_be_a_jax_key(small):
    x, y, xt, yt = small
    a = D.permuted_stream(x, y, 3, seed=jax.random.key(0), x_test=xt, y_test=yt)
    b = D.permuted_stream(x, y, 3, seed=jax.random.key(0), x_test=xt, y_test=yt)
    c = D.permuted_stream(x, y, 3, seed=jax.random.key(1), x_test=xt, y_test=yt)
    np.testing.assert_array_equal(a.permutations, b.permutations)
    assert not np.array_equal(a.permutations, c.permutations)


def test_permuted_scenarios_hand_worked():
    # 2 tasks over 3 classes.
    x = np.arange(12, dtype=np.float32).reshape(6, 2)
    y = np.array([0, 1, 2, 0, 1, 2], np.int32)
    kw = dict(x_test=x[:3], y_test=y[:3])
    dom = D.permuted_stream(x, y, 2, seed=0, scenario="domain", **kw)
    assert dom.num_classes == 3
    np.testing.assert_array_equal(dom.y, [[0, 1, 2, 0, 1, 2]] * 2)
    np.testing.assert_array_equal(dom.train_mask, np.ones((2, 3), bool))
    np.testing.assert_array_equal(dom.test_mask, np.ones((2, 3), bool))

    task = D.permuted_stream(x, y, 2, seed=0, scenario="task", **kw)
    assert task.num_classes == 6
    np.testing.assert_array_equal(task.y, [[0, 1, 2, 0, 1, 2], [3, 4, 5, 3, 4, 5]])
    np.testing.assert_array_equal(task.y_test, [[0, 1, 2], [3, 4, 5]])
    own = np.array([[1, 1, 1, 0, 0, 0], [0, 0, 0, 1, 1, 1]], bool)
    np.testing.assert_array_equal(task.mask, own)
    np.testing.assert_array_equal(task.train_mask, own)
    np.testing.assert_array_equal(task.test_mask, own)

    cls = D.permuted_stream(x, y, 2, seed=0, scenario="class", **kw)
    np.testing.assert_array_equal(cls.y, task.y)
    np.testing.assert_array_equal(cls.train_mask, [[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1]])
    np.testing.assert_array_equal(cls.test_mask, np.ones((2, 6), bool))
    np.testing.assert_array_equal(cls.task_ids, [0, 1])


# ------------------------------------------------------------------------------------------------ split


def test_split_tasks_partition_classes_and_keep_labels(small):
    x, y, xt, yt = small
    s = D.split_stream(x, y, 2, seed=0, x_test=xt, y_test=yt, scenario="class")
    classes = np.asarray(s.classes)
    np.testing.assert_array_equal(classes, [[0, 1], [2, 3], [4, 5]])
    assert sorted(classes.ravel().tolist()) == list(range(6))  # a partition of the class set
    # Equal sizes: cut to the smallest task (classes 2,3: 8 + 5 = 13 train; 4 + 3 = 7 test).
    assert s.x.shape == (3, 13, 5) and s.y.shape == (3, 13)
    assert s.x_test.shape == (3, 5, 5)  # test: min(3+2, 4+3, 3+2) = 5
    for t in range(3):
        orig = np.asarray(s.x[t])[:, 0].astype(int)
        assert set(orig) <= set(classes[t].tolist())
        np.testing.assert_array_equal(np.asarray(s.y[t]), orig)  # identity order: label = class
        idx = np.asarray(s.x[t])[:, 1]
        assert len(set(idx)) == idx.size  # distinct samples
    # The smallest task keeps every one of its samples.
    assert sorted(np.asarray(s.x[1])[:, 1].tolist()) == sorted(x[np.isin(y, [2, 3])][:, 1].tolist())


def test_split_scenarios_hand_worked(small):
    x, y, xt, yt = small
    order = [2, 0, 1, 3, 5, 4]  # tasks {2,0}, {1,3}, {5,4}
    position = {2: 0, 0: 1, 1: 2, 3: 3, 5: 4, 4: 5}
    streams = {sc: D.split_stream(x, y, 2, seed=1, class_order=order, x_test=xt, y_test=yt, scenario=sc)
               for sc in D.SCENARIOS}
    for sc, s in streams.items():
        np.testing.assert_array_equal(s.classes, [[2, 0], [1, 3], [5, 4]])
        for t in range(3):
            orig = np.asarray(s.x[t])[:, 0].astype(int)
            want = np.array([position[c] for c in orig])
            if sc == "domain":
                want = want % 2
            np.testing.assert_array_equal(np.asarray(s.y[t]), want, err_msg=sc)
    assert streams["domain"].num_classes == 2
    np.testing.assert_array_equal(streams["domain"].train_mask, np.ones((3, 2), bool))
    own = np.array([[1, 1, 0, 0, 0, 0], [0, 0, 1, 1, 0, 0], [0, 0, 0, 0, 1, 1]], bool)
    np.testing.assert_array_equal(streams["task"].train_mask, own)
    np.testing.assert_array_equal(streams["task"].test_mask, own)
    np.testing.assert_array_equal(streams["class"].train_mask,
                                  [[1, 1, 0, 0, 0, 0], [1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]])
    np.testing.assert_array_equal(streams["class"].test_mask, np.ones((3, 6), bool))
    # Identity permutations for split streams.
    np.testing.assert_array_equal(streams["task"].permutations, np.tile(np.arange(5), (3, 1)))


def test_split_is_seeded(small):
    x, y, xt, yt = small
    a = D.split_stream(x, y, 3, seed=5, class_order="shuffle", x_test=xt, y_test=yt)
    b = D.split_stream(x, y, 3, seed=5, class_order="shuffle", x_test=xt, y_test=yt)
    np.testing.assert_array_equal(a.x, b.x)
    np.testing.assert_array_equal(a.classes, b.classes)
    assert a.classes.shape == (2, 3)
    orders = {tuple(np.asarray(D.split_stream(x, y, 3, seed=s, class_order="shuffle", x_test=xt,
                                              y_test=yt).classes).ravel()) for s in range(6)}
    assert len(orders) > 1


def test_task_selection_under_jit(small):
    x, y, xt, yt = small
    s = D.split_stream(x, y, 2, x_test=xt, y_test=yt, scenario="class")
    one = jax.jit(lambda stream, i: stream.task(i))(s, jnp.int32(2))
    np.testing.assert_array_equal(one.x, s.x[2])
    np.testing.assert_array_equal(one.train_mask, s.train_mask[2])
    assert one.num_classes == 6 and one.scenario == "class"


def test_seeded_train_test_split_when_no_test_given(small):
    x, y, _, _ = small
    xtr, ytr, xte, yte = D.train_test_split(x, y, test_fraction=0.25, seed=0)
    assert xtr.shape[0] + xte.shape[0] == x.shape[0]
    assert not set(xtr[:, 1]) & set(xte[:, 1])  # disjoint
    for c in range(6):
        assert (yte == c).sum() == max(1, round(0.25 * (y == c).sum()))  # stratified
    s = D.permuted_stream(x, y, 2, seed=0)
    assert s.x.shape[1] + s.x_test.shape[1] == x.shape[0]
    inv = np.argsort(np.asarray(s.permutations[0]))
    train_ids = set(np.asarray(s.x[0])[:, inv][:, 1])
    test_ids = set(np.asarray(s.x_test[0])[:, inv][:, 1])
    assert not train_ids & test_ids and len(train_ids | test_ids) == x.shape[0]


def test_stream_validation(small):
    x, y, xt, yt = small
    with pytest.raises(ValueError, match="classes_per_task=4 must divide the number of classes C=6"):
        D.split_stream(x, y, 4, x_test=xt, y_test=yt)
    with pytest.raises(ValueError, match="scenario must be one of"):
        D.split_stream(x, y, 2, scenario="multi")
    with pytest.raises(ValueError, match=r"y must have shape \[N\]=\(41,\).*got shape \(40,\)"):
        D.permuted_stream(x, y[:-1], 2)
    with pytest.raises(ValueError, match=r"x must have shape \[N, D\]"):
        D.permuted_stream(x[:, :, None], y, 2)
    with pytest.raises(ValueError, match="num_tasks must be an integer >= 1"):
        D.permuted_stream(x, y, 0)
    with pytest.raises(ValueError, match="x_test must have D=5"):
        D.permuted_stream(x, y, 2, x_test=xt[:, :3], y_test=yt)
    with pytest.raises(ValueError, match="given together"):
        D.permuted_stream(x, y, 2, x_test=xt)
    with pytest.raises(ValueError, match="class_order must be a permutation"):
        D.split_stream(x, y, 2, class_order=[0, 1, 2, 3, 4, 4], x_test=xt, y_test=yt)
    with pytest.raises(ValueError, match="seed must be an integer"):
        D.permuted_stream(x, y, 2, seed=1.5)


# ------------------------------------------------------------------------------------------------ masked outputs


def test_masked_logits_zero_probability_and_accuracy():
    logits = jnp.array([[5.0, 1.0, 2.0, 0.0], [0.0, 3.0, 9.0, 1.0]])
    mask = jnp.array([False, True, True, False])
    p = jax.nn.softmax(D.masked_logits(logits, mask), axis=-1)
    np.testing.assert_array_equal(np.asarray(p)[:, [0, 3]], 0.0)  # exactly zero
    np.testing.assert_allclose(np.asarray(p).sum(-1), 1.0, rtol=1e-6)
    want = np.exp([[1.0, 2.0], [3.0, 9.0]])
    np.testing.assert_allclose(np.asarray(p)[:, 1:3], want / want.sum(-1, keepdims=True), rtol=1e-6)
    y = jnp.array([1, 2])
    # Unmasked, sample 0 predicts class 0 (wrong); masked it predicts 2 (still wrong); sample 1 predicts 2.
    assert float(D.accuracy(logits, y)) == pytest.approx(0.5)
    assert float(D.accuracy(logits, y, mask)) == pytest.approx(0.5)
    assert float(D.accuracy(logits, jnp.array([2, 2]), mask)) == pytest.approx(1.0)
    # Per-sample masks broadcast too.
    rows = jnp.array([[True, False, False, False], [False, True, False, False]])
    assert float(D.accuracy(logits, jnp.array([0, 1]), rows)) == pytest.approx(1.0)
    # Cross-entropy against a float64 reference over the unmasked classes.
    ref = -np.mean([np.log(want[0, 0] / want[0].sum()), np.log(want[1, 1] / want[1].sum())])
    assert float(D.masked_cross_entropy(logits, y, mask)) == pytest.approx(ref, rel=1e-5)
    # A label on a masked class gets no probability: the gradient wrt masked logits is zero.
    g = jax.grad(lambda l: D.masked_cross_entropy(l, y, mask))(logits)
    np.testing.assert_array_equal(np.asarray(g)[:, [0, 3]], 0.0)
    with pytest.raises(ValueError, match="mask must have the logits' class axis 4"):
        D.masked_logits(logits, jnp.ones(3, bool))
    with pytest.raises(ValueError, match=r"y must have shape \(2,\)"):
        D.accuracy(logits, jnp.zeros(3, jnp.int32))


# ------------------------------------------------------------------------------------------------ loaders


def test_load_digits_shapes_and_ranges():
    pytest.importorskip("sklearn")
    x, y = D.load_digits_data()
    assert x.shape == (1797, 64) and x.dtype == np.float32
    assert y.shape == (1797,) and y.dtype == np.int32
    assert x.min() == 0.0 and x.max() == 1.0
    assert sorted(np.unique(y).tolist()) == list(range(10))
    xtr, ytr, xte, yte = D.load_dataset("digits", seed=0)
    assert xtr.shape[0] + xte.shape[0] == 1797 and abs(xte.shape[0] - 360) <= 10
    s = D.split_stream(xtr, ytr, 2, x_test=xte, y_test=yte)
    assert s.x.shape[0] == 5 and s.num_classes == 10


@pytest.fixture()
def mnist1d_module():
    return pytest.importorskip("mnist1d.data")


def test_mnist1d_generated_cached_and_global_rng_untouched(tmp_path, monkeypatch, mnist1d_module):
    np.random.seed(1234)
    random.seed(99)
    np_state, py_state = np.random.get_state(), random.getstate()

    first = D.load_mnist1d(cache_dir=tmp_path / "a", seed=3, num_samples=100)
    # The caller's global RNGs are exactly as they were.
    after = np.random.get_state()
    assert after[0] == np_state[0] and np.array_equal(after[1], np_state[1]) and after[2:] == np_state[2:]
    assert random.getstate() == py_state

    x_train, y_train, x_test, y_test = first
    assert x_train.shape == (80, 40) and x_test.shape == (20, 40)
    assert x_train.dtype == np.float32 and y_train.dtype == np.int32 and y_test.dtype == np.int32
    assert set(np.unique(np.concatenate([y_train, y_test])).tolist()) == set(range(10))

    files = os.listdir(tmp_path / "a")
    assert len(files) == 1 and files[0].endswith(".npz")  # no temporary file left behind
    path = tmp_path / "a" / files[0]
    mtime = path.stat().st_mtime_ns

    # Deterministic for a seed: a fresh generation elsewhere gives the same arrays; another seed differs.
    again = D.load_mnist1d(cache_dir=tmp_path / "b", seed=3, num_samples=100)
    for u, v in zip(first, again):
        np.testing.assert_array_equal(u, v)
    other = D.load_mnist1d(cache_dir=tmp_path / "a", seed=4, num_samples=100)
    assert not np.array_equal(other[0], x_train)
    assert len(os.listdir(tmp_path / "a")) == 2  # keyed by the arguments

    # The cached file is reused: the generator is not called again and the file is not rewritten.
    def boom(*args, **kwargs):
        raise AssertionError("the generator ran although a cached file exists")

    monkeypatch.setattr(mnist1d_module, "make_dataset", boom)
    cached = D.load_mnist1d(cache_dir=tmp_path / "a", seed=3, num_samples=100)
    for u, v in zip(first, cached):
        np.testing.assert_array_equal(u, v)
    assert path.stat().st_mtime_ns == mtime

    # The environment variable names the default cache directory.
    monkeypatch.setenv("CLLOOP_JAX_CACHE", str(tmp_path / "a"))
    from_env = D.load_mnist1d(seed=3, num_samples=100)
    np.testing.assert_array_equal(from_env[0], x_train)


def test_mnist1d_regenerates_over_a_corrupt_cache(tmp_path, mnist1d_module):
    ref = D.load_mnist1d(cache_dir=tmp_path, seed=5, num_samples=50)
    (path,) = list(tmp_path.iterdir())
    path.write_bytes(b"not a zip file")
    again = D.load_mnist1d(cache_dir=tmp_path, seed=5, num_samples=50)
    np.testing.assert_array_equal(ref[0], again[0])
    with pytest.raises(ValueError, match="num_samples must be an integer >= 10"):
        D.load_mnist1d(cache_dir=tmp_path, num_samples=5)


@pytest.mark.parametrize("damage", ["empty", "truncated", "corrupted_member"])
def test_mnist1d_regenerates_an_empty_or_truncated_cache(tmp_path, mnist1d_module, damage):
    ref = D.load_mnist1d(cache_dir=tmp_path, seed=5, num_samples=50)
    (path,) = list(tmp_path.iterdir())
    whole = path.read_bytes()
    if damage == "empty":          # np.load alone raises EOFError
        path.write_bytes(b"")
    elif damage == "truncated":    # np.load alone raises zipfile.BadZipFile (no central directory)
        path.write_bytes(whole[: len(whole) // 2])
    else:                          # a flipped byte inside x_train: a CRC error on reading the member
        data = bytearray(whole)
        data[200] ^= 0xFF
        path.write_bytes(bytes(data))
    again = D.load_mnist1d(cache_dir=tmp_path, seed=5, num_samples=50)
    for u, v in zip(ref, again):
        np.testing.assert_array_equal(u, v)
    assert path.read_bytes() == whole  # the file was replaced by a complete one
    assert len(list(tmp_path.iterdir())) == 1


@pytest.mark.parametrize("kwargs,error,pattern", [
    (dict(num_samples=None), TypeError, r"num_samples must be an integer >= 10, got None"),
    (dict(num_samples=True), TypeError, r"num_samples must be an integer >= 10, got bool True"),
    (dict(num_samples=100.0), TypeError, r"num_samples .* got float 100.0; pass 100"),
    (dict(seed=-1), ValueError, r"seed must be an integer in \[0, 4294967295\], got int -1"),
    (dict(seed="3"), TypeError, r"seed must be an integer"),
    (dict(cache_dir=3), TypeError, r"cache_dir must be a path"),
])
def test_mnist1d_arguments_are_checked_before_generating(tmp_path, kwargs, error, pattern):
    kwargs.setdefault("cache_dir", tmp_path)
    with pytest.raises(error, match=pattern):
        D.load_mnist1d(**kwargs)
    assert not any(tmp_path.iterdir())  # nothing generated or written


@pytest.mark.parametrize("seed,error", [(-1, ValueError), (1.5, TypeError), ("0", TypeError), (True, TypeError),
                                        (None, TypeError), (jax.random.split(jax.random.key(0), 2), ValueError)])
def test_stream_seeds_are_checked(small, seed, error):
    x, y, xt, yt = small
    calls = [lambda: D.permuted_stream(x, y, 2, seed=seed, x_test=xt, y_test=yt),
             lambda: D.split_stream(x, y, 2, seed=seed, x_test=xt, y_test=yt),
             lambda: D.train_test_split(x, y, seed=seed)]
    for call in calls:
        with pytest.raises(error, match=r"^seed must be"):
            call()


def test_stream_arguments_are_checked(small):
    x, y, xt, yt = small
    with pytest.raises(TypeError, match="num_tasks must be an integer >= 1, got bool True"):
        D.permuted_stream(x, y, True)
    with pytest.raises(TypeError, match="num_tasks .* got float 2.0"):
        D.permuted_stream(x, y, 2.0)
    assert D.permuted_stream(x, y, np.int64(2), x_test=xt, y_test=yt).num_tasks == 2
    with pytest.raises(TypeError, match="classes_per_task"):
        D.split_stream(x, y, "2")
    with pytest.raises(TypeError, match="first_identity must be True or False"):
        D.permuted_stream(x, y, 2, first_identity="yes")
    with pytest.raises(ValueError, match=r"scenario must be one of .*did you mean 'domain'"):
        D.permuted_stream(x, y, 2, scenario="domian")
    with pytest.raises(TypeError, match=r"test_fraction must be a finite number in \(0, 1\), got str"):
        D.train_test_split(x, y, test_fraction="0.2")
    with pytest.raises(ValueError, match=r"test_fraction must be a finite number in \(0, 1\), got float nan"):
        D.permuted_stream(x, y, 2, test_fraction=float("nan"))
    with pytest.raises(TypeError, match=r"^x must be a real numeric array"):
        D.train_test_split([["a", "b"]], [0])
    with pytest.raises(TypeError, match=r"^y must be a real numeric array, got None"):
        D.train_test_split(x, None)
    with pytest.raises(ValueError, match=r"^x must hold finite numbers"):
        D.train_test_split(np.full((4, 2), np.nan), np.arange(4))
    with pytest.raises(ValueError, match=r"name must be one of \['digits', 'mnist1d', 'mnist'\]"):
        D.load_dataset("cifar")


def test_real_mnist_split_is_fixed_balanced_and_scaled():
    from clloop_jax.data.loaders import load_dataset, load_mnist
    x, y, x_test, y_test = load_mnist()
    assert x.shape == (4000, 784) and x_test.shape == (1000, 784) and x.dtype == np.float32
    assert float(x.min()) == 0.0 and float(x.max()) == 1.0
    np.testing.assert_array_equal(np.bincount(y), 400)
    np.testing.assert_array_equal(np.bincount(y_test), 100)
    again = load_dataset("mnist")
    for a, b in zip((x, y, x_test, y_test), again):
        np.testing.assert_array_equal(a, b)
    # Train and test images are disjoint (no image of the test split is in the training split).
    train_rows = {r.tobytes() for r in x[y == 3]}
    assert not any(r.tobytes() in train_rows for r in x_test[y_test == 3])
