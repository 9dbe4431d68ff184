"""Task-free streams: schedules, the Page-Hinkley detector, detection metrics, the streaming strategies against
float64 references, and the task-free run (compiled once, consolidating where its boundaries say)."""
import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from clloop_jax import taskfree as tf
from clloop_jax.data.streams import permuted_stream
from clloop_jax.envs import Environment
from clloop_jax.importance.fisher import Gaussian
from clloop_jax.model import MLP, CrossModalModel
from clloop_jax.run.config import RunConfig
from clloop_jax.sources.supervised import SupervisedSource
from clloop_jax.sources.world import EnvSource
from clloop_jax.strategies import Strategy, get_strategy, streaming_ewc, streaming_si

# ----------------------------------------------------------------------------------------------------------------
# Schedules
# ----------------------------------------------------------------------------------------------------------------


def test_abrupt_schedule_switches_where_stated():
    s = tf.abrupt_schedule([3, 4, 5], order=[2, 0, 1])
    assert s.weights.shape == (12, 3) and s.kind == "abrupt"
    np.testing.assert_array_equal(s.weights.sum(axis=1), 1.0)
    np.testing.assert_array_equal(s.weights.argmax(axis=1), [2] * 3 + [0] * 4 + [1] * 5)
    np.testing.assert_array_equal(s.boundaries, [3, 7])
    np.testing.assert_array_equal(s.changes, [3, 7])
    np.testing.assert_array_equal(s.ends, [2, 6, 11])
    a = s.arrays()
    np.testing.assert_array_equal(a.eval_row, [-1, -1, 0, -1, -1, -1, 1, -1, -1, -1, -1, 2])
    np.testing.assert_array_equal(np.nonzero(np.asarray(a.segment_end))[0], [2, 6])


def test_gradual_schedule_blends_linearly():
    s = tf.gradual_schedule([6, 6, 6], blend=4)
    w = s.weights
    np.testing.assert_allclose(w.sum(axis=1), 1.0)
    np.testing.assert_array_equal(s.boundaries, [6, 12])
    np.testing.assert_array_equal(s.changes, [4, 10])   # the blends start blend // 2 before the switches
    np.testing.assert_allclose(w[4:8, 1], [0.125, 0.375, 0.625, 0.875])   # (t - c + 1/2) / blend
    np.testing.assert_allclose(w[4:8, 0], [0.875, 0.625, 0.375, 0.125])
    np.testing.assert_allclose(np.diff(w[4:8, 1]), 0.25)                   # linear
    np.testing.assert_array_equal(w[:4], np.eye(3)[[0] * 4])               # pure outside the windows
    np.testing.assert_array_equal(w[8:10], np.eye(3)[[1] * 2])
    np.testing.assert_allclose(w[10:14, 2], [0.125, 0.375, 0.625, 0.875])
    np.testing.assert_array_equal(w[14:], np.eye(3)[[2] * 4])
    assert w[6, 1] >= 0.5 > w[5, 1]                                        # the boundary: the next task's half
    odd = tf.gradual_schedule([5, 5], blend=3)
    np.testing.assert_allclose(odd.weights[4:7, 1], [1 / 6, 1 / 2, 5 / 6])
    assert odd.boundaries.tolist() == [5] and odd.weights[5, 1] == 0.5


def test_irregular_schedule_lengths():
    s = tf.irregular_schedule(num_tasks=4, num_episodes=100, min_length=15, seed=3)
    lengths = np.diff(np.concatenate([[0], s.boundaries, [100]]))
    assert lengths.sum() == 100 and lengths.min() >= 15 and s.num_segments == 4
    np.testing.assert_array_equal(np.repeat(np.arange(4), lengths), s.weights.argmax(axis=1))
    again = tf.irregular_schedule(num_tasks=4, num_episodes=100, min_length=15, seed=3)
    np.testing.assert_array_equal(again.boundaries, s.boundaries)
    other = [tuple(tf.irregular_schedule(4, 100, 15, seed=k).boundaries) for k in range(6)]
    assert len(set(other)) > 1


@pytest.mark.parametrize("call, name", [
    (lambda: tf.abrupt_schedule([]), "lengths"),
    (lambda: tf.abrupt_schedule([3, 0]), "lengths"),
    (lambda: tf.abrupt_schedule([3, 3], order=[1, 1]), "order"),
    (lambda: tf.abrupt_schedule([3, 3], order=[0]), "order"),
    (lambda: tf.gradual_schedule([4, 4], blend=5), "blend"),
    (lambda: tf.gradual_schedule([4, 4], blend=1), "blend"),
    (lambda: tf.irregular_schedule(3, 10, 4), "num_episodes"),
    (lambda: tf.irregular_schedule(3, 30, 0), "min_length"),
    (lambda: tf.irregular_schedule(3, 30, 4, seed=1.5), "seed"),
    (lambda: tf.Schedule(np.ones((3, 2)), [0, 1], [1], [1], "abrupt"), "weights"),
])
def test_schedule_bad_input(call, name):
    with pytest.raises(ValueError, match=name):
        call()


