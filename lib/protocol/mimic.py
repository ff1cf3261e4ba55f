"""The MIMIC-CXR-JPG 2.0.0 reader: ``files/p10/p10000032/s50414267/<dicom_id>.jpg`` plus
``mimic-cxr-2.0.0-{chexpert|negbio,metadata,split}.csv.gz`` (or plain ``.csv``) at the root.

Samples are the frontal images (``ViewPosition`` PA/AP) of a split, each joined with its study's
label row (CheXpert or NegBio, ``LabelPolicy.mimic_label_file``); ``study_id`` and ``StudyDate``
(when the metadata file has it) are the sample's study fields. With an MS-CXR box file
(``lib.protocol.boxes.read_ms_cxr``) the images it lists carry their findings' boxes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .policy import MIMIC_LABEL_FILE_CHOICES, LabelPolicy
from .reading import Sample, cell_text, check_columns, find_csv, read_numbered, skip, unique_rows

SPLITS = ("train", "validate", "test")
MIMIC_CHEXPERT = "mimic-cxr-2.0.0-chexpert.csv"
MIMIC_NEGBIO = "mimic-cxr-2.0.0-negbio.csv"
MIMIC_LABEL_FILES = dict(zip(MIMIC_LABEL_FILE_CHOICES, (MIMIC_CHEXPERT, MIMIC_NEGBIO)))
MIMIC_METADATA = "mimic-cxr-2.0.0-metadata.csv"
MIMIC_SPLIT = "mimic-cxr-2.0.0-split.csv"
MIMIC_FRONTAL = ("PA", "AP")
MIMIC_VALUES = (1.0, 0.0, -1.0)  # and blank; anything else is label_invalid

# Columns each official file must have (label columns of the asked findings come on top).
REQUIRED_COLUMNS = {
    MIMIC_METADATA: ("dicom_id", "subject_id", "study_id", "ViewPosition"),
    MIMIC_SPLIT: ("dicom_id", "split"),
    "mimic-labels": ("subject_id", "study_id"),
}
STUDY_DATE = "StudyDate"  # metadata column read when present (the study's date, YYYYMMDD)


def columns_of(findings, policy: LabelPolicy) -> list[str]:
    """The CheXpert / NegBio column of each finding (in order)."""
    mapping = policy.finding_labels()
    return [mapping[f]["mimic-cxr"] for f in findings]


def check_layout(root: Path, policy: LabelPolicy, findings) -> dict[str, Path]:
    """{"labels", "metadata", "split"}: the official files, each with the columns read."""
    files = {"labels": find_csv(root, MIMIC_LABEL_FILES[policy.mimic_label_file]),
             "metadata": find_csv(root, MIMIC_METADATA), "split": find_csv(root, MIMIC_SPLIT)}
    needs = {"labels": (*REQUIRED_COLUMNS["mimic-labels"], *dict.fromkeys(columns_of(findings, policy))),
             "metadata": REQUIRED_COLUMNS[MIMIC_METADATA], "split": REQUIRED_COLUMNS[MIMIC_SPLIT]}
    for role, path in files.items():
        check_columns(path, needs[role])
    return files


def check_rows(files: dict, findings: tuple, policy: LabelPolicy):
    """(metadata, split, labels) tables of MIMIC-CXR-JPG, one row per dicom_id / study."""
    meta = unique_rows(read_numbered(files["metadata"], REQUIRED_COLUMNS[MIMIC_METADATA],
                                     {"dicom_id": str, STUDY_DATE: str}, optional=(STUDY_DATE,)),
                       ["dicom_id"], files["metadata"])
    splits = unique_rows(read_numbered(files["split"], ["dicom_id", "split"], {"dicom_id": str}),
                         ["dicom_id"], files["split"])
    unique = list(dict.fromkeys(columns_of(findings, policy)))
    labels = unique_rows(read_numbered(files["labels"], ["subject_id", "study_id", *unique],
                                       {c: str for c in unique}),
                         ["subject_id", "study_id"], files["labels"])
    return meta, splits, labels


def iter_samples(root: Path, files, findings, split, policy, skipped, check_images, boxes=None):
    """MIMIC-CXR-JPG samples: frontal images of ``split`` joined with their study's label row.

    ``boxes`` ({dicom_id: {category_name: boxes}}, MS-CXR) gives the images it lists their
    findings' boxes (the finding's CheXpert column is its MS-CXR category); other images get None.
    """
    meta, splits, labels = check_rows(files, findings, policy)
    columns = columns_of(findings, policy)
    labels["_row"] = labels.index
    meta = meta[meta["ViewPosition"].isin(MIMIC_FRONTAL)]
    if split is not None:
        splits = splits[splits["split"] == split]
    meta = meta.merge(splits[["dicom_id"]], on="dicom_id")
    table = meta.merge(labels, on=["subject_id", "study_id"], how="left", indicator=True)
    raw = table[columns].to_numpy(dtype=object)
    dates = table[STUDY_DATE] if STUDY_DATE in table else [None] * len(table)
    rows = zip(table["dicom_id"], table["subject_id"], table["study_id"], dates, table["_merge"],
               table["_row"], raw)
    name = files["labels"].name
    for dicom_id, subject_id, study_id, date, merged, row_no, cells in rows:
        subject, study = str(subject_id), str(study_id)
        path = root / "files" / f"p{subject[:2]}" / f"p{subject}" / f"s{study}" / f"{dicom_id}.jpg"
        if check_images and not path.is_file():
            skip(skipped, "image_missing", dicom_id, len(findings), str(path))
            continue
        if merged != "both":
            skip(skipped, "label_missing", dicom_id, len(findings),
                 f"{name}: no row for subject {subject} study {study}")
            continue
        marked = None if boxes is None or dicom_id not in boxes else boxes[dicom_id]
        for finding, column, cell in zip(findings, columns, cells):
            label = _chexpert_label(cell, policy, skipped, f"{dicom_id}/{finding}",
                                    f"{name}:{int(row_no)}", column)
            if label is not None:
                yield Sample(f"{dicom_id}/{finding}", dicom_id, str(path), finding, label,
                             patient_id=subject, study_id=study, study_date=cell_text(date),
                             boxes=None if marked is None else tuple(marked.get(column, ())))


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
            skip(skipped, "label_invalid", where,
                 detail=f"{sample_id}: {column} = {cell!r} (allowed: 1.0, 0.0, -1.0, blank)")
            return None
        answer, reason = policy.uncertain, "label_uncertain"
    if answer == "skip":
        skip(skipped, reason, sample_id)
        return None
    return answer
