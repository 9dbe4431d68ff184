"""Base class for multi-modal continual-learning worlds (gymnax 1.x compatible) and the task score.

A :class:`MultiModalEnv` is a gymnax ``Environment`` whose observation is a stack of
``num_modalities`` views, each of ``observation_dim`` features, and whose action is a float
vector of ``action_dim`` entries. On top of the gymnax contract it promises two things the
continual-learning loop relies on:

* ``info["feedback"]``: the external feedback vector of the transition, of ``feedback_dim``
  entries. Unless ``step_env`` supplies its own, it is ``[reward, action_0, ..., action_{A-1}]``.
* ``info["target"]``: the expert action for the state of the *returned* observation (after an
  automatic reset, the reset state), given by :meth:`MultiModalEnv.expert_action`.
* ``info["discount"]``: ``0.0`` where the transition ended in a terminal state, else ``1.0`` (as
  gymnax's own environments report it; truncation keeps discount 1).

``step`` checks the action's shape and dtype before anything is traced. As in gymnax, an integer or
boolean action and a nested Python list are accepted; they are converted to a float32 array.
"""
from __future__ import annotations

import inspect
import numbers
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from gymnax.environments import environment, spaces

from clloop_jax.validation import check_array, check_axis, check_float, check_int


class MultiModalEnv(environment.Environment):
    """A gymnax environment with multi-modal observations, float actions, feedback and an expert.

    Subclasses provide ``num_modalities``, ``observation_dim`` and ``action_dim`` (properties or
    plain attributes holding Python ints), ``reset_env(key, params) -> (obs, state)``,
    ``step_env(key, state, action, params) -> (obs, state, reward, terminated, info)`` (the
    gymnax 1.x hooks; ``state.time`` counts steps and ``params.max_steps_in_episode`` truncates),
    ``default_params`` and ``expert_action(state, params)``.

    Observations have shape ``(num_modalities, observation_dim)``; actions ``(action_dim,)``.
    """

    # ------------------------------------------------------------------ sizes
    @property
    def num_modalities(self) -> int:
        """Number of observation modalities (rows of an observation)."""
        raise NotImplementedError

    @property
    def observation_dim(self) -> int:
        """Features per modality (columns of an observation)."""
        raise NotImplementedError

    @property
    def action_dim(self) -> int:
        """Length of the action vector."""
        raise NotImplementedError

    @property
    def feedback_dim(self) -> int:
        """Length of ``info["feedback"]``; the default layout is ``[reward, action...]``."""
        return 1 + self.action_dim

    @property
    def num_actions(self) -> int:
        """gymnax name for the action size: the action dimension of the continuous action."""
        return self.action_dim

    # ------------------------------------------------------------------ spaces
    def observation_space(self, params=None) -> spaces.Box:
        """Unbounded float32 box of shape ``(num_modalities, observation_dim)``."""
        del params
        return spaces.Box(
            -jnp.inf, jnp.inf, (self.num_modalities, self.observation_dim), jnp.float32
        )

    def action_space(self, params=None) -> spaces.Box:
        """Unbounded float32 box of shape ``(action_dim,)``; bounded worlds override this."""
        del params
        return spaces.Box(-jnp.inf, jnp.inf, (self.action_dim,), jnp.float32)

    # ------------------------------------------------------------------ episode ends
    def is_terminated(self, state, params) -> jax.Array:
        """No natural terminal states by default: episodes end by truncation only."""
        del state, params
        return jnp.array(False)

    # ------------------------------------------------------------------ expert and feedback
    def expert_action(self, state, params) -> jax.Array:
        """Expert action (the imitation target) for ``state``; shape ``(action_dim,)``."""
        raise NotImplementedError

    def feedback(self, reward: jax.Array, action: jax.Array) -> jax.Array:
        """Default feedback vector ``[reward, action...]`` (float32, length ``1 + action_dim``)."""
        reward = jnp.reshape(jnp.asarray(reward, jnp.float32), (1,))
        return jnp.concatenate([reward, jnp.asarray(action, jnp.float32)])

    # ------------------------------------------------------------------ checked step
    def check_action(self, action: Any) -> jax.Array:
        """The action as a float32 array of shape ``(action_dim,)``; ``ValueError`` otherwise.

        Floating, integer and boolean arrays, scalars of those kinds and (nested) Python lists or
        tuples of numbers are accepted (gymnax environments accept integer actions); anything
        else, or another shape, is refused before tracing."""
        if isinstance(action, (list, tuple)):
            try:
                try:
                    action = np.asarray(action)
                except jax.errors.TracerArrayConversionError:  # a list holding traced values
                    action = jnp.asarray(action)
            except (TypeError, ValueError) as err:
                raise ValueError(f"action must be a numeric array of shape ({self.action_dim},); received a "
                                 f"{type(action).__name__} that is not a rectangular list of numbers") from err
        shape = tuple(np.shape(action)) if not hasattr(action, "shape") else tuple(action.shape)
        dtype = getattr(action, "dtype", None)
        if dtype is None:
            dtype = np.asarray(action).dtype
        expected = (self.action_dim,)
        numeric = (jnp.issubdtype(dtype, jnp.floating) or jnp.issubdtype(dtype, jnp.integer)
                   or jnp.issubdtype(dtype, jnp.bool_))
        if shape != expected or not numeric:
            raise ValueError(
                f"action must be a numeric (float, integer or bool) array of shape {expected}; "
                f"received shape {shape} and dtype {np.dtype(dtype).name}"
            )
        return jnp.asarray(action, jnp.float32)

    def step(self, key: jax.Array, state, action, params=None):
        """gymnax ``step`` with automatic reset, after checking ``action`` (converted to float32).

        Returns ``(obs, state, reward, terminated, truncated, info)``; ``info`` holds gymnax's
        ``terminated``, ``truncated`` and ``final_observation`` plus ``feedback``, ``target`` and
        ``discount``.
        """
        return self._checked_step(key, state, self.check_action(action), params)

    @partial(jax.jit, static_argnames=("self",))
    def _checked_step(self, key, state, action, params):
        if params is None:
            params = self.default_params
        obs, state, reward, terminated, truncated, info = environment.Environment.step(
            self, key, state, action, params
        )
        info = dict(info)
        if "feedback" not in info:
            info["feedback"] = self.feedback(reward, action)
        info["target"] = self.expert_action(state, params)
        if "discount" not in info:
            info["discount"] = 1.0 - jnp.asarray(terminated).astype(jnp.float32)
        return obs, state, reward, terminated, truncated, info

    # ------------------------------------------------------------------ noise drawn ahead (fast rollouts)
    #: Length of the standard-normal vector that drives one reset or one step, for worlds whose randomness is all
    #: Gaussian and of a fixed size per step. A world that sets it (and implements :meth:`reset_from_noise` and
    #: :meth:`step_from_noise`) lets :func:`~clloop_jax.envs.rollout` draw the noise of a whole rollout in one
    #: batched call instead of splitting a key per step and per world; None (the default) keeps the key path.
    noise_dim: int | None = None

    def reset_from_noise(self, noise: jax.Array, params):
        """``reset_env`` driven by a standard-normal vector ``noise [noise_dim]``: ``(obs, state)``."""
        raise NotImplementedError

    def step_from_noise(self, noise: jax.Array, state, action, params):
        """``step_env`` driven by ``noise [noise_dim]``: ``(obs, state, reward, terminated, info)``."""
        raise NotImplementedError

    def uses_noise_ahead(self) -> bool:
        """Whether :func:`~clloop_jax.envs.rollout` may drive this world by :meth:`step_with_noise` (noise drawn
        ahead) instead of gymnax's keyed ``step``; the one rule every caller uses.

        The noise-driven methods are used only where they provably compute what the keyed hooks compute: each is
        defined by the class that defines the hook it stands in for, or by a subclass of it
        (``step_from_noise`` for ``step_env``, ``reset_from_noise`` for ``reset_env``, ``step_with_noise`` for
        ``step``), and a ``step_with_noise`` of a world's own (not this base class's composition of the two) is
        defined below every one of those four. So a subclass that overrides ``step_env`` or ``reset_env`` (and not
        the noise methods) runs its override, through the keyed path; a world without ``noise_dim`` always does.
        """
        if self.noise_dim is None:
            return False
        cls = type(self)
        pairs = [("step_from_noise", "step_env"), ("reset_from_noise", "reset_env"), ("step_with_noise", "step")]
        if defining_class(cls, "step_with_noise") is not MultiModalEnv:
            pairs += [("step_with_noise", hook) for hook in ("step_env", "reset_env", "step_from_noise",
                                                             "reset_from_noise")]
        return all(issubclass(defining_class(cls, fast), defining_class(cls, slow)) for fast, slow in pairs)

    def step_with_noise(self, noise: jax.Array, state, action, params):
        """One step with gymnax's automatic reset, driven by ``noise [noise_dim]`` instead of a key.

        Where the episode ends, the returned observation and state come from ``reset_from_noise(noise)``: the same
        draw the discarded transition used, so a step costs one draw whether or not it resets (gymnax's ``step``
        draws a reset on every step and throws it away unless the episode ended). Returns ``(obs, state, reward,
        terminated, truncated, info)`` with ``info["feedback"]`` and ``info["target"]`` as in :meth:`step`.
        """
        obs_st, state_st, reward, terminated, info = self.step_from_noise(noise, state, action, params)
        truncated = self.is_truncated(state_st, params)
        done = jnp.logical_or(terminated, truncated)
        obs_re, state_re = self.reset_from_noise(noise, params)
        state = jax.tree.map(lambda r, s: jnp.where(done, r, s), state_re, state_st)
        obs = jnp.where(done, obs_re, obs_st)
        info = dict(info)
        if "feedback" not in info:
            info["feedback"] = self.feedback(reward, action)
        info["target"] = self.expert_action(state, params)
        return obs, state, reward, terminated, truncated, info


