"""Random invalid values fed to the public entry points: each must be refused with a ``ValueError`` or
``TypeError`` whose message names the argument. No raw JAX, XLA, flax or NumPy error, and no silent acceptance.

Every case below is one argument of one public function or constructor, called with valid values for every other
argument and a value drawn from the invalid values of that argument's kind (wrong types, bools for counts, NaN,
infinities, out-of-range numbers, classes for instances, non-callables, keys that are not keys, ...).

CI runs the ``ci`` hypothesis profile (a few examples per case); locally,

    python -m pytest tests/test_invalid_inputs.py --hypothesis-profile=thorough -s -n 0

runs 200 examples per case and prints how many calls ended in each outcome class.
"""
import collections
import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from clloop_jax import data as D
from clloop_jax import divergence as div
from clloop_jax import metrics as M
from clloop_jax import run as L
from clloop_jax import sources as SRC
from clloop_jax.envs import LatentWorld, MultiModalEnv, expert_policy, normalized_score, rollout
from clloop_jax.importance import fisher as F
from clloop_jax.model import MLP, CrossModalModel, SequenceClassifier
from clloop_jax.strategies import registered
from clloop_jax.strategies import regularizers as REG
from clloop_jax.workflow import sharding as S

# ----------------------------------------------------------------------------------------------------------------
# Invalid values, by kind
# ----------------------------------------------------------------------------------------------------------------

CLASSES = st.sampled_from([F.Gaussian, F.Categorical, LatentWorld, CrossModalModel, MultiModalEnv, int, float,
                           object])
GARBAGE = st.one_of(
    st.text(max_size=5), st.binary(max_size=3), st.complex_numbers(max_magnitude=1e6),
    st.dictionaries(st.text(max_size=2), st.integers(), max_size=2), st.sets(st.integers(), max_size=2),
    st.builds(object), CLASSES, st.just(Ellipsis), st.just(slice(2)),
)
BOOLS = st.sampled_from([True, False, np.bool_(True), np.bool_(False)])
NONE = st.none()
ANY_FLOAT = st.one_of(st.floats(allow_nan=True, allow_infinity=True),
                      st.floats(-1e6, 1e6).map(np.float32), st.integers(-5, 5).map(float))
NON_FINITE = st.sampled_from([math.nan, math.inf, -math.inf, np.float32("nan"), np.float64("inf")])
LISTS = st.one_of(st.lists(st.floats(0, 1), min_size=1, max_size=3), st.tuples(st.integers(1, 4)))
ARRAYS = st.sampled_from([np.ones(2), jnp.ones((2, 2)), np.array([1, 2]), np.array(["a"]), np.array([1j])])
INTS = st.one_of(st.integers(), st.integers(-2 ** 70, 2 ** 70))


def numpy_int(bound):
    return st.integers(-bound, bound).map(np.int64)


def count(min_value: int, allow_none: bool = False):
    """Integers >= min_value (or None) are valid."""
    too_small = st.one_of(st.integers(max_value=min_value - 1), numpy_int(2 ** 31).filter(lambda v: v < min_value))
    parts = [GARBAGE, BOOLS, ANY_FLOAT, too_small, LISTS, ARRAYS, st.just(jnp.asarray(2.0))]
    return st.one_of(parts + ([] if allow_none else [NONE]))


def bounded_count(min_value: int, max_value: int, allow_none: bool = False):
    return st.one_of(count(min_value, allow_none), st.integers(min_value=max_value + 1))


JAX_SEED = st.one_of(GARBAGE, BOOLS, ANY_FLOAT, NONE, LISTS, st.integers(max_value=-1),
                     st.integers(min_value=2 ** 32))
NUMPY_SEED = st.one_of(GARBAGE, BOOLS, ANY_FLOAT, NONE, LISTS, st.integers(max_value=-1),
                       st.just(jax.random.split(jax.random.key(0), 2)), st.just(np.ones(2, np.float32)))


