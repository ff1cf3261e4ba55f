"""lib.protocol.data on small hand-written trees in the official MIMIC-CXR-JPG 2.0.0 and PadChest layouts."""

import collections
import gzip
import hashlib
import inspect

import numpy as np
import pandas as pd
import pydicom
import pydicom.data
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from lib.protocol.data import (FINDINGS, MIN_IMAGE_SIDE, LabelPolicy, Sample, iter_samples,
                               load_image, parse_padchest_labels, read_xray, split_of_patient)

CHEXPERT_COLUMNS = ["Atelectasis", "Cardiomegaly", "Consolidation", "Edema",
                    "Enlarged Cardiomediastinum", "Fracture", "Lung Lesion", "Lung Opacity",
                    "No Finding", "Pleural Effusion", "Pleural Other", "Pneumonia", "Pneumothorax",
                    "Support Devices"]
ALL = tuple(FINDINGS)  # cardiomegaly, pleural effusion, pneumothorax, nodule
NAN = float("nan")


# --------------------------------------------------------------------------------------------
# MIMIC-CXR-JPG fixture
#
# subject   study     dicom  view     split  chexpert (card, effusion, ptx, lesion)   image file
# 10000032  50414267  d1     PA       train  1, 0, blank, -1                           yes
# 10000032  50414267  d2     LATERAL  train  (same study)                              yes
# 10000033  50000001  d3     AP       test   -1, 1, 0, blank                           yes
# 10000033  50000002  d4     PA       test   blank, blank, 1, 0                        yes
# 11000001  51000001  d5     PA       test   1, 1, 1, 1                                missing
# 12000001  52000001  d6     AP       test   (no chexpert row)                         yes

MIMIC_IMAGES = [  # dicom_id, subject_id, study_id, ViewPosition, split, file written
    ("d1", 10000032, 50414267, "PA", "train", True),
    ("d2", 10000032, 50414267, "LATERAL", "train", True),
    ("d3", 10000033, 50000001, "AP", "test", True),
    ("d4", 10000033, 50000002, "PA", "test", True),
    ("d5", 11000001, 51000001, "PA", "test", False),
    ("d6", 12000001, 52000001, "AP", "test", True),
]
MIMIC_LABELS = {  # (subject, study): Cardiomegaly, Pleural Effusion, Pneumothorax, Lung Lesion
    (10000032, 50414267): (1.0, 0.0, NAN, -1.0),
    (10000033, 50000001): (-1.0, 1.0, 0.0, NAN),
    (10000033, 50000002): (NAN, NAN, 1.0, 0.0),
    (11000001, 51000001): (1.0, 1.0, 1.0, 1.0),
}


def write_csv(frame: pd.DataFrame, path, gz: bool):
    data = frame.to_csv(index=False).encode()
    if gz:
        path.with_name(path.name + ".gz").write_bytes(gzip.compress(data))
    else:
        path.write_bytes(data)


def write_jpeg(path, value=100, side=MIN_IMAGE_SIDE):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((side, side), value, np.uint8)).save(path, quality=95)


def make_mimic(root, gz=True):
    chexpert = []
    for (subject, study), (card, eff, ptx, lesion) in MIMIC_LABELS.items():
        row = dict.fromkeys(CHEXPERT_COLUMNS, NAN)
        row.update({"Cardiomegaly": card, "Pleural Effusion": eff, "Pneumothorax": ptx,
                    "Lung Lesion": lesion})
        chexpert.append({"subject_id": subject, "study_id": study, **row})
    write_csv(pd.DataFrame(chexpert), root / "mimic-cxr-2.0.0-chexpert.csv", gz)
    metadata = [{"dicom_id": d, "subject_id": sub, "study_id": st,
                 "PerformedProcedureStepDescription": "CHEST (PA AND LAT)", "ViewPosition": view,
                 "Rows": 16, "Columns": 16, "StudyDate": 21800506, "StudyTime": 213014.531,
                 "ProcedureCodeSequence_CodeMeaning": "CHEST (PA AND LAT)",
                 "ViewCodeSequence_CodeMeaning": "postero-anterior",
                 "PatientOrientationCodeSequence_CodeMeaning": "Erect"}
                for d, sub, st, view, _, _ in MIMIC_IMAGES]
    write_csv(pd.DataFrame(metadata), root / "mimic-cxr-2.0.0-metadata.csv", gz)
    splits = [{"dicom_id": d, "study_id": st, "subject_id": sub, "split": split}
              for d, sub, st, _, split, _ in MIMIC_IMAGES]
    write_csv(pd.DataFrame(splits), root / "mimic-cxr-2.0.0-split.csv", gz)
    for d, sub, st, _, _, exists in MIMIC_IMAGES:
        if exists:
            write_jpeg(root / "files" / f"p{str(sub)[:2]}" / f"p{sub}" / f"s{st}" / f"{d}.jpg")
    return root


