"""The labelled benchmarks of an experiment: the source a :class:`~clloop_jax.workflow.settings.DataConfig` describes
(its data, bundled or read from files, its stream, the classifier, the augmentation), and the checks of what each
benchmark can take."""

from __future__ import annotations

from clloop_jax.workflow.names import FILE_DATASETS, RECURRENT_CHUNK

__all__ = ["BUNDLED_IMAGES", "make_labelled_source", "check_labelled_source"]

#: The bundled labelled benchmarks that are images, and their shape (MNIST-1D holds 1-D signals).
BUNDLED_IMAGES = {"mnist": (28, 28, 1), "digits": (8, 8, 1)}


def make_labelled_source(data, dataset: str, model_sizes=None):
    """The :class:`~clloop_jax.sources.supervised.SupervisedSource` of ``dataset`` as the
    :class:`~clloop_jax.workflow.settings.DataConfig` ``data`` describes it: a bundled benchmark (loaded from the
    installed package that ships it: ``pip install -e ".[data]"``) or one read from the files in ``data.data_dir``
    (:func:`~clloop_jax.data.benchmarks.load_image_benchmark`), its stream, its classifier and its augmentation.
    ``model_sizes``: the :class:`~clloop_jax.workflow.settings.ModelConfig` of the recurrent backbone (default
    sizes when None)."""
    from clloop_jax.data import (ImageAugmentation, load_dataset, load_image_benchmark, load_mnist,
                                 permuted_stream, split_stream)
    from clloop_jax.model import MLP, ConvNet, CrossModalModel, ResNet18, SequenceClassifier
    from clloop_jax.workflow.settings import ModelConfig
    from clloop_jax.sources.supervised import SupervisedSource
    check_labelled_source(data, dataset)
    if dataset in FILE_DATASETS and not data.data_dir:
        raise ValueError(f"data.data_dir: --source {dataset} reads its files from --data-dir (the folder that "
                         f"holds them); give it")
    image_shape = BUNDLED_IMAGES.get(dataset)
    if dataset in FILE_DATASETS:
        x, y, x_test, y_test, image_shape = load_image_benchmark(dataset, data.data_dir)
    elif data.pixel_bytes:
        x, y, x_test, y_test = load_mnist(pixels="uint8")
    else:
        x, y, x_test, y_test = load_dataset(dataset)
    if data.stream == "split":
        stream = split_stream(x, y, classes_per_task=data.classes_per_task, seed=data.data_seed, x_test=x_test,
                              y_test=y_test, scenario=data.scenario)
    else:
        stream = permuted_stream(x, y, data.permuted_tasks, seed=data.data_seed, x_test=x_test, y_test=y_test,
                                 scenario=data.scenario)
    if data.backbone == "mlp":
        model = MLP(output_dim=stream.num_classes, hidden=data.mlp_hidden)
    elif data.backbone == "recurrent":
        sizes, chunk = model_sizes or ModelConfig(), RECURRENT_CHUNK[dataset]
        core = CrossModalModel(input_dim=chunk, hidden_dim=sizes.hidden_dim, output_dim=stream.num_classes,
                               num_modalities=1, num_heads=sizes.num_heads, feedback_dim=0)
        model = SequenceClassifier(core, chunk=chunk)
    else:
        model = (ConvNet if data.backbone == "convnet" else ResNet18)(output_dim=stream.num_classes,
                                                                    image_shape=image_shape)
    augment = ImageAugmentation(image_shape) if data.augment else None
    return SupervisedSource(model, stream, batch_size=data.batch_size, fisher_size=data.fisher_size,
                            sampling=data.sampling, augment=augment)


def check_labelled_source(data, dataset: str) -> None:
    """``ValueError`` for settings the labelled source ``dataset`` cannot take: --data-dir given to a bundled
    one, --pixel-bytes away from mnist, a convolutional backbone or --augment without images (mnist1d). (A file
    source's missing --data-dir is refused when the source is made, so that presets can leave it to the user.)"""
    if dataset not in FILE_DATASETS and data.data_dir:
        raise ValueError(f"data.data_dir (--data-dir {data.data_dir!r}) is used only by the file sources "
                         f"{list(FILE_DATASETS)}, not by {dataset!r}")
    if data.pixel_bytes and dataset != "mnist":
        raise ValueError(f"data.pixel_bytes keeps MNIST's images as bytes; the {dataset} source has no pixel bytes"
                         + (" to convert (its files are read as bytes)" if dataset in FILE_DATASETS else ""))
    if data.backbone == "recurrent" and dataset not in RECURRENT_CHUNK:
        raise ValueError(f"data.backbone (--backbone recurrent) reads {', '.join(RECURRENT_CHUNK)} as sequences of "
                         f"chunks, not {dataset!r}")
    if data.backbone == "recurrent" and data.augment:
        raise ValueError("data.augment (--augment) crops and flips images for the convolutional backbones, not for "
                         "--backbone recurrent")
    if dataset not in FILE_DATASETS and dataset not in BUNDLED_IMAGES:
        for name, value, needs_images in (("backbone", data.backbone, data.backbone in ("convnet", "resnet18")),
                                          ("augment", data.augment, data.augment)):
            if needs_images:
                raise ValueError(f"data.{name} (--{name} {value}) needs images; the {dataset} source holds "
                                 f"signals, not images")