def defining_class(cls: type, name: str) -> type:
    """The class in ``cls``'s method resolution order whose own body defines ``name`` (``object`` if none does)."""
    for owner in cls.__mro__:
        if name in vars(owner):
            return owner
    return object


#: Where the worlds' documentation lives, for error messages that point to it.
WORLDS_GUIDE = "docs/guides/worlds.md"

_GYMNAX_STEP = "step_env(self, key, state, action, params) -> (obs, state, reward, done, info)"


def check_step_signature(env) -> None:
    """Refuses (``TypeError``) a world whose ``step`` is not gymnax's ``step(key, state, action, params=None)``: the
    stateful ``step(self, action)`` of an object-oriented world cannot run in a compiled loop; such a world writes
    its dynamics in ``step_env`` instead."""
    cls = type(env)
    owner = defining_class(cls, "step")
    if owner is object or owner is MultiModalEnv or owner is environment.Environment:
        return
    try:
        inspect.signature(env.step).bind("key", "state", "action", "params")
        return
    except TypeError:
        pass
    except ValueError:  # no signature to read (a builtin): nothing to say about it
        return
    raise TypeError(
        f"{cls.__name__}.step{inspect.signature(owner.step)} overrides the world's step with another signature; the "
        f"loop calls step(key, state, action, params) as gymnax does and keeps the state outside the world. Write the "
        f"dynamics as {_GYMNAX_STEP} (and reset_env(self, key, params) -> (obs, state)) instead of step; see "
        f"{WORLDS_GUIDE}")