@pytest.fixture(params=[True, False], ids=["csv.gz", "csv"])
def mimic(tmp_path, request):
    return make_mimic(tmp_path, gz=request.param)


def answers(samples):
    return [(s.image_id, s.finding, s.label) for s in samples]


def test_mimic_default_policy_test_split(mimic):
    skipped = collections.Counter()
    samples = list(iter_samples("mimic-cxr", mimic, skipped=skipped))
    # d3: cardiomegaly -1 skipped (uncertain), blank lesion -> no; d4: blanks -> no
    assert answers(samples) == [
        ("d3", "pleural effusion", "yes"), ("d3", "pneumothorax", "no"), ("d3", "nodule", "no"),
        ("d4", "cardiomegaly", "no"), ("d4", "pleural effusion", "no"), ("d4", "pneumothorax", "yes"),
        ("d4", "nodule", "no")]
    # d5's file is missing (4 samples), d6's study has no CheXpert row (4 samples)
    assert skipped == {"label_uncertain": 1, "image_missing": 4, "label_missing": 4}
    s = samples[0]
    assert s.sample_id == "d3/pleural effusion"
    assert s.image_path == str(mimic.resolve() / "files/p10/p10000033/s50000001/d3.jpg")


@pytest.mark.parametrize("policy, expected, skipped_expected", [
    (LabelPolicy(uncertain="yes", blank="skip"),
     [("d3", "cardiomegaly", "yes"), ("d3", "pleural effusion", "yes"), ("d3", "pneumothorax", "no"),
      ("d4", "pneumothorax", "yes"), ("d4", "nodule", "no")],
     {"label_blank": 3}),
    (LabelPolicy(uncertain="no", blank="yes"),
     [("d3", "cardiomegaly", "no"), ("d3", "pleural effusion", "yes"), ("d3", "pneumothorax", "no"),
      ("d3", "nodule", "yes"), ("d4", "cardiomegaly", "yes"), ("d4", "pleural effusion", "yes"),
      ("d4", "pneumothorax", "yes"), ("d4", "nodule", "no")],
     {}),
    (LabelPolicy(uncertain="skip", blank="skip"),
     [("d3", "pleural effusion", "yes"), ("d3", "pneumothorax", "no"),
      ("d4", "pneumothorax", "yes"), ("d4", "nodule", "no")],
     {"label_uncertain": 1, "label_blank": 3}),
])
def test_mimic_label_policies(mimic, policy, expected, skipped_expected):
    skipped = collections.Counter()
    samples = list(iter_samples("mimic-cxr", mimic, label_policy=policy, skipped=skipped))
    assert answers(samples) == expected
    assert skipped == {"image_missing": 4, "label_missing": 4, **skipped_expected}


def test_mimic_train_split_drops_lateral_silently(mimic):
    skipped = collections.Counter()
    samples = list(iter_samples("mimic-cxr", mimic, split="train", skipped=skipped))
    # d2 (LATERAL) is not a sample and not counted; d1: lesion -1 skipped, blank ptx -> no
    assert answers(samples) == [("d1", "cardiomegaly", "yes"), ("d1", "pleural effusion", "no"),
                                ("d1", "pneumothorax", "no")]
    assert skipped == {"label_uncertain": 1}
    assert list(iter_samples("mimic-cxr", mimic, split="validate")) == []


def test_findings_order_as_given(mimic):
    samples = list(iter_samples("mimic-cxr", mimic, findings=("nodule", "pneumothorax")))
    assert answers(samples) == [("d3", "nodule", "no"), ("d3", "pneumothorax", "no"),
                                ("d4", "nodule", "no"), ("d4", "pneumothorax", "yes")]


