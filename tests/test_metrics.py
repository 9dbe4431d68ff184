"""Tests of clloop_jax.metrics: hand-worked values, a float64 loop reference, properties, batching, intervals."""

import math
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from clloop_jax import metrics as M

# A hand-worked 3-task example. Rows: after training task i; columns: evaluated task j.
R3 = np.array([
    [0.90, 0.10, 0.20],
    [0.95, 0.80, 0.30],
    [0.50, 0.70, 0.95],
])
B3 = np.array([0.10, 0.20, 0.25])
# ACC  = (0.50 + 0.70 + 0.95) / 3                         = 0.716666...
# BWT  = ((0.50 - 0.90) + (0.70 - 0.80)) / 2              = -0.25
# FWT  = ((R[0,1] - b1) + (R[1,2] - b2)) / 2
#      = ((0.10 - 0.20) + (0.30 - 0.25)) / 2              = -0.025
# Forgetting: j=0: max(0.90, 0.95) - 0.50 = 0.45; j=1: max(0.10, 0.80) - 0.70 = 0.10; mean = 0.275
# LA   = (0.90 + 0.80 + 0.95) / 3                         = 0.883333...
EXPECTED3 = {
    "average_performance": 2.15 / 3,
    "backward_transfer": -0.25,
    "forward_transfer": -0.025,
    "average_forgetting": 0.275,
    "learning_accuracy": 2.65 / 3,
}


def reference(R, b):
    """Direct float64 transcription of the definitions, with explicit loops."""
    R = np.asarray(R, np.float64)
    T = R.shape[0]
    out = {"average_performance": sum(R[T - 1, j] for j in range(T)) / T,
           "learning_accuracy": sum(R[i, i] for i in range(T)) / T}
    if T == 1:
        out.update(backward_transfer=math.nan, forward_transfer=math.nan, average_forgetting=math.nan)
        return out
    out["backward_transfer"] = sum(R[T - 1, i] - R[i, i] for i in range(T - 1)) / (T - 1)
    out["forward_transfer"] = sum(R[i - 1, i] - b[i] for i in range(1, T)) / (T - 1)
    out["average_forgetting"] = sum(max(R[l, j] - R[T - 1, j] for l in range(T - 1))
                                    for j in range(T - 1)) / (T - 1)
    return out


def test_hand_worked_3x3():
    s = M.summarize(R3, B3)
    for name, value in EXPECTED3.items():
        assert s[name] == pytest.approx(value, abs=1e-12), name
    np.testing.assert_array_equal(s["final"], [0.50, 0.70, 0.95])
    assert M.average_performance(R3) == pytest.approx(EXPECTED3["average_performance"], abs=1e-12)
    assert M.backward_transfer(R3) == pytest.approx(-0.25, abs=1e-12)
    assert M.forward_transfer(R3, B3) == pytest.approx(-0.025, abs=1e-12)
    assert M.average_forgetting(R3) == pytest.approx(0.275, abs=1e-12)


def test_jax_input_matches_numpy_and_jits():
    s = jax.jit(M.summarize)(jnp.asarray(R3, jnp.float32), jnp.asarray(B3, jnp.float32))
    for name, value in EXPECTED3.items():
        assert isinstance(s[name], jax.Array)
        assert float(s[name]) == pytest.approx(value, abs=1e-6), name


def square_matrices(max_t=5):
    return st.integers(1, max_t).flatmap(
        lambda t: hnp.arrays(np.float64, (t, t), elements=st.floats(-1, 1, allow_nan=False)))


@given(square_matrices(), st.data())
def test_matches_loop_reference(R, data):
    T = R.shape[0]
    b = data.draw(hnp.arrays(np.float64, (T,), elements=st.floats(-1, 1, allow_nan=False)))
    got, want = M.summarize(R, b), reference(R, b)
    for name, value in want.items():
        if math.isnan(value):
            assert np.isnan(got[name]), name
        else:
            assert got[name] == pytest.approx(value, abs=1e-12), name


@given(st.integers(2, 5), st.data())
def test_no_forgetting_gives_zero_forgetting_and_zero_bwt(T, data):
    # Scores stay at their just-learned value after each task, and never exceeded it before.
    diag = data.draw(hnp.arrays(np.float64, (T,), elements=st.floats(0, 1)))
    frac = data.draw(hnp.arrays(np.float64, (T, T), elements=st.floats(0, 1)))
    R = np.where(np.arange(T)[:, None] >= np.arange(T)[None, :], diag[None, :], frac * diag[None, :])
    assert M.backward_transfer(R) == pytest.approx(0.0, abs=1e-12)
    assert M.average_forgetting(R) == pytest.approx(0.0, abs=1e-12)


