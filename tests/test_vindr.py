"""lib.protocol.vindr on a small tree in the official VinDr-CXR 1.0.0 (PhysioNet) layout: labels by
radiologist agreement, consensus test labels, boxes (union, fractions), bad box rows, missing images."""

import collections

import numpy as np
import pandas as pd
import pytest

from lib.protocol import config, data, labels, questions
from lib.protocol.data import LabelPolicy, iter_labels, iter_samples, load_image
from tests.test_data import write_dicom

# The class columns of image_labels_{train,test}.csv as published (22 local + 6 global labels);
# the train file says "Other diseases", the test file "Other disease".
CLASSES = ["Aortic enlargement", "Atelectasis", "Calcification", "Cardiomegaly", "Clavicle fracture",
           "Consolidation", "Edema", "Emphysema", "Enlarged PA", "ILD", "Infiltration",
           "Lung Opacity", "Lung cavity", "Lung cyst", "Mediastinal shift", "Nodule/Mass",
           "Pleural effusion", "Pleural thickening", "Pneumothorax", "Pulmonary fibrosis",
           "Rib fracture", "Other lesion", "COPD", "Lung tumor", "Pneumonia", "Tuberculosis"]
BOX_COLUMNS = ["image_id", "rad_id", "class_name", "x_min", "y_min", "x_max", "y_max"]
WIDTH, HEIGHT = 100, 80  # every fixture DICOM: Columns x Rows
NAN = float("nan")

# train: image -> one dict of marked classes per radiologist (R8, R9, R10)
TRAIN_LABELS = {
    "t1": [{"Cardiomegaly": 1, "Nodule/Mass": 1}, {"Cardiomegaly": 1}, {}],
    "t2": [{"Pleural effusion": 1}, {"Pleural effusion": 1}, {"Pleural effusion": 1}],
    "t3": [{"Cardiomegaly": 1}, {"Cardiomegaly": 1}, {"Cardiomegaly": 1}],   # no DICOM file
    "t4": [{}, {}, {}],                                                      # not in annotations
    "t5": [{}, {"Pneumothorax": 2}, {}],                                     # 2 is not a label
}
TRAIN_BOXES = [  # image_id, rad_id, class_name, x_min, y_min, x_max, y_max
    ("t1", "R8", "Cardiomegaly", 30, 40, 70, 60),
    ("t1", "R9", "Cardiomegaly", 32, 42, 72, 62),
    ("t1", "R8", "Nodule/Mass", 10, 10, 20, 20),
    ("t1", "R10", "No finding", NAN, NAN, NAN, NAN),
    ("t1", "R9", "ILD", 0, 0, 500, 500),                 # a class no finding maps to: ignored
    ("t1", "R9", "Some new class", 1, 1, 2, 2),          # an unknown class name: ignored
    ("t2", "R8", "Pleural effusion", 0, 50, 40, 80),
    ("t2", "R9", "Pleural effusion", 60, 50, 150, 80),   # outside the 100 px wide image
    ("t2", "R10", "Pleural effusion", 40, 50, 40, 70),   # x_max <= x_min
    ("t2", "R8", "Pneumothorax", "abc", 1, 2, 3),        # not a number
    ("t5", "R8", "No finding", NAN, NAN, NAN, NAN),
]
TEST_LABELS = {"c1": {"Pneumothorax": 1}, "c2": {"Cardiomegaly": 1}}
TEST_BOXES = [("c1", "Pneumothorax", 50, 0, 100, 40), ("c2", "Cardiomegaly", 25, 30, 75, 60)]


def label_rows(by_image: dict, other: str, radiologists: bool) -> pd.DataFrame:
    rows = []
    for image_id, marks in by_image.items():
        for n, marked in enumerate(marks if radiologists else [marks]):
            row = {"image_id": image_id, **dict.fromkeys(CLASSES + [other], 0), **marked,
                   "No finding": int(not marked)}
            rows.append({"rad_id": f"R{8 + n}", **row} if radiologists else row)
    return pd.DataFrame(rows)


