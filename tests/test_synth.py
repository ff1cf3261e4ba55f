"""lib.offline (synth, layouts, twins, world): reproducible synthetic trees in the real layouts, readable by
lib.protocol.data, findings visible, twins exact outside their region. Follow-ups, boxes and the VinDr-like
tree: tests/test_layouts.py."""

import collections
import gzip
import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from lib.protocol.data import (FINDINGS, iter_samples, load_image, parse_padchest_labels, read_xray,
                               split_of_patient)
from lib.offline import synth, twins, world
from lib.offline.layouts import write_mimic, write_padchest
from lib.offline.synth import render_radiograph
from lib.offline.world import montage, write_default_datasets

N = 80  # images per dataset: enough studies for the rare label codes to occur

MIMIC_FILES = {
    "mimic-cxr-2.0.0-chexpert.csv.gz": [
        "subject_id", "study_id", "Atelectasis", "Cardiomegaly", "Consolidation", "Edema",
        "Enlarged Cardiomediastinum", "Fracture", "Lung Lesion", "Lung Opacity", "No Finding",
        "Pleural Effusion", "Pleural Other", "Pneumonia", "Pneumothorax", "Support Devices"],
    "mimic-cxr-2.0.0-metadata.csv.gz": [
        "dicom_id", "subject_id", "study_id", "PerformedProcedureStepDescription", "ViewPosition",
        "Rows", "Columns", "StudyDate", "StudyTime", "ProcedureCodeSequence_CodeMeaning",
        "ViewCodeSequence_CodeMeaning", "PatientOrientationCodeSequence_CodeMeaning"],
    "mimic-cxr-2.0.0-split.csv.gz": ["dicom_id", "study_id", "subject_id", "split"],
}
PADCHEST_CSV = "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv"
PADCHEST_COLUMNS = [
    "ImageID", "ImageDir", "StudyDate_DICOM", "StudyID", "PatientID", "PatientBirth",
    "PatientSex_DICOM", "ViewPosition_DICOM", "Projection", "MethodProjection", "Pediatric",
    "Modality_DICOM", "Manufacturer_DICOM", "PhotometricInterpretation_DICOM",
    "PixelRepresentation_DICOM", "PixelAspectRatio_DICOM", "SpatialResolution_DICOM",
    "BitsStored_DICOM", "WindowCenter_DICOM", "WindowWidth_DICOM", "Rows_DICOM", "Columns_DICOM",
    "XRayTubeCurrent_DICOM", "Exposure_DICOM", "ExposureTime", "RelativeXRayExposure_DICOM",
    "ReportID", "Report", "MethodLabel", "Labels", "Localizations", "LabelsLocalizationsBySentence",
    "labelCUIS", "LocalizationsCUIS"]


@pytest.fixture(scope="module")
def world_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    write_default_datasets(root, n_images=N, seed=3, world="balanced")
    return root


@pytest.fixture(scope="module")
def trees(world_root):
    return {d: world_root / d for d in ("mimic-cxr", "padchest")}


def tree_bytes(root):
    return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("write", [write_mimic, write_padchest])
def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path, write):
    first = tree_bytes(write(tmp_path / "a", 12, 3))
    assert len(first) > 12 and tree_bytes(write(tmp_path / "b", 12, 3)) == first
    assert tree_bytes(write(tmp_path / "c", 12, 4)) != first
    for path, data in first.items():  # no gzip timestamp: identical on another day too
        assert not path.name.endswith(".gz") or data[4:8] == bytes(4)


def test_mimic_layout(trees):
    root = trees["mimic-cxr"]
    assert sorted(p.name for p in root.iterdir()) == sorted(["files", *MIMIC_FILES])
    tables = {}
    for name, columns in MIMIC_FILES.items():
        with gzip.open(root / name, "rt") as f:
            tables[name] = pd.read_csv(f)
        assert list(tables[name].columns) == columns
    meta = tables["mimic-cxr-2.0.0-metadata.csv.gz"]
    split = tables["mimic-cxr-2.0.0-split.csv.gz"]
    assert len(meta) == len(split) == N and set(meta["dicom_id"]) == set(split["dicom_id"])
    assert set(meta["ViewPosition"]) <= {"PA", "AP", "LATERAL"} and "LATERAL" in set(meta["ViewPosition"])
    assert split.groupby("subject_id")["split"].nunique().max() == 1  # subjects never straddle
    for row in meta.itertuples():
        subject = str(row.subject_id)
        path = root / "files" / f"p{subject[:2]}" / f"p{subject}" / f"s{row.study_id}" / f"{row.dicom_id}.jpg"
        with Image.open(path) as image:
            assert image.format == "JPEG" and image.mode == "L"
        assert 10_000_000 <= row.subject_id < 20_000_000 and str(row.study_id).startswith("5")


