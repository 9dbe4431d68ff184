"""Tests of the multi-modal environments, the task score and the rollout helper."""
import functools
import math
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import struct
from gymnax.wrappers import LogWrapper
from hypothesis import given
from hypothesis import strategies as st

from clloop_jax.envs import (Environment, EnvParams, LatentWorld, MultiModalEnv, PrivilegedPolicy, Trajectory,
                             expert_policy, normalized_score, rollout)

EPISODE = 5
M, D, A, L = 2, 6, 8, 8
ENV = LatentWorld(observation_dim=D, action_dim=A, num_modalities=M, latent_dim=L,
                  num_tasks=3, episode_length=EPISODE)


# ---------------------------------------------------------------- shared policies and runners
def _gain_fn(gain, obs, feedback, key, env_state, target):
    """Plays clip(gain @ z): the expert of whichever task the gain belongs to (zeros: no action)."""
    del obs, feedback, key, target
    return gain, jnp.clip(gain @ env_state.latent, -ENV.max_action, ENV.max_action)


GAIN_POLICY = PrivilegedPolicy(_gain_fn)
EXPERT = expert_policy(ENV)


def linear_policy(weights, obs, feedback, key):
    """Untrained agent: a small random linear map of the observation plus exploration noise."""
    noise = 0.01 * jax.random.normal(key, (A,))
    return weights, weights @ obs.reshape(-1) + noise


@functools.partial(jax.jit, static_argnames=("env", "policy", "num_steps", "num_envs"))
def run(key, params, carry, feedback_weight, env, policy, num_steps, num_envs):
    return rollout(key, env, params, policy, carry, num_steps, num_envs, feedback_weight)


@pytest.fixture(scope="module")
def tasks():
    return ENV.tasks()


@pytest.fixture(scope="module")
def task_scores(tasks):
    """scores[j, k]: task k's expert acting on task j (32 steps x 8 envs), unclipped; k = 3 is
    the zero gain, i.e. the zero action."""
    def score(params, gain):
        traj = run(jax.random.key(7), params, gain, 1.0, ENV, GAIN_POLICY, 32, 8)
        return normalized_score(traj.action, traj.target, clip_min=None)

    gains = jnp.concatenate([tasks.gain, jnp.zeros((1, A, L))])
    over_k = jax.vmap(score, in_axes=(None, 0))
    return np.asarray(jax.vmap(over_k, in_axes=(0, None))(tasks, gains))


WEIGHTS = 0.01 * jax.random.normal(jax.random.key(3), (A, M * D))


@jax.jit
def run_linear(key, tasks):
    """The untrained linear agent on every task (12 steps, 2 envs, feedback weight 0.5)."""
    return jax.vmap(lambda p: rollout(key, ENV, p, linear_policy, WEIGHTS, 12, 2, 0.5))(tasks)


@pytest.fixture(scope="module")
def linear_trajs(tasks):
    return run_linear(jax.random.key(11), tasks)


@pytest.fixture(scope="module")
def linear_traj(linear_trajs):
    return jax.tree.map(lambda x: x[1], linear_trajs)


# ---------------------------------------------------------------- determinism and structure
def test_same_key_same_trajectory_and_different_keys_differ(tasks, linear_trajs):
    again = run_linear(jax.random.key(11), tasks)
    other = run_linear(jax.random.key(12), tasks)
    for a, b in zip(linear_trajs, again):
        np.testing.assert_array_equal(a, b)
    assert not np.allclose(linear_trajs.obs, other.obs)
    assert not np.allclose(linear_trajs.obs[:, :, 0], linear_trajs.obs[:, :, 1])  # envs differ


def test_trajectory_shapes_and_dtypes(linear_traj, tasks):
    T, N = 12, 2
    assert isinstance(linear_traj, Trajectory)
    assert linear_traj.obs.shape == (T, N, M, D)
    assert linear_traj.feedback.shape == (T, N, ENV.feedback_dim) == (T, N, 1 + A)
    assert linear_traj.action.shape == linear_traj.target.shape == (T, N, A)
    assert linear_traj.reward.shape == linear_traj.done.shape == (T, N)
    assert linear_traj.done.dtype == jnp.bool_ and linear_traj.obs.dtype == jnp.float32
    single = run(jax.random.key(0), jax.tree.map(lambda x: x[0], tasks), (), 1.0, ENV, EXPERT, 4,
                 None)
    assert single.obs.shape == (4, M, D) and single.reward.shape == (4,)


def _layout(tree):
    return jax.tree.structure(tree), [(x.shape, x.dtype) for x in jax.tree.leaves(tree)]


