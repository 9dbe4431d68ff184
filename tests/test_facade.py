"""The notebook facade ``ContinualLearningLoop`` on a tiny world: the documented example, reuse of the compiled
run, ``train_step`` and its input checks."""
import contextlib
import io

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import TINY_TASKS, tiny_world

from clloop_jax import ContinualLearningLoop, CrossModalModel
from clloop_jax.envs.rollout import Trajectory
from clloop_jax.run.errors import NonFiniteError
from clloop_jax.run.programs import jit_evaluate
from clloop_jax.run.sequential import _jit_init, _jit_task_step

NUM_TASKS = TINY_TASKS

# The documented example on the tiny world (tests/conftest.py's tiny_cycle, run once per test process) is shared
# by the tests below; tiny_world() builds the same model and world afresh.


def test_documented_example_reports_floats_and_the_matrix(tiny_cycle):
    loop, metrics, printed = tiny_cycle
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


def test_a_second_loop_and_a_second_cycle_reuse_the_compiled_run_and_continue(tiny_cycle, capsys):
    loop, metrics, _ = tiny_cycle
    sizes = [fn._cache_size() for fn in (_jit_init, _jit_task_step, jit_evaluate)]
    model, env = tiny_world()
    other = ContinualLearningLoop(model=model, environment=env, learning_rate=1e-3, ewc_lambda=0.5,
                                  feedback_weight=0.3)
    first = other.continual_learning_cycle(num_tasks=NUM_TASKS, episodes_per_task=10)
    # An identical configuration in another object: same numbers, nothing compiled again.
    np.testing.assert_array_equal(np.asarray(first["R"]), np.asarray(metrics["R"]))
    again = other.continual_learning_cycle(num_tasks=NUM_TASKS, episodes_per_task=10)
    assert capsys.readouterr().out == ""  # not verbose
    assert [fn._cache_size() for fn in (_jit_init, _jit_task_step, jit_evaluate)] == sizes
    # The second cycle continues from the first one's agent, with the same evaluation keys: its baseline is the
    # first cycle's last row.
    np.testing.assert_array_equal(np.asarray(again["baseline"]), np.asarray(first["R"])[-1])
    assert int(other.state.tasks_done) == 2 * NUM_TASKS
    other.reset()
    assert other.state is None
    np.testing.assert_array_equal(jax.tree.leaves(other.params)[0], jax.tree.leaves(ContinualLearningLoop(
        model=model, environment=env).params)[0])


def test_train_step_accepts_every_layout_and_learns_a_fixed_batch(tiny_cycle):
    loop, _, _ = tiny_cycle
    model = loop.model
    rng = np.random.default_rng(0)
    M, D, A = model.num_modalities, model.modality_dims[0], model.output_dim

    # [M, D]: the loss is the squared error of one step from a zero carry, plus the consolidated penalty.
    obs, target = rng.standard_normal((M, D)).astype(np.float32), np.full((A,), 0.5, np.float32)
    params = loop.params
    _, action = model.apply(params, model.initial_carry(), obs, jnp.zeros((model.feedback_dim,)))
    run = loop._step_run()
    penalty = run.strategy.penalty(loop.state.strategy, params, loop.hparams.strategy)
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


def test_train_step_is_the_runs_update_and_a_cycle_continues_from_it():
    model, env = tiny_world()
    loop = ContinualLearningLoop(model=model, environment=env, learning_rate=1e-2)
    rng = np.random.default_rng(1)
    obs = rng.standard_normal((3, 4, 2, 8)).astype(np.float32)
    target = np.full((3, 4, 4), 0.5, np.float32)
    run = loop._step_run()
    state = loop._state_for(run)
    zeros = jnp.zeros((3, 4))
    batch = Trajectory(jnp.asarray(obs), jnp.zeros((3, 4, env.feedback_dim)), jnp.zeros((3, 4, 4)),
                       jnp.asarray(target), zeros, zeros.astype(bool))
    expected, trace = jax.jit(run.update)(state, batch, jax.random.key(5), loop.hparams)   # compiled, as the run
    loss = loop.train_step(obs, target)
    assert loss == pytest.approx(float(trace["loss"] + trace["penalty"]), rel=1e-5)
    for a, b in zip(jax.tree.leaves(loop.params), jax.tree.leaves(expected.params)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    # Clipping and the optimizer are the run's: the step moved the parameters, by Adam's first step (lr per entry).
    moved = [np.max(np.abs(np.asarray(a) - np.asarray(b))) for a, b in zip(jax.tree.leaves(loop.params),
                                                                              jax.tree.leaves(state.params))]
    assert max(moved) == pytest.approx(1e-2, rel=1e-3)
    # A cycle after the step starts from the stepped agent: its baseline is that agent's score.
    stepped = loop.params
    metrics = loop.continual_learning_cycle(num_tasks=NUM_TASKS, episodes_per_task=10)  # compiled for `tiny_cycle`
    cycle_run = loop._step_run()
    np.testing.assert_allclose(metrics["baseline"], cycle_run.evaluate(stepped, loop._run_key(2), loop.hparams), atol=1e-6)


def test_train_step_refuses_non_finite_input_and_divergence(tiny_cycle):
    loop, _, _ = tiny_cycle
    with pytest.raises(ValueError, match="observations must be finite"):
        loop.train_step(np.full((2, 8), np.nan), np.zeros((4,)))
    model, env = tiny_world()
    wild = ContinualLearningLoop(model=model, environment=env, learning_rate=1e30)
    before = jax.tree.leaves(wild.params)
    with pytest.raises(NonFiniteError):
        for _ in range(5):
            wild.train_step(np.full((2, 8), 1e30, np.float32), np.full((4,), 1e30, np.float32))
    assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(wild.params))
    assert len(before) == len(jax.tree.leaves(wild.params))


