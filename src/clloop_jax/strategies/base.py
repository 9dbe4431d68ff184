"""The strategy interface: a continual-learning method as a small value of pure functions, in the optax manner.

A :class:`Strategy` owns a state (any pytree, usually a ``NamedTuple``) and its own hyperparameters (a
``NamedTuple`` of numbers, traced inside the run so that ``jax.vmap`` can sweep them). The run calls

* ``init(params, hp) -> state`` once, before the first task (``init(params, hp, example, source)`` when the
  strategy sets ``init_with_example``: a rehearsal memory is sized from one sample's shapes);
* ``penalty(state, params, hp) -> scalar`` on every update: a term added to the loss (differentiated);
* ``accumulate(state, params_old, params_new, grads, hp) -> state`` after every optimizer step, with ``grads`` the
  gradient of the task loss alone at ``params_old`` (SI's path integral, a dual step on lambda, ...);
* ``consolidate(state, params, hp, importance=None, data=None) -> state`` at the end of every task, with
  ``importance`` the diagonal the strategy declared (``importance="fisher"``: the Fisher diagonal of the task,
  ``"mas"``: MAS's output sensitivity; None otherwise) and ``data`` the task's per-sample ``(inputs, targets)``
  when ``uses_data`` is set (a rehearsal memory filled at the task's end);
* ``trace(state) -> dict`` of scalars recorded every episode (e.g. the adapted lambda);
* ``boundary(state, params, source, key, hp) -> (state, params)`` at the start of every task but the first: with
  ``renew``, one of the two hooks that may replace the parameters (shrink and perturb re-initialises them partly).
  It runs before the
  task's first update (and before the optimizer is reset), never at a consolidation, so the scores recorded after a
  task are those of the parameters that learned it; ``key`` is a stream of its own (the other streams are unchanged
  whether or not a strategy has the hook). Task-free runs have no task starts and refuse a strategy with it;
* ``renew(state, params, samples, source, key, hp) -> (state, params, reset)`` after every update, once the
  optimizer has stepped and ``accumulate`` and ``observe`` have run, with ``params`` the new parameters and
  ``samples`` the update's per-sample batch (as ``observe`` gets it): the hook that may re-initialise parts of the
  network as it learns (continual backpropagation's generate-and-test, ReDo's recycling of dormant units).
  ``reset`` is a pytree of booleans shaped like ``params`` marking the weights it re-initialised, or None for none:
  the run zeroes the optimizer's parameter-shaped state at exactly those positions (Adam's first and second
  moments, as Dohare et al., 2024, reset the moments of the weights they replace; ``optax.tree_utils.
  tree_map_params`` finds those parts of any optax state, and any part that is not shaped like the parameters, such
  as Adam's step count, is kept). ``key`` is a stream of its own (``fold_in(update_key, 3)``): the update's other
  streams are unchanged whether or not a strategy has the hook. Task-free runs call the same update, so the hook
  runs there too;
* ``check_source(source) -> None``: raises ``ValueError`` when the strategy cannot run on ``source`` (the renewing
  strategies need an MLP); :func:`~clloop_jax.run.sequential.make_run` calls it before anything is traced;
* ``evaluate(state, params, source, key, hp) -> score``: what the run evaluates, for the methods whose classifier is
  not the trained network itself (iCaRL's nearest mean of exemplars, GDumb's model trained from scratch on its
  memory). It is called once per evaluation (once per row of ``R``, the baseline included), before any task is
  scored, and returns a function ``score(key, task, source_hp) -> scalar`` that replaces
  ``source.score(key, params, task, source_hp)`` for every task of that evaluation: the work the hook does itself
  (fitting class means, training a model) is done once and shared by the tasks' scores. ``params`` are the run's
  parameters, ``source`` the task source (batch-norm running averages bound), ``key`` a stream of its own
  (``fold_in(eval_key, num_tasks)``: the tasks' keys ``fold_in(eval_key, i)`` are those of a run without the hook)
  and ``hp`` the strategy's hyperparameters. It serves the whole run, the rows that score only their diagonal
  (``RunConfig(evaluate_every > 1)``), ``train_task`` / ``run_stepwise``, ``Run.evaluate`` (which then needs the
  strategy's state, ``state.strategy``) and the task-free run. Without it (None) the evaluation is
  ``source.score`` of the parameters, the program exactly that of a run before the hook existed;

and, for rehearsal methods,

* ``observe(state, params, samples, source, key, hp) -> state`` after every update, with ``samples`` the update's
  batch as per-sample ``(inputs, targets)`` and ``params`` those the batch was learned from (a reservoir memory of
  the stream, with the model's outputs for DER);
* ``replay_loss(state, params, samples, source, key, hp) -> scalar``: a loss added to the task loss, on remembered
  samples or on the current batch's ``samples`` (distillation); its gradient is part of the task gradient. With
  ``replaces_task_loss`` it is the whole objective instead: the strategy computes the incoming batch's loss itself
  (ER-ACE's masked cross-entropy, iCaRL's distillation), and the source's loss is evaluated only for its records
  (the training score, a batch-norm model's running averages), never differentiated;
* ``project(state, params, grads, samples, source, key, hp) -> grads``: a transformation of the gradient before
  the optimizer (A-GEM's projection).

Every hook is optional: one left as None is the identity (or zero) and is not traced into the program. The run knows
only this interface, never a strategy's name; :func:`register` / :func:`get_strategy` map names to factories for
configs and the command line. A strategy written in a user's own file runs through ``make_run`` unchanged::

    class DecayHP(NamedTuple):
        lam: float = 1.0

    def my_penalty(state, params, hp):
        return 0.5 * hp.lam * tree_sum(jax.tree.map(lambda p, a: (p - a) ** 2, params, state))

    mine = Strategy("anchored", DecayHP(), init=lambda params, hp: params, penalty=my_penalty,
                    consolidate=lambda state, params, hp, importance=None, data=None: params)
    run = make_run(RunConfig(strategy=mine), source)
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any, Callable, Dict, NamedTuple, Optional

import jax
import numpy as np

from clloop_jax.validation import FLOAT32_MAX

PyTree = Any

IMPORTANCE_KINDS = ("fisher", "mas")


class NoHParams(NamedTuple):
    """The hyperparameters of a part that has none."""


@dataclasses.dataclass(frozen=True)
class MethodHook:
    """A method of a value, as a hook that compares and hashes by that value (``owner``) and the method's name.

    Python's bound methods compare by the identity of their object, so two strategies built alike from hooks that are
    methods of equal frozen values would be unequal and compile their runs twice; :class:`Strategy` stores every
    bound-method hook as one of these instead."""

    owner: Any
    method: str

    def __call__(self, *args, **kwargs):
        return getattr(self.owner, self.method)(*args, **kwargs)


@dataclasses.dataclass(frozen=True)
class Strategy:
    """A continual-learning strategy (see the module docstring for each hook's contract).

    Attributes:
      name: a short name, used in traces and reports.
      hparams: the default hyperparameters, a ``NamedTuple`` of numbers (``NoHParams()`` when there are none). A
        ``check()`` method on it, if present, validates concrete values.
      init: ``(params, hp) -> state``.
      penalty, accumulate, consolidate, trace, boundary, observe, replay_loss, project, renew, check_source, evaluate:
        optional hooks (None: not used).
      importance: ``"fisher"``, ``"mas"`` or None: the diagonal importance ``consolidate`` receives.
      uses_data: whether ``consolidate`` receives the task's per-sample data.
      init_with_example: ``init`` is called as ``init(params, hp, example, source)``, with ``example`` the shapes
        (``jax.ShapeDtypeStruct``) of one per-sample item ``(inputs, target)``: a memory of samples is sized from it.
      replaces_task_loss: ``replay_loss`` is the whole objective, the incoming batch's loss included (see the
        module docstring); the source's loss is then evaluated for its records only, no backward pass through it.

    Equality and hashing ignore ``hparams`` (they are traced values, not part of the compiled program), so two
    strategies built with different default strengths share one compiled run.
    """

    name: str
    hparams: Any = dataclasses.field(default=NoHParams(), compare=False)
    init: Callable[[PyTree, Any], PyTree] = lambda params, hp: ()
    penalty: Optional[Callable] = None
    accumulate: Optional[Callable] = None
    consolidate: Optional[Callable] = None
    trace: Optional[Callable] = None
    observe: Optional[Callable] = None
    replay_loss: Optional[Callable] = None
    project: Optional[Callable] = None
    importance: Optional[str] = None
    uses_data: bool = False
    init_with_example: bool = False
    boundary: Optional[Callable] = None  # the later fields last, so that positional construction keeps its meaning
    renew: Optional[Callable] = None
    check_source: Optional[Callable] = None
    evaluate: Optional[Callable] = None
    replaces_task_loss: bool = False

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"Strategy.name must be a non-empty string, got {self.name!r}")
        if not (isinstance(self.hparams, tuple) and hasattr(self.hparams, "_fields")):
            raise TypeError(f"Strategy.hparams must be a NamedTuple of numbers (e.g. NoHParams()), got "
                            f"{type(self.hparams).__name__}")
        for hook in ("init", "penalty", "accumulate", "consolidate", "trace", "boundary", "observe", "replay_loss",
                     "project", "renew", "check_source", "evaluate"):
            value = getattr(self, hook)
            if value is not None and not callable(value):
                raise TypeError(f"Strategy.{hook} must be callable or None, got {type(value).__name__}")
            if inspect.ismethod(value):
                object.__setattr__(self, hook, MethodHook(value.__self__, value.__func__.__name__))
        if self.importance is not None and self.importance not in IMPORTANCE_KINDS:
            raise ValueError(f"Strategy.importance must be one of {list(IMPORTANCE_KINDS)} or None, "
                             f"got {self.importance!r}")
        if self.replaces_task_loss and self.replay_loss is None:
            raise ValueError(f"strategy {self.name!r} replaces the task loss but has no replay_loss hook to give it")
        if (self.importance is not None or self.uses_data) and self.consolidate is None:
            raise ValueError(f"strategy {self.name!r} asks for importance or data at consolidation but has no "
                             f"consolidate hook")

    def with_hparams(self, **values) -> "Strategy":
        """The same strategy with other default hyperparameters (validated)."""
        hp = replace_hparams(self.hparams, values, owner=f"strategy {self.name!r}")
        return dataclasses.replace(self, hparams=hp)


# ----------------------------------------------------------------------------------------------------------------
# Hyperparameter checks (concrete values only; traced ones are skipped)
# ----------------------------------------------------------------------------------------------------------------


def concrete(value) -> Optional[np.ndarray]:
    """``value`` as a float64 NumPy array when it is concrete; None when it is traced.

    Raises ``TypeError`` for what is not a real number or an array of them (None, strings, complex, bools).
    """
    if isinstance(value, jax.core.Tracer):
        return None
    if value is None or isinstance(value, (str, bytes, bool, np.bool_)):
        raise TypeError(f"expected a real number or an array of them, got {value!r}")
    if isinstance(value, (list, tuple)):
        raise TypeError(f"expected a number or an array, got a Python {type(value).__name__} {value!r}; "
                        f"use jnp.array(...) for a swept value")
    arr = np.asarray(value)
    if arr.dtype == bool or not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise TypeError(f"expected a real number or an array of them, got {value!r} (dtype {arr.dtype})")
    return arr.astype(np.float64)


def check_hparam(name: str, value, ok: Callable[[np.ndarray], np.ndarray], expected: str) -> None:
    """Raises ``ValueError``/``TypeError`` naming ``name`` unless the concrete ``value`` is finite and ``ok``."""
    try:
        arr = concrete(value)
    except TypeError as err:
        raise TypeError(f"{name}: {err}") from None
    if arr is None:
        return
    if arr.size == 0 or not np.all(np.abs(arr) <= FLOAT32_MAX) or not np.all(ok(arr)):
        overflows = arr.size and np.all(np.isfinite(arr)) and not np.all(np.abs(arr) <= FLOAT32_MAX)
        hint = " (it overflows float32, the dtype hyperparameters are traced in)" if overflows else ""
        raise ValueError(f"{name} must be {expected}, got {value!r}{hint}")


def nonnegative(name, value):
    check_hparam(name, value, lambda v: v >= 0, "a finite number >= 0")


def positive(name, value):
    check_hparam(name, value, lambda v: v > 0, "a finite number > 0")


def unit_interval(name, value):
    check_hparam(name, value, lambda v: (v >= 0) & (v <= 1), "in [0, 1]")


def is_hparams(value) -> bool:
    """Whether ``value`` is a ``NamedTuple`` (of hyperparameters, or of the parts' ``NamedTuple`` in a chain)."""
    return isinstance(value, tuple) and hasattr(value, "_fields")


def hparam_paths(hp, prefix: tuple = ()) -> list:
    """The path (a tuple of field names) of every number of the ``NamedTuple`` ``hp``, nested ones walked in order:
    ``[("lam",)]`` for EWC's, ``[("ewc", "lam"), ("replay", "alpha")]`` for a chain's."""
    paths = []
    for field in hp._fields:
        value = getattr(hp, field)
        paths += hparam_paths(value, prefix + (field,)) if is_hparams(value) else [prefix + (field,)]
    return paths


def matching_paths(paths, name: str) -> list:
    """The paths that end with the dotted ``name``'s parts: ``"lam"`` matches ``("lam",)`` and ``("ewc", "lam")``,
    ``"ewc.lam"`` only the latter."""
    parts = tuple(name.split(".")) if isinstance(name, str) else (name,)
    return [p for p in paths if len(p) >= len(parts) and p[len(p) - len(parts):] == parts]


def path_value(hp, path):
    """The value at ``path`` of the nested ``NamedTuple`` ``hp``."""
    for field in path:
        hp = getattr(hp, field)
    return hp


def with_path(hp, path, value):
    """``hp`` with the value at ``path`` replaced (the nested ``NamedTuple`` rebuilt along the path)."""
    if len(path) == 1:
        return hp._replace(**{path[0]: value})
    return hp._replace(**{path[0]: with_path(getattr(hp, path[0]), path[1:], value)})


def check_hparams(hp, owner: str) -> None:
    """Every concrete field of the ``NamedTuple`` ``hp`` is a finite real number; then ``hp.check()`` if it has one.
    A field that is itself a ``NamedTuple`` (a part of a chain) is checked the same way, its errors naming it."""
    for field in hp._fields:
        value = getattr(hp, field)
        if is_hparams(value):
            try:
                check_hparams(value, f"{owner}: {field}")
            except (TypeError, ValueError) as err:
                if str(err).startswith(f"{owner}: "):
                    raise
                raise type(err)(f"{field}.{err}") from None
            continue
        check_hparam(f"{owner}: {field}", value, lambda v: np.ones_like(v, bool), "a finite number")
    if hasattr(hp, "check"):
        hp.check()


def replace_hparams(hp, values: Dict[str, Any], owner: str):
    """``hp`` with the named values replaced, validated. Names are fields, or for nested ``NamedTuple`` dotted paths
    (``"ewc.lam"``) or a field name that only one part has (``"lam"``); unknown names are refused (``ValueError``
    listing the valid ones), and so are ambiguous ones (listing the candidates)."""
    paths = hparam_paths(hp)
    found = {name: matching_paths(paths, name) for name in values}
    unknown = sorted(name for name, hits in found.items() if not hits)
    if unknown:
        raise ValueError(f"unknown hyperparameter(s) {unknown} for {owner}; it has {['.'.join(p) for p in paths]}")
    new = hp
    for name, value in values.items():
        if len(found[name]) > 1:
            raise ValueError(f"hyperparameter {name!r} is ambiguous for {owner}: "
                             f"{['.'.join(p) for p in found[name]]} all have it; name one of them")
        new = with_path(new, found[name][0], value)
    check_hparams(new, owner)
    return new


# ----------------------------------------------------------------------------------------------------------------
# The registry: names for configs and the command line
# ----------------------------------------------------------------------------------------------------------------

_REGISTRY: Dict[str, Callable[..., Strategy]] = {}


def register(name: str, factory: Callable[..., Strategy], *, overwrite: bool = False) -> None:
    """Makes ``get_strategy(name, **hp)`` call ``factory(**hp)``."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"name must be a non-empty string, got {name!r}")
    if not callable(factory):
        raise TypeError(f"factory must be callable, got {type(factory).__name__}")
    if name in _REGISTRY and not overwrite:
        raise ValueError(f"a strategy named {name!r} is registered already (pass overwrite=True to replace it)")
    _REGISTRY[name] = factory


def registered() -> tuple:
    """The registered strategy names, in registration order."""
    return tuple(_REGISTRY)


def get_strategy(strategy, **hparams) -> Strategy:
    """A :class:`Strategy` from a registered name (``hparams`` passed to its factory) or a strategy itself.

    Registered names joined by ``+`` (``"ewc+replay"``) give their :func:`~clloop_jax.strategies.compose.chain`; an
    argument reaches every part whose factory takes it (``lam``, ``capacity``), a dotted one (``ewc.lam``) that part
    only."""
    if isinstance(strategy, Strategy):
        return strategy.with_hparams(**hparams) if hparams else strategy
    if isinstance(strategy, str):
        if strategy not in _REGISTRY and "+" in strategy:
            return _chain_of_names(strategy, hparams)
        if strategy not in _REGISTRY:
            raise ValueError(f"strategy must be one of {list(_REGISTRY)} or a Strategy, got {strategy!r}")
        return _REGISTRY[strategy](**hparams)
    raise TypeError(f"strategy must be a registered name ({list(_REGISTRY)}) or a Strategy, "
                    f"got {type(strategy).__name__}")



def _chain_of_names(name: str, values: Dict[str, Any]) -> Strategy:
    """The chain of the registered strategies named in ``name`` (joined by ``+``), ``values`` given to their
    factories: a dotted one (``"ewc.lam"``) to that part, another to every part whose factory takes it."""
    from clloop_jax.strategies.compose import chain

    names = name.split("+")
    unknown = [n for n in names if n not in _REGISTRY]
    if unknown:
        raise ValueError(f"strategy {name!r}: {unknown} not registered; the parts of a chain are among "
                         f"{list(_REGISTRY)}")
    args = {n: {} for n in names}
    for key, value in values.items():
        if "." in key:
            part, field = key.split(".", 1)
            if part not in args:
                raise ValueError(f"strategy {name!r} has no part {part!r} (for {key!r}); its parts are {names}")
            args[part][field] = value
            continue
        takers = [n for n in names if _takes(_REGISTRY[n], key)]
        if not takers:
            raise ValueError(f"no part of strategy {name!r} takes {key!r}")
        for n in takers:
            args[n][key] = value
    return chain(*[_REGISTRY[n](**args[n]) for n in names])


def _takes(factory: Callable, argument: str) -> bool:
    """Whether ``factory`` has a parameter ``argument`` (or takes any keyword)."""
    try:
        parameters = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == argument or p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)
