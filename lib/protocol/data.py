"""Readers of the official chest X-ray dataset layouts; they yield samples and know nothing of models.

A *sample* is one image x one finding question, with a ground-truth ``label`` of ``"yes"``/``"no"``.
Two layouts are read exactly as published:

* MIMIC-CXR-JPG 2.0.0: ``files/p10/p10000032/s50414267/<dicom_id>.jpg`` plus
  ``mimic-cxr-2.0.0-{chexpert,metadata,split}.csv.gz`` (or plain ``.csv``) at the root.
* PadChest: ``PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv`` (or ``.csv.gz``) at the root,
  16-bit PNGs at ``<root>/<ImageDir>/<ImageID>``.

Only frontal views are samples. ``skipped`` counters count *samples* (image x finding) that were
dropped, by reason: ``label_uncertain``, ``label_blank``, ``label_missing`` (MIMIC study without a
CheXpert row), ``label_unparseable`` and ``label_excluded`` (PadChest), ``image_missing``,
``image_unreadable``.
"""

from __future__ import annotations

import ast
import collections
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd
import pydicom
from PIL import Image
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_modality_lut, apply_voi_lut

DATASETS = ("mimic-cxr", "padchest")

# canonical finding name -> the label name in each dataset
FINDINGS = {
    "cardiomegaly": {"mimic-cxr": "Cardiomegaly", "padchest": "cardiomegaly"},
    "pleural effusion": {"mimic-cxr": "Pleural Effusion", "padchest": "pleural effusion"},
    "pneumothorax": {"mimic-cxr": "Pneumothorax", "padchest": "pneumothorax"},
    "nodule": {"mimic-cxr": "Lung Lesion", "padchest": "nodule"},
}

SPLITS = {"mimic-cxr": ("train", "validate", "test"), "padchest": ("train", "test")}

MIMIC_CHEXPERT = "mimic-cxr-2.0.0-chexpert.csv"
MIMIC_METADATA = "mimic-cxr-2.0.0-metadata.csv"
MIMIC_SPLIT = "mimic-cxr-2.0.0-split.csv"
MIMIC_FRONTAL = ("PA", "AP")
PADCHEST_CSV = "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv"
PADCHEST_FRONTAL = ("PA", "AP", "AP_horizontal")
# PadChest label meaning "this study was excluded from labelling": its labels are not negatives.
PADCHEST_EXCLUDE = "exclude"

LABEL_CHOICES = ("skip", "yes", "no")

# What a damaged or non-image file raises while being decoded (FileNotFoundError is handled first).
READ_ERRORS = (OSError, ValueError, SyntaxError, EOFError, InvalidDicomError,
               Image.DecompressionBombError)


@dataclass(frozen=True)
class Sample:
    """One image x one finding question."""

    sample_id: str    # f"{image_id}/{finding}"
    image_id: str     # MIMIC dicom_id / PadChest ImageID without ".png"
    image_path: str   # absolute path
    finding: str      # canonical finding name (key of FINDINGS)
    label: str        # "yes" or "no"


@dataclass(frozen=True)
class LabelPolicy:
    """How MIMIC CheXpert labels other than 1.0 / 0.0 become answers.

    ``uncertain`` applies to -1.0 ("may be present"), ``blank`` to an empty cell (not mentioned in the
    report). Each is ``"skip"`` (drop the sample and count it), ``"yes"`` or ``"no"``.
    """

    uncertain: str = "skip"
    blank: str = "no"

    def __post_init__(self):
        for name in ("uncertain", "blank"):
            if getattr(self, name) not in LABEL_CHOICES:
                raise ValueError(f"LabelPolicy.{name} must be one of {LABEL_CHOICES}, "
                                 f"got {getattr(self, name)!r}")


def split_of_patient(patient_id: str) -> str:
    """PadChest split of a patient: ``"test"`` if md5(PatientID) as an integer is 0 mod 5, else ``"train"``.

    PadChest publishes no official split; hashing the patient (not the image) gives a fixed ~20 %
    test split that never puts one patient's images on both sides.
    """
    return "test" if int(hashlib.md5(str(patient_id).encode()).hexdigest(), 16) % 5 == 0 else "train"