def make_vindr(root):
    notes = root / "annotations"
    notes.mkdir(parents=True)
    label_rows(TRAIN_LABELS, "Other diseases", True).to_csv(notes / "image_labels_train.csv", index=False)
    label_rows(TEST_LABELS, "Other disease", False).to_csv(notes / "image_labels_test.csv", index=False)
    pd.DataFrame(TRAIN_BOXES, columns=BOX_COLUMNS).to_csv(notes / "annotations_train.csv", index=False)
    pd.DataFrame(TEST_BOXES, columns=[c for c in BOX_COLUMNS if c != "rad_id"]).to_csv(
        notes / "annotations_test.csv", index=False)
    ramp = np.tile(np.arange(WIDTH) * 10, (HEIGHT, 1))
    for split, images in (("train", TRAIN_LABELS), ("test", TEST_LABELS)):
        (root / split).mkdir()
        for image_id in images:
            if image_id != "t3":
                write_dicom(root / split / f"{image_id}.dicom", ramp, "MONOCHROME1")
    return root


@pytest.fixture
def vindr(tmp_path):
    return make_vindr(tmp_path)


def by_id(samples):
    return {s.sample_id: s for s in samples}


def test_train_labels_by_agreement_boxes_and_skips(vindr):
    skipped = data.Skips()
    samples = by_id(iter_samples("vindr-cxr", vindr, split="train", skipped=skipped))
    labels_of = {k: s.label for k, s in samples.items()}
    assert labels_of == {
        "t1/cardiomegaly": "yes", "t1/pleural effusion": "no", "t1/pneumothorax": "no",
        "t1/nodule": "no",                                   # 1 of 3 radiologists: no
        "t2/cardiomegaly": "no", "t2/pleural effusion": "yes", "t2/pneumothorax": "no",
        "t2/nodule": "no",
        "t4/cardiomegaly": "no", "t4/pleural effusion": "no", "t4/pneumothorax": "no",
        "t4/nodule": "no",
        "t5/cardiomegaly": "no", "t5/pleural effusion": "no", "t5/nodule": "no"}
    # both radiologists' cardiomegaly boxes (their union), as fractions of 100 x 80
    assert samples["t1/cardiomegaly"].boxes == ((0.3, 0.5, 0.7, 0.75), (0.32, 0.525, 0.72, 0.775))
    # a minority's box stays on the "no" sample; findings without a box: ()
    assert samples["t1/nodule"].boxes == ((0.1, 0.125, 0.2, 0.25),)
    assert samples["t1/pleural effusion"].boxes == ()
    # of t2's four box rows only the first is a box on the image
    assert samples["t2/pleural effusion"].boxes == ((0.0, 0.625, 0.4, 1.0),)
    assert samples["t2/pneumothorax"].boxes == ()
    assert samples["t4/cardiomegaly"].boxes is None                # not in the annotations file
    assert samples["t5/cardiomegaly"].boxes == ()                  # listed ("No finding")
    s = samples["t1/cardiomegaly"]
    assert (s.patient_id, s.study_id, s.study_date) == (None, None, None)
    assert s.image_path == str(vindr.resolve() / "train" / "t1.dicom")
    assert skipped == {"image_missing": 4, "box_invalid": 3, "label_invalid": 1}
    rows = skipped.table()
    assert sorted(rows[rows.reason == "box_invalid"]["item"]) == [
        "annotations_train.csv:10", "annotations_train.csv:8", "annotations_train.csv:9"]
    assert rows[rows.reason == "label_invalid"]["item"].tolist() == ["image_labels_train.csv:14"]
    assert rows[rows.reason == "image_missing"]["item"].tolist() == ["t3"]


