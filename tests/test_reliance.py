"""Known-answer tests for the measures added beside the paper's (issue 12): the reliance columns,
the new summary keys (lib.protocol.summary, lib.protocol.screening) and the cluster bootstrap on
this run (more in tests/test_intervals.py; the image-blind rate: tests/test_references.py).

Hand-worked run: 8 samples on 7 images (a1 and a2 share image A). pred: p_yes >= 0.5 -> yes.

| s  | img | label | image p_yes (prompt 0, ...) | preds | text p -> pred | quadrant  | correct | entropy  |
|----|-----|-------|-----------------------------|-------|----------------|-----------|---------|----------|
| a1 | A   | yes   | 0.9, 0.8                    | y y   | 0.2  -> n      | Ideal     | yes     | H(0.9)   |
| a2 | A   | no    | 0.2, 0.6                    | n y   | 0.7  -> y      | Fragile   | yes     | H(0.2)   |
| b1 | B   | no    | 0.0, 0.1, 0.3               | n n n | 0.1  -> n      | Dangerous | yes     | 0        |
| c1 | C   | yes   | 1.0                         | y     | 0.9  -> y      | Dangerous | yes     | 0        |
| d1 | D   | yes   | 0.2, 0.3                    | n n   | 0.35 -> n      | Dangerous | no      | H(0.2)   |
| e1 | E   | no    | 0.5                         | y     | 0.55 -> y      | Dangerous | no      | 1        |
| f1 | F   | yes   | 0.9, 0.2                    | y n   | 0.6  -> y      | Worst     | yes     | H(0.9)   |
| g1 | G   | yes   | 0.0, 0.45                   | n n   | 0.4  -> n      | Dangerous | no      | 0        |

Per-run rows (lib.protocol.run: scored once per distinct question; every sample asks "q0"):
blank p 0.4 -> pred_blank "no" for all; noise over two null images 0.6 and 0.3 -> mean 0.45 ->
pred_noise "no" for all. pred "yes": a1, c1, e1, f1, so both change rates are 4 / 8.
"""

import json

import numpy as np
import pandas as pd
import pytest

from lib.protocol import taxonomy as tx
from lib.protocol.intervals import bootstrap_ci
from lib.protocol.measures import CLUSTER_RATES, ByCluster
from lib.protocol.screening import auroc_entropy_dangerous, flag_weights
from lib.protocol.summary import summarize
from lib.protocol.vocabulary import QUADRANTS

H = {p: float(tx.binary_entropy(p)) for p in (0.9, 0.2)}

IMAGE_P = {"a1": [0.9, 0.8], "a2": [0.2, 0.6], "b1": [0.0, 0.1, 0.3], "c1": [1.0],
           "d1": [0.2, 0.3], "e1": [0.5], "f1": [0.9, 0.2], "g1": [0.0, 0.45]}
TEXT_P = {"a1": 0.2, "a2": 0.7, "b1": 0.1, "c1": 0.9, "d1": 0.35, "e1": 0.55, "f1": 0.6, "g1": 0.4}
LABELS = {"a1": "yes", "a2": "no", "b1": "no", "c1": "yes", "d1": "yes", "e1": "no", "f1": "yes",
          "g1": "yes"}
IMAGES = {"a1": "A", "a2": "A", "b1": "B", "c1": "C", "d1": "D", "e1": "E", "f1": "F", "g1": "G"}
IDS = list(LABELS)
# yes_no_mass of the 15 image rows, in row order: 0.05, 0.10, ..., 0.75 (median 0.40; p10 at
# rank 0.1 x 14 = 1.4: 0.10 + 0.4 x 0.05 = 0.12); reliance rows get mass 1 (not counted).
MASSES = [0.05 * (k + 1) for k in range(15)]


def make_predictions(masses=MASSES):
    rows, k = [], 0
    for sid, ps in IMAGE_P.items():
        for j, p in enumerate(ps):
            rows.append(dict(sample_id=sid, prompt_id=j, condition="image", prompt=f"q{j}", p_yes=p,
                             yes_no_mass=masses[k]))
            k += 1
    for sid, p in TEXT_P.items():
        rows.append(dict(sample_id=sid, prompt_id=0, condition="text_only", prompt="q0", p_yes=p,
                         yes_no_mass=1.0))
    return tx.add_answers(pd.DataFrame(rows))


