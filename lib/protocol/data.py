"""Readers of the official chest X-ray dataset layouts; they yield samples and know nothing of models.

Owns: reading the official label files into samples (image x finding, ``label`` ``"yes"``/``"no"``)
under a ``LabelPolicy``, checking a data root's layout without reading images (``check_layout``),
counting and listing what is skipped (``Skips``) and decoding radiographs (``read_xray``,
``load_image``). Which dataset labels imply a finding is data in ``lib.protocol.labels``.
Two layouts are read exactly as published:

* MIMIC-CXR-JPG 2.0.0: ``files/p10/p10000032/s50414267/<dicom_id>.jpg`` plus
  ``mimic-cxr-2.0.0-{chexpert|negbio,metadata,split}.csv.gz`` (or plain ``.csv``) at the root.
* PadChest: ``PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv`` (or ``.csv.gz``) at the root,
  16-bit PNGs at ``<root>/<ImageDir>/<ImageID>``.

Only frontal views are samples (MIMIC ``ViewPosition`` PA/AP; PadChest ``Projection`` PA, AP,
AP_horizontal). Skipped counts count *samples* (image x finding), by reason (``SKIP_REASONS``), in
this order of checks:

* PadChest filters: ``method_excluded`` (``MethodLabel`` not the chosen ``padchest_method``),
  ``age_unknown`` / ``age_below_min`` (with ``padchest_min_age`` set);
* ``image_missing``;
* labels: ``label_missing`` (MIMIC study without a label row), ``label_uncertain`` / ``label_blank``
  (MIMIC -1.0 / empty cell under a ``"skip"`` policy), ``label_invalid`` (MIMIC cell not 1, 0, -1
  or blank, e.g. 2.0), ``label_unparseable`` (PadChest ``Labels`` cell not a non-empty list of
  strings), ``label_excluded`` (PadChest ``exclude``), ``label_unchanged_only`` /
  ``label_suboptimal_only`` (PadChest labels that are only ``unchanged`` / ``suboptimal study``);
* at load time: ``image_unreadable``, ``image_too_small`` (shorter side < ``MIN_IMAGE_SIDE``),
  ``image_too_large`` (width x height, read from the file's header before any pixel is decoded,
  above the params' ``max_image_pixels``, default ``MAX_IMAGE_PIXELS``), ``image_non_finite`` (a
  float image with a NaN or infinite pixel, which min..max scaling would turn into a black image).
"""

from __future__ import annotations

import ast
import collections
import hashlib
import warnings
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd
import pydicom
from PIL import Image
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_modality_lut, apply_voi_lut

from . import labels as label_data
from .labels import PADCHEST_EXCLUDE, PADCHEST_METHODS, PADCHEST_SUBOPTIMAL, PADCHEST_UNCHANGED

DATASETS = ("mimic-cxr", "padchest")

# The findings of the offline default (its synthetic images show these four): canonical name ->
# the one label each dataset uses for it (the head of its entry in the full mapping,
# ``lib.protocol.labels.FINDING_LABELS``: 13 findings, PadChest hierarchy).
DEFAULT_FINDINGS = ("cardiomegaly", "pleural effusion", "pneumothorax", "nodule")
FINDINGS = {f: {"mimic-cxr": label_data.FINDING_LABELS[f]["mimic-cxr"],
                "padchest": label_data.FINDING_LABELS[f]["padchest"][0]} for f in DEFAULT_FINDINGS}

SPLITS = {"mimic-cxr": ("train", "validate", "test"), "padchest": ("train", "test")}

MIMIC_CHEXPERT = "mimic-cxr-2.0.0-chexpert.csv"
MIMIC_NEGBIO = "mimic-cxr-2.0.0-negbio.csv"
MIMIC_LABEL_FILES = {"chexpert": MIMIC_CHEXPERT, "negbio": MIMIC_NEGBIO}
MIMIC_METADATA = "mimic-cxr-2.0.0-metadata.csv"
MIMIC_SPLIT = "mimic-cxr-2.0.0-split.csv"
MIMIC_FRONTAL = ("PA", "AP")
MIMIC_VALUES = (1.0, 0.0, -1.0)  # and blank; anything else is label_invalid
PADCHEST_CSV = "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv"
PADCHEST_FRONTAL = ("PA", "AP", "AP_horizontal")

# Columns each official file must have (label columns of the asked findings come on top).
REQUIRED_COLUMNS = {
    MIMIC_METADATA: ("dicom_id", "subject_id", "study_id", "ViewPosition"),
    MIMIC_SPLIT: ("dicom_id", "split"),
    "mimic-labels": ("subject_id", "study_id"),
    PADCHEST_CSV: ("ImageID", "ImageDir", "PatientID", "Projection", "Labels"),
}

