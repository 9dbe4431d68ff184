"""The examples of the project's original description, run as written there (imports from ``clloop_jax``).

Each snippet below is copied verbatim from the description's README, with ``from continual_learning import`` read as
``from clloop_jax import``; what follows each snippet checks what it computed.
"""
import contextlib
import io

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import TINY_WORLD, tiny_model

from clloop_jax import ContinualLearningLoop, CrossModalModel, Environment
from clloop_jax.envs import LatentWorld


@pytest.mark.slow
def test_basic_example_runs_as_written():
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        # ----- verbatim -----
        from clloop_jax import ContinualLearningLoop, CrossModalModel, Environment

        # Initialize components
        model = CrossModalModel(
            input_dim=64,
            hidden_dim=128,
            output_dim=32,
            num_modalities=2,
        )

        environment = Environment(
            observation_dim=64,
            action_dim=32,
            num_modalities=2,
        )

        # Create learning loop
        learning_loop = ContinualLearningLoop(
            model=model,
            environment=environment,
            learning_rate=1e-3,
            ewc_lambda=0.5,  # Knowledge preservation strength
            feedback_weight=0.3,  # Recurrent feedback weight
        )

        # Run continual learning across multiple tasks
        metrics = learning_loop.continual_learning_cycle(
            num_tasks=3,
            episodes_per_task=10,
            verbose=True,
        )
        # ----- end -----
    assert learning_loop.model.feedback_dim == environment.feedback_dim == 33  # paired with the environment
    assert np.asarray(metrics["R"]).shape == (3, 3)
    assert all(np.isfinite(metrics[k]) for k in ("average_performance", "backward_transfer"))
    assert [line.split(":")[0] for line in out.getvalue().splitlines() if line.startswith("task ")] == \
        ["task 1/3", "task 2/3", "task 3/3"]


def test_basic_example_pairs_the_model_with_the_environment_feedback():
    """The basic example's pairing, at a size that compiles quickly: ``feedback_dim`` left out takes the world's."""
    model, environment = tiny_model(), Environment(**TINY_WORLD)
    assert model.feedback_dim is None and model.num_feedback == 0   # on its own: no feedback input
    loop = ContinualLearningLoop(model=model, environment=environment, learning_rate=1e-3, ewc_lambda=0.5,
                                 feedback_weight=0.3)
    assert loop.model.feedback_dim == environment.feedback_dim == 5
    params = loop.params["params"]
    assert params["feedback_encoder"]["kernel"].shape == (5, 8)

@pytest.mark.slow
def test_custom_modalities_as_written():
    # ----- verbatim -----
    model = CrossModalModel(num_modalities=3)  # e.g., visual, audio, text
    environment = Environment(num_modalities=3)
    # ----- end -----
    # Every size has a default, and the defaults of the model and the world fit each other.
    assert (model.input_dim, model.hidden_dim, model.output_dim) == (64, 128, 32)
    assert (environment.observation_dim, environment.action_dim) == (64, 32)
    loop = ContinualLearningLoop(model=model, environment=environment)
    assert loop.model.modality_dims == (64, 64, 64) and loop.model.feedback_dim == environment.feedback_dim
    obs, target = jnp.ones((2, 3, 64)), jnp.full((2, 32), 0.5)
    losses = [loop.train_step(obs, target) for _ in range(5)]
    assert np.all(np.isfinite(losses)) and losses[-1] < losses[0]


def test_custom_environment_by_subclassing_as_written():
    # ----- verbatim -----
    class CustomEnvironment(Environment):
        def step(self, action):
            # Custom environment dynamics
            ...
            return observations, reward, done, info  # noqa: F821 (the description leaves them to the user)
    # ----- end -----
    env = CustomEnvironment(num_modalities=3)
    assert isinstance(env, Environment) and env.num_modalities == 3

    # Written as the description writes it, the world cannot run in a compiled loop (its state lives outside it):
    # building a loop over it says what to write instead.
    model = CrossModalModel(input_dim=64, hidden_dim=8, output_dim=32, num_modalities=3, num_heads=2)
    with pytest.raises(TypeError, match=r"CustomEnvironment\.step\(self, action\) overrides.*step_env\(self, "
                                        r"key, state, action, params\) -> \(obs, state, reward, done, info\).*"
                                        r"docs/guides/worlds\.md"):
        ContinualLearningLoop(model=model, environment=env)


TRACED = []


