"""The figures of the measures added in issue 12 draw what they are given (Agg backend)."""
import matplotlib

matplotlib.use("Agg")

import numpy as np
import pandas as pd
import pytest

from lib.protocol import plots
from lib.protocol.breakdown import proportion_ci


@pytest.fixture
def pairs():
    return pd.DataFrame({
        "pair": ["a__mimic", "b__padchest", "c__mimic"],
        "frac_Dangerous": [0.6, 0.3, 0.8], "frac_Dangerous_low": [0.5, 0.25, np.nan],
        "frac_Dangerous_high": [0.7, 0.35, np.nan],
        "frac_image_blind": [0.1, 0.2, np.nan], "frac_image_blind_low": [0.05, 0.1, np.nan],
        "frac_image_blind_high": [0.15, 0.3, np.nan],
        "frac_prior_coincident": [0.5, 0.1, np.nan],
        "auroc_entropy_dangerous": [0.3, 0.5, 0.45], "auroc_entropy_dangerous_low": [0.2, 0.4, 0.3],
        "auroc_entropy_dangerous_high": [0.4, 0.6, 0.6],
    })


def test_dangerous_forest(pairs):
    fig = plots.dangerous_forest(pairs)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == list(pairs.pair)
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["Dangerous", "image-blind", "prior-coincident"]
    dangerous = ax.containers[0]                 # errorbar container of the first series
    x, _ = dangerous.lines[0].get_data()
    assert list(x) == [0.6, 0.3, 0.8]
    segments = dangerous.lines[2][0].get_segments()
    assert segments[0][:, 0].tolist() == pytest.approx([0.5, 0.7])
    assert segments[2][:, 0].tolist() == pytest.approx([0.8, 0.8])   # no interval: no bar


def test_dangerous_forest_keeps_long_row_labels_inside_the_figure(pairs):
    long = pairs.assign(pair=[f"screens/{p}: a-long-config-name__mimic-cxr (n=344)" for p in pairs.pair])
    fig = plots.dangerous_forest(long)
    assert fig.get_size_inches()[0] > plots.dangerous_forest(pairs).get_size_inches()[0]
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    left = min(t.get_window_extent(renderer).x0 for t in fig.axes[0].get_yticklabels())
    assert left >= 0                   # tight_layout found room: no label starts off the figure


def test_screening_auroc_and_reliance(pairs):
    fig = plots.screening_auroc(pairs)
    x, _ = fig.axes[0].containers[0].lines[0].get_data()
    assert list(x) == [0.3, 0.5, 0.45]
    table = pd.DataFrame({"quadrant": ["Ideal", "Ideal", "Dangerous", "Worst"],
                          "reliance": [0.7, 0.9, 0.05, np.nan]})
    fig = plots.reliance_by_quadrant(table, title="t")
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == ["Ideal (n=2)", "Fragile (n=0)", "Dangerous (n=1)", "Worst (n=0)"]
    assert sum(p.get_height() for p in fig.axes[0].patches) == 2


def test_pair_distributions_all_quadrants_or_one():
    table = pd.DataFrame({"quadrant": ["Ideal", "Ideal", "Dangerous", "Worst"],
                          "entropy": [0.2, 0.9, 0.1, 0.5], "reliance": [0.7, 0.9, 0.05, np.nan]})
    fig = plots.pair_distributions(table, title="p")
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == ["Ideal: entropy (n=2)", "Fragile: entropy (n=0)", "Dangerous: entropy (n=1)",
                      "Worst: entropy (n=1)", "Ideal: reliance (n=2)", "Fragile: reliance (n=0)",
                      "Dangerous: reliance (n=1)", "Worst: reliance (n=0)"]
    assert sum(p.get_height() for p in fig.axes[0].patches) == 2
    assert [t.get_text() for t in fig.axes[1].texts] == ["no samples"]
    fig = plots.pair_distributions(table, quadrant="Dangerous")
    assert [ax.get_title() for ax in fig.axes] == ["Dangerous: entropy (n=1)", "Dangerous: reliance (n=1)"]
    with pytest.raises(ValueError, match="unknown quadrant 'Safe'"):
        plots.pair_distributions(table, quadrant="Safe")


