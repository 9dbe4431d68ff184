"""Tests of the reward-driven task source (clloop_jax.rl): GAE, the clipped objective, the policy Fisher, the rollout
and the source inside the continual run."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from clloop_jax.importance import fisher as fisher_lib
from clloop_jax.rl.ppo import GaussianPolicyLikelihood, RLHParams, clipped_surrogate, gae, minibatch_indices
from clloop_jax.run.config import RunConfig
from clloop_jax.run.sequential import make_run
from clloop_jax.sources.gymnax import GymnaxSource, task_params

TINY = dict(hidden_dim=8, num_envs=3, num_steps=12, eval_envs=2, eval_steps=20, fisher_size=16)


@pytest.fixture(scope="module")
def cartpole():
    return GymnaxSource("CartPole-v1", ({}, {"length": 1.0, "masspole": 0.3}), **TINY)


@pytest.fixture(scope="module")
def pendulum():
    return GymnaxSource("Pendulum-v1", ({}, {"m": 2.0}), init_log_std=-0.5, **TINY)


@pytest.fixture(scope="module")
def cartpole_batch(cartpole):
    params = cartpole.init_params(jax.random.key(0))
    task = jax.tree.map(lambda x: x[0], cartpole.tasks)
    hp = RLHParams(feedback_weight=0.5)
    batch = jax.jit(lambda k, p: cartpole.rollout(k, p, task, hp, 3, 40))(jax.random.key(1), params)
    return params, hp, batch


# ---------------------------------------------------------------- the objective's pieces
def _gae_numpy(r, v, d, last, gamma, lam):
    r, v, d, last = (np.asarray(x, np.float64) for x in (r, v, d, last))
    T = r.shape[0]
    adv = np.zeros_like(r)
    next_adv = np.zeros_like(last)
    for t in reversed(range(T)):
        next_v = last if t == T - 1 else v[t + 1]
        delta = r[t] + gamma * next_v * (1 - d[t]) - v[t]
        next_adv = delta + gamma * lam * (1 - d[t]) * next_adv
        adv[t] = next_adv
    return adv, adv + v


@pytest.mark.parametrize("gamma,lam", [(0.99, 0.95), (0.5, 1.0), (1.0, 0.0)])
def test_gae_matches_a_float64_loop(gamma, lam):
    rng = np.random.default_rng(0)
    r, v = rng.normal(size=(17, 4)), rng.normal(size=(17, 4))
    d = rng.random((17, 4)) < 0.2
    last = rng.normal(size=(4,))
    adv, targets = gae(jnp.asarray(r, jnp.float32), jnp.asarray(v, jnp.float32), d, jnp.asarray(last, jnp.float32),
                       gamma, lam)
    ref_adv, ref_targets = _gae_numpy(r, v, d, last, gamma, lam)
    np.testing.assert_allclose(adv, ref_adv, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(targets, ref_targets, rtol=1e-5, atol=1e-5)


def test_gae_hand_worked():
    # r = [1, 1, 1], V = [0, 0, 0], episode ends at t=1, last V = 10, gamma = 0.5, lambda = 1:
    # A_2 = 1 + 0.5*10 = 6; A_1 = 1 (done); A_0 = 1 + 0.5*0 - 0 + 0.5*A_1 = 1.5
    adv, _ = gae(jnp.ones(3), jnp.zeros(3), jnp.array([False, True, False]), jnp.float32(10.0), 0.5, 1.0)
    np.testing.assert_allclose(adv, [1.5, 1.0, 6.0])


def test_gae_refuses_mismatched_shapes():
    with pytest.raises(ValueError, match="last_value"):
        gae(jnp.ones((3, 2)), jnp.ones((3, 2)), jnp.zeros((3, 2), bool), jnp.ones(3), 0.9, 0.9)
    with pytest.raises(ValueError, match="rewards, values and dones"):
        gae(jnp.ones((3, 2)), jnp.ones((4, 2)), jnp.zeros((3, 2), bool), jnp.ones(2), 0.9, 0.9)


def test_clipped_surrogate_hand_worked():
    # min(0.5*1, 0.8*1) = 0.5; min(-2, -2) = -2; min(1.5, 1.2) = 1.2; min(-1.5, -1.2) = -1.5 -> mean -0.45
    out = clipped_surrogate(jnp.array([0.5, 1.0, 1.5, 1.5]), jnp.array([1.0, -2.0, 1.0, -1.0]), 0.2)
    np.testing.assert_allclose(out, -0.45, rtol=1e-6)
    # the gradient w.r.t. the ratio vanishes where the clip binds in the objective's favour
    g = jax.grad(lambda r: clipped_surrogate(r, jnp.array([1.0, -1.0, 1.0, -1.0]), 0.2))(
        jnp.array([1.5, 0.5, 0.9, 1.1]))
    np.testing.assert_allclose(g, [0.0, 0.0, 0.25, -0.25])


# ---------------------------------------------------------------- the rollout
def test_rollout_feedback_carry_and_recorded_policy(cartpole, cartpole_batch):
    params, hp, b = cartpole_batch
    T, B = b.reward.shape
    assert b.obs.shape == (T, B, 4) and b.action.dtype == jnp.int32 and b.carry.shape == (T, B, 8)
    assert bool(jnp.any(b.done)), "40 steps of an untrained CartPole policy end some episodes"
    np.testing.assert_array_equal(b.feedback[0], 0.0)
    np.testing.assert_array_equal(b.carry[0], 0.0)
    for t in range(1, T):
        for i in range(B):
            if b.done[t - 1, i]:
                np.testing.assert_array_equal(b.feedback[t, i], 0.0)
                np.testing.assert_array_equal(b.carry[t, i], 0.0)
            else:
                expected = 0.5 * np.concatenate([[b.reward[t - 1, i]], np.eye(2)[int(b.action[t - 1, i])]])
                np.testing.assert_allclose(b.feedback[t, i], expected)
    # recomputing the policy from the recorded carries reproduces the recorded log-probs and values: ratio = 1
    _, pol, value = cartpole._apply(params, b.carry, b.obs, b.feedback)
    np.testing.assert_allclose(cartpole.likelihood.log_prob(pol, b.action), b.log_prob, atol=1e-5)
    np.testing.assert_allclose(value, b.value, atol=1e-5)
    # at theta_old the value loss is 0.5 mean(A^2) (targets = A + V_old)
    _, aux = cartpole.loss(params, b, hp)
    adv, _ = gae(b.reward, b.value, b.done, b.last_value, hp.discount, hp.gae_lambda)
    np.testing.assert_allclose(aux["value_loss"], 0.5 * np.mean(np.asarray(adv, np.float64) ** 2), rtol=1e-4)
    # the batch score is the mean return of the episodes that ended in it (CartPole: reward 1 per step)
    lengths = []
    for i in range(B):
        ends = np.flatnonzero(np.asarray(b.done[:, i]))
        lengths += list(np.diff(np.concatenate([[-1], ends])))
    np.testing.assert_allclose(aux["score"], np.mean(lengths), rtol=1e-6)


def test_random_policy_scores_a_random_cartpole_return(cartpole):
    task = jax.tree.map(lambda x: x[0], cartpole.tasks)
    src = GymnaxSource("CartPole-v1", ({},), **{**TINY, "eval_envs": 64, "eval_steps": 200})
    score = float(jax.jit(lambda k: src.random_score(k, task))(jax.random.key(0)))
    assert 15.0 < score < 30.0  # the uniform random CartPole return is about 22


# ---------------------------------------------------------------- the policy's Fisher
def test_categorical_exact_fisher_closed_form_on_the_head(cartpole, cartpole_batch):
    """d log pi(a) / d b_k = 1[a=k] - p_k, so the exact Fisher of the logit biases is mean_s p_k (1 - p_k), that of
    the kernel h_j^2 p_k (1 - p_k) (h the new carry), and the value output's head entries get none."""
    params, hp, b = cartpole_batch
    inputs, actions = cartpole.samples(b)
    inputs = jax.tree.map(lambda x: x[:20], inputs)
    # compiled as the run compiles it (op by op, the same numbers take ~20x longer)
    F = jax.jit(lambda p, i, a: fisher_lib.fisher_diagonal(cartpole.predict, p, i, a, likelihood=cartpole.likelihood,
                                                           variant="exact"))(params, inputs, actions[:20])
    h, pol, _ = cartpole._apply(params, *inputs)
    p = np.asarray(jax.nn.softmax(pol), np.float64)
    h = np.asarray(h, np.float64)
    head = F["model"]["params"]["head"]
    np.testing.assert_allclose(head["bias"][:2], np.mean(p * (1 - p), axis=0), rtol=1e-4)
    np.testing.assert_allclose(head["kernel"][:, :2], np.mean(h[:, :, None] ** 2 * (p * (1 - p))[:, None, :], 0),
                               rtol=1e-3, atol=1e-9)
    assert float(head["bias"][2]) == 0.0 and np.all(np.asarray(head["kernel"][:, 2]) == 0.0)


