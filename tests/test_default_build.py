"""The required properties of the offline default family, checked on the build `make all` uses.

`make test` builds `outputs/default` first (`notebooks/build_default.ipynb`, cached until its
inputs change); these tests read what that build wrote. A full build is what the properties are
about: a smaller one would not show them.
"""
import json
from pathlib import Path

import pandas as pd
import pytest

from lib.offline import default_models
from lib.protocol import models

ROOT = Path(__file__).resolve().parents[1] / "outputs" / "default"
CHECKS = [(f, d) for f in default_models.FAMILIES for d in ("mimic-cxr", "padchest")]
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


def check(report, family, dataset):
    rows = [c for c in report["checks"] if (c["family"], c["dataset"]) == (family, dataset)]
    assert len(rows) == 1, f"no single check for {family} on {dataset}"
    return rows[0]


@pytest.mark.parametrize("family,dataset", CHECKS)
def test_base_model_is_accurate_with_the_image(report, family, dataset):
    row = check(report, family, dataset)
    assert row["n"] >= 200
    assert row["accuracy"] >= default_models.MIN_ACCURACY, row


@pytest.mark.parametrize("family,dataset", CHECKS)
def test_base_model_uses_the_image(report, family, dataset):
    assert check(report, family, dataset)["text_only_differs"] >= default_models.MIN_TEXT_ONLY_DIFFERS


def test_report_says_the_requirements_hold(report):
    assert report["requirements_met"] is True


def test_build_fits_in_ten_minutes(report):
    assert report["build_seconds"] <= 600


def test_split_is_recorded_and_disjoint(split):
    assert split["train"] and split["test"]
    assert not split["train"] & split["test"]


def test_split_is_the_readers_split(split):
    roots = {d: ROOT / "data" / d for d in ("mimic-cxr", "padchest")}
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
