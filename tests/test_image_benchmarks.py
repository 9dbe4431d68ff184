"""The standard image benchmarks from the files in a folder: rows of pixel bytes with their image shape, the
configuration's file sources (--source cifar10 ... --data-dir), and the whole pipeline (files, bytes, augmentation,
batch norm, replay) through the command line on generated CIFAR-format files."""
import dataclasses
import json

import numpy as np
import pytest
from test_backbones import colour_images, write_cifar10
from test_image_files import write_idx_set

from clloop_jax.backbones import ConvNet, ResNet18
from clloop_jax.data import PIXEL_VALUES, load_image_benchmark
from clloop_jax.data.files import IDX_FILES, load_cifar
from clloop_jax.workflow import cli
from clloop_jax.workflow.experiment import PRESETS, DataConfig, ExperimentConfig, ModelConfig


@pytest.fixture(scope="module")
def cifar_dir(tmp_path_factory):
    """CIFAR-10's python batches of 80 colour-coded training and 40 test images (4 classes)."""
    root = tmp_path_factory.mktemp("files")
    x, y = colour_images(80, 32, seed=0)
    xt, yt = colour_images(40, 32, seed=1)
    write_cifar10(root / "cifar-10-batches-py", x, y, xt, yt)
    return root, x, y, xt, yt


def test_cifar_and_idx_files_become_rows_of_bytes_with_their_image_shape(cifar_dir, tmp_path):
    root, x, y, xt, yt = cifar_dir
    xb, yb, xtb, ytb, shape = load_image_benchmark("cifar10", root)
    assert shape == (32, 32, 3) and xb.dtype == np.uint8 and xb.shape == (80, 3072)
    np.testing.assert_array_equal(xb.reshape(80, 32, 32, 3), load_cifar(root)[0])              # row-major H W C
    np.testing.assert_array_equal(xb.reshape(80, 32, 32, 3), (x * 255).astype(np.uint8))       # the images written
    np.testing.assert_array_equal(yb, y)
    np.testing.assert_array_equal(ytb, yt)
    arrays = write_idx_set(tmp_path / "idx")
    xi, yi, xti, yti, shape = load_image_benchmark("mnist_idx", tmp_path / "idx")
    assert shape == (28, 28, 1) and xi.shape == (5, 784)
    np.testing.assert_array_equal(xi, arrays[0].reshape(5, 784))
    np.testing.assert_array_equal(yti, [9, 3, 1])
    with pytest.raises(ValueError, match="name must be one of"):
        load_image_benchmark("cifar11", root)
    with pytest.raises(FileNotFoundError, match=IDX_FILES[0]):
        load_image_benchmark("kmnist", tmp_path / "nothing-here")


def test_a_file_source_builds_bytes_a_backbone_and_the_augmentation(cifar_dir):
    root = cifar_dir[0]
    experiment = dataclasses.replace(PRESETS["split-cifar10"], data=dataclasses.replace(
        PRESETS["split-cifar10"].data, data_dir=str(root), fisher_size=16))        # 40 training images per task
    source = experiment.make_source()
    assert isinstance(source.model, ResNet18) and source.model.image_shape == (32, 32, 3)
    assert source.augment.image_shape == (32, 32, 3) and source.augment.crop_padding == 4 and source.augment.flip
    assert source.stream.x.dtype == np.uint8 and source.stream.num_tasks == 2
    assert source.stream.num_classes == 4 and source.stream.scenario == "class"
    x0 = np.asarray(source.stream.x[0])
    assert PIXEL_VALUES[x0].max() <= 1.0 and PIXEL_VALUES[x0].max() > 0.5          # read as floats in [0, 1]
    plain = ExperimentConfig(source="cifar10", data=DataConfig(data_dir=str(root), mlp_hidden=(16,), fisher_size=16,
                                                               batch_size=16))
    assert plain.make_source().augment is None and plain.make_source().model.hidden == (16,)