def number(lo=None, hi=None, open_lo=False, open_hi=False, finite=True, allow_none=False, scalar=True):
    parts = [GARBAGE, BOOLS, st.just(math.nan), LISTS]
    if finite:
        parts += [NON_FINITE, st.floats(min_value=3.5e38), st.floats(max_value=-3.5e38)]
    if lo is not None:
        parts.append(st.floats(max_value=lo, exclude_max=not open_lo))
    if hi is not None:
        parts.append(st.floats(min_value=hi, exclude_min=not open_hi))
    if not allow_none:
        parts.append(NONE)
    if scalar:
        parts.append(st.just(np.ones(2)))
    return st.one_of(parts)


def choice(*choices):
    return st.one_of(GARBAGE, NONE, BOOLS, st.integers(), st.text(max_size=8)).filter(lambda v: v not in choices)


KEY = st.one_of(GARBAGE, INTS, ANY_FLOAT, BOOLS, NONE, LISTS, st.just(np.ones(2, np.float32)),
                st.just(jax.random.split(jax.random.key(0), 2)), st.just(jnp.zeros(3, jnp.uint32)))
KEYS = st.one_of(GARBAGE, INTS, ANY_FLOAT, BOOLS, NONE, LISTS, st.just(jax.random.key(0)),
                 st.just(jnp.zeros((2, 3), jnp.uint32)), st.just(np.ones((2, 2), np.float32)))
NOT_CALLABLE = st.one_of(GARBAGE.filter(lambda v: not callable(v) or isinstance(v, type)), INTS, NONE, LISTS,
                         ANY_FLOAT)
NOT_BOOL = st.one_of(GARBAGE, st.integers(), ANY_FLOAT, NONE, st.sampled_from(["True", "false"]))


def axis(ndim, allow_tuple=False):
    parts = [GARBAGE, ANY_FLOAT, BOOLS, st.integers(min_value=ndim), st.integers(max_value=-ndim - 1),
             st.lists(st.integers(0, 1), min_size=1, max_size=2)]
    if allow_tuple:
        parts.append(st.just((0, 0)))
        parts.append(st.tuples(st.integers(min_value=ndim)))
    return st.one_of(parts)


NOT_ARRAY = st.one_of(GARBAGE.filter(lambda v: not isinstance(v, complex)), NONE,
                      st.just([[1.0], [1.0, 2.0]]), st.just(np.array(["a", "b"])), st.just(jax.random.key(0)),
                      st.just(np.array([1j, 2j])))
NOT_PATH = st.one_of(st.integers(), ANY_FLOAT, BOOLS, LISTS, st.builds(object), CLASSES)

# ----------------------------------------------------------------------------------------------------------------
# Valid surroundings
# ----------------------------------------------------------------------------------------------------------------

RNG = np.random.default_rng(0)
X = RNG.normal(size=(24, 5)).astype(np.float32)
Y = np.repeat(np.arange(4), 6).astype(np.int32)
R = np.eye(3)
ENV = LatentWorld(observation_dim=4, action_dim=3, num_modalities=2, latent_dim=2, episode_length=3)
W = {"w": jnp.ones((3, 2))}
INPUTS = jnp.ones((4, 3))
LABELS = jnp.array([0, 1, 0, 1])


def apply_fn(p, x):
    return x @ p["w"]


def loss_fn(p, x):
    return jnp.sum(apply_fn(p, x) ** 2)


def zero_policy(carry, obs, feedback, key):
    return carry, jnp.zeros((ENV.action_dim,))


_TASK = []


def task():
    if not _TASK:
        _TASK.append(ENV.task_params(0))
    return _TASK[0]


MODEL = dict(input_dim=4, hidden_dim=8, output_dim=2, num_heads=2)
SMALL_MODEL = CrossModalModel(input_dim=4, hidden_dim=8, output_dim=2, num_heads=2)
WORLD = dict(observation_dim=4, action_dim=3, num_modalities=2, latent_dim=2, episode_length=3)


def walk(key, scale):
    return scale * jax.random.normal(key, (2,))


KEYS4 = jax.random.split(jax.random.key(0), 4)


_RUN = []


