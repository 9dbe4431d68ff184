"""Strategies that compose: ``chain(ewc(), replay())`` is one :class:`~clloop_jax.strategies.base.Strategy`.

The chain's parts run side by side, each on its own state and with its own hyperparameters:

* its state is the tuple of the parts' states, in order;
* ``penalty`` and ``replay_loss`` are the sums of the parts' terms (a part that replaces the task loss, at most
  one, makes the chain replace it: its objective plus the other parts' terms); ``accumulate``, ``consolidate`` and
  ``observe`` run each part on its own state; ``project`` and ``boundary`` apply the parts' hooks one after the
  other, in order;
* ``renew`` runs the parts' hooks in order, each on the parameters the previous part left, and its ``reset`` marks
  a weight that any part re-initialised (the parts' masks OR-ed; None when no part marks any); ``check_source``
  asks every part that has one;
* ``evaluate`` (what the run scores) is that of the one part that has it: a run has one classifier, so two parts
  with the hook are refused (``ValueError``);
* ``trace`` merges the parts' records; a key that two parts record is prefixed with each part's name
  (``ewc.reg_lambda``);
* ``init_with_example`` and ``uses_data`` hold when a part needs them (each part's ``init`` is called the way it
  expects, and each part's ``consolidate`` receives the data only if it asked for it);
* the importance is that of the parts that declare one: the run computes one diagonal per consolidation, which every
  part asking for that kind shares. Parts asking for two different kinds (``fisher`` and ``mas``) cannot share it
  and are refused (``ValueError``);
* a hook that no part has is None in the chain too, so it stays out of the compiled program.

A part that needs random draws gets the run's key for that hook when it is the first part with the hook, and a key
folded with its position otherwise, so a chain of one strategy is that strategy, number for number.

The chain's ``hparams`` is a ``NamedTuple`` whose fields are the parts' names, each holding that part's own
``NamedTuple``; the run addresses them with dotted names (``run.hparams(**{"ewc.lam": 3.0})``, ``hp.axes("ewc.lam")``)
or with a part's field alone where only one part has it (``lam``). The chain is named by its parts' names joined by
``+`` (``"ewc+replay"``); a part that is itself a chain contributes its parts; each name appears once.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import keyword
from typing import Optional

import jax
import jax.numpy as jnp

from clloop_jax.strategies.base import Strategy, get_strategy

__all__ = ["chain", "chain_parts"]

_HOOKS = ("penalty", "accumulate", "consolidate", "trace", "boundary", "observe", "replay_loss", "project", "renew",
          "check_source", "evaluate")


@functools.lru_cache(maxsize=None)
def _hparams_type(names: tuple):
    """One ``NamedTuple`` type per sequence of part names, so that equal chains have hyperparameters of one type."""
    return collections.namedtuple("ChainHParams", names, module=__name__)


@dataclasses.dataclass(frozen=True)
class _Chain:
    """The chain's hooks over its ``parts`` (their order is the order of every sum and composition)."""

    parts: tuple

    def _with(self, hook: str) -> list:
        return [i for i, p in enumerate(self.parts) if getattr(p, hook) is not None]

    def _key(self, key, hook: str, i: int):
        return key if i == self._with(hook)[0] else jax.random.fold_in(key, i)

    def init(self, params, hp, example=None, source=None):
        return tuple(p.init(params, h, example, source) if p.init_with_example else p.init(params, h)
                     for p, h in zip(self.parts, hp))

    def penalty(self, state, params, hp):
        return _total(self.parts[i].penalty(state[i], params, hp[i]) for i in self._with("penalty"))

    def accumulate(self, state, params_old, params_new, grads, hp):
        return tuple(s if p.accumulate is None else p.accumulate(s, params_old, params_new, grads, h)
                     for p, s, h in zip(self.parts, state, hp))

    def consolidate(self, state, params, hp, importance=None, data=None):
        return tuple(s if p.consolidate is None else p.consolidate(
            s, params, h, importance=importance if p.importance is not None else None,
            data=data if p.uses_data else None) for p, s, h in zip(self.parts, state, hp))

    def trace(self, state):
        records = [(self.parts[i].name, self.parts[i].trace(state[i])) for i in self._with("trace")]
        counts = collections.Counter(k for _, record in records for k in record)
        return {(f"{name}.{k}" if counts[k] > 1 else k): v for name, record in records for k, v in record.items()}

    def boundary(self, state, params, source, key, hp):
        state = list(state)
        for i in self._with("boundary"):
            state[i], params = self.parts[i].boundary(state[i], params, source, self._key(key, "boundary", i), hp[i])
        return tuple(state), params

    def observe(self, state, params, samples, source, key, hp):
        return tuple(s if p.observe is None else p.observe(s, params, samples, source, self._key(key, "observe", i), h)
                     for i, (p, s, h) in enumerate(zip(self.parts, state, hp)))

    def replay_loss(self, state, params, samples, source, key, hp):
        return _total(self.parts[i].replay_loss(state[i], params, samples, source, self._key(key, "replay_loss", i),
                                                hp[i]) for i in self._with("replay_loss"))

    def project(self, state, params, grads, samples, source, key, hp):
        for i in self._with("project"):
            grads = self.parts[i].project(state[i], params, grads, samples, source, self._key(key, "project", i),
                                          hp[i])
        return grads

    def renew(self, state, params, samples, source, key, hp):
        state, reset = list(state), None
        for i in self._with("renew"):
            state[i], params, part_reset = self.parts[i].renew(state[i], params, samples, source,
                                                               self._key(key, "renew", i), hp[i])
            reset = _either(reset, part_reset)
        return tuple(state), params, reset

    def check_source(self, source):
        for i in self._with("check_source"):
            self.parts[i].check_source(source)

    def evaluate(self, state, params, source, key, hp):
        (i,) = self._with("evaluate")  # chain() refuses two parts with the hook
        return self.parts[i].evaluate(state[i], params, source, key, hp[i])