def test_gaussian_exact_fisher_closed_form(pendulum):
    """Fisher of log_std is 2 per entry; of the mean's head bias exp(-2 log_std); the likelihood's log_prob is
    the diagonal Gaussian's."""
    params = pendulum.init_params(jax.random.key(0))
    task = jax.tree.map(lambda x: x[1], pendulum.tasks)

    @jax.jit   # compiled as the run compiles it (op by op, the same numbers take ~20x longer)
    def fisher(key, params):
        inputs, actions = pendulum.fisher_data(key, params, task, pendulum.hparams)
        return actions, fisher_lib.fisher_diagonal(pendulum.predict, params, inputs, actions,
                                                   likelihood=pendulum.likelihood, variant="exact")

    actions, F = fisher(jax.random.key(2), params)
    assert actions.shape == (16, 1)
    np.testing.assert_allclose(F["log_std"], [2.0], rtol=1e-5)
    np.testing.assert_allclose(F["model"]["params"]["head"]["bias"][0], math.exp(1.0), rtol=1e-5)
    out = jnp.array([0.3, -0.5])
    ref = -0.5 * ((1.1 - 0.3) / math.exp(-0.5)) ** 2 + 0.5 - 0.5 * math.log(2 * math.pi)
    np.testing.assert_allclose(GaussianPolicyLikelihood().log_prob(out, jnp.array([1.1])), ref, rtol=1e-6)
    L = GaussianPolicyLikelihood().fisher_factor(out)
    np.testing.assert_allclose(L @ L.T, np.diag([math.exp(1.0), 2.0]), rtol=1e-6)


