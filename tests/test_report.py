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


PNG = b"\x89PNG\r\n\x1a\n"


def _rng_inputs():
    rng = np.random.default_rng(0)
    R = rng.uniform(-1, 1, (3, 2, 2))
    traces = {"score": rng.random((3, 2, 4)), "penalty": rng.random((3, 2, 4)),
              "param_l2": np.where(np.arange(4) == 3, 1.0, np.nan) * np.ones((3, 2, 4))}
    return R, traces


def _all_plots(R, traces, tmp_path=None):
    """Every plot helper once; with ``tmp_path``, each also writes a file there."""
    f = (lambda name: None) if tmp_path is None else (lambda name: str(tmp_path / "sub" / f"{name}.png"))
    b = np.zeros(R.shape[:2])
    return {"matrix": report.plot_matrix(R, f("matrix")),
            "scores": report.plot_scores(R, traces, f("scores")),
            "divergence": report.plot_divergence(traces, f("divergence")),
            "comparison": report.plot_comparison({"x": (R, b), "y": (R * 0.5, b)}, f("comparison")),
            "sweep": report.plot_sweep([0.0, 1.0, 10.0], np.stack([R, R * 0.5, R * 0.25]), np.stack([b, b, b]),
                                       path=f("sweep"))}


def test_plots_leave_backend_and_pyplot_alone(tmp_path):
    import matplotlib
    import matplotlib.pyplot as plt
    from matplotlib.figure import Figure
    previous = matplotlib.get_backend()
    plt.switch_backend("svg")           # a backend other than Agg, so that a switch to Agg would show
    backend = matplotlib.get_backend()
    open_figure = plt.figure()          # a user's own figure must stay the current one
    before = plt.get_fignums()
    try:
        R, traces = _rng_inputs()
        for with_files in (None, tmp_path):
            figures = _all_plots(R, traces, with_files)
            assert all(isinstance(fig, Figure) for fig in figures.values())
            assert matplotlib.get_backend() == backend
            assert plt.get_fignums() == before and plt.gcf() is open_figure
    finally:
        plt.close(open_figure)
        plt.switch_backend(previous)


def test_matrix_figure_holds_the_mean_matrix_and_its_numbers():
    R = np.array([[[1.0, -0.5], [0.25, 0.75]], [[0.0, 0.5], [0.75, 0.25]]])
    fig = report.plot_matrix(R, title="mine")
    ax = fig.axes[0]
    np.testing.assert_allclose(ax.images[0].get_array(), [[0.5, 0.0], [0.5, 0.5]])
    assert [t.get_text() for t in ax.texts] == ["+0.50", "+0.00", "+0.50", "+0.50"]
    assert ax.get_title() == "mine"
    np.testing.assert_allclose(report.plot_matrix(R[0]).axes[0].images[0].get_array(), R[0])  # [T, T] as is
    with pytest.raises(ValueError, match="R must be"):
        report.plot_matrix(np.zeros((2, 3)))


def test_scores_figure_lines_are_the_inputs():
    R, traces = _rng_inputs()
    ax = report.plot_scores(R, traces).axes[0]
    training, task0, task1 = ax.lines[:3]
    np.testing.assert_allclose(training.get_ydata(), traces["score"].mean(axis=0).reshape(-1))
    np.testing.assert_allclose(task0.get_xdata(), [3, 7])  # the last episode of each task
    np.testing.assert_allclose(task0.get_ydata(), R.mean(axis=0)[:, 0])
    np.testing.assert_allclose(task1.get_ydata(), R.mean(axis=0)[:, 1])
    assert [line.get_xdata()[0] for line in ax.lines[3:]] == [3.5]  # one task boundary


def test_divergence_figure_has_a_panel_per_trace_and_skips_unmeasured_episodes():
    R, traces = _rng_inputs()
    fig = report.plot_divergence(traces)
    assert [ax.get_ylabel() for ax in fig.axes] == ["penalty", "param_l2"]
    np.testing.assert_allclose(fig.axes[0].lines[0].get_ydata(), traces["penalty"].mean(axis=0).reshape(-1))
    np.testing.assert_allclose(fig.axes[1].lines[0].get_xdata(), [3, 7])      # measured at each task's end only
    np.testing.assert_allclose(fig.axes[1].lines[0].get_ydata(), [1.0, 1.0])
    with pytest.raises(ValueError, match="traces must hold"):
        report.plot_divergence({"score": traces["score"]})