def test_iter_samples_streams_and_checks_arguments_eagerly(mimic, tmp_path):
    assert inspect.isgenerator(iter_samples("mimic-cxr", mimic))
    with pytest.raises(ValueError, match="'chexpert-14'.*mimic-cxr.*padchest"):
        iter_samples("chexpert-14", mimic)
    with pytest.raises(ValueError, match="'effusion'"):
        iter_samples("mimic-cxr", mimic, findings=("effusion",))
    with pytest.raises(ValueError, match="'val'"):
        iter_samples("mimic-cxr", mimic, split="val")
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match="nowhere"):
        iter_samples("padchest", missing)
    with pytest.raises(FileNotFoundError, match="PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv"):
        iter_samples("padchest", mimic)


def test_missing_split_csv_named(tmp_path):
    root = make_mimic(tmp_path, gz=True)
    (root / "mimic-cxr-2.0.0-split.csv.gz").unlink()
    with pytest.raises(FileNotFoundError, match=r"mimic-cxr-2\.0\.0-split\.csv"):
        iter_samples("mimic-cxr", root)


def test_label_policy_rejects_unknown_choice():
    with pytest.raises(ValueError, match="uncertain"):
        LabelPolicy(uncertain="maybe")


# --------------------------------------------------------------------------------------------
# PadChest fixture

# the PadChest release's columns, written once on the tests' side (the synthetic writer is held to them there)
from tests.test_synth import PADCHEST_COLUMNS  # noqa: E402


def patients(split, n):
    """The first ``n`` ids "patient-<i>" that split_of_patient puts in ``split``."""
    found = (f"patient-{i}" for i in range(1000))
    return [p for p in found if split_of_patient(p) == split][:n]


def make_padchest(root, gz=False):
    test_patient, other_test_patient = patients("test", 2)
    train_patient = patients("train", 1)[0]
    rows = [  # ImageID stem, ImageDir, PatientID, Projection, Labels, write the file
        ("a", 0, test_patient, "PA", "['pleural effusion', ' cardiomegaly']", True),
        ("b", 0, test_patient, "PA", "['normal']", True),
        ("c", 1, test_patient, "AP", "['', ' nodule', 'chronic changes']", True),
        ("d", 1, test_patient, "PA", "pleural effusion, cardiomegaly", True),
        ("e", 1, test_patient, "PA", NAN, True),
        ("f", 1, test_patient, "L", "['pneumothorax']", True),
        ("g", 2, other_test_patient, "AP_horizontal", "['pneumothorax']", True),
        ("h", 2, other_test_patient, "PA", "['nodule']", False),
        ("i", 2, train_patient, "PA", "['nodule']", True),
        ("j", 2, other_test_patient, "PA", "['exclude']", True),
        ("k", 2, other_test_patient, "PA", "[]", True),
    ]
    frame = pd.DataFrame([{**dict.fromkeys(PADCHEST_COLUMNS, NAN), "ImageID": f"{stem}_x1.png",
                           "ImageDir": folder, "StudyID": f"s{stem}", "PatientID": patient,
                           "Projection": projection, "MethodLabel": "Physician", "Labels": labels}
                          for stem, folder, patient, projection, labels, _ in rows],
                         columns=PADCHEST_COLUMNS)
    write_csv(frame, root / "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv", gz)
    for stem, folder, _, _, _, exists in rows:
        if exists:
            (root / str(folder)).mkdir(exist_ok=True)
            Image.fromarray(np.full((MIN_IMAGE_SIDE, MIN_IMAGE_SIDE), 1000, np.uint16)).save(root / str(folder) / f"{stem}_x1.png")
    return root


@pytest.mark.parametrize("gz", [False, True], ids=["csv", "csv.gz"])
def test_padchest_labels_and_skips(tmp_path, gz):
    root = make_padchest(tmp_path, gz)
    skipped = collections.Counter()
    samples = list(iter_samples("padchest", root, skipped=skipped))
    no = ("cardiomegaly", "pleural effusion", "pneumothorax", "nodule")
    expected = [("a", "cardiomegaly", "yes"), ("a", "pleural effusion", "yes"),
                ("a", "pneumothorax", "no"), ("a", "nodule", "no")]
    expected += [("b", f, "no") for f in no]
    expected += [("c", f, "yes" if f == "nodule" else "no") for f in no]
    expected += [("g", f, "yes" if f == "pneumothorax" else "no") for f in no]
    assert [(s.image_id.split("_")[0], s.finding, s.label) for s in samples] == expected
    # d (not a list), e (NaN), k (empty list): unparseable; h: file missing; j: excluded;
    # f (lateral) and i (train patient) are not samples at all
    assert skipped == {"label_unparseable": 12, "image_missing": 4, "label_excluded": 4}
    assert samples[0].image_id == "a_x1" and samples[0].sample_id == "a_x1/cardiomegaly"
    assert samples[0].image_path == str(root.resolve() / "0" / "a_x1.png")
    train = list(iter_samples("padchest", root, split="train"))
    assert {s.image_id for s in train} == {"i_x1"}