def iter_samples(dataset: str, data_root, findings=tuple(FINDINGS), split: str = "test",
                 label_policy: LabelPolicy = LabelPolicy(),
                 skipped: collections.Counter | None = None) -> Iterator[Sample]:
    """Stream the samples of one dataset split: images in the order of the official file (MIMIC: the
    metadata file), each with ``findings`` in the order given, so all questions about one image come
    consecutively.

    Arguments are checked now (ValueError for an unknown dataset / finding / split,
    FileNotFoundError naming the expected path); the CSVs are read on the first ``next()``. Images
    are only checked for existence, never opened. Dropped samples are counted in ``skipped``.
    """
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; valid datasets: {DATASETS}")
    findings = tuple(findings)
    unknown = [f for f in findings if f not in FINDINGS]
    if unknown:
        raise ValueError(f"unknown finding(s) {unknown}; valid findings: {tuple(FINDINGS)}")
    if split not in SPLITS[dataset]:
        raise ValueError(f"unknown split {split!r} for {dataset}; valid splits: {SPLITS[dataset]}")
    root = Path(data_root).expanduser().resolve()
    if not root.is_dir():
        raise FileNotFoundError(f"{dataset} data_root {str(root)!r} does not exist")
    skipped = collections.Counter() if skipped is None else skipped
    if dataset == "mimic-cxr":
        csvs = [_find_csv(root, name) for name in (MIMIC_CHEXPERT, MIMIC_METADATA, MIMIC_SPLIT)]
        return _iter_mimic(root, *csvs, findings, split, label_policy, skipped)
    return _iter_padchest(root, _find_csv(root, PADCHEST_CSV), findings, split, skipped)


def _find_csv(root: Path, name: str) -> Path:
    """The path of official CSV ``name`` under ``root``, gzipped or plain."""
    for candidate in (root / f"{name}.gz", root / name):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"expected {str(root / name)!r}[.gz] (official file name) in {str(root)!r}")


def _iter_mimic(root, chexpert_csv, metadata_csv, split_csv, findings, split, policy, skipped):
    """MIMIC-CXR-JPG samples: frontal images of ``split`` joined with their study's CheXpert row."""
    meta = pd.read_csv(metadata_csv, usecols=["dicom_id", "subject_id", "study_id", "ViewPosition"],
                       dtype={"dicom_id": str})
    splits = pd.read_csv(split_csv, usecols=["dicom_id", "split"], dtype={"dicom_id": str})
    columns = [FINDINGS[f]["mimic-cxr"] for f in findings]
    labels = pd.read_csv(chexpert_csv, usecols=["subject_id", "study_id", *columns])
    meta = meta[meta["ViewPosition"].isin(MIMIC_FRONTAL)]
    meta = meta.merge(splits[splits["split"] == split], on="dicom_id")
    table = meta.merge(labels, on=["subject_id", "study_id"], how="left", indicator=True)
    rows = zip(table["dicom_id"], table["subject_id"], table["study_id"], table["_merge"],
               table[columns].to_numpy(dtype=float))
    for dicom_id, subject_id, study_id, merged, values in rows:
        subject = str(subject_id)
        path = root / "files" / f"p{subject[:2]}" / f"p{subject}" / f"s{study_id}" / f"{dicom_id}.jpg"
        if not path.is_file():
            skipped["image_missing"] += len(findings)
            continue
        if merged != "both":
            skipped["label_missing"] += len(findings)
            continue
        for finding, value in zip(findings, values):
            label = _chexpert_label(value, policy, skipped)
            if label is not None:
                yield _sample(dicom_id, path, finding, label)


def _chexpert_label(value: float, policy: LabelPolicy, skipped: collections.Counter) -> str | None:
    """Answer for one CheXpert cell: 1.0 yes, 0.0 no, -1.0 / blank per ``policy`` (None = skipped)."""
    if value == 1.0:
        return "yes"
    if value == 0.0:
        return "no"
    if np.isnan(value):
        answer, reason = policy.blank, "label_blank"
    elif value == -1.0:
        answer, reason = policy.uncertain, "label_uncertain"
    else:
        raise ValueError(f"unexpected CheXpert label value {value!r}")
    if answer == "skip":
        skipped[reason] += 1
        return None
    return answer