def test_mimic_chexpert_semantics(trees):
    with gzip.open(trees["mimic-cxr"] / "mimic-cxr-2.0.0-chexpert.csv.gz", "rt") as f:
        chexpert = pd.read_csv(f)
    four = chexpert[[FINDINGS[f]["mimic-cxr"] for f in FINDINGS]]
    assert set(np.unique(four.fillna(9).to_numpy())) == {-1.0, 0.0, 1.0, 9.0}  # 9: blank
    anything = (four.isin([1.0, -1.0])).any(axis=1)
    assert (chexpert["No Finding"][~anything] == 1.0).all()
    assert chexpert["No Finding"][anything].isna().all()


def test_padchest_layout(trees):
    root = trees["padchest"]
    table = pd.read_csv(root / PADCHEST_CSV)
    assert list(table.columns) == PADCHEST_COLUMNS and len(table) == N
    assert set(table["Projection"]) <= {"PA", "AP", "AP_horizontal", "L"}
    assert table["ImageID"].str.fullmatch(r"\d{20,}_[a-z0-9]{6}\.png").all()
    for row in table.itertuples():
        with Image.open(root / str(row.ImageDir) / row.ImageID) as image:
            assert image.mode == "I;16"
            pixels = np.asarray(image)
        assert 200 <= pixels.min() <= 800 and 2500 <= pixels.max() <= 4095  # 12 bits, own range
        assert parse_padchest_labels(row.Labels) is not None


def test_padchest_labels_have_the_real_quirks(trees):
    table = pd.read_csv(trees["padchest"] / PADCHEST_CSV)
    assert (table["Labels"] == "['normal']").any()
    assert table["Labels"].str.contains("' ").any()  # an entry with a leading space
    assert table["Labels"].str.contains("''").any()  # an empty entry
    assert table["Labels"].str.contains("chronic changes|aortic elongation|kyphosis|scoliosis").any()
    test_share = (table["PatientID"].astype(str).map(split_of_patient) == "test").mean()
    assert 0.1 < test_share < 0.35


@pytest.mark.parametrize("dataset", ["mimic-cxr", "padchest"])
def test_readers_read_the_synthetic_trees(trees, dataset):
    for split in ("train", "test"):
        skipped = collections.Counter()
        samples = list(iter_samples(dataset, trees[dataset], split=split, skipped=skipped))
        assert samples and "image_missing" not in skipped
        assert {s.label for s in samples} <= {"yes", "no"}
        for sample in samples[::len(FINDINGS)]:
            image = load_image(sample)
            assert image.mode == "L" and image.size == (256, 256)


def test_montage_pairs_each_finding_without_and_with(trees):
    images, titles = montage(trees["mimic-cxr"])
    assert titles == [f"{f}: {label}" for f in FINDINGS for label in ("no", "yes") * 2]
    assert all(image.shape == (256, 256) for image in images)


# ----------------------------------------------------------------------------------------------
# the images


def small(pixels):
    """What a 64-px model sees."""
    return np.asarray(Image.fromarray(pixels.astype(np.float32)).resize((64, 64), Image.BILINEAR))


def paired(finding, seed, size=256):
    """The same anatomy rendered without and with one finding."""
    return (render_radiograph(np.random.default_rng(seed), {}, size),
            render_radiograph(np.random.default_rng(seed), {finding: True}, size))


def test_render_contract():
    image = render_radiograph(np.random.default_rng(0), {"nodule": True})
    assert image.shape == (256, 256) and np.issubdtype(image.dtype, np.floating)
    assert 0 <= image.min() and image.max() <= 1 and image.std() > 0.1
    assert np.array_equal(image, render_radiograph(np.random.default_rng(0), {"nodule": True}))
    assert render_radiograph(np.random.default_rng(0), {}, size=64).shape == (64, 64)
    with pytest.raises(ValueError, match="effusion"):
        render_radiograph(np.random.default_rng(0), {"effusion": True})


def test_lungs_dark_mediastinum_bright():
    for seed in range(10):
        x = small(render_radiograph(np.random.default_rng(seed), {}))
        lungs = (x[20:40, 12:22].mean() + x[20:40, 42:52].mean()) / 2
        assert x[20:40, 29:35].mean() > lungs + 0.15