def check_world(env, *, tasks: Any = None, num_tasks: int | None = None, needs_episode_length: bool = True) -> None:
    """Checks, before anything is traced, that ``env`` is a world the continual-learning loop can run; raises a
    ``TypeError`` or ``ValueError`` naming the missing piece (see :data:`WORLDS_GUIDE`).

    A world is a :class:`MultiModalEnv` that is hashable (it is static configuration of the compiled run); has
    integer sizes ``num_modalities``, ``observation_dim`` and ``action_dim``; defines ``reset_env``, ``step_env``
    (not a stateful ``step(action)``) and ``expert_action``; offers ``tasks(num_tasks)``; and, when
    ``needs_episode_length``, an integer ``episode_length >= 1``. Given ``num_tasks`` and a world that says how many
    tasks it has (an integer ``num_tasks`` attribute, as :class:`~clloop_jax.envs.LatentWorld`), ``num_tasks`` must
    not exceed it. Given ``tasks`` (what ``tasks(num_tasks)`` returned), every leaf must be an array stacked along a
    leading task axis of length ``num_tasks``.
    """
    name = type(env).__name__
    if isinstance(env, type):
        raise TypeError(f"environment must be a world instance, got the class {env.__name__}; pass "
                        f"{env.__name__}(...)")
    if not isinstance(env, MultiModalEnv):
        raise TypeError(f"environment must be a MultiModalEnv (e.g. LatentWorld(...), or a subclass of "
                        f"MultiModalEnv), got {name}; see {WORLDS_GUIDE}")
    check_step_signature(env)
    try:
        hash(env)
    except TypeError as err:
        raise TypeError(f"environment {name} must be hashable (it is static configuration of the compiled run): "
                        f"make it a frozen dataclass (@dataclasses.dataclass(frozen=True)) or keep the default "
                        f"object hash; hashing failed with: {err}") from None
    for size in ("num_modalities", "observation_dim", "action_dim"):
        try:
            value = getattr(env, size)
        except NotImplementedError:
            raise TypeError(f"{name} must define {size}, a Python int (a field or a property); see "
                            f"{WORLDS_GUIDE}") from None
        if size != "observation_dim" or isinstance(value, numbers.Integral):
            check_int(f"{name}.{size}", value, min=1)
    for hook, text in (("reset_env", "reset_env(self, key, params) -> (obs, state)"),
                       ("step_env", _GYMNAX_STEP),
                       ("expert_action", "expert_action(self, state, params) -> action [action_dim]")):
        if defining_class(type(env), hook) in (MultiModalEnv, environment.Environment, object):
            raise TypeError(f"{name} must define {text}; see {WORLDS_GUIDE}")
    if not callable(getattr(env, "tasks", None)):
        raise TypeError(f"{name} must define tasks(self, num_tasks) -> the task parameters (an EnvParams-like "
                        f"pytree) of num_tasks tasks stacked along a leading axis; see {WORLDS_GUIDE}")
    if needs_episode_length:
        length = getattr(env, "episode_length", None)
        if length is None:
            raise TypeError(f"{name} must define episode_length, the number of steps of a training episode (a "
                            f"Python int), or the source must be given num_steps; see {WORLDS_GUIDE}")
        check_int(f"{name}.episode_length", length, min=1)
    own = getattr(env, "num_tasks", None)
    if num_tasks is not None and isinstance(own, numbers.Integral) and not isinstance(own, bool) and num_tasks > own:
        raise ValueError(f"num_tasks={num_tasks} is more than the {own} tasks of the world {name} (its num_tasks="
                         f"{own}): learn at most {own} tasks, or make the world with num_tasks={num_tasks}")
    if tasks is not None:
        leaves = jax.tree_util.tree_flatten_with_path(tasks)[0]
        if not leaves:
            raise ValueError(f"{name}.tasks({num_tasks}) returned {type(tasks).__name__} with no array fields")
        for path, leaf in leaves:
            shape = tuple(np.shape(leaf))
            if not shape or shape[0] != num_tasks:
                field = jax.tree_util.keystr(path, simple=True, separator=".") or "the value"
                raise ValueError(
                    f"{name}.tasks({num_tasks}) must stack every task parameter along a leading task axis of length "
                    f"{num_tasks}; field {field} has shape {shape}. A value shared by all tasks is repeated, e.g. "
                    f"jnp.full(({num_tasks},), value), or kept out of the pytree with "
                    f"flax.struct.field(pytree_node=False); see {WORLDS_GUIDE}")