# An image whose shorter side is below this many pixels is skipped (image_too_small): vision
# towers upsample it to 224-896 px, so it carries no usable detail (a 1x1 image scored as normal).
MIN_IMAGE_SIDE = 32
# An image with more pixels than this is skipped (image_too_large) before it is decoded: a 179 KB
# PNG can declare 9600 x 9600 16-bit pixels (gigabytes once decoded and scaled). 40 M pixels is
# above every radiograph of MIMIC-CXR and PadChest (at most about 4300 x 4300) and decodes in
# well under 2 GB.
MAX_IMAGE_PIXELS = 40_000_000

SKIP_REASONS = ("method_excluded", "age_unknown", "age_below_min", "image_missing",
                "label_missing", "label_uncertain", "label_blank", "label_invalid",
                "label_unparseable", "label_excluded", "label_unchanged_only",
                "label_suboptimal_only", "image_unreadable", "image_too_small", "image_too_large",
                "image_non_finite")

LABEL_CHOICES = ("skip", "yes", "no")
NO_INFO_CHOICES = ("skip", "no")
METHOD_CHOICES = ("all", "physician", "rnn")

# What a damaged or non-image file raises while being decoded (FileNotFoundError is handled first).
READ_ERRORS = (OSError, ValueError, SyntaxError, EOFError, InvalidDicomError,
               Image.DecompressionBombError)


class ImageTooLarge(ValueError):
    """An image file whose header declares more pixels than allowed (nothing decoded)."""


class NonFinitePixels(ValueError):
    """An image with a NaN or infinite pixel value."""


class DataLayoutError(ValueError):
    """A data root that does not have the official layout; the one-line message names the file and
    the missing column (or what is allowed)."""


class MissingFileError(DataLayoutError, FileNotFoundError):
    """An official file or the data root itself is absent (also a FileNotFoundError)."""


