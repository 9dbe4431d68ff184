"""Strategies that compose: a chain of one strategy is that strategy, number for number; EWC and replay chained keep
each one's penalty and replay loss and train under ``jax.vmap`` over seeds and a swept ``ewc.lam``; dotted, flat and
ambiguous hyperparameter names; the chains that are refused."""
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from clloop_jax.run.config import HParams, RunConfig
from clloop_jax.run.sequential import make_run
from clloop_jax.strategies import Strategy, agem, chain, ewc, get_strategy, mas, online_ewc, replay
from clloop_jax.strategies.base import NoHParams
from clloop_jax.tree import task_at
from conftest import digits_source

EPISODES = 6


@pytest.fixture(scope="module")
def source(digits):
    return digits_source(digits, 5, "task", fisher_size=8, eval_size=50)


def small_replay():
    return replay(capacity=24, batch_size=8, alpha=0.7)


def whole_run(source, strategy, **values):
    run = make_run(RunConfig(strategy=strategy, episodes_per_task=EPISODES, monitors=()), source)
    hp = run.hparams(learning_rate=1e-2, **values)
    return run.hparams, run(jax.random.key(3), hp)


def assert_same_run(a, b):
    (state_a, res_a), (state_b, res_b) = a, b
    np.testing.assert_array_equal(res_a.R, res_b.R)
    np.testing.assert_array_equal(res_a.baseline, res_b.baseline)
    assert sorted(res_a.traces) == sorted(res_b.traces)
    for name in res_a.traces:
        np.testing.assert_array_equal(res_a.traces[name], res_b.traces[name], err_msg=name)
    for x, y in zip(jax.tree.leaves(state_a.params), jax.tree.leaves(state_b.params), strict=True):
        np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("make", [lambda: ewc(lam=5.0), small_replay], ids=["ewc", "replay"])
def test_a_chain_of_one_strategy_is_that_strategy_bitwise(source, make):
    alone, chained = make(), chain(make())
    assert chained.name == alone.name
    _, res_alone = whole_run(source, alone)
    _, res_chained = whole_run(source, chained)
    assert_same_run(res_alone, res_chained)
    state = res_chained[0].strategy
    assert isinstance(state, tuple) and len(state) == 1


def test_hooks_no_part_has_stay_out_and_the_declarations_are_unioned():
    both = chain(ewc(), small_replay())
    assert both.name == "ewc+replay"
    assert both.accumulate is None and both.project is None and both.boundary is None and both.trace is None
    assert both.penalty is not None and both.replay_loss is not None and both.observe is not None
    assert both.importance == "fisher" and both.init_with_example and not both.uses_data
    three = chain(both, agem(capacity=8, batch_size=4))   # a chain among the parts contributes its parts
    assert three.name == "ewc+replay+agem" and three.hparams._fields == ("ewc", "replay", "agem")
    assert three.uses_data and three.project is not None
    assert chain(ewc(), online_ewc()).importance == "fisher"   # one kind, shared


def make_state_and_samples(source, strategy, hp):
    params = source.init_params(jax.random.key(0))
    task = task_at(source.tasks, 0)
    samples = source.samples(source.batch(jax.random.key(1), params, task, NoHParams()))
    example = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape[1:], s.dtype), samples)
    state = strategy.init(params, hp, example, source) if strategy.init_with_example else strategy.init(params, hp)
    return params, samples, state


