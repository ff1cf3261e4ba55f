"""lib.protocol.data on the real PadChest labels file (fetched from the torchxrayvision 1.5.7
wheel into a cache by tests/real_padchest.py; skipped, with the reason, when it cannot be had).

Frontal = Projection PA, AP or AP_horizontal: 110,633 of the file's 160,861 rows.
"""
import collections
import csv
import gzip
import re

import pytest

from lib.protocol import data, labels, padchest
from tests.real_padchest import build_padchest_tree, read_real, require_real_padchest

# Positive frontal images per finding under the hierarchy (lib.protocol.labels.FINDING_LABELS).
# Obtained by `independent_positive_counts` below: the file read with the stdlib csv module (no
# pandas, no ast), the Labels cell split with the regex '([^']*)', entries stripped and lower-cased,
# an image counted when any of the finding's PadChest labels is among them (whatever else it
# carries, exclude included). Exact-label counts for comparison: pleural effusion 6,942,
# pneumothorax 394, nodule 2,353, cardiomegaly 9,848.
POSITIVE_FRONTAL = {"cardiomegaly": 9848, "pleural effusion": 7042, "pneumothorax": 416,
                    "nodule": 2549, "atelectasis": 6168, "consolidation": 1766, "edema": 1299,
                    "enlarged cardiomediastinum": 4502, "fracture": 3010, "pleural other": 3520,
                    "pneumonia": 5223}
PADCHEST_FINDINGS = tuple(POSITIVE_FRONTAL)


@pytest.fixture(scope="module")
def real_csv(tmp_path_factory):
    """A data root holding only the real labels file (a link to the cached copy)."""
    csv_path = require_real_padchest()
    root = tmp_path_factory.mktemp("padchest_real")
    (root / data.PADCHEST_CSV).with_suffix(".csv.gz").symlink_to(csv_path)
    return root


def independent_positive_counts(path) -> collections.Counter:
    counts = collections.Counter()
    with gzip.open(path, "rt", encoding="utf-8", newline="") as handle:
        for row in csv.DictReader(handle):
            if row["Projection"] not in ("PA", "AP", "AP_horizontal"):
                continue
            present = {x.strip().lower() for x in re.findall(r"'([^']*)'", row["Labels"])} - {""}
            for finding in PADCHEST_FINDINGS:
                counts[finding] += bool(present & set(labels.FINDING_LABELS[finding]["padchest"]))
    return counts


@pytest.fixture(scope="module")
def reader_labels(real_csv):
    """{finding: set of positive image ids} and all image ids, every split, exclude kept."""
    policy = data.LabelPolicy(padchest_exclude="no")
    positives, images = collections.defaultdict(set), set()
    for s in data.iter_labels("padchest", real_csv, findings=PADCHEST_FINDINGS, label_policy=policy):
        images.add(s.image_id)
        if s.label == "yes":
            positives[s.finding].add(s.image_id)
    return positives, images


def test_positive_counts_under_hierarchy_equal_independent_count(real_csv, reader_labels):
    positives, _ = reader_labels
    assert {f: len(positives[f]) for f in PADCHEST_FINDINGS} == POSITIVE_FRONTAL
    independent = independent_positive_counts(real_csv / f"{data.PADCHEST_CSV}.gz")
    assert dict(independent) == POSITIVE_FRONTAL
    assert set(labels.findings_of("padchest")) == set(PADCHEST_FINDINGS)


def test_cases_map_as_stated(real_csv, reader_labels):
    """Frontal images with: loculated pleural effusion 172, loculated fissural effusion 80
    (pleural effusion); hydropneumothorax 28 (pleural effusion AND pneumothorax); multiple nodules
    220 (nodule); pseudonodule 1,439 and reticulonodular interstitial pattern 170 are not nodules."""
    positives, images = reader_labels
    table = read_real(real_csv / f"{data.PADCHEST_CSV}.gz")
    table = table[table["Projection"].isin(data.PADCHEST_FRONTAL)]
    sets = {id_[:-4]: data.parse_padchest_labels(cell) for id_, cell in zip(table["ImageID"], table["Labels"])}
    with_label = lambda label: {i for i, s in sets.items() if s and label in s}  # noqa: E731
    cases = {"loculated pleural effusion": (172, ["pleural effusion"]),
             "loculated fissural effusion": (80, ["pleural effusion"]),
             "hydropneumothorax": (28, ["pleural effusion", "pneumothorax"]),
             "multiple nodules": (220, ["nodule"])}
    for label, (count, findings) in cases.items():
        ids = with_label(label)
        assert len(ids) == count, label
        for finding in findings:
            assert ids <= positives[finding], (label, finding)
    nodule_labels = {"nodule", "multiple nodules"}
    for label, count in (("pseudonodule", 1439), ("reticulonodular interstitial pattern", 170)):
        ids = with_label(label)
        assert len(ids) == count
        only = {i for i in ids if not sets[i] & nodule_labels}
        assert only and only <= images and not only & positives["nodule"], label


