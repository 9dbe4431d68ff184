"""The notebook facade ``ContinualLearningLoop`` on a tiny world: the documented example, reuse of the compiled
run, ``train_step`` and its input checks."""
import contextlib
import io

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from clloop_jax import ContinualLearningLoop, CrossModalModel, Environment
from clloop_jax.loop import make_regularizer

NUM_TASKS = 3


def tiny_world():
    env = Environment(observation_dim=8, action_dim=4, num_modalities=2, latent_dim=4, episode_length=4)
    model = CrossModalModel(input_dim=8, hidden_dim=8, output_dim=4, num_modalities=2, num_heads=2,
                            feedback_dim=env.feedback_dim)
    return model, env


@pytest.fixture(scope="module")
def cycled():
    """The documented example, run as written on the tiny world; returns the loop, its metrics and its output."""
    model, env = tiny_world()
    loop = ContinualLearningLoop(model=model, environment=env, learning_rate=1e-3, ewc_lambda=0.5,
                                 feedback_weight=0.3)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        metrics = loop.continual_learning_cycle(num_tasks=NUM_TASKS, episodes_per_task=10, verbose=True)
    return loop, metrics, out.getvalue()


def test_documented_example_reports_floats_and_the_matrix(cycled):
    loop, metrics, printed = cycled
    for name in ("average_performance", "backward_transfer", "forward_transfer", "average_forgetting"):
        assert isinstance(metrics[name], float) and np.isfinite(metrics[name]), name
    R, baseline = np.asarray(metrics["R"]), np.asarray(metrics["baseline"])
    assert R.shape == (NUM_TASKS, NUM_TASKS) and baseline.shape == (NUM_TASKS,)
    # The metrics are those of R, recomputed by hand in float64.
    R64, b64 = R.astype(np.float64), baseline.astype(np.float64)
    assert metrics["average_performance"] == pytest.approx(R64[-1].mean(), abs=1e-6)
    assert metrics["backward_transfer"] == pytest.approx(np.mean(R64[-1, :-1] - np.diag(R64)[:-1]), abs=1e-6)
    assert metrics["forward_transfer"] == pytest.approx(np.mean([R64[j - 1, j] - b64[j] for j in (1, 2)]),
                                                        abs=1e-6)
    # The final state stays on the object.
    np.testing.assert_allclose(np.asarray(loop.results.R), R)
    assert jax.tree.structure(loop.params) == jax.tree.structure(loop.state.params)
    # verbose: one line per task, then the matrix and the summary tables.
    lines = printed.splitlines()
    task_lines = [line for line in lines if line.startswith("task ")]
    assert [line.split(":")[0] for line in task_lines] == [f"task {i}/{NUM_TASKS}" for i in (1, 2, 3)]
    assert sum(line.startswith("| t") for line in lines) == NUM_TASKS
    assert any(line.startswith("| average_performance |") for line in lines)


def test_second_cycle_reuses_the_compiled_run(cycled, capsys):
    loop, metrics, _ = cycled
    again = loop.continual_learning_cycle(num_tasks=NUM_TASKS, episodes_per_task=10)
    assert capsys.readouterr().out == ""  # not verbose
    run = loop._runs[(NUM_TASKS, 10)]
    assert len(loop._runs) == 1
    for fn in (run._jit_init, run._jit_train_task, run._jit_evaluate):
        assert fn._cache_size() == 1
    np.testing.assert_array_equal(np.asarray(again["R"]), np.asarray(metrics["R"]))


def test_train_step_accepts_every_layout_and_learns_a_fixed_batch(cycled):
    loop, _, _ = cycled
    model = loop.model
    rng = np.random.default_rng(0)
    M, D, A = model.num_modalities, model.modality_dims[0], model.output_dim

    # [M, D]: the loss is the squared error of one step from a zero carry, plus the consolidated penalty.
    obs, target = rng.standard_normal((M, D)).astype(np.float32), np.full((A,), 0.5, np.float32)
    params = loop.params
    _, action = model.apply(params, model.initial_carry(), obs, jnp.zeros((model.feedback_dim,)))
    penalty = make_regularizer("ewc", loop.hparams, NUM_TASKS).penalty(loop.state.reg_state, params)
    expected = float(jnp.sum((action - target) ** 2) + penalty)
    assert loop.train_step(obs, target) == pytest.approx(expected, rel=1e-4)

    # [B, M, D]
    loss = loop.train_step(rng.standard_normal((4, M, D)), np.full((4, A), 0.5))
    assert isinstance(loss, float) and np.isfinite(loss)

    # [T, B, M, D], repeated on one batch: the loss falls.
    obs = rng.standard_normal((3, 4, M, D)).astype(np.float32)
    target = np.full((3, 4, A), 0.5, np.float32)
    losses = [loop.train_step(obs, target) for _ in range(25)]
    assert np.all(np.diff(losses) < 0) and losses[-1] < 0.8 * losses[0], losses
    assert all(np.isfinite(losses))


def test_train_step_rejects_bad_shapes(cycled):
    loop, _, _ = cycled
    with pytest.raises(ValueError, match="observations"):
        loop.train_step(np.zeros((2, 9)), np.zeros((4,)))
    with pytest.raises(ValueError, match="observations"):
        loop.train_step(np.zeros((1, 1, 1, 2, 8)), np.zeros((1, 1, 1, 4)))
    with pytest.raises(ValueError, match="target"):
        loop.train_step(np.zeros((5, 2, 8)), np.zeros((5, 3)))
    with pytest.raises(ValueError, match="feedback"):
        loop.train_step(np.zeros((5, 2, 8)), np.zeros((5, 4)), feedback=np.zeros((5, 2)))


def test_bad_configuration_is_rejected_eagerly():
    model, env = tiny_world()
    with pytest.raises(ValueError, match="strategy"):
        ContinualLearningLoop(model, env, strategy="ewk")
    with pytest.raises(ValueError, match="fisher_varient"):
        ContinualLearningLoop(model, env, fisher_varient="exact")
    with pytest.raises(ValueError, match="learning_rate"):
        ContinualLearningLoop(model, env, learning_rate=-1.0)
    wrong = CrossModalModel(input_dim=8, hidden_dim=8, output_dim=5, num_modalities=2, num_heads=2,
                            feedback_dim=env.feedback_dim)
    with pytest.raises(ValueError, match="output_dim"):
        ContinualLearningLoop(wrong, env)
    loop = ContinualLearningLoop(model, env)
    with pytest.raises(ValueError, match="num_tasks"):
        loop.continual_learning_cycle(num_tasks=0)
    with pytest.raises(ValueError, match="episodes_per_task"):
        loop.continual_learning_cycle(num_tasks=2, episodes_per_task=1.5)
