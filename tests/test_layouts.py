"""Issue 22's offline world: follow-up studies share the patient's anatomy, MS-CXR's box file holds every
present finding's footprint, and the VinDr-CXR-like tree has the release's files, headers and values
(lib.offline.synth, layouts, vindr, twins, world)."""

import gzip
import json

import numpy as np
import pandas as pd
import pydicom
import pytest

from lib.protocol import data
from lib.protocol.data import FINDINGS, iter_samples, read_xray
from lib.offline import layouts, synth, twins, vindr, world

N = 60


@pytest.fixture(scope="module")
def world_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("world22")
    world.write_default_datasets(root, n_images=N, seed=5, world="balanced")
    return root


def tree_bytes(root):
    return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# -- follow-up studies ----------------------------------------------------------------------------

def iou(a, b):
    return (a & b).sum() / (a | b).sum()


def test_a_patients_studies_share_anatomy_and_finding_geometry_not_position():
    """Same patient generator: every patient draw equal, every study draw different; the findings'
    footprints of one patient's two studies overlap more than two patients'."""
    pa, pb = (synth.patient_state(np.random.default_rng([0, k])) for k in (1, 2))
    first = synth._draw(np.random.default_rng(10), synth.generator(pa), 128, 256)
    again = synth._draw(np.random.default_rng(11), synth.generator(pa), 128, 256)
    other = synth._draw(np.random.default_rng(11), synth.generator(pb), 128, 256)
    patient_keys = set(synth._draw_patient(np.random.default_rng(0), 128))
    study_keys = set(synth._draw_study(np.random.default_rng(0), 256))
    assert set(first) == patient_keys | study_keys and not patient_keys & study_keys
    for key in patient_keys:
        assert np.array_equal(first[key], again[key]), key
    assert all(not np.array_equal(first[k], again[k]) for k in study_keys)
    assert sum(not np.array_equal(first[k], other[k]) for k in patient_keys) >= len(patient_keys) - 2
    for finding, margin in {"cardiomegaly": 0.0, "pleural effusion": 0.15, "pneumothorax": 0.15,
                            "nodule": 0.15}.items():
        same, across = [], []
        for k in range(20):
            pa, pb = (synth.patient_state(np.random.default_rng([k, j])) for j in (1, 2))
            region = [synth.finding_region(np.random.default_rng([k, s]), {}, finding, margin=0,
                                           patient=synth.generator(p)) for s, p in ((10, pa), (11, pa), (11, pb))]
            same.append(iou(region[0], region[1]))
            across.append(iou(region[0], region[2]))
        assert np.mean(same) > np.mean(across) + margin, (finding, np.mean(same), np.mean(across))


def test_the_nodule_moves_only_with_the_pose():
    """The nodule's centre measured in each study's image, mapped back through that study's pose,
    is the same point of the patient (within a pixel)."""
    for k in range(8):
        patient = synth.patient_state(np.random.default_rng([k, 1]))
        centres = []
        for study in (20, 21, 22):
            on, off = (synth.render_radiograph(np.random.default_rng([k, study]), {"nodule": present},
                                               patient=synth.generator(patient)) for present in (True, False))
            rows, cols = np.nonzero((on - off) > (on - off).max() / 2)
            pose = synth._draw_study(np.random.default_rng([k, study]), 256)
            x, y = (cols.mean() + 0.5) / 256 - 0.5 - pose["shift_x"], (rows.mean() + 0.5) / 256 - 0.5 - pose["shift_y"]
            c, s = np.cos(pose["angle"]) / pose["scale"], np.sin(pose["angle"]) / pose["scale"]
            centres.append((c * x + s * y, -s * x + c * y))  # as synth._patient_coordinates maps a pixel
        assert np.ptp(np.array(centres), axis=0).max() * 256 <= 1.0, (k, centres)