def skips(root, **policy):
    skipped = data.Skips()
    n = sum(1 for _ in data.iter_labels("padchest", root, findings=("cardiomegaly",),
                                         label_policy=data.LabelPolicy(**policy), skipped=skipped))
    return n, dict(skipped)


def test_policies_and_filters_change_counts(real_csv):
    """Frontal images (one finding, every split): default policy 106,151 samples, skipped
    unchanged-only 2,589 (2,572 'unchanged' alone + 17 with 'suboptimal study'), exclude 973,
    suboptimal-only 330, unparseable 590 (79 NaN + 511 empty lists); all three no-info policies
    "no": 110,043 (only the 590 unparseable skipped). MethodLabel values are exactly Physician
    (26,432 frontal) and RNN_model (84,201). Age floor 10 (study year - birth year): 3,950 below,
    3 without a birth year."""
    assert set(read_real(real_csv / f"{data.PADCHEST_CSV}.gz")["MethodLabel"].unique()) == \
        set(labels.PADCHEST_METHODS.values()) == {"Physician", "RNN_model"}
    assert skips(real_csv) == (106151, {"label_unchanged_only": 2589, "label_excluded": 973,
                                        "label_suboptimal_only": 330, "label_unparseable": 590})
    assert skips(real_csv, padchest_unchanged="no", padchest_suboptimal="no", padchest_exclude="no") \
        == (110043, {"label_unparseable": 590})
    n, skipped = skips(real_csv, padchest_method="physician")
    assert n == 25550 and skipped["method_excluded"] == 84201
    n, skipped = skips(real_csv, padchest_method="rnn")
    assert n == 80601 and skipped["method_excluded"] == 26432
    n, skipped = skips(real_csv, padchest_min_age=10)
    assert n == 102378 and skipped["age_below_min"] == 3950 and skipped["age_unknown"] == 3


@pytest.fixture(scope="module")
def real_tree(tmp_path_factory):
    require_real_padchest()
    return build_padchest_tree(tmp_path_factory.mktemp("padchest_tree"), n_rows=300)


def test_tree_of_real_rows_reads_end_to_end(real_tree):
    table = read_real(real_tree / f"{data.PADCHEST_CSV}.gz")
    assert 280 <= len(table) <= 320 and (table["Projection"] == "L").any()
    assert set(table["MethodLabel"]) == {"Physician", "RNN_model"}
    skipped = data.Skips()
    samples = list(data.iter_samples("padchest", real_tree, skipped=skipped))
    assert "image_missing" not in skipped
    assert {"label_unchanged_only", "label_excluded", "label_unparseable"} <= set(skipped)
    frontal = table[table["Projection"].isin(data.PADCHEST_FRONTAL)]
    expected = {}
    for image_id, cell in zip(frontal["ImageID"], frontal["Labels"]):
        present = data.parse_padchest_labels(cell)
        if present is None or padchest.no_info_reason(present, data.LabelPolicy()):
            continue
        for f in data.DEFAULT_FINDINGS:
            hit = present & set(labels.FINDING_LABELS[f]["padchest"])
            expected[f"{image_id[:-4]}/{f}"] = "yes" if hit else "no"
    assert {s.sample_id: s.label for s in samples} == expected
    assert {"yes"} <= {s.label for s in samples if s.finding == "pneumothorax"}
    for sample in samples[::len(data.DEFAULT_FINDINGS)]:
        image = data.load_image(sample, skipped)
        assert image is not None and image.mode == "L" and image.size == (64, 64)
    assert sum(skipped.values()) == sum(r["n"] for r in skipped.rows)


def test_real_rows_run_through_the_evaluate_notebook(real_tree, tiny_world, tmp_path):
    """A few hundred real PadChest rows (with small stand-in images) through papermill: the
    skips by reason in summary.json and skipped.csv are the reader's."""
    import json
    from pathlib import Path

    import pandas as pd
    import papermill as pm
    import yaml

    root = Path(__file__).resolve().parents[1]
    values = {"config": "tiny-llava", "model": str(tiny_world["models"]["llava"]), "dataset": "padchest",
              "data_root": str(real_tree), "split": "test", "findings": ["pneumothorax"], "batch_size": 16,
              "bootstrap_resamples": 50, "output_dir": str(tmp_path / "run")}
    params_file = tmp_path / "real.yaml"
    params_file.write_text(yaml.safe_dump(values))
    pm.execute_notebook(str(root / "notebooks" / "evaluate.ipynb"), str(tmp_path / "out.ipynb"),
                        parameters={**values, "params_file": str(params_file)}, cwd=str(root),
                        progress_bar=False)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    skipped = data.Skips()
    expected = list(data.iter_samples("padchest", real_tree, findings=("pneumothorax",), skipped=skipped))
    assert summary["n_samples"] == len(expected) > 200
    assert summary["n_skipped"] == dict(sorted(skipped.items()))
    listed = pd.read_csv(tmp_path / "run" / "skipped.csv")
    assert listed.groupby("reason")["n"].sum().to_dict() == dict(skipped)