def tiny_run():
    """A tiny closed-loop EWC run, built (not compiled) once: invalid input must be refused before any tracing."""
    if not _RUN:
        source = SRC.EnvSource(SMALL_CLOSED_MODEL, ENV, num_tasks=2, num_envs=2, eval_envs=2)
        run = L.make_run(L.RunConfig(strategy="ewc", episodes_per_task=1), source)
        _RUN.append((run, run.hparams()))
    return _RUN[0]


SMALL_CLOSED_MODEL = CrossModalModel(input_dim=4, hidden_dim=8, output_dim=3, num_heads=2, num_modalities=2)
NOT_MODULE = st.one_of(GARBAGE.filter(lambda v: v is not CrossModalModel), NONE, st.integers())
CONFIG = dict(strategy="ewc", episodes_per_task=1)


def facade(**kw):
    from clloop_jax.facade import ContinualLearningLoop
    return ContinualLearningLoop(SMALL_CLOSED_MODEL, ENV, **kw)


def supervised(**kw):
    stream = D.split_stream(X, Y, 2)
    return SRC.SupervisedSource(**{"model": MLP(output_dim=4, hidden=(4,)), "stream": stream, "batch_size": 4,
                                   **kw})


class Case(NamedTuple):
    entry: str
    arg: str
    values: st.SearchStrategy
    call: Callable