def test_draw_tasks_frequencies():
    ids = np.asarray(tf.draw_tasks(jax.random.key(0), jnp.asarray([0.25, 0.75, 0.0]), 20000))
    assert set(np.unique(ids).tolist()) <= {0, 1}
    assert abs((ids == 0).mean() - 0.25) < 0.015


# ----------------------------------------------------------------------------------------------------------------
# The detector
# ----------------------------------------------------------------------------------------------------------------


def ph_reference(det: tf.PageHinkley, signal):
    """The documented Page-Hinkley test in NumPy float64, written from the class docstring."""
    x_all = np.log(signal) if det.log else np.asarray(signal, np.float64)
    alarms, stats = np.zeros(len(x_all), bool), np.zeros(len(x_all))
    m = v = s = 0.0
    line, n = [], 0
    for t, x in enumerate(x_all):
        z = (x - m) / math.sqrt(v + det.min_scale ** 2)
        s = max(0.0, s + z - det.delta) if n >= det.warmup else 0.0
        stats[t] = s
        line.append(x)
        if len(line) > det.lag:                      # the observation from lag steps ago enters the reference
            old = line.pop(0)
            a = max(det.alpha, 1.0 / (n - det.lag + 1))
            r = old - m
            m, v = m + a * r, (1 - a) * (v + a * r * r)
        n += 1
        if s > det.threshold:
            alarms[t] = True
            m = v = s = 0.0
            line, n = [], 0
    return alarms, stats


def test_detector_hand_worked_delay():
    # The reference is exactly 1 with variance 0 (scale = min_scale = 0.01); a step to 1.05 gives z = 5 per
    # episode, so PH = 4.5, 9, 13.5, 18 on the episodes 40..43: the alarm at 43, a delay of 3. It comes before the
    # new level reaches the reference (lag 10). After the alarm the detector warms up again (20 episodes, no test).
    det = tf.PageHinkley(log=False)
    signal = np.concatenate([np.ones(40), np.full(40, 1.05)])
    out = tf.detect(det, signal)
    alarms = np.asarray(out["alarm"])
    np.testing.assert_array_equal(np.nonzero(alarms)[0], [43])
    np.testing.assert_allclose(np.asarray(out["stat"])[38:44], [0, 0, 4.5, 9.0, 13.5, 18.0], atol=1e-3)
    m = tf.detection_metrics(alarms, [40])
    assert m["delay"].tolist() == [3.0] and m["false_alarms"] == 0 and m["missed"] == 0


def test_detector_matches_float64_reference():
    rng = np.random.default_rng(0)
    level = np.repeat([1.0, 2.5, 0.8, 3.0], 60)
    signal = np.exp(np.log(level) + 0.1 * rng.standard_normal(level.size))
    det = tf.PageHinkley()
    out = tf.detect(det, signal)
    ref_alarms, ref_stats = ph_reference(det, signal)
    np.testing.assert_array_equal(np.asarray(out["alarm"]), ref_alarms)
    np.testing.assert_allclose(np.asarray(out["stat"]), ref_stats, rtol=1e-4, atol=1e-3)
    m = tf.detection_metrics(ref_alarms, [60, 120, 180])
    assert m["missed"] == 1 and m["false_alarms"] == 0      # the decrease at 120 is not an increase
    # the rise at 180 comes while the reference still carries the fall at 120's spread: 4 episodes instead of 1
    assert m["detected"].tolist() == [True, False, True] and m["delay"][0] <= 1 and m["delay"][2] <= 5


def test_detector_no_false_alarm_on_stationary_signals():
    # 40 i.i.d. N(0, 1) signals of 2,000 episodes at the documented defaults (threshold 15, delta 0.5).
    det = tf.PageHinkley(log=False)
    signals = jax.random.normal(jax.random.key(7), (40, 2000))
    alarms = jax.vmap(lambda s: tf.detect(det, s)["alarm"])(signals)
    assert int(alarms.sum()) == 0
    # and the same detector finds a step of 3 standard deviations in every one of them, in the stated time
    stepped = signals.at[:, 1000:].add(3.0)
    found = np.asarray(jax.vmap(lambda s: tf.detect(det, s)["alarm"])(stepped))
    m = tf.detection_metrics(found, [1000])
    assert m["missed"].sum() == 0 and m["false_alarms"].sum() == 0
    expected = tf.siegmund_arl(0.5, 15.0, 3.0) - 1
    assert abs(np.mean(m["mean_delay"]) - expected) < 2.0


