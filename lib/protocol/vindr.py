"""The VinDr-CXR 1.0.0 reader (PhysioNet layout): ``<root>/{train,test}/<image_id>.dicom`` and
``<root>/annotations/image_labels_{train,test}.csv`` (labels: image_id, the radiologist's id, then
one 0/1 column per class), ``<root>/annotations/annotations_{train,test}.csv`` (boxes,
``lib.protocol.boxes``).

Every image is a sample (VinDr-CXR holds PA views only); images come in the order of the labels
file. Labels by radiologist agreement: each train image is labelled by 3 radiologists (one row
each), and a finding is "yes" when at least ``LabelPolicy.vindr_min_radiologists`` (default 2) of
its rows mark one of the finding's classes (``lib.protocol.labels``); a test image has one row,
the consensus of 5 radiologists, read as it is. A cell other than 0 or 1 is ``label_invalid``
("<file>:<row>"). The sample's boxes are every box of its finding's classes on the image, from
every radiologist (a minority's boxes stay on a "no" sample: they still mark where something was
seen); an image listed in the annotations file gets () for a finding without a box, an image not
listed None. Box fractions need the image's size, read from the DICOM header (Columns x Rows):
``iter_labels``, which opens no image file, gives boxes None. VinDr-CXR publishes no patient ids
and no study dates: patient_id, study_id and study_date are None.
"""

from __future__ import annotations

from pathlib import Path

from . import boxes as box_files
from .images import READ_ERRORS, dicom_size
from .policy import LabelPolicy
from .reading import Sample, check_columns, find_csv, read_numbered, skip, unique_rows

SPLITS = ("train", "test")
ANNOTATIONS = "annotations"
LABEL_FILE = "image_labels_{split}.csv"
BOX_FILE = "annotations_{split}.csv"
IMAGE_SUFFIX = ".dicom"


def classes_of(findings, policy: LabelPolicy) -> list[tuple[str, ...]]:
    """The VinDr class names of each finding (in order)."""
    mapping = policy.finding_labels()
    return [tuple(mapping[f]["vindr-cxr"]) for f in findings]


def check_layout(root: Path, policy: LabelPolicy, findings) -> dict[str, Path]:
    """{"labels_<split>", "boxes_<split>"} of both splits, each with the columns read."""
    classes = tuple(dict.fromkeys(c for group in classes_of(findings, policy) for c in group))
    files = {}
    for split in SPLITS:
        files[f"labels_{split}"] = find_csv(root / ANNOTATIONS, LABEL_FILE.format(split=split))
        check_columns(files[f"labels_{split}"], ("image_id", *classes))
        files[f"boxes_{split}"] = find_csv(root / ANNOTATIONS, BOX_FILE.format(split=split))
        check_columns(files[f"boxes_{split}"], box_files.VINDR_BOX_COLUMNS)
    return files


def _labels(files: dict, split: str, findings, policy: LabelPolicy):
    """The labels table of ``split`` (class columns of ``findings``), rows 1-based; the test file
    (one consensus row per image) must not repeat an image with other values."""
    classes = list(dict.fromkeys(c for group in classes_of(findings, policy) for c in group))
    path = files[f"labels_{split}"]
    table = read_numbered(path, ["image_id", *classes], str)
    return unique_rows(table, ["image_id"], path) if split == "test" else table


def check_rows(files: dict, findings: tuple, policy: LabelPolicy) -> None:
    """Read each split's labels and boxes as the reader will (a file that does not parse is a
    DataLayoutError naming it, before any model loads)."""
    for split in SPLITS:
        _labels(files, split, findings, policy)
        box_files.read_vindr_annotations(files[f"boxes_{split}"])


def iter_samples(root: Path, files, findings, split, policy, skipped, check_images):
    """VinDr-CXR samples of ``split`` (None = train then test), labelled by agreement."""
    for one in SPLITS if split is None else (split,):
        yield from _iter_split(root, files, one, findings, policy, skipped, check_images)


def _iter_split(root, files, split, findings, policy, skipped, check_images):
    table = _labels(files, split, findings, policy)
    groups = classes_of(findings, policy)
    needed = 1 if split == "test" else policy.vindr_min_radiologists
    boxes = box_files.read_vindr_annotations(files[f"boxes_{split}"])
    name, box_name = files[f"labels_{split}"].name, files[f"boxes_{split}"].name
    wanted = {c for group in groups for c in group}
    for image_id, rows in table.groupby("image_id", sort=False):
        path = root / split / f"{image_id}{IMAGE_SUFFIX}"
        if check_images and not path.is_file():
            skip(skipped, "image_missing", image_id, len(findings), str(path))
            continue
        marked = _image_boxes(path, boxes.get(image_id), wanted, skipped, box_name, image_id,
                              check_images)
        for finding, classes in zip(findings, groups):
            votes = _votes(rows, classes, skipped, name, f"{image_id}/{finding}")
            if votes is None:
                continue
            found = None if marked is None else tuple(b for c in classes for b in marked.get(c, ()))
            yield Sample(f"{image_id}/{finding}", image_id, str(path), finding,
                         "yes" if votes >= needed else "no", boxes=found)


def _votes(rows, classes: tuple, skipped, name: str, sample_id: str) -> int | None:
    """How many of the image's rows mark one of ``classes``; None (``label_invalid``, counted at
    the first bad row) when a cell is not 0 or 1."""
    votes = 0
    for row_no, cells in zip(rows.index, rows[list(classes)].itertuples(index=False)):
        values = [str(c).strip() for c in cells]
        bad = [(c, v) for c, v in zip(classes, values) if v not in ("0", "1", "0.0", "1.0")]
        if bad:
            skip(skipped, "label_invalid", f"{name}:{row_no}",
                 detail=f"{sample_id}: {bad[0][0]} = {bad[0][1]!r} (allowed: 0, 1)")
            return None
        votes += any(v.startswith("1") for v in values)
    return votes


def _image_boxes(path: Path, rows, wanted: set, skipped, name: str, image_id: str,
                 check_images: bool) -> dict | None:
    """{class_name: fraction boxes} of one image, or None: not in the annotations file, no image
    opened (``iter_labels``), or a DICOM header without a readable size (the image is then
    skipped as unreadable when it is loaded)."""
    if rows is None or not check_images:
        return None
    if not any(class_name in wanted for _, class_name, _ in rows):
        return {}
    try:
        size = dicom_size(path)
    except (*READ_ERRORS, FileNotFoundError):
        return None
    return box_files.vindr_image_boxes(rows, size, wanted, skipped, name, image_id)
