"""The PadChest reader: ``PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv`` (or ``.csv.gz``) at
the root, 16-bit PNGs at ``<root>/<ImageDir>/<ImageID>``.

Samples are the frontal images (``Projection`` PA, AP, AP_horizontal) of the patients hashed into
a split (``split_of_patient``: PadChest publishes no split), filtered by the ``LabelPolicy`` and
labelled through the PadChest label hierarchy (``lib.protocol.labels``); ``StudyID`` and
``StudyDate_DICOM`` (when the file has them) are the sample's study fields.
"""

from __future__ import annotations

import ast
import hashlib
from pathlib import Path

from . import labels as label_data
from .labels import PADCHEST_EXCLUDE, PADCHEST_METHODS, PADCHEST_SUBOPTIMAL, PADCHEST_UNCHANGED
from .policy import LabelPolicy
from .reading import Sample, cell_text, check_columns, find_csv, read_numbered, skip, unique_rows

SPLITS = ("train", "test")
PADCHEST_CSV = "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv"
PADCHEST_FRONTAL = ("PA", "AP", "AP_horizontal")
REQUIRED_COLUMNS = ("ImageID", "ImageDir", "PatientID", "Projection", "Labels")
STUDY_COLUMNS = ("StudyID", "StudyDate_DICOM")  # read when present: the sample's study fields


def split_of_patient(patient_id: str) -> str:
    """PadChest split of a patient: ``"test"`` if md5(PatientID) as an integer is 0 mod 5, else ``"train"``.

    PadChest publishes no official split; hashing the patient (not the image) gives a fixed ~20 %
    test split that never puts one patient's images on both sides.
    """
    return "test" if int(hashlib.md5(str(patient_id).encode()).hexdigest(), 16) % 5 == 0 else "train"


def check_layout(root: Path, policy: LabelPolicy, findings) -> dict[str, Path]:
    """{"labels": the official CSV}, with the columns ``policy``'s filters read."""
    path = find_csv(root, PADCHEST_CSV)
    check_columns(path, _columns(policy), dict.fromkeys(
        ("MethodLabel", "StudyDate_DICOM", "PatientBirth"),
        "read because of label_policy padchest_method / padchest_min_age"))
    return {"labels": path}


def _columns(policy: LabelPolicy) -> tuple[str, ...]:
    columns = list(REQUIRED_COLUMNS)
    if policy.padchest_method != "all":
        columns.append("MethodLabel")
    if policy.padchest_min_age is not None:
        columns += ["StudyDate_DICOM", "PatientBirth"]
    return tuple(columns)


def check_rows(files: dict, findings: tuple, policy: LabelPolicy):
    """The PadChest columns ``policy`` reads (and the study columns), one row per ImageID, indexed
    by 1-based data row."""
    csv = files["labels"]
    return unique_rows(read_numbered(csv, _columns(policy), str, optional=STUDY_COLUMNS),
                       ["ImageID"], csv)


def _age(study_date, birth) -> int | None:
    """Whole years between the birth year (PatientBirth, e.g. "1930.0") and the study year
    (StudyDate_DICOM, YYYYMMDD); None when either is missing or unparseable."""
    try:
        return int(str(study_date).strip()[:4]) - int(float(birth))
    except (TypeError, ValueError, OverflowError):
        return None


def iter_samples(root: Path, files, findings, split, policy, skipped, check_images):
    """PadChest samples: frontal images of patients hashed into ``split`` (None = all), filtered by
    ``policy`` and labelled through the label hierarchy (``policy.finding_labels()``)."""
    mapping = policy.finding_labels()
    implied = [frozenset(mapping[f]["padchest"]) for f in findings]
    table = check_rows(files, findings, policy)
    table = table[table["Projection"].isin(PADCHEST_FRONTAL)]
    if split is not None:
        table = table[table["PatientID"].map(split_of_patient) == split]
    method = PADCHEST_METHODS.get(policy.padchest_method)
    n, name = len(findings), files["labels"].name
    for row_no, row in zip(table.index, table.to_dict("records")):
        image_id = Path(str(row["ImageID"])).stem
        if method is not None and row["MethodLabel"] != method:
            skip(skipped, "method_excluded", image_id, n, f"MethodLabel = {row['MethodLabel']}")
            continue
        if policy.padchest_min_age is not None:
            age = _age(row["StudyDate_DICOM"], row["PatientBirth"])
            if age is None:
                skip(skipped, "age_unknown", image_id, n,
                     f"StudyDate_DICOM = {row['StudyDate_DICOM']}, PatientBirth = {row['PatientBirth']}")
                continue
            if age < policy.padchest_min_age:
                skip(skipped, "age_below_min", image_id, n, f"age {age}")
                continue
        path = root / str(row["ImageDir"]) / str(row["ImageID"])
        if check_images and not path.is_file():
            skip(skipped, "image_missing", image_id, n, str(path))
            continue
        present = parse_padchest_labels(row["Labels"])
        if present is None:
            skip(skipped, "label_unparseable", f"{name}:{row_no}", n,
                 f"{image_id}: Labels = {str(row['Labels'])[:80]!r}")
            continue
        reason = no_info_reason(present, policy)
        if reason is not None:
            skip(skipped, reason, image_id, n, f"Labels = {sorted(present)}")
            continue
        study = {"patient_id": str(row["PatientID"]), "study_id": cell_text(row.get("StudyID")),
                 "study_date": cell_text(row.get("StudyDate_DICOM"))}
        for finding, labels in zip(findings, implied):
            yield Sample(f"{image_id}/{finding}", image_id, str(path), finding,
                         "yes" if present & labels else "no", **study)


def no_info_reason(present: frozenset, policy: LabelPolicy) -> str | None:
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