def test_parse_padchest_labels():
    assert parse_padchest_labels("['pleural effusion', ' cardiomegaly', '']") == \
        {"pleural effusion", "cardiomegaly"}
    assert parse_padchest_labels("['normal']") == {"normal"}
    for bad in (NAN, None, "", "[]", "['']", "normal", "['a', 3]", "{'a': 1}", "['unterminated"):
        assert parse_padchest_labels(bad) is None, bad


def test_split_of_patient_known_answers_and_fraction():
    # md5("0") = cfcd2084...; as an integer it is 0 mod 5 -> test
    assert int(hashlib.md5(b"0").hexdigest(), 16) % 5 == 0 and split_of_patient("0") == "test"
    assert split_of_patient("1") == "train"
    ids = [str(i) for i in range(5000)]
    fraction = sum(split_of_patient(i) == "test" for i in ids) / len(ids)
    assert 0.18 < fraction < 0.22
    assert [split_of_patient(i) for i in ids] == [split_of_patient(i) for i in ids]


# --------------------------------------------------------------------------------------------
# read_xray / load_image

def test_read_xray_16bit_png_stored_range_maps_to_0_255(tmp_path):
    stored = np.linspace(300, 3000, 64 * 64).reshape(64, 64).round().astype(np.uint16)
    Image.fromarray(stored).save(tmp_path / "x.png")
    assert Image.open(tmp_path / "x.png").mode == "I;16"
    image = read_xray(tmp_path / "x.png")
    pixels = np.asarray(image)
    assert image.mode == "L" and pixels.min() == 0 and pixels.max() == 255
    expected = (stored.astype(float) - 300) / 2700 * 255
    assert np.abs(pixels - expected).max() <= 0.5 + 1e-9


def test_read_xray_8bit_and_rgb(tmp_path):
    gray = (np.arange(256, dtype=np.uint8).reshape(16, 16))
    Image.fromarray(gray).save(tmp_path / "g.png")
    assert np.array_equal(np.asarray(read_xray(tmp_path / "g.png")), gray)  # 8-bit: as stored
    rgb = np.stack([gray] * 3, axis=-1)
    Image.fromarray(rgb).save(tmp_path / "c.jpg", quality=95)
    image = read_xray(tmp_path / "c.jpg")
    assert image.mode == "L" and np.abs(np.asarray(image).astype(int) - gray).mean() < 3


