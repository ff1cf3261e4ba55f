"""Known-answer tests for lib.protocol.taxonomy (and the summary of lib.protocol.summary) on a
hand-made five-sample run.

Hand-worked table (pred: p_yes >= 0.5 -> yes):

| sample | label | image p_yes (prompt 0, 1, ...) | preds        | text-only p_yes | quadrant  | correct |
|--------|-------|--------------------------------|--------------|-----------------|-----------|---------|
| s1     | yes   | 0.9, 0.8, 0.7                  | y y y        | 0.2 -> no       | Ideal     | yes     |
| s2     | no    | 0.11, 0.6, 0.2, 0.3            | n y n n      | 0.7 -> yes      | Fragile   | yes     |
| s3     | yes   | 0.5 (no paraphrase)            | y            | 0.95 -> yes     | Dangerous | yes     |
| s4     | yes   | 0.0, 0.1                       | n n          | 0.3 -> no       | Dangerous | no      |
| s5     | no    | 1.0, 0.4, 0.45                 | y n n        | 0.8 -> yes      | Worst     | no      |
"""

import json

import pandas as pd
import pytest

from lib.protocol import taxonomy as tx
from lib.protocol.measures import ByCluster
from lib.protocol.summary import summarize

IMAGE_P = {
    "s1": [0.9, 0.8, 0.7],
    "s2": [0.11, 0.6, 0.2, 0.3],
    "s3": [0.5],
    "s4": [0.0, 0.1],
    "s5": [1.0, 0.4, 0.45],
}
TEXT_P = {"s1": 0.2, "s2": 0.7, "s3": 0.95, "s4": 0.3, "s5": 0.8}
LABELS = {"s1": "yes", "s2": "no", "s3": "yes", "s4": "yes", "s5": "no"}

H_09 = 0.4689956   # H(0.9) = 0.9*log2(1/0.9) + 0.1*log2(10) = 0.136803 + 0.332193
H_011 = 0.4999160   # H(0.11) = 0.11*3.184425 + 0.89*0.168123 = 0.350287 + 0.149629


def make_predictions(image_p=IMAGE_P, text_p=TEXT_P):
    rows = []
    for sid, ps in image_p.items():
        for j, p in enumerate(ps):
            rows.append(dict(sample_id=sid, prompt_id=j, condition="image", prompt=f"q{j}", p_yes=p))
    for sid, p in text_p.items():
        rows.append(dict(sample_id=sid, prompt_id=0, condition="text_only", prompt="q0", p_yes=p))
    return tx.add_answers(pd.DataFrame(rows))


def make_samples(ids=tuple(LABELS)):
    return pd.DataFrame(
        dict(sample_id=list(ids), image_id=[f"img_{s}" for s in ids], finding="cardiomegaly",
             label=[LABELS[s] for s in ids])
    )


@pytest.fixture
def table():
    return tx.classify_samples(make_predictions(), make_samples())


def test_binary_entropy_known_values():
    assert tx.binary_entropy(0.5) == pytest.approx(1.0)
    assert tx.binary_entropy(0.11) == pytest.approx(0.4999, abs=1e-4)
    assert tx.binary_entropy(0.0) == 0.0
    assert tx.binary_entropy(1.0) == 0.0
    assert tx.binary_entropy([0.9, 0.1]) == pytest.approx([H_09, H_09])
    with pytest.raises(ValueError):
        tx.binary_entropy(1.2)


def test_add_answers_threshold_and_copy():
    raw = pd.DataFrame({"p_yes": [0.49, 0.5, 0.51]})
    out = tx.add_answers(raw)
    assert list(out["pred"]) == ["no", "yes", "yes"]  # tie 0.5 counts as "yes"
    assert "pred" not in raw.columns


def test_quadrant_of():
    assert tx.quadrant_of([True, False], [False, True]).tolist() == ["Dangerous", "Fragile"]
    assert tx.quadrant_of(True, True) == "Ideal"
    assert tx.quadrant_of(False, True) == "Fragile"
    assert tx.quadrant_of(True, False) == "Dangerous"
    assert tx.quadrant_of(False, False) == "Worst"


def test_classify_samples_table(table):
    assert tuple(table.columns) == tx.SAMPLE_TABLE_COLUMNS
    assert list(table["sample_id"]) == ["s1", "s2", "s3", "s4", "s5"]
    assert list(table["pred"]) == ["yes", "no", "yes", "no", "yes"]
    assert list(table["pred_text_only"]) == ["no", "yes", "yes", "no", "yes"]
    assert list(table["consistent"]) == [True, False, True, True, False]
    assert list(table["image_reliant"]) == [True, True, False, False, False]
    assert list(table["quadrant"]) == ["Ideal", "Fragile", "Dangerous", "Dangerous", "Worst"]
    assert list(table["correct"]) == [True, True, True, False, False]
    assert list(table["n_prompts"]) == [3, 4, 1, 2, 3]
    assert list(table["entropy"]) == pytest.approx([H_09, H_011, 1.0, 0.0, 0.0])


