"""The cross-modal recurrent agent.

One step of :class:`CrossModalModel` maps ``(carry, obs, feedback)`` to ``(carry', output)``:

1. **Encoders.** Each modality ``m`` has its own ``Dense(hidden_dim) -> gelu`` encoder that turns
   its observation ``x_m`` (width ``D_m``) into a token of width ``hidden_dim``. The internal
   recurrent state (the carry) is encoded the same way into a *state token*, and, when
   ``feedback_dim > 0``, the external feedback vector into a *feedback token* of its own (a
   separate token rather than a sum with the state token, so attention can weigh "what I
   remember" and "what the world just told me" independently). A learned per-token embedding
   (``token_embedding``, one row per token kind) is added after the nonlinearity.
2. **Cross-modal attention.** The token set ``[modality_1, ..., modality_M, state(, feedback)]``
   goes through one multi-head dot-product attention in which every token queries every token
   (``mha(tokens, tokens)``): modality tokens read from each other and from the state, and the
   state token reads from every modality. Residual connection, then LayerNorm.
3. **Fusion.** The attended tokens are concatenated in their fixed order and mapped by
   ``Dense(hidden_dim) -> gelu`` to one vector, so modality identity is kept by position.
4. **Recurrence.** ``nn.GRUCell(hidden_dim)`` updates the carry from the fused vector (orthogonal recurrent
   kernels from :func:`reflection_orthogonal`, which needs no QR, so many seeds initialise under ``vmap``).
5. **Head.** A linear layer on the new carry gives ``output_dim`` numbers (an action mean for
   control, logits for classification: the objective decides). Its kernel is initialised with a
   small scale (``head_init_scale``) and its bias with zeros, so an untrained agent outputs
   near-zero actions.

Shapes: any number of leading batch dimensions (or none). ``obs`` is either one array
``[..., M, D]`` (only when all modality sizes are equal) or a tuple/list of ``M`` arrays
``[..., D_m]``; ``carry`` is ``[..., hidden_dim]``; ``feedback`` is ``[..., feedback_dim]``.
All inputs must share exactly the same leading (batch) shape. Shapes are checked in Python
before any computation, with a ``ValueError`` naming the argument, the expected and the received
shape.

Typical use::

    model = CrossModalModel(input_dim=(64, 16), hidden_dim=64, output_dim=4,
                            num_modalities=2, feedback_dim=3)
    variables = model.init_params(jax.random.key(0))
    carry = model.initial_carry((8,))
    carry, action = model.apply(variables, carry, (x_vis, x_aud), fb)           # one step
    carry, actions = model.apply(variables, carry, obs_seq, fb_seq,
                                 method=CrossModalModel.sequence)                 # T steps

Classifiers for labelled task streams live here too: :class:`MLP`, the fully connected ReLU baseline of
the continual-learning literature, :class:`SequenceClassifier`, which lets a ``CrossModalModel`` read a
1-D signal as a sequence of chunks and classify it from its last output, and (defined in
:mod:`clloop_jax.backbones`) two convolutional backbones with batch norm for images, :class:`ConvNet` and
:class:`ResNet18`.
"""
from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from clloop_jax.backbones import MLP, ConvNet, ResNet18
from clloop_jax.importance.dense_taps import TAP_COLLECTION
from clloop_jax.validation import check_float, check_instance, check_int

__all__ = ["ConvNet", "CrossModalModel", "MLP", "ResNet18", "SequenceClassifier", "reflection_orthogonal"]

Array = jax.Array


def _is_int(x: Any) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def _shape(x: Any) -> tuple[int, ...]:
    """Static shape of an array-like, without converting tracers."""
    shape = getattr(x, "shape", None)
    if shape is None:
        shape = np.shape(x)
    return tuple(shape)


