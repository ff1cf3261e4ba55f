"""Known-answer tests of the cluster bootstrap over images (lib.protocol.intervals): degenerate
runs, a proportion's interval against the normal approximation, clustering widening it, speed.
The crossed bootstrap of the image-blind rate: tests/test_references.py."""
import math
import time

import numpy as np
import pandas as pd
import pytest
from statsmodels.stats.proportion import proportion_confint

from lib.protocol import taxonomy as tx
from lib.protocol.intervals import bootstrap_ci, percentiles
from lib.protocol.screening import auroc_entropy_dangerous
from lib.protocol.summary import summarize


def test_percentiles_leave_undefined_draws_out():
    dist = np.array([[0.0, 1.0, 2.0, 3.0, 4.0], [np.nan, 1.0, 1.0, np.nan, 1.0], [np.nan] * 5])
    low, high = percentiles(dist, 0.5, axis=-1)
    assert low.tolist()[:2] == [1.0, 1.0] and high.tolist()[:2] == [3.0, 1.0]
    assert math.isnan(low[2]) and math.isnan(high[2])


def test_all_equal_data_gives_zero_width_intervals():
    n = 30
    rows = []
    for i in range(n):
        rows += [dict(sample_id=f"s{i}", prompt_id=j, condition="image", p_yes=0.9) for j in range(3)]
        rows.append(dict(sample_id=f"s{i}", prompt_id=0, condition="text_only", p_yes=0.8))
    preds = tx.add_answers(pd.DataFrame(rows))
    samples = pd.DataFrame(dict(sample_id=[f"s{i}" for i in range(n)], image_id=[f"i{i // 2}" for i in range(n)],
                                finding="nodule", label="yes"))
    table = tx.classify_samples(preds, samples)
    s = summarize(table, preds, bootstrap_resamples=300)
    assert s["ci95"]["quadrant_fractions"]["Dangerous"] == [1.0, 1.0]
    assert s["ci95"]["flip_rate"] == [0.0, 0.0] and s["ci95"]["accuracy"] == [1.0, 1.0]
    assert s["ci95"]["pairwise_flip_rate"] == [0.0, 0.0]
    assert s["ci95"]["specificity"] is None and s["ci95"]["balanced_accuracy"] is None  # no "no" label
    assert s["ci95"]["auroc_entropy_dangerous"] is None  # no other quadrant
    one = tx.classify_samples(preds, samples.assign(image_id="same"))
    assert summarize(one, preds, bootstrap_resamples=5)["ci95"]["flip_rate"] == [0.0, 0.0]


def bernoulli_run(outcomes_by_image):
    """Samples labelled yes whose pred is yes (Ideal, correct) or no (Dangerous, wrong), by image."""
    rows, samples = [], []
    for i, outcomes in enumerate(outcomes_by_image):
        for k, hit in enumerate(outcomes):
            sid = f"i{i}/{k}"
            samples.append(dict(sample_id=sid, image_id=f"i{i}", finding="f", label="yes"))
            rows.append(dict(sample_id=sid, prompt_id=0, condition="image", p_yes=0.9 if hit else 0.1))
            rows.append(dict(sample_id=sid, prompt_id=0, condition="text_only", p_yes=0.1))
    preds = tx.add_answers(pd.DataFrame(rows))
    return tx.classify_samples(preds, pd.DataFrame(samples)), preds


def test_interval_of_a_proportion_matches_the_normal_approximation():
    # 400 images, one sample each, 100 correct: the percentile bootstrap of the accuracy
    # approaches p +- 1.96 sqrt(p (1 - p) / n) = 0.25 +- 0.0424 (statsmodels' normal interval)
    table, preds = bernoulli_run([[k < 100] for k in range(400)])
    ci = bootstrap_ci(table, preds, resamples=2000, seed=0)
    low, high = proportion_confint(100, 400, alpha=0.05, method="normal")
    assert ci["accuracy"] == pytest.approx([low, high], abs=0.008)
    assert ci["quadrant_fractions"]["Ideal"] == ci["accuracy"]


def test_clustered_samples_widen_the_interval():
    # 100 images x 4 samples with the same outcome within an image: the effective sample size
    # is 100 images, so the half-width is 1.96 sqrt(0.3 * 0.7 / 100) = 0.0898, twice the
    # 0.0449 that 400 independent samples would give.
    table, preds = bernoulli_run([[k < 30] * 4 for k in range(100)])
    low, high = bootstrap_ci(table, preds, resamples=2000, seed=3)["accuracy"]
    assert (high - low) / 2 == pytest.approx(1.96 * math.sqrt(0.21 / 100), abs=0.012)


def test_bootstrap_of_a_large_run_takes_seconds():
    rng = np.random.default_rng(0)
    n_images, per_image, prompts = 750, 4, 6
    rows, samples = [], []
    for i in range(n_images):
        for f in range(per_image):
            sid = f"i{i}/{f}"
            samples.append(dict(sample_id=sid, image_id=f"i{i}", finding=f"f{f}",
                                label=("yes", "no")[int(rng.integers(2))]))
            rows += [dict(sample_id=sid, prompt_id=j, condition="image", p_yes=rng.beta(0.3, 0.3))
                     for j in range(prompts)]
            rows.append(dict(sample_id=sid, prompt_id=0, condition="text_only", p_yes=rng.random()))
    preds = tx.add_answers(pd.DataFrame(rows))
    table = tx.classify_samples(preds, pd.DataFrame(samples))
    start = time.perf_counter()
    ci = bootstrap_ci(table, preds, resamples=1000)
    elapsed = time.perf_counter() - start
    assert elapsed < 5.0, f"1000 resamples of 3000 samples took {elapsed:.1f} s"
    point = auroc_entropy_dangerous(table)
    assert ci["auroc_entropy_dangerous"][0] <= point <= ci["auroc_entropy_dangerous"][1]