@given(st.integers(2, 5), st.data())
def test_improving_columns_give_nonnegative_bwt_and_nonpositive_forgetting(T, data):
    # Every column non-decreasing down the rows: nothing is ever forgotten.
    steps = data.draw(hnp.arrays(np.float64, (T, T), elements=st.floats(0, 1)))
    R = np.cumsum(steps, axis=0)
    assert M.backward_transfer(R) >= -1e-12
    assert M.average_forgetting(R) <= 1e-12


def test_forgetting_is_positive_when_a_task_is_forgotten():
    R = np.array([[1.0, 0.0], [0.2, 1.0]])
    assert M.average_forgetting(R) == pytest.approx(0.8)
    assert M.backward_transfer(R) == pytest.approx(-0.8)


@given(st.integers(1, 4), st.integers(1, 4), st.data())
def test_batch_axis_equals_per_run(S, T, data):
    R = data.draw(hnp.arrays(np.float64, (S, T, T), elements=st.floats(-1, 1)))
    b = data.draw(hnp.arrays(np.float64, (S, T), elements=st.floats(-1, 1)))
    batched = M.summarize(R, b)
    for name in M.METRIC_NAMES:
        assert batched[name].shape == (S,)
        per_run = np.array([M.summarize(R[s], b[s])[name] for s in range(S)])
        np.testing.assert_allclose(batched[name], per_run, rtol=0, atol=1e-12, equal_nan=True)
    # A shared baseline broadcasts over the runs; vmap of the JAX path agrees too.
    shared = M.forward_transfer(R, b[0])
    np.testing.assert_allclose(shared, [M.forward_transfer(R[s], b[0]) for s in range(S)], atol=1e-12)
    vm = jax.vmap(M.summarize)(jnp.asarray(R, jnp.float32), jnp.asarray(b, jnp.float32))
    for name in M.METRIC_NAMES:
        np.testing.assert_allclose(np.asarray(vm[name]), batched[name], atol=1e-5, equal_nan=True)


def test_single_task_transfer_metrics_are_nan():
    R = np.array([[0.7]])
    s = M.summarize(R, np.array([0.1]))
    assert s["average_performance"] == pytest.approx(0.7)
    assert s["learning_accuracy"] == pytest.approx(0.7)
    for name in ("backward_transfer", "forward_transfer", "average_forgetting"):
        assert np.isnan(s[name]), name
    assert np.isnan(M.summarize(R)["forward_transfer"])  # no baseline given


def test_validation_errors():
    with pytest.raises(ValueError, match=r"R must be a square.*\(2, 3\)"):
        M.average_performance(np.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"R must be a square.*\(3,\)"):
        M.summarize(np.zeros(3))
    with pytest.raises(ValueError, match=r"T >= 1"):
        M.backward_transfer(np.zeros((0, 0)))
    with pytest.raises(ValueError, match=r"b must have shape \[\.\.\., T\] with T=3.*\(2,\)"):
        M.forward_transfer(R3, np.zeros(2))
    with pytest.raises(ValueError, match=r"b's batch axes \(4,\)"):
        M.forward_transfer(np.zeros((3, 2, 2)), np.zeros((4, 2)))
    with pytest.raises(ValueError, match=r"names must have T=3"):
        M.format_matrix(R3, names=["a", "b"])


# Two-sided Student t critical values from standard tables (P(|T| <= t) = confidence).
T_TABLE = [
    (0.95, 1, 12.706204736), (0.95, 2, 4.302652730), (0.95, 3, 3.182446305), (0.95, 5, 2.570581836),
    (0.95, 10, 2.228138852), (0.95, 30, 2.042272456), (0.95, 120, 1.979930405), (0.99, 4, 4.604094871),
    (0.90, 9, 1.833112933), (0.90, 1, 6.313751515), (0.99, 1, 63.656741163), (0.95, 10 ** 6, 1.959966),
]


@pytest.mark.parametrize("confidence,df,expected", T_TABLE)
def test_t_quantile_matches_tables(confidence, df, expected):
    assert M.t_quantile(confidence, df) == pytest.approx(expected, rel=1e-8 if df < 10 ** 6 else 1e-6)