def test_rates(table):
    # inconsistent samples: s2, s5 -> 2 / 5
    assert ByCluster(table, make_predictions()).point()["flip_rate"] == pytest.approx(0.4)
    # pairs (prompt 0 vs j): s1 2 agree; s2 3 pairs, 1 disagrees; s3 none; s4 1 agrees; s5 2 disagree
    # -> 3 disagreeing of 8 pairs
    assert tx.pairwise_flip_rate(make_predictions()) == pytest.approx(3 / 8)


def test_summarize(table):
    s = summarize(table, make_predictions())
    json.dumps(s)  # plain Python types only
    assert s["n_samples"] == 5
    assert s["flip_rate"] == pytest.approx(0.4)
    assert s["pairwise_flip_rate"] == pytest.approx(0.375)
    assert s["accuracy"] == pytest.approx(0.6)  # s1, s2, s3 correct
    assert s["image_reliance_rate"] == pytest.approx(0.4)  # s1, s2
    assert s["quadrant_counts"] == {"Ideal": 1, "Fragile": 1, "Dangerous": 2, "Worst": 1}
    assert s["quadrant_fractions"] == pytest.approx({"Ideal": 0.2, "Fragile": 0.2, "Dangerous": 0.4, "Worst": 0.2})
    assert s["accuracy_by_quadrant"] == pytest.approx({"Ideal": 1.0, "Fragile": 1.0, "Dangerous": 0.5, "Worst": 0.0})
    # Dangerous: mean of H(0.5) = 1 and H(0) = 0
    assert s["entropy_by_quadrant"] == pytest.approx({"Ideal": H_09, "Fragile": H_011, "Dangerous": 0.5, "Worst": 0.0})
    assert all(type(v) is float for v in s["accuracy_by_quadrant"].values())


def test_summarize_empty_quadrants_are_none():
    preds = make_predictions()
    table = tx.classify_samples(preds[preds["sample_id"].isin(["s1", "s3"])], make_samples(["s1", "s3"]))
    s = summarize(table, preds)  # predictions of other samples are ignored
    assert s["quadrant_counts"] == {"Ideal": 1, "Fragile": 0, "Dangerous": 1, "Worst": 0}
    assert s["accuracy_by_quadrant"]["Fragile"] is None
    assert s["entropy_by_quadrant"]["Worst"] is None
    assert s["flip_rate"] == 0.0
    assert s["pairwise_flip_rate"] == 0.0  # s1's 2 pairs agree; s3 has none
    json.dumps(s)


def test_no_paraphrases_anywhere_gives_none_pairwise():
    preds = make_predictions(image_p={"s3": [0.5]}, text_p={"s3": 0.95})
    table = tx.classify_samples(preds, make_samples(["s3"]))
    assert summarize(table, preds)["pairwise_flip_rate"] is None


def test_text_only_paraphrase_rows_are_ignored(table):
    extra = pd.DataFrame([dict(sample_id="s1", prompt_id=1, condition="text_only", prompt="q1", p_yes=0.99)])
    preds = pd.concat([make_predictions(), tx.add_answers(extra)], ignore_index=True)
    assert tx.classify_samples(preds, make_samples()).equals(table)


def test_missing_text_only_row_names_sample():
    preds = make_predictions()
    preds = preds[~((preds["sample_id"] == "s4") & (preds["condition"] == "text_only"))]
    with pytest.raises(ValueError, match=r"text-only.*s4"):
        tx.classify_samples(preds, make_samples())


def test_missing_original_image_row_names_sample():
    preds = make_predictions()
    preds = preds[~((preds["sample_id"] == "s2") & (preds["condition"] == "image") & (preds["prompt_id"] == 0))]
    with pytest.raises(ValueError, match=r"original.*s2"):
        tx.classify_samples(preds, make_samples())
    with pytest.raises(ValueError, match="s2"):
        tx.pairwise_flip_rate(preds)


def test_input_validation():
    preds = make_predictions()
    with pytest.raises(ValueError, match="duplicate"):
        tx.classify_samples(pd.concat([preds, preds.iloc[:1]]), make_samples())
    with pytest.raises(ValueError, match="absent from samples"):
        tx.classify_samples(preds, make_samples(["s1", "s2"]))
    with pytest.raises(ValueError, match="pred"):
        tx.classify_samples(preds.drop(columns="pred"), make_samples())
    bad = make_samples()
    bad.loc[0, "label"] = "maybe"
    with pytest.raises(ValueError, match="s1"):
        tx.classify_samples(preds, bad)
    assert ByCluster(tx.classify_samples(preds, make_samples()).iloc[:0], preds).point()["flip_rate"] is None
