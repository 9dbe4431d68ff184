"""Tests of the batch-norm backbones (ConvNet, ResNet18) and of batch-norm models through the run: batch norm's
normalisation and running averages against float64 NumPy, the Fisher with frozen statistics against a float64
per-sample reference, penalties and the optimizer blind to the running averages, and a whole run on CIFAR-format
files read from disk."""
import pickle

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from clloop_jax import ConvNet, ResNet18, RunConfig, SupervisedSource, make_run
from clloop_jax.data.augment import ImageAugmentation
from clloop_jax.data.files import load_cifar
from clloop_jax.data.streams import MASK_VALUE, split_stream
from clloop_jax.backbones import BN_EPSILON, BN_MOMENTUM

COLOURS = np.array([[0.9, 0.1, 0.1], [0.1, 0.9, 0.1], [0.1, 0.1, 0.9], [0.9, 0.9, 0.1]])


def colour_images(n, size, seed, classes=4):
    """``n`` images ``[size, size, 3]`` in ``[0, 1]`` whose class is their colour (plus noise), and the labels."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % classes
    x = COLOURS[y][:, None, None, :] * 0.7 + 0.3 * rng.random((n, size, size, 3))
    return x.astype(np.float32), y.astype(np.int32)


def colour_source(model, size=6, n=96, batch_size=16, scenario="task"):
    x, y = colour_images(n, size, seed=0)
    stream = split_stream(x.reshape(n, -1), y, classes_per_task=2, seed=0, scenario=scenario)
    return SupervisedSource(model, stream, batch_size=batch_size, fisher_size=8)


def tiny_convnet(**kw):
    return ConvNet(**{"output_dim": 4, "channels": (3,), "image_shape": (6, 6, 3), **kw})


def conv3x3_same(x, kernel):
    """A 3x3 "SAME" convolution in float64 NumPy: ``x [N, H, W, C]``, ``kernel [3, 3, C, O]``."""
    x, kernel = np.asarray(x, np.float64), np.asarray(kernel, np.float64)
    pad = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    H, W = x.shape[1:3]
    return sum(pad[:, dy:dy + H, dx:dx + W, :] @ kernel[dy, dx] for dy in range(3) for dx in range(3))


# ------------------------------------------------------------------------------------------------------ the models
def test_training_mode_normalises_each_channel_over_the_batch():
    model = ConvNet(output_dim=2, channels=(5,))
    x = jnp.asarray(np.random.default_rng(1).normal(2.0, 3.0, (7, 6, 6, 2)), jnp.float32)
    variables = model.init(jax.random.key(0), x)
    _, state = model.apply(variables, x, train=True, mutable=["batch_stats", "intermediates"],
                           capture_intermediates=lambda mdl, _: isinstance(mdl, nn.BatchNorm))
    normalised = np.asarray(state["intermediates"]["bn_0"]["__call__"][0], np.float64)
    conv = conv3x3_same(x, variables["params"]["conv_0"]["kernel"])
    mean, var = conv.mean(axis=(0, 1, 2)), conv.var(axis=(0, 1, 2))
    np.testing.assert_allclose(normalised, (conv - mean) / np.sqrt(var + BN_EPSILON), atol=2e-4)
    np.testing.assert_allclose(normalised.mean(axis=(0, 1, 2)), 0.0, atol=1e-5)
    np.testing.assert_allclose(normalised.var(axis=(0, 1, 2)), var / (var + BN_EPSILON), rtol=1e-4)
    # evaluation mode: the running averages (0 and 1 at initialisation), not the batch's statistics
    _, frozen = model.apply(variables, x, mutable=["intermediates"],
                            capture_intermediates=lambda mdl, _: isinstance(mdl, nn.BatchNorm))
    np.testing.assert_allclose(np.asarray(frozen["intermediates"]["bn_0"]["__call__"][0]),
                               conv / np.sqrt(1 + BN_EPSILON), rtol=1e-4, atol=1e-4)


def test_flat_inputs_and_leading_axes_read_as_images():
    model = ConvNet(output_dim=3, channels=(2, 2), image_shape=(4, 4, 2))
    x = jnp.asarray(np.random.default_rng(2).normal(size=(2, 3, 4, 4, 2)), jnp.float32)
    variables = model.init(jax.random.key(0), x[0, 0])
    images = model.apply(variables, x)
    np.testing.assert_array_equal(np.asarray(model.apply(variables, x.reshape(2, 3, 32))), np.asarray(images))
    np.testing.assert_allclose(np.asarray(model.apply(variables, x[1, 2])), np.asarray(images[1, 2]), atol=1e-6)


def test_resnet18_has_the_reduced_architecture():
    nf, K = 3, 7
    variables = jax.eval_shape(ResNet18(output_dim=K, nf=nf).init, jax.random.key(0), jnp.zeros((1, 8, 8, 3)))
    count = 9 * 3 * nf + 2 * nf                                  # 3x3 stem, BN
    width_in = nf
    for stage in range(4):
        w = nf * 2 ** stage
        count += 9 * width_in * w + 9 * w * w + 4 * w            # block 1: two 3x3 convs, two BNs
        if stage > 0:
            count += width_in * w + 2 * w                        # 1x1 shortcut with BN where the width changes
        count += 2 * (9 * w * w) + 4 * w                         # block 2
        width_in = w
    count += 8 * nf * K + K                                      # linear head on 8nf pooled features
    assert sum(v.size for v in jax.tree.leaves(variables["params"])) == count
    assert set(variables["batch_stats"]["stage_2_block_1"]) == {"bn_1", "bn_2", "shortcut_bn"}
    assert "shortcut_bn" not in variables["batch_stats"]["stage_1_block_1"]
    # stride 2 in stages 2-4: 32x32 -> 4x4 before pooling (GEM's avg_pool2d(out, 4))
    _, inter = jax.eval_shape(lambda v: ResNet18(output_dim=K, nf=nf).apply(
        v, jnp.zeros((1, 32, 32, 3)), capture_intermediates=True, mutable=["intermediates"]), variables)
    assert inter["intermediates"]["stage_4_block_2"]["__call__"][0].shape == (1, 4, 4, 8 * nf)


@pytest.mark.parametrize("build, match", [
    (lambda: ConvNet(output_dim=0), "ConvNet.output_dim"),
    (lambda: ConvNet(output_dim=2, channels=()), "ConvNet.channels"),
    (lambda: ConvNet(output_dim=2, channels=(4, 0)), r"ConvNet.channels\[1\]"),
    (lambda: ConvNet(output_dim=2, image_shape=(28, 28)), "ConvNet.image_shape"),
    (lambda: ResNet18(output_dim=2, nf=0), "ResNet18.nf"),
    (lambda: ResNet18(output_dim=2, image_shape=(32, 32, 0)), r"ResNet18.image_shape\[C\]"),
])
def test_invalid_attributes_are_refused(build, match):
    with pytest.raises((ValueError, TypeError), match=match):
        build()


def test_inputs_of_the_wrong_shape_are_refused():
    model = ConvNet(output_dim=2, channels=(2,), image_shape=(4, 4, 1))
    with pytest.raises(ValueError, match=r"ConvNet: x: expected shape \[..., 16\]"):
        model.init(jax.random.key(0), jnp.zeros((15,)))
    with pytest.raises(ValueError, match="ResNet18: x: expected images"):
        ResNet18(output_dim=2).init(jax.random.key(0), jnp.zeros((3, 16)))


# ------------------------------------------------------------------------------------------------ through the run
@pytest.fixture(scope="module")
def ewc_run():
    src = colour_source(tiny_convnet())
    run = make_run(RunConfig(strategy="ewc", episodes_per_task=2, fisher_variant="exact"), src)
    return run, run.hparams(lam=10.0)


def test_one_update_stores_the_running_averages_by_the_momentum_formula(ewc_run):
    run, hp = ewc_run
    src = run.source
    key = jax.random.key(3)
    state = run.init(key, hp)
    assert src.model_state and set(state.params) == {"params"} and set(state.model_state) == {"batch_stats"}
    batch = src.batch(jax.random.key(4), state.params, jax.tree.map(lambda a: a[0], src.tasks), hp.source)
    new, trace = jax.jit(run.update)(state, batch, jax.random.key(5), hp)
    assert bool(trace["finite"])
    conv = conv3x3_same(np.asarray(batch.x).reshape(-1, 6, 6, 3), state.params["params"]["conv_0"]["kernel"])
    stats = new.model_state["batch_stats"]["bn_0"]
    np.testing.assert_allclose(stats["mean"], BN_MOMENTUM * 0.0 + (1 - BN_MOMENTUM) * conv.mean(axis=(0, 1, 2)),
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(stats["var"], BN_MOMENTUM * 1.0 + (1 - BN_MOMENTUM) * conv.var(axis=(0, 1, 2)),
                               rtol=1e-5, atol=1e-6)
    # a non-finite step stores nothing, the running averages included
    skipped, trace = jax.jit(run.update)(new, batch._replace(x=batch.x.at[0, 0].set(jnp.nan)), jax.random.key(5), hp)
    assert not bool(trace["finite"])
    for a, b in zip(jax.tree.leaves(skipped), jax.tree.leaves(new)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def reference_predict(params, stats, x, mask):
    """The tiny ConvNet in inference mode, by hand in float64: conv -> (h - mean) / sqrt(var + eps) * scale + bias
    -> relu -> 2x2 max-pool -> dense, masked."""
    p = params["params"]
    h = jax.lax.conv_general_dilated(x[None], p["conv_0"]["kernel"], (1, 1), "SAME",
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))[0]
    bn, s = p["bn_0"], stats["batch_stats"]["bn_0"]
    h = jax.nn.relu((h - s["mean"]) / jnp.sqrt(s["var"] + BN_EPSILON) * bn["scale"] + bn["bias"])
    H, W, C = h.shape
    h = h.reshape(H // 2, 2, W // 2, 2, C).max(axis=(1, 3)).reshape(-1)
    logits = h @ p["head"]["kernel"] + p["head"]["bias"]
    return jnp.where(mask, logits, MASK_VALUE)


def test_fisher_of_a_batch_norm_model_is_the_per_sample_fisher_with_frozen_statistics(ewc_run):
    run, hp = ewc_run
    src = run.source
    state = run.init(jax.random.key(0), hp)
    rng = np.random.default_rng(7)
    # running averages far from the batch's statistics: a Fisher in training mode would differ
    stats = jax.tree.map(lambda a: jnp.asarray(rng.uniform(0.5, 2.0, a.shape), jnp.float32), state.model_state)
    params = jax.tree.map(lambda a: a + jnp.asarray(0.3 * rng.standard_normal(a.shape), a.dtype), state.params)
    task = jax.tree.map(lambda a: a[1], src.tasks)
    data = src.fisher_data(jax.random.key(1), params, task, hp.source)
    fisher = jax.jit(lambda p, d, s: run.importance(jax.random.key(2), p, d, hp, "fisher", s))(params, data, stats)
    (x, mask), y = data
    with jax.enable_x64(True):
        p64, s64 = (jax.tree.map(lambda a: jnp.asarray(np.asarray(a), jnp.float64), t) for t in (params, stats))
        x64 = jnp.asarray(np.asarray(x), jnp.float64).reshape(-1, 6, 6, 3)

        def one(xi, mi):
            logp = lambda p: jax.nn.log_softmax(reference_predict(p, s64, xi, mi))  # noqa: E731
            probs = jnp.exp(logp(p64))
            grads = jax.jacrev(logp)(p64)                     # d log p_c / d theta for every class c
            return jax.tree.map(lambda g: jnp.einsum("c,c...->...", probs, g ** 2), grads)

        expected = jax.tree.map(lambda a: np.asarray(jnp.mean(a, axis=0)), jax.vmap(one)(x64, jnp.asarray(mask)))
    assert jax.tree.structure(fisher) == jax.tree.structure(expected)
    for got, want in zip(jax.tree.leaves(fisher), jax.tree.leaves(expected)):
        np.testing.assert_allclose(np.asarray(got), want, rtol=2e-4, atol=1e-7)
    assert max(float(np.max(v)) for v in jax.tree.leaves(expected)) > 1e-3


def test_ewc_penalty_and_the_step_do_not_see_the_running_averages(ewc_run):
    run, hp = ewc_run
    src = run.source
    state = run.init(jax.random.key(0), hp)
    data = src.fisher_data(jax.random.key(1), state.params, jax.tree.map(lambda a: a[0], src.tasks), hp.source)
    state = jax.jit(lambda s: run.consolidate(s, jax.random.key(2), 0, data, hp))(state)
    moved = state._replace(params=jax.tree.map(lambda a: a + 0.05, state.params))
    other = moved._replace(model_state=jax.tree.map(lambda a: a * 3.0 + 1.0, moved.model_state))
    batch = src.batch(jax.random.key(4), moved.params, jax.tree.map(lambda a: a[1], src.tasks), hp.source)
    update = jax.jit(run.update)
    a, trace_a = update(moved, batch, jax.random.key(5), hp)
    b, trace_b = update(other, batch, jax.random.key(5), hp)
    assert float(trace_a["penalty"]) > 0
    assert float(trace_a["penalty"]) == float(trace_b["penalty"]) and float(trace_a["loss"]) == float(trace_b["loss"])
    for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert not np.allclose(a.model_state["batch_stats"]["bn_0"]["var"], b.model_state["batch_stats"]["bn_0"]["var"])


@pytest.mark.parametrize("strategy", ["l2", "ewc"])
def test_penalties_and_optimizer_hold_no_running_averages(strategy):
    run = make_run(RunConfig(strategy=strategy, episodes_per_task=1), colour_source(tiny_convnet()))
    state = run.init(jax.random.key(0), run.hparams())
    paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path((state.opt_state,
                                                                                       state.strategy))]
    assert paths and not any("batch_stats" in p or "'mean'" in p or "'var'" in p for p in paths)
    n_params = len(jax.tree.leaves(state.params))
    assert len(jax.tree.leaves(state.strategy.anchor)) == n_params
    assert jax.tree.structure(state.strategy.anchor) == jax.tree.structure(state.params)


def test_evaluate_asks_for_the_running_averages(ewc_run):
    run, hp = ewc_run
    state = run.init(jax.random.key(0), hp)
    with pytest.raises(ValueError, match="model_state"):
        run.evaluate(state.params, jax.random.key(0), hp)
    with pytest.raises(ValueError, match="with_model_state"):
        run.source.predict(state.params, (jnp.zeros((108,)), jnp.ones((4,), bool)))


# ----------------------------------------------------------------------------------------------- a whole run, files
def write_cifar10(folder, x, y, x_test, y_test):
    """CIFAR-10's python batches: ``data`` uint8 [N, 3072] as red, green, blue planes; five train batches."""
    folder.mkdir()
    rows = lambda images: (np.clip(images, 0, 1) * 255).astype(np.uint8).transpose(0, 3, 1, 2).reshape(len(images), -1)  # noqa: E731,E501
    for i, part in enumerate(np.array_split(np.arange(len(x)), 5)):
        with open(folder / f"data_batch_{i + 1}", "wb") as f:
            pickle.dump({b"data": rows(x[part]), b"labels": [int(v) for v in y[part]]}, f)
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({b"data": rows(x_test), b"labels": [int(v) for v in y_test]}, f)


