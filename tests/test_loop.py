"""End-to-end checks of the compiled continual-learning run on tiny closed-loop worlds.

Compilation dominates the cost of these tests, so every compiled function is built once per module (module-scoped
fixtures share the run objects, keys and results); tests/conftest.py switches XLA's optimisation passes off for the
session, which halves compile time on CPU. Every comparison below is between two paths compiled the same way.

Two worlds are used: ``setup`` runs the real :class:`CrossModalModel`; ``tiny`` runs a linear policy with the same
interface (``init_params``, ``initial_carry``, ``apply``, ``sequence``), which compiles several times faster and
learns the linear world in a few updates, so properties of the loop itself (jit, vmap, strategies, traces,
objectives) can be checked with numbers.
"""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from clloop_jax import monitors as monitors_lib
from clloop_jax.envs import LatentWorld, normalized_score
from clloop_jax.model import CrossModalModel
from clloop_jax.run.config import RunConfig
from clloop_jax.run.sequential import _jit_run, _jit_task_step, make_run
from clloop_jax.sources.world import EnvSource
from clloop_jax.strategies import regularizers as reg_lib

# float32 programs compiled differently (op by op, batched by vmap, or whole) may reorder reductions and fuse
# differently; the differences seen are ~1e-6, so agreement is asserted to these tolerances.
RTOL, ATOL = 1e-4, 1e-5


@pytest.fixture(scope="module")
def setup():
    env = LatentWorld(observation_dim=8, action_dim=8, num_modalities=2, latent_dim=4, episode_length=8)
    model = CrossModalModel(input_dim=8, hidden_dim=16, output_dim=8, num_modalities=2, num_heads=2,
                            feedback_dim=env.feedback_dim)
    source = EnvSource(model, env, num_tasks=2, num_envs=4, eval_envs=4)
    run = make_run(RunConfig(strategy="ewc", episodes_per_task=3), source)
    hp = run.hparams(lam=10.0)
    return env, model, run, hp


def test_bad_input_is_rejected_before_compiling(setup):
    env, _, _, _ = setup
    wrong = CrossModalModel(input_dim=8, hidden_dim=16, output_dim=7, num_modalities=2, num_heads=2,
                            feedback_dim=env.feedback_dim)
    with pytest.raises(ValueError, match="output_dim"):
        EnvSource(wrong, env)
    with pytest.raises(ValueError, match="episodes_per_task"):
        RunConfig(episodes_per_task=0)
    with pytest.raises(ValueError, match="learning_rate"):
        setup[2].hparams(learning_rate=-1e-3)
    with pytest.raises(ValueError, match="unknown hyperparameter 'gamma'.*'lam'"):
        setup[2].hparams(gamma=0.9)  # EWC has no decay: refused, not silently ignored
    with pytest.raises(TypeError, match="key"):
        setup[2](0, setup[3])
    with pytest.raises(TypeError, match="hp"):
        setup[2](jax.random.key(0), dict(lam=1.0))
    with pytest.raises(ValueError, match="task_id"):
        setup[2].train_task(setup[2].init(jax.random.key(0), setup[3]), jax.random.key(0), 5, setup[3])


def test_run_importance_per_layer_by_default(setup):
    """The run's (sampled) Fisher takes the per-layer method by default on the recurrent model: the same numbers as
    the per-sample method (float32 rounding), and the source's data flows through unchanged (MAS takes the same
    ``method``; its per-layer numbers are tested in tests/test_fisher.py)."""
    env, _, run, hp = setup
    assert run.config.fisher_method == "auto"
    per_sample = make_run(dataclasses.replace(run.config, fisher_method="per_sample"), run.source)
    key = jax.random.key(3)
    params = run.init(key, hp).params
    params = jax.tree.map(lambda p: p + 0.05 * jax.random.normal(key, p.shape), params)   # a non-trivial head
    task = jax.tree.map(lambda x: x[0], run.source.tasks)
    data = run.source.fisher_data(key, params, task, hp.source)
    got = jax.jit(run.importance, static_argnames="kind")(key, params, data, hp, kind="fisher")
    ref = jax.jit(per_sample.importance, static_argnames="kind")(key, params, data, hp, kind="fisher")
    scale = max(float(jnp.max(jnp.abs(a))) for a in jax.tree.leaves(ref))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-4, atol=1e-6 * scale), got, ref)