def test_ewc_and_replay_chained_keep_ewcs_penalty_and_replays_loss(source):
    lam = 3.0
    alone_e, alone_r = ewc(lam=lam), small_replay()
    both = chain(ewc(lam=lam), small_replay())
    hp_e, hp_r, hp_b = alone_e.hparams, alone_r.hparams, both.hparams
    params, samples, st_b = make_state_and_samples(source, both, hp_b)
    _, _, st_e = make_state_and_samples(source, alone_e, hp_e)
    _, _, st_r = make_state_and_samples(source, alone_r, hp_r)
    leaves = jax.tree.leaves(params)
    rng = np.random.default_rng(0)
    fisher = jax.tree.unflatten(jax.tree.structure(params), [jnp.asarray(rng.uniform(0, 1, x.shape), x.dtype)
                                                             for x in leaves])
    st_e = alone_e.consolidate(st_e, params, hp_e, importance=fisher)
    st_b = both.consolidate(st_b, params, hp_b, importance=fisher)
    key = jax.random.key(7)
    st_r = alone_r.observe(st_r, params, samples, source, key, hp_r)
    st_b = both.observe(st_b, params, samples, source, key, hp_b)
    moved = jax.tree.map(lambda p: p + 0.05 * jnp.sign(p) + 0.01, params)

    pen_b, pen_e = both.penalty(st_b, moved, hp_b), alone_e.penalty(st_e, moved, hp_e)
    np.testing.assert_array_equal(pen_b, pen_e)
    reference = lam / 2 * sum(np.sum(np.asarray(f, np.float64) * (np.asarray(m, np.float64)
                                                                   - np.asarray(p, np.float64)) ** 2)
                              for f, m, p in zip(jax.tree.leaves(fisher), jax.tree.leaves(moved), leaves))
    np.testing.assert_allclose(float(pen_b), reference, rtol=1e-5)

    rl_b = both.replay_loss(st_b, moved, samples, source, key, hp_b)
    rl_r = alone_r.replay_loss(st_r, moved, samples, source, key, hp_r)
    np.testing.assert_array_equal(rl_b, rl_r)
    assert float(rl_b) > 0


def test_ewc_and_replay_train_under_vmap_over_seeds_and_a_swept_lambda_in_one_compilation(source):
    run = make_run(RunConfig(strategy=chain(ewc(), small_replay()), episodes_per_task=EPISODES, monitors=()),
                   source)
    hp = run.hparams(learning_rate=1e-2).replace(**{"ewc.lam": jnp.array([0.0, 1e4])})
    keys = jax.random.split(jax.random.key(0), 2)
    program = jax.jit(jax.vmap(jax.vmap(run, in_axes=(0, None)), in_axes=(None, hp.axes("ewc.lam"))))
    state, res = program(keys, hp)
    assert program._cache_size() == 1
    assert res.R.shape == (2, 2, 2, 2) and np.all(np.isfinite(np.asarray(res.R)))
    penalty = np.asarray(res.traces["penalty"])
    assert np.all(penalty[0] == 0.0) and np.all(penalty[1][:, 1] > 0)   # lam = 0 vs lam = 1e4, on task 1
    assert np.all(np.asarray(res.traces["replay_loss"])[:, :, 1] > 0)
    assert not np.array_equal(np.asarray(res.R[0]), np.asarray(res.R[1]))  # the larger lam changes the results
    np.testing.assert_array_equal(state.strategy[1].seen, 2 * EPISODES * 16)


def test_dotted_flat_and_ambiguous_hyperparameter_names(source):
    run = make_run(RunConfig(strategy=chain(ewc(lam=2.0), small_replay()), monitors=()), source)
    hp = run.hparams(**{"ewc.lam": 3.0})
    assert hp.names() == ["learning_rate", "ewc.lam", "replay.alpha"]
    assert {k: float(v) for k, v in hp.flat().items()} == pytest.approx(
        {"learning_rate": 1e-3, "ewc.lam": 3.0, "replay.alpha": 0.7})
    assert float(hp.replace(lam=4.0).strategy.ewc.lam) == 4.0                  # one part has lam: unambiguous
    assert float(hp.replace(**{"replay.alpha": 0.5}).strategy.replay.alpha) == 0.5
    assert float(hp.replace(alpha=0.25).strategy.replay.alpha) == 0.25
    axes = hp.axes("ewc.lam")
    assert axes.strategy.ewc.lam == 0 and axes.strategy.replay.alpha is None and axes.learning_rate is None
    with pytest.raises(ValueError, match="unknown hyperparameter 'gamma'.*'ewc.lam'"):
        hp.replace(gamma=1.0)
    with pytest.raises(ValueError, match=r"ewc\.lam must be a finite number >= 0"):
        hp.replace(**{"ewc.lam": -1.0})
    two = HParams(1e-3, chain(ewc(), online_ewc()).hparams)
    with pytest.raises(ValueError, match=r"'lam' is ambiguous: \['ewc.lam', 'online_ewc.lam'\]"):
        two.replace(lam=1.0)
    with pytest.raises(ValueError, match="ambiguous"):
        two.axes("lam")
    assert float(two.replace(gamma=0.5, **{"online_ewc.lam": 2.0}).strategy.online_ewc.lam) == 2.0
    # A strategy's defaults by name too; a flat strategy's names are as before.
    assert float(chain(ewc(), small_replay()).with_hparams(**{"ewc.lam": 9.0}).hparams.ewc.lam) == 9.0
    assert make_run(RunConfig(strategy="ewc", monitors=()), source).hparams().names() == ["learning_rate", "lam"]


