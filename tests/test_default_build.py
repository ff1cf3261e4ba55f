"""The required properties of the offline default world, checked on the build `make all` uses.

`make test` builds `outputs/default` first (`notebooks/build_default.ipynb`, cached until its
inputs change); these tests read what that build wrote. A full build is what the properties are
about: a smaller one would not show them. They assert properties with margins, never a build's
exact numbers: balanced accuracy with the image, the yes/no mass, the twins, the text-only prior,
the label priors as recorded, and the paraphrases no training stage saw.
"""
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from lib.offline import default_models, finetune, twins, world
from lib.protocol import data, models, questions

REPO = Path(__file__).resolve().parents[1]
# OFFLINE_DEFAULT_ROOT: check another build (e.g. one in a scratch folder) instead of outputs/default
ROOT = Path(os.environ.get("OFFLINE_DEFAULT_ROOT", REPO / "outputs" / "default"))
DATASETS = ("mimic-cxr", "padchest")
CHECKS = [(f, d) for f in default_models.FAMILIES for d in DATASETS]
MODEL_CLASSES = {"llava": "LlavaForConditionalGeneration",
                 "gemma3": "Gemma3ForConditionalGeneration"}


@pytest.fixture(scope="module")
def report():
    path = ROOT / "build_report.json"
    if not path.is_file():
        pytest.fail(f"{path} is missing: run `make default` (`make test` does it first)")
    return json.loads(path.read_text())


@pytest.fixture(scope="module")
def split():
    table = pd.read_csv(ROOT / "split.csv")
    return {name: set(group.image_id) for name, group in table.groupby("split")}


@pytest.fixture(scope="module")
def prompt_split():
    return json.loads((ROOT / "prompt_split.json").read_text())


def check(report, family, dataset):
    rows = [c for c in report["checks"] if (c["family"], c["dataset"]) == (family, dataset)]
    assert len(rows) == 1, f"no single check for {family} on {dataset}"
    return rows[0]


# -- the base models ------------------------------------------------------------------------

@pytest.mark.parametrize("family,dataset", CHECKS)
def test_base_model_is_accurate_with_the_image(report, family, dataset):
    """Balanced accuracy, not accuracy: with the real priors an always-"no" model is ~90 % accurate."""
    row = check(report, family, dataset)
    assert row["n"] >= 200 and row["n_positive"] >= 10
    assert row["balanced_accuracy"] >= default_models.MIN_BALANCED_ACCURACY, row
    assert row["sensitivity"] >= 0.6 and row["specificity"] >= 0.8, row


@pytest.mark.parametrize("family,dataset", CHECKS)
def test_base_model_answers_yes_or_no(report, family, dataset):
    """Its next-token distribution is the answer: the entropy the protocol reads is the model's."""
    assert check(report, family, dataset)["yes_no_mass_median"] >= default_models.MIN_YES_NO_MASS


@pytest.mark.parametrize("family,dataset", CHECKS)
def test_base_model_answer_follows_the_twin(report, family, dataset):
    row = check(report, family, dataset)
    assert row["n_twin"] == row["n"]
    assert row["twin_changes"] >= default_models.MIN_TWIN_CHANGES, row


@pytest.mark.parametrize("family", default_models.FAMILIES)
def test_text_only_answer_is_the_learned_prior(report, family):
    """Its p(yes) without the image is near the finding's rate in the training labels (the same
    question on both datasets: one prior per finding), so its text-only answer is "no"."""
    prior = report["train_prevalence"]
    for dataset in DATASETS:
        row = check(report, family, dataset)
        for finding, rate in prior.items():
            p_yes = row[f"text_only p_yes {finding}"]
            assert abs(p_yes - rate) <= 0.12, (dataset, finding, p_yes, rate)
            assert p_yes < 0.5


def test_report_says_the_requirements_hold(report):
    assert report["requirements_met"] is True


def test_build_fits_in_ten_minutes(report):
    assert report["build_seconds"] <= 600


# -- the label priors -------------------------------------------------------------------------

def test_prevalence_is_recorded_as_drawn(report):
    assert report["world"] == "real"
    assert report["prevalence_floor"] == world.PREVALENCE_FLOOR
    assert report["prevalence"] == world.prevalence("real", report["prevalence_floor"])
    assert set(report["prevalence"]) == set(data.DATASETS)   # the VinDr-like tree too (never trained on)
    assert all(set(rates) == set(data.FINDINGS) for rates in report["prevalence"].values())
    assert report["prevalence_sources"] == world.PREVALENCE_SOURCES


def test_the_datasets_have_the_recorded_prevalence(report):
    for dataset, by_split in report["prevalence_measured"].items():
        for finding, rate in report["prevalence"][dataset].items():
            n = sum(s[finding]["n"] for s in by_split.values())
            positives = sum(s[finding]["positives"] for s in by_split.values())
            spread = np.sqrt(rate * (1 - rate) / n)
            assert abs(positives / n - rate) <= 5 * spread + 0.02, (dataset, finding, positives / n, rate)
        test = by_split["test"]
        assert sum(v["positives"] for v in test.values()) >= 10, (dataset, test)


# -- held-out paraphrases -------------------------------------------------------------------

def test_every_finding_keeps_paraphrases_that_no_training_saw(prompt_split):
    sets = questions.load_question_sets()
    assert set(prompt_split) == set(data.FINDINGS)
    for finding, part in prompt_split.items():
        assert part["held_out"] and part["train"]
        assert not set(part["train"]) & set(part["held_out"])
        assert part["train"] + part["held_out"] == list(questions.prompts_for(finding, sets))
        assert part["train"][0] == questions.prompts_for(finding, sets)[0]  # the original is trained