def make_per_run():
    """The run's blank and noise rows (sample_id null), as lib.protocol.run writes them."""
    rows = [dict(sample_id=None, prompt_id=0, condition="blank", prompt="q0", p_yes=0.4, yes_no_mass=1.0),
            dict(sample_id=None, prompt_id=0, condition="noise", prompt="q0", p_yes=0.6, yes_no_mass=1.0),
            dict(sample_id=None, prompt_id=0, condition="noise", prompt="q0", p_yes=0.3, yes_no_mass=1.0)]
    return tx.add_answers(pd.DataFrame(rows))


def make_samples():
    return pd.DataFrame(dict(sample_id=IDS, image_id=[IMAGES[s] for s in IDS],
                             finding="cardiomegaly", label=[LABELS[s] for s in IDS]))


@pytest.fixture
def preds():
    return make_predictions()


@pytest.fixture
def table(preds):
    return tx.classify_samples(preds, make_samples(), make_per_run())


def nullable(series):
    return [None if pd.isna(v) else v for v in series]


# -- the samples table -------------------------------------------------------------------------

def test_paper_columns_unchanged_by_reliance_rows(table):
    plain = tx.classify_samples(make_predictions(), make_samples())
    paper = list(tx.SAMPLE_TABLE_COLUMNS[:12])
    pd.testing.assert_frame_equal(table[paper], plain[paper])
    assert list(table["quadrant"]) == ["Ideal", "Fragile", "Dangerous", "Dangerous", "Dangerous",
                                       "Dangerous", "Worst", "Dangerous"]
    assert list(table["correct"]) == [True, True, True, True, False, False, True, False]


def test_reliance_columns_by_hand(table):
    assert tuple(table.columns) == tx.SAMPLE_TABLE_COLUMNS
    assert list(table["question"]) == ["q0"] * 8
    assert list(table["p_yes"]) == [0.9, 0.2, 0.0, 1.0, 0.2, 0.5, 0.9, 0.0]
    assert list(table["p_yes_text_only"]) == [0.2, 0.7, 0.1, 0.9, 0.35, 0.55, 0.6, 0.4]
    assert list(table["reliance"]) == pytest.approx([0.7, 0.5, 0.1, 0.1, 0.15, 0.05, 0.3, 0.4])
    assert nullable(table["pred_blank"]) == ["no"] * 8
    assert nullable(table["pred_noise"]) == ["no"] * 8      # mean of the null images, 0.45


def test_per_run_rows_are_read_by_question():
    other = make_per_run().assign(prompt="another question")
    table = tx.classify_samples(make_predictions(), make_samples(), other)
    assert table["pred_blank"].isna().all() and table["pred_noise"].isna().all()


def test_without_per_run_rows_the_new_columns_are_null():
    table = tx.classify_samples(make_predictions(), make_samples())
    for column in ("pred_blank", "pred_noise", "pred_twin"):
        assert table[column].isna().all(), column
    no_p = make_predictions().drop(columns=["p_yes"])
    assert tx.classify_samples(no_p, make_samples())["reliance"].isna().all()


def test_samples_table_survives_parquet(table, tmp_path):
    table.to_parquet(tmp_path / "samples.parquet", index=False)
    back = pd.read_parquet(tmp_path / "samples.parquet")
    assert nullable(back["pred_blank"]) == nullable(table["pred_blank"])
    assert nullable(back["truly_image_reliant"]) == nullable(table["truly_image_reliant"])


# -- the summary -------------------------------------------------------------------------------

@pytest.fixture
def summary(table, preds):
    return summarize(table, pd.concat([preds, make_per_run()], ignore_index=True),
                        bootstrap_resamples=200, seed=1)


def test_detection_rates(summary):
    # label yes: a1 y, c1 y, d1 n, f1 y, g1 n -> 3/5; label no: a2 n, b1 n, e1 y -> 2/3
    assert summary["accuracy"] == pytest.approx(5 / 8)
    assert summary["sensitivity"] == pytest.approx(0.6)
    assert summary["specificity"] == pytest.approx(2 / 3)
    assert summary["balanced_accuracy"] == pytest.approx((0.6 + 2 / 3) / 2)


