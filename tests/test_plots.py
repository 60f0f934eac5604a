"""The notebooks' shared display helpers (featlib.plots): number and p-value formats, shared colour scales,
a heatmap of a metric scorable nowhere."""

import warnings

import matplotlib
import numpy as np
import pandas as pd

from featlib import plots

matplotlib.use("Agg")


def test_p_values_below_a_thousandth_are_not_printed_as_numbers():
    assert plots.format_p(1 / 1001) == "p < 0.001"  # the smallest p of 1,000 re-pairings with the +1 correction
    assert plots.format_p(0.001) == "p = 0.001" and plots.format_p(0.01234) == "p = 0.012" and plots.format_p(1.0) == "p = 1"


def test_numbers_have_three_significant_digits_and_a_dash_when_not_scorable():
    assert [plots.format_number(v) for v in (0.119374, -0.0022321, 2.1432, 99.54, 2048.0, 1862400.0, 1.0, 0.0, 8.7e-05, np.nan)] == [
        "0.119", "-0.00223", "2.14", "99.5", "2,048", "1,862,400", "1", "0", "8.70e-05", "—"]
    plots.display_options()
    try:
        assert "-0.00223" in repr(pd.DataFrame({"x": [-0.0022321]})) and "e-03" not in repr(pd.DataFrame({"x": [-0.0022321]}))
    finally:
        pd.reset_option("display.float_format")


def test_value_range_ignores_nan_and_is_none_when_nothing_is_finite():
    assert plots.value_range(np.array([[np.nan, 0.2], [0.5, np.nan]]), np.array([-0.1, np.inf])) == (-0.1, 0.5)
    assert plots.value_range(np.full((2, 2), np.nan)) == (None, None)


def test_a_heatmap_without_a_finite_cell_says_so_and_warns_nothing():
    import matplotlib.pyplot as plt

    fig, (empty, full) = plt.subplots(1, 2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plots.heatmap(empty, np.full((2, 3), np.nan), [0, 1], ["a", "b", "c"], "SVCCA", *plots.value_range(np.full(3, np.nan)))
        plots.heatmap(full, np.array([[0.1, np.nan], [0.3, 0.4]]), [0, 1], ["a", "b"], "RSA")
    assert [t.get_text() for t in empty.texts] == ["not scorable in any cell"]
    assert sorted(t.get_text() for t in full.texts) == [".10", ".30", ".40"]
    assert len(fig.axes) == 3, "one colour bar: the panel with numbers only"
    plt.close(fig)
