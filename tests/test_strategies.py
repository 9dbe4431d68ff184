"""The strategy and monitor interfaces: a strategy written outside the library runs through ``make_run``, the registry,
per-strategy hyperparameters, and parts that are off (monitors, the Fisher) being absent from the program."""
import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from clloop_jax import divergence as div_lib
from clloop_jax.divergence import tree_sum
from clloop_jax.importance import fisher as fisher_lib
from clloop_jax.run.config import RunConfig
from clloop_jax.run.sequential import make_run
from clloop_jax.sources.supervised import SupervisedSource
from clloop_jax.strategies import Strategy, get_strategy, register, registered
from conftest import digits_source


@pytest.fixture(scope="module")
def source(digits):
    return digits_source(digits, 5, "task", fisher_size=8, eval_size=50)


# A strategy in the user's own code: a quadratic pull towards the parameters at the end of the last task, whose
# strength decays with the number of tasks seen: lam / (1 + count).
class PullHP(NamedTuple):
    lam: Any = 1.0


class PullState(NamedTuple):
    anchor: Any
    count: jax.Array


def pull_init(params, hp):
    return PullState(params, jnp.zeros((), jnp.int32))


def pull_penalty(state, params, hp):
    strength = jnp.where(state.count > 0, hp.lam / (1.0 + state.count), 0.0)
    return 0.5 * strength * tree_sum(jax.tree.map(lambda p, a: (p - a) ** 2, params, state.anchor))


def pull_consolidate(state, params, hp, importance=None, data=None):
    return PullState(params, state.count + 1)


PULL = Strategy("pull", PullHP(), init=pull_init, penalty=pull_penalty, consolidate=pull_consolidate)


def test_a_strategy_written_outside_the_library_runs_through_make_run(source):
    run = make_run(RunConfig(strategy=PULL, episodes_per_task=20, monitors=()), source)
    hp = run.hparams(learning_rate=1e-2, lam=4.0)
    state, res = run(jax.random.key(0), hp)
    assert res.R.shape == (2, 2) and int(state.strategy.count) == 2
    pen = np.asarray(res.traces["penalty"])
    np.testing.assert_array_equal(pen[0], 0.0)
    # During task 1 the penalty is (lam / 2) / 2 * |theta - theta_end_of_task_0|^2, recomputed by hand from the
    # state the strategy left behind after task 0 (its anchor), with lam / (1 + 1).
    state0, row, trace = run.train_task(run.init(jax.random.key(0), hp), jax.random.key(0), 0, hp)
    _, _, trace1 = run.train_task(state0, jax.random.key(0), 1, hp)
    anchor = jax.tree.leaves(state0.strategy.anchor)
    assert float(trace1["penalty"][0]) == pytest.approx(0.0, abs=1e-7)
    assert np.all(np.asarray(trace1["penalty"][1:]) > 0)
    np.testing.assert_allclose(trace1["penalty"], pen[1], rtol=1e-5, atol=1e-8)
    assert len(anchor) == len(jax.tree.leaves(state0.params))
    # A swept strength is a traced value of the user's hyperparameters too.
    sweep = hp.replace(lam=jnp.array([0.0, 100.0]))
    _, swept = jax.vmap(run, in_axes=(None, sweep.axes("lam")))(jax.random.key(0), sweep)
    assert np.all(np.asarray(swept.traces["penalty"])[0] == 0.0)
    assert float(swept.R[1, 1, 0]) >= float(swept.R[0, 1, 0]) - 1e-6   # a strong pull keeps task 0 at least as well


