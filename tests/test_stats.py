"""Known-answer tests for lib.protocol.stats."""

import json
import math
import warnings

import numpy as np
import pandas as pd
import pytest

from lib.protocol import stats
from lib.protocol.stats import PAIR_COLUMNS


def fisher_ci(r, n):
    z, half = math.atanh(r), 1.96 / math.sqrt(n - 3)
    return math.tanh(z - half), math.tanh(z + half)


def test_perfect_line():
    x = [1, 2, 3, 4, 5]
    res = stats.correlation(x, [2 * v + 1 for v in x])
    assert res["pearson_r"] == pytest.approx(1.0)
    assert res["spearman_rho"] == pytest.approx(1.0)
    assert res["p_value"] == pytest.approx(0.0, abs=1e-12)
    assert res["n"] == 5 and res["note"] is None
    assert res["ci95_low"] == pytest.approx(1.0) and res["ci95_high"] == pytest.approx(1.0)


def test_hand_computed_four_points():
    # dx = dy-permuted (-1.5, -.5, .5, 1.5): sum dx*dy = 2.25 - .25 - .25 + 2.25 = 4, sxx = syy = 5 -> r = 0.8
    # t = 0.8 * sqrt(2) / 0.6 = 1.8856; df = 2: p = 1 - t / sqrt(t^2 + 2) = 1 - 0.8 = 0.2
    # CI: atanh(0.8) = 1.0986, se = 1 / sqrt(1) -> tanh(1.0986 -/+ 1.96) = (-0.6970, 0.9956)
    res = stats.correlation([1, 2, 3, 4], [1, 3, 2, 4])
    assert res["pearson_r"] == pytest.approx(0.8)
    assert res["p_value"] == pytest.approx(0.2)
    assert res["ci95_low"] == pytest.approx(-0.6970, abs=1e-3)
    assert res["ci95_high"] == pytest.approx(0.9956, abs=1e-3)
    assert res["spearman_rho"] == pytest.approx(0.8)  # the values are their own ranks


def test_ten_pairs_against_numpy_and_formula():
    flip = np.array([0.015, 0.05, 0.12, 0.30, 0.22, 0.08, 0.40, 0.03, 0.18, 0.26])
    danger = np.array([0.985, 0.90, 0.70, 0.35, 0.55, 0.88, 0.30, 0.93, 0.52, 0.50])
    res = stats.correlation(flip, danger)
    r = np.corrcoef(flip, danger)[0, 1]
    assert res["pearson_r"] == pytest.approx(r)
    assert r < -0.9
    low, high = fisher_ci(r, 10)
    assert res["ci95_low"] == pytest.approx(low, abs=1e-3)
    assert res["ci95_high"] == pytest.approx(high, abs=1e-3)
    assert res["p_value"] < 0.001
    assert all(type(res[k]) is float for k in ("pearson_r", "p_value", "ci95_low", "spearman_rho"))
    assert type(res["n"]) is int


def test_small_n_has_no_ci():
    res = stats.correlation([1, 2, 3], [1, 3, 2])
    assert res["n"] == 3
    assert res["pearson_r"] == pytest.approx(0.5)  # sum dxdy = 1, sxx = syy = 2
    assert res["ci95_low"] is None and res["ci95_high"] is None
    res = stats.correlation([1.0], [2.0])
    assert res["pearson_r"] is None and "pair" in res["note"]


def test_constant_input_does_not_raise():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = stats.correlation([0.1, 0.2, 0.3, 0.4], [0.5, 0.5, 0.5, 0.5])
    assert res["pearson_r"] is None and res["spearman_rho"] is None
    assert "constant" in res["note"]
    json.dumps(res)


def test_nan_pairs_dropped():
    res = stats.correlation([1, 2, np.nan, 3, 4], [1, 3, 5, 2, 4])
    assert res["n"] == 4 and res["pearson_r"] == pytest.approx(0.8)


def summary(config, dataset, flip, dangerous, skipped=None, **extra):
    quads = ("Ideal", "Fragile", "Dangerous", "Worst")
    rest = (1 - flip - dangerous) / 2
    s = {
        "config": config, "dataset": dataset, "n_samples": 100, "flip_rate": flip,
        "pairwise_flip_rate": flip / 2, "accuracy": 0.8,
        "quadrant_fractions": dict(zip(quads, [rest, flip / 2, dangerous, flip / 2 + rest])),
        "accuracy_by_quadrant": dict(zip(quads, [0.9, 0.7, 0.95, None])),
        "entropy_by_quadrant": dict(zip(quads, [0.3, 0.8, 0.1, None])),
        "quadrant_counts": {}, "image_reliance_rate": 0.2,
    }
    if skipped is not None:
        s["n_skipped"] = skipped
    s.update(extra)
    return s


def write_runs(root, summaries):
    for name, s in summaries.items():
        (root / name).mkdir(parents=True)
        (root / name / "summary.json").write_text(json.dumps(s))


def test_gather_runs(tmp_path):
    write_runs(tmp_path, {
        "run_c": summary("medgemma_base", "padchest", 0.2, 0.6, {"no_image": 2, "bad_label": 1}),
        "run_a": summary("llava_rad_base", "padchest", 0.015, 0.985, {}),
        "run_b": summary("llava_rad_base", "mimic", 0.1, 0.8),
    })
    (tmp_path / "not_a_run").mkdir()
    pairs = stats.gather_runs(tmp_path)
    assert tuple(pairs.columns) == PAIR_COLUMNS
    assert list(pairs["pair"]) == ["llava_rad_base__mimic", "llava_rad_base__padchest", "medgemma_base__padchest"]
    assert list(pairs["n_skipped"]) == [0, 0, 3]
    assert list(pairs["frac_Dangerous"]) == pytest.approx([0.8, 0.985, 0.6])
    assert list(pairs["pairwise_flip_rate"]) == pytest.approx([0.05, 0.0075, 0.1])
    assert pairs["acc_Worst"].isna().all() and pairs["entropy_Worst"].isna().all()
    assert pairs["acc_Dangerous"].tolist() == pytest.approx([0.95] * 3)

    res = stats.flip_vs_dangerous(pairs)
    assert res["pairs"] == list(pairs["pair"])
    assert res["n"] == 3 and res["ci95_low"] is None
    assert res["pearson_r"] == pytest.approx(np.corrcoef([0.1, 0.015, 0.2], [0.8, 0.985, 0.6])[0, 1])


def test_flip_vs_dangerous_skips_missing_pairs():
    pairs = pd.DataFrame({"pair": ["a", "b", "c", "d", "e"], "flip_rate": [1, 2, 3, 4, np.nan],
                          "frac_Dangerous": [1, 3, 2, 4, 0.5]})
    res = stats.flip_vs_dangerous(pairs)
    assert res["pairs"] == ["a", "b", "c", "d"] and res["pearson_r"] == pytest.approx(0.8)


def test_gather_runs_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="evaluate notebooks"):
        stats.gather_runs(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="evaluate notebooks"):
        stats.gather_runs(tmp_path)
    bad = summary("m", "d", 0.1, 0.8)
    del bad["accuracy"]
    write_runs(tmp_path / "one", {"r1": bad})
    with pytest.raises(ValueError, match="accuracy"):
        stats.gather_runs(tmp_path / "one")
    write_runs(tmp_path / "two", {"r1": summary("m", "d", 0.1, 0.8), "r2": summary("m", "d", 0.2, 0.7)})
    with pytest.raises(ValueError, match="m__d"):
        stats.gather_runs(tmp_path / "two")
