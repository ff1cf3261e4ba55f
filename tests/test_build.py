"""lib.offline.build: what notebooks/build_default.py checks and records, on the tiny world."""
import json
import os

import pandas as pd
import pytest

from lib.offline import build, default_models, twins
from lib.offline.world import prevalence, write_default_datasets
from lib.protocol import data, run

REPORT_KEYS = ["seed", "n_images", "world", "build_seconds", "prevalence", "prevalence_floor",
               "prevalence_real", "prevalence_sources", "prevalence_measured", "train_prevalence",
               "prompt_split", "twins", "references", "n_references", "reliance_dial", "checks",
               "requirements_met", "training",
               "n_train_images", "n_test_images", "packages", "git_commit", "machine"]


@pytest.fixture(scope="module")
def world(tiny_world, tmp_path_factory):
    """A default build's folder: 40 images a dataset (the tiny world's 16 leave no test split),
    the tiny models as its base models, the prompt split."""
    out = tmp_path_factory.mktemp("default")
    roots = write_default_datasets(out / "data", n_images=40, seed=0)
    (out / "models").mkdir()
    for family in default_models.FAMILIES:
        os.symlink(tiny_world["models"][family], out / "models" / f"{family}-base")
    (out / "prompt_split.json").write_text(json.dumps(default_models.prompt_split(4)))
    return out, roots


@pytest.fixture(scope="module")
def checked(world):
    """One held-out check: the llava base model on 6 test samples of mimic-cxr."""
    out, roots = world
    params = build.check_params("llava", "mimic-cxr", roots["mimic-cxr"], out,
                                twins=twins.twin_csv(out / "data", "mimic-cxr"), limit=6, seed=0, bootstrap=20)
    return params, run.evaluate(params)


def test_check_params_ask_the_original_question_of_the_base_model(checked):
    params, _ = checked
    assert params["config"] == "llava-base" and params["model"].endswith("models/llava-base")
    assert (params["max_paraphrases"], params["reliance_checks"], params["limit"]) == (0, [], 6)
    assert params["output_dir"].endswith("checks/llava-base__mimic-cxr")
    assert params["twins"].endswith("mimic-cxr.csv") and params["prompt_split"].endswith("prompt_split.json")


def test_check_row_reads_the_summary_and_counts_the_twins(checked):
    _, result = checked
    row = build.check_row("llava", "mimic-cxr", result)
    s, samples = result.summary, result.samples
    assert (row["n"], row["n_twin"]) == (6, 6)
    for key in ("accuracy", "sensitivity", "specificity", "balanced_accuracy"):
        assert row[key] == s[key]
    # what the notebook computed before reading the summary: the same numbers
    pos, neg = samples[samples.label == "yes"], samples[samples.label == "no"]
    assert row["n_positive"] == len(pos)
    assert len(pos) and len(neg)
    assert row["sensitivity"] == (pos.pred == "yes").mean()
    assert row["specificity"] == (neg.pred == "no").mean()
    image = result.predictions.loc[result.predictions.condition == "image", "yes_no_mass"]
    assert row["yes_no_mass_median"] == image.median()
    assert row["twin_changes"] == samples.truly_image_reliant.astype(bool).mean()
    finding = samples.finding.iloc[0]
    assert row[f"accuracy {finding}"] == samples[samples.finding == finding].correct.mean()
    assert row[f"text_only p_yes {finding}"] == pytest.approx(
        samples[samples.finding == finding].p_yes_text_only.mean())


def test_meets_requirements_is_the_bar_of_every_measure():
    ok = {"balanced_accuracy": 0.8, "yes_no_mass_median": 0.9, "twin_changes": 0.6}
    rows = pd.DataFrame([ok, {**ok, "balanced_accuracy": 0.79}, {**ok, "yes_no_mass_median": None},
                         {**ok, "twin_changes": None}, {**ok, "balanced_accuracy": float("nan")}])
    assert build.meets_requirements(rows).tolist() == [True, False, False, False, False]


def test_measured_prevalence_counts_each_split(world):
    _, roots = world
    measured = build.measured_prevalence(roots)
    assert set(measured["padchest"]) == {"train", "test"}
    for dataset, root in roots.items():
        for split, by_finding in measured[dataset].items():
            samples = list(data.iter_samples(dataset, root, split=split))
            assert sum(v["n"] for v in by_finding.values()) == len(samples)
            assert sum(v["positives"] for v in by_finding.values()) == sum(s.label == "yes" for s in samples)
            assert all(v["rate"] == v["positives"] / v["n"] for v in by_finding.values())
    table = build.prevalence_table(measured, {"mimic-cxr": {"nodule": 0.05}})
    assert table.loc["nodule", "drawn mimic-cxr"] == 0.05


def test_reliance_dial_lists_the_test_samples_of_its_findings(world):
    _, roots = world
    dial = build.reliance_dial(roots)
    assert set(dial) == set(default_models.RELIANCE_DIAL)
    for name, entry in dial.items():
        for dataset, root in roots.items():
            expected = [s.sample_id for s in data.iter_samples(dataset, root, split="test")
                        if s.finding in entry["findings"]]
            assert entry["built_to_ignore"][dataset] == expected
    assert sum(len(ids) for entry in dial.values() for ids in entry["built_to_ignore"].values()) > 0


def test_build_report_keys_and_the_gate(tmp_path):
    checks = pd.DataFrame({"family": ["llava", "gemma3"], "meets_requirements": [True, False]})
    report = build.build_report(seed=0, n_images=16, world="real", prevalence_floor=0.05, build_seconds=1.0,
                                measured={}, train_prevalence={}, prompt_split=tmp_path / "p.json",
                                twins={"padchest": tmp_path / "t.csv"}, dial={}, checks=checks,
                                training={"epochs": 1}, n_train_images=10, n_test_images=6)
    assert list(report) == REPORT_KEYS
    assert report["requirements_met"] is False
    assert report["prevalence"] == prevalence("real", 0.05)
    assert report["twins"] == {"padchest": str(tmp_path / "t.csv")}
    json.dumps(report)