def followups(dataset, root):
    """Per test sample (image, finding): whether the patient has another study with the opposite
    label for the finding, and one with the same label."""
    samples = pd.DataFrame([s.__dict__ for s in iter_samples(dataset, root, split="test")])
    if dataset == "mimic-cxr":
        with gzip.open(root / "mimic-cxr-2.0.0-metadata.csv.gz", "rt") as f:
            study = pd.read_csv(f, dtype={"dicom_id": str}).set_index("dicom_id")["study_id"]
    else:
        table = pd.read_csv(root / data.PADCHEST_CSV, dtype={"StudyID": str})
        study = table.set_index(table.ImageID.str.removesuffix(".png"))["StudyID"]
    samples["study"] = samples.image_id.map(study)
    out = []
    for row in samples.itertuples():
        others = samples[(samples.patient_id == row.patient_id) & (samples.finding == row.finding)
                         & (samples.study != row.study)]
        out.append({"opposite": bool((others.label != row.label).any()), "same": bool((others.label == row.label).any())})
    return pd.DataFrame(out)


@pytest.mark.parametrize("dataset, opposite, same", [("mimic-cxr", 0.25, 0.25), ("padchest", 0.15, 0.15)])
def test_test_samples_have_follow_ups_of_both_labels(world_root, dataset, opposite, same):
    """Balanced world: a fair share of test samples has another study of the same patient with the
    opposite label (the follow-up test) and with the same label (its control)."""
    coverage = followups(dataset, world_root / dataset).mean()
    assert coverage.opposite >= opposite and coverage.same >= same, coverage.to_dict()


def test_a_patients_study_dates_are_in_order(world_root):
    with gzip.open(world_root / "mimic-cxr" / "mimic-cxr-2.0.0-metadata.csv.gz", "rt") as f:
        meta = pd.read_csv(f).drop_duplicates("study_id").sort_values("study_id")
    dates = pd.to_datetime(meta.StudyDate.astype(str), format="%Y%m%d")
    spans = dates.groupby(meta.subject_id).agg(lambda d: (d.max() - d.min()).days)
    assert (meta.groupby("subject_id").size() > 1).mean() > 0.5
    assert spans.max() <= 2 * 730 and (spans[meta.groupby("subject_id").size() > 1] > 0).all()


# -- MS-CXR boxes ---------------------------------------------------------------------------------

MS_CXR_COLUMNS = ["dicom_id", "category_name", "label_text", "path", "x", "y", "w", "h",
                  "image_width", "image_height"]


def test_ms_cxr_file_boxes_every_present_finding_of_every_frontal_image(world_root):
    boxes = pd.read_csv(world.box_file(world_root), dtype={"dicom_id": str})
    assert world.box_file(world_root) == world_root / "ms-cxr" / "MS_CXR_Local_Alignment_v1.0.0.csv"
    assert list(boxes.columns) == MS_CXR_COLUMNS
    assert set(boxes.category_name) == {"Cardiomegaly", "Pleural Effusion", "Pneumothorax", "Lung Lesion"}
    assert (boxes.image_width == 256).all() and (boxes.image_height == 256).all()
    assert (boxes.x >= 0).all() and (boxes.y >= 0).all() and (boxes.w > 0).all() and (boxes.h > 0).all()
    assert ((boxes.x + boxes.w) <= 256).all() and ((boxes.y + boxes.h) <= 256).all()
    root = world_root / "mimic-cxr"
    assert all((root / p).is_file() for p in boxes.path)
    with gzip.open(root / "mimic-cxr-2.0.0-metadata.csv.gz", "rt") as f:
        meta = pd.read_csv(f, dtype={"dicom_id": str})
    with gzip.open(root / "mimic-cxr-2.0.0-chexpert.csv.gz", "rt") as f:
        chexpert = pd.read_csv(f).set_index("study_id")
    frontal = meta[meta.ViewPosition != "LATERAL"]
    present = {(d, FINDINGS[f]["mimic-cxr"]) for d, s in zip(frontal.dicom_id, frontal.study_id) for f in FINDINGS
               if chexpert.loc[s, FINDINGS[f]["mimic-cxr"]] in (1.0, -1.0)}  # -1.0: present, written uncertain
    assert present and present == set(zip(boxes.dicom_id, boxes.category_name))