def test_siegmund_arl_closed_form():
    b = 15.0 + 1.166
    assert tf.siegmund_arl(0.5, 15.0) == pytest.approx((math.exp(2 * 0.5 * b) - 2 * 0.5 * b - 1) / (2 * 0.25))
    assert tf.siegmund_arl(0.5, 15.0, 3.0) == pytest.approx((math.exp(-5 * b) + 5 * b - 1) / (2 * 6.25))
    assert tf.siegmund_arl(0.5, 15.0, 0.5) == pytest.approx(b * b)


@pytest.mark.parametrize("kwargs, name", [
    (dict(threshold=0.0), "threshold"), (dict(delta=-1.0), "delta"), (dict(alpha=1.5), "alpha"),
    (dict(min_scale=0.0), "min_scale"), (dict(lag=0), "lag"), (dict(warmup=5), "warmup"),
    (dict(log="yes"), "log"), (dict(threshold="15"), "threshold"),
])
def test_detector_bad_input(kwargs, name):
    with pytest.raises(ValueError, match=name):
        tf.PageHinkley(**kwargs)


def test_detect_bad_input():
    with pytest.raises(TypeError, match="detector"):
        tf.detect("ph", np.ones(5))
    with pytest.raises(ValueError, match="signal"):
        tf.detect(tf.PageHinkley(), np.ones((2, 5)))


# ----------------------------------------------------------------------------------------------------------------
# Detection metrics
# ----------------------------------------------------------------------------------------------------------------


def test_detection_metrics_hand_made():
    alarms = np.zeros(20, bool)
    alarms[[2, 5, 6, 15]] = True
    m = tf.detection_metrics(alarms, [5, 12])
    # 2: before the first change (false); 5: change 5, delay 0; 6: a second alarm (false); 15: change 12, delay 3
    assert m["delay"].tolist() == [0.0, 3.0] and m["missed"] == 0 and m["false_alarms"] == 2
    assert m["mean_delay"] == 1.5
    m = tf.detection_metrics(alarms, [5, 12], max_delay=2)      # 15 is past change 12's window
    assert np.isnan(m["delay"][1]) and m["missed"] == 1 and m["false_alarms"] == 3
    both = tf.detection_metrics(np.stack([alarms, np.zeros(20, bool)]), [5, 12])
    assert both["missed"].tolist() == [0, 2] and both["false_alarms"].tolist() == [2, 0]
    assert np.isnan(both["mean_delay"][1])
    s = tf.abrupt_schedule([5, 7, 8])
    assert tf.detection_metrics(alarms, s)["delay"].tolist() == [0.0, 3.0]


def test_detection_metrics_bad_input():
    with pytest.raises(ValueError, match="changes"):
        tf.detection_metrics(np.zeros(10, bool), [5, 3])
    with pytest.raises(ValueError, match="changes"):
        tf.detection_metrics(np.zeros(10, bool), [12])
    with pytest.raises(ValueError, match="max_delay"):
        tf.detection_metrics(np.zeros(10, bool), [5], max_delay=-1)


# ----------------------------------------------------------------------------------------------------------------
# Streaming EWC and SI against float64 references
# ----------------------------------------------------------------------------------------------------------------


class _Linear:
    """A linear-Gaussian regression ``y = x W + noise``: its empirical Fisher has a closed form."""

    likelihood = Gaussian(1.0)

    @staticmethod
    def predict(params, x):
        return x @ params["w"]


def _trajectory(rng, steps, shape=(3, 2)):
    thetas = [rng.standard_normal(shape) for _ in range(steps + 1)]
    grads = [rng.standard_normal(shape) for _ in range(steps)]
    return thetas, grads