def test_trace_keys_are_prefixed_only_where_two_parts_share_them():
    class Count(NamedTuple):
        n: Any = 1.0

    def part(name, extra):
        return Strategy(name, Count(), init=lambda params, hp: jnp.float32(hp.n),
                        trace=lambda s: {"count": s, **({extra: 2 * s} if extra else {})})

    both = chain(part("a", None), part("b", "x"))
    record = both.trace(both.init({}, both.hparams))
    assert sorted(record) == ["a.count", "b.count", "x"]


def test_chains_that_cannot_run_are_refused_with_one_clear_error():
    with pytest.raises(ValueError, match=r"different importances.*fisher.*ewc.*mas.*mas"):
        chain(ewc(), mas())
    with pytest.raises(ValueError, match="'ewc' appears more than once"):
        chain(ewc(), ewc(lam=2.0))
    with pytest.raises(ValueError, match="'ewc' appears more than once"):
        chain(chain(ewc(), small_replay()), "ewc")
    with pytest.raises(ValueError, match="at least one"):
        chain()
    assert get_strategy(chain("ewc", "replay")).name == "ewc+replay"


def test_registered_names_joined_by_plus_make_a_chain_and_reach_the_command_line_settings():
    both = get_strategy("ewc+replay", lam=2.0, capacity=16, **{"replay.alpha": 0.3})
    assert both.name == "ewc+replay" and float(both.hparams.ewc.lam) == 2.0
    assert float(both.hparams.replay.alpha) == 0.3
    with pytest.raises(ValueError, match=r"\['nope'\] not registered"):
        get_strategy("ewc+nope")
    with pytest.raises(ValueError, match="no part of strategy 'ewc\\+replay' takes 'xi'"):
        get_strategy("ewc+replay", xi=0.5)
    with pytest.raises(ValueError, match="different importances"):
        get_strategy("ewc+mas")

    from clloop_jax.workflow.experiment import ExperimentConfig
    from clloop_jax.workflow.settings import TrainConfig
    train = TrainConfig(strategy="ewc+replay", lam=2.5, memory=16, episodes_per_task=2, monitors=())
    train.check_strategy_options()                      # lam (ewc's) and memory (replay's) are used
    with pytest.raises(ValueError, match="gamma"):
        TrainConfig(strategy="ewc+replay", gamma=0.5).check_strategy_options()
    with pytest.raises(ValueError, match="memory"):
        TrainConfig(strategy="ewc+si", memory=16).check_strategy_options()
    run, hp = ExperimentConfig(source="digits", train=train, seeds=1).build()
    assert run.strategy.name == "ewc+replay" and float(hp.strategy.ewc.lam) == 2.5
    assert ExperimentConfig(source="digits", train=TrainConfig(strategy="ewc+replay")).strength == 1000.0


@pytest.mark.parametrize("name", ["replay", "agem", "derpp", "lwf", "er_ace", "gem", "ewc+replay"])
def test_strategies_built_alike_are_equal_and_share_one_program(name):
    """Hooks that are methods of equal frozen values compare by those values (a bound method compares by identity),
    so two runs built alike are equal, hash alike and share their compiled programs."""
    a, b = get_strategy(name), get_strategy(name)
    assert a == b and hash(a) == hash(b)
    if name != "lwf":   # another memory size is another program
        assert get_strategy(name, capacity=7) != a