def test_t_quantile_matches_scipy_when_installed():
    stats = pytest.importorskip("scipy.stats")
    for c in (0.5, 0.9, 0.95, 0.99):
        for df in (1, 2, 7, 31, 64, 1999, 2001, 5000):
            assert M.t_quantile(c, df) == pytest.approx(stats.t.ppf(0.5 + c / 2, df), rel=1e-9)


def test_mean_ci_hand_worked():
    # x = 1, 2, 3, 4: mean 2.5, sample std sqrt(5/3), n = 4, t_{0.975, 3} = 3.182446305.
    mean, hw = M.mean_ci(np.array([1.0, 2.0, 3.0, 4.0]))
    assert mean == pytest.approx(2.5)
    assert hw == pytest.approx(3.182446305 * math.sqrt(5 / 3) / 2, rel=1e-9)
    # Along another axis, and for JAX input.
    x = np.array([[1.0, 2.0, 3.0, 4.0], [2.0, 2.0, 2.0, 2.0]])
    mean, hw = M.mean_ci(x, axis=1, confidence=0.99)
    np.testing.assert_allclose(mean, [2.5, 2.0])
    np.testing.assert_allclose(hw, [5.840909309 * math.sqrt(5 / 3) / 2, 0.0], rtol=1e-8)
    jm, jh = M.mean_ci(jnp.asarray(x), axis=1, confidence=0.99)
    np.testing.assert_allclose(np.asarray(jh), hw, rtol=1e-5)
    # One sample: no interval.
    m1, h1 = M.mean_ci(np.array([3.0]))
    assert m1 == 3.0 and np.isnan(h1)


def test_mean_ci_validation():
    with pytest.raises(ValueError, match=r"confidence must be a finite number in \(0, 1\), got float 1.5"):
        M.mean_ci(np.ones(3), confidence=1.5)
    with pytest.raises(TypeError, match=r"confidence must be a finite number in \(0, 1\), got str '0.9'"):
        M.mean_ci(np.ones(3), confidence="0.9")
    with pytest.raises(ValueError, match=r"confidence .* got float nan"):
        M.mean_ci(np.ones(3), confidence=float("nan"))
    with pytest.raises(ValueError, match=r"axis must be an integer axis in \[-1, 1\).*got int 2.*\(3,\)"):
        M.mean_ci(np.ones(3), axis=2)
    with pytest.raises(TypeError, match=r"axis must be an integer axis .* got float 0.5"):
        M.mean_ci(np.ones(3), axis=0.5)
    with pytest.raises(TypeError, match=r"^x must be a real numeric array, got None"):
        M.mean_ci(None)
    with pytest.raises(TypeError, match=r"^x must be a real numeric array, got str"):
        M.mean_ci("abc")
    with pytest.raises(ValueError, match="df must be an integer >= 1, got int 0"):
        M.t_quantile(0.95, 0)
    with pytest.raises(TypeError, match="df must be an integer >= 1, got float 2.0; pass 2"):
        M.t_quantile(0.95, 2.0)
    with pytest.raises(TypeError, match=r"^R must be a real numeric array, got None"):
        M.summarize(None)
    with pytest.raises(TypeError, match=r"^b must be a real numeric array, got str"):
        M.forward_transfer(np.eye(2), "ab")
    with pytest.raises(TypeError, match=r"precision must be an integer >= 0"):
        M.format_matrix(np.eye(2), precision=1.5)
    with pytest.raises(TypeError, match=r"confidence must be"):
        M.format_summary(M.summarize(np.eye(2)[None].repeat(3, 0)), confidence="95%")


def test_mean_ci_over_every_element_with_axis_none():
    x = np.arange(12.0).reshape(3, 4) ** 1.5
    m, h = M.mean_ci(x, axis=None, confidence=0.9)
    m_flat, h_flat = M.mean_ci(x.reshape(-1), axis=0, confidence=0.9)
    assert m == m_flat and h == h_flat
    # Against the definition: t_{0.95, 11} = 1.7958848187 (tables), std with ddof=1, n = 12.
    assert m == pytest.approx(x.mean())
    assert h == pytest.approx(1.7958848187 * x.std(ddof=1) / np.sqrt(12), rel=1e-9)
    jm, jh = M.mean_ci(jnp.asarray(x, jnp.float32), axis=None, confidence=0.9)
    np.testing.assert_allclose([jm, jh], [m, h], rtol=1e-5)