@pytest.mark.parametrize("anchor_decay", [None, 0.4])
def test_streaming_ewc_matches_float64_reference(anchor_decay):
    rng = np.random.default_rng(1)
    decay, lam, steps, n = 0.9, 2.0, 6, 5
    strat = streaming_ewc(lam=lam, decay=decay, variant="empirical", anchor_decay=anchor_decay)
    hp = strat.hparams
    thetas, grads = _trajectory(rng, steps)
    data = [(rng.standard_normal((n, 3)), rng.standard_normal((n, 2))) for _ in range(steps)]
    state = strat.init({"w": jnp.asarray(thetas[0], jnp.float32)}, hp)
    assert float(strat.penalty(state, {"w": jnp.ones((3, 2))}, hp)) == 0.0   # Omega = 0 before the first update
    for t in range(steps):
        old, new = ({"w": jnp.asarray(thetas[k], jnp.float32)} for k in (t, t + 1))
        state = strat.accumulate(state, old, new, {"w": jnp.asarray(grads[t], jnp.float32)}, hp)
        x, y = data[t]
        state = strat.observe(state, old, (jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32)), _Linear,
                              jax.random.key(t), hp)
    # float64 reference: F_s = mean_n ((y - x W_{s-1}) x)^2 (the score of the Gaussian, at the parameters the batch
    # was learned from); Omega and the anchor are normalised exponentially weighted means with weights decay^(t-s)
    # and anchor_decay^(t-s) (anchor_decay None: decay).
    fishers = []
    for s in range(steps):
        x, y = data[s]
        r = y - x @ thetas[s]
        fishers.append(np.mean((x[:, :, None] * r[:, None, :]) ** 2, axis=0))
    weights = decay ** np.arange(steps - 1, -1, -1)
    a_weights = (decay if anchor_decay is None else anchor_decay) ** np.arange(steps - 1, -1, -1)
    omega = sum(w * f for w, f in zip(weights, fishers)) / weights.sum()
    anchor = sum(w * th for w, th in zip(a_weights, thetas[1:])) / a_weights.sum()
    np.testing.assert_allclose(np.asarray(state.importance["w"]), omega, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(state.anchor["w"]), anchor, rtol=1e-5, atol=1e-6)
    assert int(state.count) == steps
    theta = rng.standard_normal((3, 2))
    expected = 0.5 * lam * np.sum(omega * (theta - anchor) ** 2)
    assert float(strat.penalty(state, {"w": jnp.asarray(theta, jnp.float32)}, hp)) == pytest.approx(expected,
                                                                                                     rel=1e-5)


def test_streaming_ewc_every_k():
    rng = np.random.default_rng(2)
    strat = streaming_ewc(lam=1.0, decay=0.5, variant="empirical", every=2)
    hp = strat.hparams
    thetas, grads = _trajectory(rng, 4)
    data = [(rng.standard_normal((4, 3)), rng.standard_normal((4, 2))) for _ in range(4)]
    state = strat.init({"w": jnp.asarray(thetas[0], jnp.float32)}, hp)
    for t in range(4):
        old, new = ({"w": jnp.asarray(thetas[k], jnp.float32)} for k in (t, t + 1))
        state = strat.accumulate(state, old, new, {"w": jnp.asarray(grads[t], jnp.float32)}, hp)
        state = strat.observe(state, old, tuple(jnp.asarray(a, jnp.float32) for a in data[t]), _Linear,
                              jax.random.key(0), hp)
    f = [np.mean((data[s][0][:, :, None] * (data[s][1] - data[s][0] @ thetas[s])[:, None, :]) ** 2, axis=0)
         for s in (0, 2)]                                       # updates 0 and 2 compute a Fisher
    np.testing.assert_allclose(np.asarray(state.importance["w"]), (0.5 * f[0] + f[1]) / 1.5, rtol=1e-5)
    assert float(state.importance_weight) == pytest.approx(1.5)


@pytest.mark.parametrize("anchor_decay", [None, 0.3])
def test_streaming_si_matches_float64_reference(anchor_decay):
    rng = np.random.default_rng(3)
    decay, lam, xi, steps = 0.8, 3.0, 0.1, 7
    strat = streaming_si(lam=lam, xi=xi, decay=decay, anchor_decay=anchor_decay)
    hp = strat.hparams
    thetas, grads = _trajectory(rng, steps)
    state = strat.init({"w": jnp.asarray(thetas[0], jnp.float32)}, hp)
    for t in range(steps):
        old, new = ({"w": jnp.asarray(thetas[k], jnp.float32)} for k in (t, t + 1))
        state = strat.accumulate(state, old, new, {"w": jnp.asarray(grads[t], jnp.float32)}, hp)
    # w_t = sum_s decay^(t-s) (-g_s (theta_s - theta_{s-1})); anchor = normalised decayed mean of theta_1..theta_t;
    # Omega = max(0, w) / ((theta_t - anchor)^2 + xi)
    weights = decay ** np.arange(steps - 1, -1, -1)
    a_weights = (decay if anchor_decay is None else anchor_decay) ** np.arange(steps - 1, -1, -1)
    w = sum(wt * (-grads[s] * (thetas[s + 1] - thetas[s])) for s, wt in enumerate(weights))
    anchor = sum(wt * th for wt, th in zip(a_weights, thetas[1:])) / a_weights.sum()
    omega = np.maximum(0.0, w) / ((thetas[-1] - anchor) ** 2 + xi)
    np.testing.assert_allclose(np.asarray(state.path["w"]), w, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(state.anchor["w"]), anchor, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(state.importance["w"]), omega, rtol=1e-4, atol=1e-6)
    theta = rng.standard_normal((3, 2))
    expected = 0.5 * lam * np.sum(omega * (theta - anchor) ** 2)
    assert float(strat.penalty(state, {"w": jnp.asarray(theta, jnp.float32)}, hp)) == pytest.approx(expected,
                                                                                                     rel=1e-4)


