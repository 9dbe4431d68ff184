"""The image pipeline: the augmentation (random crop with zero padding, horizontal flip) against a NumPy reference,
its draws' distribution, a labelled source that augments its training batches only, and streams that keep pixel
bytes (uint8) and read them as exactly the floats of a float32 stream."""
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from clloop_jax.data import PIXEL_VALUES, ImageAugmentation, crop_flip, load_mnist, pixel_values, split_stream
from clloop_jax.data.streams import permuted_stream
from clloop_jax.model import MLP
from clloop_jax.run.config import RunConfig
from clloop_jax.run.sequential import make_run
from clloop_jax.sources.supervised import SupervisedSource


def crop_flip64(images, offsets, flips, padding):
    """NumPy float64: pad with zeros, cut the window at (row, column), mirror left-right where asked."""
    n, h, w, _ = images.shape
    padded = np.pad(np.asarray(images, np.float64), ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    out = np.stack([padded[i, r:r + h, c:c + w] for i, (r, c) in enumerate(offsets)])
    return np.where(np.asarray(flips)[:, None, None, None], out[:, :, ::-1], out)


def test_crop_flip_is_the_padded_window_mirrored_by_hand():
    image = np.arange(1.0, 10.0).reshape(1, 3, 3, 1)            # 1 2 3 / 4 5 6 / 7 8 9
    got = crop_flip(jnp.asarray(image), jnp.array([[0, 0]]), jnp.array([False]), 1)
    np.testing.assert_array_equal(got[0, :, :, 0], [[0, 0, 0], [0, 1, 2], [0, 4, 5]])   # the top-left window
    got = crop_flip(jnp.asarray(image), jnp.array([[2, 1]]), jnp.array([True]), 1)
    np.testing.assert_array_equal(got[0, :, :, 0], [[6, 5, 4], [9, 8, 7], [0, 0, 0]])   # bottom, mirrored
    got = crop_flip(jnp.asarray(image), jnp.array([[1, 1]]), jnp.array([False]), 1)
    np.testing.assert_array_equal(got, image)                                            # the centre: unchanged


def test_crop_flip_equals_the_float64_reference_on_random_images():
    rng = np.random.default_rng(0)
    images = rng.uniform(size=(6, 5, 7, 3)).astype(np.float32)
    offsets = rng.integers(0, 9, size=(6, 2))
    flips = rng.uniform(size=6) < 0.5
    got = crop_flip(jnp.asarray(images), jnp.asarray(offsets), jnp.asarray(flips), 4)
    np.testing.assert_array_equal(got, crop_flip64(images, offsets, flips, 4).astype(np.float32))


def test_each_sample_draws_one_of_the_windows_and_flips_uniformly():
    aug = ImageAugmentation((3, 3, 1), crop_padding=1)
    images = np.broadcast_to(np.arange(1.0, 10.0, dtype=np.float32).reshape(1, 3, 3, 1), (3000, 3, 3, 1))
    out = np.asarray(aug(jax.random.key(0), jnp.asarray(images)))
    candidates = {(r, c, f): crop_flip64(images[:1], [(r, c)], [f], 1)[0]
                  for r, c, f in itertools.product(range(3), range(3), (False, True))}
    drawn = []
    for sample in out:
        (which,) = [k for k, v in candidates.items() if np.array_equal(v, sample)]   # exactly one window and flip
        drawn.append(which)
    counts = {k: drawn.count(k) for k in candidates}
    assert all(abs(n / 3000 - 1 / 18) < 0.02 for n in counts.values()), counts   # 18 equally likely outcomes
    assert abs(np.mean([f for _, _, f in drawn]) - 0.5) < 0.04


def test_flat_rows_keys_and_vmap():
    aug = ImageAugmentation((4, 4, 2), crop_padding=2)
    x = jnp.asarray(np.random.default_rng(1).uniform(size=(5, 32)), jnp.float32)     # flat rows, H W C row-major
    key = jax.random.key(3)
    flat = aug(key, x)
    np.testing.assert_array_equal(flat, aug(key, x.reshape(5, 4, 4, 2)).reshape(5, 32))
    np.testing.assert_array_equal(flat, aug(key, x))                                    # a pure function of the key
    assert not np.array_equal(flat, aug(jax.random.key(4), x))
    keys = jax.random.split(key, 3)
    per_key = jax.vmap(aug, in_axes=(0, None))(keys, x)
    for i in range(3):
        np.testing.assert_array_equal(per_key[i], aug(keys[i], x))
    unflipped = ImageAugmentation((4, 4, 2), crop_padding=0, flip=False)
    np.testing.assert_array_equal(unflipped(key, x), x)                                 # no crop, no flip: x


@pytest.mark.parametrize("kwargs, error, match", [
    ({"image_shape": (32, 32)}, ValueError, r"image_shape must be \(H, W, C\)"),
    ({"image_shape": (32, 0, 3)}, ValueError, r"image_shape\[W\]"),
    ({"image_shape": (8, 8, 1), "crop_padding": -1}, ValueError, "crop_padding"),
    ({"image_shape": (8, 8, 1), "flip": 1}, TypeError, "flip must be True or False"),
])
def test_bad_settings_are_named(kwargs, error, match):
    with pytest.raises(error, match=match):
        ImageAugmentation(**kwargs)


@pytest.fixture(scope="module")
def stream():
    rng = np.random.default_rng(2)
    x = rng.uniform(size=(60, 16)).astype(np.float32)           # 4 x 4 x 1 images, flat
    return split_stream(x, np.arange(60) % 4, classes_per_task=2, seed=0, scenario="task")


def test_a_source_augments_its_training_batches_and_nothing_else(stream):
    plain = SupervisedSource(MLP(output_dim=stream.num_classes, hidden=(8,)), stream, batch_size=10)
    aug = ImageAugmentation((4, 4, 1), crop_padding=1)
    source = SupervisedSource(MLP(output_dim=stream.num_classes, hidden=(8,)), stream, batch_size=10, augment=aug)
    assert source != plain and source == SupervisedSource(plain.model, stream, batch_size=10, augment=aug)
    task = stream.task(0)
    key = jax.random.key(5)
    k_idx, k_aug = jax.random.split(key)
    batch = source.batch(key, None, task, source.hparams)
    idx = jax.random.choice(k_idx, task.x.shape[0], (10,), replace=False)
    np.testing.assert_array_equal(batch.x, aug(k_aug, task.x[idx]))                  # the rows, augmented
    np.testing.assert_array_equal(batch.y, task.y[idx])
    assert not np.array_equal(batch.x, task.x[idx])
    unaugmented = plain.batch(key, None, task, plain.hparams)                          # no augmentation: as before
    np.testing.assert_array_equal(unaugmented.x, task.x[jax.random.choice(key, task.x.shape[0], (10,),
                                                                           replace=False)])
    (fx, _), _ = source.fisher_data(key, None, task, source.hparams)                    # the Fisher's samples: stored
    np.testing.assert_array_equal(fx, plain.fisher_data(key, None, task, plain.hparams)[0][0])
    params = source.init_params(jax.random.key(0))
    assert source.score(key, params, task, source.hparams) == plain.score(key, params, task, plain.hparams)


def test_a_source_refuses_an_augmentation_that_does_not_fit(stream):
    model = MLP(output_dim=stream.num_classes, hidden=(8,))
    with pytest.raises(ValueError, match=r"augment.image_shape \(4, 4, 3\) must hold the stream's 16 features"):
        SupervisedSource(model, stream, augment=ImageAugmentation((4, 4, 3)))
    with pytest.raises(TypeError, match="augment must be None or a clloop_jax.data.ImageAugmentation, got dict"):
        SupervisedSource(model, stream, augment={"crop_padding": 4})


# ----- pixel bytes ------------------------------------------------------------------------------------------------


def test_a_byte_reads_as_its_float64_scaling_rounded_once():
    everything = np.arange(256, dtype=np.uint8)
    want = (everything.astype(np.float64) / 255.0).astype(np.float32)
    np.testing.assert_array_equal(PIXEL_VALUES, want)
    np.testing.assert_array_equal(jax.jit(pixel_values)(jnp.asarray(everything)), want)    # in a program too
    floats = jnp.asarray(want)
    assert pixel_values(floats) is floats                                                  # floats pass through
    x, y, xt, yt = load_mnist(pixels="uint8")
    assert x.dtype == np.uint8 and x.shape == (4000, 784)
    np.testing.assert_array_equal(PIXEL_VALUES[x], load_mnist()[0])                         # load_mnist's floats
    np.testing.assert_array_equal(y, load_mnist()[1])
    with pytest.raises(ValueError, match="pixels must be one of"):
        load_mnist(pixels="float16")


def test_a_stream_of_bytes_holds_a_quarter_and_runs_bitwise_as_the_float_stream():
    rng = np.random.default_rng(4)
    x = rng.integers(0, 256, size=(120, 16), dtype=np.uint8)
    y = np.arange(120) % 4
    as_bytes = permuted_stream(x, y, 3, seed=0)
    as_floats = permuted_stream(PIXEL_VALUES[x], y, 3, seed=0)
    assert as_bytes.x.dtype == jnp.uint8 and as_bytes.x_test.dtype == jnp.uint8
    assert as_bytes.x.nbytes * 4 == as_floats.x.nbytes
    model = MLP(output_dim=as_bytes.num_classes, hidden=(8,))
    results = []
    for stream in (as_bytes, as_floats):
        source = SupervisedSource(model, stream, batch_size=16, fisher_size=8, eval_size=10)
        run = make_run(RunConfig(strategy="replay", episodes_per_task=4, monitors=()), source)
        results.append(run(jax.random.key(0), run.hparams(learning_rate=1e-2)))
    (s_b, r_b), (s_f, r_f) = results
    for a, b in zip(jax.tree.leaves((s_b.params, s_b.strategy, r_b.R, r_b.traces)),
                    jax.tree.leaves((s_f.params, s_f.strategy, r_f.R, r_f.traces)), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    with pytest.raises(ValueError, match="x_test must be pixel bytes .uint8. exactly when x is"):
        permuted_stream(x, y, 2, x_test=PIXEL_VALUES[x], y_test=y)