SEEDS = range(20)


def test_effusion_brightens_the_lung_base():
    # independent images: the lower lung band is brighter with effusion than without
    def base(x):
        return x[38:50, 8:56].mean() - x[14:26, 8:56].mean()
    with_fluid = [base(small(render_radiograph(np.random.default_rng(100 + s), {"pleural effusion": True})))
                  for s in SEEDS]
    without = [base(small(render_radiograph(np.random.default_rng(200 + s), {}))) for s in SEEDS]
    assert np.mean(with_fluid) > np.mean(without) + 0.05
    for s in SEEDS:  # and on the same anatomy it only ever adds density, low in the chest
        before, after = map(small, paired("pleural effusion", s))
        assert (after - before)[32:60].mean() > 0.01 and np.abs(after - before)[:16].max() < 1e-3


def test_cardiomegaly_widens_the_heart():
    for s in SEEDS:
        before, after = map(small, paired("cardiomegaly", s))
        wider = (after - before) > 0.1  # lung pixels that became heart
        assert wider[30:60].sum() >= 30 and not wider[:16].any()


def test_pneumothorax_darkens_an_apex():
    for s in SEEDS:
        before, after = map(small, paired("pneumothorax", s))
        darker = (after - before) < -0.08
        assert darker[:32].sum() >= 15  # a visible dark rim in the upper chest


def test_nodule_is_a_round_bright_disc():
    for s in SEEDS:
        before, after = paired("nodule", s)
        disc = (after - before) > (after - before).max() / 2  # the disc at half its brightness
        assert 0.9 * np.pi * (0.05 * 256) ** 2 <= disc.sum() <= 1.1 * np.pi * (0.07 * 256) ** 2
        rows, cols = np.nonzero(disc)
        assert max(np.ptp(rows), np.ptp(cols)) <= 2.2 * 0.07 * 256  # one compact blob
        before, after = map(small, (before, after))
        assert (after - before).max() > 0.2  # still bright at 64 px


# ----------------------------------------------------------------------------------------------
# label priors


def test_real_prevalence_is_the_real_datasets_with_a_floor():
    real = world.prevalence("real")
    assert set(real) == {"mimic-cxr", "padchest", "vindr-cxr"} and all(set(r) == set(FINDINGS) for r in real.values())
    assert world.REAL_PREVALENCE["vindr-cxr"] == world.REAL_PREVALENCE["mimic-cxr"]  # no VinDr counts offline
    # PadChest frontal images (real labels file): cardiomegaly 8.9 %, effusion 6.3 %, nodule 2.1 %,
    # pneumothorax 0.36 %; the rarest two are raised to the floor
    assert world.REAL_PREVALENCE["padchest"] == {"cardiomegaly": 0.089, "pleural effusion": 0.063,
                                                 "pneumothorax": 0.0036, "nodule": 0.021}
    for dataset, rates in real.items():
        for finding, rate in rates.items():
            assert rate == max(world.REAL_PREVALENCE[dataset][finding], world.PREVALENCE_FLOOR)
            assert 0 < rate < 0.5
    assert real["padchest"]["pneumothorax"] == world.PREVALENCE_FLOOR
    assert world.prevalence("real", floor=0)["padchest"]["pneumothorax"] == 0.0036
    assert all(r == 0.5 for rates in world.prevalence("balanced").values() for r in rates.values())
    assert set(world.PREVALENCE_SOURCES) == set(real)
    with pytest.raises(ValueError, match="world"):
        world.prevalence("uniform")


def test_the_real_world_draws_its_priors(tmp_path):
    roots = write_default_datasets(tmp_path, n_images=400, seed=1, world="real", twins=False)
    rates = world.prevalence("real")
    for dataset, root in roots.items():
        samples = [s for split in ("train", "test") for s in iter_samples(dataset, root, split=split)]
        for finding, rate in rates[dataset].items():
            labels = [s.label == "yes" for s in samples if s.finding == finding]
            # studies hold 1-3 frontal images: a generous margin around the binomial spread
            assert abs(np.mean(labels) - rate) <= 5 * np.sqrt(rate * (1 - rate) / len(labels)) + 0.02, \
                (dataset, finding, np.mean(labels), rate)


# ----------------------------------------------------------------------------------------------
# counterfactual twins