@pytest.mark.parametrize("call, name", [
    (lambda: streaming_ewc(variant="fast"), "variant"), (lambda: streaming_ewc(every=0), "every"),
    (lambda: streaming_ewc(num_samples=0), "num_samples"), (lambda: streaming_ewc(chunk_size=0), "chunk_size"),
    (lambda: streaming_ewc(lam=-1.0), "lam"), (lambda: streaming_ewc(decay=1.5), "decay"),
    (lambda: streaming_si(xi=0.0), "xi"), (lambda: streaming_si(decay=-0.1), "decay"),
    (lambda: streaming_ewc(anchor_decay=1.01), "anchor_decay"), (lambda: streaming_si(anchor_decay=-0.5), "anchor_decay"),
    (lambda: streaming_ewc(anchor_decay=float("nan")), "anchor_decay"),
])
def test_streaming_bad_input(call, name):
    with pytest.raises(ValueError, match=name):
        call()


@pytest.mark.parametrize("factory", [streaming_ewc, streaming_si])
def test_streaming_anchor_lags_a_moving_trajectory(factory):
    """Hand-worked: on the trajectory theta_s = s (s = 1..t) the anchor of memory a is
    sum_s a^(t-s) s / sum_s a^(t-s) -> t - a / (1 - a) once t is long against the horizon: a = 0.75 lags 3 updates,
    a = 0 sits on theta_t, and the anchor's memory is independent of the importance's (decay 1 here)."""
    for a, lag in ((0.75, 3.0), (0.0, 0.0)):
        strat = factory(lam=1.0, decay=1.0, anchor_decay=a)
        hp = strat.hparams
        state = strat.init({"w": jnp.zeros((2,))}, hp)
        accumulate = jax.jit(strat.accumulate)
        for t in range(1, 81):
            state = accumulate(state, {"w": jnp.full((2,), t - 1.0)}, {"w": jnp.full((2,), float(t))},
                               {"w": jnp.zeros((2,))}, hp)
        np.testing.assert_allclose(np.asarray(state.anchor["w"]), 80.0 - lag, rtol=0, atol=1e-3)
        assert float(state.anchor_weight) == pytest.approx(1.0 / (1.0 - a), rel=1e-4)


def test_streaming_anchor_decay_is_traced():
    """anchor_decay is a hyperparameter like the others: one compiled update serves any value, set by name."""
    strat = streaming_ewc(lam=1.0, decay=0.9)
    assert strat.hparams.anchor_decay == 0.9                    # None: the importance's memory
    traces = []

    @jax.jit
    def anchor_after_two(hp):
        traces.append(1)
        st = strat.init({"w": jnp.zeros(())}, hp)
        st = strat.accumulate(st, {"w": jnp.zeros(())}, {"w": jnp.ones(())}, {"w": jnp.zeros(())}, hp)
        st = strat.accumulate(st, {"w": jnp.ones(())}, {"w": jnp.full((), 3.0)}, {"w": jnp.zeros(())}, hp)
        return st.anchor["w"]

    # (a * 1 + 3) / (a + 1): a = 0.5 -> 7/3, a = 0 -> 3
    for a, expected in ((0.5, 7.0 / 3.0), (0.0, 3.0)):
        hp = strat.hparams._replace(anchor_decay=jnp.float32(a))
        assert float(anchor_after_two(hp)) == pytest.approx(expected, rel=1e-6)
    assert len(traces) == 1


def test_streaming_strategies_are_registered():
    assert get_strategy("streaming_ewc", lam=2.0).hparams.lam == 2.0
    assert get_strategy("streaming_si").consolidate is None


# ----------------------------------------------------------------------------------------------------------------
# The task-free run
# ----------------------------------------------------------------------------------------------------------------


TRACES = []