@pytest.mark.slow
def test_reduced_resnet18_learns_a_colour_task_from_cifar_files_with_replay_under_vmapped_seeds(tmp_path):
    x, y = colour_images(320, 32, seed=0)
    xt, yt = colour_images(80, 32, seed=1)
    write_cifar10(tmp_path / "cifar-10-batches-py", x, y, xt, yt)
    x, y, xt, yt = load_cifar(tmp_path)
    assert x.shape == (320, 32, 32, 3) and x.dtype == np.uint8
    flat = lambda a: (a.astype(np.float32) / 255.0).reshape(len(a), -1)  # noqa: E731
    stream = split_stream(flat(x), y, classes_per_task=2, seed=0, x_test=flat(xt), y_test=yt, scenario="task")
    src = SupervisedSource(ResNet18(output_dim=4, nf=4, image_shape=(32, 32, 3)), stream, batch_size=16,
                           augment=ImageAugmentation((32, 32, 3)))      # random crop (padding 4) and flip
    run = make_run(RunConfig(strategy="replay", episodes_per_task=15), src)
    hp = run.hparams(learning_rate=3e-3)
    keys = jax.random.split(jax.random.key(0), 2)
    init = jax.vmap(lambda k: run.init_on(src.tasks, k, hp))(keys)
    state, res = run.seeds(keys, hp)
    R = np.asarray(res.R)
    assert np.all(np.isfinite(R)) and np.all(np.asarray(res.traces["finite"]))
    assert np.all(R[:, 0, 0] > 0.8) and np.all(R[:, 1, :] > 0.8), R     # chance: 0.5 per task
    assert np.all(np.asarray(res.traces["replay_loss"])[:, 1] > 0)     # the memory is replayed on the second task
    for before, after in zip(jax.tree.leaves(init.model_state), jax.tree.leaves(state.model_state)):
        assert after.shape[0] == 2 and not np.allclose(np.asarray(before), np.asarray(after))
