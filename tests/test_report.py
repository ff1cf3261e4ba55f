"""report.html and its per-finding / per-paraphrase numbers, on hand-made tables and a tiny run.

lib.protocol.breakdown is pure pandas: its counts and Wilson intervals are checked against values
worked out by hand; the report of a tiny run (16 samples, one positive nodule) must show its
sections, say "too few" where the numbers rest on fewer samples than the stated thresholds, and
hold integer counts and no NaN.
"""
import json
import re

import pandas as pd
import pytest

from lib.front import report
from lib.protocol import breakdown


def sample_rows():
    """Six samples: cardiomegaly 2 yes (1 right) + 2 no (both right); nodule 1 yes (right), 1 no (wrong)."""
    rows = [("s1", "cardiomegaly", "yes", "yes", "Dangerous"), ("s2", "cardiomegaly", "yes", "no", "Ideal"),
            ("s3", "cardiomegaly", "no", "no", "Dangerous"), ("s4", "cardiomegaly", "no", "no", "Fragile"),
            ("s5", "nodule", "yes", "yes", "Worst"), ("s6", "nodule", "no", "yes", "Dangerous")]
    table = pd.DataFrame(rows, columns=["sample_id", "finding", "label", "pred", "quadrant"])
    table["image_id"] = table["sample_id"]
    table["correct"] = table["label"] == table["pred"]
    table["consistent"] = table["quadrant"].isin(["Ideal", "Dangerous"])
    table["image_reliant"] = table["quadrant"].isin(["Ideal", "Fragile"])
    return table


def prediction_rows(samples):
    """prompt 0 = the sample's pred; prompt 1 (negated "Is the heart normal?" for cardiomegaly,
    its pred already the implied answer) flips on s2 only; prompt 2 flips on s5 and s6."""
    rows = []
    for r in samples.itertuples():
        rows.append((r.sample_id, 0, "image", f"Is there {r.finding}?", False, r.pred))
        flip1 = r.sample_id == "s2"
        other = "no" if r.pred == "yes" else "yes"
        rows.append((r.sample_id, 1, "image", "Is it normal?", r.finding == "cardiomegaly", other if flip1 else r.pred))
        rows.append((r.sample_id, 2, "image", f"Does it show {r.finding}?", False,
                     other if r.sample_id in ("s5", "s6") else r.pred))
        rows.append((r.sample_id, 0, "text_only", f"Is there {r.finding}?", False, r.pred))
    return pd.DataFrame(rows, columns=["sample_id", "prompt_id", "condition", "prompt", "negated", "pred"])


def test_wilson_interval_does_not_collapse():
    low, high = breakdown.proportion_ci(40, 40)
    assert high == 1.0 and low == pytest.approx(0.9124, abs=1e-4)
    assert breakdown.proportion_ci(0, 0) is None
    assert breakdown.steady_ci([1.0, 1.0], 40, 40) == breakdown.proportion_ci(40, 40)
    assert breakdown.steady_ci(None, 0, 10)[0] == 0.0
    assert breakdown.steady_ci([0.2, 0.4], 3, 10) == [0.2, 0.4]


def test_with_interval_is_the_one_format():
    assert breakdown.with_interval(0.7421, [0.61, 0.85]) == "0.742 (95 % CI 0.610 to 0.850)"
    assert breakdown.with_interval(0.25, [0.1, 0.4], percent=True) == "25.0 % (95 % CI 10.0 to 40.0 %)"
    assert breakdown.with_interval(None, [0, 1]) == "n/a"
    assert breakdown.with_interval(float("nan")) == "n/a"
    assert breakdown.with_interval(0.5, None) == "0.500"
    assert breakdown.with_interval(324) == "324"   # a count stays an integer
    table = pd.DataFrame({"finding": ["a"], "n": [3], "accuracy": [0.5], "accuracy_ci": [[0.1, 0.9]],
                          "negated": [True], "sensitivity": [None]})
    assert breakdown.shown(table).to_dict("records") == [
        {"finding": "a", "n": "3", "accuracy (95 % CI)": "0.500 (95 % CI 0.100 to 0.900)",
         "negated": "yes", "sensitivity": "n/a"}]