def test_ms_cxr_boxes_are_the_tight_boxes_of_the_findings_footprint(world_root):
    """On the test images (whose generator states the twins CSV holds): the boxes of a finding
    hold every pixel of its footprint (finding_region, margin 0), and each box is tight."""
    boxes = pd.read_csv(world.box_file(world_root), dtype={"dicom_id": str})
    table = pd.read_csv(twins.twin_csv(world_root, "mimic-cxr"), dtype={"image_id": str}, keep_default_na=False)
    checked = 0
    for row in table[table.present].itertuples():
        mine = boxes[(boxes.dicom_id == row.image_id) & (boxes.category_name == FINDINGS[row.finding]["mimic-cxr"])]
        footprint = synth.finding_region(synth.generator(json.loads(row.render_state)), json.loads(row.findings),
                                         row.finding, margin=0,
                                         patient=synth.generator(json.loads(row.patient_state)))
        covered = np.zeros_like(footprint)
        for box in mine.itertuples():
            part = footprint[box.y:box.y + box.h, box.x:box.x + box.w]
            assert part[0].any() and part[-1].any() and part[:, 0].any() and part[:, -1].any()  # tight
            covered[box.y:box.y + box.h, box.x:box.x + box.w] = True
        assert not (footprint & ~covered).any(), (row.image_id, row.finding)
        checked += 1
    assert checked >= 10


def test_box_phrases_name_the_patients_side():
    assert layouts.box_phrase("pneumothorax", 40.0) == "right pneumothorax"  # image left = patient right
    assert layouts.box_phrase("pleural effusion", 200.0) == "left pleural effusion"
    assert layouts.box_phrase("cardiomegaly", 150.0) == "enlarged cardiac silhouette"


# -- the VinDr-CXR-like tree ----------------------------------------------------------------------

VINDR_LABEL_CLASSES = [
    "Aortic enlargement", "Atelectasis", "Calcification", "Cardiomegaly", "Clavicle fracture",
    "Consolidation", "Edema", "Emphysema", "Enlarged PA", "ILD", "Infiltration", "Lung Opacity",
    "Lung cavity", "Lung cyst", "Mediastinal shift", "Nodule/Mass", "Pleural effusion",
    "Pleural thickening", "Pneumothorax", "Pulmonary fibrosis", "Rib fracture", "Other lesion", "COPD",
    "Lung tumor", "Pneumonia", "Tuberculosis", "Other diseases", "No finding"]
VINDR_FILES = {
    "annotations/image_labels_train.csv": ["image_id", "rad_id", *VINDR_LABEL_CLASSES],
    "annotations/image_labels_test.csv": ["image_id", *VINDR_LABEL_CLASSES],
    "annotations/annotations_train.csv": ["image_id", "rad_id", "class_name", "x_min", "y_min", "x_max", "y_max"],
    "annotations/annotations_test.csv": ["image_id", "class_name", "x_min", "y_min", "x_max", "y_max"],
}
FOUR = ["Cardiomegaly", "Pleural effusion", "Pneumothorax", "Nodule/Mass"]


@pytest.fixture(scope="module")
def vindr_tables(world_root):
    root = world_root / "vindr-cxr"
    return {name: pd.read_csv(root / name) for name in VINDR_FILES}


