"""The task-source protocol: its required members, its named optional capabilities and their defaults."""

from __future__ import annotations

import types

import pytest

from clloop_jax.sources.base import CAPABILITIES, REQUIRED, capability, check_source
from clloop_jax.sources.mixture import check_mixture, mixture_batch
from clloop_jax.strategies.base import NoHParams


def test_a_source_without_a_capability_gets_its_default():
    bare = types.SimpleNamespace()
    assert isinstance(capability(bare, "hparams"), NoHParams)
    assert capability(bare, "streaming") is False and capability(bare, "minibatch_passes") == 1
    assert capability(bare, "rehearse") is None and capability(bare, "mixture_batch") is None
    given = types.SimpleNamespace(streaming=True, minibatch_passes=4)
    assert capability(given, "streaming") is True and capability(given, "minibatch_passes") == 4
    assert capability(bare, "model_state") is False and capability(bare, "features") is None
    assert set(CAPABILITIES) == {"hparams", "streaming", "minibatch_passes", "rehearse", "mixture_batch",
                                 "features", "model_state"}


def test_an_unknown_capability_is_refused_by_name():
    with pytest.raises(ValueError, match=r"name must be one of \['hparams'.*got 'stream'"):
        capability(types.SimpleNamespace(), "stream")


def test_a_source_missing_a_required_member_is_named():
    partial = types.SimpleNamespace(**{name: None for name in REQUIRED if name != "score"})
    with pytest.raises(TypeError, match=r"got SimpleNamespace missing \['score'\]"):
        check_source(partial)
    check_source(types.SimpleNamespace(**{name: None for name in REQUIRED}))
    stateful = types.SimpleNamespace(**{name: None for name in REQUIRED}, model_state=True, init_model_state=None)
    with pytest.raises(TypeError, match=r"model_state = True .* missing \['with_model_state'\]"):
        check_source(stateful)


def test_a_mixture_is_the_sources_own_and_a_source_without_one_is_refused():
    calls = []
    own = types.SimpleNamespace(mixture_batch=lambda *args: calls.append(args) or "mixed")
    assert mixture_batch(own, "key", "params", "tasks", "weights", "hp") == "mixed"
    assert calls == [("key", "params", "tasks", "weights", "hp")]
    with pytest.raises(TypeError, match=r"define mixture_batch\(key, params, tasks, weights, hparams\); got int"):
        check_mixture(3)
