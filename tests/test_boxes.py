"""lib.protocol.boxes: an MS-CXR box file joined to MIMIC-CXR samples, bad box rows, the box_file
params key; and the study fields of MIMIC-CXR and PadChest samples."""

import pandas as pd
import pytest

from lib.protocol import boxes, config, data
from lib.protocol.data import iter_samples
from tests.test_data import make_mimic, make_padchest

# MS_CXR_Local_Alignment_v1.0.0.csv, columns as published
MS_CXR_COLUMNS = ["dicom_id", "category_name", "label_text", "path", "x", "y", "w", "h",
                  "image_width", "image_height"]
MS_CXR_ROWS = [  # dicom_id, category_name, x, y, w, h, image_width, image_height
    ("d3", "Pleural Effusion", 4, 8, 16, 8, 32, 32),
    ("d3", "Pleural Effusion", 0, 0, 8, 8, 32, 32),      # a second box of the same finding
    ("d3", "Cardiomegaly", 10, 10, -3, 5, 32, 32),       # w < 0: x1 <= x0
    ("d3", "Pneumothorax", 30, 0, 10, 10, 32, 32),       # x + w beyond image_width
    ("d3", "Foo", 0, 0, 1, 1, 32, 32),                   # a category no finding maps to: ignored
    ("d4", "Pneumothorax", "n/a", 0, 4, 4, 32, 32),      # not a number
    ("zz", "Edema", 0, 0, 4, 4, 32, 32),                 # an image MIMIC does not have
]


def write_ms_cxr(path, rows=MS_CXR_ROWS):
    pd.DataFrame([{"dicom_id": d, "category_name": c, "label_text": f"{c.lower()} here",
                   "path": f"files/p10/p10000033/s5/{d}.dcm", "x": x, "y": y, "w": w, "h": h,
                   "image_width": iw, "image_height": ih}
                  for d, c, x, y, w, h, iw, ih in rows], columns=MS_CXR_COLUMNS).to_csv(path, index=False)
    return path


@pytest.fixture
def mimic(tmp_path):
    root = tmp_path / "mimic"
    root.mkdir()
    return make_mimic(root)


def test_ms_cxr_boxes_join_mimic_samples(mimic, tmp_path):
    box_file = write_ms_cxr(tmp_path / boxes.MS_CXR_FILE)
    skipped = data.Skips()
    samples = {s.sample_id: s for s in iter_samples("mimic-cxr", mimic, skipped=skipped,
                                                    box_file=box_file)}
    assert samples["d3/pleural effusion"].boxes == ((0.125, 0.25, 0.625, 0.5), (0.0, 0.0, 0.25, 0.25))
    assert samples["d3/pneumothorax"].boxes == ()        # its only row is invalid
    assert samples["d3/nodule"].boxes == ()              # "Lung Lesion" is no MS-CXR category
    assert all(s.boxes == () for k, s in samples.items() if k.startswith("d4/"))
    assert skipped["box_invalid"] == 3
    rows = skipped.table()
    assert rows[rows.reason == "box_invalid"]["item"].tolist() == [
        f"{boxes.MS_CXR_FILE}:3", f"{boxes.MS_CXR_FILE}:4", f"{boxes.MS_CXR_FILE}:6"]
    without = list(iter_samples("mimic-cxr", mimic))
    assert [s.sample_id for s in without] == list(samples) and all(s.boxes is None for s in without)


def test_an_image_missing_from_the_box_file_has_no_box_information(mimic, tmp_path):
    box_file = write_ms_cxr(tmp_path / "b.csv", MS_CXR_ROWS[:2])
    samples = list(iter_samples("mimic-cxr", mimic, box_file=box_file))
    assert {s.image_id: s.boxes is None for s in samples} == {"d3": False, "d4": True}


def test_box_file_errors_name_the_file(mimic, tmp_path):
    with pytest.raises(data.MissingFileError, match="box_file .*nothere.csv"):
        iter_samples("mimic-cxr", mimic, box_file=tmp_path / "nothere.csv")
    pd.DataFrame({"dicom_id": ["d3"], "x": [1]}).to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(data.DataLayoutError, match=r"bad\.csv: missing column\(s\) \['category_name'"):
        iter_samples("mimic-cxr", mimic, box_file=tmp_path / "bad.csv")
    padchest = make_padchest(tmp_path)
    with pytest.raises(ValueError, match="box_file is read for mimic-cxr only"):
        iter_samples("padchest", padchest, box_file=tmp_path / "bad.csv")


def test_box_file_param_is_for_mimic_only(mimic, tmp_path):
    box_file = str(write_ms_cxr(tmp_path / "b.csv"))
    base = {"config": "c", "model": "m", "box_file": box_file}
    assert config.validate({**base, "dataset": "mimic-cxr", "data_root": str(mimic)})["box_file"] == box_file
    padchest = make_padchest(tmp_path)
    with pytest.raises(config.ParamsError, match=r"<params>: key 'box_file': an MS-CXR box file is "
                                                 r"read for mimic-cxr only, not padchest"):
        config.validate({**base, "dataset": "padchest", "data_root": str(padchest)})


@pytest.mark.parametrize("corners, problem", [
    ((0, 0, 10, 10, 10, 10), None),
    ((2, 2, 2, 5, 10, 10), "empty box"),
    ((-1, 0, 5, 5, 10, 10), "outside the 10x10 image"),
    ((0, 0, 5, 11, 10, 10), "outside the 10x10 image"),
    ((0, 0, 5, 5, 0, 10), "image size 0x10"),
])
def test_fraction_box(corners, problem):
    if problem is None:
        assert boxes.fraction_box(*corners) == (0.0, 0.0, 1.0, 1.0)
    else:
        with pytest.raises(boxes.BadBox, match=problem):
            boxes.fraction_box(*corners)


def test_mimic_samples_carry_their_study(mimic):
    s = next(iter_samples("mimic-cxr", mimic))
    assert (s.image_id, s.patient_id, s.study_id, s.study_date) == ("d3", "10000033", "50000001", "21800506")
    metadata = mimic / f"{data.MIMIC_METADATA}.gz"
    pd.read_csv(metadata).drop(columns="StudyDate").to_csv(metadata, index=False)
    s = next(iter_samples("mimic-cxr", mimic))
    assert (s.study_id, s.study_date) == ("50000001", None)        # StudyDate is optional


def test_padchest_samples_carry_their_study(tmp_path):
    root = make_padchest(tmp_path)
    csv = root / data.PADCHEST_CSV
    table = pd.read_csv(csv, dtype=str)
    table["StudyDate_DICOM"] = [None if stem == "g" else f"2015010{n}"
                                for n, stem in enumerate(table["ImageID"].str[0])]
    table.to_csv(csv, index=False)
    studies = {s.image_id: (s.patient_id, s.study_id, s.study_date) for s in iter_samples("padchest", root)}
    patient = studies["a_x1"][0]
    assert studies["a_x1"] == (patient, "sa", "20150100")
    assert studies["c_x1"] == (patient, "sc", "20150102")
    assert studies["g_x1"][1:] == ("sg", None)            # an empty date cell: None
    table.drop(columns=["StudyID", "StudyDate_DICOM"]).to_csv(csv, index=False)
    assert {s.study_id for s in iter_samples("padchest", root)} == {None}   # columns optional