def normalized_score(actions, targets, clip_min: float | None = -1.0, axis=None) -> jax.Array:
    """Imitation score ``1 - sum |a - a*|^2 / sum |a*|^2``, clipped below at ``clip_min``.

    Sums run over ``axis`` (default: every axis, i.e. all given steps, envs and action entries).
    1 means the expert, 0 the zero action; the lower clip keeps one forgotten task from wrecking
    an average (``clip_min=None`` disables it). A target sum of zero counts as a perfect score
    when the actions match it exactly and as ``clip_min`` otherwise.
    """
    actions = jnp.asarray(check_array("actions", actions))
    targets = jnp.asarray(check_array("targets", targets))
    check_axis("axis", axis, actions.ndim, allow_tuple=True)
    check_float("clip_min", clip_min, max=1, finite=False, allow_none=True, scalar=True)
    if actions.shape != targets.shape:
        raise ValueError(
            "actions and targets must have the same shape; received actions "
            f"{actions.shape} and targets {targets.shape}"
        )
    dtype = jnp.result_type(actions.dtype, targets.dtype, jnp.float32)
    actions = actions.astype(dtype)
    targets = targets.astype(dtype)
    err = jnp.sum(jnp.square(actions - targets), axis=axis)
    ref = jnp.sum(jnp.square(targets), axis=axis)
    score = 1.0 - err / jnp.maximum(ref, jnp.finfo(dtype).tiny)
    if clip_min is not None:
        score = jnp.maximum(score, jnp.asarray(clip_min, dtype))
    return score