def _counting_ewc():
    """EWC whose penalty counts how often the program is traced (the penalty is traced once per program)."""
    ewc = get_strategy("ewc")

    def penalty(state, params, hp):
        TRACES.append(1)
        return ewc.penalty(state, params, hp)

    return dataclasses.replace(ewc, name="ewc_counted", penalty=penalty)


@pytest.fixture(scope="module")
def source(digits):
    x, y = digits
    stream = permuted_stream(x[:600], y[:600], 3, seed=0, scenario="domain")
    return SupervisedSource(MLP(output_dim=stream.num_classes, hidden=(16,)), stream, batch_size=32, eval_size=64)


@pytest.fixture(scope="module")
def ewc_strategy():
    return _counting_ewc()


@pytest.fixture(scope="module")
def runs(source, ewc_strategy):
    config = RunConfig(strategy=ewc_strategy, monitors=(), fisher_variant="empirical")
    return {b: tf.make_taskfree_run(config, source, boundaries=b) for b in tf.BOUNDARIES}   # the default detector


@pytest.fixture(scope="module")
def schedule():
    return tf.abrupt_schedule([80, 70, 90])


@pytest.fixture(scope="module")
def detect_results(runs, schedule):
    run = runs["detect"]
    hp = run.hparams(learning_rate=2e-2, lam=1.0)
    keys = jax.random.split(jax.random.key(0), 2)
    return run.seeds(keys, hp, schedule)


def test_detect_run_consolidates_at_its_alarms(detect_results, schedule):
    state, res = detect_results
    alarms, consolidated = np.asarray(res.alarms), np.asarray(res.consolidated)
    np.testing.assert_array_equal(consolidated, alarms)
    np.testing.assert_array_equal(np.asarray(state.tasks_done), alarms.sum(axis=1))
    m = tf.taskfree_summary(res, schedule)
    assert m["missed"].tolist() == [0, 0] and m["false_alarms"].tolist() == [0, 0]   # a new permutation is obvious
    assert np.all(m["delay"] <= 8)
    assert res.R.shape == (2, 3, 3) and res.traces["loss"].shape == (2, 240)
    assert np.all(np.asarray(res.traces["finite"]))


def test_oracle_and_none_consolidate_where_stated(runs, schedule):
    hp = runs["oracle"].hparams(learning_rate=2e-2, lam=1.0)
    key = jax.random.key(1)
    state, res = runs["oracle"](key, hp, schedule)
    np.testing.assert_array_equal(np.nonzero(np.asarray(res.consolidated))[0], [79, 149])
    assert int(state.tasks_done) == 2
    # R's last row is the final parameters' scores with the run's evaluation keys; the baseline the initial ones
    run = runs["oracle"].run
    np.testing.assert_allclose(np.asarray(res.R[-1]), np.asarray(run.evaluate(state.params, key, hp)), atol=1e-6)
    init = run.init(key, hp)
    np.testing.assert_allclose(np.asarray(res.baseline), np.asarray(run.evaluate(init.params, key, hp)), atol=1e-6)
    state_n, res_n = runs["none"](key, hp, schedule)
    assert not np.any(np.asarray(res_n.consolidated)) and int(state_n.tasks_done) == 0
    assert float(np.abs(np.asarray(res_n.traces["penalty"])).max()) == 0.0
    # the detector runs in every mode; its alarms are the same until the runs' parameters differ (the first
    # consolidation, at 79)
    np.testing.assert_array_equal(np.asarray(res.alarms)[:80], np.asarray(res_n.alarms)[:80])


def test_taskfree_run_compiled_once(runs, schedule, detect_results):
    run = runs["detect"]
    before = len(TRACES)
    other = tf.abrupt_schedule([60, 100, 80])                    # another stream of the same length
    keys = jax.random.split(jax.random.key(5), 2)
    run.seeds(keys, run.hparams(learning_rate=3e-3, lam=2.0), other)
    assert len(TRACES) == before                              # reused the program the fixture compiled
    # one stream per seed is one more program (the schedule gains a seed axis), traced once for any streams
    run.seeds(keys, run.hparams(learning_rate=1e-2, lam=0.5), [schedule, other])
    run.seeds(keys, run.hparams(learning_rate=2e-2, lam=3.0), [other, schedule])
    assert len(TRACES) == before + 1


def test_seeds_match_single_runs(runs, schedule, detect_results):
    _, res = detect_results
    run = runs["detect"]
    hp = run.hparams(learning_rate=2e-2, lam=1.0)
    keys = jax.random.split(jax.random.key(0), 2)
    _, one = run(keys[1], hp, schedule)
    np.testing.assert_allclose(np.asarray(one.R), np.asarray(res.R[1]), atol=1e-5)
    np.testing.assert_array_equal(np.asarray(one.alarms), np.asarray(res.alarms[1]))


