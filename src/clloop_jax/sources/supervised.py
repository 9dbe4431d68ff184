"""Labelled task streams as a task source: minibatches, the masked loss and accuracy of each task."""

from __future__ import annotations

import copy
import dataclasses
import math
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp

from clloop_jax import data as data_lib
from clloop_jax.importance import fisher as fisher_lib
from clloop_jax.plasticity import mlp_features
from clloop_jax.sources.mixture import draw_tasks
from clloop_jax.strategies.base import NoHParams
from clloop_jax.validation import check_choice, check_methods, positive_int

__all__ = ["SupervisedBatch", "SupervisedSource", "EpochStream", "SAMPLING_MODES"]

#: How a :class:`SupervisedSource` presents a task's training samples: ``"random"`` batches drawn afresh for every
#: update, or ``"epoch"``: one pass over the task in a random order (online learning).
SAMPLING_MODES = ("random", "epoch")


class SupervisedBatch(NamedTuple):
    """A minibatch of one task: inputs ``x [B, D]``, labels ``y [B]`` and the task's training mask ``mask [C]``
    (the head outputs active in the softmax)."""

    x: jax.Array
    y: jax.Array
    mask: jax.Array


class EpochStream(NamedTuple):
    """Where an ``"epoch"`` source is in its pass over a task: the task's training indices in their random
    ``order [N]`` and the number of batches already served, ``step``."""

    order: jax.Array
    step: jax.Array