def test_comparison_figure_bars_are_means_with_intervals():
    R, _ = _rng_inputs()
    b = np.zeros((3, 2))
    fig = report.plot_comparison({"x": (R, b), "y": (R * 0.5, b)}, metrics="backward_transfer")
    heights = [p.get_height() for p in fig.axes[0].patches]
    expected = [report.summary(R, b)["backward_transfer"]["mean"], report.summary(R * 0.5, b)["backward_transfer"]["mean"]]
    np.testing.assert_allclose(heights, expected)
    with pytest.raises(ValueError, match="metrics must be"):
        report.plot_comparison({"x": (R, b)}, metrics=("accuracy",))


def test_sweep_figure_plots_each_values_mean_and_interval():
    R, _ = _rng_inputs()
    Rs, bs = np.stack([R, R * 0.5, R * 0.25]), np.zeros((3, 3, 2))
    fig = report.plot_sweep([0.0, 1.0, 100.0], Rs, bs, metrics=("average_performance", "backward_transfer"))
    ax = fig.axes[0]
    for line, metric in zip(ax.lines, ("average_performance", "backward_transfer")):
        stats = [report.summary(Rs[k], bs[k])[metric] for k in range(3)]
        np.testing.assert_allclose(line.get_xdata(), [0.0, 1.0, 100.0])
        np.testing.assert_allclose(line.get_ydata(), [s["mean"] for s in stats])
    band = ax.collections[0].get_paths()[0].vertices[:, 1]      # the first band spans mean +- half-width
    stats = [report.summary(Rs[k], bs[k])["average_performance"] for k in range(3)]
    assert band.max() == pytest.approx(max(s["mean"] + s["ci"] for s in stats))
    assert band.min() == pytest.approx(min(s["mean"] - s["ci"] for s in stats))
    assert ax.get_xscale() == "symlog" and ax.get_xlabel() == "lambda"
    assert report.plot_sweep([1.0, 2.0, 3.0], Rs).axes[0].get_xscale() == "linear"
    with pytest.raises(ValueError, match="R must be"):
        report.plot_sweep([0.0, 1.0], Rs)
    with pytest.raises(ValueError, match="baseline must be"):
        report.plot_sweep([0.0, 1.0, 2.0], Rs, bs[:, :2])


def test_plots_write_pngs_only_when_asked(tmp_path):
    R, traces = _rng_inputs()
    _all_plots(R, traces)
    assert list(tmp_path.iterdir()) == []
    figures = _all_plots(R, traces, tmp_path)
    written = sorted(p.name for p in (tmp_path / "sub").iterdir())
    assert written == sorted(f"{name}.png" for name in figures)  # no temporary file left behind
    for name in figures:
        assert (tmp_path / "sub" / f"{name}.png").read_bytes()[:8] == PNG
    assert figures["matrix"]._repr_png_()[:8] == PNG    # how Jupyter shows it inline
    with pytest.raises(TypeError, match="path must be"):
        report.plot_matrix(R, 3)


def test_comparison_plot_positional_path_still_writes_a_png(tmp_path):
    R = np.random.default_rng(0).random((3, 2, 2))
    fig = report.plot_comparison({"x": (R, np.zeros((3, 2))), "y": (R * 0.5, np.zeros((3, 2)))},
                                 str(tmp_path / "cmp.png"))
    assert len(fig.axes) == 2 and open(tmp_path / "cmp.png", "rb").read(8) == PNG
    for ax, metric in zip(fig.axes, ("average_performance", "backward_transfer")):   # the bars are the summaries
        want = [report.summary(r, np.zeros((3, 2)))[metric]["mean"] for r in (R, R * 0.5)]
        assert ax.get_title() == metric
        np.testing.assert_allclose([bar.get_height() for bar in ax.patches], want, rtol=1e-12)