def in_build(path):
    """A params path under outputs/default, in the build these tests check."""
    return ROOT / Path(path).relative_to("outputs/default")


def held_out(prompt_split):
    return {q for part in prompt_split.values() for q in part["held_out"]}


@pytest.mark.parametrize("family", default_models.FAMILIES)
def test_base_training_never_saw_a_held_out_paraphrase(prompt_split, family):
    trained = json.loads((ROOT / "models" / f"{family}-base" / default_models.TRAINING_PROMPTS).read_text())
    assert trained and not set(trained) & held_out(prompt_split)
    assert set(trained) == {q for part in prompt_split.values() for q in part["train"]}


@pytest.mark.parametrize("lora", sorted((REPO / "params" / "lora").glob("*.yaml")), ids=lambda p: p.stem)
def test_lora_training_never_sees_a_held_out_paraphrase(prompt_split, lora):
    spec = finetune.resolve(yaml.safe_load(lora.read_text()), lora)
    assert spec["prompt_split"] == "outputs/default/prompt_split.json"
    allowed = default_models.train_prompts(finetune.read_prompt_split(in_build(spec["prompt_split"])))
    assert not {q for prompts in allowed.values() for q in prompts} & held_out(prompt_split)
    adapter = in_build(spec["output_dir"]) / default_models.TRAINING_PROMPTS
    if adapter.is_file():  # `make adapters` has run
        trained = set(json.loads(adapter.read_text()))
        assert trained and not trained & held_out(prompt_split)


# -- params of the default pairs ------------------------------------------------------------

@pytest.mark.parametrize("pair", sorted((REPO / "params").glob("*.yaml")), ids=lambda p: p.stem)
def test_every_default_pair_names_the_twins_and_the_prompt_split(pair):
    params = yaml.safe_load(pair.read_text())
    assert params["prompt_split"] == "outputs/default/prompt_split.json"
    assert params["twins"] == f"outputs/default/data/twins/{params['dataset']}.csv"


# -- the twins and the reliance dial --------------------------------------------------------

@pytest.mark.parametrize("dataset", DATASETS)
def test_every_test_sample_has_a_twin_differing_only_in_its_region(report, split, dataset):
    csv = REPO / report["twins"][dataset]
    assert csv == ROOT / "data" / "twins" / f"{dataset}.csv"
    table = pd.read_csv(csv, dtype={"image_id": str})
    samples = list(data.iter_samples(dataset, ROOT / "data" / dataset, split="test"))
    assert {(s.image_id, s.finding) for s in samples} <= set(zip(table.image_id, table.finding))
    assert set(table.image_id) <= split["test"]
    paths = {s.image_id: s.image_path for s in samples}
    block = 8 if dataset == "mimic-cxr" else None
    for row in table.iloc[::7].itertuples():  # every 7th twin: all findings, a sixth of the time
        original = np.asarray(data.read_xray(paths[row.image_id]), dtype=int)
        twin = np.asarray(data.read_xray(csv.parent / row.twin_path), dtype=int)
        region = twins.twin_region(row, block=block)
        assert not (twin != original)[~region].any(), (row.image_id, row.finding)
        assert (np.abs(twin - original)[region] >= 20).sum() >= 20, (row.image_id, row.finding)


def test_the_reliance_dial_is_recorded_and_matches_its_adapters(report):
    dial = report["reliance_dial"]
    assert set(dial) == set(default_models.RELIANCE_DIAL)
    for name, entry in dial.items():
        spec = yaml.safe_load((REPO / "params" / "lora" / f"{name}.yaml").read_text())
        assert sorted(spec["shortcut_findings"]) == sorted(entry["findings"])
        for dataset in DATASETS:
            ignored = entry["built_to_ignore"][dataset]
            assert ignored and all(i.split("/", 1)[1] in entry["findings"] for i in ignored)
            for finding in entry["findings"]:
                assert any(i.endswith("/" + finding) for i in ignored)
        assert {f"{name}__{d}.yaml" for d in DATASETS} <= {p.name for p in (REPO / "params").glob("*.yaml")}


# -- split and files ------------------------------------------------------------------------

def test_split_is_recorded_and_disjoint(split):
    assert split["train"] and split["test"]
    assert not split["train"] & split["test"]


def test_split_is_the_readers_split(split):
    roots = {d: ROOT / "data" / d for d in DATASETS}
    _, train_ids = default_models.training_examples(roots, split="train")
    _, test_ids = default_models.training_examples(roots, split="test")
    assert (train_ids, test_ids) == (split["train"], split["test"])


@pytest.mark.parametrize("family,dataset", CHECKS)
def test_checks_were_measured_on_held_out_images_only(split, family, dataset):
    samples = pd.read_parquet(ROOT / "checks" / f"{family}-base__{dataset}" / "samples.parquet")
    assert set(samples.image_id) <= split["test"]


@pytest.mark.parametrize("family", default_models.FAMILIES)
def test_models_reload_through_the_loader_with_their_logs(family):
    model_dir = ROOT / "models" / f"{family}-base"
    loaded = models.load_model(str(model_dir))
    assert type(loaded.model).__name__ == MODEL_CLASSES[family]
    for log in ("vision_log.csv", "train_log.csv"):
        table = pd.read_csv(model_dir / log)
        assert len(table) > 10 and table.loss.notna().all()
        assert table.loss.iloc[-5:].mean() < table.loss.iloc[:5].mean(), f"{family} {log} did not learn"