class Skips(collections.Counter):
    """Skipped samples: counts by reason (a Counter) plus ``rows``, one dict per skipped item:
    {"item", "reason", "detail", "n"} where item is a sample_id, an image id (n = its samples) or
    ``"<file>:<row>"`` (1-based data row of an official file) for a bad label cell."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.rows: list[dict] = []

    def add(self, reason: str, item: str, detail: str = "", n: int = 1) -> None:
        self[reason] += n
        self.rows.append({"item": str(item), "reason": reason, "detail": detail, "n": n})

    def table(self) -> pd.DataFrame:
        """The rows as a DataFrame (columns item, reason, detail, n), e.g. for skipped.csv."""
        return pd.DataFrame(self.rows, columns=["item", "reason", "detail", "n"])


def _skip(skipped, reason: str, item, n: int = 1, detail: str = "") -> None:
    """Count a skip in a Skips (listing it) or in a plain Counter."""
    if isinstance(skipped, Skips):
        skipped.add(reason, item, detail, n)
    else:
        skipped[reason] += n


@dataclass(frozen=True)
class Sample:
    """One image x one finding question."""

    sample_id: str    # f"{image_id}/{finding}"
    image_id: str     # MIMIC dicom_id / PadChest ImageID without ".png"
    image_path: str   # absolute path
    finding: str      # canonical finding name (key of labels.FINDING_LABELS)
    label: str        # "yes" or "no"
    patient_id: str | None = None  # MIMIC subject_id / PadChest PatientID (references never share it)
    study_id: str | None = None    # MIMIC study_id / PadChest StudyID
    study_date: str | None = None  # "YYYYMMDD": MIMIC StudyDate / PadChest StudyDate_DICOM
    boxes: tuple | None = None     # the finding's marked boxes, (x0, y0, x1, y1) fractions of the image


@dataclass(frozen=True)
class LabelPolicy:
    """How dataset labels become answers, and which labelled images are samples.

    MIMIC: ``uncertain`` applies to -1.0 ("may be present"), ``blank`` to an empty cell (not
    mentioned in the report); each is ``"skip"`` (drop the sample, count it), ``"yes"`` or ``"no"``.
    ``mimic_label_file``: ``"chexpert"`` or ``"negbio"`` (the two label files MIMIC-CXR-JPG ships,
    same layout).

    PadChest: ``padchest_method`` keeps ``"all"`` images, or only those labelled by a
    ``"physician"`` or by the authors' ``"rnn"`` (column MethodLabel = Physician / RNN_model).
    ``padchest_min_age`` (None = no floor) drops images of patients younger than that many years
    (age = StudyDate_DICOM year - PatientBirth year; unknown age is dropped too).
    ``padchest_unchanged`` / ``padchest_suboptimal`` apply to images whose only label is
    ``unchanged`` / ``suboptimal study``, ``padchest_exclude`` to images labelled ``exclude``: each
    ``"skip"`` (counted by reason) or ``"no"`` (the label is ignored: the image's other labels
    decide, every finding not among them is negative).

    ``label_map`` ({finding: {"mimic-cxr": column, "padchest": [labels]}}) is laid over
    ``lib.protocol.labels.FINDING_LABELS`` and may add findings.
    """

    uncertain: str = "skip"
    blank: str = "no"
    mimic_label_file: str = "chexpert"
    padchest_method: str = "all"
    padchest_min_age: int | None = None
    padchest_unchanged: str = "skip"
    padchest_suboptimal: str = "skip"
    padchest_exclude: str = "skip"
    label_map: dict | None = None

    def __post_init__(self):
        choices = {"uncertain": LABEL_CHOICES, "blank": LABEL_CHOICES,
                   "mimic_label_file": tuple(MIMIC_LABEL_FILES), "padchest_method": METHOD_CHOICES,
                   "padchest_unchanged": NO_INFO_CHOICES, "padchest_suboptimal": NO_INFO_CHOICES,
                   "padchest_exclude": NO_INFO_CHOICES}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"label_policy.{name} must be one of {allowed}, "
                                 f"got {getattr(self, name)!r}")
        age = self.padchest_min_age
        if age is not None and (isinstance(age, bool) or not isinstance(age, int) or age < 0):
            raise ValueError(f"label_policy.padchest_min_age must be a non-negative integer or "
                             f"null, got {age!r}")
        object.__setattr__(self, "label_map", _checked_label_map(self.label_map))

    @classmethod
    def from_dict(cls, d) -> "LabelPolicy":
        """A policy from a params ``label_policy`` dict (None = defaults); a one-line ValueError
        names an unknown key (with the allowed keys) or a bad value (with the allowed values)."""
        if d is None:
            return cls()
        if not isinstance(d, dict):
            raise ValueError(f"label_policy must be a mapping of {', '.join(cls.keys())}, "
                             f"got {d!r}")
        unknown = [k for k in d if k not in cls.keys()]
        if unknown:
            raise ValueError(f"label_policy: unknown key {unknown[0]!r} "
                             f"(allowed keys: {', '.join(cls.keys())})")
        return cls(**d)

    @classmethod
    def keys(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    def as_dict(self) -> dict:
        return asdict(self)

    def finding_labels(self) -> dict[str, dict]:
        """The finding -> dataset-label mapping in force (built-in, then ``label_map``)."""
        return label_data.merged_map(self.label_map)


def _checked_label_map(label_map) -> dict | None:
    """``label_map`` normalised (finding keys lower-case), or a one-line ValueError."""
    if label_map is None:
        return None
    where = "label_policy.label_map"
    if not isinstance(label_map, dict):
        raise ValueError(f"{where} must map findings to {{dataset: labels}}, got {label_map!r}")
    out = {}
    for finding, entry in label_map.items():
        if not isinstance(finding, str) or not finding.strip():
            raise ValueError(f"{where}: finding names must be non-empty strings, got {finding!r}")
        if not isinstance(entry, dict) or not entry:
            raise ValueError(f"{where}[{finding!r}] must map datasets {DATASETS} to labels, "
                             f"got {entry!r}")
        for dataset, value in entry.items():
            if dataset not in DATASETS:
                raise ValueError(f"{where}[{finding!r}]: unknown dataset {dataset!r} "
                                 f"(allowed: {', '.join(DATASETS)})")
            if value is None:
                continue
            if dataset == "mimic-cxr" and not (isinstance(value, str) and value.strip()):
                raise ValueError(f"{where}[{finding!r}]['mimic-cxr'] must be a column name, "
                                 f"got {value!r}")
            if dataset == "padchest" and (
                    not isinstance(value, (list, tuple)) or not value
                    or not all(isinstance(x, str) and x.strip() for x in value)):
                raise ValueError(f"{where}[{finding!r}]['padchest'] must be a non-empty list of "
                                 f"label strings, got {value!r}")
        out[finding.strip().lower()] = {k: (list(v) if isinstance(v, tuple) else v)
                                        for k, v in entry.items()}
    return out


def split_of_patient(patient_id: str) -> str:
    """PadChest split of a patient: ``"test"`` if md5(PatientID) as an integer is 0 mod 5, else ``"train"``.

    PadChest publishes no official split; hashing the patient (not the image) gives a fixed ~20 %
    test split that never puts one patient's images on both sides.
    """
    return "test" if int(hashlib.md5(str(patient_id).encode()).hexdigest(), 16) % 5 == 0 else "train"


def _check_arguments(dataset, findings, split, policy: LabelPolicy) -> tuple[str, ...]:
    """Findings as a tuple, after checking dataset, findings (known, labelled in the dataset)
    and split (None = every split)."""
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; valid datasets: {DATASETS}")
    if isinstance(findings, str):
        raise ValueError(f"findings must be a list of finding names, got the string {findings!r}")
    findings = tuple(findings)
    mapping = policy.finding_labels()
    unknown = [f for f in findings if f not in mapping]
    if unknown:
        raise ValueError(f"unknown finding(s) {unknown}; valid findings: {tuple(mapping)}")
    unlabelled = [f for f in findings if not mapping[f].get(dataset)]
    if unlabelled:
        raise ValueError(f"finding(s) {unlabelled} have no {dataset} labels; findings of "
                         f"{dataset}: {label_data.findings_of(dataset, policy.label_map)}")
    if split is not None and split not in SPLITS[dataset]:
        raise ValueError(f"unknown split {split!r} for {dataset}; valid splits: {SPLITS[dataset]}")
    return findings


def check_layout(dataset: str, data_root, policy: LabelPolicy = LabelPolicy(),
                 findings=DEFAULT_FINDINGS) -> dict[str, Path]:
    """Check a data root without reading images or loading a model: the official files the
    reader needs exist and have the columns it reads (label columns of ``findings``, and the
    PadChest columns that ``policy``'s filters read). Returns {role: path} of the files
    ("labels", "metadata", "split" for MIMIC; "labels" for PadChest).

    Raises ValueError for a bad dataset / finding, ``MissingFileError`` (a DataLayoutError and a
    FileNotFoundError) for an absent root or file, ``DataLayoutError`` for a missing column or a
    file that is not a CSV; each message is one line naming the file.
    """
    findings = _check_arguments(dataset, findings, None, policy)
    root = Path(data_root).expanduser().resolve()
    if not root.is_dir():
        raise MissingFileError(f"{dataset} data_root {str(root)!r} does not exist")
    mapping = policy.finding_labels()
    if dataset == "mimic-cxr":
        name = MIMIC_LABEL_FILES[policy.mimic_label_file]
        files = {"labels": _find_csv(root, name), "metadata": _find_csv(root, MIMIC_METADATA),
                 "split": _find_csv(root, MIMIC_SPLIT)}
        needs = {"labels": (*REQUIRED_COLUMNS["mimic-labels"],
                            *dict.fromkeys(mapping[f]["mimic-cxr"] for f in findings)),
                 "metadata": REQUIRED_COLUMNS[MIMIC_METADATA],
                 "split": REQUIRED_COLUMNS[MIMIC_SPLIT]}
    else:
        files = {"labels": _find_csv(root, PADCHEST_CSV)}
        needs = {"labels": _padchest_columns(policy)}
    for role, path in files.items():
        _check_columns(path, needs[role])
    return files


def _padchest_columns(policy: LabelPolicy) -> tuple[str, ...]:
    columns = list(REQUIRED_COLUMNS[PADCHEST_CSV])
    if policy.padchest_method != "all":
        columns.append("MethodLabel")
    if policy.padchest_min_age is not None:
        columns += ["StudyDate_DICOM", "PatientBirth"]
    return tuple(columns)


def _check_columns(path: Path, required) -> None:
    """Read only the header of ``path``; a missing column or an unreadable CSV is a DataLayoutError."""
    try:
        header = pd.read_csv(path, nrows=0).columns
    except (ValueError, UnicodeDecodeError, OSError, EOFError) as err:
        raise DataLayoutError(f"{path}: not a readable CSV file "
                              f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})"
                              ) from None
    missing = [c for c in required if c not in header]
    if missing:
        hint = ""
        if path.name.startswith(PADCHEST_CSV) and set(missing) & {"MethodLabel", "StudyDate_DICOM",
                                                                   "PatientBirth"}:
            hint = " (read because of label_policy padchest_method / padchest_min_age)"
        raise DataLayoutError(f"{path}: missing column(s) {missing}{hint}; required: "
                              f"{', '.join(dict.fromkeys(required))}")


def iter_samples(dataset: str, data_root, findings=DEFAULT_FINDINGS, split: str = "test",
                 label_policy: LabelPolicy = LabelPolicy(),
                 skipped: collections.Counter | None = None) -> Iterator[Sample]:
    """Stream the samples of one dataset split: images in the order of the official file (MIMIC: the
    metadata file), each with ``findings`` in the order given, so all questions about one image come
    consecutively.

    Arguments and the layout are checked now (``check_layout``: ValueError for an unknown dataset /
    finding / split, MissingFileError (a FileNotFoundError) naming the expected path,
    DataLayoutError for a missing column); the CSVs are read on the first ``next()``. Images are
    only checked for existence, never opened. Dropped samples are counted in ``skipped`` (a
    ``Skips`` also lists them).
    """
    findings = _check_arguments(dataset, findings, split, label_policy)
    files = check_layout(dataset, data_root, label_policy, findings)
    return _iter(dataset, files, findings, split, label_policy, skipped, check_images=True)


def iter_labels(dataset: str, data_root, findings=DEFAULT_FINDINGS, split: str | None = None,
                label_policy: LabelPolicy = LabelPolicy(),
                skipped: collections.Counter | None = None) -> Iterator[Sample]:
    """As ``iter_samples`` but without looking for image files (no ``image_missing``) and over
    every split for ``split=None``: the labels the official files give, e.g. to count them."""
    findings = _check_arguments(dataset, findings, split, label_policy)
    files = check_layout(dataset, data_root, label_policy, findings)
    return _iter(dataset, files, findings, split, label_policy, skipped, check_images=False)


def _iter(dataset, files, findings, split, policy, skipped, check_images):
    skipped = collections.Counter() if skipped is None else skipped
    root = files["labels"].parent
    if dataset == "mimic-cxr":
        return _iter_mimic(root, files, findings, split, policy, skipped, check_images)
    return _iter_padchest(root, files["labels"], findings, split, policy, skipped, check_images)


def _find_csv(root: Path, name: str) -> Path:
    """The path of official CSV ``name`` under ``root``, gzipped or plain."""
    for candidate in (root / f"{name}.gz", root / name):
        if candidate.is_file():
            return candidate
    raise MissingFileError(f"expected {str(root / name)!r}[.gz] (official file name) in {str(root)!r}")


def check_rows(dataset: str, data_root, policy: LabelPolicy = LabelPolicy(),
                findings=DEFAULT_FINDINGS) -> None:
    """Read the official files as the reader does (``check_layout`` first): a DataLayoutError
    names the file and the id of rows repeated with different values (``_unique_rows``)."""
    files = check_layout(dataset, data_root, policy, findings)
    if dataset == "mimic-cxr":
        _mimic_tables(files, tuple(findings), policy)
    else:
        _padchest_table(files["labels"], policy)


def _read_numbered(path: Path, columns, dtype) -> pd.DataFrame:
    """Columns of an official CSV, indexed by 1-based data row."""
    table = pd.read_csv(path, usecols=list(columns), dtype=dtype)
    table.index = np.arange(1, len(table) + 1)
    return table


def _unique_rows(table: pd.DataFrame, key: list[str], path: Path) -> pd.DataFrame:
    """``table`` with one row per ``key``: a row repeated with the same values is kept once;
    repeated with different values, it is a DataLayoutError naming the file, the id, both rows
    (1-based) and the column (which row holds the truth is the user's call, not the reader's)."""
    repeated = table[table.duplicated(key, keep=False)]
    if repeated.empty:
        return table
    values = [c for c in table.columns if c not in key]
    counts = repeated.groupby(key, sort=False, dropna=False)[values].nunique(dropna=False)
    conflicts = counts[(counts > 1).any(axis=1)]
    if len(conflicts):
        ids = conflicts.index[0] if len(key) > 1 else (conflicts.index[0],)
        column = conflicts.columns[(conflicts.iloc[0] > 1).to_numpy()][0]
        rows = repeated[(repeated[key] == pd.Series(ids, index=key)).all(axis=1)][column]
        first = rows.iloc[0]
        other = rows[rows.astype(str) != str(first)]
        where = ", ".join(f"{k} {v}" for k, v in zip(key, ids))
        raise DataLayoutError(f"{path}: rows {rows.index[0]} and {other.index[0]} are both {where} "
                              f"but disagree on {column} ({first!r} vs {other.iloc[0]!r}); "
                              f"keep one of them")
    return table.drop_duplicates(key)


def _mimic_tables(files: dict, findings: tuple, policy: LabelPolicy):
    """(metadata, split, labels) tables of MIMIC-CXR-JPG, one row per dicom_id / study."""
    meta = _unique_rows(_read_numbered(files["metadata"], REQUIRED_COLUMNS[MIMIC_METADATA],
                                       {"dicom_id": str}), ["dicom_id"], files["metadata"])
    splits = _unique_rows(_read_numbered(files["split"], ["dicom_id", "split"], {"dicom_id": str}),
                          ["dicom_id"], files["split"])
    unique = list(dict.fromkeys(policy.finding_labels()[f]["mimic-cxr"] for f in findings))
    labels = _unique_rows(_read_numbered(files["labels"], ["subject_id", "study_id", *unique],
                                         {c: str for c in unique}),
                          ["subject_id", "study_id"], files["labels"])
    return meta, splits, labels


def _iter_mimic(root, files, findings, split, policy, skipped, check_images):
    """MIMIC-CXR-JPG samples: frontal images of ``split`` joined with their study's label row."""
    meta, splits, labels = _mimic_tables(files, findings, policy)
    columns = [policy.finding_labels()[f]["mimic-cxr"] for f in findings]
    labels["_row"] = labels.index
    meta = meta[meta["ViewPosition"].isin(MIMIC_FRONTAL)]
    if split is not None:
        splits = splits[splits["split"] == split]
    meta = meta.merge(splits[["dicom_id"]], on="dicom_id")
    table = meta.merge(labels, on=["subject_id", "study_id"], how="left", indicator=True)
    raw = table[columns].to_numpy(dtype=object)
    rows = zip(table["dicom_id"], table["subject_id"], table["study_id"], table["_merge"],
               table["_row"], raw)
    name = files["labels"].name
    for dicom_id, subject_id, study_id, merged, row_no, cells in rows:
        subject = str(subject_id)
        path = root / "files" / f"p{subject[:2]}" / f"p{subject}" / f"s{study_id}" / f"{dicom_id}.jpg"
        if check_images and not path.is_file():
            _skip(skipped, "image_missing", dicom_id, len(findings), str(path))
            continue
        if merged != "both":
            _skip(skipped, "label_missing", dicom_id, len(findings),
                  f"{name}: no row for subject {subject} study {study_id}")
            continue
        for finding, column, cell in zip(findings, columns, cells):
            label = _chexpert_label(cell, policy, skipped, f"{dicom_id}/{finding}",
                                    f"{name}:{int(row_no)}", column)
            if label is not None:
                yield _sample(dicom_id, path, finding, label, subject)


def _chexpert_label(cell, policy: LabelPolicy, skipped, sample_id: str, where: str,
                    column: str) -> str | None:
    """Answer for one CheXpert/NegBio cell: 1.0 yes, 0.0 no, -1.0 / blank per ``policy``; None when
    skipped (``label_uncertain``, ``label_blank``, or ``label_invalid`` for any other value)."""
    if cell is None or (isinstance(cell, float) and np.isnan(cell)) or not str(cell).strip():
        answer, reason = policy.blank, "label_blank"
    else:
        try:
            value = float(cell)
        except ValueError:
            value = None
        if value == 1.0:
            return "yes"
        if value == 0.0:
            return "no"
        if value != -1.0:
            _skip(skipped, "label_invalid", where,
                  detail=f"{sample_id}: {column} = {cell!r} (allowed: 1.0, 0.0, -1.0, blank)")
            return None
        answer, reason = policy.uncertain, "label_uncertain"
    if answer == "skip":
        _skip(skipped, reason, sample_id)
        return None
    return answer


def _age(study_date, birth) -> int | None:
    """Whole years between the birth year (PatientBirth, e.g. "1930.0") and the study year
    (StudyDate_DICOM, YYYYMMDD); None when either is missing or unparseable."""
    try:
        return int(str(study_date).strip()[:4]) - int(float(birth))
    except (TypeError, ValueError, OverflowError):
        return None


def _iter_padchest(root, csv, findings, split, policy, skipped, check_images):
    """PadChest samples: frontal images of patients hashed into ``split`` (None = all), filtered by
    ``policy`` and labelled through the label hierarchy (``policy.finding_labels()``)."""
    mapping = policy.finding_labels()
    implied = [frozenset(mapping[f]["padchest"]) for f in findings]
    table = _padchest_table(csv, policy)
    table = table[table["Projection"].isin(PADCHEST_FRONTAL)]
    if split is not None:
        table = table[table["PatientID"].map(split_of_patient) == split]
    method = PADCHEST_METHODS.get(policy.padchest_method)
    n, name = len(findings), csv.name
    for row_no, row in zip(table.index, table.itertuples(index=False)):
        image_id = Path(str(row.ImageID)).stem
        if method is not None and row.MethodLabel != method:
            _skip(skipped, "method_excluded", image_id, n, f"MethodLabel = {row.MethodLabel}")
            continue
        if policy.padchest_min_age is not None:
            age = _age(row.StudyDate_DICOM, row.PatientBirth)
            if age is None:
                _skip(skipped, "age_unknown", image_id, n,
                      f"StudyDate_DICOM = {row.StudyDate_DICOM}, PatientBirth = {row.PatientBirth}")
                continue
            if age < policy.padchest_min_age:
                _skip(skipped, "age_below_min", image_id, n, f"age {age}")
                continue
        path = root / str(row.ImageDir) / str(row.ImageID)
        if check_images and not path.is_file():
            _skip(skipped, "image_missing", image_id, n, str(path))
            continue
        present = parse_padchest_labels(row.Labels)
        if present is None:
            _skip(skipped, "label_unparseable", f"{name}:{row_no}", n,
                  f"{image_id}: Labels = {str(row.Labels)[:80]!r}")
            continue
        reason = _no_info_reason(present, policy)
        if reason is not None:
            _skip(skipped, reason, image_id, n, f"Labels = {sorted(present)}")
            continue
        for finding, labels in zip(findings, implied):
            yield _sample(image_id, path, finding, "yes" if present & labels else "no", str(row.PatientID))


def _padchest_table(csv: Path, policy: LabelPolicy) -> pd.DataFrame:
    """The PadChest columns ``policy`` reads, one row per ImageID, indexed by 1-based data row."""
    return _unique_rows(_read_numbered(csv, _padchest_columns(policy), str), ["ImageID"], csv)


def _no_info_reason(present: frozenset, policy: LabelPolicy) -> str | None:
    """The skip reason for labels that say nothing about findings under ``policy``, else None.

    ``exclude`` anywhere -> ``padchest_exclude``; labels only ``unchanged`` (possibly with
    ``suboptimal study``) -> ``padchest_unchanged`` first, then ``padchest_suboptimal``; only
    ``suboptimal study`` -> ``padchest_suboptimal``.
    """
    if PADCHEST_EXCLUDE in present:
        return "label_excluded" if policy.padchest_exclude == "skip" else None
    if present <= label_data.NO_INFO_LABELS:
        if PADCHEST_UNCHANGED in present and policy.padchest_unchanged == "skip":
            return "label_unchanged_only"
        if PADCHEST_SUBOPTIMAL in present and policy.padchest_suboptimal == "skip":
            return "label_suboptimal_only"
    return None


def parse_padchest_labels(text) -> frozenset[str] | None:
    """The set of labels in a PadChest ``Labels`` cell such as ``"['normal', ' cardiomegaly', '']"``.

    Entries are stripped and lower-cased, empty ones dropped. A finding is positive iff one of its
    labels (``lib.protocol.labels``) is in the set, so ``['normal']`` makes every finding negative.
    Returns None when the cell is not a list of strings (NaN, malformed) or holds no label at all.
    """
    if not isinstance(text, str):
        return None
    try:
        parsed = ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return None
    if not isinstance(parsed, (list, tuple)) or not all(isinstance(x, str) for x in parsed):
        return None
    labels = frozenset(x.strip().lower() for x in parsed) - {""}
    return labels or None


def _sample(image_id: str, path: Path, finding: str, label: str, patient_id: str) -> Sample:
    return Sample(sample_id=f"{image_id}/{finding}", image_id=image_id, image_path=str(path),
                  finding=finding, label=label, patient_id=patient_id)


def read_xray(path, max_pixels: int = MAX_IMAGE_PIXELS) -> Image.Image:
    """Read a radiograph as an 8-bit grayscale ("L") image, bright = dense.

    Raises ImageTooLarge, before decoding, when the header declares more than ``max_pixels``
    pixels, and NonFinitePixels for a float image with a NaN or infinite value.

    * 8-bit JPEG/PNG: as stored (colour converted to luminance).
    * 16-bit PNG (mode I;16 / I): the actual stored min..max mapped linearly onto 0..255 (PadChest uses
      12 of the 16 bits, with a different range per image).
    * DICOM: modality LUT, then the VOI LUT / window when the file has one, then min..max onto
      0..255; MONOCHROME1 is inverted so bone is bright.
    """
    path = Path(path)
    if path.suffix.lower() == ".dcm":
        return _read_dicom(path, max_pixels)
    try:
        with warnings.catch_warnings():  # Pillow warns above its own cap; ours is checked below
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            opened = Image.open(path)
    except Image.DecompressionBombError as err:  # Pillow's own hard cap, far above ours
        raise ImageTooLarge(str(err)) from None
    with opened as image:
        _check_pixels(image.size[0] * image.size[1], max_pixels, f"{image.size[0]}x{image.size[1]}")
        image.load()
        if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
            return _to_image(_scale01(np.asarray(image, dtype=np.float64)))
        return image.convert("L")


def _check_pixels(n: int, max_pixels: int, size: str) -> None:
    if n > max_pixels:
        raise ImageTooLarge(f"{size} px = {n:,} pixels (max_image_pixels {max_pixels:,})")


def _read_dicom(path: Path, max_pixels: int) -> Image.Image:
    ds = pydicom.dcmread(path)
    if "PixelData" not in ds:
        raise ValueError(f"DICOM file {path} has no pixel data")
    frames = int(ds.get("NumberOfFrames") or 1)
    _check_pixels(int(ds.Rows) * int(ds.Columns) * frames, max_pixels,
                  f"{ds.Columns}x{ds.Rows}" + (f"x{frames} frames" if frames > 1 else ""))
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
    """Map the array's min..max linearly onto 0..1 (a constant image becomes 0); NonFinitePixels
    when a value is NaN or infinite."""
    finite = np.isfinite(values)
    if not finite.all():
        raise NonFinitePixels(f"{values.size - int(finite.sum()):,} of {values.size:,} pixels are NaN or infinite")
    lo, hi = float(values.min()), float(values.max())
    return (values - lo) / (hi - lo) if hi > lo else np.zeros_like(values)


def _to_image(scaled: np.ndarray) -> Image.Image:
    """An "L" image from values in 0..1."""
    return Image.fromarray(np.round(scaled * 255).astype(np.uint8))


def load_image(sample: Sample, skipped: collections.Counter | None = None,
               max_pixels: int = MAX_IMAGE_PIXELS) -> Image.Image | None:
    """The sample's radiograph as an "L" image, or None (counted in ``skipped``) when the file is
    missing (``image_missing``), declares more than ``max_pixels`` pixels (``image_too_large``),
    has a non-finite pixel (``image_non_finite``), cannot be decoded (``image_unreadable``) or its
    shorter side is below ``MIN_IMAGE_SIDE`` (``image_too_small``). Never raises for a bad file."""
    skipped = collections.Counter() if skipped is None else skipped
    try:
        image = read_xray(sample.image_path, max_pixels)
    except FileNotFoundError:
        _skip(skipped, "image_missing", sample.sample_id, detail=sample.image_path)
        return None
    except ImageTooLarge as err:
        _skip(skipped, "image_too_large", sample.sample_id, detail=f"{sample.image_path}: {err}")
        return None
    except NonFinitePixels as err:
        _skip(skipped, "image_non_finite", sample.sample_id, detail=f"{sample.image_path}: {err}")
        return None
    except READ_ERRORS as err:
        _skip(skipped, "image_unreadable", sample.sample_id,
              detail=f"{sample.image_path}: {type(err).__name__}")
        return None
    if min(image.size) < MIN_IMAGE_SIDE:
        _skip(skipped, "image_too_small", sample.sample_id,
              detail=f"{sample.image_path}: {image.size[0]}x{image.size[1]} px "
                     f"(minimum side {MIN_IMAGE_SIDE})")
        return None
    return image


# -- counterfactual twins (the offline world's ground truth) -------------------------------------

TWIN_COLUMNS = ("image_id", "finding", "twin_path")


def read_twins(path) -> dict[tuple[str, str], str]:
    """{(image_id, finding): absolute path of the twin image} from a twins CSV (columns
    image_id, finding, twin_path; twin_path relative to the CSV's folder), as written by
    lib.offline.synth for its test images. Raises DataLayoutError naming the file."""
    path = Path(path)
    try:
        table = pd.read_csv(path, dtype=str)
    except (OSError, ValueError, UnicodeDecodeError) as err:
        raise DataLayoutError(f"{path}: not a readable twins CSV ({str(err).splitlines()[0]})") from None
    missing = [c for c in TWIN_COLUMNS if c not in table.columns]
    if missing:
        raise DataLayoutError(f"{path}: missing column {missing[0]!r} (a twins CSV has {', '.join(TWIN_COLUMNS)})")
    return {(row.image_id, row.finding): str((path.parent / row.twin_path).resolve())
            for row in table.itertuples(index=False)}