@pytest.mark.parametrize("config, message", [
    (lambda: dict(source="cifar10"), "data.data_dir: --source cifar10 reads its files from --data-dir"),
    (lambda: dict(source="digits", data=DataConfig(data_dir="/data")), "is used only by the file sources"),
    (lambda: dict(source="mnist1d", data=DataConfig(backbone="convnet")), "needs images; the mnist1d source holds"),
    (lambda: dict(source="mnist1d", data=DataConfig(augment=True)), "data.augment (--augment True) needs images"),
    (lambda: dict(source="digits", data=DataConfig(backbone="vgg")), "data.backbone must be one of ['mlp', 'convnet'"),
    (lambda: dict(source="cifar10", data=DataConfig(data_dir="/data", pixel_bytes=True)), "files are read as bytes"),
    (lambda: dict(source="cifar10", data=DataConfig(data_dir="/data", backbone="recurrent")),
     "reads digits, mnist1d, mnist as sequences of chunks, not 'cifar10'"),
    (lambda: dict(source="digits", data=DataConfig(backbone="recurrent", augment=True)),
     "crops and flips images for the convolutional backbones"),
    (lambda: dict(source="digits", model=ModelConfig(hidden_dim=16, num_heads=2)),
     "--hidden-dim 16, --num-heads 2 are not used with --source digits"),
])
def test_settings_a_source_cannot_take_are_refused(config, message):
    with pytest.raises(ValueError) as refused:
        ExperimentConfig(**config()).make_source()
    assert message in str(refused.value)


@pytest.mark.parametrize("dataset, chunk", [("digits", 8), ("mnist1d", 4)])
def test_the_recurrent_backbone_is_the_agent_reading_the_signal_in_chunks(dataset, chunk):
    """--backbone recurrent: a SequenceClassifier around a one-modality CrossModalModel of the agent's sizes (the
    model options), reading the dataset's chunk per step; the configuration records the agent's sizes."""
    from clloop_jax.model import CrossModalModel, SequenceClassifier
    e = ExperimentConfig(source=dataset, data=DataConfig(backbone="recurrent", stream="split", scenario="task"),
                         model=ModelConfig(hidden_dim=16, num_heads=2))
    source = e.make_source()
    core = CrossModalModel(input_dim=chunk, hidden_dim=16, output_dim=source.stream.num_classes, num_modalities=1,
                           num_heads=2, feedback_dim=0)
    assert source.model == SequenceClassifier(core, chunk=chunk)
    assert source.stream.x.shape[-1] % chunk == 0
    assert e.resolved()["model"] == ModelConfig(hidden_dim=16, num_heads=2) and "model" not in dataclasses.replace(
        e, data=DataConfig(stream="split", scenario="task"), model=ModelConfig()).resolved()


def run_on_files(root, out, *options):
    """``clloop run`` on the CIFAR-format files: replay of 16 samples, crop and flip, two tasks; the summary."""
    code = cli.main(["run", "--source", "cifar10", "--data-dir", str(root), "--augment", "--strategy", "replay",
                     "--memory", "16", "--batch-size", "16", "--fisher-size", "16", "--learning-rate", "3e-3",
                     "--out", str(out), "--quiet", "--no-cache", *options])
    assert code == 0
    config = json.loads((out / "config.json").read_text())["config"]
    assert config["source"] == "cifar10" and config["data"]["augment"] and config["data"]["data_dir"] == str(root)
    traces = [json.loads(line) for line in (out / "traces.jsonl").read_text().splitlines()]
    assert any(t["task"] == 1 and t["replay_loss"] > 0 for t in traces)   # the memory is replayed on task 2
    return json.loads((out / "summary.json").read_text())


def test_the_command_line_learns_from_cifar_files_through_bytes_crop_flip_and_replay(cifar_dir, tmp_path):
    """The pipeline in a run folder: CIFAR-format files, pixel bytes, the augmentation in the program, a replay
    memory; two tasks, two seeds vmapped, an MLP."""
    summary = run_on_files(cifar_dir[0], tmp_path / "run", "--mlp-hidden", "32", "--episodes-per-task", "30",
                           "--seeds", "2")
    R = np.asarray(summary["mean_R"])
    assert R.shape == (2, 2) and np.all(np.isfinite(R))
    assert R[0, 0] > 0.75 and R[1, 1] > 0.4, R            # colour-coded classes; chance is 0.5 and 0.25


@pytest.mark.slow   # convolutions run slowly on a CPU, and far more slowly with the suite's unoptimised programs
def test_the_command_line_trains_a_batch_norm_convnet_on_cifar_files(cifar_dir, tmp_path):
    summary = run_on_files(cifar_dir[0], tmp_path / "run", "--backbone", "convnet", "--episodes-per-task", "10",
                           "--seeds", "1")
    R = np.asarray(summary["mean_R"])
    assert R.shape == (2, 2) and np.all(np.isfinite(R)) and R[0, 0] > 0.6, R
    experiment = ExperimentConfig(source="cifar10", data=DataConfig(data_dir=str(cifar_dir[0]), backbone="convnet",
                                                                    fisher_size=16, batch_size=16))
    assert isinstance(experiment.make_source().model, ConvNet)