def test_per_finding_counts_and_rates():
    table = breakdown.per_finding(sample_rows()).set_index("finding")
    card = table.loc["cardiomegaly"]
    assert (card.n, card.positives, card.negatives) == (4, 2, 2)
    assert (card.Ideal, card.Fragile, card.Dangerous, card.Worst) == (1, 1, 2, 0)
    assert card.accuracy == 0.75 and card.sensitivity == 0.5 and card.specificity == 1.0
    assert card.specificity_ci == breakdown.proportion_ci(2, 2)
    nodule = table.loc["nodule"]
    assert nodule.sensitivity == 1.0 and nodule.specificity == 0.0 and nodule.accuracy == 0.5
    assert all(str(t) == "int64" for t in table[["n", "positives", "negatives", "Dangerous"]].dtypes)


def test_per_paraphrase_flip_rates_mark_the_negated():
    samples = sample_rows()
    table = breakdown.per_paraphrase(prediction_rows(samples), samples)
    rows = {(r.finding, r.prompt_id): r for r in table.itertuples()}
    assert set(rows) == {("cardiomegaly", 1), ("cardiomegaly", 2), ("nodule", 1), ("nodule", 2)}
    negated = rows[("cardiomegaly", 1)]
    assert negated.negated and (negated.n, negated.flips, negated.flip_rate) == (4, 1, 0.25)
    assert not rows[("nodule", 1)].negated and rows[("nodule", 1)].flips == 0
    assert (rows[("nodule", 2)].flips, rows[("nodule", 2)].flip_rate) == (2, 1.0)
    assert rows[("nodule", 2)].flip_rate_ci == breakdown.proportion_ci(2, 2)


def test_too_few_names_the_threshold():
    samples = sample_rows()
    notes = breakdown.too_few(breakdown.per_finding(samples),
                              breakdown.per_paraphrase(prediction_rows(samples), samples), len(samples))
    assert notes[0] == (f"too few to tell: the run has 6 samples (fewer than {breakdown.MIN_SAMPLES}); "
                        f"every rate below rests on them")
    assert (f"too few to tell for nodule: 2 samples (fewer than {breakdown.MIN_SAMPLES}), 1 positive "
            f"(fewer than {breakdown.MIN_POSITIVES}, for the sensitivity), 1 negative (fewer than "
            f"{breakdown.MIN_POSITIVES}, for the specificity)") in notes
    assert any(n.startswith("too few to tell for 4 of 4 paraphrases") for n in notes)


def test_image_blind_reads_the_reference_block_and_warns_on_few_references():
    summary = {"n_samples": 40, "image_blind": {
        "rate": 0.0, "ci95": [0.0, 0.0], "estimable": True, "reason": None, "min_references": 5,
        "by_finding": {"nodule": {"n_samples": 40, "n_references": {"yes": 2, "no": 9}}}}}
    blind = report.image_blind(summary)
    assert blind["rate"] == 0.0 and blind["ci"] == breakdown.proportion_ci(0, 40)  # not 0.0-0.0
    assert report.reference_warnings(blind) == [
        "too few to tell whether nodule answers are image-blind: 2 positive and 9 negative "
        "reference images (fewer than 5)"]
    summary["image_blind"].update(rate=None, estimable=False, reason="no reference image")
    blind = report.image_blind(summary)
    assert not blind["estimable"] and blind["ci"] is None
    assert report.reference_warnings(blind)[0] == "image-blind: not estimable (no reference image)"


def test_image_blind_by_finding_writes_each_rate_with_a_steady_interval_or_why_not():
    summary = {"image_blind": {"min_references": 5, "by_finding": {
        "nodule": {"n_samples": 40, "n_references": {"yes": 12, "no": 30}, "estimable": True,
                   "rate": 0.0, "ci95": [0.0, 0.0]},
        "cardiomegaly": {"n_samples": 20, "n_references": {"yes": 6, "no": 7}, "estimable": True,
                         "rate": 0.25, "ci95": [0.1, 0.45]},
        "pneumothorax": {"n_samples": 8, "n_references": {"yes": 2, "no": 9}, "estimable": False, "rate": None}}}}
    table = breakdown.image_blind_by_finding(summary)
    assert list(table.index) == ["cardiomegaly", "nodule", "pneumothorax"]
    assert table.loc["cardiomegaly"].tolist() == ["20", "6", "7", "0.250 (95 % CI 0.100 to 0.450)"]
    low, high = breakdown.proportion_ci(0, 40)   # the degenerate 0-0 bootstrap replaced by Wilson
    assert table.loc["nodule", "image-blind rate (95 % CI)"] == f"0.000 (95 % CI {low:.3f} to {high:.3f})"
    assert table.loc["pneumothorax"].tolist() == ["8", "2", "9", "too few references (fewer than 5)"]
    assert breakdown.image_blind_by_finding({}).empty


