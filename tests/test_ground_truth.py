"""Ground truth from counterfactual twins and the held-out pairwise flip rate: hand-computed tables,
then a run that reads a twins CSV and a prompt split."""
from pathlib import Path

import pandas as pd
import pytest

from lib.protocol import config, data, ground_truth, questions, run, taxonomy


def table(rows):
    cols = ["sample_id", "image_reliant", "reference_agreement", "consistent", "quadrant", "truly_image_reliant"]
    out = pd.DataFrame(rows, columns=cols)
    out["truly_image_reliant"] = out["truly_image_reliant"].astype("boolean")
    return out


def test_precision_recall_known_values():
    assert ground_truth.precision_recall([1, 1, 0, 0], [1, 0, 1, 0]) == {
        "precision": 0.5, "recall": 0.5, "n_predicted": 2, "n_true": 2, "n_hits": 1}
    assert ground_truth.precision_recall([0, 0], [1, 0])["precision"] is None
    assert ground_truth.precision_recall([1, 0], [0, 0])["recall"] is None


def test_ground_truth_by_hand():
    # s1: ignored (twin same), paper says ignored, agreement 0.9, Dangerous   -> TP for all
    # s2: ignored, paper says reliant, agreement 0.4, Fragile (inconsistent)   -> paper FN
    # s3: reads image, paper says ignored (prior coincides), agreement 0.5, Dangerous -> paper FP, Dangerous FP
    # s4: reads image, reliant, agreement 0.1, Ideal                            -> TN
    # s5: no twin row: left out
    t = table([
        ("s1", False, 0.9, True, "Dangerous", False),
        ("s2", True, 0.4, False, "Fragile", False),
        ("s3", False, 0.5, True, "Dangerous", True),
        ("s4", True, 0.1, True, "Ideal", True),
        ("s5", False, 0.7, True, "Dangerous", None),
    ])
    block = {"rate": 0.3, "ci95": [0.2, 0.4]}
    gt = ground_truth.ground_truth(t, block)
    assert gt["n_samples"] == 4 and gt["ignored_rate"] == 0.5
    assert gt["paper_measure"] == {"precision": 0.5, "recall": 0.5, "n_predicted": 2, "n_true": 2, "n_hits": 1}
    # reference agreement for "Dangerous and ignored" (s1: 0.9) against the rest (0.4, 0.5, 0.1): 3/3
    assert gt["reference_auroc"] == 1.0
    # twin truth: Dangerous and ignored = s1 of the 4 -> 0.25, inside [0.2, 0.4]
    assert gt["image_blind"] == {"truth": 0.25, "estimate": 0.3, "ci95": [0.2, 0.4], "covered": True,
                                 "n_samples": 4}
    assert ground_truth.ground_truth(t, {"rate": 0.5, "ci95": [0.45, 0.6]})["image_blind"]["covered"] is False
    assert ground_truth.ground_truth(t)["image_blind"] is None
    # truth for Dangerous: consistent and ignored = s1 only; predicted Dangerous = s1, s3
    assert gt["dangerous"] == {"precision": 0.5, "recall": 1.0, "n_predicted": 2, "n_true": 1, "n_hits": 1}
    assert ground_truth.ground_truth(t[t.sample_id == "s5"]) is None


