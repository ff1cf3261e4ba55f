"""Box files: where a finding is marked on an image, as the readers hand it to the samples.

A sample's ``boxes`` are (x0, y0, x1, y1) fractions of the image's width and height (0..1, x
right, y down): every box of its finding's classes on that image, from every reader, kept as they
are (their union; near-duplicates of several radiologists are not merged). A box row that cannot
be a box on its image (a coordinate not a finite number, x1 <= x0 or y1 <= y0, a corner outside the
image) is a counted skip ``box_invalid`` ("<file>:<row>"); the sample is kept without that box.
Rows of classes no asked finding maps to (e.g. VinDr's "No finding", whose coordinates are empty)
are ignored.

* VinDr-CXR 1.0.0, ``annotations/annotations_{train,test}.csv``: image_id, rad_id (train only),
  class_name, x_min, y_min, x_max, y_max in the DICOM's pixels (``read_vindr_annotations``; the
  reader converts them with the DICOM's Columns x Rows).
* MS-CXR 1.0.0 (MIMIC-CXR), ``MS_CXR_Local_Alignment_v1.0.0.csv``: dicom_id, category_name,
  label_text, path, x, y, w, h, image_width, image_height (``read_ms_cxr``); category_name is
  the CheXpert name of the finding (e.g. "Pleural Effusion").
"""

from __future__ import annotations

import math
from pathlib import Path

from .reading import Box, MissingFileError, check_columns, read_numbered, skip

VINDR_BOX_COLUMNS = ("image_id", "class_name", "x_min", "y_min", "x_max", "y_max")
MS_CXR_FILE = "MS_CXR_Local_Alignment_v1.0.0.csv"
MS_CXR_COLUMNS = ("dicom_id", "category_name", "x", "y", "w", "h", "image_width", "image_height")


class BadBox(ValueError):
    """A box row that is not a box on its image; the message says why."""


def numbers(cells) -> tuple[float, ...]:
    """The cells as finite floats; BadBox naming them otherwise."""
    try:
        values = tuple(float(v) for v in cells)
    except (TypeError, ValueError):
        values = (math.nan,)
    if not all(math.isfinite(v) for v in values):
        raise BadBox(f"not finite numbers: {', '.join(map(repr, cells))}")
    return values


def fraction_box(x0: float, y0: float, x1: float, y1: float, width: float, height: float) -> Box:
    """(x0, y0, x1, y1) in pixels of a ``width`` x ``height`` image as fractions of it; BadBox
    when the box is empty or a corner lies outside the image."""
    if width <= 0 or height <= 0:
        raise BadBox(f"image size {width:g}x{height:g}")
    if x1 <= x0 or y1 <= y0:
        raise BadBox(f"empty box: x {x0:g}..{x1:g}, y {y0:g}..{y1:g}")
    if x0 < 0 or y0 < 0 or x1 > width or y1 > height:
        raise BadBox(f"box x {x0:g}..{x1:g}, y {y0:g}..{y1:g} outside the {width:g}x{height:g} image")
    return (x0 / width, y0 / height, x1 / width, y1 / height)


def _add(found: dict, name: str, make, skipped, where: str, what: str) -> None:
    """Append ``make()`` (a fraction box) to ``found[name]``, or count the row as ``box_invalid``
    at ``where`` ("<file>:<row>") when it raises BadBox."""
    try:
        found.setdefault(name, []).append(make())
    except BadBox as err:
        skip(skipped, "box_invalid", where, detail=f"{what}: {err}")


def read_vindr_annotations(path: Path) -> dict[str, list[tuple[int, str, tuple]]]:
    """{image_id: [(row, class_name, (x_min, y_min, x_max, y_max) as written)]} of a VinDr-CXR
    annotations file, rows 1-based, in file order (an image listed only as "No finding" is there:
    it is in the box file)."""
    table = read_numbered(path, VINDR_BOX_COLUMNS, str)
    found: dict[str, list] = {}
    for row_no, row in zip(table.index, table.itertuples(index=False)):
        found.setdefault(str(row.image_id).strip(), []).append(
            (int(row_no), str(row.class_name).strip(), (row.x_min, row.y_min, row.x_max, row.y_max)))
    return found


def vindr_image_boxes(rows: list, size: tuple[int, int], classes, skipped, name: str,
                      image_id: str) -> dict[str, tuple[Box, ...]]:
    """{class_name: fraction boxes} of one VinDr image (``size`` = its width, height) for the
    classes in ``classes``; invalid rows counted as ``box_invalid``."""
    found: dict[str, list] = {}
    for row_no, class_name, corners in rows:
        if class_name in classes:
            _add(found, class_name, lambda: fraction_box(*numbers(corners), *size), skipped,
                 f"{name}:{row_no}", f"{image_id} {class_name}")
    return {k: tuple(v) for k, v in found.items()}


def check_ms_cxr(path) -> Path:
    """The absolute path of an MS-CXR box file that has the columns read and parses to its end;
    MissingFileError or DataLayoutError naming it otherwise (before any model loads)."""
    path = Path(path).expanduser().resolve()
    if not path.is_file():
        raise MissingFileError(f"box_file {str(path)!r} does not exist")
    check_columns(path, MS_CXR_COLUMNS)
    read_numbered(path, MS_CXR_COLUMNS, str)
    return path


def read_ms_cxr(path: Path, skipped) -> dict[str, dict[str, tuple[Box, ...]]]:
    """{dicom_id: {category_name: fraction boxes}} of an MS-CXR file (``check_ms_cxr`` first):
    every image it lists (one whose every row is invalid is there without a box), boxes x, y,
    x + w, y + h over image_width, image_height; invalid rows counted as ``box_invalid``."""
    table = read_numbered(path, MS_CXR_COLUMNS, str)
    found: dict[str, dict] = {}
    for row_no, row in zip(table.index, table.itertuples(index=False)):
        image = found.setdefault(str(row.dicom_id).strip(), {})
        category = str(row.category_name).strip()
        _add(image, category, lambda: _ms_cxr_box(row), skipped, f"{path.name}:{row_no}",
             f"{row.dicom_id} {category}")
    return {image: {k: tuple(v) for k, v in by_class.items()} for image, by_class in found.items()}


def _ms_cxr_box(row) -> Box:
    x, y, w, h, width, height = numbers((row.x, row.y, row.w, row.h, row.image_width, row.image_height))
    return fraction_box(x, y, x + w, y + h, width, height)