def test_mixture_batch_serves_the_weighted_task(source):
    params = source.init_params(jax.random.key(0))
    hp = source.hparams
    batch = tf.mixture_batch(source, jax.random.key(1), params, source.tasks, jnp.asarray([0.0, 1.0, 0.0]), hp)
    x1 = np.asarray(source.tasks.x[1])
    rows = np.asarray(batch.x)
    assert batch.mask.shape == (32, source.tasks.train_mask.shape[-1])
    assert all(np.any(np.all(x1 == r, axis=1)) for r in rows)
    assert len({r.tobytes() for r in rows}) == 32                 # distinct samples, as in the task's own batch
    x0 = np.asarray(source.tasks.x[0])
    assert not any(np.any(np.all(x0 == r, axis=1)) for r in rows)


def test_taskfree_bad_input(runs, source, schedule):
    config = RunConfig(strategy="ewc", monitors=())
    with pytest.raises(TypeError, match="config"):
        tf.make_taskfree_run("ewc", source)
    with pytest.raises(ValueError, match="boundaries"):
        tf.make_taskfree_run(config, source, boundaries="sometimes")
    with pytest.raises(TypeError, match="detector"):
        tf.make_taskfree_run(config, source, detector=15.0)
    with pytest.raises(TypeError, match="source"):
        tf.make_taskfree_run(config, object())
    run = runs["none"]
    hp = run.hparams()
    with pytest.raises(TypeError, match="schedule"):
        run(jax.random.key(0), hp, np.ones((10, 3)))
    with pytest.raises(ValueError, match="schedule"):
        run(jax.random.key(0), hp, tf.abrupt_schedule([5, 5]))        # 2 tasks, the source has 3
    with pytest.raises(TypeError, match="key"):
        run(0, hp, schedule)
    with pytest.raises(TypeError, match="hp"):
        run(jax.random.key(0), {"learning_rate": 1e-3}, schedule)
    with pytest.raises(ValueError, match="keys"):
        run.seeds(jax.random.key(0), hp, schedule)
    with pytest.raises(ValueError, match="schedule"):
        run.seeds(jax.random.split(jax.random.key(0), 2), hp, [schedule])
    with pytest.raises(ValueError, match="schedules"):
        run.seeds(jax.random.split(jax.random.key(0), 2), hp, [schedule, tf.abrupt_schedule([10, 10, 10])])


# ----------------------------------------------------------------------------------------------------------------
# The closed-loop world through the task-free run
# ----------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def world_detect():
    """A tiny closed-loop world (2 tasks, episodes of 8 steps in 4 worlds) switching abruptly at episode 40, run by
    detect-triggered EWC over 2 seeds: one compiled program shared by the tests below."""
    env = Environment(observation_dim=8, action_dim=4, num_modalities=2, latent_dim=2, num_tasks=2, episode_length=8)
    model = CrossModalModel(input_dim=8, hidden_dim=16, output_dim=4, num_modalities=2, num_heads=1,
                            feedback_dim=env.feedback_dim)                 # one head: a smaller program to compile
    source = EnvSource(model, env, num_tasks=2, num_envs=4, eval_envs=4)
    run = tf.make_taskfree_run(RunConfig(strategy="ewc", monitors=(), fisher_variant="empirical"), source,
                               boundaries="detect")
    schedule = tf.abrupt_schedule([40, 40])
    state, res = run.seeds(jax.random.split(jax.random.key(0), 2), run.hparams(learning_rate=1e-2, lam=1.0),
                           schedule)
    return schedule, state, jax.tree.map(np.asarray, res)

@pytest.mark.slow
def test_world_detector_fires_after_the_hidden_switch(world_detect):
    schedule, _, res = world_detect
    for seed in range(2):
        alarms = np.nonzero(res.alarms[seed])[0]
        assert alarms.size == 1 and 40 < alarms[0] <= 45    # the new task's imitation loss jumps: a few episodes
        assert np.all(res.traces["ph_stat"][seed, :40] < tf.PageHinkley().threshold)
    m = tf.taskfree_summary(res, schedule)
    assert m["missed"].tolist() == [0, 0] and m["false_alarms"].tolist() == [0, 0]
    assert np.all((m["delay"] >= 1) & (m["delay"] <= 5))
    np.testing.assert_array_equal(m["delay"][:, 0], np.nonzero(res.alarms)[1] - 40)