def reflection_orthogonal(scale: float = 1.0):
    """An initializer of matrices with orthonormal columns (or rows, when wider than tall), from products only.

    ``Q = H_0 H_1 ... H_{n-1}`` with ``H_k = I - 2 v_k v_k^T / |v_k|^2`` and ``v_k`` Gaussian on the coordinates
    ``k..n-1``, then cut to ``shape`` and scaled. Unlike a QR decomposition it needs no LAPACK call, so a model
    initialised inside ``jax.vmap`` (many seeds at once) stays one batched matrix product: a batched QR's CPU
    kernels can deadlock on machines with few cores.
    """

    def init(key, shape, dtype=jnp.float32):
        if len(shape) != 2:
            raise ValueError(f"reflection_orthogonal: expected a 2-D shape, got {tuple(shape)}")
        n = max(shape)
        on_subspace = jnp.arange(n)[None, :] >= jnp.arange(n)[:, None]  # row k: coordinates k..n-1
        v = jax.random.normal(key, (n, n), jnp.float32) * on_subspace

        def reflect(q, vk):
            return q - (2.0 / jnp.sum(vk * vk)) * jnp.outer(q @ vk, vk), None

        q, _ = jax.lax.scan(reflect, jnp.eye(n, dtype=jnp.float32), v)
        return (scale * q[: shape[0], : shape[1]]).astype(dtype)

    return init


