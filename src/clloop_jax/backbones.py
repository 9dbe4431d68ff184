"""The classifiers of labelled task streams: :class:`MLP` (the fully connected baseline) and the convolutional
backbones with batch norm for images, :class:`ConvNet` (a small conv net) and :class:`ResNet18` (the reduced
ResNet-18 of Lopez-Paz & Ranzato 2017, the backbone of the GEM, DER and Mammoth papers). All are also importable from
:mod:`clloop_jax.model`.

Both map images ``[..., H, W, C]`` (or, with ``image_shape``, the flat ``[..., H*W*C]`` rows of the flat streams:
MNIST ``(28, 28, 1)``, CIFAR ``(32, 32, 3)``) to logits, and take ``train``: ``train=True`` normalises with the
batch's statistics and updates the running averages (apply with ``mutable=["batch_stats"]``), ``train=False`` (the
default) uses the running averages. :class:`~clloop_jax.sources.supervised.SupervisedSource` carries the running
averages through a run (``TrainState.model_state``). Initialisers are flax's defaults (no QR decomposition).

Typical use::

    model = ResNet18(output_dim=10, image_shape=(32, 32, 3))
    variables = model.init(jax.random.key(0), x[0])                      # {"params", "batch_stats"}
    logits, new = model.apply(variables, x, train=True, mutable=["batch_stats"])
    logits = model.apply({**variables, **new}, x_test)                  # evaluation: the running averages
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from clloop_jax.validation import check_int

__all__ = ["BN_EPSILON", "BN_MOMENTUM", "BasicBlock", "ConvNet", "MLP", "ResNet18"]

Array = jax.Array


def _shape(x: Any) -> tuple[int, ...]:
    shape = getattr(x, "shape", None)
    return tuple(shape if shape is not None else np.shape(x))

#: Batch norm's settings in both backbones: flax's ``momentum = 0.9`` is PyTorch's ``momentum = 0.1`` (the running
#: average keeps 0.9 of its value per update), and PyTorch's ``eps``.
BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5


def _check_image_shape(owner: str, image_shape) -> Any:
    if image_shape is None:
        return None
    if isinstance(image_shape, (str, bytes)) or not isinstance(image_shape, Sequence) or len(image_shape) != 3:
        raise ValueError(f"{owner}.image_shape: expected None or (H, W, C) of three positive ints, got "
                         f"{image_shape!r}")
    for name, n in zip("HWC", image_shape):
        check_int(f"{owner}.image_shape[{name}]", n, min=1)
    return tuple(int(n) for n in image_shape)


def _images(owner: str, x, image_shape):
    """``x`` as a batch of images ``[N, H, W, C]`` (float32) and its leading shape. ``x`` is ``[..., H, W, C]``,
    or, with ``image_shape = (H, W, C)``, also a flat ``[..., H * W * C]`` (row-major ``H, W, C``: the layout of
    the flat streams)."""
    s = _shape(x)
    if image_shape is not None:
        if tuple(s[-3:]) == image_shape:
            lead = s[:-3]
        elif len(s) >= 1 and s[-1] == int(np.prod(image_shape)):
            lead = s[:-1]
        else:
            raise ValueError(f"{owner}: x: expected shape [..., {int(np.prod(image_shape))}] or [..., "
                             f"{', '.join(map(str, image_shape))}] (image_shape={image_shape}), received {s}")
    elif len(s) >= 3:
        lead = s[:-3]
    else:
        raise ValueError(f"{owner}: x: expected images [..., H, W, C] (or set image_shape to read flat inputs), "
                         f"received {s}")
    hwc = image_shape if image_shape is not None else tuple(s[-3:])
    return jnp.asarray(x, jnp.float32).reshape((-1,) + tuple(hwc)), lead


class MLP(nn.Module):
    """Fully connected ReLU network: ``Dense(h_1) -> relu -> ... -> Dense(h_L) -> relu -> Dense(output_dim)``.

    The baseline network of the continual-learning literature (two hidden layers of 400 units for split and
    permuted MNIST in van de Ven & Tolias 2019). Maps ``x [..., D]`` to logits ``[..., output_dim]``; the input
    size is read from the first call (``init``).

    Attributes:
      output_dim: number of outputs (the classification head's size).
      hidden: widths of the hidden layers (may be empty: a linear model).
    """

    output_dim: int
    hidden: Sequence[int] = (400, 400)

    def __post_init__(self):
        check_int("MLP.output_dim", self.output_dim, min=1)
        if isinstance(self.hidden, (str, bytes)) or not isinstance(self.hidden, Sequence):
            raise ValueError(f"MLP.hidden: expected a sequence of positive ints, got {self.hidden!r}")
        for i, h in enumerate(self.hidden):
            check_int(f"MLP.hidden[{i}]", h, min=1)
        object.__setattr__(self, "hidden", tuple(int(h) for h in self.hidden))
        super().__post_init__()

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        if len(_shape(x)) == 0:
            raise ValueError("MLP: x: expected shape [..., D] with a feature axis, received a scalar")
        h = jnp.asarray(x, jnp.float32)
        for i, width in enumerate(self.hidden):
            h = nn.relu(nn.Dense(width, name=f"hidden_{i}")(h))
        return nn.Dense(self.output_dim, name="head")(h)


def _batch_norm(train: bool, name: str):
    return nn.BatchNorm(use_running_average=not train, momentum=BN_MOMENTUM, epsilon=BN_EPSILON, name=name)


class ConvNet(nn.Module):
    """A small convolutional network: per block ``Conv 3x3 (no bias) -> BatchNorm -> relu -> max-pool 2x2``, then
    a linear head on the flattened features.

    Maps images ``x [..., H, W, C]`` (or flat ``[..., H*W*C]`` with ``image_shape``) to logits
    ``[..., output_dim]``. ``train=True``: batch norm normalises with the batch's statistics (over every image of
    the call) and updates its running averages, so apply it with ``mutable=["batch_stats"]``; ``train=False`` (the
    default): it uses the running averages. Convolutions pad to keep the size ("SAME"); pooling floors it.

    Attributes:
      output_dim: number of outputs (the classification head's size).
      channels: the output channels of the blocks (one block each; at least one).
      image_shape: ``(H, W, C)`` to accept flat inputs ``[..., H*W*C]`` (MNIST: ``(28, 28, 1)``; CIFAR:
        ``(32, 32, 3)``); None: images only.
    """

    output_dim: int
    channels: Sequence[int] = (32, 64)
    image_shape: Any = None

    def __post_init__(self):
        check_int("ConvNet.output_dim", self.output_dim, min=1)
        if isinstance(self.channels, (str, bytes)) or not isinstance(self.channels, Sequence) or not self.channels:
            raise ValueError(f"ConvNet.channels: expected a non-empty sequence of positive ints, got "
                             f"{self.channels!r}")
        for i, c in enumerate(self.channels):
            check_int(f"ConvNet.channels[{i}]", c, min=1)
        object.__setattr__(self, "channels", tuple(int(c) for c in self.channels))
        object.__setattr__(self, "image_shape", _check_image_shape("ConvNet", self.image_shape))
        super().__post_init__()

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        h, lead = _images("ConvNet", x, self.image_shape)
        for i, c in enumerate(self.channels):
            h = nn.Conv(c, (3, 3), padding="SAME", use_bias=False, name=f"conv_{i}")(h)
            h = nn.relu(_batch_norm(train, f"bn_{i}")(h))
            h = nn.max_pool(h, (2, 2), strides=(2, 2))
        h = h.reshape((h.shape[0], -1))
        return nn.Dense(self.output_dim, name="head")(h).reshape(tuple(lead) + (self.output_dim,))


def _conv3x3(features: int, stride: int, name: str):
    # padding 1 on each side, as PyTorch's ``padding=1`` (flax's "SAME" would pad 0/1 at stride 2)
    return nn.Conv(features, (3, 3), strides=(stride, stride), padding=((1, 1), (1, 1)), use_bias=False, name=name)


class BasicBlock(nn.Module):
    """ResNet's basic block (He et al. 2016): ``conv3x3(stride) -> BN -> relu -> conv3x3 -> BN``, plus the
    shortcut (identity, or ``conv1x1(stride) -> BN`` when the stride or the width changes), then relu."""

    features: int
    stride: int = 1

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        h = nn.relu(_batch_norm(train, "bn_1")(_conv3x3(self.features, self.stride, "conv_1")(x)))
        h = _batch_norm(train, "bn_2")(_conv3x3(self.features, 1, "conv_2")(h))
        shortcut = x
        if self.stride != 1 or x.shape[-1] != self.features:
            shortcut = nn.Conv(self.features, (1, 1), strides=(self.stride, self.stride), padding="VALID",
                               use_bias=False, name="shortcut_conv")(x)
            shortcut = _batch_norm(train, "shortcut_bn")(shortcut)
        return nn.relu(h + shortcut)


class ResNet18(nn.Module):
    """The reduced ResNet-18 of Lopez-Paz & Ranzato 2017 (GEM, "Gradient Episodic Memory for Continual
    Learning"), the backbone of split CIFAR-10/100 and TinyImageNet in DER (Buzzega et al. 2020, "Dark Experience
    for General Continual Learning") and the Mammoth library.

    Architecture (He et al. 2016's ResNet-18 with ``nf = 20`` instead of 64 base channels and a 3x3 stem)::

        conv3x3(nf, stride 1) -> BN -> relu                       # no 7x7 stem, no max-pool
        stage 1: 2 BasicBlocks, nf channels,   stride 1
        stage 2: 2 BasicBlocks, 2nf channels,  stride 2 (first block)
        stage 3: 2 BasicBlocks, 4nf channels,  stride 2
        stage 4: 2 BasicBlocks, 8nf channels,  stride 2
        global average pooling -> Dense(output_dim)

    A :class:`BasicBlock` is ``conv3x3 -> BN -> relu -> conv3x3 -> BN`` plus a shortcut (``conv1x1 -> BN`` where the
    stride or the width changes), then relu; convolutions have no bias and pad by 1 as PyTorch's. On 32x32 images
    the last stage is 4x4 and the pooling is GEM's ``avg_pool2d(out, 4)``; on other sizes it is the global average
    (as Mammoth's). With ``nf = 20`` and 10 classes: about 1.1 million parameters. Batch norm uses PyTorch's
    defaults (momentum 0.1, i.e. flax's 0.9; eps 1e-5); the initialisation is flax's (LeCun normal), not PyTorch's.

    Maps images ``x [..., H, W, C]`` (or flat ``[..., H*W*C]`` with ``image_shape``) to logits
    ``[..., output_dim]``; ``train`` as in :class:`ConvNet` (``mutable=["batch_stats"]`` when True).

    Attributes:
      output_dim: number of outputs (the classification head's size).
      nf: the base width (stages of ``nf, 2nf, 4nf, 8nf`` channels); 20 in the papers.
      image_shape: ``(H, W, C)`` to accept flat inputs ``[..., H*W*C]`` (CIFAR: ``(32, 32, 3)``); None: images only.
    """

    output_dim: int
    nf: int = 20
    image_shape: Any = None

    #: Basic blocks per stage: ResNet-18's ``[2, 2, 2, 2]``.
    blocks = (2, 2, 2, 2)

    def __post_init__(self):
        check_int("ResNet18.output_dim", self.output_dim, min=1)
        check_int("ResNet18.nf", self.nf, min=1)
        object.__setattr__(self, "image_shape", _check_image_shape("ResNet18", self.image_shape))
        super().__post_init__()

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        h, lead = _images("ResNet18", x, self.image_shape)
        h = nn.relu(_batch_norm(train, "bn_stem")(_conv3x3(self.nf, 1, "conv_stem")(h)))
        for stage, count in enumerate(self.blocks):
            for b in range(count):
                stride = 2 if stage > 0 and b == 0 else 1
                h = BasicBlock(self.nf * 2 ** stage, stride, name=f"stage_{stage + 1}_block_{b + 1}")(h, train)
        h = jnp.mean(h, axis=(1, 2))
        return nn.Dense(self.output_dim, name="head")(h).reshape(tuple(lead) + (self.output_dim,))
