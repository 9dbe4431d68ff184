"""End-to-end checks of the compiled continual-learning run on a tiny closed-loop world."""
import jax
import numpy as np
import pytest

from clloop_jax.envs import LatentWorld
from clloop_jax.loop import HParams, RunConfig, make_run
from clloop_jax.model import CrossModalModel
from clloop_jax.sources import EnvSource


@pytest.fixture(scope="module")
def setup():
    env = LatentWorld(observation_dim=8, action_dim=8, num_modalities=2, latent_dim=4, episode_length=8)
    model = CrossModalModel(input_dim=8, hidden_dim=16, output_dim=8, num_modalities=2, num_heads=2,
                            feedback_dim=env.feedback_dim)
    source = EnvSource(model, env, num_tasks=2, num_envs=4, eval_envs=4)
    run = make_run(RunConfig(strategy="ewc", episodes_per_task=3), source)
    hp = HParams.create(reg_lambda=10.0)
    return env, model, run, hp


def test_run_is_deterministic_and_stepwise_equals_scanned(setup):
    _, _, run, hp = setup
    _, res_a = run(jax.random.key(0), hp)
    _, res_b = run(jax.random.key(0), hp)
    _, res_c = run(jax.random.key(1), hp)
    _, res_s = run.run_stepwise(jax.random.key(0), hp)
    assert res_a.R.shape == (2, 2) and res_a.traces.loss.shape == (2, 3)
    np.testing.assert_array_equal(res_a.R, res_b.R)
    assert not np.allclose(res_a.R, res_c.R)
    np.testing.assert_allclose(res_s.R, res_a.R, atol=1e-5)
    # The per-task function compiled once and served both tasks.
    assert run._jit_train_task._cache_size() == 1


def test_bad_input_is_rejected_before_compiling(setup):
    env, _, _, _ = setup
    wrong = CrossModalModel(input_dim=8, hidden_dim=16, output_dim=7, num_modalities=2, num_heads=2,
                            feedback_dim=env.feedback_dim)
    with pytest.raises(ValueError, match="output_dim"):
        EnvSource(wrong, env)
    with pytest.raises(ValueError, match="episodes_per_task"):
        RunConfig(episodes_per_task=0)
    with pytest.raises(ValueError, match="learning_rate"):
        HParams.create(learning_rate=-1e-3)
