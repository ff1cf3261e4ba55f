"""The registry of rates (lib.protocol.measures): every rate of summary.json with an interval is
declared there, the declared AUROC is the Mann-Whitney one, and one formatter writes a value with
its interval."""
import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from lib.protocol import local_tests
from lib.protocol import taxonomy as tx
from lib.protocol.measures import RATES, auroc, number
from lib.protocol.summary import summarize
from lib.protocol.vocabulary import QUADRANTS

BLOCK = {"rate": 0.25, "ci95": [0.1, 0.4], "prior_coincident": 0.5, "ci95_prior_coincident": [0.3, 0.7]}


def intervals_in(ci95: dict, prefix=()) -> set:
    """The paths of every interval (a [low, high] list or None) under ``ci95``."""
    paths = set()
    for key, value in ci95.items():
        if isinstance(value, dict):
            paths |= intervals_in(value, prefix + (key,))
        else:
            paths.add(prefix + (key,))
    return paths


@pytest.fixture(scope="module")
def summary():
    """Four samples on three images, one per quadrant, with an image-blind block."""
    p_image = {"i": [0.9, 0.8], "f": [0.9, 0.2], "d": [0.1, 0.2], "w": [0.3, 0.7]}
    p_text = {"i": 0.1, "f": 0.2, "d": 0.3, "w": 0.4}
    rows = [dict(sample_id=s, prompt_id=j, condition="image", prompt=f"q{j}", p_yes=p)
            for s, ps in p_image.items() for j, p in enumerate(ps)]
    rows += [dict(sample_id=s, prompt_id=0, condition="text_only", prompt="q0", p_yes=p) for s, p in p_text.items()]
    preds = tx.add_answers(pd.DataFrame(rows))
    samples = pd.DataFrame(dict(sample_id=list(p_image), image_id=["A", "A", "B", "C"], finding="f",
                                label=["yes", "yes", "no", "no"]))
    table = tx.classify_samples(preds, samples)
    assert list(table["quadrant"]) == list(QUADRANTS)
    flags = {"occlusion_changes": [True, None, False, None], "occlusion_control_changes": [False, None, False, None],
             "followup_changes": [True, False, False, True], "followup_control_changes": [None] * 4}
    table = table.assign(patient_id=["P1", "P1", "P2", None],
                         **{k: pd.array(v, dtype="boolean") for k, v in flags.items()})
    return summarize(table, preds, image_blind=BLOCK, bootstrap_resamples=50,
                     local=local_tests.summary_counts(table, {}))


def test_every_interval_of_the_summary_is_a_declared_rate(summary):
    declared = {rate.key for rate in RATES}
    assert len(declared) == len(RATES)
    assert intervals_in(summary["ci95"]) == declared
    # the check itself: an interval added to summary.json without a declaration is caught
    extra = {**summary["ci95"], "new_rate": [0.0, 1.0]}
    assert intervals_in(extra) - declared == {("new_rate",)}


def test_each_declared_point_value_sits_where_declared(summary):
    def at(path):
        value = summary
        for key in path:
            value = value[key]
        return value

    assert at(("flip_rate",)) == 0.5                                   # f and w
    assert at(("screening", "auroc_entropy_dangerous")) == summary["screening"]["auroc_entropy_dangerous"]
    assert at(("quadrant_fractions", "Dangerous")) == 0.25
    assert at(("dangerous_breakdown", "image-blind")) == 0.25
    assert summary["ci95"]["dangerous_breakdown"] == {"image-blind": [0.1, 0.4], "prior-coincident": [0.3, 0.7]}
    local = summary["local_tests"]
    assert (local["occlude"]["n_tested"], local["occlude"]["change_rate"]) == (2, 0.5)   # i changed, d did not
    assert local["occlude"]["image_blind_share"] == 1.0                                   # d: Dangerous, unchanged
    assert (local["followup"]["change_rate"], local["followup"]["image_blind_share"]) == (0.5, 1.0)
    assert local["followup_control"]["n_tested"] == 0 and local["followup_control"]["change_rate"] is None
    for rate in RATES:
        at(rate.point_at)   # every declaration names a place that exists
        assert rate.label


def test_weighted_auroc_equals_mann_whitney_on_random_scores():
    rng = np.random.default_rng(1)
    for _ in range(5):
        score = rng.choice([0.0, 0.25, 0.5, 1.0], 40)    # many ties
        positive = rng.random(40) < 0.3
        u = sps.mannwhitneyu(score[positive], score[~positive]).statistic
        assert auroc(score, positive)[0] == u / (positive.sum() * (~positive).sum())
    # weights count draws: drawing the one negative twice changes nothing, dropping it undefines it
    assert auroc([0.2, 0.5, 0.9], [False, True, True], [[2, 1, 1], [0, 1, 1]]).tolist()[0] == 1.0
    assert np.isnan(auroc([0.2, 0.5, 0.9], [False, True, True], [[0, 1, 1]])[0])


def test_number():
    assert number(float("nan")) == "–" and number(0.5, 1) == "0.5" and number(0.41234) == "0.412"