def _either(a, b):
    """The positions marked in ``a`` or in ``b`` (boolean pytrees shaped like the parameters; None marks none)."""
    if a is None or b is None:
        return b if a is None else a
    return jax.tree.map(jnp.logical_or, a, b)


def _total(terms):
    total = None
    for term in terms:
        total = term if total is None else total + term
    return total


def chain_parts(strategy: Strategy) -> Optional[tuple]:
    """The parts of a chain (each with the hyperparameters the chain holds for it); None for another strategy."""
    hooks = getattr(strategy.init, "owner", None)
    if not isinstance(hooks, _Chain):
        return None
    return tuple(dataclasses.replace(p, hparams=getattr(strategy.hparams, p.name)) for p in hooks.parts)


def chain(*strategies) -> Strategy:
    """One strategy made of several (see the module docstring): ``chain(ewc(lam=10.0), replay(capacity=200))``.

    Args:
      strategies: :class:`~clloop_jax.strategies.base.Strategy` values or registered names; a chain among them
        contributes its parts.

    Raises ``ValueError`` when there is no part, when a name appears twice (``ewc`` with ``ewc``, or a chain holding
    it), when a name is not a Python identifier (it names a field of the hyperparameters), when the parts ask for
    two different importances (``fisher`` and ``mas``: the run computes one per consolidation), and when two parts
    change what the run evaluates (an ``evaluate`` hook each).
    """
    parts = []
    for strategy in strategies:
        strategy = get_strategy(strategy)
        inner = chain_parts(strategy)
        parts.extend(inner if inner is not None else (strategy,))
    if not parts:
        raise ValueError("chain needs at least one strategy")
    names = [p.name for p in parts]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"chain: strategy {repeated[0]!r} appears more than once in {names}; each part must have a "
                         f"name of its own")
    for name in names:
        if not name.isidentifier() or keyword.iskeyword(name) or name.startswith("_"):
            raise ValueError(f"chain: the part name {name!r} must be a Python identifier not starting with '_' "
                             f"(it names the part's hyperparameters, as in '{name}.lam')")
    kinds = sorted({p.importance for p in parts if p.importance is not None})
    if len(kinds) > 1:
        asking = {k: [p.name for p in parts if p.importance == k] for k in kinds}
        raise ValueError(f"chain: the parts ask for different importances {asking}; a run computes one importance "
                         f"per consolidation, so they cannot be chained")
    replacing = [p.name for p in parts if p.replaces_task_loss]
    if len(replacing) > 1:
        raise ValueError(f"chain: the parts {replacing} each replace the task loss with their own objective; at most "
                         f"one part may")
    evaluating = [p.name for p in parts if p.evaluate is not None]
    if len(evaluating) > 1:
        raise ValueError(f"chain: the parts {evaluating} each change what the run evaluates (an evaluate hook); a run "
                         f"scores one classifier, so at most one part may have the hook")
    hooks = _Chain(tuple(parts))
    present = {h: getattr(hooks, h) if any(getattr(p, h) is not None for p in parts) else None for h in _HOOKS}
    hp = _hparams_type(tuple(names))(*[p.hparams for p in parts])
    return Strategy("+".join(names), hp, init=hooks.init, importance=kinds[0] if kinds else None,
                    uses_data=any(p.uses_data for p in parts),
                    init_with_example=any(p.init_with_example for p in parts), replaces_task_loss=bool(replacing),
                    **present)