@dataclasses.dataclass(frozen=True)
class SupervisedSource:
    """Labelled tasks: one task of a :class:`~clloop_jax.data.streams.TaskStream` (permuted or split) per task.

    ``tasks`` is the stream itself (every leaf has a leading task axis, so the trainer slices one task with a
    traced index). The model is any flax module mapping one input ``x [D]`` (or a batch ``[..., D]``) to logits
    ``[..., stream.num_classes]``: :class:`~clloop_jax.backbones.MLP`, a
    :class:`~clloop_jax.model.SequenceClassifier` around a ``CrossModalModel``, or a batch-norm backbone
    (:class:`~clloop_jax.model.ConvNet`, :class:`~clloop_jax.model.ResNet18` with ``image_shape`` for flat streams).

    * ``batch``: ``batch_size`` training samples of the task drawn without replacement with the key, and the
      task's ``train_mask`` (:class:`SupervisedBatch`). Streams hold no padded samples (split tasks are cut to
      equal size by :func:`~clloop_jax.data.streams.split_stream`), so every row of a task may be drawn. Each
      batch is drawn afresh (``sampling="random"``): a sample may come back in a later batch of the task and
      another may never be seen.
    * ``sampling="epoch"``: online learning, as in the permuted-MNIST streams of Dohare et al. (2024, "Loss of
      plasticity in deep continual learning", Nature 632): the run presents the task's ``N`` training samples once
      each, in a random order drawn at the task's start (a fresh order per task and seed), cut into consecutive
      batches of ``batch_size``. A task then takes exactly ``updates_per_task = N // batch_size`` updates (the last
      ``N % batch_size`` samples of the order are left out, so every batch has the same size), and
      :func:`~clloop_jax.run.sequential.make_run` refuses an ``episodes_per_task`` that differs. The source is then a
      streaming one (``stream_init``: the order; ``stream_batch``: the next batch); :meth:`batch` itself (the
      joint run's) still draws at random.
    * ``loss``: :func:`~clloop_jax.data.streams.masked_cross_entropy` under the training mask; ``aux["score"]`` is
      the batch accuracy under the same mask.
    * ``score``: test accuracy under the task's ``test_mask``, in ``[0, 1]``, on all test samples
      (``eval_size=None``) or on ``eval_size`` of them drawn with the key.
    * ``likelihood``: :class:`~clloop_jax.importance.fisher.Categorical`. Use ``RunConfig(fisher_variant="exact")``:
    with
      ``C`` head outputs it costs ``C`` backward passes per sample, and it has no sampling noise.
    * ``fisher_data``: ``fisher_size`` training samples of the task drawn with the key. Inputs are pairs
      ``(x [n, D], mask [n, C])`` of the samples and the task's training mask; targets are the labels.
    * ``predict(params, (x, mask))``: one sample's masked logits, ``masked_logits(model(x), mask)``.

    Which outputs the Fisher ranges over: the masked-out logits are set to
    :data:`~clloop_jax.data.streams.MASK_VALUE`, so their probability is exactly 0 and they carry no gradient. The
    Fisher's expectation over labels therefore runs over the outputs the task was trained on (the task's
    ``train_mask``): the task's own block in task-incremental learning, the whole head in domain-incremental
    learning, and all classes seen so far in class-incremental learning (as in van de Ven & Tolias 2019). The
    same masked outputs feed MAS's output-norm importance (masked outputs contribute nothing to its gradient)
    and the functional-divergence probes, each probe keeping the mask of the task it was drawn from.

    Models with batch norm (:class:`~clloop_jax.model.ConvNet`, :class:`~clloop_jax.model.ResNet18`: a module whose
    ``init`` gives collections besides ``params``, called with ``train``) make the source ``model_state = True``
    (:mod:`clloop_jax.sources.base`): ``init_params`` gives ``{"params": ...}``, ``init_model_state`` the rest
    (``{"batch_stats": ...}``), and the run binds the running averages with ``with_model_state``. Then ``loss``
    normalises with the batch's statistics and returns the updated running averages as ``aux["model_state"]``;
    ``score`` and ``predict`` (the Fisher, MAS, probes) use the bound running averages, frozen; ``sample_loss``
    (replay) normalises the replayed samples with their own statistics, a training-mode batch of their own as in
    DER's separate pass over the buffer (Buzzega et al. 2020), and drops the running averages that pass would give,
    so those follow the current task's batches only.

    Joint training (:func:`~clloop_jax.run.joint.make_joint_run`) uses each task's training mask too; in the
    class-incremental scenario that never trains early tasks against later classes. :meth:`joint` returns the
    source whose training masks are the evaluation masks, the multi-task upper bound of the literature.

    Args:
      model: a flax module, ``model.apply(params, x [..., D]) -> logits [..., stream.num_classes]``.
      stream: the :class:`~clloop_jax.data.streams.TaskStream` to learn.
      batch_size: training samples per update (at most the task's number of training samples).
      eval_size: test samples per score; None uses every test sample of the task.
      fisher_size: training samples per Fisher diagonal (and MAS importance); None uses
        ``min(256, number of training samples)``.
      sampling: ``"random"`` (default: every batch drawn afresh) or ``"epoch"`` (one pass over each task's
        training samples in a random order, see above).
      augment: None, or an :class:`~clloop_jax.data.augment.ImageAugmentation` (random crop with zero padding and
        horizontal flip, per sample) applied to every training batch (:meth:`batch`, the epoch's batches, the
        task-free mixture batches) with a key split from the batch's own; test samples, the Fisher's samples and
        what a memory keeps are the stored images. Its ``image_shape`` must hold the stream's ``D`` features.
    """

    model: Any
    stream: data_lib.TaskStream = dataclasses.field(compare=False)
    batch_size: int = 128
    eval_size: Optional[int] = None
    fisher_size: Optional[int] = None
    sampling: str = "random"
    augment: Optional[data_lib.ImageAugmentation] = None

    def __post_init__(self):
        check_methods("model", self.model, ["init", "apply"], example="MLP(output_dim=10)")
        if not isinstance(self.stream, data_lib.TaskStream):
            raise ValueError(f"stream must be a clloop_jax.data.streams.TaskStream, got {type(self.stream).__name__}")
        if self.stream.num_tasks == 0 or int(self.stream.x.shape[0]) == 0:
            raise ValueError(f"stream must hold at least one task, got a {self.stream.kind} TaskStream of 0 tasks "
                             f"(x of shape {tuple(self.stream.x.shape)})")
        n_train, n_test = int(self.stream.x.shape[1]), int(self.stream.x_test.shape[1])
        positive_int("batch_size", self.batch_size)
        positive_int("eval_size", self.eval_size, allow_none=True)
        positive_int("fisher_size", self.fisher_size, allow_none=True)
        check_choice("sampling", self.sampling, SAMPLING_MODES)
        if self.augment is not None:
            if not isinstance(self.augment, data_lib.ImageAugmentation):
                raise TypeError(f"augment must be None or a clloop_jax.data.ImageAugmentation, got "
                                f"{type(self.augment).__name__}")
            if math.prod(self.augment.image_shape) != int(self.stream.x.shape[-1]):
                raise ValueError(f"augment.image_shape {self.augment.image_shape} must hold the stream's "
                                 f"{int(self.stream.x.shape[-1])} features per sample")
        if self.batch_size > n_train:
            raise ValueError(f"batch_size must be at most the task's {n_train} training samples, "
                             f"got {self.batch_size}")
        if self.eval_size is not None and self.eval_size > n_test:
            raise ValueError(f"eval_size must be at most the task's {n_test} test samples (or None), "
                             f"got {self.eval_size}")
        if self.fisher_size is None:
            object.__setattr__(self, "fisher_size", min(256, n_train))
        elif self.fisher_size > n_train:
            raise ValueError(f"fisher_size must be at most the task's {n_train} training samples (or None), "
                             f"got {self.fisher_size}")
        x0 = data_lib.pixel_values(self.stream.x[0, 0])
        variables = jax.eval_shape(self.model.init, jax.random.key(0), x0)
        if "params" not in variables:
            raise ValueError(f"model must have trainable parameters (a 'params' collection), got the collections "
                             f"{sorted(variables)}")
        object.__setattr__(self, "_collections", tuple(sorted(c for c in variables if c != "params")))
        object.__setattr__(self, "_bound", None)
        out = jax.eval_shape(lambda k: self.model.apply(self.model.init(k, x0), x0), jax.random.key(0))
        if tuple(out.shape) != (self.stream.num_classes,):
            raise ValueError(f"model must map one input of shape {tuple(x0.shape)} to logits of shape "
                             f"({self.stream.num_classes},) (stream.num_classes for the {self.stream.scenario!r} "
                             f"scenario), got shape {tuple(out.shape)}")

    # ----- the task-source interface ------------------------------------------------------------------------
    @property
    def num_tasks(self) -> int:
        return self.stream.num_tasks

    @property
    def tasks(self) -> data_lib.TaskStream:
        return self.stream

    @property
    def likelihood(self):
        return fisher_lib.Categorical()

    @property
    def hparams(self) -> NoHParams:
        return NoHParams()

    @property
    def model_state(self) -> bool:
        """Whether the model carries non-trainable collections (batch norm's running averages)."""
        return bool(self._collections)

    @property
    def streaming(self) -> bool:
        """True with ``sampling="epoch"``: the run draws the task's order at its start and serves it batch by batch."""
        return self.sampling == "epoch"

    @property
    def updates_per_task(self) -> Optional[int]:
        """With ``sampling="epoch"``, the updates one pass over a task takes, ``N // batch_size``; None otherwise
        (any number of updates)."""
        return int(self.stream.x.shape[1]) // self.batch_size if self.sampling == "epoch" else None

    def stream_init(self, key, task, hparams) -> EpochStream:
        """A task's pass (``sampling="epoch"``): its training indices in a random order drawn with ``key``."""
        del hparams
        return EpochStream(jax.random.permutation(key, task.x.shape[0]).astype(jnp.int32), jnp.zeros((), jnp.int32))

    def stream_batch(self, key, params, task, hparams, stream: EpochStream):
        """``(batch, stream)``: the next ``batch_size`` samples of the task's order (``sampling="epoch"``)."""
        del params, hparams
        idx = jax.lax.dynamic_slice(stream.order, (stream.step * self.batch_size,), (self.batch_size,))
        batch = SupervisedBatch(self._augmented(key, self._rows(task.x, idx)), task.y[idx], task.train_mask)
        return batch, stream._replace(step=stream.step + 1)

    def _split_augment_key(self, key):
        """``(key, augmentation key)``: a key split in two when there is an augmentation, else ``(key, None)`` (a
        source without one draws exactly what it drew before augmentation existed)."""
        return (key, None) if self.augment is None else tuple(jax.random.split(key))

    @staticmethod
    def _rows(x, idx):
        """The rows ``x[idx]`` of a task's inputs as the model reads them (pixel bytes as floats)."""
        return data_lib.pixel_values(x[idx])

    def _augmented(self, key, x):
        """The training rows ``x``, through :attr:`augment` with ``key`` when there is one."""
        return x if self.augment is None else self.augment(key, x)

    def minibatches(self, key, batch: SupervisedBatch, hparams) -> SupervisedBatch:
        """A streamed batch learned as it is: one minibatch (a leading axis of 1)."""
        del key, hparams
        return jax.tree.map(lambda a: a[None], batch)

    def _zero_input(self):
        """One sample's input of zeros, as the model reads it (pixel bytes are read as float32)."""
        x = self.stream.x
        return jnp.zeros(x.shape[2:], jnp.float32 if x.dtype == jnp.uint8 else x.dtype)

    def init_params(self, key):
        variables = self.model.init(key, self._zero_input())
        return {"params": variables["params"]} if self.model_state else variables

    def init_model_state(self, key):
        """The model's non-trainable collections before training (``{"batch_stats": ...}``: means 0, variances 1);
        ``{}`` for a model without any."""
        variables = self.model.init(key, self._zero_input())
        return {c: variables[c] for c in self._collections}

    def with_model_state(self, model_state) -> "SupervisedSource":
        """This source with the running averages ``model_state`` bound (what :meth:`predict`, :meth:`score` use and
        :meth:`loss` updates). Cheap: no validation, the same configuration (equal, same hash)."""
        bound = copy.copy(self)
        object.__setattr__(bound, "_bound", model_state)
        return bound

    def _apply(self, params, x, train: bool):
        """The model's logits on ``x``, and (training mode, batch-norm model) its updated collections."""
        if not self.model_state:
            return self.model.apply(params, x), None
        if self._bound is None:
            raise ValueError("this source's model has batch norm: bind its running averages first, "
                             "source.with_model_state(state.model_state) (the run does it)")
        variables = {**params, **self._bound}
        if train:
            return self.model.apply(variables, x, train=True, mutable=list(self._collections))
        return self.model.apply(variables, x, train=False), None

    def batch(self, key, params, task, hparams):
        del params, hparams
        key, k_augment = self._split_augment_key(key)
        idx = jax.random.choice(key, task.x.shape[0], (self.batch_size,), replace=False)
        return SupervisedBatch(self._augmented(k_augment, self._rows(task.x, idx)), task.y[idx], task.train_mask)

    def mixture_batch(self, key, params, tasks, weights, hparams) -> SupervisedBatch:
        """``batch_size`` rows, row ``r`` a training sample of its own task drawn from ``weights [K]``, with the
        training mask of that task (``mask [B, C]``). Each task draws ``B`` distinct indices (as its own batch
        would, without replacement) and row ``r`` takes the ``r``-th of its task's, so rows of one task are distinct
        samples and a pure batch (one task) is distributed exactly as :meth:`batch`'s. Gathers only the rows it
        needs."""
        key, k_augment = self._split_augment_key(key)
        k_ids, k_batch = jax.random.split(key)
        B = self.batch_size
        ids = draw_tasks(k_ids, weights, B)
        K, N = tasks.x.shape[0], tasks.x.shape[1]
        perms = jax.vmap(lambda k: jax.random.choice(k, N, (B,), replace=False))(jax.random.split(k_batch, K))
        idx = perms[ids, jnp.arange(B)]
        return SupervisedBatch(self._augmented(k_augment, self._rows(tasks.x, (ids, idx))), tasks.y[ids, idx],
                               tasks.train_mask[ids])

    def loss(self, params, batch, hparams):
        del hparams
        logits, model_state = self._apply(params, batch.x, train=True)
        loss = data_lib.masked_cross_entropy(logits, batch.y, batch.mask)
        aux = {"score": data_lib.accuracy(logits, batch.y, batch.mask)}
        if model_state is not None:
            aux["model_state"] = model_state
        else:   # inference and training mode agree: these are predict's outputs on samples(batch)
            aux["outputs"] = data_lib.masked_logits(logits, batch.mask)
        return loss, aux

    def score(self, key, params, task, hparams):
        del hparams
        return self.test_accuracy(key, lambda x: self._apply(params, x, train=False)[0], task)

    def test_accuracy(self, key, outputs, task, mask=None):
        """The accuracy of a classifier other than the model on the test samples :meth:`score` draws with ``key``:
        ``outputs(x [n, D]) -> [n, C]`` scores whose highest entry within ``mask`` (default: the task's
        ``test_mask``) is the predicted class. ``score`` is this with the model's logits."""
        x, y = task.x_test, task.y_test
        if self.eval_size is not None and self.eval_size < x.shape[0]:
            idx = jax.random.choice(key, x.shape[0], (self.eval_size,), replace=False)
            x, y = x[idx], y[idx]
        return data_lib.accuracy(outputs(data_lib.pixel_values(x)), y, task.test_mask if mask is None else mask)

    def fisher_data(self, key, params, task, hparams):
        del params, hparams
        n = self.fisher_size
        idx = jax.random.choice(key, task.x.shape[0], (n,), replace=False)
        return self.samples(SupervisedBatch(self._rows(task.x, idx), task.y[idx], task.train_mask))

    def samples(self, batch: SupervisedBatch):
        """Per-sample ``((x, mask), y)``, each sample keeping its task's training mask."""
        mask = jnp.broadcast_to(batch.mask, batch.x.shape[:1] + batch.mask.shape)
        return (batch.x, mask), batch.y

    def rehearse(self, inputs, current):
        """Remembered ``(x, mask)`` made ready to be learned next to the ``current`` samples. Class-incremental:
        under the current training mask (every class seen so far, as van de Ven & Tolias 2019 replay), so old and
        new classes compete in one softmax. Task- and domain-incremental: under the mask of the task the sample
        came from (its own head; domain-incremental tasks share one), so a replayed sample is never trained on
        another task's outputs."""
        x, mask = inputs
        if self.stream.scenario != "class":
            return x, mask
        return x, jnp.broadcast_to(current[0][1][0], mask.shape)

    def sample_loss(self, params, inputs, targets):
        """The masked cross-entropy on per-sample data (each sample under its own mask); a batch-norm model in
        training mode, the samples normalised by their own statistics (the new running averages dropped)."""
        if self.model_state:
            x, mask = inputs
            return data_lib.masked_cross_entropy(self._apply(params, x, train=True)[0], targets, mask)
        return data_lib.masked_cross_entropy(self.predict(params, inputs), targets, inputs[1])

    def predict(self, params, x):
        inputs, mask = x
        return data_lib.masked_logits(self._apply(params, inputs, train=False)[0], mask)

    def features(self, params, inputs):
        """The hidden layers of the source's :class:`~clloop_jax.backbones.MLP` (after the ReLU) on per-sample
        ``(x [N, D], mask)``: ``([N, h_1], ..., [N, h_L])`` (a ``ValueError`` for another model)."""
        return mlp_features(self.model, params, inputs[0])

    # ----- helpers -------------------------------------------------------------------------------------------
    def joint(self) -> "SupervisedSource":
        """The same source with every task trained under its evaluation mask (``train_mask = test_mask``): the
        multi-task upper bound, for :func:`~clloop_jax.run.joint.make_joint_run`. Identical to ``self`` in the task-
        and domain-incremental scenarios, where the two masks agree."""
        stream = self.stream.replace(train_mask=self.stream.test_mask)
        return dataclasses.replace(self, stream=stream)
