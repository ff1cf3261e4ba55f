"""docs/results.md's image-blind section: coverage counted and the error's median taken by hand."""
import json

import pandas as pd
import pytest

from lib.front import results


def entry(estimate, low, high, truth):
    return {"truth": truth, "estimate": estimate, "ci95": [low, high],
            "covered": low <= truth <= high, "n_samples": 100}


ENTRIES = [("a-base__mimic-cxr", entry(0.10, 0.05, 0.15, 0.12)),       # covered, |error| 0.02
           ("a-lora__padchest", entry(0.30, 0.25, 0.35, 0.20)),        # missed, 0.10
           ("a-lora-shortcut__padchest", entry(0.80, 0.70, 0.90, 0.50)),  # missed, not counted in the median
           ("b-base__padchest", entry(0.05, 0.00, 0.10, 0.01)),        # covered, 0.04
           ("no-twins__mimic-cxr", None)]


def test_coverage_by_hand():
    got = results.coverage(ENTRIES)
    assert got["covered"] == 2 and got["n"] == 4
    assert got["median_abs_error_non_shortcut"] == pytest.approx(0.04)   # of 0.02, 0.04, 0.10


def test_image_blind_section_reads_summaries_and_seeds(tmp_path):
    runs = {pair: {"ground_truth": {"image_blind": e, "reference_auroc": 0.7},
                   "image_blind": {"by_finding": {"nodule": {"n_references": {"yes": 40, "no": 200}}}}}
            for pair, e in ENTRIES}
    seeds = tmp_path / "seeds"
    seeds.mkdir()
    pd.DataFrame([{"seed": s, "pair": "p", "image_blind": 0.1, "image_blind_low": 0.05, "image_blind_high": 0.15,
                   "image_blind_truth": t, "image_blind_covered": float(0.05 <= t <= 0.15)}
                  for s, t in ((0, 0.1), (1, 0.2), (2, 0.12))]).to_csv(seeds / "seeds.csv", index=False)
    text = results.image_blind_section(runs, seeds)
    assert "covers the twin truth in **2 of 4** pairs" in text and "**0.040**" in text
    assert "**2 of 3** pair x seed" in text
    assert "nodule 40/200" in text
    json.dumps(text)


def test_local_tests_pool_counts_over_runs_and_controls_by_tested_samples():
    pooled = results.pool([{"n_hits": 8, "n_predicted": 10, "n_true": 9, "n_covered": 40},
                           {"n_hits": 1, "n_predicted": 2, "n_true": 3, "n_covered": 20}, {}])
    intervals = {k.removesuffix("_ci"): pooled.pop(k) for k in ("precision_ci", "recall_ci")}
    assert pooled == {"precision": 0.75, "recall": 0.75, "n_predicted": 12, "n_true": 12, "n_covered": 60}
    # Wilson 95 % for 9 of 12: 0.468 to 0.911 (statsmodels proportion_confint)
    assert intervals["precision"] == intervals["recall"] == pytest.approx([0.468, 0.911], abs=1e-3)
    assert results.pooled_cells(results.pool([{"n_hits": 9, "n_predicted": 12, "n_true": 12}]))[0] \
        == "0.75 (95 % CI 0.47 to 0.91)"
    assert results.pool([{}])["precision"] is None and results.pool([{}])["precision_ci"] is None
    rate, n = results.pooled_change_rate([{"change_rate": 0.1, "n_tested": 30}, {"change_rate": 0.0, "n_tested": 10},
                                          {"change_rate": None, "n_tested": 0}])
    assert (rate, n) == (pytest.approx(0.075), 40)


def test_local_tests_section_reads_summaries_samples_and_shortcut_findings(tmp_path):
    run_dir = tmp_path / "runs" / "llava-lora-shortcut__mimic-cxr"
    run_dir.mkdir(parents=True)
    pd.DataFrame({"finding": ["nodule", "nodule", "nodule", "cardiomegaly"],
                  "truly_image_reliant": pd.array([False, False, True, False], dtype="boolean"),
                  "occlusion_changes": pd.array([False, True, False, False], dtype="boolean"),
                  "followup_changes": pd.array([None] * 4, dtype="boolean")}).to_parquet(run_dir / "samples.parquet")
    assert results.built_to_ignore_recall(run_dir, "occlude", ["nodule"]) == (0.5, 2)
    truth = {"n_hits": 1, "n_predicted": 1, "n_true": 2, "n_covered": 3, "coverage": 0.75,
             "precision": 1.0, "recall": 0.5}
    runs = {"llava-lora-shortcut__mimic-cxr": {"config": "llava-lora-shortcut", "ground_truth": {"local_tests": {"occlude": truth}},
                                               "local_tests": {"occlude_control": {"n_tested": 3, "change_rate": 0.0}}}}
    text = results.local_tests_section(runs, tmp_path / "runs", tmp_path / "seeds")
    assert "| llava-lora-shortcut__mimic-cxr | occlude | 3 (0.75) | 1.00 / 0.50 | 0.000 (n 3) |" in text
    assert "| occlude | all | 0 | 0 | 0 | n/a | n/a |" in text         # the only pair is a shortcut
    assert "| occlude | yes |" not in text        # no by_label block: no sample covered, no row
    assert "built-to-ignore recall" in text


