"""The report module: intervals, the results schema and paired differences against hand-worked numbers."""
import numpy as np
import pytest

from clloop_jax import report


def test_cell_is_mean_and_student_t_half_width():
    # mean 2, sample std 1, n = 3: half-width t_{0.975, 2} * 1 / sqrt(3) = 4.302653 / 1.732051 = 2.484138
    assert report.cell([1.0, 2.0, 3.0]) == "+2.000 ± 2.484"
    assert report.cell([0.5]) == "+0.500" and report.cell([np.nan]) == "-"


def test_summary_schema_and_paired_differences_by_hand():
    # Two seeds, two tasks. ACC = mean of the last row: a -> (0.9, 0.7), b -> (0.5, 0.5).
    Ra = np.array([[[1.0, 0.0], [0.8, 1.0]], [[1.0, 0.0], [0.6, 0.8]]])
    Rb = np.array([[[1.0, 0.0], [0.0, 1.0]], [[1.0, 0.0], [0.2, 0.8]]])
    b = np.zeros((2, 2))
    s = report.summary(Ra, b)
    assert s["average_performance"]["values"] == pytest.approx([0.9, 0.7])
    assert s["average_performance"]["mean"] == pytest.approx(0.8) and s["average_performance"]["n"] == 2
    # backward transfer of a: R[1,0] - R[0,0] = -0.2 and -0.4
    assert s["backward_transfer"]["values"] == pytest.approx([-0.2, -0.4])
    d = report.paired_differences({"a": (Ra, b), "b": (Rb, b)}, reference="b")
    assert d["a"]["values"] == pytest.approx([0.4, 0.2]) and d["a"]["mean"] == pytest.approx(0.3)
    # half-width: t_{0.975,1} * std([0.4, 0.2]) / sqrt(2) = 12.7062 * 0.141421 / 1.414214 = 1.27062
    assert d["a"]["ci"] == pytest.approx(1.27062, rel=1e-4)
    with pytest.raises(ValueError, match="reference"):
        report.paired_differences({"a": (Ra, b)}, reference="c")
    with pytest.raises(ValueError, match="same seeds"):
        report.paired_differences({"a": (Ra, b), "c": (Ra[:1], b[:1])}, reference="a")
    table = report.summary_table({"a": (Ra, b), "b": (Rb, b)}, extra={"a": {"lambda": "3"}})
    assert table.splitlines()[0].startswith("| strategy | lambda | average_performance")
    assert "| a | 3 | +0.800 ± " in table and "| b | - | +0.500 ± " in table


def test_comparison_plot_is_a_png(tmp_path):
    R = np.random.default_rng(0).random((3, 2, 2))
    path = report.plot_comparison({"x": (R, np.zeros((3, 2))), "y": (R * 0.5, np.zeros((3, 2)))},
                                  str(tmp_path / "cmp.png"))
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
