"""Labelled datasets (no network), readers of the standard image files on disk, and the continual-learning task
streams over them.
"""

from clloop_jax.data.loaders import (load_digits_data, load_mnist1d, load_mnist, MNIST_TEST_PER_CLASS, load_dataset,
                                     train_test_split)  # noqa: F401
from clloop_jax.data.files import (read_idx, load_idx_dataset, IDX_FILES, load_cifar, load_image_folder,
                                   IMAGE_EXTENSIONS, DOWNLOADS, download)  # noqa: F401
from clloop_jax.data.augment import ImageAugmentation, crop_flip  # noqa: F401
from clloop_jax.data.benchmarks import IMAGE_BENCHMARKS, load_image_benchmark  # noqa: F401
from clloop_jax.data.streams import (SCENARIOS, MASK_VALUE, TaskStream, permuted_stream, split_stream, masked_logits,
                                     masked_cross_entropy, accuracy, PIXEL_VALUES, pixel_values)  # noqa: F401

__all__ = ["load_digits_data", "load_mnist1d", "load_mnist", "MNIST_TEST_PER_CLASS", "load_dataset", "train_test_split",
           "read_idx", "load_idx_dataset", "IDX_FILES", "load_cifar", "load_image_folder", "IMAGE_EXTENSIONS",
           "DOWNLOADS", "download",
           "SCENARIOS", "MASK_VALUE", "TaskStream", "permuted_stream", "split_stream", "masked_logits",
           "masked_cross_entropy", "accuracy", "PIXEL_VALUES", "pixel_values", "ImageAugmentation", "crop_flip",
           "IMAGE_BENCHMARKS", "load_image_benchmark"]
