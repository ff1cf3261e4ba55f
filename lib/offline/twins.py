"""Counterfactual twins: every TEST frontal image again, once per finding, with that finding toggled.

A twin is rendered from the same generator states as its original (the study's and the patient's:
same anatomy, pose and noise) and written outside the official roots, at
``<out_root>/twins/<dataset>/<image_id>__<finding>.<ext>``, with the mapping
``<out_root>/twins/<dataset>.csv`` (``TWIN_COLUMNS``). It is stored so that
``lib.protocol.data.read_xray`` gives it exactly the original's pixels outside the finding's region
(``lib.offline.synth.finding_region``): MIMIC twins are JPEGs of the same quality (untouched 8 x 8
blocks decode identically); PadChest and VinDr twins are 8-bit PNGs of the pixels ``read_xray``
reads from the original's 12-16-bit storage, scaled with the ORIGINAL's stored range (a twin's own
min..max would rescale every pixel).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
from PIL import Image

from ..protocol.data import FINDINGS
from .synth import IMAGE_SIZE, finding_region, generator, render_radiograph

TWINS_DIR = "twins"
# present: the finding in the original image; findings (JSON): all four there; render_state and
# patient_state (JSON; patient_state empty for an image of its own patient): the generator states
# both were rendered from (`twin_region` recomputes the region from them).
TWIN_COLUMNS = ("image_id", "finding", "twin_path", "present", "findings", "render_state",
                "patient_state")


class TwinSource(NamedTuple):
    """What a twin is rendered from: the original's id, the study generator's state before its
    render, the patient generator's starting state (None: drawn from the study's), its findings,
    and for a 12-16-bit original its stored range (low, high: ``stored_range``; None for MIMIC)."""
    image_id: str
    state: dict
    patient_state: dict | None
    findings: dict
    stored: tuple[int, int] | None = None


def twin_csv(out_root, dataset: str) -> Path:
    """The twins mapping file of ``dataset`` under the data folder ``out_root``."""
    return Path(out_root) / TWINS_DIR / f"{dataset}.csv"


def twin_file_name(image_id: str, finding: str, dataset: str) -> str:
    """``<image_id>__<finding, spaces as _>.jpg`` (MIMIC) or ``.png`` (PadChest, VinDr)."""
    return f"{image_id}__{finding.replace(' ', '_')}.{'jpg' if dataset == 'mimic-cxr' else 'png'}"


def stored_range(pixels: np.ndarray, low: int, high: int) -> np.ndarray:
    """The image's min..max stretched onto the stored integers ``low``..``high`` (uint16)."""
    scaled = (pixels - pixels.min()) / (pixels.max() - pixels.min())
    return np.round(low + scaled * (high - low)).astype(np.uint16)


def _as_read(pixels: np.ndarray, original: np.ndarray, low: int, high: int) -> np.ndarray:
    """The 8-bit image ``read_xray`` would read from ``pixels`` stored like ``original`` (its
    min..max onto ``low``..``high``, as ``stored_range`` wrote it) and read with the original's
    stored range (min..max onto 0..255): equal to the original's wherever ``pixels`` are."""
    lo, hi = float(original.min()), float(original.max())
    values = np.clip(np.round(low + (pixels - lo) / (hi - lo) * (high - low)), 0, 65535)
    values = values.astype(np.uint16).astype(np.float64)  # as read_xray reads it
    return np.clip(np.round((values - low) / (high - low) * 255), 0, 255).astype(np.uint8)


def write_twins(twins_dir, dataset: str, sources: list[TwinSource]) -> Path:
    """Render and write the twins of ``sources`` and their mapping CSV (``TWIN_COLUMNS``); returns
    the CSV's path (``<twins_dir>/<dataset>.csv``)."""
    twins_dir = Path(twins_dir)
    folder = twins_dir / dataset
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for source in sources:
        original = None
        if source.stored is not None:
            original = render_radiograph(generator(source.state), source.findings,
                                         patient=generator(source.patient_state))
        for finding in FINDINGS:
            toggled = {**source.findings, finding: not source.findings[finding]}
            pixels = render_radiograph(generator(source.state), toggled, patient=generator(source.patient_state))
            name = twin_file_name(source.image_id, finding, dataset)
            if source.stored is None:  # MIMIC: the original is this JPEG of round(255 x pixels)
                Image.fromarray(np.round(pixels * 255).astype(np.uint8)).save(folder / name, quality=95)
            else:
                Image.fromarray(_as_read(pixels, original, *source.stored)).save(folder / name, compress_level=1)
            rows.append({"image_id": source.image_id, "finding": finding,
                         "twin_path": f"{dataset}/{name}", "present": bool(source.findings[finding]),
                         "findings": json.dumps(source.findings), "render_state": json.dumps(source.state),
                         "patient_state": json.dumps(source.patient_state) if source.patient_state else ""})
    path = twins_dir / f"{dataset}.csv"
    pd.DataFrame(rows, columns=list(TWIN_COLUMNS)).to_csv(path, index=False)
    return path


def twin_region(row, size: int = IMAGE_SIZE, block: int | None = None) -> np.ndarray:
    """The region (``finding_region``) where a twin may differ from its original, from its row of
    a twins CSV (its ``findings``, ``render_state`` and ``patient_state``); with ``block``, grown to
    whole ``block`` x ``block`` tiles (8 for JPEG twins: a changed pixel changes its 8 x 8 block)."""
    row = row._asdict() if hasattr(row, "_asdict") else dict(row)
    patient = row.get("patient_state")
    patient = json.loads(patient) if isinstance(patient, str) and patient else None
    mask = finding_region(generator(json.loads(row["render_state"])), json.loads(row["findings"]),
                          row["finding"], size, patient=generator(patient))
    if block:
        tiles = mask.reshape(size // block, block, size // block, block).any(axis=(1, 3))
        mask = np.repeat(np.repeat(tiles, block, axis=0), block, axis=1)
    return mask