def test_registry_and_per_strategy_hyperparameters():
    register("pull", lambda lam=1.0: PULL.with_hparams(lam=lam), overwrite=True)
    assert "pull" in registered() and get_strategy("pull", lam=2.0).hparams.lam == 2.0
    assert get_strategy("online_ewc", gamma=0.5).hparams == get_strategy("online_ewc").hparams._replace(gamma=0.5)
    with pytest.raises(ValueError, match="strategy must be one of"):
        get_strategy("ewk")
    with pytest.raises(TypeError, match="strategy must be"):
        get_strategy(3)
    with pytest.raises(TypeError, match="gamma"):
        get_strategy("ewc", gamma=0.5)  # EWC has no decay: the factory refuses the keyword
    with pytest.raises(ValueError, match="already"):
        register("ewc", lambda: PULL)
    with pytest.raises(ValueError, match="unknown hyperparameter"):
        PULL.with_hparams(gamma=0.3)
    with pytest.raises(ValueError, match="importance"):
        Strategy("bad", importance="hessian")
    # Equal strategies compare equal whatever their default strengths (they share a compiled run).
    assert get_strategy("ewc", lam=1.0) == get_strategy("ewc", lam=9.0)


def test_off_parts_are_not_in_the_program(source, monkeypatch):
    """With ``strategy="none"`` and no monitors, tracing the whole run computes no Fisher, no importance and no
    divergence; EWC with every monitor computes each once per task."""
    calls = {"fisher": 0, "mas": 0, "l2": 0, "weighted": 0, "output": 0, "fisher_data": 0}

    def counting(name, fn):
        def wrapped(*args, **kwargs):
            calls[name] += 1
            return fn(*args, **kwargs)
        return wrapped

    monkeypatch.setattr(fisher_lib, "fisher_diagonal", counting("fisher", fisher_lib.fisher_diagonal))
    monkeypatch.setattr(fisher_lib, "mas_importance", counting("mas", fisher_lib.mas_importance))
    monkeypatch.setattr(div_lib, "l2_distance", counting("l2", div_lib.l2_distance))
    monkeypatch.setattr(div_lib, "fisher_weighted_distance", counting("weighted", div_lib.fisher_weighted_distance))
    monkeypatch.setattr(div_lib, "output_divergence", counting("output", div_lib.output_divergence))
    src = dataclasses.replace(source)
    object.__setattr__(src, "fisher_data", counting("fisher_data", src.fisher_data))

    def traced_calls(config):
        for k in calls:
            calls[k] = 0
        run = make_run(config, src)
        shapes = jax.eval_shape(run, jax.random.key(0), run.hparams())
        return dict(calls), set(shapes[1].traces)

    lean, keys = traced_calls(RunConfig(strategy="none", episodes_per_task=3, monitors=()))
    assert lean == dict.fromkeys(calls, 0)
    assert keys == {"loss", "penalty", "finite", "score"}
    full, keys = traced_calls(RunConfig(strategy="ewc", episodes_per_task=3,
                                        monitors=("parameter", "fisher", "functional")))
    # One draw of data and one Fisher per traced consolidation serve the strategy and both monitors that need them
    # (the functional monitor's init also asks the data's shape once, which computes nothing).
    assert full["fisher"] >= 1 and full["fisher_data"] == full["fisher"] + 1 and full["mas"] == 0
    assert full["l2"] >= 1 and full["weighted"] >= 1 and full["output"] >= 1
    assert {"param_l2", "param_relative", "fisher_distance", "functional"} <= keys


def test_aux_of_the_objective_reaches_the_traces(source):
    def loss_with_aux(params, batch, hparams):
        loss, aux = SupervisedSource.loss(source, params, batch, hparams)
        return loss, {**aux, "logit_norm": tree_sum(jax.tree.map(jnp.square, params)), "vector": jnp.ones(3)}

    src = dataclasses.replace(source)
    object.__setattr__(src, "loss", loss_with_aux)
    run = make_run(RunConfig(strategy="none", episodes_per_task=2, monitors=()), src)
    _, res = run(jax.random.key(0), run.hparams())
    assert res.traces["logit_norm"].shape == (2, 2) and np.all(np.asarray(res.traces["logit_norm"]) > 0)
    assert "vector" not in res.traces  # only scalars are recorded