def test_vindr_tree_has_the_release_layout_and_headers(world_root, vindr_tables):
    root = world_root / "vindr-cxr"
    assert sorted(p.name for p in root.iterdir()) == ["annotations", "test", "train"]
    for name, columns in VINDR_FILES.items():
        assert list(vindr_tables[name].columns) == columns, name
    images = {split: {p.stem for p in (root / split).glob("*.dicom")} for split in ("train", "test")}
    assert len(images["train"]) + len(images["test"]) == N and 0.5 < len(images["train"]) / N < 0.9
    assert all(len(i) == 32 and int(i, 16) >= 0 for split in images.values() for i in split)
    for split in ("train", "test"):
        assert set(vindr_tables[f"annotations/image_labels_{split}.csv"].image_id) == images[split]
        assert set(vindr_tables[f"annotations/annotations_{split}.csv"].image_id) == images[split]


def test_vindr_labels_three_radiologists_in_train_one_consensus_row_in_test(vindr_tables):
    train, test = vindr_tables["annotations/image_labels_train.csv"], vindr_tables["annotations/image_labels_test.csv"]
    assert (train.groupby("image_id").rad_id.nunique() == 3).all() and (train.groupby("image_id").size() == 3).all()
    assert train.rad_id.str.fullmatch(r"R([1-9]|1[0-7])").all()
    assert test.image_id.is_unique
    for labels in (train, test):
        values = labels[VINDR_LABEL_CLASSES]
        assert set(np.unique(values)) == {0, 1}
        others = [c for c in VINDR_LABEL_CLASSES if c not in FOUR + ["No finding"]]
        assert (values[others] == 0).all().all()
        assert (labels["No finding"] == (values[FOUR].sum(axis=1) == 0)).all()
    # radiologists disagree now and then: some (image, finding) not unanimous, most unanimous
    split_votes = train.groupby("image_id")[FOUR].sum().isin([1, 2]).to_numpy().mean()
    assert 0 < split_votes < 0.35


def test_vindr_boxes_one_per_marked_finding_part_no_finding_rows_empty(vindr_tables):
    for split in ("train", "test"):
        boxes = vindr_tables[f"annotations/annotations_{split}.csv"]
        labels = vindr_tables[f"annotations/image_labels_{split}.csv"]
        reader = ["image_id", "rad_id"] if split == "train" else ["image_id"]
        none = boxes.class_name == "No finding"
        assert boxes[none][["x_min", "y_min", "x_max", "y_max"]].isna().all().all()
        marked = boxes[~none]
        assert set(marked.class_name) <= set(FOUR)
        assert ((marked.x_min >= 0) & (marked.x_max <= 256) & (marked.x_min < marked.x_max)
                & (marked.y_min >= 0) & (marked.y_max <= 256) & (marked.y_min < marked.y_max)).all()
        melted = labels[reader + FOUR].melt(reader, var_name="class_name")
        called = set(melted[melted.value == 1][reader + ["class_name"]].itertuples(index=False, name=None))
        assert called == set(marked[reader + ["class_name"]].itertuples(index=False, name=None))
        assert set(boxes[none][reader].itertuples(index=False, name=None)) == set(
            labels[labels["No finding"] == 1][reader].itertuples(index=False, name=None))


def dicom_as_read(path, tmp_path):
    """read_xray of a VinDr ".dicom" file (this branch's read_xray knows DICOM by ".dcm")."""
    link = tmp_path / f"{path.stem}.dcm"
    if not link.exists():
        link.symlink_to(path)
    return np.asarray(read_xray(link), dtype=int)


def test_vindr_dicoms_are_valid_monochrome2_12_to_14_bit(world_root):
    for path in sorted((world_root / "vindr-cxr").rglob("*.dicom"))[:12]:
        ds = pydicom.dcmread(path)
        assert ds.file_meta.MediaStorageSOPClassUID == "1.2.840.10008.5.1.4.1.1.1.1"
        assert ds.PhotometricInterpretation == "MONOCHROME2" and ds.BitsAllocated == 16
        assert ds.BitsStored in (12, 14) and ds.HighBit == ds.BitsStored - 1 and ds.PixelRepresentation == 0
        assert (ds.Rows, ds.Columns) == (256, 256) and [float(v) for v in ds.PixelSpacing] == [1.4, 1.4]
        pixels = ds.pixel_array
        assert pixels.dtype == np.uint16 and pixels.max() < 2 ** ds.BitsStored and pixels.std() > 100