# ---------------------------------------------------------------- tasks and validation
def test_task_params_apply_overrides_and_keep_derived_fields():
    _, tasks = task_params("CartPole-v1", [{}, {"masspole": 0.5, "length": 2.0}])
    np.testing.assert_allclose(tasks.masspole, [0.1, 0.5])
    np.testing.assert_allclose(tasks.total_mass, [1.1, 1.5])
    np.testing.assert_allclose(tasks.polemass_length, [0.05, 1.0])
    _, tasks = task_params("Pendulum-v1", [{"g": 5.0}, {"m": 2.0, "l": 0.5}, {}])
    np.testing.assert_allclose(tasks.g, [5.0, 10.0, 10.0])
    assert tasks.max_steps_in_episode.shape == (3,)


@pytest.mark.parametrize("args,pattern", [
    (("NoSuchEnv-v0", [{}]), "env_id"),
    (("CartPole-v1", []), "overrides"),
    (("CartPole-v1", {"length": 1.0}), "overrides"),
    (("CartPole-v1", [{"lenght": 1.0}]), r"overrides\[0\].*lenght"),
])
def test_task_params_refuse_bad_input(args, pattern):
    with pytest.raises(ValueError, match=pattern):
        task_params(*args)


@pytest.mark.parametrize("kwargs,pattern", [
    (dict(num_envs=0), "num_envs"), (dict(fisher_size=10 ** 6), "fisher_size"), (dict(init_log_std=float("nan")),
                                                                                  "init_log_std"),
])
def test_source_refuses_bad_configuration(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        GymnaxSource("CartPole-v1", ({},), **kwargs)


def test_source_refuses_a_model_of_the_wrong_size():
    from clloop_jax.model import CrossModalModel
    with pytest.raises(ValueError, match="output_dim"):
        GymnaxSource("CartPole-v1", ({},), model=CrossModalModel(input_dim=4, hidden_dim=8, num_heads=2,
                                                                  output_dim=2))


def test_hparams_are_checked_by_name(cartpole):
    run = make_run(RunConfig(strategy="ewc", episodes_per_task=1, monitors=()), cartpole)
    with pytest.raises(ValueError, match="discount"):
        run.hparams(discount=1.5)
    with pytest.raises(ValueError, match="clip_eps"):
        run.hparams(clip_eps=0.0)


def test_sources_compare_by_configuration_not_task_values():
    """Task arrays are arguments of the compiled run, so sources differing only in override values share it."""
    a = GymnaxSource("CartPole-v1", ({"length": 1.0},), **TINY)
    b = GymnaxSource("CartPole-v1", [{"length": 2.0}], **TINY)
    assert a == b and hash(a) == hash(b)
    assert a != GymnaxSource("CartPole-v1", ({}, {}), **TINY) and a != GymnaxSource("Acrobot-v1", ({},), **TINY)
    np.testing.assert_allclose([a.tasks.length[0], b.tasks.length[0]], [1.0, 2.0])


# ---------------------------------------------------------------- inside the continual run
@pytest.mark.parametrize("strategy", ["ewc", pytest.param("online_ewc", marks=pytest.mark.slow)])
def test_ewc_on_the_policy_fisher_in_one_compiled_vmapped_run(cartpole, strategy):
    run = make_run(RunConfig(strategy=strategy, episodes_per_task=2, monitors=(), fisher_variant="exact"), cartpole)
    hp = run.hparams(lam=10.0, learning_rate=1e-3)
    keys = jax.random.split(jax.random.key(0), 2)
    state, res = jax.vmap(lambda k: run(k, hp))(keys)
    assert res.R.shape == (2, 2, 2) and res.baseline.shape == (2, 2)
    assert np.all(np.isfinite(res.R)) and bool(np.all(res.traces["finite"]))
    pen = np.asarray(res.traces["penalty"])
    assert np.all(pen[:, 0] == 0.0) and np.all(pen[:, 1, 1] > 0.0)  # the penalty acts from the second task on
    # the stored importance is the policy's exact Fisher: zero on the value output's head entries
    head = state.strategy.importance["model"]["params"]["head"]
    assert np.all(np.asarray(head["bias"])[:, 2] == 0.0) and np.all(np.asarray(head["bias"])[:, :2] > 0.0)


# ---------------------------------------------------------------- a purejaxrl-style client on our world
def test_purejaxrl_style_wrapper_stack_runs_on_the_world():
    """FlattenObservationWrapper, LogWrapper, LegacyStepAPIWrapper (gymnax), then an action clip to the action
    space's bounds and a vmapped environment (written here as purejaxrl writes them): the logged episode returns
    are the sums of the rewards the unwrapped world gives for the clipped actions."""
    from gymnax.wrappers import FlattenObservationWrapper, LegacyStepAPIWrapper, LogWrapper

    from clloop_jax.envs import LatentWorld

    class ClipAction:
        def __init__(self, env, low, high):
            self._env, self.low, self.high = env, low, high

        def __getattr__(self, name):
            return getattr(self._env, name)

        def reset(self, key, params=None):
            return self._env.reset(key, params)

        def step(self, key, state, action, params=None):
            return self._env.step(key, state, jnp.clip(action, self.low, self.high), params)

    class VecEnv:
        def __init__(self, env):
            self._env = env
            self.reset = jax.vmap(env.reset, in_axes=(0, None))
            self.step = jax.vmap(env.step, in_axes=(0, 0, 0, None))

    world = LatentWorld(observation_dim=3, action_dim=2, num_modalities=2, latent_dim=2, episode_length=5)
    box = world.action_space(None)
    env = VecEnv(ClipAction(LegacyStepAPIWrapper(LogWrapper(FlattenObservationWrapper(world))), box.low, box.high))
    params = world.default_params
    n, T = 3, 11
    keys = jax.random.split(jax.random.key(0), n)
    actions = 3.0 * world.max_action * jax.random.normal(jax.random.key(1), (T, n, 2))

    @jax.jit
    def go(keys, actions):
        obs, state = env.reset(keys, params)

        def step(c, x):
            state, k = c
            a, t = x
            ks = jax.vmap(lambda kk: jax.random.fold_in(kk, t))(k)
            obs, state, reward, done, info = env.step(ks, state, a, params)
            return (state, k), (obs, reward, done, info["returned_episode_returns"])

        return obs, jax.lax.scan(step, (state, keys), (actions, jnp.arange(T)))[1]

    obs0, (obs, reward, done, returned) = go(keys, actions)
    assert obs0.shape == (n, 6) and obs.shape == (T, n, 6)
    np.testing.assert_array_equal(np.flatnonzero(np.asarray(done[:, 0])), [4, 9])
    # the same transitions on the unwrapped world, with the actions clipped by hand
    for i in range(n):
        _, s = world.reset(keys[i], params)
        rewards = []
        for t in range(T):
            a = np.clip(np.asarray(actions[t, i]), -world.max_action, world.max_action)
            _, s, r, *_ = world.step(jax.random.fold_in(keys[i], t), s, a, params)
            rewards.append(float(r))
        np.testing.assert_allclose(reward[:, i], rewards, rtol=1e-5)
        np.testing.assert_allclose(returned[4, i], sum(rewards[:5]), rtol=1e-5)
        np.testing.assert_allclose(returned[9, i], sum(rewards[5:10]), rtol=1e-5)


# ---------------------------------------------------------------- PPO: streams, epochs of minibatches
PPO = dict(TINY, epochs=2, num_minibatches=3, persistent_envs=True)


@pytest.fixture(scope="module")
def ppo_pendulum():
    return GymnaxSource("Pendulum-v1", ({}, {"m": 2.0}), init_log_std=-0.5, **PPO)


@pytest.fixture(scope="module")
def ppo_stream(ppo_pendulum):
    """Two consecutive training rollouts of one stream, and the minibatches of the second."""
    src = ppo_pendulum
    params = src.init_params(jax.random.key(0))
    task = jax.tree.map(lambda x: x[0], src.tasks)
    hp = RLHParams(feedback_weight=0.5, discount=0.9, gae_lambda=0.8, reward_scale=0.1)

    @jax.jit
    def collect(key):
        k0, k1, k2, k3 = jax.random.split(key, 4)
        start = src.stream_init(k0, task, hp)
        b1, mid = src.stream_batch(k1, params, task, hp, start)
        b2, end = src.stream_batch(k2, params, task, hp, mid)
        return start, b1, mid, b2, end, src.minibatches(k3, b2, hp)

    return (params, hp) + collect(jax.random.key(1))


def test_minibatch_indices_cover_every_sample_once_per_epoch():
    idx = np.asarray(minibatch_indices(jax.random.key(0), 12, 3, 4))
    assert idx.shape == (12, 3)
    for e in range(3):
        np.testing.assert_array_equal(np.sort(idx[4 * e:4 * (e + 1)].ravel()), np.arange(12))
    assert not np.array_equal(idx[:4], idx[4:8])  # a fresh permutation per epoch
    with pytest.raises(ValueError, match="num_minibatches must divide"):
        minibatch_indices(jax.random.key(0), 10, 1, 4)
    with pytest.raises(ValueError, match="epochs"):
        minibatch_indices(jax.random.key(0), 12, 0, 4)


def test_stream_continues_the_episodes_between_rollouts(ppo_stream):
    """Pendulum's episodes last 200 steps, so after two rollouts of 12 steps every environment is at step 24 of its
    first episode: the second rollout starts where the first ended (state, observation, carry, feedback) and its
    episode returns keep summing the first rollout's rewards."""
    params, hp, start, b1, mid, b2, end, _ = ppo_stream
    assert not bool(jnp.any(b1.done)) and not bool(jnp.any(b2.done))
    np.testing.assert_array_equal(start.env_state.time, 0)
    np.testing.assert_array_equal(mid.env_state.time, 12)
    np.testing.assert_array_equal(end.env_state.time, 24)
    np.testing.assert_array_equal(b2.obs[0], mid.obs.reshape(b2.obs[0].shape))
    np.testing.assert_array_equal(b2.carry[0], mid.carry)
    np.testing.assert_array_equal(b2.feedback[0], mid.feedback)
    np.testing.assert_allclose(b2.feedback[0], 0.5 * np.concatenate([b1.reward[-1][:, None], b1.action[-1]], -1),
                               rtol=1e-6)
    assert not np.allclose(b2.carry[0], 0.0)  # the carry is not restarted
    rewards = np.concatenate([np.asarray(b1.reward, np.float64), np.asarray(b2.reward, np.float64)])
    np.testing.assert_allclose(b2.episode_return, np.cumsum(rewards, axis=0)[12:], rtol=1e-5)
    np.testing.assert_allclose(end.episode_return, rewards.sum(0), rtol=1e-5)


def test_a_stream_restarts_finished_episodes():
    """CartPole episodes end within 40 steps; where one ends, the next step starts from zero feedback, carry and
    return, and the batch score is the mean of the finished episodes' full returns (lengths), counted across the
    two rollouts."""
    src = GymnaxSource("CartPole-v1", ({},), **dict(PPO, num_steps=20))
    params = src.init_params(jax.random.key(0))
    task = jax.tree.map(lambda x: x[0], src.tasks)
    hp = RLHParams()

    @jax.jit
    def collect(key):
        k0, k1, k2 = jax.random.split(key, 3)
        mid = src.stream_init(k0, task, hp)
        b1, mid = src.stream_batch(k1, params, task, hp, mid)
        b2, _ = src.stream_batch(k2, params, task, hp, mid)
        return b1, b2, src.batch_return(b2)

    b1, b2, score = collect(jax.random.key(3))
    done = np.concatenate([b1.done, b2.done])
    ret = np.concatenate([b1.episode_return, b2.episode_return])
    steps = np.zeros(done.shape[1])
    for t in range(done.shape[0]):  # CartPole: reward 1 per step, so the return counts the episode's steps
        steps += 1
        np.testing.assert_allclose(ret[t], steps)
        steps = np.where(done[t], 0, steps)
    ended = np.asarray(b2.done)
    assert ended.any()
    np.testing.assert_allclose(score, np.asarray(b2.episode_return)[ended].mean(), rtol=1e-6)
    nxt = np.argwhere(ended[:-1])
    for t, i in nxt:
        np.testing.assert_array_equal(b2.carry[t + 1, i], 0.0)
        np.testing.assert_array_equal(b2.feedback[t + 1, i], 0.0)


def test_minibatches_hold_the_collections_advantages(ppo_pendulum, ppo_stream):
    params, hp, _, _, _, b2, _, mbs = ppo_stream
    src = ppo_pendulum
    n = 3 * 12
    assert mbs.obs.shape == (6, n // 3, 3)
    assert src.minibatch_passes == 6 and mbs.action.shape == (6, 12, 1)
    ref_adv, ref_targets = _gae_numpy(0.1 * np.asarray(b2.reward), b2.value, b2.done, b2.last_value, 0.9, 0.8)
    flat = lambda x: np.asarray(x).reshape((n,) + np.shape(x)[2:])  # noqa: E731
    obs = flat(b2.obs)
    for u in range(6):
        for j in range(12):  # find each minibatch row's sample by its (unique) observation
            (i,), = np.nonzero(np.all(obs == np.asarray(mbs.obs[u, j]), axis=1))
            np.testing.assert_allclose(mbs.advantage[u, j], flat(ref_adv)[i], rtol=1e-4, atol=1e-5)
            np.testing.assert_allclose(mbs.target[u, j], flat(ref_targets)[i], rtol=1e-4, atol=1e-5)
            np.testing.assert_allclose(mbs.log_prob[u, j], flat(b2.log_prob)[i])
            np.testing.assert_allclose(mbs.carry[u, j], flat(b2.carry)[i])
    np.testing.assert_allclose(mbs.score, src.batch_return(b2), rtol=1e-6)


def test_minibatch_loss_ratio_is_exp_of_the_log_prob_change(ppo_pendulum, ppo_stream):
    """At moved parameters, the policy term is -mean min(rho A, clip(rho) A) with rho = exp(log pi_new - log pi_old)
    and A the minibatch-standardized advantages, computed here in float64 from the policy's mean and log-std."""
    params, hp, _, _, _, _, _, mbs = ppo_stream
    src = ppo_pendulum
    mb = jax.tree.map(lambda x: x[0], mbs)
    moved = jax.tree.map(lambda p, k: p + 0.3 * jax.random.normal(k, p.shape),
                         params, jax.tree.unflatten(jax.tree.structure(params),
                                                    list(jax.random.split(jax.random.key(5),
                                                                          len(jax.tree.leaves(params))))))

    @jax.jit
    def both(p0, p1):
        pol = jax.vmap(lambda c, o, f: src.predict(p1, (c, o, f)))(mb.carry, mb.obs, mb.feedback)
        return src.loss(p0, mb, hp)[1], src.loss(p1, mb, hp)[1], pol

    aux0, aux, pol = both(params, moved)
    assert float(aux0["clip_fraction"]) == 0.0  # theta = theta_old: rho = 1
    pol = np.asarray(pol, np.float64)
    mean, log_std = pol[:, :1], pol[:, 1:]
    a = np.asarray(mb.action, np.float64)
    logp = np.sum(-0.5 * ((a - mean) / np.exp(log_std)) ** 2 - log_std - 0.5 * np.log(2 * np.pi), axis=1)
    rho = np.exp(logp - np.asarray(mb.log_prob, np.float64))
    adv = np.asarray(mb.advantage, np.float64)
    adv = (adv - adv.mean()) / (adv.std() + 1e-8)
    ref = -np.mean(np.minimum(rho * adv, np.clip(rho, 0.8, 1.2) * adv))
    np.testing.assert_allclose(aux["policy_loss"], ref, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(aux["clip_fraction"], np.mean(np.abs(rho - 1) > 0.2), atol=1e-6)
    assert 0.0 < float(aux["clip_fraction"]) < 1.0


def test_learn_takes_one_step_per_minibatch(ppo_pendulum, ppo_stream):
    """Run.learn on one collected rollout: epochs * num_minibatches = 6 optimizer steps (Adam's step count), the
    clip acting after the first of them; the trace is their mean."""
    import optax
    params, hp, _, _, _, b2, _, _ = ppo_stream
    run = make_run(RunConfig(strategy="none", episodes_per_task=1, monitors=()), ppo_pendulum)
    rhp = run.hparams(learning_rate=3e-2, feedback_weight=0.5, discount=0.9, gae_lambda=0.8, reward_scale=0.1)
    state = run.init(jax.random.key(0), rhp)._replace(params=params)
    state = state._replace(opt_state=run.optimizer(rhp).init(params))
    new, trace = jax.jit(run.learn)(state, b2, jax.random.key(1), rhp)
    assert int(optax.tree_utils.tree_get(new.opt_state, "count")) == 6
    assert bool(trace["finite"]) and 0.0 < float(trace["clip_fraction"]) < 1.0
    np.testing.assert_allclose(trace["score"], ppo_pendulum.batch_return(b2), rtol=1e-6)


@pytest.mark.slow
def test_epochs_of_minibatches_in_the_continual_run(ppo_pendulum):
    """Each episode of the run is epochs * num_minibatches = 6 optimizer steps (Adam's step count says so), the
    clip acts after the first of them, and the run with EWC compiles and vmaps over seeds."""
    import optax
    run = make_run(RunConfig(strategy="ewc", episodes_per_task=2, monitors=(), fisher_variant="exact",
                             reset_optimizer=False), ppo_pendulum)
    hp = run.hparams(lam=1.0, learning_rate=3e-2)
    state, res = jax.vmap(lambda k: run(k, hp))(jax.random.split(jax.random.key(0), 2))
    np.testing.assert_array_equal(optax.tree_utils.tree_get(state.opt_state, "count"), 2 * 2 * 6)
    assert np.all(np.isfinite(res.R)) and bool(np.all(res.traces["finite"]))
    assert np.all(np.asarray(res.traces["clip_fraction"]) > 0.0)
    assert np.all(np.asarray(res.traces["penalty"])[:, 1] > 0.0)


@pytest.mark.parametrize("kwargs,pattern", [
    (dict(num_minibatches=5), "num_minibatches must divide"), (dict(epochs=0), "epochs"),
    (dict(num_minibatches=0), "num_minibatches"), (dict(persistent_envs=1), "persistent_envs"),
])
def test_source_refuses_bad_ppo_configuration(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        GymnaxSource("CartPole-v1", ({},), **dict(TINY, **kwargs))


# ---------------------------------------------------------------- the default world learned from its reward
@pytest.fixture(scope="module")
def world_reward():
    from clloop_jax.envs import LatentWorld
    world = LatentWorld(observation_dim=5, action_dim=3, num_modalities=2, latent_dim=2, episode_length=6,
                        max_action=1.0)
    return GymnaxSource("LatentWorld", environment=world, tasks=world.tasks(2), score_kind="imitation",
                        **dict(TINY, eval_steps=None))


def test_world_reward_source_sees_modalities_and_scores_against_the_hidden_expert(world_reward):
    """The model reads the world's 2 modalities; the recorded expert action is the one each step's reward was
    computed against (reward = -|clip(a) - a*|^2 / A), and the imitation score is 1 - sum |clip(a) - a*|^2 /
    sum |a*|^2 of the mean action (float64 here)."""
    src = world_reward
    assert src.model.num_modalities == 2 and src.model.modality_dims == (5, 5) and src.eval_steps == 6
    params = src.init_params(jax.random.key(0))
    task = jax.tree.map(lambda x: x[1], src.tasks)
    hp = src.hparams

    @jax.jit
    def go(key):
        return src.score(key, params, task, hp), src.rollout(key, params, task, hp, 2, 6, src.mean_action, True)

    score, mean_b = go(jax.random.key(2))
    am = np.clip(np.asarray(mean_b.action, np.float64), -1.0, 1.0)
    tm = np.asarray(mean_b.target, np.float64)
    assert np.abs(tm).max() > 0.05 and np.abs(am).max() > 0.0
    np.testing.assert_allclose(mean_b.reward, -np.mean((am - tm) ** 2, axis=-1), rtol=1e-5, atol=1e-6)
    ref = max(-1.0, 1.0 - np.sum((am - tm) ** 2) / np.sum(tm ** 2))
    np.testing.assert_allclose(score, ref, rtol=1e-5, atol=1e-6)


def test_world_reward_source_refuses_bad_input():
    from clloop_jax.envs import LatentWorld
    world = LatentWorld(observation_dim=5, action_dim=3, num_modalities=2, latent_dim=2, episode_length=6)
    with pytest.raises(ValueError, match="tasks"):
        GymnaxSource("LatentWorld", environment=world)
    with pytest.raises(TypeError, match="environment must have the gymnax environment interface"):
        GymnaxSource("LatentWorld", environment=object(), tasks=world.tasks(2))
    with pytest.raises(ValueError, match="score_kind"):
        GymnaxSource("LatentWorld", environment=world, tasks=world.tasks(2), score_kind="accuracy")
    with pytest.raises(ValueError, match="expert_action"):
        GymnaxSource("CartPole-v1", ({},), score_kind="imitation")