def test_blank_noise_rates_and_breakdown(summary):
    json.dumps(summary)
    assert summary["reliance_checks"] == ["blank", "noise"]       # the conditions with rows
    assert summary["blank_change_rate"] == pytest.approx(4 / 8)   # a1, c1, e1, f1
    assert summary["noise_change_rate"] == pytest.approx(4 / 8)
    for check in ("blank", "noise"):   # declared rates: an interval over the images, n = 8 samples
        low, high = summary["ci95"][f"{check}_change_rate"]
        assert low < 0.5 < high and summary["rate_n"][f"{check}_change_rate"] == 8
    assert summary["rate_n"]["sensitivity"] == 5 and summary["rate_n"]["specificity"] == 3
    assert summary["rate_n"]["pairwise_flip_rate"] == 6   # the samples with a paraphrase (not c1, e1)
    assert summary["dangerous_breakdown"] == {"image-blind": None, "prior-coincident": None}
    assert summary["image_blind"] is None


def test_prior_accuracy_by_quadrant(summary):
    # text-only pred == label: a1 n/yes 0; a2 y/no 0; Dangerous b1 c1 right, d1 e1 g1 wrong; f1 y/yes
    assert summary["prior_accuracy_by_quadrant"] == pytest.approx(
        {"Ideal": 0.0, "Fragile": 0.0, "Dangerous": 0.4, "Worst": 1.0})


def test_screening_auroc_with_ties(summary, table):
    # Dangerous entropies b1 0, c1 0, g1 0, d1 H(0.2), e1 1; others a1 H(0.9), a2 H(0.2), f1 H(0.9).
    # Wins over the 15 (D, other) pairs: zeros 0; d1 > a1, f1 and ties a2 -> 2.5; e1 > all -> 3.
    assert table.loc[table.sample_id == "d1", "entropy"].item() == table.loc[table.sample_id == "a2", "entropy"].item()
    assert summary["screening"]["auroc_entropy_dangerous"] == pytest.approx(5.5 / 15)
    assert auroc_entropy_dangerous(table) == pytest.approx(5.5 / 15)


def test_catch_rate_with_ties_at_the_cut(summary):
    # entropy order: e1 (D) 1 | a2, d1 (D) H(0.2) | a1, f1 H(0.9) | b1, c1, g1 (D) 0; n = 8
    # f 0.1: k 0.8 -> e1 0.8; 0.2: k 1.6 -> e1 1 + a2, d1 0.3 each; 0.3: k 2.4 -> e1 1 + 0.7 each
    s = summary["screening"]
    assert s["catch_rate"] == pytest.approx({"0.1": 0.8 / 5, "0.2": 1.3 / 5, "0.3": 1.7 / 5})
    assert s["flagged_dangerous_fraction"] == pytest.approx({"0.1": 1.0, "0.2": 1.3 / 1.6, "0.3": 1.7 / 2.4})
    assert flag_weights([1.0, 0.5, 0.5, 0.0], 0.5).tolist() == [1.0, 0.5, 0.5, 0.0]


def test_threshold_table(summary):
    # per sample (p0, text, min, max): see the module docstring; worked through by hand
    expected = {
        "0.4": {"Ideal": 1 / 8, "Fragile": 2 / 8, "Dangerous": 4 / 8, "Worst": 1 / 8},   # g1 Fragile
        "0.45": {"Ideal": 1 / 8, "Fragile": 1 / 8, "Dangerous": 4 / 8, "Worst": 2 / 8},  # g1 Worst
        "0.5": {"Ideal": 1 / 8, "Fragile": 1 / 8, "Dangerous": 5 / 8, "Worst": 1 / 8},
        "0.55": {"Ideal": 2 / 8, "Fragile": 1 / 8, "Dangerous": 4 / 8, "Worst": 1 / 8},  # e1 Ideal
        "0.6": {"Ideal": 1 / 8, "Fragile": 1 / 8, "Dangerous": 5 / 8, "Worst": 1 / 8},
    }
    assert summary["threshold_sensitivity"].keys() == expected.keys()
    for t, fractions in expected.items():
        assert summary["threshold_sensitivity"][t] == pytest.approx(fractions), t
    assert summary["threshold_sensitivity"]["0.5"] == pytest.approx(summary["quadrant_fractions"])