# ----------------------------------------------------------------------------------------------------------------
# The loop's own properties, on a linear policy
# ----------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class LinearPolicy:
    """``action = [obs, feedback] @ w + b``: a memoryless policy with the model interface the sources use."""

    num_modalities: int
    observation_dim: int
    output_dim: int
    feedback_dim: int

    @property
    def modality_dims(self):
        return (self.observation_dim,) * self.num_modalities

    @property
    def num_inputs(self):
        return self.num_modalities * self.observation_dim + self.feedback_dim

    def init_params(self, key):
        w = 0.01 * jax.random.normal(key, (self.num_inputs, self.output_dim))
        return {"params": {"w": w, "b": jnp.zeros((self.output_dim,))}}

    def initial_carry(self, batch_shape=()):
        return jnp.zeros(tuple(batch_shape) + (1,), jnp.float32)

    def sequence(self, params, carry, obs, feedback):
        x = jnp.concatenate([obs.reshape(obs.shape[:-2] + (-1,)), feedback], axis=-1)
        return carry, x @ params["params"]["w"] + params["params"]["b"]

    def apply(self, params, carry, obs, feedback, method=None):
        return (method or self.sequence)(params, carry, obs, feedback)


TINY_EPISODES = 8
TINY_LR = 2e-2


@pytest.fixture(scope="module")
def tiny():
    env = LatentWorld(observation_dim=8, action_dim=8, num_modalities=2, latent_dim=4, episode_length=4)
    model = LinearPolicy(num_modalities=2, observation_dim=8, output_dim=8, feedback_dim=env.feedback_dim)
    source = EnvSource(model, env, num_tasks=2, num_envs=16, eval_envs=16)
    config = RunConfig(strategy="ewc", episodes_per_task=TINY_EPISODES,
                       monitors=("parameter", "fisher", monitors_lib.functional_divergence(2)))
    run = make_run(config, source)
    hp = run.hparams(learning_rate=TINY_LR, lam=1.0)
    key = jax.random.key(0)
    state, results = run(key, hp)
    return dict(env=env, model=model, source=source, config=config, run=run, hp=hp, key=key, state=state,
                results=results)


def _assert_results_close(actual, expected):
    for name, a, e in zip(expected._fields, actual, expected):
        jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=RTOL, atol=ATOL, err_msg=name), a, e)


def test_run_is_deterministic_and_stepwise_equals_scanned(tiny):
    run, hp, res_a = tiny["run"], tiny["hp"], tiny["results"]
    _, res_b = run(jax.random.key(0), hp)
    _, res_c = run(jax.random.key(1), hp)
    _, res_s = run.run_stepwise(jax.random.key(0), hp)
    assert res_a.R.shape == (2, 2) and res_a.traces["loss"].shape == (2, TINY_EPISODES)
    np.testing.assert_array_equal(res_a.R, res_b.R)
    assert not np.allclose(res_a.R, res_c.R)
    _assert_results_close(res_s, res_a)
    # The per-task function compiled once and served both tasks.
    before = _jit_task_step._cache_size()
    run.train_task(run.init(jax.random.key(0), hp), jax.random.key(0), 1, hp)
    assert _jit_task_step._cache_size() == before