def test_local_test_truth_by_hand_and_by_label():
    # "unchanged" (changes False) against "ignored" (the twin's answer unchanged), per label
    t = pd.DataFrame({"label": ["yes", "yes", "no", "no", "no", "no"],
                      "followup_changes": pd.array([False, True, False, False, True, None], dtype="boolean")})
    ignored = pd.Series([True, False, True, False, True, True]).to_numpy()
    out = ground_truth.local_test_truth(t, ignored)["followup"]
    # flagged unchanged: rows 0, 2, 3 (hits 0, 2); truly unchanged among the covered: rows 0, 2, 4
    assert {k: out[k] for k in ("n_hits", "n_predicted", "n_true", "n_covered")} == \
        {"n_hits": 2, "n_predicted": 3, "n_true": 3, "n_covered": 5}
    assert out["coverage"] == pytest.approx(5 / 6)
    assert out["by_label"]["yes"] == {"precision": 1.0, "recall": 1.0, "n_predicted": 1, "n_true": 1,
                                      "n_hits": 1, "n_covered": 2}
    assert out["by_label"]["no"] == {"precision": 0.5, "recall": 0.5, "n_predicted": 2, "n_true": 2,
                                     "n_hits": 1, "n_covered": 3}
    assert ground_truth.local_test_truth(t.drop(columns="followup_changes"), ignored) is None


def test_held_out_pairwise_flip_rate_by_hand():
    preds = pd.DataFrame({
        "sample_id": ["a", "a", "a", "b", "b", "b"],
        "prompt_id": [0, 1, 2, 0, 1, 2],
        "condition": ["image"] * 6,
        "prompt": ["Q0", "seen", "unseen", "Q0", "seen", "unseen"],
        "pred": ["yes", "no", "no", "no", "no", "no"], "entropy": [0.5] * 6,
    })
    samples = pd.DataFrame({"sample_id": ["a", "b"], "finding": ["nodule", "nodule"]})
    # held-out pairs: (a: Q0 yes vs unseen no) disagree, (b: no vs no) agree -> 0.5
    assert taxonomy.held_out_pairwise_flip_rate(preds, samples, {"nodule": ["unseen"]}) == 0.5
    assert taxonomy.held_out_pairwise_flip_rate(preds, samples, None) is None
    assert taxonomy.held_out_pairwise_flip_rate(preds, samples, {"nodule": ["never asked"]}) is None


def test_a_run_reads_twins_and_the_prompt_split(tiny_world, tmp_path):
    """Twin = the image itself: the answer cannot change, so every sample counts as ignored."""
    root = Path(tiny_world["data"]["mimic-cxr"])
    samples = list(data.iter_samples("mimic-cxr", root, split="train"))[:8]
    twins = tmp_path / "twins.csv"
    pd.DataFrame({"image_id": [s.image_id for s in samples], "finding": [s.finding for s in samples],
                  "twin_path": [s.image_path for s in samples]}).to_csv(twins, index=False)
    prompts = questions.BUILTIN_QUESTIONS
    split = tmp_path / "split.json"
    split.write_text(pd.Series({f: {"train": list(p[:3]), "held_out": list(p[3:])}
                                for f, p in prompts.items()}).to_json())
    params = config.validate({"config": "x", "model": str(tiny_world["models"]["llava"]),
                              "dataset": "mimic-cxr", "data_root": str(root), "split": "train",
                              "limit": 8, "twins": str(twins), "prompt_split": str(split),
                              "output_dir": str(tmp_path / "run")})
    result = run.evaluate(params)
    assert (result.predictions.condition == "twin").sum() == 8
    assert result.samples.truly_image_reliant.eq(False).all()
    gt = result.summary["ground_truth"]
    assert gt["n_samples"] == 8 and gt["ignored_rate"] == 1.0
    assert result.summary["pairwise_flip_rate_held_out"] is not None
    assert 0 <= result.summary["pairwise_flip_rate_held_out"] <= 1


def test_bad_twins_file_is_named(tiny_world, tmp_path):
    from lib.protocol import preflight

    bad = tmp_path / "twins.csv"
    bad.write_text("image_id,finding\nx,nodule\n")
    params = config.validate({"config": "x", "model": str(tiny_world["models"]["llava"]),
                              "dataset": "mimic-cxr", "data_root": str(tiny_world["data"]["mimic-cxr"]),
                              "split": "train", "twins": str(bad), "output_dir": str(tmp_path / "o")})
    with pytest.raises(config.ParamsError, match="twins.*twin_path"):
        preflight.check(params, "pair.yaml")