CASES = [
    # datasets
    Case("permuted_stream", "num_tasks", count(1), lambda v: D.permuted_stream(X, Y, v)),
    Case("permuted_stream", "seed", NUMPY_SEED, lambda v: D.permuted_stream(X, Y, 2, seed=v)),
    Case("permuted_stream", "scenario", choice(*D.SCENARIOS), lambda v: D.permuted_stream(X, Y, 2, scenario=v)),
    Case("permuted_stream", "first_identity", NOT_BOOL, lambda v: D.permuted_stream(X, Y, 2, first_identity=v)),
    Case("permuted_stream", "test_fraction", number(0, 1, True, True),
         lambda v: D.permuted_stream(X, Y, 2, test_fraction=v)),
    Case("permuted_stream", "x", NOT_ARRAY, lambda v: D.permuted_stream(v, Y, 2)),
    Case("split_stream", "classes_per_task", count(1), lambda v: D.split_stream(X, Y, v)),
    Case("split_stream", "seed", NUMPY_SEED, lambda v: D.split_stream(X, Y, 2, seed=v)),
    Case("split_stream", "scenario", choice(*D.SCENARIOS), lambda v: D.split_stream(X, Y, 2, scenario=v)),
    Case("train_test_split", "seed", NUMPY_SEED, lambda v: D.train_test_split(X, Y, seed=v)),
    Case("train_test_split", "test_fraction", number(0, 1, True, True),
         lambda v: D.train_test_split(X, Y, test_fraction=v)),
    Case("train_test_split", "y", NOT_ARRAY, lambda v: D.train_test_split(X, v)),
    Case("load_mnist1d", "num_samples", count(10), lambda v: D.load_mnist1d(cache_dir="/nonexistent",
                                                                            num_samples=v)),
    Case("load_mnist1d", "seed", st.one_of(NUMPY_SEED, st.integers(min_value=2 ** 32)),
         lambda v: D.load_mnist1d(cache_dir="/nonexistent", seed=v)),
    Case("load_mnist1d", "cache_dir", NOT_PATH, lambda v: D.load_mnist1d(cache_dir=v)),
    Case("load_dataset", "name", choice("digits", "mnist1d"), lambda v: D.load_dataset(v)),
    # metrics
    Case("mean_ci", "x", NOT_ARRAY, lambda v: M.mean_ci(v)),
    Case("mean_ci", "axis", axis(2), lambda v: M.mean_ci(np.ones((3, 2)), axis=v)),
    Case("mean_ci", "confidence", number(0, 1, True, True), lambda v: M.mean_ci(np.ones(3), confidence=v)),
    Case("t_quantile", "df", count(1), lambda v: M.t_quantile(0.95, v)),
    Case("t_quantile", "confidence", number(0, 1, True, True), lambda v: M.t_quantile(v, 3)),
    Case("summarize", "R", NOT_ARRAY, lambda v: M.summarize(v)),
    Case("forward_transfer", "b", NOT_ARRAY, lambda v: M.forward_transfer(R, v)),
    Case("format_matrix", "precision", count(0), lambda v: M.format_matrix(R, precision=v)),
    Case("format_summary", "confidence", number(0, 1, True, True),
         lambda v: M.format_summary(M.summarize(np.stack([R, R])), confidence=v)),
    # fisher
    Case("fisher_diagonal", "apply_fn", NOT_CALLABLE,
         lambda v: F.fisher_diagonal(v, W, INPUTS, likelihood=F.Categorical())),
    Case("fisher_diagonal", "likelihood", st.one_of(GARBAGE, NONE, st.integers()),
         lambda v: F.fisher_diagonal(apply_fn, W, INPUTS, likelihood=v)),
    Case("fisher_diagonal", "variant", choice(*F.VARIANTS),
         lambda v: F.fisher_diagonal(apply_fn, W, INPUTS, LABELS, likelihood=F.Categorical(), variant=v)),
    Case("fisher_diagonal", "key", KEY, lambda v: F.fisher_diagonal(apply_fn, W, INPUTS, likelihood=F.Categorical(),
                                                                   variant="sampled", key=v)),
    Case("fisher_diagonal", "num_samples", count(1),
         lambda v: F.fisher_diagonal(apply_fn, W, INPUTS, likelihood=F.Categorical(), variant="sampled",
                                     key=jax.random.key(0), num_samples=v)),
    Case("fisher_diagonal", "chunk_size", count(1, allow_none=True),
         lambda v: F.fisher_diagonal(apply_fn, W, INPUTS, likelihood=F.Categorical(), chunk_size=v)),
    Case("fisher_diagonal", "method", choice(*F.METHODS),
         lambda v: F.fisher_diagonal(apply_fn, W, INPUTS, LABELS, likelihood=F.Categorical(), method=v)),
    Case("mas_importance", "method", choice(*F.METHODS), lambda v: F.mas_importance(apply_fn, W, INPUTS, method=v)),
    Case("per_sample_grads", "loss_fn", NOT_CALLABLE, lambda v: F.per_sample_grads(v, W, INPUTS)),
    Case("per_sample_grads", "chunk_size", count(1, allow_none=True),
         lambda v: F.per_sample_grads(loss_fn, W, INPUTS, chunk_size=v)),
    Case("mas_importance", "apply_fn", NOT_CALLABLE, lambda v: F.mas_importance(v, W, INPUTS)),
    Case("Gaussian", "sigma", number(0, open_lo=True), lambda v: F.Gaussian(sigma=v)),
    # envs
    *[Case("Environment", name, count(1), lambda v, name=name: LatentWorld(**{**WORLD, name: v}))
      for name in ("observation_dim", "action_dim", "num_modalities", "latent_dim", "num_tasks", "episode_length")],
    Case("Environment", "world_seed", JAX_SEED, lambda v: LatentWorld(**WORLD, world_seed=v)),
    *[Case("Environment", name, number(0, 1e6), lambda v, name=name: LatentWorld(**{**WORLD, name: v}))
      for name in ("obs_noise", "process_noise", "cue_scale", "open_loop_radius", "init_scale")],
    Case("Environment", "closed_loop_radius", number(0, 1, open_hi=True),
         lambda v: LatentWorld(**WORLD, closed_loop_radius=v)),
    Case("Environment", "max_action", number(0, 1e6, open_lo=True), lambda v: LatentWorld(**WORLD, max_action=v)),
    Case("Environment.task_params", "task_id", count(0), lambda v: ENV.task_params(v)),
    Case("Environment.tasks", "num_tasks", count(1, allow_none=True), lambda v: ENV.tasks(v)),
    Case("Environment.tasks", "world_key", KEY.filter(lambda v: v is not None),
         lambda v: ENV.tasks(2, world_key=v)),
    Case("rollout", "key", KEY, lambda v: rollout(v, ENV, task(), zero_policy, (), 2)),
    Case("rollout", "env", st.one_of(GARBAGE, NONE, st.integers()),
         lambda v: rollout(jax.random.key(0), v, task(), zero_policy, (), 2)),
    Case("rollout", "policy", NOT_CALLABLE, lambda v: rollout(jax.random.key(0), ENV, task(), v, (), 2)),
    Case("rollout", "num_steps", count(1), lambda v: rollout(jax.random.key(0), ENV, task(), zero_policy, (), v)),
    Case("rollout", "num_envs", count(1, allow_none=True),
         lambda v: rollout(jax.random.key(0), ENV, task(), zero_policy, (), 2, num_envs=v)),
    Case("rollout", "feedback_weight", number(),
         lambda v: rollout(jax.random.key(0), ENV, task(), zero_policy, (), 2, feedback_weight=v)),
    Case("expert_policy", "env", st.one_of(GARBAGE, NONE, st.integers()), lambda v: expert_policy(v)),
    Case("normalized_score", "actions", NOT_ARRAY, lambda v: normalized_score(v, np.ones(3))),
    Case("normalized_score", "targets", NOT_ARRAY, lambda v: normalized_score(np.ones(3), v)),
    Case("normalized_score", "axis", axis(2, allow_tuple=True).filter(lambda v: v is not None),
         lambda v: normalized_score(np.ones((2, 3)), np.ones((2, 3)), axis=v)),
    Case("normalized_score", "clip_min", number(hi=1, finite=False, allow_none=True),
         lambda v: normalized_score(np.ones(3), np.ones(3), clip_min=v)),
    # model
    *[Case("CrossModalModel", name, count(1), lambda v, name=name: CrossModalModel(**{**MODEL, name: v}))
      for name in ("hidden_dim", "output_dim", "num_heads")],
    Case("CrossModalModel", "num_modalities", count(1),
         lambda v: CrossModalModel(**{**MODEL, "num_modalities": v})),
    Case("CrossModalModel", "input_dim", st.one_of(count(1), st.just([4, 0]), st.just([4, True]), st.just([4])),
         lambda v: CrossModalModel(**{**MODEL, "input_dim": v, "num_modalities": 2})),
    Case("CrossModalModel", "feedback_dim", count(0, allow_none=True), lambda v: CrossModalModel(**MODEL, feedback_dim=v)),
    Case("CrossModalModel", "head_init_scale", number(0, open_lo=True),
         lambda v: CrossModalModel(**MODEL, head_init_scale=v)),
    Case("CrossModalModel.initial_carry", "batch_shape",
         st.one_of(GARBAGE.filter(lambda v: not isinstance(v, (str, bytes))), BOOLS, ANY_FLOAT, NONE,
                   st.integers(max_value=-1), st.just((2, -1)), st.just((2, 1.5)), st.just((True,))),
         lambda v: SMALL_MODEL.initial_carry(v)),
    Case("MLP", "output_dim", count(1), lambda v: MLP(output_dim=v)),
    Case("MLP", "hidden", st.one_of(st.integers(), NONE, st.text(max_size=3), st.just((4, 0)), st.just((2.5,)),
                                    st.just((True,))), lambda v: MLP(output_dim=2, hidden=v)),
    Case("SequenceClassifier", "model", st.one_of(GARBAGE, NONE, st.integers()),
         lambda v: SequenceClassifier(model=v, chunk=4)),
    Case("SequenceClassifier", "chunk", count(1),
         lambda v: SequenceClassifier(model=CrossModalModel(input_dim=4, hidden_dim=8, output_dim=2, num_heads=2),
                                      chunk=v)),
    # divergence
    Case("output_divergence", "kind", choice(*div.KINDS), lambda v: div.output_divergence(INPUTS, INPUTS, kind=v)),
    Case("functional_divergence", "apply_fn", NOT_CALLABLE, lambda v: div.functional_divergence(v, W, W, INPUTS)),
    Case("functional_divergence", "kind", choice(*div.KINDS),
         lambda v: div.functional_divergence(apply_fn, W, W, INPUTS, kind=v)),
    Case("relative_change", "eps", number(0, open_lo=True), lambda v: div.relative_change(W, W, eps=v)),
    # sharding
    Case("shard_seeds", "fn", NOT_CALLABLE, lambda v: S.shard_seeds(v, KEYS4, 0.5)),
    Case("shard_seeds", "keys", KEYS, lambda v: S.shard_seeds(walk, v, 0.5)),
    Case("shard_seeds", "devices", st.one_of(bounded_count(1, jax.device_count(), allow_none=True), st.just([]),
                                             st.just(["cpu"])), lambda v: S.shard_seeds(walk, KEYS4, 0.5, devices=v)),
    Case("shard_seeds", "pad", NOT_BOOL, lambda v: S.shard_seeds(walk, KEYS4, 0.5, pad=v)),
    Case("sharded_vmap", "in_axes", st.one_of(st.integers(max_value=-1), ANY_FLOAT, st.text(min_size=1, max_size=3),
                                              BOOLS, st.just((0,)), st.just((0, None, None))),
         lambda v: S.sharded_vmap(walk, in_axes=v)(KEYS4, 0.5)),
    # the run
    *[Case("RunConfig", name, count(1), lambda v, name=name: L.RunConfig(**{**CONFIG, name: v}))
      for name in ("episodes_per_task", "fisher_samples")],
    *[Case("RunConfig", name, count(1, allow_none=True), lambda v, name=name: L.RunConfig(**{**CONFIG, name: v}))
      for name in ("fisher_chunk_size", "measure_every")],
    Case("RunConfig", "strategy", choice(*registered()), lambda v: L.RunConfig(strategy=v)),
    Case("RunConfig", "fisher_variant", choice(*F.VARIANTS), lambda v: L.RunConfig(fisher_variant=v)),
    Case("RunConfig", "fisher_method", choice(*F.METHODS), lambda v: L.RunConfig(fisher_method=v)),
    Case("RunConfig", "max_grad_norm", number(0, open_lo=True, allow_none=True),
         lambda v: L.RunConfig(max_grad_norm=v)),
    Case("RunConfig", "reset_optimizer", NOT_BOOL, lambda v: L.RunConfig(reset_optimizer=v)),
    Case("RunConfig", "optimizer", NOT_CALLABLE.filter(lambda v: not isinstance(v, type)), lambda v: L.RunConfig(optimizer=v)),
    Case("RunConfig", "monitors", st.one_of(st.just(("loss",)), st.just("parameter"), st.just((3,)), NONE),
         lambda v: L.RunConfig(monitors=v)),
    Case("make_run", "config", st.one_of(GARBAGE, NONE, st.just("ewc")), lambda v: L.make_run(v, tiny_run()[0].source)),
    Case("make_run", "source", st.one_of(GARBAGE, NONE, st.integers()), lambda v: L.make_run(L.RunConfig(), v)),
    Case("Run.hparams", "learning_rate", number(0, open_lo=True, scalar=False), lambda v: tiny_run()[0].hparams(learning_rate=v)),
    Case("Run.hparams", "lam", number(0, scalar=False), lambda v: tiny_run()[0].hparams(lam=v)),
    Case("Run.hparams", "feedback_weight", number(scalar=False), lambda v: tiny_run()[0].hparams(feedback_weight=v)),
    Case("Run", "key", KEY, lambda v: tiny_run()[0](v, tiny_run()[1])),
    Case("Run", "hp", st.one_of(GARBAGE, NONE, st.just({"learning_rate": 1e-3}), st.just((1e-3,))),
         lambda v: tiny_run()[0](jax.random.key(0), v)),
    Case("Run", "learning_rate", number(0, open_lo=True),
         lambda v: tiny_run()[0](jax.random.key(0), tiny_run()[1]._replace(learning_rate=v))),
    Case("Run.train_task", "task_id", bounded_count(0, 1),
         lambda v: tiny_run()[0].train_task(None, jax.random.key(0), v, tiny_run()[1])),
    Case("Run.train_task", "state", st.one_of(GARBAGE, NONE, st.integers()),
         lambda v: tiny_run()[0].train_task(v, jax.random.key(0), 0, tiny_run()[1])),
    # sources
    Case("EnvSource", "num_tasks", bounded_count(1, ENV.num_tasks),  # no more tasks than the world has
         lambda v: SRC.EnvSource(SMALL_CLOSED_MODEL, ENV, num_tasks=v)),
    *[Case("EnvSource", name, count(1), lambda v, name=name: SRC.EnvSource(SMALL_CLOSED_MODEL, ENV, **{name: v}))
      for name in ("num_envs", "eval_envs")],
    Case("EnvSource", "num_steps", count(1, allow_none=True),
         lambda v: SRC.EnvSource(SMALL_CLOSED_MODEL, ENV, num_steps=v)),
    Case("EnvSource", "sigma", number(0, open_lo=True), lambda v: SRC.EnvSource(SMALL_CLOSED_MODEL, ENV, sigma=v)),
    Case("EnvSource", "objective", st.one_of(GARBAGE.filter(lambda v: not callable(v)), st.just("loss"), INTS),
         lambda v: SRC.EnvSource(SMALL_CLOSED_MODEL, ENV, objective=v)),
    Case("EnvSource", "model", NOT_MODULE, lambda v: SRC.EnvSource(v, ENV)),
    Case("EnvSource", "tasks", st.one_of(NONE.map(lambda _: LatentWorld(**{**WORLD, "latent_dim": 3}).tasks(3)),
                                         st.just(np.ones(3)), st.text(max_size=2)),
         lambda v: SRC.EnvSource(SMALL_CLOSED_MODEL, ENV, tasks=v)),
    Case("SupervisedSource", "model", NOT_MODULE, lambda v: supervised(model=v)),
    Case("SupervisedSource", "stream", st.one_of(GARBAGE, NONE, st.just(X)), lambda v: supervised(stream=v)),
    Case("SupervisedSource", "batch_size", bounded_count(1, 12), lambda v: supervised(batch_size=v)),
    *[Case("SupervisedSource", name, count(1, allow_none=True), lambda v, name=name: supervised(**{name: v}))
      for name in ("eval_size", "fisher_size")],
    # regularizers
    Case("make_regularizer", "name", choice(*REG.PENALTIES), lambda v: REG.make_regularizer(v)),
    Case("make_regularizer", "lam", number(0, scalar=False), lambda v: REG.make_regularizer("ewc", lam=v)),
    Case("make_regularizer", "xi", number(0, open_lo=True, scalar=False), lambda v: REG.make_regularizer("si", xi=v)),
    Case("make_regularizer", "gamma", number(0, 1, scalar=False), lambda v: REG.make_regularizer("online_ewc", gamma=v)),
    # the facade
    Case("ContinualLearningLoop", "learning_rate", number(0, open_lo=True), lambda v: facade(learning_rate=v)),
    Case("ContinualLearningLoop", "ewc_lambda", number(0), lambda v: facade(ewc_lambda=v)),
    Case("ContinualLearningLoop", "feedback_weight", number(), lambda v: facade(feedback_weight=v)),
    Case("ContinualLearningLoop", "seed", JAX_SEED, lambda v: facade(seed=v)),
    Case("ContinualLearningLoop", "num_envs", count(1), lambda v: facade(num_envs=v)),
    Case("ContinualLearningLoop", "loss_fn", NOT_CALLABLE.filter(lambda v: v is not None),
         lambda v: facade(loss_fn=v)),
    Case("ContinualLearningLoop", "strategy", choice(*registered()), lambda v: facade(strategy=v)),
    Case("ContinualLearningLoop", "model", NOT_MODULE, lambda v: __import__("clloop_jax").ContinualLearningLoop(v, ENV)),
]

