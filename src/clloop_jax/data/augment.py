"""The standard image augmentation of the continual-learning benchmarks, inside the compiled program.

Split CIFAR-10/100 and TinyImageNet runs in the literature (the GEM, DER and Mammoth papers) train on every batch
through a random crop with zero padding 4 and a random horizontal flip, both drawn per sample. Here the draws come
from an explicit key, so a run stays a pure function of its key, and the augmentation is ordinary array code in
the run's program (vmapped over seeds like the rest):

* :func:`crop_flip`: the deterministic part: pad each image with ``padding`` zeros on every side, cut the window
  of the original size whose top-left corner is ``offsets[n] = (row, column)`` (in ``[0, 2 * padding]``), mirror
  it left-right where ``flips[n]``;
* :class:`ImageAugmentation`: the random crop and flip of a batch, ``augmentation(key, x)``: offsets uniform over
  the ``(2 p + 1)^2`` windows, each flip with probability 1/2, independently per sample.
  :class:`~clloop_jax.sources.supervised.SupervisedSource` applies it to its training batches (``augment=``), never
  to the test samples, the Fisher's samples or a memory's.

Padding is with zeros in the space the images are stored in: black for images scaled to ``[0, 1]``, as in
torchvision's ``RandomCrop(32, padding=4)`` applied before normalisation.
"""
from __future__ import annotations

import dataclasses
from typing import Tuple

import jax
import jax.numpy as jnp

from clloop_jax.validation import check_bool, check_int

__all__ = ["ImageAugmentation", "crop_flip"]


def crop_flip(images: jax.Array, offsets: jax.Array, flips: jax.Array, padding: int) -> jax.Array:
    """``images [N, H, W, C]`` each zero-padded by ``padding``, cropped back to ``H x W`` at ``offsets [N, 2]``
    (row, column of the window's corner in the padded image) and mirrored left-right where ``flips [N]``."""
    n, h, w, c = images.shape
    padded = jnp.pad(images, ((0, 0), (padding, padding), (padding, padding), (0, 0)))

    def one(image, offset, flip):
        window = jax.lax.dynamic_slice(image, (offset[0], offset[1], 0), (h, w, c))
        return jnp.where(flip, window[:, ::-1], window)

    return jax.vmap(one)(padded, offsets, flips)


@dataclasses.dataclass(frozen=True)
class ImageAugmentation:
    """Random crop with zero padding and random horizontal flip, per sample, from an explicit key.

    Args:
      image_shape: ``(H, W, C)`` of one image; a batch may be images ``[N, H, W, C]`` or the flat rows
        ``[N, H * W * C]`` of a flat stream (row-major ``H, W, C``), and comes back in the same layout.
      crop_padding: zeros added on each side before the crop (4 in the literature; 0: no crop).
      flip: mirror each image left-right with probability 1/2.
    """

    image_shape: Tuple[int, int, int]
    crop_padding: int = 4
    flip: bool = True

    def __post_init__(self):
        shape = self.image_shape
        if isinstance(shape, (str, bytes)) or not isinstance(shape, (tuple, list)) or len(shape) != 3:
            raise ValueError(f"image_shape must be (H, W, C), three positive integers, got {shape!r}")
        for name, n in zip("HWC", shape):
            check_int(f"image_shape[{name}]", n, min=1)
        object.__setattr__(self, "image_shape", tuple(int(n) for n in shape))
        object.__setattr__(self, "crop_padding", check_int("crop_padding", self.crop_padding, min=0))
        object.__setattr__(self, "flip", check_bool("flip", self.flip))

    def __call__(self, key: jax.Array, x: jax.Array) -> jax.Array:
        """The batch ``x`` augmented with ``key`` (one crop window and one flip per sample)."""
        n = x.shape[0]
        images = jnp.reshape(x, (n,) + self.image_shape)
        k_offsets, k_flips = jax.random.split(key)
        offsets = jax.random.randint(k_offsets, (n, 2), 0, 2 * self.crop_padding + 1)
        flips = jax.random.bernoulli(k_flips, 0.5, (n,)) if self.flip else jnp.zeros((n,), bool)
        return jnp.reshape(crop_flip(images, offsets, flips, self.crop_padding), x.shape)