def test_format_matrix_and_summary():
    table = M.format_matrix(R3, names=["a", "b", "c"], b=B3)
    lines = table.splitlines()
    assert lines[0] == "| after \\ on | a | b | c |"
    assert lines[2] == "| untrained | +0.100 | +0.200 | +0.250 |"
    assert lines[4] == "| b | +0.950 | +0.800 | +0.300 |"
    assert len(lines) == 2 + 1 + 3
    text = M.format_summary(M.summarize(R3, B3))
    assert "| backward_transfer | -0.250 |" in text
    assert "| average_forgetting | +0.275 |" in text
    # Batched: mean ± t interval over runs.
    runs = np.stack([R3, R3 + 0.1, R3 - 0.1])
    text = M.format_summary(M.summarize(runs, B3))
    _, hw = M.mean_ci(np.array([0.0, 0.1, -0.1]))
    assert "(n=3)" in text
    assert f"| average_performance | +0.717 ± {hw:.3f} |" in text


# A hand-worked 4-task matrix with rows 0 and 2 evaluated on their own task only (evaluate_every=2: full rows after
# tasks 1 and 3, NaN off the diagonal elsewhere).
N = np.nan
R4 = np.array([
    [0.90, N, N, N],
    [0.60, 0.80, 0.30, 0.20],
    [N, N, 0.70, N],
    [0.40, 0.50, 0.60, 0.85],
])
B4 = np.array([0.10, 0.20, 0.25, 0.15])
# ACC  = (0.40 + 0.50 + 0.60 + 0.85) / 4                              = 0.5875
# BWT  = ((0.40 - 0.90) + (0.50 - 0.80) + (0.60 - 0.70)) / 3          = -0.3
# FWT: only R[1, 2] (row 1 is full; rows 0 and 2 are not): (0.30 - 0.25) = 0.05
# Forgetting: j=0: max(0.90, 0.60) - 0.40 = 0.50; j=1: max(0.80) - 0.50 = 0.30; j=2: max(0.30, 0.70) - 0.60 = 0.10
#             mean = 0.9 / 3 = 0.3
# LA   = (0.90 + 0.80 + 0.70 + 0.85) / 4                              = 0.8125
EXPECTED4 = {"average_performance": 0.5875, "backward_transfer": -0.3, "forward_transfer": 0.05,
             "average_forgetting": 0.3, "learning_accuracy": 0.8125}


def test_rows_not_evaluated_in_full_are_left_out_by_hand():
    s = M.summarize(R4, B4)
    for name, value in EXPECTED4.items():
        assert s[name] == pytest.approx(value, abs=1e-12), name
    sj = jax.jit(M.summarize)(jnp.asarray(R4, jnp.float32), jnp.asarray(B4, jnp.float32))
    for name, value in EXPECTED4.items():
        assert float(sj[name]) == pytest.approx(value, abs=1e-6), name
    # forward transfer with no full row before the last: no term, nan (no warning)
    R2 = np.array([[0.9, N], [0.3, 0.8]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert np.isnan(M.forward_transfer(R2, np.array([0.1, 0.2])))
        assert M.average_forgetting(R2) == pytest.approx(0.6, abs=1e-12)
        M.summarize(R4, B4)


def test_nan_rows_equal_the_full_matrix_metrics_on_the_rows_kept():
    """Blanking rows that are not full leaves average performance, BWT and learning accuracy unchanged; forgetting
    equals the definition's maximum over the rows kept and FWT the mean of the terms kept (float64 loops)."""
    rng = np.random.default_rng(0)
    T, k = 7, 3
    R = rng.random((T, T))
    b = rng.random(T)
    kept = [(i + 1) % k == 0 or i == T - 1 for i in range(T)]
    Rn = R.copy()
    for i in range(T):
        if not kept[i]:
            Rn[i, :i], Rn[i, i + 1:] = np.nan, np.nan
    for name in ("average_performance", "backward_transfer", "learning_accuracy"):
        assert getattr(M, name)(Rn) == getattr(M, name)(R), name
    forget = np.mean([max(R[l, j] for l in range(T - 1) if kept[l] or l == j) - R[-1, j] for j in range(T - 1)])
    assert M.average_forgetting(Rn) == pytest.approx(forget, abs=1e-12)
    fwt = np.mean([R[i - 1, i] - b[i] for i in range(1, T) if kept[i - 1]])
    assert M.forward_transfer(Rn, b) == pytest.approx(fwt, abs=1e-12)

