"""The real PadChest labels file for tests: fetched once from the torchxrayvision 1.5.7 wheel on
PyPI into a cache, never committed; and a small image tree of real rows in the official layout.

Owns: ``real_padchest_csv`` (path of the cached ``.csv.gz``, or ``RealFileUnavailable`` saying
why), ``require_real_padchest`` (the same, skipping the test with that reason) and
``build_padchest_tree`` (a data root of a few hundred real rows with small 16-bit PNGs at
``<ImageDir>/<ImageID>``, for reader and notebook runs).

Cache: ``$CXR_TEST_CACHE`` (default ``~/.cache/cxr-tests``). ``$CXR_PADCHEST_CSV`` may name the
file directly (offline machines). The file is checked against its sha256.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

WHEEL = "torchxrayvision==1.5.7"
MEMBER = "torchxrayvision/data/PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv.gz"
NAME = "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv.gz"
SHA256 = "34a10144a87fe00c176f23f9aa174a10137fd425882b09d8fb012ab817d99d65"


class RealFileUnavailable(RuntimeError):
    """The real labels file could not be had (no network, pip failure, wrong checksum)."""


def cache_dir() -> Path:
    return Path(os.environ.get("CXR_TEST_CACHE", "~/.cache/cxr-tests")).expanduser()


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def real_padchest_csv() -> Path:
    """The cached real labels file (``.csv.gz``), downloading the wheel with pip when needed."""
    given = os.environ.get("CXR_PADCHEST_CSV")
    if given:
        path = Path(given).expanduser()
        if not path.is_file():
            raise RealFileUnavailable(f"CXR_PADCHEST_CSV={given} is not a file")
        return path
    target = cache_dir() / NAME
    if target.is_file() and _sha256(target) == SHA256:
        return target
    wheels = cache_dir() / "wheels"
    wheel = next(iter(sorted(wheels.glob("torchxrayvision-1.5.7-*.whl"))), None)
    if wheel is None:
        wheels.mkdir(parents=True, exist_ok=True)
        try:
            done = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q",
                                   WHEEL, "-d", str(wheels)],
                                  capture_output=True, text=True, timeout=600)
        except (OSError, subprocess.TimeoutExpired) as err:
            raise RealFileUnavailable(f"pip download {WHEEL} failed: {err}") from None
        wheel = next(iter(sorted(wheels.glob("torchxrayvision-1.5.7-*.whl"))), None)
        if done.returncode != 0 or wheel is None:
            tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
            raise RealFileUnavailable(f"pip download {WHEEL} failed (no network or PyPI "
                                      f"unreachable?): {tail[0]}")
    try:
        with zipfile.ZipFile(wheel) as archive:
            data = archive.read(MEMBER)
    except (zipfile.BadZipFile, KeyError) as err:
        raise RealFileUnavailable(f"{wheel}: cannot read {MEMBER} ({err})") from None
    if hashlib.sha256(data).hexdigest() != SHA256:
        raise RealFileUnavailable(f"{MEMBER} in {wheel.name} has an unexpected sha256")
    tmp = target.with_suffix(".tmp")
    tmp.write_bytes(data)
    tmp.replace(target)
    return target


def require_real_padchest() -> Path:
    """``real_padchest_csv()``, or skip the calling test with the reason."""
    import pytest

    try:
        return real_padchest_csv()
    except RealFileUnavailable as err:
        pytest.skip(f"real PadChest labels file unavailable: {err}")


def read_real(csv_path=None) -> pd.DataFrame:
    """All columns of the real file as strings (the file's own row order)."""
    return pd.read_csv(csv_path or real_padchest_csv(), dtype=str, keep_default_na=True)


# Labels each built tree holds at least a few rows of (cases the hierarchy and policies decide).
CASES = ("loculated pleural effusion", "loculated fissural effusion", "hydropneumothorax",
         "multiple nodules", "pseudonodule", "reticulonodular interstitial pattern",
         "cardiomegaly", "pleural effusion", "pneumothorax", "nodule")


def build_padchest_tree(dest, n_rows: int = 300, seed: int = 0, side: int = 64,
                        csv_path=None, split: str = "test") -> Path:
    """Write a PadChest data root under ``dest``: ``n_rows`` real rows of the labels file (all its
    columns, gzipped under the official name) and one small random 16-bit PNG (12 bits used, as in
    PadChest) of ``side`` x ``side`` px per row at ``<dest>/<ImageDir>/<ImageID>``.

    Rows are patients of ``split`` (``lib.protocol.data.split_of_patient``): up to 4 frontal rows
    per label of ``CASES``, 4 each labelled only ``unchanged``, ``exclude``, with an unparseable
    Labels cell, 4 lateral rows, the rest random frontal rows; physician and RNN rows both occur.
    Returns ``dest``.
    """
    from lib.protocol.data import PADCHEST_CSV, PADCHEST_FRONTAL, split_of_patient

    dest = Path(dest)
    table = read_real(csv_path)
    table = table[table["PatientID"].map(split_of_patient) == split]
    frontal = table[table["Projection"].isin(PADCHEST_FRONTAL)]
    cells = frontal["Labels"].fillna("")
    rng = np.random.default_rng(seed)
    picked: list = []

    def take(index, k=4):
        seen = set(picked)
        index = [i for i in index if i not in seen]
        picked.extend(rng.permutation(np.array(index, dtype=object))[:k].tolist())

    for case in CASES:
        take(frontal.index[cells.str.contains(f"'{case}'|' {case}'", regex=True)])
    take(frontal.index[cells.isin(["['unchanged']"])])
    take(frontal.index[cells.str.contains("'exclude'")])
    take(frontal.index[frontal["Labels"].isna() | cells.isin(["[]", "['']"])])
    take(table.index[table["Projection"] == "L"])
    take(frontal.index, max(0, n_rows - len(picked)))
    rows = table.loc[sorted(picked)]  # the file's row order
    dest.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    rows.to_csv(buffer, index=False)
    (dest / f"{PADCHEST_CSV}.gz").write_bytes(gzip.compress(buffer.getvalue()))
    for image_dir, image_id in zip(rows["ImageDir"], rows["ImageID"]):
        folder = dest / str(image_dir)
        folder.mkdir(exist_ok=True)
        pixels = rng.integers(0, 4096, size=(side, side), dtype=np.uint16)
        Image.fromarray(pixels).save(folder / str(image_id))
    return dest
