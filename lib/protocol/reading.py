"""What every dataset reader shares: the ``Sample`` it yields, the ``Skips`` it counts, the layout
errors it raises and the checked reading of an official CSV file (header check, 1-based row
numbers, one row per id). The readers themselves are ``lib.protocol.mimic``, ``padchest`` and
``vindr``; ``lib.protocol.data`` dispatches to them.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

# Every reason a reader or the image loader counts a skip for (definitions: lib.protocol.data).
SKIP_REASONS = ("method_excluded", "age_unknown", "age_below_min", "image_missing",
                "label_missing", "label_uncertain", "label_blank", "label_invalid",
                "label_unparseable", "label_excluded", "label_unchanged_only",
                "label_suboptimal_only", "image_unreadable", "image_too_small", "image_too_large",
                "image_non_finite", "box_invalid")

Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class Sample:
    """One image x one finding question."""

    sample_id: str    # f"{image_id}/{finding}"
    image_id: str     # MIMIC dicom_id / PadChest ImageID without ".png" / VinDr image_id
    image_path: str   # absolute path
    finding: str      # canonical finding name (a key of the label map in force: LabelPolicy.finding_labels)
    label: str        # "yes" or "no"
    patient_id: str | None = None  # MIMIC subject_id / PadChest PatientID (references never share it)
    study_id: str | None = None    # MIMIC study_id / PadChest StudyID (VinDr: None)
    study_date: str | None = None  # "YYYYMMDD": MIMIC StudyDate / PadChest StudyDate_DICOM
    # The finding's marked boxes (x0, y0, x1, y1) as fractions of the image's width and height,
    # union over readers; () = the image is in a box file without a box for this finding,
    # None = no box information for the image.
    boxes: tuple[Box, ...] | None = None


class DataLayoutError(ValueError):
    """A data root that does not have the official layout; the one-line message names the file and
    the missing column (or what is allowed)."""


class MissingFileError(DataLayoutError, FileNotFoundError):
    """An official file or the data root itself is absent (also a FileNotFoundError)."""


class Skips(collections.Counter):
    """Skipped samples: counts by reason (a Counter) plus ``rows``, one dict per skipped item:
    {"item", "reason", "detail", "n"} where item is a sample_id, an image id (n = its samples) or
    ``"<file>:<row>"`` (1-based data row of an official file) for a bad label cell or box row."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.rows: list[dict] = []

    def add(self, reason: str, item: str, detail: str = "", n: int = 1) -> None:
        self[reason] += n
        self.rows.append({"item": str(item), "reason": reason, "detail": detail, "n": n})

    def table(self) -> pd.DataFrame:
        """The rows as a DataFrame (columns item, reason, detail, n), e.g. for skipped.csv."""
        return pd.DataFrame(self.rows, columns=["item", "reason", "detail", "n"])


def skip(skipped, reason: str, item, n: int = 1, detail: str = "") -> None:
    """Count a skip in a Skips (listing it) or in a plain Counter."""
    if isinstance(skipped, Skips):
        skipped.add(reason, item, detail, n)
    else:
        skipped[reason] += n


def find_csv(root: Path, name: str) -> Path:
    """The path of official CSV ``name`` under ``root``, gzipped or plain."""
    for candidate in (root / f"{name}.gz", root / name):
        if candidate.is_file():
            return candidate
    raise MissingFileError(f"expected {str(root / name)!r}[.gz] (official file name) in {str(root)!r}")


def check_columns(path: Path, required, why: dict | None = None) -> None:
    """Read only the header of ``path``; a missing column or an unreadable CSV is a DataLayoutError
    (``why``: {column: why it is read}, said when such a column is missing)."""
    missing = [c for c in required if c not in header(path)]
    if missing:
        reasons = [r for r in dict.fromkeys((why or {}).get(c) for c in missing) if r]
        hint = f" ({'; '.join(reasons)})" if reasons else ""
        raise DataLayoutError(f"{path}: missing column(s) {missing}{hint}; required: "
                              f"{', '.join(dict.fromkeys(required))}")


def header(path: Path) -> pd.Index:
    """The column names of a CSV; an unreadable file is a DataLayoutError naming it."""
    return _read_csv(path, nrows=0).columns


def _read_csv(path: Path, **options) -> pd.DataFrame:
    """pandas.read_csv; a file it cannot parse (a broken quote, bytes that are not UTF-8, a
    truncated archive) is a DataLayoutError naming it: the caller would blame another key."""
    try:
        return pd.read_csv(path, **options)
    except (ValueError, UnicodeDecodeError, OSError, EOFError) as err:
        raise DataLayoutError(f"{path}: not a readable CSV file "
                              f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})"
                              ) from None


def read_numbered(path: Path, columns, dtype, optional=()) -> pd.DataFrame:
    """Columns of an official CSV (and those of ``optional`` it has), indexed by 1-based data row."""
    wanted = set(columns) | set(optional)
    table = _read_csv(path, usecols=lambda c: c in wanted, dtype=dtype)
    table.index = np.arange(1, len(table) + 1)
    return table


def unique_rows(table: pd.DataFrame, key: list[str], path: Path) -> pd.DataFrame:
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


def cell_text(value) -> str | None:
    """A CSV cell as a stripped string; None for NaN / empty (e.g. an optional date column)."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    value = str(value).strip()
    return value or None