def test_train_step_refuses_what_is_not_a_real_array_naming_the_argument(tiny_cycle):
    loop, _, _ = tiny_cycle
    obs, target, fb = np.zeros((2, 8)), np.zeros((4,)), np.zeros((loop.model.feedback_dim,))
    ragged = [[0.0] * 8, [0.0] * 7]
    for bad, hint in (("abc", r"got str"), (None, r"got None"), (ragged, r"rectangular array of numbers"),
                      (np.ones((2, 8), np.complex64), r"dtype is complex64"), (np.ones((2, 8), bool), r"dtype is bool")):
        for name, call in (("observations", lambda: loop.train_step(bad, target, fb)),
                           ("target", lambda: loop.train_step(obs, bad if not isinstance(bad, np.ndarray)
                                                               else bad[0, :4], fb)),
                           ("feedback", lambda: loop.train_step(obs, target, bad if not isinstance(bad, np.ndarray)
                                                                 else bad[0, :fb.shape[0]]))):
            if name == "feedback" and bad is None:
                continue                                              # None feedback means zeros
            with pytest.raises(TypeError, match=rf"^{name} must be a real numeric array.*{hint}"):
                call()
    with pytest.raises(TypeError, match=r"^observations must be a real numeric array"):
        loop.act(np.ones((2, 8), np.complex64))
    # Integers are numbers: taken as the same values in float32 (as documented), so the step equals the float one.
    floats, ints = (ContinualLearningLoop(*tiny_world()) for _ in range(2))
    assert floats.train_step(np.arange(16.0).reshape(2, 8), np.ones(4)) == \
        ints.train_step(np.arange(16).reshape(2, 8), np.ones(4, np.int32))
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(floats.params), jax.tree.leaves(ints.params)))


def test_train_step_rejects_bad_shapes(tiny_cycle):
    loop, _, _ = tiny_cycle
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
    with pytest.raises(ValueError, match="gamma"):
        ContinualLearningLoop(model, env, gamma=0.9)  # EWC has no decay: refused rather than ignored
    with pytest.raises(ValueError, match="seed"):
        ContinualLearningLoop(model, env, seed=-1)
    loop = ContinualLearningLoop(model, env)
    with pytest.raises(ValueError, match="num_tasks"):
        loop.continual_learning_cycle(num_tasks=0)
    with pytest.raises(ValueError, match="episodes_per_task"):
        loop.continual_learning_cycle(num_tasks=2, episodes_per_task=1.5)


def test_more_tasks_than_the_world_has_are_refused_naming_both_numbers():
    from clloop_jax.sources.world import EnvSource
    model, env = tiny_world()
    assert env.num_tasks == NUM_TASKS == 3
    loop = ContinualLearningLoop(model, env)
    more = r"num_tasks=5 is more than the 3 tasks of the world LatentWorld \(its num_tasks=3\)"
    with pytest.raises(ValueError, match=more):
        loop.continual_learning_cycle(num_tasks=5)
    with pytest.raises(ValueError, match=more):
        EnvSource(model, env, num_tasks=5)
    assert EnvSource(model, env, num_tasks=3).tasks.task_id.shape == (3,)  # as many as it has, or fewer: accepted


def test_verbose_cycle_announces_compilation_once_then_numbers_tasks_and_prints_the_tables_once(tiny_cycle, monkeypatch):
    from clloop_jax import facade

    loop, _, _ = tiny_cycle
    monkeypatch.setattr(facade, "_COMPILED_RUNS", set())  # as in a fresh process (the programs stay compiled)
    outputs = []
    for _ in range(2):
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            loop.continual_learning_cycle(num_tasks=NUM_TASKS, episodes_per_task=10, verbose=True)
        outputs.append(out.getvalue().splitlines())
    first, second = outputs
    assert first[0].startswith("compiling the run (") and "cached afterwards" in first[0]
    assert not any(line.startswith("compiling") for line in second)  # compiled in this process now
    for lines in outputs:
        tasks = [line.split(":")[0] for line in lines if line.startswith("task ")]
        assert tasks == [f"task {i}/{NUM_TASKS}" for i in range(1, NUM_TASKS + 1)]
        assert sum(line.startswith("| after") for line in lines) == 1  # the matrix once
        assert sum(line.startswith("| average_performance |") for line in lines) == 1  # the summary once