def test_accuracy_by_quadrant_has_wilson_bars_and_n():
    pairs = pd.DataFrame({"pair": ["a", "b"], "n_samples": [3, 10],
                          **{f"frac_{q}": [1 / 3, 0.1] if q == "Ideal" else [2 / 3, 0.9] if q == "Dangerous"
                             else [0.0, 0.0] for q in ("Ideal", "Fragile", "Dangerous", "Worst")},
                          **{f"acc_{q}": [1.0, 0.0] if q == "Ideal" else [0.5, 1 / 3 + 1e-12] if q == "Dangerous"
                             else [np.nan, np.nan] for q in ("Ideal", "Fragile", "Dangerous", "Worst")}})
    fig = plots.accuracy_by_quadrant(pairs)   # 1/3 + 1e-12 of 9: an interval just below the value
    ideal, fragile, dangerous, _ = fig.axes
    assert [t.get_text() for t in ideal.texts] == ["n=1", "n=1"]   # samples per pair, at the right
    assert [t.get_text() for t in dangerous.texts] == ["n=2", "n=9"]
    assert [t.get_text() for t in fragile.texts] == ["n=0", "n=0"]
    assert [t.get_text() for t in ideal.get_yticklabels()] == ["a", "b"]
    bars = ideal.containers[0].lines[2][0].get_segments()       # the Ideal panel's error bars
    low, high = bars[0][:, 0]
    assert (low, high) == pytest.approx((0.2065, 1.0), abs=1e-3)   # Wilson for 1 of 1
    low, high = dangerous.containers[0].lines[2][0].get_segments()[1][:, 0]
    assert low == pytest.approx(proportion_ci(3, 9)[0]) and high == pytest.approx(proportion_ci(3, 9)[1])


def test_flip_vs_dangerous_says_too_few_and_distributions_by_pair():
    pairs = pd.DataFrame({"pair": ["a__m", "b__m"], "config": ["a", "b"], "dataset": ["m", "m"],
                          "flip_rate": [0.1, 0.2], "frac_Dangerous": [0.5, 0.4]})
    fig = plots.flip_vs_dangerous(pairs, {"pearson_r": -1.0, "p_value": 1.0, "n": 2})
    assert "too few pairs to tell (fewer than 8)" in fig.axes[0].get_title()
    fig = plots.flip_vs_dangerous(pairs, {"pearson_r": -0.9, "p_value": 0.01, "n": 9, "independence_r": -0.8})
    assert "mostly arithmetic: independent axes alone give r = -0.80" in fig.axes[0].get_title()
    tables = {"b": pd.DataFrame({"quadrant": ["Ideal", "Dangerous"], "entropy": [0.2, 0.9]}),
              "a": pd.DataFrame({"quadrant": ["Ideal"], "entropy": [0.5]})}
    fig = plots.distributions_by_pair(tables, "entropy", "entropy")
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == ["a", "b"]
    assert [t.get_text() for t in fig.axes[2].texts] == ["n=0", "n=1"]   # Dangerous: a has none


def test_sample_grid_wraps_each_title_line_so_neighbours_never_overlap():
    long = "Dangerous: pleural effusion?\nlabel yes, pred yes, text-only no, and a longer note that must wrap"
    fig = plots.sample_grid([np.zeros((8, 8))] * 2, [long, "Ideal: nodule?"], columns=2)
    first, second = (ax.get_title() for ax in fig.axes)
    assert first.startswith("Dangerous: pleural effusion?\nlabel yes, pred yes,")
    assert max(len(line) for line in first.splitlines()) <= plots.TITLE_WIDTH
    assert len(first.splitlines()) == 3 and second == "Ideal: nodule?"