OUTCOMES = collections.Counter()


def _classify(case: Case, value) -> str:
    try:
        case.call(value)
    except (TypeError, ValueError) as err:
        kind = "TypeError" if isinstance(err, TypeError) else "ValueError"
        named = case.arg in str(err)
        return f"{kind} naming the argument" if named else f"RAW {type(err).__name__} not naming it: {err}"
    except Exception as err:  # noqa: BLE001 - the point is to see every other outcome
        return f"RAW {type(err).__name__}: {err}"
    return "ACCEPTED silently"


@pytest.mark.parametrize("case", CASES, ids=[f"{c.entry}-{c.arg}" for c in CASES])
@given(data=st.data())
def test_invalid_value_is_refused_naming_the_argument(case, data):
    value = data.draw(case.values, label=case.arg)
    outcome = _classify(case, value)
    OUTCOMES[(case.entry, outcome.split(":")[0])] += 1
    assert outcome.endswith("naming the argument"), f"{case.entry}({case.arg}={value!r}): {outcome}"


def test_zz_outcome_classes():
    """Runs last (file order): prints the tally of the cases above (with ``-s``) and checks every class is clear."""
    if not OUTCOMES:
        pytest.skip("run together with the cases above")
    by_class = collections.Counter()
    for (_, outcome), n in OUTCOMES.items():
        by_class[outcome] += n
    print(f"\n{sum(by_class.values())} invalid calls over {len(CASES)} arguments of "
          f"{len({c.entry for c in CASES})} entry points:")
    for outcome, n in by_class.most_common():
        print(f"  {n:6d}  {outcome}")
    assert set(by_class) <= {"TypeError naming the argument", "ValueError naming the argument"}