@pytest.mark.slow
def test_world_detect_run_consolidates_at_the_alarm(world_detect):
    _, state, res = world_detect
    np.testing.assert_array_equal(res.consolidated, res.alarms)
    assert np.asarray(state.tasks_done).tolist() == [1, 1]
    for seed in range(2):
        a = np.nonzero(res.alarms[seed])[0][0]
        penalty = res.traces["penalty"][seed]
        assert np.all(penalty[:a + 1] == 0.0)           # EWC pays nothing before its first consolidation ...
        assert np.all(penalty[a + 1:] > 0.0)            # ... and from the next update on, away from the anchor
    # the performance matrix at the true boundaries: task 0 learned (1 = its expert, 0 = the zero action) by the
    # end of its segment, task 1 by the end of the stream
    assert res.R.shape == (2, 2, 2) and np.all(np.isfinite(res.R))
    assert np.all(res.R[:, 0, 0] > 0.8) and np.all(res.R[:, 0, 0] > res.baseline[:, 0] + 0.8)
    assert np.all(res.R[:, 1, 1] > 0.3)
    assert np.all(res.traces["finite"])


# ----------------------------------------------------------------------------------------------------------------
# End to end: the experiment's quick version on the labelled stream
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_experiment_quick_digits(tmp_path):
    import importlib.util
    import json
    import pathlib

    path = pathlib.Path(__file__).resolve().parents[1] / "experiments" / "taskfree.py"
    spec = importlib.util.spec_from_file_location("taskfree_experiment", path)
    experiment = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(experiment)
    out = tmp_path / "taskfree"
    experiment.main(["--quick", "--streams", "digits", "--no-cache", "--out", str(out), "--runs",
                     str(tmp_path / "runs")])
    record = json.loads((tmp_path / "taskfree.json").read_text())
    abrupt = record["results"]["digits/abrupt"]["methods"]
    detect, oracle = abrupt["ewc (detect)"], abrupt["ewc (oracle)"]
    assert detect["missed"] == [0, 0] and detect["false_alarms"] == [0, 0]
    assert all(d <= 10 for row in detect["delay"] for d in row)   # half-length streams: shorter, noisier segments
    assert detect["consolidations"] == [2, 2] and oracle["consolidations"] == [2, 2]
    acc = {k: np.mean(v["average_performance"]) for k, v in abrupt.items()}
    bwt = {k: np.mean(v["backward_transfer"]) for k, v in abrupt.items()}
    # what EWC is for: less forgetting than fine-tuning, whether it learns the switches by detecting them or is told
    assert bwt["ewc (detect)"] > bwt["fine-tuning"] + 0.05 and bwt["ewc (oracle)"] > bwt["fine-tuning"] + 0.05
    assert abs(acc["ewc (detect)"] - acc["ewc (oracle)"]) < 0.03
    assert (tmp_path / "taskfree.md").read_text().startswith("### digits, abrupt")
    folder = tmp_path / "runs" / "digits_abrupt" / pathlib.Path(detect["folder"]).name   # each cell a run folder
    assert json.loads((folder / "detection.json").read_text())["delay"] == detect["delay"]
    assert not list(tmp_path.glob("*.tmp"))


def test_detect_consolidates_the_last_in_control_parameters(source, schedule):
    # A strategy that remembers the parameters it is consolidated with, and traces the sum of those and of the live
    # parameters after every update: the consolidation at an alarm must see the parameters of the last episode whose
    # Page-Hinkley statistic was 0 (the end of the old task as the detector sees it).
    def total(tree):
        return sum(jnp.sum(x) for x in jax.tree.leaves(tree))

    snap = Strategy(
        "snapshot", init=lambda params, hp: (jax.tree.map(jnp.zeros_like, params), jnp.zeros(())),
        accumulate=lambda st, old, new, grads, hp: (st[0], total(new)),
        consolidate=lambda st, params, hp, importance=None, data=None: (params, st[1]),
        trace=lambda st: {"snap": total(st[0]), "live": st[1]})
    run = tf.make_taskfree_run(RunConfig(strategy=snap, monitors=()), source, boundaries="detect")
    _, res = run(jax.random.key(0), run.hparams(learning_rate=2e-2), schedule)
    alarms = np.nonzero(np.asarray(res.alarms))[0]
    assert alarms.size == 2
    stat, snap_tr, live = (np.asarray(res.traces[k]) for k in ("ph_stat", "snap", "live"))
    for a in alarms:
        last_in_control = np.nonzero(stat[:a] == 0)[0][-1]
        np.testing.assert_allclose(snap_tr[a + 1], live[last_in_control], rtol=1e-6)
        assert not np.isclose(snap_tr[a + 1], live[a], rtol=1e-6)      # not the parameters at the alarm