class PushedWorld(LatentWorld):
    """The default world with a constant push on its latent state: a domain-specific twist of the dynamics."""

    def step_env(self, key, state, action, params):
        TRACED.append(type(self).__name__)
        obs, state, reward, done, info = super().step_env(key, state, action, params)
        return obs, state.replace(latent=state.latent + 0.5), reward, done, info


class SameWorld(PushedWorld):
    """``PushedWorld`` without the push: the same keys and code path, the default dynamics."""

    def step_env(self, key, state, action, params):
        TRACED.append(type(self).__name__)
        return LatentWorld.step_env(self, key, state, action, params)

@pytest.mark.slow
def test_custom_environment_through_step_env_changes_what_the_loop_learns_from():
    """The same idea through the world's functional interface: override ``step_env`` (gymnax), and the loop runs it.
    The push moves the latent state by 0.5 per step, so the untrained agent's scores (the cycle's baseline, on the
    same evaluation keys) differ from those in the same world without the push."""
    pushed, same = PushedWorld(**TINY_WORLD), SameWorld(**TINY_WORLD)
    model = tiny_model()
    TRACED.clear()
    loop = ContinualLearningLoop(model=model, environment=pushed, strategy="none", num_envs=2)
    untrained = loop.params
    metrics = loop.continual_learning_cycle(num_tasks=2, episodes_per_task=1)
    assert TRACED and set(TRACED) == {"PushedWorld"}  # the override was traced into the compiled run
    R, baseline = np.asarray(metrics["R"]), np.asarray(metrics["baseline"])
    assert R.shape == (2, 2) and np.all(np.isfinite(R))
    # The same agent, keys and tasks in the world without the push (only its evaluation is compiled).
    same_loop = ContinualLearningLoop(model=model, environment=same, strategy="none", num_envs=2)
    run = same_loop._run_for(2, 1)
    same_baseline = np.asarray(run.evaluate(untrained, jax.random.fold_in(same_loop.key, 2), same_loop.hparams))
    assert "SameWorld" in TRACED
    assert np.max(np.abs(baseline - same_baseline)) > 1e-3
    # One step from the same state and key: the states differ by the push exactly.
    key, task = jax.random.key(0), same.task_params(0)
    _, s0 = same.reset(key, task)
    _, s_same, *_ = same.step(key, s0, jnp.zeros(4), task)
    _, s_pushed, *_ = pushed.step(key, s0, jnp.zeros(4), task)
    np.testing.assert_allclose(s_pushed.latent - s_same.latent, 0.5, atol=1e-6)

@pytest.mark.slow
def test_custom_loss_function_reaches_train_step_and_the_cycle():
    """The description's "different learning objectives": a custom loss of ``(output, target)`` drives training."""

    def custom_loss_function(output, target):
        return jnp.mean(jnp.abs(output - target))   # L1 instead of the squared error

    model, environment = tiny_model(), Environment(**TINY_WORLD)
    loop = ContinualLearningLoop(model=model, environment=environment, loss_fn=custom_loss_function)
    obs = np.random.default_rng(0).standard_normal((2, 8)).astype(np.float32)
    target = np.full((4,), 0.25, np.float32)
    m = loop.model
    _, output = m.apply(loop.params, m.initial_carry(), obs, jnp.zeros((m.feedback_dim,)))
    expected = float(jnp.mean(jnp.abs(output - target)))    # no penalty before any task is consolidated
    assert loop.train_step(obs, target) == pytest.approx(expected, rel=1e-5)
    # The cycle's task source trains with it too: its loss on a closed-loop batch is the L1 error of the actions
    # recomputed along the trajectory.
    source = loop._run_for(num_tasks=2, episodes_per_task=2).source
    assert source.objective.loss_fn is custom_loss_function

    @jax.jit   # compiled, as in the run (op by op it takes several times longer)
    def loss_along_a_batch(key, params, hp):
        batch = source.batch(key, params, jax.tree.map(lambda x: x[0], source.tasks), hp)
        actions = m.apply(params, m.initial_carry((batch.obs.shape[1],)), batch.obs, batch.feedback,
                          method=m.sequence)[1]
        return batch, actions, source.loss(params, batch, hp)[0]

    batch, actions, loss = loss_along_a_batch(jax.random.key(1), loop.params, loop.hparams.source)
    assert float(loss) == pytest.approx(float(jnp.mean(jnp.abs(actions - batch.target))), rel=1e-5)
