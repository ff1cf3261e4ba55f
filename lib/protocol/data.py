"""Readers of the official chest X-ray dataset layouts; they yield samples and know nothing of models.

Owns: the datasets and their splits, the findings read by default, checking a data root's layout
without reading images (``check_layout``, ``check_rows``) and streaming its samples (image x
finding, ``label`` ``"yes"``/``"no"``) under a ``LabelPolicy`` (``iter_samples``, ``iter_labels``);
each dataset's reader is its own module (``lib.protocol.mimic``, ``lib.protocol.padchest``,
``lib.protocol.vindr``), box files are read by ``lib.protocol.boxes``, what the readers share is
``lib.protocol.reading``, the policy ``lib.protocol.policy``, image decoding
``lib.protocol.images``. Which dataset labels imply a finding is data in ``lib.protocol.labels``.
The names importers use (``Sample``, ``Skips``, ``LabelPolicy``, ``read_xray``, the official file
names, ...) are re-exported here so that one import serves a notebook.

Only frontal views are samples. Skipped counts count *samples* (image x finding), by reason
(``SKIP_REASONS``), in this order of checks:

* PadChest filters: ``method_excluded`` (``MethodLabel`` not the chosen ``padchest_method``),
  ``age_unknown`` / ``age_below_min`` (with ``padchest_min_age`` set);
* ``image_missing``;
* labels: ``label_missing`` (MIMIC study without a label row), ``label_uncertain`` / ``label_blank``
  (MIMIC -1.0 / empty cell under a ``"skip"`` policy), ``label_invalid`` (MIMIC cell not 1, 0, -1
  or blank, e.g. 2.0; VinDr cell not 0 or 1), ``label_unparseable`` (PadChest ``Labels`` cell not a non-empty list of
  strings), ``label_excluded`` (PadChest ``exclude``), ``label_unchanged_only`` /
  ``label_suboptimal_only`` (PadChest labels that are only ``unchanged`` / ``suboptimal study``);
* at load time (``lib.protocol.images.load_image``): ``image_unreadable``, ``image_too_small``,
  ``image_too_large``, ``image_non_finite``.

``box_invalid`` counts box ROWS (VinDr annotations, an MS-CXR ``box_file``), not samples: the
sample is kept without that box (``lib.protocol.boxes``).
"""

from __future__ import annotations

import collections
from pathlib import Path
from typing import Iterator

import pandas as pd

from . import labels as label_data
from . import boxes, mimic, padchest, vindr
from .images import (MAX_IMAGE_PIXELS, MIN_IMAGE_SIDE, ImageTooLarge, NonFinitePixels,  # noqa: F401
                     load_image, read_xray)
from .labels import DATASETS
from .mimic import MIMIC_CHEXPERT, MIMIC_METADATA, MIMIC_NEGBIO, MIMIC_SPLIT  # noqa: F401
from .padchest import PADCHEST_CSV, PADCHEST_FRONTAL, parse_padchest_labels, split_of_patient  # noqa: F401
from .policy import LabelPolicy
from .reading import SKIP_REASONS, DataLayoutError, MissingFileError, Sample, Skips  # noqa: F401

READERS = {"mimic-cxr": mimic, "padchest": padchest, "vindr-cxr": vindr}
assert tuple(READERS) == DATASETS, "one reader per dataset of lib.protocol.labels"

# The findings of the offline default (its synthetic images show these four): canonical name ->
# the one label each dataset uses for it (the head of its entry in the full mapping,
# ``lib.protocol.labels.FINDING_LABELS``: 13 findings, PadChest hierarchy).
DEFAULT_FINDINGS = ("cardiomegaly", "pleural effusion", "pneumothorax", "nodule")
FINDINGS = {f: {"mimic-cxr": label_data.FINDING_LABELS[f]["mimic-cxr"],
                "padchest": label_data.FINDING_LABELS[f]["padchest"][0],
                "vindr-cxr": label_data.FINDING_LABELS[f]["vindr-cxr"][0]} for f in DEFAULT_FINDINGS}

SPLITS = {dataset: reader.SPLITS for dataset, reader in READERS.items()}


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