def test_vindr_test_labels_and_boxes_are_the_truth(world_root, vindr_tables):
    """The test consensus is each test image's drawn findings, boxed by their exact footprints."""
    table = pd.read_csv(twins.twin_csv(world_root, "vindr-cxr"), dtype={"image_id": str}, keep_default_na=False)
    labels = vindr_tables["annotations/image_labels_test.csv"].set_index("image_id")
    boxes = vindr_tables["annotations/annotations_test.csv"]
    assert set(table.image_id) == set(labels.index) and (table.patient_state == "").all()
    for row in table.itertuples():
        assert labels.loc[row.image_id, vindr.VINDR_FINDINGS[row.finding]] == row.present
        mine = boxes[(boxes.image_id == row.image_id) & (boxes.class_name == vindr.VINDR_FINDINGS[row.finding])]
        expected = synth.finding_boxes(synth.generator(json.loads(row.render_state)), json.loads(row.findings),
                                       row.finding) if row.present else []
        assert sorted(mine[["x_min", "y_min", "x_max", "y_max"]].itertuples(index=False, name=None)) == \
            sorted(tuple(map(float, b)) for b in expected)


@pytest.mark.parametrize("dataset", ["mimic-cxr", "padchest", "vindr-cxr"])
def test_twins_of_follow_ups_and_vindr_are_exact_outside_their_region(world_root, tmp_path, dataset):
    """Read as the readers read them: each twin equals its original outside its region (8 x 8 tiles
    for the JPEGs) and differs inside it, for images of patients with follow-ups too."""
    table = pd.read_csv(twins.twin_csv(world_root, dataset), dtype={"image_id": str}, keep_default_na=False)
    if dataset == "vindr-cxr":
        originals = {p.stem: p for p in (world_root / dataset / "test").glob("*.dicom")}
    else:
        originals = {s.image_id: s.image_path for s in iter_samples(dataset, world_root / dataset, split="test")}
        assert (table.patient_state != "").all()
    block = 8 if dataset == "mimic-cxr" else None
    for row in table.iloc[::3].itertuples():
        path = originals[row.image_id]
        original = dicom_as_read(path, tmp_path) if dataset == "vindr-cxr" else np.asarray(read_xray(path), dtype=int)
        twin = np.asarray(read_xray(twins.twin_csv(world_root, dataset).parent / row.twin_path), dtype=int)
        region = twins.twin_region(row, block=block)
        assert not (twin != original)[~region].any(), (row.image_id, row.finding)
        assert (np.abs(twin - original)[region] >= 20).sum() >= 20, (row.image_id, row.finding)


def test_vindr_same_seed_same_bytes(tmp_path):
    first = tree_bytes(vindr.write_vindr(tmp_path / "a", 6, 3, twins_dir=tmp_path / "ta"))
    assert len(first) == 6 + 4 and tree_bytes(vindr.write_vindr(tmp_path / "b", 6, 3)) == first
    assert tree_bytes(tmp_path / "ta") and tree_bytes(vindr.write_vindr(tmp_path / "c", 6, 4)) != first


@pytest.mark.skipif("vindr-cxr" not in data.DATASETS,
                    reason="lib.protocol.data has no VinDr-CXR reader in this branch (issue22r adds it)")
def test_the_vindr_reader_reads_the_tree(world_root):
    for split in ("train", "test"):
        samples = list(iter_samples("vindr-cxr", world_root / "vindr-cxr", split=split))
        assert samples and {s.label for s in samples} <= {"yes", "no"}
        assert {s.finding for s in samples} >= set(FINDINGS)
        assert all(s.patient_id is None for s in samples)
        for sample in samples[::len(FINDINGS) * 4]:
            assert data.load_image(sample).size == (256, 256)