def test_act_is_the_descriptions_model_call_and_model_of_observations_says_what_to_write(tiny_cycle):
    """The description's ``output, internal_state = self.model(observations)`` inside a loop subclass: ``self.model``
    stays the flax module, whose one-argument call explains itself; ``self.act(observations)`` computes it."""
    loop, _, _ = tiny_cycle

    class CustomLoop(ContinualLearningLoop):
        def custom_outputs(self, observations):
            output, internal_state = self.model(observations)
            return output, internal_state

        def outputs(self, observations):
            output, internal_state = self.act(observations)
            return output, internal_state

    model, env = tiny_world()
    custom = CustomLoop(model=model, environment=env)
    custom.params = loop.params  # a trained agent, so the numbers are not those of an initialisation
    obs = np.random.default_rng(1).standard_normal((3, 2, 8)).astype(np.float32)
    with pytest.raises(TypeError, match=r"model\.apply\(params, model\.initial_carry\(batch_shape\), observations, "
                                        r"feedback\).*output, internal_state = loop\.act\(observations\)"):
        custom.custom_outputs(obs)
    output, state = custom.outputs(obs)
    m = custom.model
    carry, want = m.apply(loop.params, jnp.zeros((3, 8)), jnp.asarray(obs), jnp.zeros((3, m.feedback_dim)))
    np.testing.assert_allclose(output, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(state, carry, rtol=1e-5, atol=1e-6)
    # One observation [M, D] is the first row of the batch; the state carries a sequence on.
    one, one_state = custom.act(obs[0])
    np.testing.assert_allclose(one, output[0], rtol=1e-5, atol=1e-6)
    nxt, _ = custom.act(obs[1], internal_state=one_state, feedback=np.ones(m.feedback_dim, np.float32))
    _, want_next = m.apply(loop.params, carry[0], jnp.asarray(obs[1]), jnp.ones((m.feedback_dim,)))
    np.testing.assert_allclose(nxt, want_next, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match=r"internal_state must have shape \(3, 8\)"):
        custom.act(obs, internal_state=np.zeros(8))
    with pytest.raises(ValueError, match=r"observations must have shape \[M, D\] or \[B, M, D\]"):
        custom.act(obs[None])


def test_building_a_loop_turns_on_the_compilation_cache_unless_asked_not_to(tmp_path, monkeypatch):
    names = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs",
             "jax_persistent_cache_min_entry_size_bytes")
    saved = {n: getattr(jax.config, n) for n in names}
    model, env = tiny_world()
    try:
        monkeypatch.setenv("CLLOOP_JAX_CACHE_DIR", str(tmp_path / "xla"))
        monkeypatch.delenv("CLLOOP_JAX_NO_CACHE", raising=False)
        jax.config.update("jax_compilation_cache_dir", None)
        off = ContinualLearningLoop(model=model, environment=env, compilation_cache=False)
        assert off.compilation_cache is None and jax.config.jax_compilation_cache_dir is None
        monkeypatch.setenv("CLLOOP_JAX_NO_CACHE", "1")
        assert ContinualLearningLoop(model=model, environment=env).compilation_cache is None
        assert jax.config.jax_compilation_cache_dir is None
        monkeypatch.delenv("CLLOOP_JAX_NO_CACHE")
        on = ContinualLearningLoop(model=model, environment=env)
        assert on.compilation_cache == tmp_path / "xla" and (tmp_path / "xla").is_dir()
        assert jax.config.jax_compilation_cache_dir == str(tmp_path / "xla")
        with pytest.raises(TypeError, match="compilation_cache must be True or False"):
            ContinualLearningLoop(model=model, environment=env, compilation_cache="yes")
    finally:
        for n, v in saved.items():
            jax.config.update(n, v)


def test_make_run_over_the_loops_configuration_reuses_the_loops_compiled_programs(tiny_cycle):
    from clloop_jax import EnvSource, RunConfig, make_run

    loop, metrics, _ = tiny_cycle
    sizes = [fn._cache_size() for fn in (_jit_init, _jit_task_step, jit_evaluate)]
    model, env = tiny_world()
    run = make_run(RunConfig(strategy="ewc", episodes_per_task=10), EnvSource(loop.model, env, num_tasks=NUM_TASKS))
    key, hp = jax.random.fold_in(jax.random.key(0), 2), run.hparams(learning_rate=1e-3, lam=0.5, feedback_weight=0.3)
    _, results = run.run_stepwise(key, hp)
    assert np.all(np.isfinite(np.asarray(results.R)))
    # The loop's first cycle started from a fresh loop's agent, scored with the run key fold_in(key(seed), 2).
    untrained = ContinualLearningLoop(model=model, environment=env).params
    np.testing.assert_allclose(np.asarray(run.evaluate(untrained, key, hp)), np.asarray(metrics["baseline"]),
                               atol=1e-6)
    assert [fn._cache_size() for fn in (_jit_init, _jit_task_step, jit_evaluate)] == sizes