def test_read_xray_real_monochrome1_radiograph_is_inverted():
    path = pydicom.data.get_testdata_file("RG1_UNCR.dcm")
    assert pydicom.dcmread(path, stop_before_pixels=True).PhotometricInterpretation == "MONOCHROME1"
    pixels = np.asarray(read_xray(path), dtype=float)
    assert pixels.min() == 0 and pixels.max() == 255
    h, w = pixels.shape
    rows = slice(h // 4, h // 2)  # upper/mid chest: lungs beside the mediastinum and spine
    centre = pixels[rows, w // 2 - w // 20: w // 2 + w // 20].mean()
    lungs = (pixels[rows, w // 5: w // 3].mean() + pixels[rows, 2 * w // 3: 4 * w // 5].mean()) / 2
    assert centre > lungs + 30


def write_dicom(path, pixels, photometric, **elements):
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # digital X-ray
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    for name, value in elements.items():
        setattr(ds, name, value)
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)


def test_read_xray_dicom_window_and_min_max(tmp_path):
    ramp = np.tile(np.arange(0, 1000, 10), (4, 1))
    write_dicom(tmp_path / "w.dcm", ramp, "MONOCHROME2", WindowCenter=500, WindowWidth=200)
    windowed = np.asarray(read_xray(tmp_path / "w.dcm"))[0]
    assert (windowed[ramp[0] <= 400] == 0).all() and (windowed[ramp[0] >= 600] == 255).all()
    assert 0 < windowed[ramp[0] == 500][0] < 255
    write_dicom(tmp_path / "m.dcm", ramp + 100, "MONOCHROME1")  # no window: min..max, inverted
    plain = np.asarray(read_xray(tmp_path / "m.dcm"))[0]
    assert plain[0] == 255 and plain[-1] == 0 and (np.diff(plain.astype(int)) <= 0).all()


def sample_at(path):
    return Sample(sample_id="x/nodule", image_id="x", image_path=str(path), finding="nodule",
                  label="no")


def test_load_image_bad_files_return_none_and_are_counted(tmp_path):
    write_jpeg(tmp_path / "ok.jpg")
    data = (tmp_path / "ok.jpg").read_bytes()
    (tmp_path / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (tmp_path / "garbage.png").write_bytes(b"not an image at all" * 10)
    (tmp_path / "garbage.dcm").write_bytes(b"not dicom" * 10)
    skipped = collections.Counter()
    image = load_image(sample_at(tmp_path / "ok.jpg"), skipped)
    assert image.mode == "L" and image.size == (MIN_IMAGE_SIDE, MIN_IMAGE_SIDE)
    for name in ("truncated.jpg", "garbage.png", "garbage.dcm"):
        assert load_image(sample_at(tmp_path / name), skipped) is None
    assert load_image(sample_at(tmp_path / "absent.jpg"), skipped) is None
    assert load_image(sample_at(tmp_path / "absent.jpg")) is None  # counter optional
    assert skipped == {"image_unreadable": 3, "image_missing": 1}


# --------------------------------------------------------------------------------------------
# Label options (issue 15) and bad input (issue 10, reader side)

from lib.protocol import data, labels  # noqa: E402


def test_label_policy_from_dict_defaults_and_errors():
    assert data.LabelPolicy.from_dict(None) == data.LabelPolicy() == data.LabelPolicy.from_dict({})
    policy = data.LabelPolicy.from_dict({"padchest_method": "physician", "padchest_min_age": 18,
                                          "mimic_label_file": "negbio", "uncertain": "yes"})
    assert (policy.padchest_method, policy.padchest_min_age, policy.mimic_label_file) == \
        ("physician", 18, "negbio")
    assert data.LabelPolicy.from_dict(policy.as_dict()) == policy
    cases = [({"uncertian": "skip"}, r"unknown key 'uncertian' \(allowed keys: uncertain, blank"),
             ({"uncertain": "maybe"}, r"uncertain must be one of \('skip', 'yes', 'no'\), got 'maybe'"),
             ({"padchest_method": "radiologist"}, r"padchest_method.*'all', 'physician', 'rnn'"),
             ({"mimic_label_file": "chexbert"}, r"mimic_label_file.*'chexpert', 'negbio'"),
             ({"padchest_unchanged": "yes"}, r"padchest_unchanged.*\('skip', 'no'\)"),
             ({"padchest_min_age": "10"}, "padchest_min_age must be a non-negative integer"),
             ({"padchest_min_age": True}, "padchest_min_age"),
             ({"padchest_min_age": -1}, "padchest_min_age"),
             ({"label_map": {"nodule": {"chexpert": "x"}}}, "unknown dataset 'chexpert'"),
             ({"label_map": {"nodule": {"padchest": "nodule"}}}, "non-empty list of label strings"),
             ({"label_map": ["nodule"]}, "label_map must map findings"),
             ("uncertain=skip", "label_policy must be a mapping")]
    for d, match in cases:
        with pytest.raises(ValueError, match=match) as err:
            data.LabelPolicy.from_dict(d)
        assert "\n" not in str(err.value)


def test_label_map_override_and_findings_without_labels(tmp_path):
    root = make_padchest_cases(tmp_path)
    with pytest.raises(ValueError, match=r"'lung opacity'.*no padchest labels"):
        iter_samples("padchest", root, findings=("lung opacity",))
    policy = LabelPolicy(label_map={"Nodule": {"padchest": ["nodule", "pseudonodule"]},
                                    "lung opacity": {"padchest": ["infiltrates"]}})
    assert policy.finding_labels()["nodule"]["mimic-cxr"] == "Lung Lesion"  # untouched key kept
    got = {s.image_id: s.label for s in iter_samples("padchest", root, findings=("nodule",),
                                                     label_policy=policy)}
    assert got["pseudo_x1"] == "yes"
    assert {s.image_id for s in iter_samples("padchest", root, findings=("lung opacity",),
                                             label_policy=policy)} >= {"pseudo_x1"}


def test_hierarchy_on_padchest_labels():
    mapping = labels.FINDING_LABELS
    assert {"loculated pleural effusion", "loculated fissural effusion", "hydropneumothorax"} <= \
        set(mapping["pleural effusion"]["padchest"])
    assert "hydropneumothorax" in mapping["pneumothorax"]["padchest"]
    assert "multiple nodules" in mapping["nodule"]["padchest"]
    assert "pseudonodule" not in mapping["nodule"]["padchest"]
    assert "reticulonodular interstitial pattern" not in mapping["nodule"]["padchest"]
    for finding in FINDINGS:  # the offline default's label is the node of its subtree
        assert mapping[finding]["padchest"][0] == FINDINGS[finding]["padchest"]
        assert mapping[finding]["mimic-cxr"] == FINDINGS[finding]["mimic-cxr"]
    assert set(labels.findings_of("mimic-cxr")) - set(labels.findings_of("padchest")) == \
        {"lung opacity", "support devices"}


PADCHEST_CASES = [  # ImageID stem, Labels, MethodLabel, PatientBirth, StudyDate_DICOM
    ("loc", "['loculated pleural effusion']", "Physician", "1950.0", "20140915"),
    ("fis", "['loculated fissural effusion', 'cardiomegaly']", "RNN_model", "1950.0", "20140915"),
    ("hpx", "['hydropneumothorax']", "RNN_model", "1950.0", "20140915"),
    ("mul", "['multiple nodules']", "Physician", "2010.0", "20140915"),  # age 4
    ("pseudo", "['pseudonodule', 'reticulonodular interstitial pattern']", "RNN_model", "1950.0",
     "20140915"),
    ("unch", "['unchanged']", "Physician", "1950.0", "20140915"),
    ("subopt", "['suboptimal study', '']", "RNN_model", "1950.0", "20140915"),
    ("both", "['unchanged', 'suboptimal study']", "RNN_model", "1950.0", "20140915"),
    ("subcard", "['suboptimal study', 'cardiomegaly']", "RNN_model", NAN, "20140915"),  # age unknown
    ("excl", "['exclude', 'pneumothorax']", "Physician", "1950.0", "20140915"),
]


def make_padchest_cases(root, drop_columns=()):
    root.mkdir(parents=True, exist_ok=True)
    patient = patients("test", 1)[0]
    frame = pd.DataFrame([{**dict.fromkeys(PADCHEST_COLUMNS, NAN), "ImageID": f"{stem}_x1.png",
                           "ImageDir": 0, "PatientID": patient, "Projection": "PA",
                           "MethodLabel": method, "PatientBirth": birth, "StudyDate_DICOM": date,
                           "Labels": cell} for stem, cell, method, birth, date in PADCHEST_CASES],
                         columns=PADCHEST_COLUMNS).drop(columns=list(drop_columns))
    write_csv(frame, root / "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv", gz=True)
    (root / "0").mkdir(exist_ok=True)
    for stem, *_ in PADCHEST_CASES:
        write_jpeg(root / "0" / f"{stem}_x1.png")
    return root


def padchest_answers(root, policy=LabelPolicy(), findings=ALL):
    skipped = data.Skips()
    got = {}
    for s in iter_samples("padchest", root, findings=findings, label_policy=policy, skipped=skipped):
        got.setdefault(s.image_id.split("_")[0], {})[s.finding] = s.label
    return got, skipped


def test_padchest_hierarchy_and_default_policy(tmp_path):
    got, skipped = padchest_answers(make_padchest_cases(tmp_path))
    yes = {k: {f for f, v in d.items() if v == "yes"} for k, d in got.items()}
    assert yes == {"loc": {"pleural effusion"}, "fis": {"pleural effusion", "cardiomegaly"},
                   "hpx": {"pleural effusion", "pneumothorax"}, "mul": {"nodule"}, "pseudo": set(),
                   "subcard": {"cardiomegaly"}}
    # unchanged only, suboptimal only, both (counted as unchanged first), exclude: 4 samples each
    assert skipped == {"label_unchanged_only": 8, "label_suboptimal_only": 4, "label_excluded": 4}
    assert [(r["item"], r["reason"], r["n"]) for r in skipped.rows] == [
        ("unch_x1", "label_unchanged_only", 4), ("subopt_x1", "label_suboptimal_only", 4),
        ("both_x1", "label_unchanged_only", 4), ("excl_x1", "label_excluded", 4)]


def test_padchest_no_info_policies(tmp_path):
    root = make_padchest_cases(tmp_path)
    keep = LabelPolicy(padchest_unchanged="no", padchest_suboptimal="no", padchest_exclude="no")
    got, skipped = padchest_answers(root, keep)
    assert skipped == {} and len(got) == len(PADCHEST_CASES)
    assert set(got["unch"].values()) == set(got["subopt"].values()) == {"no"}
    assert got["excl"]["pneumothorax"] == "yes"  # exclude ignored: the other labels decide
    got, skipped = padchest_answers(root, LabelPolicy(padchest_unchanged="no"))
    assert "unch" in got and "both" not in got  # both needs padchest_suboptimal="no" too
    assert skipped == {"label_suboptimal_only": 8, "label_excluded": 4}


def test_padchest_method_and_age_filters(tmp_path):
    root = make_padchest_cases(tmp_path)
    got, skipped = padchest_answers(root, LabelPolicy(padchest_method="physician"), ("nodule",))
    assert set(got) == {"loc", "mul"}  # unch, excl: physician but skipped by the no-info policy
    assert skipped == {"method_excluded": 6, "label_unchanged_only": 1, "label_excluded": 1}
    got, skipped = padchest_answers(root, LabelPolicy(padchest_method="rnn"), ("nodule",))
    assert set(got) == {"fis", "hpx", "pseudo", "subcard"}
    assert skipped["method_excluded"] == 4
    got, skipped = padchest_answers(root, LabelPolicy(padchest_min_age=10), ("nodule",))
    assert "mul" not in got and "subcard" not in got
    assert skipped["age_below_min"] == 1 and skipped["age_unknown"] == 1
    rows = {r["item"]: r for r in skipped.rows}
    assert rows["mul_x1"]["detail"] == "age 4"
    got, _ = padchest_answers(root, LabelPolicy(padchest_min_age=4), ("nodule",))
    assert "mul" in got


def test_check_layout_names_file_and_column(tmp_path):
    root = make_padchest_cases(tmp_path / "p", drop_columns=["MethodLabel"])
    assert data.check_layout("padchest", root)["labels"].name.endswith(".csv.gz")
    with pytest.raises(data.DataLayoutError, match=r"PADCHEST.*csv\.gz: missing column\(s\) "
                                                   r"\['MethodLabel'\].*padchest_method"):
        data.check_layout("padchest", root, LabelPolicy(padchest_method="rnn"))
    root = make_padchest_cases(tmp_path / "q", drop_columns=["Projection"])
    with pytest.raises(data.DataLayoutError, match=r"missing column\(s\) \['Projection'\]") as err:
        iter_samples("padchest", root)  # eagerly, before any image
    assert "\n" not in str(err.value)
    (tmp_path / "m").mkdir()
    mimic = make_mimic(tmp_path / "m")
    assert set(data.check_layout("mimic-cxr", mimic)) == {"labels", "metadata", "split"}
    with pytest.raises(data.MissingFileError, match="mimic-cxr-2.0.0-negbio.csv"):
        data.check_layout("mimic-cxr", mimic, LabelPolicy(mimic_label_file="negbio"))
    frame = pd.read_csv(mimic / "mimic-cxr-2.0.0-chexpert.csv.gz").drop(columns=["Pneumothorax"])
    write_csv(frame, mimic / "mimic-cxr-2.0.0-chexpert.csv", gz=True)
    data.check_layout("mimic-cxr", mimic, findings=("cardiomegaly",))  # only asked columns
    with pytest.raises(data.DataLayoutError, match=r"chexpert\.csv\.gz: missing column\(s\) \['Pneumothorax'\]"):
        data.check_layout("mimic-cxr", mimic)
    (mimic / "mimic-cxr-2.0.0-split.csv.gz").write_bytes(b"\x00\xff garbage")
    with pytest.raises(data.DataLayoutError, match=r"split\.csv\.gz: not a readable CSV"):
        data.check_layout("mimic-cxr", mimic, findings=("cardiomegaly",))
    with pytest.raises(FileNotFoundError, match="nowhere"):
        data.check_layout("mimic-cxr", tmp_path / "nowhere")


def test_mimic_negbio_file_and_invalid_values(tmp_path):
    root = make_mimic(tmp_path)
    frame = pd.read_csv(root / "mimic-cxr-2.0.0-chexpert.csv.gz")
    write_csv(frame.assign(Cardiomegaly=0.0), root / "mimic-cxr-2.0.0-negbio.csv", gz=False)
    negbio = list(iter_samples("mimic-cxr", root, findings=("cardiomegaly",),
                               label_policy=LabelPolicy(mimic_label_file="negbio", uncertain="yes")))
    assert answers(negbio) == [("d3", "cardiomegaly", "no"), ("d4", "cardiomegaly", "no")]
    frame.loc[1, "Pleural Effusion"] = 2.0         # study 50000001 (d3): not a CheXpert value
    frame["Pneumothorax"] = frame["Pneumothorax"].astype(object)
    frame.loc[2, "Pneumothorax"] = "present"       # study 50000002 (d4)
    write_csv(frame, root / "mimic-cxr-2.0.0-chexpert.csv", gz=True)
    skipped = data.Skips()
    samples = list(iter_samples("mimic-cxr", root, skipped=skipped))
    assert ("d3", "pleural effusion", "yes") not in answers(samples)
    assert skipped["label_invalid"] == 2
    invalid = [r for r in skipped.rows if r["reason"] == "label_invalid"]
    assert [r["item"] for r in invalid] == ["mimic-cxr-2.0.0-chexpert.csv.gz:2",
                                            "mimic-cxr-2.0.0-chexpert.csv.gz:3"]
    assert "d3/pleural effusion: Pleural Effusion = '2.0'" in invalid[0]["detail"]
    assert "'present'" in invalid[1]["detail"]


def test_skips_is_a_counter_with_rows():
    skips = data.Skips()
    skips.add("image_missing", "a", "/x/a.png", n=4)
    skips.add("label_blank", "b/nodule")
    skips["image_unreadable"] += 1  # plain Counter use still works (no row)
    assert skips == {"image_missing": 4, "label_blank": 1, "image_unreadable": 1}
    assert isinstance(skips, collections.Counter)
    assert list(skips.table().columns) == ["item", "reason", "detail", "n"]
    assert skips.rows[0] == {"item": "a", "reason": "image_missing", "detail": "/x/a.png", "n": 4}
    assert set(data.SKIP_REASONS) >= {"image_too_small", "label_invalid", "method_excluded"}


def test_padchest_unparseable_rows_are_listed_with_file_row(tmp_path):
    root = make_padchest(tmp_path)
    skipped = data.Skips()
    list(iter_samples("padchest", root, skipped=skipped))
    rows = [r for r in skipped.rows if r["reason"] == "label_unparseable"]
    # d, e, k are data rows 4, 5 and 11 of the file
    assert [r["item"] for r in rows] == [f"PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv:{i}"
                                        for i in (4, 5, 11)]
    assert rows[0]["detail"].startswith("d_x1: Labels = ")


def test_load_image_too_small(tmp_path):
    for side in (1, MIN_IMAGE_SIDE - 1):
        write_jpeg(tmp_path / f"s{side}.jpg", side=side)
    Image.fromarray(np.zeros((MIN_IMAGE_SIDE, 400), np.uint8)).save(tmp_path / "wide.png")
    skipped = data.Skips()
    assert load_image(sample_at(tmp_path / "s1.jpg"), skipped) is None
    assert load_image(sample_at(tmp_path / f"s{MIN_IMAGE_SIDE - 1}.jpg"), skipped) is None
    assert load_image(sample_at(tmp_path / "wide.png"), skipped).size == (400, MIN_IMAGE_SIDE)
    assert skipped == {"image_too_small": 2}
    assert skipped.rows[0]["detail"].endswith(f"1x1 px (minimum side {MIN_IMAGE_SIDE})")