@pytest.mark.parametrize("votes, nodule", [(1, "yes"), (2, "no"), (3, "no")])
def test_agreement_is_configurable(vindr, votes, nodule):
    policy = LabelPolicy(vindr_min_radiologists=votes)
    samples = by_id(iter_samples("vindr-cxr", vindr, split="train", label_policy=policy))
    assert samples["t1/nodule"].label == nodule
    assert samples["t1/cardiomegaly"].label == ("no" if votes == 3 else "yes")   # 2 of 3
    assert samples["t2/pleural effusion"].label == "yes"                         # 3 of 3


@pytest.mark.parametrize("votes", [0, 4, True, "2"])
def test_agreement_out_of_range_is_one_line(votes):
    with pytest.raises(ValueError, match="vindr_min_radiologists must be an integer from 1 to 3"):
        LabelPolicy(vindr_min_radiologists=votes)


def test_test_split_reads_the_consensus_row(vindr):
    samples = by_id(iter_samples("vindr-cxr", vindr, split="test",
                                 label_policy=LabelPolicy(vindr_min_radiologists=3)))
    assert {k: s.label for k, s in samples.items() if s.label == "yes"} == {
        "c1/pneumothorax": "yes", "c2/cardiomegaly": "yes"}
    assert samples["c1/pneumothorax"].boxes == ((0.5, 0.0, 1.0, 0.5),)
    assert samples["c2/cardiomegaly"].boxes == ((0.25, 0.375, 0.75, 0.75),)
    image = load_image(samples["c1/pneumothorax"])          # a .dicom file, MONOCHROME1 inverted
    assert image.size == (WIDTH, HEIGHT) and image.getpixel((0, 0)) == 255


def test_iter_labels_reads_both_splits_without_images(vindr):
    skipped = collections.Counter()
    samples = list(iter_labels("vindr-cxr", vindr, skipped=skipped))
    images = list(dict.fromkeys(s.image_id for s in samples))
    assert images == ["t1", "t2", "t3", "t4", "t5", "c1", "c2"]
    assert all(s.boxes is None for s in samples)            # no image opened: no size, no boxes
    assert skipped == {"label_invalid": 1}


def test_label_map_adds_a_vindr_finding(vindr):
    policy = LabelPolicy(label_map={"interstitial disease": {"vindr-cxr": ["ILD"]}})
    samples = by_id(iter_samples("vindr-cxr", vindr, findings=["interstitial disease"],
                                 split="train", label_policy=policy))
    # nobody labelled ILD on t1, but a radiologist boxed it outside the image: counted, not kept
    assert samples["t1/interstitial disease"].label == "no"
    assert samples["t1/interstitial disease"].boxes == ()


def test_layout_errors_name_the_file(vindr):
    (vindr / "annotations" / "annotations_test.csv").unlink()
    with pytest.raises(data.MissingFileError, match=r"annotations_test\.csv"):
        data.check_layout("vindr-cxr", vindr)
    pd.DataFrame({"image_id": ["c1"]}).to_csv(vindr / "annotations" / "annotations_test.csv")
    with pytest.raises(data.DataLayoutError, match=r"annotations_test\.csv: missing column\(s\) "
                                                   r"\['class_name'"):
        data.check_layout("vindr-cxr", vindr)
    with pytest.raises(ValueError, match="have no vindr-cxr labels"):
        data.check_layout("vindr-cxr", vindr, findings=["support devices"])


def test_every_mapped_vindr_finding_has_a_builtin_question_set():
    mapped = labels.findings_of("vindr-cxr")
    assert set(data.DEFAULT_FINDINGS) <= set(mapped) and len(mapped) == 12
    assert set(mapped) <= set(questions.builtin_sets("chexpert"))


def test_params_accept_vindr_with_its_reference_split(vindr):
    params = config.validate({"config": "c", "model": "m", "dataset": "vindr-cxr",
                              "data_root": str(vindr), "split": "test"})
    assert params["reference_split"] == "train" and params["box_file"] is None
    with pytest.raises(config.ParamsError, match=r"key 'split'.*allowed for vindr-cxr: train, test"):
        config.validate({"config": "c", "model": "m", "dataset": "vindr-cxr",
                         "data_root": str(vindr), "split": "validate"})