def test_step_structure_identical_under_jit_and_vmap(tasks):
    params = jax.tree.map(lambda x: x[0], tasks)
    obs, state = ENV.reset(jax.random.key(0), params)
    action = jnp.ones((A,), jnp.float32)
    eager = ENV.step(jax.random.key(1), state, action, params)
    jitted = jax.jit(ENV.step)(jax.random.key(1), state, action, params)
    assert _layout(eager) == _layout(jitted)
    for a, b in zip(jax.tree.leaves(eager), jax.tree.leaves(jitted)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
    assert set(eager[5]) == {"feedback", "target", "terminated", "truncated", "final_observation", "discount"}

    n = 3
    keys = jax.random.split(jax.random.key(2), n)
    obs_b, state_b = jax.vmap(ENV.reset, in_axes=(0, None))(keys, params)
    batched = jax.vmap(ENV.step, in_axes=(0, 0, 0, None))(
        keys, state_b, jnp.ones((n, A), jnp.float32), params)
    tdef, leaves = _layout(batched)
    assert tdef == _layout(eager)[0]
    assert leaves == [((n,) + s, d) for s, d in _layout(eager)[1]]
    assert _layout(obs_b)[1] == [((n, M, D), jnp.float32)]


# ---------------------------------------------------------------- dynamics against NumPy
def test_dynamics_match_float64_reference(tasks):
    """Noise-free steps (with a binding actuator clip) against a NumPy float64 transcription."""
    params = jax.tree.map(lambda x: x[2], tasks).replace(
        obs_noise=jnp.float32(0.0), process_noise=jnp.float32(0.0), max_action=jnp.float32(0.7))
    obs, state = ENV.reset(jax.random.key(5), params)
    f64 = {k: np.asarray(v, np.float64) for k, v in vars(params).items()}
    z = np.asarray(state.latent, np.float64)
    np.testing.assert_allclose(obs, np.einsum("mdl,l->md", f64["views"], z) + f64["cue"],
                               rtol=1e-5, atol=1e-5)
    actions = np.array(jax.random.normal(jax.random.key(6), (EPISODE - 1, A)), np.float32)
    actions[0, 0] = 3.0  # beyond max_action: clipped
    for t, action in enumerate(actions):
        obs, state, reward, term, trunc, info = ENV.step(jax.random.key(t), state, action, params)
        applied = np.clip(action.astype(np.float64), -0.7, 0.7)
        target = np.clip(f64["gain"] @ z, -0.7, 0.7)
        ref_reward = -np.sum((applied - target) ** 2) / A
        z = f64["transition"] @ z + f64["control"] @ applied
        np.testing.assert_allclose(reward, ref_reward, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(state.latent, z, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(obs, np.einsum("mdl,l->md", f64["views"], z) + f64["cue"],
                                   rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(info["feedback"], np.concatenate([[ref_reward], applied]),
                                   rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(info["target"], np.clip(f64["gain"] @ z, -0.7, 0.7),
                                   rtol=1e-5, atol=1e-5)
        assert int(state.time) == t + 1 and not bool(term) and not bool(trunc)


def test_actions_change_later_observations(tasks):
    """Same keys, different actions: the next observation moves by exactly C_m B (a1 - a2)."""
    params = jax.tree.map(lambda x: x[0], tasks)
    _, state = ENV.reset(jax.random.key(0), params)
    a1 = jnp.full((A,), 0.3, jnp.float32)
    a2 = jnp.linspace(-1.0, 1.0, A, dtype=jnp.float32)
    o1, s1, *_ = ENV.step(jax.random.key(1), state, a1, params)
    o2, s2, *_ = ENV.step(jax.random.key(1), state, a2, params)
    cb = np.einsum("mdl,la->mda", np.asarray(params.views, np.float64),
                   np.asarray(params.control, np.float64))
    np.testing.assert_allclose(np.asarray(o1) - np.asarray(o2),
                               cb @ (np.asarray(a1, np.float64) - np.asarray(a2, np.float64)),
                               rtol=1e-4, atol=1e-5)
    assert np.abs(np.asarray(o1) - np.asarray(o2)).max() > 0.1
    # and the effect persists: one more identical step keeps the observations apart
    o1b, *_ = ENV.step(jax.random.key(2), s1, a1, params)
    o2b, *_ = ENV.step(jax.random.key(2), s2, a1, params)
    assert np.abs(np.asarray(o1b) - np.asarray(o2b)).max() > 0.01


# ---------------------------------------------------------------- tasks
def test_tasks_differ_and_share_the_world(tasks):
    p0, p1 = (jax.tree.map(lambda x, i=i: x[i], tasks) for i in (0, 1))
    for name in ("transition", "control", "views"):
        np.testing.assert_array_equal(getattr(p0, name), getattr(p1, name))
    assert np.abs(np.asarray(p0.gain - p1.gain)).max() > 0.1
    assert np.abs(np.asarray(p0.cue - p1.cue)).max() > 0.1
    # same key: same latent, observations differ by exactly the cue difference
    o0, s0 = ENV.reset(jax.random.key(4), p0)
    o1, s1 = ENV.reset(jax.random.key(4), p1)
    np.testing.assert_array_equal(s0.latent, s1.latent)
    np.testing.assert_allclose(o0 - o1, p0.cue - p1.cue, rtol=1e-5, atol=1e-5)
    # the stack (traced task ids) and the single task agree
    np.testing.assert_allclose(ENV.task_params(1).gain, p1.gain, rtol=1e-5, atol=1e-6)
    assert int(ENV.default_params.task_id) == 0
    # another world seed gives another world
    other = ENV.task_params(0, world_key=jax.random.key(1))
    assert not np.allclose(other.views, p0.views)


def test_cue_norm_relative_to_signal(tasks, linear_traj):
    cue_norm = np.linalg.norm(np.asarray(tasks.cue), axis=-1)
    np.testing.assert_allclose(cue_norm, ENV.cue_scale * math.sqrt(D), rtol=1e-5)
    p1 = jax.tree.map(lambda x: x[1], tasks)
    signal = np.asarray(linear_traj.obs) - np.asarray(p1.cue)  # noise is small (0.1)
    ratio = cue_norm.mean() / np.sqrt(np.mean(np.sum(signal ** 2, axis=-1)))
    assert 1.5 <= ratio <= 3.0, ratio


def test_expert_closed_loop_is_the_task_loop(tasks):
    """With action_dim >= latent_dim the expert's closed loop T + B K is closed_loop_radius * R."""
    for i in range(ENV.num_tasks):
        closed = np.asarray(tasks.transition[i] + tasks.control[i] @ tasks.gain[i], np.float64)
        gram = closed.T @ closed
        np.testing.assert_allclose(gram, ENV.closed_loop_radius ** 2 * np.eye(L), atol=1e-5)


def test_switching_tasks_does_not_recompile(tasks):
    runs = [run(jax.random.key(0), jax.tree.map(lambda x, i=i: x[i], tasks), (), 1.0, ENV, EXPERT,
                4, None) for i in range(3)]
    size = run._cache_size()
    run(jax.random.key(0), jax.tree.map(lambda x: x[2], tasks), (), 1.0, ENV, EXPERT, 4, None)
    run(jax.random.key(0), ENV.task_params(5), (), 1.0, ENV, EXPERT, 4, None)
    assert run._cache_size() == size
    assert not np.allclose(runs[0].obs, runs[1].obs)


# ---------------------------------------------------------------- scores
def test_expert_scores_one_zero_action_zero_and_tasks_really_differ(task_scores):
    n = ENV.num_tasks
    experts = task_scores[:, :n]
    np.testing.assert_allclose(np.diag(experts), 1.0, atol=1e-6)
    np.testing.assert_array_equal(task_scores[:, n], 0.0)
    off = experts[~np.eye(n, dtype=bool)]
    assert off.max() < 0.2, task_scores  # another task's expert is no better than doing nothing


def test_untrained_agent_scores_about_zero_on_every_task(linear_trajs):
    scores = jax.vmap(normalized_score)(linear_trajs.action, linear_trajs.target)
    assert np.all(np.abs(np.asarray(scores)) < 0.1), scores


def test_expert_policy_reward_is_zero(tasks):
    traj = run(jax.random.key(1), jax.tree.map(lambda x: x[1], tasks), (), 1.0, ENV, EXPERT, 4,
               None)
    np.testing.assert_allclose(traj.reward, 0.0, atol=1e-10)
    np.testing.assert_array_equal(traj.action, traj.target)
    assert float(normalized_score(traj.action, traj.target)) == 1.0


def test_normalized_score_hand_worked():
    a = jnp.asarray([[1.0, 0.0], [0.0, 1.0]])
    t = jnp.asarray([[1.0, 1.0], [0.0, 2.0]])
    # errors 1 + 1 = 2, target energy 1 + 1 + 4 = 6
    np.testing.assert_allclose(normalized_score(a, t), 1 - 2 / 6, rtol=1e-6)
    np.testing.assert_allclose(normalized_score(a, t, axis=-1), [1 - 1 / 2, 1 - 1 / 4], rtol=1e-6)
    far = jnp.asarray([[5.0, 0.0]])
    near = jnp.asarray([[1.0, 0.0]])
    np.testing.assert_allclose(normalized_score(far, near), -1.0)  # 1 - 16 clipped at -1
    np.testing.assert_allclose(normalized_score(far, near, clip_min=None), -15.0)
    np.testing.assert_allclose(normalized_score(far, near, clip_min=0.0), 0.0)
    np.testing.assert_allclose(normalized_score(jnp.zeros(3), jnp.zeros(3)), 1.0)
    with pytest.raises(ValueError, match="actions"):
        normalized_score(jnp.zeros((2, 3)), jnp.zeros((3, 2)))


@given(st.integers(1, 3), st.integers(1, 2), st.integers(0, 2**31 - 1),
       st.floats(-3.0, 0.5))
def test_normalized_score_matches_float64_reference(steps, dim, seed, clip_min):
    rng = np.random.default_rng(seed)
    targets = rng.normal(size=(steps, dim))
    actions = targets + rng.normal(size=(steps, dim)) * rng.uniform(0, 2)
    ref = 1 - np.sum((actions - targets) ** 2) / np.sum(targets ** 2)
    got = normalized_score(actions.astype(np.float32), targets.astype(np.float32), clip_min)
    np.testing.assert_allclose(got, max(ref, clip_min), rtol=1e-4, atol=1e-4)
    assert float(normalized_score(targets, targets)) == pytest.approx(1.0)
    assert float(normalized_score(np.zeros_like(targets), targets)) == pytest.approx(0.0, abs=1e-6)


# ---------------------------------------------------------------- episodes, spaces, wrappers
def test_auto_reset_exactly_at_episode_end(tasks):
    params = jax.tree.map(lambda x: x[0], tasks)
    obs, state = ENV.reset(jax.random.key(0), params)
    action = jnp.zeros((A,), jnp.float32)
    for t in range(1, 2 * EPISODE + 1):
        key = jax.random.key(100 + t)
        obs, state, reward, term, trunc, info = ENV.step(key, state, action, params)
        at_end = t % EPISODE == 0
        assert bool(trunc) == at_end and bool(info["truncated"]) == at_end and not bool(term)
        assert int(state.time) == (0 if at_end else t % EPISODE)
        if at_end:
            reset_obs, reset_state = ENV.reset(jax.random.split(key)[1], params)
            np.testing.assert_array_equal(obs, reset_obs)
            np.testing.assert_array_equal(state.latent, reset_state.latent)
            assert not np.allclose(info["final_observation"], obs)
        else:
            np.testing.assert_array_equal(info["final_observation"], obs)
        np.testing.assert_allclose(info["target"], ENV.expert_action(state, params), rtol=1e-6)


def test_step_with_noise_is_gymnax_step_given_the_same_draw_and_resets_from_it(tasks):
    """The noise-driven step equals ``step`` on the draw ``step_env`` would make from its key; at an episode's end
    it restarts from that same draw (``reset_from_noise``), which ``step`` would have thrown away."""
    params = jax.tree.map(lambda x: x[1], tasks)
    _, state = ENV.reset(jax.random.key(0), params)
    action = jnp.full((A,), 0.3, jnp.float32)
    for t in range(1, EPISODE + 1):
        key = jax.random.key(200 + t)
        noise = jax.random.normal(jax.random.split(key)[0], (ENV.noise_dim,), jnp.float32)
        got = ENV.step_with_noise(noise, state, action, params)
        want = ENV.step(key, state, action, params)
        if t < EPISODE:
            for a, b in zip(jax.tree.leaves(got[:5]), jax.tree.leaves(want[:5])):
                np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
        else:
            reset_obs, reset_state = ENV.reset_from_noise(noise, params)
            np.testing.assert_array_equal(got[0], reset_obs)
            np.testing.assert_array_equal(got[1].latent, reset_state.latent)
            assert bool(got[4]) and int(got[1].time) == 0
            np.testing.assert_allclose(got[2], want[2], rtol=1e-6)  # the reward is the transition's
        np.testing.assert_allclose(got[5]["target"], ENV.expert_action(got[1], params), rtol=1e-6)
        np.testing.assert_allclose(got[5]["feedback"], want[5]["feedback"], rtol=1e-6, atol=1e-6)
        state = got[1]


def test_the_worlds_own_step_with_noise_equals_the_base_classs(tasks):
    """``LatentWorld`` observes the selected latent once; the base class emits the stepped and the reset observations
    and selects one. Both give the same step, mid-episode and at an episode's end."""
    params = jax.tree.map(lambda x: x[2], tasks)
    _, state = ENV.reset(jax.random.key(3), params)
    action = jnp.linspace(-1.0, 1.0, A, dtype=jnp.float32)
    for t in range(1, EPISODE + 1):
        noise = jax.random.normal(jax.random.key(300 + t), (ENV.noise_dim,), jnp.float32)
        got = ENV.step_with_noise(noise, state, action, params)
        want = MultiModalEnv.step_with_noise(ENV, noise, state, action, params)
        assert set(got[5]) == set(want[5]) and bool(got[4]) == (t == EPISODE)
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
        state = got[1]


def test_rollout_draws_step_t_from_fold_in_and_both_draw_modes_agree(tasks, monkeypatch):
    """The rollout is a loop of ``step_with_noise`` on ``normal(fold_in(k_env, t))``; drawing step by step, in
    chunks of steps, or every step ahead gives bitwise the same trajectory."""
    rollout_module = sys.modules["clloop_jax.envs.rollout"]
    params = jax.tree.map(lambda x: x[0], tasks)
    key, steps, envs = jax.random.key(21), 2 * EPISODE + 2, 3
    trajs = []
    for limit, per in ((0, 1), (5 * envs * ENV.noise_dim, 4), (1 << 30, steps)):  # step by step, chunks, all ahead
        monkeypatch.setattr(rollout_module, "_DRAW_CHUNK_FLOATS", limit)
        assert rollout_module._chunk_steps(steps, envs * ENV.noise_dim) == per
        trajs.append(jax.jit(lambda k: rollout(k, ENV, params, EXPERT, (), steps, envs))(key))
    for traj in trajs[1:]:
        for a, b in zip(trajs[0], traj):
            np.testing.assert_array_equal(a, b)
    reset_key, _, env_key = jax.random.split(key, 3)
    state = jax.vmap(lambda k: ENV.reset(k, params)[1])(jax.random.split(reset_key, envs))
    for t in range(steps):
        np.testing.assert_allclose(trajs[0].target[t], jax.vmap(ENV.expert_action, (0, None))(state, params),
                                   rtol=1e-5, atol=1e-5)
        noise = jax.random.normal(jax.random.fold_in(env_key, t), (envs, ENV.noise_dim), jnp.float32)
        out = jax.vmap(ENV.step_with_noise, (0, 0, 0, None))(noise, state, trajs[0].action[t], params)
        np.testing.assert_allclose(trajs[0].reward[t], out[2], rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(trajs[0].done[t], np.logical_or(out[3], out[4]))
        state = out[1]


def test_a_restarted_episode_starts_from_the_reset_distribution():
    """Every world restarts at the end of its first episode from its step's draw: the new latents are
    N(0, init_scale^2) across 4000 worlds (mean and variance within 5 standard errors)."""
    world = LatentWorld(observation_dim=2, action_dim=2, num_modalities=1, latent_dim=2, episode_length=2,
                        init_scale=1.5)
    params = world.task_params(0)
    _, state = jax.vmap(lambda k: world.reset(k, params))(jax.random.split(jax.random.key(1), 4000))
    state = state.replace(time=jnp.full((4000,), 1, jnp.int32))  # the next step ends the episode
    noise = jax.random.normal(jax.random.key(2), (4000, world.noise_dim))
    out = jax.vmap(world.step_with_noise, (0, 0, None, None))(noise, state, jnp.zeros(2), params)
    z = np.asarray(out[1].latent, np.float64)
    assert np.all(np.asarray(out[4])) and np.all(np.asarray(out[1].time) == 0)
    n = z.shape[0]
    assert np.all(np.abs(z.mean(0)) < 5 * 1.5 / np.sqrt(n))
    assert np.all(np.abs(z.var(0) / 1.5 ** 2 - 1) < 5 * np.sqrt(2 / n))


def test_rollout_feedback_is_weighted_and_zero_after_reset(linear_traj):
    done = np.asarray(linear_traj.done)
    expected = (np.arange(12) % EPISODE == EPISODE - 1)
    np.testing.assert_array_equal(done, np.stack([expected] * 2, axis=1))
    fb = np.asarray(linear_traj.feedback)
    starts = np.r_[True, expected[:-1]]
    np.testing.assert_array_equal(fb[starts], 0.0)
    ref = 0.5 * np.concatenate([linear_traj.reward[:-1, :, None], linear_traj.action[:-1]], -1)
    np.testing.assert_allclose(fb[1:][~starts[1:]], ref[~starts[1:]], rtol=1e-6)


def test_spaces_contain_what_reset_and_step_produce(tasks):
    params = jax.tree.map(lambda x: x[1], tasks)
    obs_space, act_space = ENV.observation_space(params), ENV.action_space(params)
    obs, state = ENV.reset(jax.random.key(0), params)
    assert obs.shape == obs_space.shape and obs.dtype == obs_space.dtype
    assert bool(obs_space.contains(obs))
    target = ENV.expert_action(state, params)
    assert target.shape == act_space.shape and bool(act_space.contains(target))
    assert not bool(act_space.contains(jnp.full((A,), 2 * ENV.max_action)))
    sample = act_space.sample(jax.random.key(1))
    assert sample.shape == (A,) and bool(act_space.contains(sample))
    obs2, *_ = ENV.step(jax.random.key(2), state, sample, params)
    assert bool(obs_space.contains(obs2)) and obs2.shape == obs_space.shape
    assert ENV.num_actions == A and ENV.name == "LatentWorld"
    assert (ENV.num_modalities, ENV.observation_dim, ENV.action_dim) == (M, D, A)


def test_log_wrapper_reports_the_episode_return(tasks):
    params = jax.tree.map(lambda x: x[1], tasks)
    env = LogWrapper(ENV)
    obs, state = env.reset(jax.random.key(0), params)
    total = 0.0
    for t in range(1, EPISODE + 1):
        action = jnp.full((A,), 0.1 * t, jnp.float32)
        obs, state, reward, term, trunc, info = env.step(jax.random.key(t), state, action, params)
        total += float(reward)
        assert bool(info["returned_episode"]) == (t == EPISODE)
    assert float(info["returned_episode_returns"]) == pytest.approx(total, rel=1e-5)
    assert int(info["returned_episode_lengths"]) == EPISODE
    assert total < 0


# ---------------------------------------------------------------- a user-defined world
@struct.dataclass
class TinyState:
    x: jax.Array
    time: jax.Array


@struct.dataclass
class TinyParams:
    drift: jax.Array
    max_steps_in_episode: jax.Array


class TinyEnv(MultiModalEnv):
    """x' = x + drift + a; observation [[x, 1]]; expert -x; reward -(a + x)^2; 3-step episodes."""

    num_modalities = 1
    observation_dim = 2
    action_dim = 1

    @property
    def default_params(self):
        return TinyParams(jnp.float32(1.0), jnp.int32(3))

    def _obs(self, x):
        return jnp.stack([x, jnp.float32(1.0)])[None]

    def reset_env(self, key, params):
        x = jnp.float32(0.0)
        return self._obs(x), TinyState(x, jnp.int32(0))

    def step_env(self, key, state, action, params):
        x = state.x + params.drift + action[0]
        reward = -jnp.square(action[0] + state.x)
        return self._obs(x), TinyState(x, state.time + 1), reward, jnp.array(False), {}

    def expert_action(self, state, params):
        return -state.x[None]


def counting_policy(count, obs, feedback, key):
    return count + 1.0, jnp.reshape(count, (1,))


def test_custom_subclass_in_rollout_hand_worked():
    env = TinyEnv()
    traj = rollout(jax.random.key(0), env, env.default_params, counting_policy, jnp.float32(0.0),
                   6, feedback_weight=jnp.float32(0.5))
    # episode: x 0 -> 1 -> 3 -> 6 (reset); actions 0, 1, 2; targets 0, -1, -3; rewards 0, -4, -25
    np.testing.assert_allclose(traj.obs[:, 0, 0], [0, 1, 3, 0, 1, 3])
    np.testing.assert_allclose(traj.action[:, 0], [0, 1, 2, 0, 1, 2])
    np.testing.assert_allclose(traj.target[:, 0], [0, -1, -3, 0, -1, -3])
    np.testing.assert_allclose(traj.reward, [0, -4, -25, 0, -4, -25])
    np.testing.assert_array_equal(traj.done, [False, False, True, False, False, True])
    np.testing.assert_allclose(traj.feedback, 0.5 * np.asarray(
        [[0, 0], [0, 0], [-4, 1], [0, 0], [0, 0], [-4, 1]]))
    assert env.feedback_dim == 2 and env.num_actions == 1


# ---------------------------------------------------------------- bad input
@pytest.mark.parametrize("action", [jnp.zeros((A + 1,)), jnp.zeros((1, A)), jnp.zeros((A,), jnp.complex64),
                                    0.0, [0.0] * (A - 1), ["a"] * A])
def test_bad_action_raises(tasks, action):
    params = jax.tree.map(lambda x: x[0], tasks)
    _, state = ENV.reset(jax.random.key(0), params)
    with pytest.raises(ValueError, match=rf"action.*\({A},\)"):
        ENV.step(jax.random.key(1), state, action, params)


@pytest.mark.parametrize("field,value", [
    ("observation_dim", 0), ("action_dim", -1), ("num_modalities", 0), ("latent_dim", 0),
    ("num_tasks", 0), ("episode_length", 0), ("observation_dim", 2.5), ("obs_noise", -0.1),
    ("process_noise", float("nan")), ("cue_scale", -1.0), ("closed_loop_radius", 1.0),
    ("max_action", 0.0), ("world_seed", -1), ("num_modalities", True),
])
def test_bad_config_raises_naming_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        Environment(**{field: value})


def test_bad_rollout_arguments_raise(tasks):
    params = jax.tree.map(lambda x: x[0], tasks)
    key = jax.random.key(0)
    with pytest.raises(ValueError, match="num_steps"):
        rollout(key, ENV, params, EXPERT, (), 0)
    with pytest.raises(ValueError, match="num_envs"):
        rollout(key, ENV, params, EXPERT, (), 3, num_envs=0)
    with pytest.raises(ValueError, match="feedback_weight"):
        rollout(key, ENV, params, EXPERT, (), 3, feedback_weight=jnp.ones(2))
    with pytest.raises(ValueError, match="env"):
        rollout(key, object(), params, EXPERT, (), 3)
    with pytest.raises(ValueError, match="num_tasks"):
        ENV.tasks(0)
    with pytest.raises(ValueError, match="task_id"):
        ENV.task_params(-1)
    assert isinstance(ENV.default_params, EnvParams)


@pytest.mark.parametrize("kwargs,error,pattern", [
    (dict(world_seed=2 ** 64), ValueError, r"^world_seed must be an integer in \[0, 2\*\*32\)"),
    (dict(world_seed=2 ** 32), ValueError, r"^world_seed must be an integer in \[0, 2\*\*32\)"),
    (dict(world_seed="8"), TypeError, r"^world_seed must be an integer .* got str '8'"),
    (dict(obs_noise=3e38), ValueError, r"^obs_noise must be a finite number in \[0, 1000000\], got float 3e\+38"),
    (dict(obs_noise=float("inf")), ValueError, r"^obs_noise must be a finite number"),
    (dict(cue_scale="2"), TypeError, r"^cue_scale must be a finite number .* got str '2'"),
    (dict(max_action=jnp.ones(2)), TypeError, r"^max_action .* pass a single number"),
    (dict(episode_length=True), TypeError, r"^episode_length must be an integer >= 1, got bool True"),
    (dict(latent_dim=4.0), TypeError, r"^latent_dim must be an integer >= 1, got float 4.0; pass 4"),
])
def test_bad_world_configuration_is_refused_at_construction(kwargs, error, pattern):
    with pytest.raises(error, match=pattern):
        Environment(**kwargs)


def test_world_configuration_accepts_numpy_numbers_and_stays_hashable():
    env = LatentWorld(observation_dim=np.int64(D), action_dim=np.int32(A), num_modalities=M, latent_dim=L,
                      num_tasks=3, episode_length=EPISODE, world_seed=np.uint32(0), obs_noise=np.float64(0.1))
    assert env == ENV and hash(env) == hash(ENV)  # equal configurations share compiled code
    assert type(env.observation_dim) is int and type(env.obs_noise) is float
    assert LatentWorld(world_seed=2 ** 32 - 1).world_seed == 2 ** 32 - 1


def test_action_space_without_params_uses_the_default_task_as_gymnax_does():
    box = ENV.action_space(None)
    assert box.shape == (A,) and float(box.high) == ENV.max_action and float(box.low) == -ENV.max_action
    assert ENV.action_space(ENV.default_params).shape == box.shape
    # the bounds are the task's: another task's actuator limit gives another box, None gives the default task's
    wider = ENV.action_space(ENV.default_params.replace(max_action=jnp.float32(2 * ENV.max_action)))
    assert float(wider.high) == 2 * ENV.max_action and float(wider.low) == -2 * ENV.max_action
    assert ENV.observation_space(None).shape == (M, D)


def test_task_ids_and_keys_are_checked(tasks):
    with pytest.raises(TypeError, match=r"^task_id must be an integer >= 0, got float 1.5"):
        ENV.task_params(1.5)
    with pytest.raises(TypeError, match=r"^task_id must be an integer .* got bool True"):
        ENV.task_params(True)
    with pytest.raises(ValueError, match=r"^task_id must be an integer >= 0, got numpy.int64 -1"):
        ENV.task_params(np.int64(-1))
    # Concrete NumPy/JAX integers and traced integers work, and give the same task.
    ref = ENV.task_params(1)
    for task_id in (np.int64(1), jnp.array(1)):
        jax.tree.map(np.testing.assert_array_equal, ENV.task_params(task_id), ref)
    traced = jax.jit(lambda i: ENV.task_params(i).gain)(1)
    np.testing.assert_array_equal(traced, ref.gain)
    with pytest.raises(TypeError, match=r"^task_id must be an integer array"):
        jax.jit(lambda i: ENV.task_params(i).gain)(1.0)
    with pytest.raises(TypeError, match=r"^world_key must be a single jax.random.key\(...\), got int 3"):
        ENV.tasks(2, world_key=3)
    params = jax.tree.map(lambda x: x[0], tasks)
    with pytest.raises(TypeError, match=r"^key must be a single jax.random.key\(...\), got int 0; "
                                        r"use jax.random.key\(0\)"):
        rollout(0, ENV, params, EXPERT, (), 3)
    with pytest.raises(TypeError, match=r"^policy must be callable"):
        rollout(jax.random.key(0), ENV, params, "expert", (), 3)
    with pytest.raises(TypeError, match=r"^env must be an instance of MultiModalEnv, got the class LatentWorld; "
                                        r"pass an instance LatentWorld\(\)"):
        rollout(jax.random.key(0), LatentWorld, params, EXPERT, (), 3)
    with pytest.raises(TypeError, match=r"^num_steps must be an integer >= 1, got bool True"):
        rollout(jax.random.key(0), ENV, params, EXPERT, (), True)
    with pytest.raises(TypeError, match=r"^feedback_weight must be a finite number, got str"):
        rollout(jax.random.key(0), ENV, params, EXPERT, (), 3, feedback_weight="0.3")


def test_normalized_score_arguments_are_checked():
    a, t = jnp.ones((3, 2)), jnp.full((3, 2), 2.0)
    with pytest.raises(TypeError, match=r"^axis must be an integer axis in \[-2, 2\).* got float 1.5"):
        normalized_score(a, t, axis=1.5)
    with pytest.raises(ValueError, match=r"^axis must be an integer axis .* got int 2"):
        normalized_score(a, t, axis=2)
    with pytest.raises(ValueError, match=r"^clip_min must be a number <= 1 or None, got float nan"):
        normalized_score(a, t, clip_min=float("nan"))
    with pytest.raises(TypeError, match=r"^clip_min must be a number <= 1 or None, got str"):
        normalized_score(a, t, clip_min="-1")
    with pytest.raises(TypeError, match=r"^actions must be a real numeric array, got None"):
        normalized_score(None, t)
    with pytest.raises(TypeError, match=r"^targets must be a real numeric array, got str"):
        normalized_score(a, "t")
    # Valid choices still compute the definition: per row, 1 - |a - t|^2 / |t|^2 = 1 - 2/8.
    np.testing.assert_allclose(normalized_score(a, t, axis=1), [0.75, 0.75, 0.75])
    np.testing.assert_allclose(normalized_score(a, t, axis=(0, 1), clip_min=-math.inf), 0.75)
    np.testing.assert_allclose(normalized_score(-5 * a, t, clip_min=None), 1 - 49 / 4)  # unclipped
    np.testing.assert_allclose(normalized_score(-5 * a, t), -1.0)  # the default clip


# ---------------------------------------------------------------- gymnax conventions
def _step_with(action):
    params = ENV.default_params
    _, state = ENV.reset(jax.random.key(0), params)
    return ENV.step(jax.random.key(1), state, action, params)


def test_integer_bool_and_list_actions_step_like_the_float_action():
    """gymnax environments accept integer actions; a list goes through without JAX's deprecation warning."""
    import warnings
    ints = np.arange(A) % 3 - 1
    reference = _step_with(jnp.asarray(ints, jnp.float32))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for action in (jnp.asarray(ints, jnp.int32), np.asarray(ints, np.int64), [int(v) for v in ints],
                       tuple(float(v) for v in ints)):
            out = _step_with(action)
            np.testing.assert_array_equal(out[0], reference[0])
            np.testing.assert_array_equal(out[2], reference[2])
            np.testing.assert_array_equal(out[5]["feedback"], reference[5]["feedback"])
    bools = _step_with(jnp.ones((A,), bool))
    np.testing.assert_array_equal(bools[5]["feedback"][1:], np.ones(A, np.float32))


def test_info_has_gymnax_discount():
    out = _step_with(jnp.zeros((A,)))
    assert out[5]["discount"].dtype == jnp.float32 and float(out[5]["discount"]) == 1.0

    class Ending(LatentWorld):
        def is_terminated(self, state, params):
            return jnp.array(True)

        def step_env(self, key, state, action, params):
            obs, st, reward, _, info = super().step_env(key, state, action, params)
            return obs, st, reward, jnp.array(True), info

    env = Ending(observation_dim=D, action_dim=A, num_modalities=M, latent_dim=L, episode_length=EPISODE)
    _, state = env.reset(jax.random.key(0))
    out = env.step(jax.random.key(1), state, jnp.zeros((A,)))
    assert bool(out[3]) and float(out[5]["discount"]) == 0.0


def test_state_space_contains_reset_and_stepped_states():
    space = ENV.state_space(None)
    assert space.spaces["latent"].shape == (L,)
    params = ENV.default_params
    _, state = ENV.reset(jax.random.key(0), params)
    assert bool(space.contains(state))
    for t in range(EPISODE + 2):
        _, state, *_ = ENV.step(jax.random.key(t + 1), state, jnp.zeros((A,)), params)
        assert bool(ENV.state_space(params).contains(state))
    assert not bool(space.contains(state.replace(time=jnp.int32(EPISODE + 1))))


# ---------------------------------------------------------------- a world's own dynamics (overrides of the hooks)
SMALL = dict(observation_dim=4, action_dim=3, num_modalities=2, latent_dim=3, episode_length=3)
TRACED = {"step_env": 0, "reset_env": 0}


class SameWorld(LatentWorld):
    """The default world with ``step_env`` and ``reset_env`` overridden by themselves: the keyed path, unchanged."""

    def step_env(self, key, state, action, params):
        return super().step_env(key, state, action, params)

    def reset_env(self, key, params):
        return super().reset_env(key, params)


class PushedWorld(SameWorld):
    """A constant push on the latent state at every step: different dynamics, same random numbers."""

    def step_env(self, key, state, action, params):
        TRACED["step_env"] += 1
        obs, state, reward, done, info = super().step_env(key, state, action, params)
        return obs, state.replace(latent=state.latent + 0.5), reward, done, info


class OffsetStartWorld(SameWorld):
    """Every episode's first observation (the reset's) shifted by 3."""

    def reset_env(self, key, params):
        TRACED["reset_env"] += 1
        obs, state = super().reset_env(key, params)
        return obs + 3.0, state


def test_only_worlds_whose_noise_methods_stand_below_their_hooks_use_noise_drawn_ahead():
    class OwnNoiseStep(LatentWorld):  # overrides the hook and the fused step together: its own fast path
        def step_env(self, key, state, action, params):
            return super().step_env(key, state, action, params)

        def step_from_noise(self, noise, state, action, params):
            return super().step_from_noise(noise, state, action, params)

        def step_with_noise(self, noise, state, action, params):
            return super().step_with_noise(noise, state, action, params)

    class HalfNoiseStep(LatentWorld):  # a new step_from_noise under the world's fused step: that step ignores it
        def step_env(self, key, state, action, params):
            return super().step_env(key, state, action, params)

        def step_from_noise(self, noise, state, action, params):
            return super().step_from_noise(noise, state, action, params)

    class KeyedStep(LatentWorld):  # gymnax's step itself overridden
        def step(self, key, state, action, params=None):
            return super().step(key, state, action, params)

    assert LatentWorld(**SMALL).uses_noise_ahead() and OwnNoiseStep(**SMALL).uses_noise_ahead()
    for world in (SameWorld, PushedWorld, OffsetStartWorld, HalfNoiseStep, KeyedStep):
        assert not world(**SMALL).uses_noise_ahead(), world.__name__


def test_an_overridden_step_env_is_what_the_rollout_runs():
    """A push ``p = 0.5`` on every latent entry after each step, with the same keys: the expert's target for the
    state after step 0 moves by ``K p`` and the observation after step 1 by ``C_m F p`` (``F = T + B K``, the
    expert's closed loop), exactly; the plain world's numbers would be unchanged."""
    same, pushed = SameWorld(**SMALL), PushedWorld(**SMALL)
    params = same.task_params(1)
    before = TRACED["step_env"]
    a = rollout(jax.random.key(3), same, params, expert_policy(same), (), 6, num_envs=2)
    b = rollout(jax.random.key(3), pushed, params, expert_policy(pushed), (), 6, num_envs=2)
    assert TRACED["step_env"] > before  # the override was traced
    np.testing.assert_array_equal(b.obs[0], a.obs[0])
    np.testing.assert_array_equal(b.action[0], a.action[0])
    np.testing.assert_array_equal(b.obs[1], a.obs[1])  # observed before the push
    p = jnp.full((3,), 0.5)
    np.testing.assert_allclose(b.target[1] - a.target[1], jnp.broadcast_to(params.gain @ p, (2, 3)), atol=1e-5)
    closed_loop = params.transition + params.control @ params.gain
    moved = jnp.einsum("mdl,l->md", params.views, closed_loop @ p)
    np.testing.assert_allclose(b.obs[2] - a.obs[2], jnp.broadcast_to(moved, (2, 2, 4)), atol=1e-4)
    assert float(jnp.max(jnp.abs(moved))) > 0.1


def test_an_overridden_reset_env_starts_every_episode_including_automatic_resets():
    same, offset = SameWorld(**SMALL), OffsetStartWorld(**SMALL)
    params = same.task_params(0)
    before = TRACED["reset_env"]
    a = rollout(jax.random.key(4), same, params, expert_policy(same), (), 7, num_envs=2)
    b = rollout(jax.random.key(4), offset, params, expert_policy(offset), (), 7, num_envs=2)
    assert TRACED["reset_env"] > before
    starts = np.array([t % SMALL["episode_length"] == 0 for t in range(7)])  # steps 0, 3 and 6 begin episodes
    diff = np.asarray(b.obs - a.obs)
    np.testing.assert_allclose(diff[starts], 3.0, atol=1e-5)
    np.testing.assert_allclose(diff[~starts], 0.0, atol=1e-5)


def test_a_world_for_the_loop_is_checked_before_tracing():
    from clloop_jax import CrossModalModel, EnvSource

    model = CrossModalModel(input_dim=4, hidden_dim=8, output_dim=3, num_modalities=2, num_heads=2)

    class UnstackedLength(LatentWorld):  # one episode length for all tasks, left unstacked
        def tasks(self, num_tasks=None, world_key=None):
            return super().tasks(num_tasks).replace(max_steps_in_episode=jnp.int32(3))

    with pytest.raises(ValueError, match=r"UnstackedLength.tasks\(2\).*field max_steps_in_episode has shape \(\)"):
        EnvSource(model, UnstackedLength(**SMALL), num_tasks=2)

    class NoExpert(MultiModalEnv):
        num_modalities, observation_dim, action_dim = 2, 4, 3

        def reset_env(self, key, params):
            raise AssertionError("not reached")

        def step_env(self, key, state, action, params):
            raise AssertionError("not reached")

    with pytest.raises(TypeError, match=r"NoExpert must define expert_action.*docs/guides/worlds.md"):
        EnvSource(model, NoExpert(), num_tasks=2)
    with pytest.raises(TypeError, match="must be a MultiModalEnv"):
        EnvSource(model, object(), num_tasks=2)