def test_steady_replaces_a_degenerate_bootstrap_by_wilson_on_every_page():
    assert breakdown.steady(0.0, [0.0, 0.0], 8) == breakdown.proportion_ci(0, 8)
    assert breakdown.steady(1.0, None, 6) == breakdown.proportion_ci(6, 6)
    assert breakdown.steady(0.5, [0.3, 0.7], 10) == [0.3, 0.7]       # a real interval kept
    assert breakdown.steady(None, [0.1, 0.2], 10) == [0.1, 0.2] and breakdown.steady(0.5, None, 0) is None
    summary = {"local_tests": {
        "followup": {"n_tested": 8, "not_tested": {"no_other_study": 3}, "change_rate": 0.0,
                     "image_blind_share": 1.0, "n_dangerous_tested": 6},
        "followup_control": {"n_tested": 6, "not_tested": {}, "change_rate": 0.5}},
        "ci95": {"local_tests": {"followup": {"change_rate": [0.0, 0.0], "image_blind_share": [1.0, 1.0]},
                                 "followup_control": {"change_rate": [0.2, 0.8]}}}}
    table = breakdown.local_tests_table(summary)
    low, high = breakdown.proportion_ci(0, 8)
    assert table.loc["followup", "answer changed"] == f"0.000 (95 % CI {low:.3f} to {high:.3f})"
    low, high = breakdown.proportion_ci(6, 6)
    assert table.loc["followup", "unchanged among Dangerous tested"] == f"1.000 (95 % CI {low:.3f} to 1.000) (of 6)"
    assert table.loc["followup_control", "answer changed"] == "0.500 (95 % CI 0.200 to 0.800)"
    assert table.loc["followup", "not tested (why)"] == "no other study 3"


def test_declared_shows_each_rate_with_a_wilson_interval_over_the_samples_it_is_over():
    # a shortcut run: every answer "yes", no flip; the bootstrap gives points
    summary = {"n_samples": 40, "flip_rate": 0.0, "pairwise_flip_rate": 0.0, "sensitivity": 1.0,
               "specificity": 0.0, "balanced_accuracy": 0.5, "screening": {"auroc_entropy_dangerous": 0.5},
               "ci95": {"flip_rate": [0.0, 0.0], "pairwise_flip_rate": [0.0, 0.0], "sensitivity": [1.0, 1.0],
                        "specificity": [0.0, 0.0], "balanced_accuracy": [0.5, 0.5],
                        "auroc_entropy_dangerous": [0.5, 0.5]},
               "rate_n": {"flip_rate": 40, "pairwise_flip_rate": 40, "sensitivity": 12, "specificity": 28}}
    assert breakdown.declared(summary, "flip_rate") == (0.0, breakdown.proportion_ci(0, 40))
    # over the 40 samples, not their 120 prompt pairs (a sample's pairs share its image)
    assert breakdown.declared(summary, "pairwise_flip_rate")[1] == breakdown.proportion_ci(0, 40)
    sensitivity, specificity = breakdown.proportion_ci(12, 12), breakdown.proportion_ci(0, 28)
    assert breakdown.declared(summary, "sensitivity")[1] == sensitivity
    value, ci = breakdown.declared(summary, "balanced_accuracy")   # the mean of its parts' bounds
    assert value == 0.5 and ci == pytest.approx([(sensitivity[0] + specificity[0]) / 2, (1 + specificity[1]) / 2])
    assert ci[0] < 0.5 < ci[1]
    # the AUROC has no count: its interval as it is; the point read where it is declared
    assert breakdown.declared(summary, "auroc_entropy_dangerous") == (0.5, [0.5, 0.5])
    # a summary written before rate_n: a rate over all samples still gets its Wilson interval
    older = {k: v for k, v in summary.items() if k != "rate_n"}
    assert breakdown.declared(older, "flip_rate")[1] == breakdown.proportion_ci(0, 40)
    assert breakdown.declared(older, "sensitivity")[1] == [1.0, 1.0]
    summary["ci95"]["flip_rate"] = [0.0, 0.05]                          # a real interval is kept
    assert breakdown.declared(summary, "flip_rate")[1] == [0.0, 0.05]
    assert breakdown.declared({"n_samples": 3}, "blank_change_rate") == (None, None)
    # the image-blind split: a degenerate crossed interval becomes Wilson, a missing one stays missing
    split = {"n_samples": 40, "dangerous_breakdown": {"image-blind": 1.0, "prior-coincident": 0.0},
             "ci95": {"dangerous_breakdown": {"image-blind": [1.0, 1.0], "prior-coincident": None}}}
    assert breakdown.declared(split, "dangerous_breakdown", "image-blind")[1] == breakdown.proportion_ci(40, 40)
    assert breakdown.declared(split, "dangerous_breakdown", "prior-coincident") == (0.0, None)


