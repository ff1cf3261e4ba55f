"""Known-answer tests for lib.protocol.stats."""

import json
import math
import warnings

import numpy as np
import pandas as pd
import pytest

from lib.protocol import breakdown, stats
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


# -- added beside the paper's statistics (issue 12) --------------------------------------------

from lib.protocol import taxonomy  # noqa: E402
from lib.protocol.summary import summarize  # noqa: E402


def test_permutation_p_is_exact_for_four_pairs():
    # x = ranks 1..4, y = (1, 3, 2, 4): r = 0.8 = 1 - sum(d^2) / 10. Of the 24 re-pairings,
    # |r| >= 0.8 needs sum d^2 <= 2 (identity, 3 adjacent swaps) or >= 18 (reverse and its 3
    # adjacent swaps): 8 / 24.
    assert stats.permutation_p([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(1 / 3)
    assert stats.permutation_p([1, 2], [2, 1]) is None
    assert stats.permutation_p([1, 2, 3], [5, 5, 5]) is None
    ten = stats.permutation_p(np.arange(10), np.arange(10) ** 2, resamples=2000, seed=1)
    assert ten < 0.002  # a monotone relation: almost no re-pairing reaches its r


def test_independence_r_by_hand():
    # rho constant: (1 - f)(1 - rho) is a decreasing line in f -> r = -1
    pairs = pd.DataFrame({"pair": list("abcd"), "flip_rate": [0.1, 0.2, 0.3, 0.4],
                          "image_reliance_rate": [0.5] * 4})
    assert stats.independence(pairs)["pearson_r"] == pytest.approx(-1.0)
    # f = 0, .5, 0, .5 and rho = 0, 0, .5, .5 -> expected = 1, .5, .5, .25:
    # fc = -.25, .25, -.25, .25; ec = .4375, -.0625, -.0625, -.3125 -> sum fc*ec = -.1875;
    # sum fc^2 = .25, sum ec^2 = .296875 -> r = -.1875 / sqrt(.25 * .296875) = -0.688247
    pairs = pd.DataFrame({"pair": list("abcd"), "flip_rate": [0, 0.5, 0, 0.5],
                          "image_reliance_rate": [0, 0, 0.5, 0.5]})
    assert stats.independence(pairs)["pearson_r"] == pytest.approx(-0.688247, abs=1e-6)
    assert stats.independence(pairs.drop(columns="image_reliance_rate"))["pearson_r"] is None


def uniform_table(quadrant, n=6, n_images=3, agreement=1.0):
    """A samples table whose samples are all in one quadrant (and of one reference agreement)."""
    return pd.DataFrame({"sample_id": [f"s{i}" for i in range(n)],
                         "image_id": [f"i{i % n_images}" for i in range(n)],
                         "quadrant": quadrant, "consistent": quadrant in ("Ideal", "Dangerous"),
                         "reference_agreement": agreement})


def test_bootstrap_correlation_of_uniform_pairs_has_zero_width():
    # Every pair's samples are alike, so resampling them never moves a rate: x = (0, 1, 0, 1),
    # y = (1, 0, 0, 0); xc = +-.5, yc = (.75, -.25, -.25, -.25): r = -.5 / sqrt(1 * .75)
    tables = [uniform_table("Dangerous"), uniform_table("Worst"), uniform_table("Ideal"),
              uniform_table("Fragile", n_images=1)]
    r = -0.5 / math.sqrt(0.75)
    res = stats.bootstrap_correlation(tables, resamples=200)
    assert res["ci95"] == pytest.approx([r, r])
    assert "images" in res["method"]
    assert stats.bootstrap_correlation(tables[:2])["ci95"] is None  # fewer than 3 pairs
    with pytest.raises(ValueError, match="bootstrap_resamples"):
        stats.bootstrap_correlation(tables, resamples=0)


def mixed_table(n_images, flip, dangerous, rng):
    """n_images images x 2 samples; each sample inconsistent with prob flip, else Dangerous with
    prob dangerous / (1 - flip), else Ideal."""
    u = rng.random(2 * n_images)
    quadrant = np.where(u < flip, "Worst", np.where(u < flip + dangerous, "Dangerous", "Ideal"))
    return pd.DataFrame({"image_id": [f"i{k // 2}" for k in range(2 * n_images)], "quadrant": quadrant,
                         "consistent": quadrant != "Worst", "reference_agreement": 1.0})


def test_bootstrap_correlation_covers_the_observed_r_and_narrows_with_more_samples():
    rng = np.random.default_rng(0)
    rates = [(0.05, 0.9), (0.15, 0.7), (0.3, 0.5), (0.4, 0.3), (0.2, 0.6)]
    widths = []
    for n in (40, 400):
        tables = [mixed_table(n, f, d, rng) for f, d in rates]
        x = [1 - t.consistent.mean() for t in tables]
        y = [(t.quadrant == "Dangerous").mean() for t in tables]
        r = stats.correlation(x, y)["pearson_r"]
        low, high = stats.bootstrap_correlation(tables, resamples=500, seed=2)["ci95"]
        assert low <= r <= high
        widths.append(high - low)
    assert widths[1] < widths[0]


def summary_with_new_keys(config, dataset, flip, dangerous, reliance, blind):
    s = summary(config, dataset, flip, dangerous, image_reliance_rate=reliance,
                sensitivity=0.7, specificity=0.9, balanced_accuracy=0.8, blank_change_rate=0.6,
                dangerous_breakdown={"image-blind": blind, "prior-coincident": dangerous - blind},
                image_blind={"among_dangerous": blind / dangerous},
                screening={"auroc_entropy_dangerous": 0.3, "catch_rate": {}},
                ci95={"flip_rate": [flip - 0.01, flip + 0.01], "accuracy": [0.7, 0.9],
                      "balanced_accuracy": None,
                      "quadrant_fractions": {"Dangerous": [dangerous - 0.05, dangerous + 0.05]},
                      "dangerous_breakdown": {"image-blind": [blind / 2, blind * 2]},
                      "auroc_entropy_dangerous": [0.2, 0.4]})
    return s


def test_gather_runs_reads_the_new_keys_and_tolerates_old_summaries(tmp_path):
    write_runs(tmp_path, {
        "new": summary_with_new_keys("m1", "d", 0.1, 0.8, 0.3, 0.2),
        "old": summary("m2", "d", 0.2, 0.6),
    })
    pairs = stats.gather_runs(tmp_path).set_index("run")
    assert tuple(stats.gather_runs(tmp_path).columns) == PAIR_COLUMNS
    new, old = pairs.loc["new"], pairs.loc["old"]
    assert new["image_reliance_rate"] == pytest.approx(0.3) and old["image_reliance_rate"] == pytest.approx(0.2)
    assert new["frac_image_blind"] == pytest.approx(0.2) and new["frac_prior_coincident"] == pytest.approx(0.6)
    assert new["auroc_entropy_dangerous"] == pytest.approx(0.3) and new["blank_change_rate"] == pytest.approx(0.6)
    assert new["image_blind_among_dangerous"] == pytest.approx(0.25)
    assert new["frac_Dangerous_low"] == pytest.approx(0.75) and new["frac_Dangerous_high"] == pytest.approx(0.85)
    assert new["frac_image_blind_low"] == pytest.approx(0.1) and new["auroc_entropy_dangerous_high"] == pytest.approx(0.4)
    assert math.isnan(new["balanced_accuracy_low"]) and math.isnan(new["frac_prior_coincident_low"])
    for column in ("frac_image_blind", "balanced_accuracy", "frac_image_blind_low", "auroc_entropy_dangerous"):
        assert math.isnan(old[column]), column
    # a rate over all samples without a recorded interval: Wilson over them, as the pages show it
    assert [old["frac_Dangerous_low"], old["frac_Dangerous_high"]] == pytest.approx(breakdown.proportion_ci(60, 100))


def test_flip_vs_dangerous_with_samples_tables(tmp_path):
    rng = np.random.default_rng(4)
    rates = [(0.05, 0.9, 0.1), (0.15, 0.7, 0.2), (0.3, 0.5, 0.25), (0.4, 0.3, 0.3)]
    runs, tables = {}, {}
    for k, (f, d, rho) in enumerate(rates):
        table = mixed_table(60, f, d, rng)
        flip = float(1 - table.consistent.mean())
        dangerous = float((table.quadrant == "Dangerous").mean())
        runs[f"run{k}"] = summary_with_new_keys(f"m{k}", "d", flip, dangerous, rho, dangerous)
        tables[f"run{k}"] = table
    write_runs(tmp_path, runs)
    pairs = stats.gather_runs(tmp_path)
    res = stats.flip_vs_dangerous(pairs, tables, bootstrap_resamples=300, seed=0)
    json.dumps(res)
    assert res["n"] == 4 and res["pairs"] == list(pairs["pair"])
    low, high = res["bootstrap_ci95"]
    assert low <= res["pearson_r"] <= high and "images" in res["bootstrap_method"]
    assert 0 < res["permutation_p"] <= 1
    expected = (1 - pairs.flip_rate) * (1 - pairs.image_reliance_rate)
    assert res["independence_r"] == pytest.approx(np.corrcoef(pairs.flip_rate, expected)[0, 1])
    # every Dangerous sample of these tables has reference agreement 1: the same correlation and interval
    blind = res["image_blind"]
    assert blind["pearson_r"] == pytest.approx(res["pearson_r"])
    assert blind["bootstrap_ci95"] == pytest.approx(res["bootstrap_ci95"])
    # the old call still works and leaves the interval out
    old = stats.flip_vs_dangerous(pairs)
    assert old["bootstrap_ci95"] is None and old["pearson_r"] == pytest.approx(res["pearson_r"])
    with pytest.raises(ValueError, match="no samples table"):
        stats.flip_vs_dangerous(pairs, {"other": tables["run0"]})


def classified_run(n, flip_p, seed):
    """A samples table written by lib.protocol.taxonomy (one sample per image)."""
    rng = np.random.default_rng(seed)
    rows, samples = [], []
    for i in range(n):
        p0 = rng.random()
        rows.append(dict(sample_id=f"s{i}", prompt_id=0, condition="image", p_yes=p0))
        flipped = 1 - p0 if rng.random() < flip_p else p0
        rows.append(dict(sample_id=f"s{i}", prompt_id=1, condition="image", p_yes=flipped))
        rows.append(dict(sample_id=f"s{i}", prompt_id=0, condition="text_only", p_yes=rng.random()))
        samples.append(dict(sample_id=f"s{i}", image_id=f"i{i}", finding="f", label="yes"))
    preds = taxonomy.add_answers(pd.DataFrame(rows))
    table = taxonomy.classify_samples(preds, pd.DataFrame(samples))
    return table, summarize(table, preds, bootstrap_resamples=10)


def test_bootstrap_correlation_reads_taxonomy_tables():
    runs = [classified_run(80, f, k) for k, f in enumerate((0.05, 0.2, 0.4, 0.6))]
    x = [s["flip_rate"] for _, s in runs]
    y = [s["quadrant_fractions"]["Dangerous"] for _, s in runs]
    r = stats.correlation(x, y)["pearson_r"]
    low, high = stats.bootstrap_correlation([t for t, _ in runs], resamples=300)["ci95"]
    assert low <= r <= high
    # the image-blind variable: [Dangerous] x reference agreement over the samples that have one
    table = uniform_table("Dangerous", n=4, agreement=np.array([0.5, 0.25, np.nan, 1.0]))
    value, weight = stats.BOOTSTRAP_VARIABLES["frac_image_blind"](table)
    assert value.tolist() == [0.5, 0.25, 0.0, 1.0] and weight.tolist() == [1, 1, 0, 1]


def test_readable_correlation_names_its_keys_and_never_rounds_a_p_value_to_zero():
    result = {"pearson_r": -0.7661, "p_value": 8.31e-05, "ci95_low": -0.902, "ci95_high": -0.489,
              "spearman_rho": -0.748, "spearman_p": 0.0041, "n": 20, "bootstrap_ci95": [-0.835, -0.691],
              "permutation_p": 1 / 10000, "independence_r": None, "note": None}
    table = stats.readable_correlation(result)
    assert table.to_dict() == {
        "Pearson r, Fisher-z 95 % CI (pearson_r, ci95_low, ci95_high)": "-0.766 (95 % CI -0.902 to -0.489)",
        "Pearson r, bootstrap 95 % CI over images (bootstrap_ci95)": "-0.766 (95 % CI -0.835 to -0.691)",
        "p-value (p_value)": "8.3e-05", "permutation p-value (permutation_p)": "1.0e-04",
        "Spearman rho (spearman_rho)": "-0.748", "Spearman p-value (spearman_p)": "0.004", "pairs (n)": "20"}
    few = stats.readable_correlation({"n": 2, "pearson_r": None, "bootstrap_ci95": None, "independence_r": 0.5,
                                      "note": "too few pairs"})
    assert few["Pearson r, Fisher-z 95 % CI (pearson_r, ci95_low, ci95_high)"] == "n/a"
    assert few["p-value (p_value)"] == "n/a" and few["r of independent axes (independence_r)"] == "0.500"
    assert few["note"] == "too few pairs"
    assert stats.p_text(0.0123) == "0.012" and stats.p_text(float("nan")) == "n/a"