class CrossModalModel(nn.Module):
    """Cross-modal recurrent model: per-modality encoders, attention over modality and state
    tokens, a GRU cell and a linear head. See the module docstring for the architecture.

    Attributes:
      input_dim: feature size of every modality (an int), or one size per modality (a sequence
        of length ``num_modalities``).
      hidden_dim: width of tokens, of the fused vector and of the recurrent carry.
      output_dim: size of the output (action mean or logits).
      num_modalities: number of observation modalities ``M``.
      num_heads: attention heads; must divide ``hidden_dim``.
      feedback_dim: size of the external feedback vector; 0 means no feedback input. None (the default) means
        "the environment's": whoever pairs the model with an environment (``EnvSource``, the facade) sets it to
        ``environment.feedback_dim``; a model used on its own with None takes no feedback.
      head_init_scale: variance scale of the output head's kernel initialiser (fan-in, truncated
        normal); small values make an untrained agent output near zero.
    """

    input_dim: int | Sequence[int] = 64
    hidden_dim: int = 128
    output_dim: int = 32
    num_modalities: int = 1
    num_heads: int = 4
    feedback_dim: int | None = None
    head_init_scale: float = 1e-2

    def __post_init__(self):
        def positive(field: str, value: Any) -> None:
            check_int(f"CrossModalModel.{field}", value, min=1)

        positive("num_modalities", self.num_modalities)
        if _is_int(self.input_dim):
            positive("input_dim", self.input_dim)
        elif isinstance(self.input_dim, Sequence) and not isinstance(self.input_dim, (str, bytes)):
            dims = tuple(self.input_dim)
            if len(dims) != self.num_modalities:
                raise ValueError(
                    f"CrossModalModel.input_dim: expected one size per modality "
                    f"(length num_modalities={self.num_modalities}), got {dims!r} of length {len(dims)}"
                )
            for m, d in enumerate(dims):
                positive(f"input_dim[{m}]", d)
            # Store as a tuple of Python ints so the module stays hashable.
            object.__setattr__(self, "input_dim", tuple(int(d) for d in dims))
        else:
            raise ValueError(
                f"CrossModalModel.input_dim: expected a positive int or a sequence of "
                f"{self.num_modalities} positive ints, got {self.input_dim!r}"
            )
        positive("hidden_dim", self.hidden_dim)
        positive("output_dim", self.output_dim)
        positive("num_heads", self.num_heads)
        check_int("CrossModalModel.feedback_dim", self.feedback_dim, min=0, allow_none=True)
        if self.hidden_dim % self.num_heads != 0:
            raise ValueError(
                f"CrossModalModel.hidden_dim: expected a multiple of num_heads={self.num_heads}, "
                f"got {self.hidden_dim}"
            )
        check_float("CrossModalModel.head_init_scale", self.head_init_scale, min=0, open_min=True, scalar=True)
        super().__post_init__()

    # ------------------------------------------------------------------ static helpers

    @property
    def modality_dims(self) -> tuple[int, ...]:
        """Feature size of each modality, length ``num_modalities``."""
        if _is_int(self.input_dim):
            return (int(self.input_dim),) * self.num_modalities
        return tuple(self.input_dim)

    @property
    def num_tokens(self) -> int:
        """Tokens attended over per step: one per modality, the state token, the feedback token."""
        return self.num_modalities + 1 + (1 if self.num_feedback > 0 else 0)

    @property
    def num_feedback(self) -> int:
        """The size of the feedback input actually taken: ``feedback_dim``, with None counting as 0."""
        return self.feedback_dim or 0

    @nn.nowrap
    def initial_carry(self, batch_shape: Sequence[int] | int = ()) -> Array:
        """Zero carry of shape ``[*batch_shape, hidden_dim]``; needs no parameters."""
        if _is_int(batch_shape):
            batch_shape = (batch_shape,)
        if not isinstance(batch_shape, Sequence) or isinstance(batch_shape, str):
            check_int("batch_shape", batch_shape, min=0)  # raises: neither an int nor a sequence of ints
        batch_shape = tuple(check_int(f"batch_shape[{i}]", b, min=0) for i, b in enumerate(batch_shape))
        return jnp.zeros(batch_shape + (self.hidden_dim,), jnp.float32)

    @nn.nowrap
    def dummy_inputs(self, batch_shape: Sequence[int] = ()) -> tuple[Array, tuple[Array, ...], Array | None]:
        """Zero ``(carry, obs, feedback)`` of the right shapes (obs as a tuple of modalities)."""
        batch_shape = tuple(batch_shape)
        carry = self.initial_carry(batch_shape)
        obs = tuple(jnp.zeros(batch_shape + (d,), jnp.float32) for d in self.modality_dims)
        feedback = jnp.zeros(batch_shape + (self.num_feedback,), jnp.float32) if self.num_feedback > 0 else None
        return carry, obs, feedback

    @nn.nowrap
    def init_params(self, key: Array) -> dict:
        """Initialise the variables with unbatched dummy inputs (``{'params': ...}``)."""
        carry, obs, feedback = self.dummy_inputs(())
        return self.init(key, carry, obs, feedback)

    # ------------------------------------------------------------------ validation

    @nn.nowrap
    def _check_obs(self, obs: Any, name: str, lead: str) -> tuple[tuple[Any, ...], tuple[int, ...]]:
        """Split ``obs`` into a tuple of per-modality arrays and return their common leading shape.

        ``lead`` is a human-readable prefix for the expected shapes ("..." or "T, ...").
        """
        M, dims = self.num_modalities, self.modality_dims
        if isinstance(obs, (tuple, list)):
            if len(obs) != M:
                raise ValueError(
                    f"{name}: expected a tuple of {M} modality arrays with shapes "
                    f"{[f'[{lead}, {d}]' for d in dims]}, received {len(obs)} arrays with shapes "
                    f"{[_shape(o) for o in obs]}"
                )
            shapes = [_shape(o) for o in obs]
            for m, (s, d) in enumerate(zip(shapes, dims)):
                if len(s) == 0 or s[-1] != d:
                    raise ValueError(
                        f"{name}[{m}]: expected shape [{lead}, {d}] (modality {m} has {d} features), "
                        f"received {s}"
                    )
            batch = shapes[0][:-1]
            for m, s in enumerate(shapes):
                if s[:-1] != batch:
                    raise ValueError(
                        f"{name}[{m}]: expected leading shape {batch} (that of {name}[0]), "
                        f"received {s[:-1]} (full shape {s})"
                    )
            return tuple(obs), batch
        s = _shape(obs)
        if len(set(dims)) != 1:
            raise ValueError(
                f"{name}: modalities have different sizes {dims}, so expected a tuple of {M} arrays "
                f"with shapes {[f'[{lead}, {d}]' for d in dims]}, received one array of shape {s}"
            )
        d = dims[0]
        if len(s) < 2 or s[-2] != M or s[-1] != d:
            raise ValueError(f"{name}: expected shape [{lead}, {M}, {d}] (M={M} modalities of {d} features), received {s}")
        return tuple(obs[..., m, :] for m in range(M)), s[:-2]

    @nn.nowrap
    def _check_feedback(self, feedback: Any, name: str, lead: str, batch: tuple[int, ...]) -> Any:
        F = self.num_feedback
        if F == 0:
            if feedback is not None:
                raise ValueError(
                    f"{name}: the model has feedback_dim=0, so expected None, received an array of "
                    f"shape {_shape(feedback)}"
                )
            return None
        if feedback is None:
            raise ValueError(f"{name}: expected an array of shape [{lead}, {F}] (feedback_dim={F}), received None")
        s = _shape(feedback)
        if len(s) == 0 or s[-1] != F or s[:-1] != batch:
            raise ValueError(
                f"{name}: expected shape {batch + (F,)} ([{lead}, feedback_dim={F}]), received {s}"
            )
        return feedback

    @nn.nowrap
    def _check_carry(self, carry: Any, batch: tuple[int, ...], obs_name: str) -> None:
        s = _shape(carry)
        H = self.hidden_dim
        if len(s) == 0 or s[-1] != H:
            raise ValueError(f"carry: expected shape [..., {H}] (hidden_dim={H}), received {s}")
        if s[:-1] != batch:
            raise ValueError(
                f"carry: expected shape {batch + (H,)} (batch shape {batch} of {obs_name}), received {s}"
            )

    # ------------------------------------------------------------------ layers

    def setup(self):
        H = self.hidden_dim
        self.encoders = [nn.Dense(H, name=f"encoder_{m}") for m in range(self.num_modalities)]
        self.state_encoder = nn.Dense(H)
        self.feedback_encoder = nn.Dense(H) if self.num_feedback > 0 else None
        self.token_embedding = self.param(
            "token_embedding", nn.initializers.normal(stddev=0.02), (self.num_tokens, H), jnp.float32
        )
        self.attention = nn.MultiHeadDotProductAttention(
            num_heads=self.num_heads, qkv_features=H, out_features=H
        )
        self.attention_norm = nn.LayerNorm()
        self.fusion = nn.Dense(H)
        self.gru = nn.GRUCell(features=H, recurrent_kernel_init=reflection_orthogonal())
        self.head = nn.Dense(
            self.output_dim,
            kernel_init=nn.initializers.variance_scaling(self.head_init_scale, "fan_in", "truncated_normal"),
            bias_init=nn.initializers.zeros_init(),
        )

    def _step(self, carry: Array, obs: tuple[Array, ...], feedback: Array | None) -> tuple[Array, Array]:
        """One step on validated inputs: ``obs`` is a tuple of ``[..., D_m]`` arrays."""
        _, new_carry = self._hidden(carry, obs, feedback)
        return new_carry, self.head(new_carry)

    def _hidden(self, carry: Array, obs: tuple[Array, ...], feedback: Array | None) -> tuple[Array, Array]:
        """``(fused, new_carry)``: the fusion layer's activations and the recurrent state the head reads."""
        tokens = [nn.gelu(enc(x)) for enc, x in zip(self.encoders, obs)]
        tokens.append(nn.gelu(self.state_encoder(carry)))
        if self.feedback_encoder is not None:
            tokens.append(nn.gelu(self.feedback_encoder(feedback)))
        tok_BxNxH = jnp.stack(tokens, axis=-2) + self.token_embedding
        att_BxNxH = self.attention(tok_BxNxH, tok_BxNxH)
        tok_BxNxH = self.attention_norm(tok_BxNxH + att_BxNxH)
        flat = tok_BxNxH.reshape(tok_BxNxH.shape[:-2] + (self.num_tokens * self.hidden_dim,))
        fused = nn.gelu(self.fusion(flat))
        new_carry, _ = self.gru(carry, fused)
        return fused, new_carry

    # ------------------------------------------------------------------ public calls

    def __call__(
        self, carry: Array, obs: Array | Sequence[Array] | None = None, feedback: Array | None = None
    ) -> tuple[Array, Array]:
        """One step: returns ``(new_carry [..., hidden_dim], output [..., output_dim])``.

        Called as ``model.apply(params, carry, obs, feedback)``: a flax module holds no parameters of its own, so
        the one-argument ``model(observations)`` of a stateful model is refused with a ``TypeError`` that says what
        to write (in a :class:`~clloop_jax.ContinualLearningLoop`, ``output, internal_state = loop.act(obs)``)."""
        if obs is None:
            raise TypeError(
                "CrossModalModel takes (carry, obs, feedback) and returns (new_carry, output); it was called with "
                "one argument, as in model(observations). A flax module holds no parameters of its own: write "
                "`carry, output = model.apply(params, model.initial_carry(batch_shape), observations, feedback)`, "
                "or, in a ContinualLearningLoop (self in a subclass), `output, internal_state = loop.act("
                "observations)` for the loop's current parameters")
        obs_t, batch = self._check_obs(obs, "obs", "...")
        feedback = self._check_feedback(feedback, "feedback", "...", batch)
        self._check_carry(carry, batch, "obs")
        return self._step(carry, obs_t, feedback)

    def features(
        self, carry: Array, obs: Array | Sequence[Array], feedback: Array | None = None
    ) -> tuple[Array, Array]:
        """The hidden layers of one step, as the plasticity measurements read them: ``(fused [..., hidden_dim],
        new_carry [..., hidden_dim])``, the fusion layer's activations (after its GELU) and the new recurrent state
        (the representation the head reads). Called as ``model.apply(params, carry, obs, feedback,
        method=model.features)``; the same inputs as ``__call__``."""
        obs_t, batch = self._check_obs(obs, "obs", "...")
        feedback = self._check_feedback(feedback, "feedback", "...", batch)
        self._check_carry(carry, batch, "obs")
        return self._hidden(carry, obs_t, feedback)

    def sequence(
        self,
        carry: Array,
        obs_seq: Array | Sequence[Array],
        feedback_seq: Array | None = None,
    ) -> tuple[Array, Array]:
        """Run the step over time (axis 0) with ``nn.scan``, sharing parameters with ``__call__``.

        Args:
          carry: ``[..., hidden_dim]``.
          obs_seq: ``[T, ..., M, D]`` or a tuple/list of ``M`` arrays ``[T, ..., D_m]``.
          feedback_seq: ``[T, ..., feedback_dim]``, or None iff ``feedback_dim == 0``.

        Returns:
          ``(final_carry [..., hidden_dim], outputs [T, ..., output_dim])``.
        """
        obs_t, lead = self._check_obs(obs_seq, "obs_seq", "T, ...")
        if len(lead) == 0:
            raise ValueError(
                f"obs_seq: expected a leading time axis, shape [T, ..., D]; received per-modality "
                f"shapes {[_shape(o) for o in obs_t]}"
            )
        batch = lead[1:]
        feedback_seq = self._check_feedback(feedback_seq, "feedback_seq", "T, ...", lead)
        self._check_carry(carry, batch, "obs_seq (after the time axis)")

        def body(mdl: CrossModalModel, c: Array, xs: tuple) -> tuple[Array, Array]:
            o, f = xs
            return mdl._step(c, o, f)

        scan = nn.scan(
            body,
            variable_broadcast="params",
            variable_axes={TAP_COLLECTION: 0},  # per-step dense-layer taps, present only for per-layer Fisher
            split_rngs={"params": False},
            in_axes=0,
            out_axes=0,
        )
        return scan(self, carry, (obs_t, feedback_seq))