def _root(dataset: str, data_root) -> Path:
    root = Path(data_root).expanduser().resolve()
    if not root.is_dir():
        raise MissingFileError(f"{dataset} data_root {str(root)!r} does not exist")
    return root


def check_layout(dataset: str, data_root, policy: LabelPolicy = LabelPolicy(),
                 findings=DEFAULT_FINDINGS) -> dict[str, Path]:
    """Check a data root without reading images or loading a model: the official files the
    reader needs exist and have the columns it reads (label columns of ``findings``, and the
    PadChest columns that ``policy``'s filters read). Returns {role: path} of the files
    ("labels", "metadata", "split" for MIMIC; "labels" for PadChest; "labels_<split>",
    "boxes_<split>" of both splits for VinDr-CXR).

    Raises ValueError for a bad dataset / finding, ``MissingFileError`` (a DataLayoutError and a
    FileNotFoundError) for an absent root or file, ``DataLayoutError`` for a missing column or a
    file that is not a CSV; each message is one line naming the file.
    """
    findings = _check_arguments(dataset, findings, None, policy)
    return READERS[dataset].check_layout(_root(dataset, data_root), policy, findings)


def check_rows(dataset: str, data_root, policy: LabelPolicy = LabelPolicy(),
               findings=DEFAULT_FINDINGS) -> None:
    """Read the official files as the reader does (``check_layout`` first): a DataLayoutError
    names the file and the id of rows repeated with different values."""
    files = check_layout(dataset, data_root, policy, findings)
    READERS[dataset].check_rows(files, tuple(findings), policy)


def iter_samples(dataset: str, data_root, findings=DEFAULT_FINDINGS, split: str = "test",
                 label_policy: LabelPolicy = LabelPolicy(),
                 skipped: collections.Counter | None = None, box_file=None) -> Iterator[Sample]:
    """Stream the samples of one dataset split: images in the order of the official file (MIMIC: the
    metadata file), each with ``findings`` in the order given, so all questions about one image come
    consecutively.

    ``box_file`` (MIMIC-CXR only): an MS-CXR box file (``lib.protocol.boxes.read_ms_cxr``), read
    once and joined to the images by dicom_id; VinDr-CXR reads its own annotations.

    Arguments and the layout are checked now (``check_layout``: ValueError for an unknown dataset /
    finding / split, MissingFileError (a FileNotFoundError) naming the expected path,
    DataLayoutError for a missing column); the CSVs are read on the first ``next()``. Images are
    only checked for existence, never opened. Dropped samples are counted in ``skipped`` (a
    ``Skips`` also lists them).
    """
    return _iter(dataset, data_root, findings, split, label_policy, skipped, True, box_file)


def iter_labels(dataset: str, data_root, findings=DEFAULT_FINDINGS, split: str | None = None,
                label_policy: LabelPolicy = LabelPolicy(),
                skipped: collections.Counter | None = None) -> Iterator[Sample]:
    """As ``iter_samples`` but without looking for image files (no ``image_missing``) and over
    every split for ``split=None``: the labels the official files give, e.g. to count them."""
    return _iter(dataset, data_root, findings, split, label_policy, skipped, False)


def _iter(dataset, data_root, findings, split, policy, skipped, check_images, box_file=None):
    findings = _check_arguments(dataset, findings, split, policy)
    files = check_layout(dataset, data_root, policy, findings)
    skipped = collections.Counter() if skipped is None else skipped
    root = _root(dataset, data_root)
    if box_file is None:
        return READERS[dataset].iter_samples(root, files, findings, split, policy, skipped,
                                             check_images)
    if dataset != "mimic-cxr":
        raise ValueError(f"box_file is read for mimic-cxr only (MS-CXR boxes), not {dataset}")
    return _with_ms_cxr(root, files, findings, split, policy, skipped, check_images,
                        boxes.check_ms_cxr(box_file))


def _with_ms_cxr(root, files, findings, split, policy, skipped, check_images, box_file: Path):
    """The MIMIC samples with the MS-CXR boxes, the box file read on the first ``next()``."""
    marked = boxes.read_ms_cxr(box_file, skipped)
    yield from mimic.iter_samples(root, files, findings, split, policy, skipped, check_images, marked)


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