def _iter_padchest(root, csv, findings, split, skipped):
    """PadChest samples: frontal images of patients hashed into ``split``, labelled from ``Labels``."""
    table = pd.read_csv(csv, usecols=["ImageID", "ImageDir", "PatientID", "Projection", "Labels"],
                        dtype=str)
    table = table[table["Projection"].isin(PADCHEST_FRONTAL)]
    table = table[table["PatientID"].map(split_of_patient) == split]
    for image_id, image_dir, labels in zip(table["ImageID"], table["ImageDir"], table["Labels"]):
        path = root / str(image_dir) / str(image_id)
        if not path.is_file():
            skipped["image_missing"] += len(findings)
            continue
        present = parse_padchest_labels(labels)
        if present is None:
            skipped["label_unparseable"] += len(findings)
            continue
        if PADCHEST_EXCLUDE in present:
            skipped["label_excluded"] += len(findings)
            continue
        for finding in findings:
            label = "yes" if FINDINGS[finding]["padchest"] in present else "no"
            yield _sample(Path(image_id).stem, path, finding, label)


def parse_padchest_labels(text) -> frozenset[str] | None:
    """The set of labels in a PadChest ``Labels`` cell such as ``"['normal', ' cardiomegaly', '']"``.

    Entries are stripped and lower-cased, empty ones dropped. A finding is positive iff its label is
    in the set, so ``['normal']`` makes every finding negative. Returns None when the cell is not a
    list of strings (NaN, malformed) or holds no label at all.
    """
    try:
        parsed = ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return None
    if not isinstance(parsed, (list, tuple)) or not all(isinstance(x, str) for x in parsed):
        return None
    labels = frozenset(x.strip().lower() for x in parsed) - {""}
    return labels or None


def _sample(image_id: str, path: Path, finding: str, label: str) -> Sample:
    return Sample(sample_id=f"{image_id}/{finding}", image_id=image_id, image_path=str(path),
                  finding=finding, label=label)


def read_xray(path) -> Image.Image:
    """Read a radiograph as an 8-bit grayscale ("L") image, bright = dense.

    * 8-bit JPEG/PNG: as stored (colour converted to luminance).
    * 16-bit PNG (mode I;16 / I): the actual stored min..max mapped linearly onto 0..255 (PadChest uses
      12 of the 16 bits, with a different range per image).
    * DICOM: modality LUT, then the VOI LUT / window when the file has one, then min..max onto
      0..255; MONOCHROME1 is inverted so bone is bright.
    """
    path = Path(path)
    if path.suffix.lower() == ".dcm":
        return _read_dicom(path)
    with Image.open(path) as image:
        image.load()
        if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
            return _to_image(_scale01(np.asarray(image, dtype=np.float64)))
        return image.convert("L")


def _read_dicom(path: Path) -> Image.Image:
    ds = pydicom.dcmread(path)
    if "PixelData" not in ds:
        raise ValueError(f"DICOM file {path} has no pixel data")
    pixels = apply_modality_lut(ds.pixel_array, ds)
    if pixels.ndim != 2:
        raise ValueError(f"DICOM file {path} is not a single grayscale frame: shape {pixels.shape}")
    if "VOILUTSequence" in ds or ("WindowCenter" in ds and "WindowWidth" in ds):
        pixels = apply_voi_lut(pixels, ds)
    scaled = _scale01(pixels.astype(np.float64))
    if ds.get("PhotometricInterpretation") == "MONOCHROME1":
        scaled = 1.0 - scaled
    return _to_image(scaled)


def _scale01(values: np.ndarray) -> np.ndarray:
    """Map the array's min..max linearly onto 0..1 (a constant image becomes 0)."""
    lo, hi = float(values.min()), float(values.max())
    return (values - lo) / (hi - lo) if hi > lo else np.zeros_like(values)


def _to_image(scaled: np.ndarray) -> Image.Image:
    """An "L" image from values in 0..1."""
    return Image.fromarray(np.round(scaled * 255).astype(np.uint8))


def load_image(sample: Sample, skipped: collections.Counter | None = None) -> Image.Image | None:
    """The sample's radiograph as an "L" image, or None (counted in ``skipped``) when the file is
    missing (``image_missing``) or cannot be decoded (``image_unreadable``). Never raises for a bad
    file."""
    skipped = collections.Counter() if skipped is None else skipped
    try:
        return read_xray(sample.image_path)
    except FileNotFoundError:
        skipped["image_missing"] += 1
    except READ_ERRORS:
        skipped["image_unreadable"] += 1
    return None