def test_local_seeds_pool_each_seed_and_all_seeds_together(tmp_path):
    def row(seed, pair, hits, predicted, true):
        counts = {f"{t}_{k}": v for t in ("occlude", "followup")
                  for k, v in (("hits", hits), ("predicted", predicted), ("true", true), ("covered", 50))}
        controls = {f"{c}_{k}": v for c in ("occlude_control", "followup_control")
                    for k, v in (("change_rate", 0.1), ("tested", 10))}
        by_label = {f"{t}_{label}_{k}": v for t in ("occlude", "followup") for label, share in (("yes", 1), ("no", 0))
                    for k, v in (("hits", hits * share), ("predicted", predicted * share), ("true", true * share),
                                 ("covered", 25))}
        return {"seed": seed, "pair": pair, **counts, **controls, **by_label}
    pd.DataFrame([row(0, "llava-base__mimic-cxr", 3, 4, 4), row(1, "llava-base__mimic-cxr", 5, 6, 8),
                  row(1, "llava-lora-shortcut__mimic-cxr", 9, 9, 9)]).to_csv(tmp_path / "seeds.csv", index=False)
    text = results.local_seeds_text(tmp_path)
    assert "| 0 | occlude | all | 50 | 4 | 0.75 (95 % CI 0.30 to 0.95) | 0.75 (95 % CI 0.30 to 0.95) |" in text
    # all seeds: 8 of 10 flagged, 8 of 12 truly unchanged; the shortcut pair is left out
    assert "| all | followup | all | 100 | 12 | 0.80 (95 % CI 0.49 to 0.94) | 0.67 (95 % CI 0.39 to 0.86) |" in text
    # by label: every count here is the positives'; the negatives have none
    assert "| all | followup | yes | 50 | 12 | 0.80 (95 % CI 0.49 to 0.94) | 0.67 (95 % CI 0.39 to 0.86) |  |  |" in text
    assert "| all | followup | no | 50 | 0 | n/a | n/a |  |  |" in text


def test_twin_margins_say_how_far_the_twins_answer_was_from_a_tie(tmp_path):
    run_dir = tmp_path / "runs" / "llava-base__mimic-cxr"
    run_dir.mkdir(parents=True)
    pd.DataFrame({"sample_id": ["a", "b", "c", "d"], "label": ["no", "no", "yes", "no"],
                  "truly_image_reliant": pd.array([True, False, True, None], dtype="boolean"),
                  "followup_changes": pd.array([True, True, None, False], dtype="boolean"),
                  "occlusion_changes": pd.array([None] * 4, dtype="boolean")}).to_parquet(run_dir / "samples.parquet")
    pd.DataFrame({"sample_id": ["a", "b", "c", "a"], "prompt_id": [0, 0, 0, 1], "condition": ["twin"] * 4,
                  "p_yes": [0.9, 0.45, 0.1, 0.5]}).to_parquet(run_dir / "predictions.parquet")
    frame = results.twin_margins(run_dir, "followup")   # c: not covered; d: no twin truth
    assert frame["agrees"].tolist() == [True, False]
    assert frame["margin"].tolist() == pytest.approx([0.4, 0.05])
    text = results.margins_text({"llava-base__mimic-cxr": {}}, tmp_path / "runs")
    assert "| followup | no | agrees | 1 | 0.40 (0.40 to 0.40) |" in text
    assert "| followup | no | disagrees | 1 | 0.05 (0.05 to 0.05) |" in text
    assert "| occlude |" not in text                      # covers no sample here


def test_followup_is_scored_by_how_many_other_findings_the_studies_label_differently(tmp_path):
    for seed, folder in ((0, tmp_path / "runs"), (1, tmp_path / "seeds" / "1" / "runs")):
        for pair in ("llava-base__mimic-cxr", "llava-lora-shortcut__mimic-cxr"):
            (folder / pair).mkdir(parents=True)
            pd.DataFrame({"truly_image_reliant": pd.array([False, True, False, True, None], dtype="boolean"),
                          "followup_changes": pd.array([False, False, True, True, False], dtype="boolean"),
                          "followup_differing_labels": pd.array([0, 0, 1, 1, 0], dtype="Int64")}
                         ).to_parquet(folder / pair / "samples.parquet")
    counts = results.followup_counts(tmp_path / "runs" / "llava-base__mimic-cxr")
    assert counts == {"0": {"precision": 0.5, "recall": 1.0, "n_hits": 1, "n_predicted": 2, "n_true": 1, "n_covered": 2},
                      "1 or more": {"precision": None, "recall": 0.0, "n_hits": 0, "n_predicted": 0, "n_true": 1,
                                    "n_covered": 2}}
    text = results.differing_text({0: tmp_path / "runs", 1: tmp_path / "seeds" / "1" / "runs"})
    assert "| 0 | 0 | 2 | 1 | 0.50 (95 % CI 0.09 to 0.91) | 1.00 (95 % CI 0.21 to 1.00) |" in text
    assert "| all | 1 or more | 4 | 2 | n/a | 0.00 (95 % CI 0.00 to 0.66) |" in text   # the shortcut pairs left out


def test_correlation_section_never_rounds_a_p_value_to_zero():
    corr = {"n": 20, "pearson_r": -0.766, "ci95_low": -0.902, "ci95_high": -0.489, "bootstrap_ci95": [-0.84, -0.69],
            "p_value": 8.31e-05, "permutation_p": 1e-04, "spearman_rho": -0.748, "independence_r": None,
            "image_blind": {"n": 20, "pearson_r": -0.539, "ci95_low": -0.79, "ci95_high": -0.13,
                            "bootstrap_ci95": [-0.60, -0.46], "p_value": 0.0142, "permutation_p": 0.002,
                            "spearman_rho": -0.608}}
    text = results.correlation_section(corr)
    assert "| flip rate vs Dangerous fraction | 20 | -0.766 | [-0.90, -0.49] | [-0.84, -0.69] | 8.3e-05 | 1.0e-04 | -0.748 |" in text
    assert "| 0.014 | 0.002 | -0.608 |" in text
