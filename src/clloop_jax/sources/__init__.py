"""Task sources: what the continual trainer learns from, one task at a time (see :mod:`.base`).

The one protocol, :class:`~clloop_jax.sources.base.TaskSource`, with its named optional capabilities, and the
sources that ship: the closed loop (:mod:`.world`), labelled streams (:mod:`.supervised`), gymnax environments
learned from reward (:mod:`.gymnax`), and mixtures of a source's tasks (:mod:`.mixture`).

Each name is imported from its module on first use, so importing :mod:`clloop_jax.sources.base` (the protocol, which
the run and the strategies read) loads no source.
"""

from __future__ import annotations

import importlib

#: Where each public name lives.
_EXPORTS = {
    "TaskSource": "base", "REQUIRED": "base", "CAPABILITIES": "base", "capability": "base", "check_source": "base",
    "bind_model_state": "base", "KnownOutputs": "base", "sample_outputs": "base",
    "EnvHParams": "world", "EnvSource": "world", "ImitationLoss": "world", "imitation_loss": "world",
    "squared_error": "world", "sequence_actions": "world", "pair_with_env": "world", "check_model_matches_env": "world",
    "SupervisedBatch": "supervised", "SupervisedSource": "supervised", "EpochStream": "supervised",
    "SAMPLING_MODES": "supervised",
    "GymnaxSource": "gymnax",
    "draw_tasks": "mixture", "mixture_batch": "mixture",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
