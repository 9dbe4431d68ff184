"""The standard image benchmarks of continual learning, read from the files a user has on disk.

:func:`load_image_benchmark` gives one of :data:`IMAGE_BENCHMARKS` as flat rows of pixel bytes, ready for
:func:`~clloop_jax.data.streams.split_stream` or :func:`~clloop_jax.data.streams.permuted_stream` (a stream keeps
the bytes; a labelled source reads them as floats in ``[0, 1]``), with the image shape that a convolutional backbone
(``image_shape=``) and the augmentation (:class:`~clloop_jax.data.augment.ImageAugmentation`) need:

* ``cifar10``, ``cifar100``: CIFAR's python batches (:func:`~clloop_jax.data.files.load_cifar`; CIFAR-100 with its
  100 fine labels), ``(32, 32, 3)``: Split CIFAR-10 (5 tasks of 2 classes) and Split CIFAR-100 (10 x 10 or 20 x 5)
  of the GEM, DER and Mammoth papers;
* ``mnist_idx``, ``fashion_mnist``, ``kmnist``: the IDX files of the whole datasets (60,000 + 10,000 images,
  :func:`~clloop_jax.data.files.load_idx_dataset`), ``(28, 28, 1)``;
* ``tinyimagenet``: TinyImageNet's folder (``train/`` and the annotated ``val/``, which serves as the test split;
  :func:`~clloop_jax.data.files.load_image_folder`), ``(64, 64, 3)``: Split TinyImageNet (10 tasks of 20 classes).
"""
from __future__ import annotations

from typing import Tuple

import numpy as np

from clloop_jax.data import files
from clloop_jax.validation import check_choice

__all__ = ["IMAGE_BENCHMARKS", "load_image_benchmark"]

#: The benchmarks :func:`load_image_benchmark` reads, and the shape of one image of each.
IMAGE_BENCHMARKS = {"cifar10": (32, 32, 3), "cifar100": (32, 32, 3), "mnist_idx": (28, 28, 1),
                    "fashion_mnist": (28, 28, 1), "kmnist": (28, 28, 1), "tinyimagenet": (64, 64, 3)}


def load_image_benchmark(name: str, directory) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, tuple]:
    """``(x_train uint8 [N, H*W*C], y_train int32 [N], x_test uint8 [M, H*W*C], y_test int32 [M], (H, W, C))``:
    the benchmark ``name`` (one of :data:`IMAGE_BENCHMARKS`) from its files under ``directory``, each image a
    row-major ``H, W, C`` row of bytes. The readers' errors name the files they looked for."""
    check_choice("name", name, tuple(IMAGE_BENCHMARKS))
    if name in ("cifar10", "cifar100"):
        x, y, xt, yt = files.load_cifar(directory, which=int(name[5:]))
    elif name == "tinyimagenet":
        x, y, classes = files.load_image_folder(directory, split="train")
        xt, yt, test_classes = files.load_image_folder(directory, split="val")
        if list(classes) != list(test_classes):
            raise ValueError(f"{directory}: the classes of train/ and val/ differ ({len(classes)} and "
                             f"{len(test_classes)}); give wnids.txt so that their labels agree")
    else:
        x, y, xt, yt = files.load_idx_dataset(directory, "mnist" if name == "mnist_idx" else name)
    shape = IMAGE_BENCHMARKS[name]
    for what, images in (("training", x), ("test", xt)):
        if tuple(images.shape[1:3]) != shape[:2]:
            raise ValueError(f"{directory}: the {name} {what} images are {images.shape[1:]}, expected {shape}")
    flat = lambda a: np.ascontiguousarray(a, np.uint8).reshape(len(a), -1)  # noqa: E731
    return flat(x), np.asarray(y, np.int32), flat(xt), np.asarray(yt, np.int32), shape