# ---------------------------------------------------------------------------------------------------------------
# Classifiers for labelled task streams
# ---------------------------------------------------------------------------------------------------------------


class SequenceClassifier(nn.Module):
    """Reads a 1-D signal ``x [..., L]`` as ``L / chunk`` consecutive chunks, one per step of ``model``, and
    returns ``model``'s output at the last step (logits ``[..., model.output_dim]``).

    ``model`` must be a one-modality :class:`CrossModalModel` with ``input_dim == chunk`` and no feedback; its
    carry starts at zero for every signal. Its parameters live under ``params['params']['model']``.

    Attributes:
      model: the recurrent model that reads the chunks.
      chunk: the number of signal values read per step; must divide ``L``.
    """

    model: CrossModalModel
    chunk: int

    def __post_init__(self):
        check_int("SequenceClassifier.chunk", self.chunk, min=1)
        check_instance("SequenceClassifier.model", self.model, CrossModalModel)
        if self.model.num_modalities != 1:
            raise ValueError(f"SequenceClassifier.model: expected num_modalities=1 (one signal), "
                             f"got {self.model.num_modalities}")
        if self.model.modality_dims != (self.chunk,):
            raise ValueError(f"SequenceClassifier.model: expected input_dim={self.chunk} (= chunk), "
                             f"got {self.model.input_dim!r}")
        if self.model.num_feedback != 0:
            raise ValueError(f"SequenceClassifier.model: expected feedback_dim=0, got {self.model.feedback_dim}")
        super().__post_init__()

    def __call__(self, x: Array) -> Array:
        s = _shape(x)
        if len(s) == 0 or s[-1] % self.chunk != 0:
            raise ValueError(f"SequenceClassifier: x: expected shape [..., L] with L a multiple of "
                             f"chunk={self.chunk}, received {s}")
        batch = s[:-1]
        steps = s[-1] // self.chunk
        seq_TxBxC = jnp.moveaxis(jnp.asarray(x, jnp.float32).reshape(batch + (steps, self.chunk)), -2, 0)
        carry = self.model.initial_carry(batch)
        _, out_TxBxK = self.model.sequence(carry, (seq_TxBxC,), None)
        return out_TxBxK[-1]