def test_yes_no_mass_and_warning(summary, table):
    assert summary["yes_no_mass"] == pytest.approx({"median": 0.40, "p10": 0.12})
    assert len(summary["warnings"]) == 1 and "0.400" in summary["warnings"][0]
    assert "answer" in summary["warnings"][0]
    high = make_predictions(masses=[0.9] * 15)
    quiet = summarize(table, high, bootstrap_resamples=10)
    assert quiet["yes_no_mass"] == pytest.approx({"median": 0.9, "p10": 0.9}) and quiet["warnings"] == []


def test_old_call_still_works_and_new_keys_are_null_without_checks():
    preds = make_predictions()
    table = tx.classify_samples(preds, make_samples())
    s = summarize(table, preds)
    json.dumps(s)
    assert s["reliance_checks"] == [] and s["blank_change_rate"] is None
    assert s["dangerous_breakdown"] == {"image-blind": None, "prior-coincident": None}
    assert s["ci95"]["dangerous_breakdown"] == {"image-blind": None, "prior-coincident": None}


def test_bad_input():
    preds = make_predictions()
    table = tx.classify_samples(preds, make_samples())
    with pytest.raises(ValueError, match="bootstrap_resamples"):
        summarize(table, preds, bootstrap_resamples=0)
    with pytest.raises(ValueError, match="bootstrap_resamples"):
        bootstrap_ci(table, preds, resamples=2.5)
    with pytest.raises(ValueError, match="ci_level"):
        summarize(table, preds, ci_level=1.0)
    bad = preds.copy()
    bad.loc[0, "condition"] = "mirror"
    with pytest.raises(ValueError, match="mirror"):
        tx.classify_samples(bad, make_samples())


# -- the cluster bootstrap ---------------------------------------------------------------------

def test_ci_keys_and_that_intervals_hold_the_estimate(summary):
    ci = summary["ci95"]
    assert "images" in summary["ci_method"] and "200 resamples" in summary["ci_method"]
    for key in ("flip_rate", "pairwise_flip_rate", "accuracy", "balanced_accuracy"):
        low, high = ci[key]
        assert low <= summary[key] <= high, key
    for q in QUADRANTS:
        low, high = ci["quadrant_fractions"][q]
        assert 0 <= low <= summary["quadrant_fractions"][q] <= high <= 1
    assert set(ci["dangerous_breakdown"]) == {"image-blind", "prior-coincident"}
    assert summary["screening"]["ci95"] == ci["auroc_entropy_dangerous"]


def test_identity_resample_gives_the_point_values(table, preds, summary):
    rates = ByCluster(table, preds)
    assert rates.n_images == 7
    point = rates.point()
    assert point["flip_rate"] == summary["flip_rate"] == 2 / 8     # a2 and f1 are inconsistent
    assert point["pairwise_flip_rate"] == pytest.approx(2 / 7)
    assert point["balanced_accuracy"] == pytest.approx((0.6 + 2 / 3) / 2)
    assert point["quadrant_fractions:Dangerous"] == pytest.approx(5 / 8)
    assert point["auroc_entropy_dangerous"] == pytest.approx(5.5 / 15)
    # Image A drawn twice, B..F once, G not: weights a1, a2 = 2; weighted AUROC by hand:
    # D = b1 c1 d1 e1 (w 1 each), O = a1 a2 (w 2), f1 (w 1): wins b1 c1 0; d1 2 + 0.5*2 + 1 = 4;
    # e1 5 -> 9 / (4 * 5)
    names = [r.name for r in CLUSTER_RATES]
    values = rates.values(np.array([[2.0, 1, 1, 1, 1, 1, 0]]))
    assert values[0, names.index("auroc_entropy_dangerous")] == pytest.approx(9 / 20)


def test_bootstrap_is_seeded(table, preds):
    a = bootstrap_ci(table, preds, resamples=100, seed=5)
    assert a == bootstrap_ci(table, preds, resamples=100, seed=5)
    assert a != bootstrap_ci(table, preds, resamples=100, seed=6)
    narrow = bootstrap_ci(table, preds, resamples=400, ci_level=0.5, seed=5)["accuracy"]
    wide = bootstrap_ci(table, preds, resamples=400, ci_level=0.99, seed=5)["accuracy"]
    assert wide[0] <= narrow[0] <= narrow[1] <= wide[1]