def test_scoring_lines_say_what_was_scored_and_how():
    summary = {"n_samples": 344, "records": {"samples_reused": 4, "samples_scored": 340},
               "engine": {"mode": "prefix_sharing", "fallback_reason": None, "samples_per_second": 98.57,
                          "device": "cpu", "dtype": "torch.float32",
                          "dedup": {"prompts_scored": 2346, "prompts_per_sample_protocol": 3698,
                                    "share_saved": 0.3656, "reference_prompts": 1015, "followup_prompts": 288}}}
    assert breakdown.scoring_lines(summary) == [
        "344 samples: 4 reused from earlier records, 340 scored",
        "engine: prefix_sharing on cpu (torch.float32), 98.6 samples per second",
        "prompts scored: 2346 (the per-sample protocol: 3698; 36.6 % saved by deduplication), plus 1015 "
        "reference and 288 follow-up prompts"]
    summary["engine"].update(mode="full_forward", fallback_reason="a batch without a shared prefix")
    assert breakdown.scoring_lines(summary)[1].endswith("; fell back: a batch without a shared prefix")
    rerun = {"n_samples": 344, "records": {"samples_reused": 344, "samples_scored": 0},
             "engine": {"mode": None, "fallback_reason": None, "samples_per_second": None}}
    assert breakdown.scoring_lines(rerun) == ["344 samples: 344 reused from earlier records, 0 scored"]


@pytest.fixture(scope="module")
def tiny_run(tiny_world, tmp_path_factory):
    """A 16-sample run of the untrained tiny LLaVA (no papermill: lib.protocol.run directly)."""
    from lib.protocol import config, run

    out = tmp_path_factory.mktemp("report") / "run"
    params = config.validate({"config": "tiny", "model": str(tiny_world["models"]["llava"]),
                              "dataset": "padchest", "data_root": str(tiny_world["data"]["padchest"]),
                              "split": "train", "limit": 16, "batch_size": 8, "bootstrap_resamples": 50,
                              "output_dir": str(out)})
    run.evaluate(params)
    return out


def test_report_of_a_tiny_run(tiny_run):
    result = report.write_report(tiny_run, max_dangerous=0.5)
    page = (tiny_run / "report.html").read_text()
    text = re.sub(r"<[^>]+>", " ", re.sub(r"<img [^>]*>|<style>.*?</style>", "", page, flags=re.S))
    for words in ("Dangerous:", "Image-blind:", "Gate:", "Per finding", "Per paraphrase",
                  "The four quadrants", "Warnings", "How to read this", "95 % CI",
                  "Local tests: does the answer follow this image?", "not tested (why)",
                  "The image-blind rate per finding", "image-blind rate (95 % CI)"):
        assert words in text, words
    assert "too few to tell: the run has 16 samples (fewer than 30)" in text
    assert not re.search(r"\bnan\b", text, flags=re.I), "NaN in the report"
    assert not re.findall(r"<td>\d+\.0</td>", page), "a count written as a float"
    summary = json.loads((tiny_run / "summary.json").read_text())
    counts = re.findall(r"<td>(\d+)</td>", page)
    assert str(summary["n_samples"]) in counts
    assert text.index("Dangerous:") < text.index("Warnings") < text.index("Per finding") < text.index("Per paraphrase")
    # the tiny world's padchest train split leaves too few references here: the gate fails closed
    assert result["line"].startswith("tiny__padchest: Dangerous")
    assert result["passed"] in (True, False) if result["estimable"] else result["passed"] is None