@pytest.mark.slow
def test_jit_and_no_jit_agree_on_closed_loop_evaluation(tiny):
    # The fast version of the test below: the closed-loop rollouts and scores of the trained agent, op by op.
    run, params = tiny["run"], tiny["state"].params
    jitted = run.evaluate(params, tiny["key"], tiny["hp"])
    with jax.disable_jit():
        eager = run.evaluate(params, tiny["key"], tiny["hp"])
    np.testing.assert_allclose(eager, jitted, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(jitted, tiny["results"].R[-1], rtol=RTOL, atol=ATOL)


@pytest.mark.slow  # about 20 s: op-by-op execution compiles every primitive of the run on its own
def test_jit_and_no_jit_agree(tiny):
    with jax.disable_jit():
        _, eager = tiny["run"](tiny["key"], tiny["hp"])
    _assert_results_close(eager, tiny["results"])


@pytest.fixture(scope="module")
def sweep(tiny):
    """Seeds x penalty strengths, vmapped in one compiled program: ``R [seeds, lambdas, T, T]``."""
    keys = jax.random.split(jax.random.key(7), 2)
    lambdas = jnp.array([0.0, 10.0])
    hp = tiny["hp"].replace(lam=lambdas)
    hp_axes = hp.axes("lam")
    per_lambda = jax.vmap(tiny["run"], in_axes=(None, hp_axes))
    _, results = jax.vmap(per_lambda, in_axes=(0, None))(keys, hp)
    return keys, lambdas, results


def test_vmapped_seeds_and_lambda_sweep_equal_individual_runs(tiny, sweep):
    run, hp = tiny["run"], tiny["hp"]
    keys, lambdas, batched = sweep
    assert batched.R.shape == (2, 2, 2, 2)
    for i in range(len(keys)):
        for j in range(len(lambdas)):
            before = _jit_run._cache_size()
            _, single = run(keys[i], hp.replace(lam=lambdas[j]))
            _assert_results_close(jax.tree.map(lambda x: x[i, j], batched), single)
            # The whole run compiled once for every individual run.
            assert _jit_run._cache_size() <= before + (i == j == 0)
    # Both axes matter: the seeds redraw the runs, and a strong penalty changes how task 1 is learned.
    assert not np.allclose(batched.R[0], batched.R[1])
    assert not np.allclose(batched.traces["loss"][:, 0, 1], batched.traces["loss"][:, 1, 1])
    assert not np.allclose(batched.traces["penalty"][:, 0, 1], batched.traces["penalty"][:, 1, 1])


@pytest.fixture(scope="module")
def importances(tiny):
    """The run's own Fisher diagonal and MAS importance at the end of the tiny run, on task 0."""
    run, hp, source = tiny["run"], tiny["hp"], tiny["source"]
    task = jax.tree.map(lambda x: x[0], source.tasks)
    data = source.fisher_data(tiny["key"], tiny["state"].params, task, hp.source)
    importance = jax.jit(run.importance, static_argnames="kind")
    return {kind: importance(tiny["key"], tiny["state"].params, data, hp, kind=kind) for kind in ("fisher", "mas")}


@pytest.mark.parametrize("strategy", reg_lib.STRATEGIES)
def test_every_strategy_plugs_into_the_run(tiny, importances, strategy):
    run = make_run(dataclasses.replace(tiny["config"], strategy=strategy), tiny["source"])
    hp = run.hparams(learning_rate=TINY_LR)
    shapes = jax.eval_shape(run, tiny["key"], hp)[1]
    expected = {k: (v.shape, v.dtype) for k, v in tiny["results"].traces.items() if k not in ("reg_lambda",)}
    got = {k: (v.shape, v.dtype) for k, v in shapes.traces.items() if k not in ("reg_lambda",)}
    assert got == expected and shapes.R.shape == tiny["results"].R.shape
    assert ("reg_lambda" in shapes.traces) == (strategy == "ewc_budget")

    # The run's strategy, consolidated after a first task with the run's own importance, penalises a move away
    # from the end of that task (and "none" never does).
    start, end = run.init(tiny["key"], hp).params, tiny["state"].params
    reg = reg_lib.make_regularizer(strategy, **({} if strategy == "none" else {"lam": 1.0}))
    task_grads = jax.tree.map(jnp.subtract, start, end)  # a descent direction of the step start -> end
    reg_state = reg.accumulate(reg.init(start), start, end, task_grads)
    reg_state = reg.consolidate(reg_state, end, importances.get(reg.importance_kind))
    moved = jax.tree.map(lambda p: p + 0.1, end)
    at_end, after_move = float(reg.penalty(reg_state, end)), float(reg.penalty(reg_state, moved))
    assert at_end == pytest.approx(0.0, abs=1e-6)
    if strategy == "none":
        assert after_move == 0.0
    else:
        assert after_move > 1e-3


def test_traces_make_sense(tiny, sweep):
    res = tiny["results"]
    tr = {k: np.asarray(v) for k, v in res.traces.items()}
    T, E = 2, TINY_EPISODES
    assert tr["loss"].shape == (T, E) and tr["finite"].all()
    # The objective falls over each task: the mean of the last two episodes is well below that of the first two
    # (averaged over tasks, seeds and penalty strengths of the sweep as well).
    losses = np.concatenate([tr["loss"][None], np.asarray(sweep[2].traces["loss"]).reshape(-1, T, E)])
    first, last = losses[..., :2].mean(), losses[..., -2:].mean()
    assert last < 0.7 * first, (first, last)
    # Task 0 is learned (its score after training beats the untrained model's); so is task 1 without a penalty
    # (lambda = 0 in the sweep), which forgets task 0, while lambda = 10 holds task 0 better on every seed.
    R, baseline = np.asarray(sweep[2].R), np.asarray(sweep[2].baseline)
    assert res.R[0, 0] > res.baseline[0] + 0.5 and np.all(R[:, :, 0, 0] > baseline[:, :, 0] + 0.5)
    assert np.all(R[:, 0, 1, 1] > baseline[:, 0, 1] + 0.2)
    assert np.all(R[:, 1, 1, 0] > R[:, 0, 1, 0] + 0.5)
    # Adam's first step from a fresh state moves every parameter by exactly the learning rate (m/sqrt(v) = sign g),
    # so the distance from the task's start after the first episode is lr * sqrt(#params), and it grows after.
    n_params = tiny["model"].num_inputs * 8 + 8
    np.testing.assert_allclose(tr["param_l2"][:, 0], TINY_LR * np.sqrt(n_params), rtol=1e-3)
    assert np.all(tr["param_l2"][:, -1] > tr["param_l2"][:, 0])
    assert np.all(tr["param_relative"] > 0)
    # Before the first consolidation there is nothing to remember: no penalty, no Fisher weight, no old outputs.
    np.testing.assert_array_equal(tr["penalty"][0], 0.0)
    np.testing.assert_array_equal(tr["fisher_distance"][0], 0.0)
    # The functional divergence is measured once per task, after its last episode (NaN on the others).
    assert np.all(np.isnan(tr["functional"][:, :-1]))
    assert tr["functional"][0, -1] == 0.0
    # During task 1 the agent moves away from task 0's end: the penalty (zero at the anchor, episode 0), the
    # Fisher-weighted distance and the output change on task 0's probes are all positive.
    assert abs(float(tr["penalty"][1, 0])) < 1e-6
    assert np.all(tr["penalty"][1, 1:] > 0)
    assert np.all(tr["fisher_distance"][1] > 0) and tr["functional"][1, -1] > 0
    assert np.all(np.isfinite(tr["score"])) and np.all(tr["score"] <= 1.0)


def test_custom_objective_is_used(tiny):
    """A constant-target objective (returning a bare loss) teaches a constant action, not the expert's."""
    model = tiny["model"]
    target = 1.0

    def constant_target(params, traj, hparams):
        carry = model.initial_carry(traj.obs.shape[1:2])
        _, actions = model.apply(params, carry, traj.obs, traj.feedback, method=model.sequence)
        return jnp.mean(jnp.sum((actions - target) ** 2, axis=-1))

    source = dataclasses.replace(tiny["source"], objective=constant_target)
    run = make_run(tiny["config"], source)
    state, res = run(tiny["key"], tiny["hp"])
    traj = source.rollout(jax.random.key(3), state.params, jax.tree.map(lambda x: x[1], source.tasks),
                          tiny["hp"].source, 16)
    assert float(jnp.mean(traj.action)) > 0.5  # from about 0 before training, towards the constant 1
    # The default objective learns task 0 (score > 0.5); the constant one scores below the zero action on both.
    assert float(tiny["results"].R[0, 0]) > 0.5
    assert np.all(np.diag(np.asarray(res.R)) < 0.0)
    assert float(normalized_score(traj.action, traj.target)) < 0.0
    # A bare loss has no score: no score is recorded, and the objective's value is what is recorded.
    assert "score" not in res.traces
    assert float(res.traces["loss"][1, -1]) < 0.5 * float(res.traces["loss"][0, 0])


@pytest.mark.slow
@pytest.mark.parametrize("strategy", reg_lib.STRATEGIES)
def test_every_strategy_runs_end_to_end(tiny, strategy):
    """A whole run per strategy: no penalty during task 0, a positive one during task 1 (zero for ``none``)."""
    run = make_run(dataclasses.replace(tiny["config"], strategy=strategy), tiny["source"])
    _, res = run(tiny["key"], run.hparams(learning_rate=TINY_LR))
    pen = np.asarray(res.traces["penalty"])
    np.testing.assert_array_equal(pen[0], 0.0)
    if strategy == "none":
        np.testing.assert_array_equal(pen[1], 0.0)
    else:
        assert np.all(pen[1, 1:] > 0)
    assert np.all(np.isfinite(res.R)) and np.all(np.diag(res.R) > res.baseline)