# ----------------------------------------------------------------------------------------------------------------
# Reproducers found by hand at the run's boundary, each refused naming its argument
# ----------------------------------------------------------------------------------------------------------------

def _reproducers():
    run, hp = tiny_run()
    source = run.source
    other_world = LatentWorld(**{**WORLD, "latent_dim": 3})
    key = jax.random.key(0)
    return [
        ("learning_rate", lambda: run.hparams(learning_rate=None)),
        ("learning_rate", lambda: run.hparams(learning_rate="0.5")),
        ("learning_rate", lambda: run.hparams(learning_rate=1j)),
        ("learning_rate", lambda: run.hparams(learning_rate=math.inf)),
        ("learning_rate", lambda: run.hparams(learning_rate=1e179)),
        ("learning_rate", lambda: run.hparams(learning_rate=-1.0)),
        ("learning_rate", lambda: run(key, hp._replace(learning_rate=-1.0))),  # the _replace sweep idiom
        ("learning_rate", lambda: run(key, hp._replace(learning_rate=[1e-3, 1e-2]))),
        ("lam", lambda: run(key, hp._replace(strategy=hp.strategy._replace(lam=-2.0)))),
        ("max_grad_norm", lambda: L.RunConfig(max_grad_norm="1")),
        ("optimizer", lambda: L.RunConfig(optimizer=None)),
        ("hp", lambda: run(key, dict(learning_rate=1e-3))),
        ("hp", lambda: run(key, None)),
        ("key", lambda: run(0, hp)),
        ("config", lambda: L.make_run("ewc", source)),
        ("source", lambda: L.make_run(L.RunConfig(), None)),
        ("task_id", lambda: run.train_task(None, key, 5, hp)),
        ("task_id", lambda: run.train_task(None, key, -1, hp)),
        ("task_id", lambda: run.train_task(None, key, 1.5, hp)),
        ("task_id", lambda: run.train_task(None, key, True, hp)),
        ("state", lambda: run.train_task(None, key, 0, hp)),
        ("tasks", lambda: SRC.EnvSource(SMALL_CLOSED_MODEL, ENV, num_tasks=2, tasks=other_world.tasks(2))),
        ("objective", lambda: SRC.EnvSource(SMALL_CLOSED_MODEL, ENV, objective="loss")),
        ("model", lambda: SRC.SupervisedSource(None, D.split_stream(X, Y, 2))),
        ("lam", lambda: REG.make_regularizer("ewc", lam="a")),
        ("xi", lambda: REG.make_regularizer("si", xi="0.5")),
        ("gamma", lambda: REG.make_regularizer("online_ewc", gamma=2.0)),
        ("seed", lambda: facade(seed=10 ** 30)),
        ("seed", lambda: facade(seed="8")),
        ("learning_rate", lambda: facade(learning_rate=math.inf)),
        ("ewc_lambda", lambda: facade(ewc_lambda=-1.0)),
    ]


def test_each_hand_found_reproducer_is_refused_naming_its_argument():
    for arg, call in _reproducers():
        with pytest.raises((TypeError, ValueError)) as err:
            call()
        assert arg in str(err.value), (arg, str(err.value))