def test_twins_change_nothing_in_the_official_trees(tmp_path):
    with_twins = write_default_datasets(tmp_path / "a", n_images=12, seed=3, twins=True)
    write_default_datasets(tmp_path / "b", n_images=12, seed=3, twins=False)
    for dataset in world.DATASETS:
        assert tree_bytes(tmp_path / "a" / dataset) == tree_bytes(tmp_path / "b" / dataset)
    assert set(with_twins) == set(world.TRAINED_ON)
    assert (tmp_path / "a" / "twins").is_dir() and not (tmp_path / "b" / "twins").exists()


@pytest.mark.parametrize("dataset", ["mimic-cxr", "padchest"])
def test_every_test_image_has_one_twin_per_finding(world_root, trees, dataset):
    table = pd.read_csv(twins.twin_csv(world_root, dataset))
    assert list(table.columns) == list(twins.TWIN_COLUMNS)
    test = {(s.image_id, s.finding) for s in iter_samples(dataset, trees[dataset], split="test")}
    assert test and test <= set(zip(table.image_id.astype(str), table.finding))
    assert len(table) == 4 * table.image_id.nunique() and not table.duplicated(["image_id", "finding"]).any()
    assert set(table.image_id.astype(str)) == {i for i, _ in test}  # test images only
    for row in table.itertuples():
        path = twins.twin_csv(world_root, dataset).parent / row.twin_path
        assert path.is_file() and not path.resolve().is_relative_to(trees[dataset].resolve())


@pytest.mark.parametrize("dataset", ["mimic-cxr", "padchest"])
def test_twins_differ_from_their_original_only_in_the_findings_region(world_root, trees, dataset):
    """As the readers read them: identical outside the region (8 x 8 tiles for the JPEGs), and the
    finding really toggled inside it."""
    table = pd.read_csv(twins.twin_csv(world_root, dataset), dtype={"image_id": str})
    paths = {s.image_id: s.image_path for s in iter_samples(dataset, trees[dataset], split="test")}
    block = 8 if dataset == "mimic-cxr" else None
    for row in table.itertuples():
        original = np.asarray(read_xray(paths[row.image_id]), dtype=int)
        twin = np.asarray(read_xray(twins.twin_csv(world_root, dataset).parent / row.twin_path), dtype=int)
        region = twins.twin_region(row, block=block)
        changed = twin != original
        assert not changed[~region].any(), (row.image_id, row.finding, int(changed[~region].sum()))
        assert (np.abs(twin - original)[region] >= 20).sum() >= 20, (row.image_id, row.finding)
        assert region.mean() < 0.45  # a region, not the image
        assert json.loads(row.findings)[row.finding] == row.present


def test_finding_region_holds_every_changed_pixel_of_the_render():
    for seed in range(12):
        for finding in FINDINGS:
            for others in ({}, {f: True for f in FINDINGS}):
                state = np.random.default_rng(seed).bit_generator.state
                on = render_radiograph(synth.generator(state), {**others, finding: True})
                off = render_radiograph(synth.generator(state), {**others, finding: False})
                region = synth.finding_region(synth.generator(state), others, finding)
                assert np.array_equal(on[~region], off[~region])
                assert np.abs(on - off)[region].max() > 0.1


def test_pretraining_images_are_balanced_and_belong_to_no_tree():
    images, labels = synth.pretraining_images(40, seed=0)
    assert len(images) == 40 and labels.shape == (40, len(FINDINGS))
    assert all(im.mode == "RGB" and im.size == (256, 256) for im in images)
    assert 0.25 < labels.mean() < 0.75
    again, _ = synth.pretraining_images(4, seed=0)
    assert np.array_equal(np.asarray(again[0]), np.asarray(images[0]))


def test_twin_check_compares_natural_and_twin_positives(tiny_world, tmp_path):
    from lib.offline import twin_check
    from lib.protocol import models

    root = twin_check.fresh_world(tmp_path, "mimic-cxr", n_images=40, seed=3)
    lm = models.load_model(str(tiny_world["models"]["llava"]), dtype="float32", device="cpu")
    table = twin_check.compare(lm, root, "mimic-cxr")
    mapping = pd.read_csv(twins.twin_csv(root, "mimic-cxr"))
    assert int(table["n twin"].sum()) == int((~mapping.present).sum())
    natural = [s for s in iter_samples("mimic-cxr", root / "mimic-cxr", split=None) if s.label == "yes"]
    assert int(table["n natural"].sum()) == len(natural)
    shares = table.filter(like="sensitivity").stack().dropna()   # NaN where a finding has no positive
    assert len(shares) and shares.between(0, 1).all()
