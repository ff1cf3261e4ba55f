"""The figures of the measures added in issue 12 draw what they are given (Agg backend)."""
import matplotlib

matplotlib.use("Agg")

import numpy as np
import pandas as pd
import pytest

from lib.protocol import plots


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
