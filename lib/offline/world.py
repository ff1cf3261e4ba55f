"""The offline default world: which synthetic datasets it holds, with which label priors, and where.

``write_default_datasets`` writes the three dataset trees of the offline default under one data
folder: MIMIC-CXR-JPG-like (with MS-CXR's box file), PadChest-like (``lib.offline.layouts``) and
VinDr-CXR-like (``lib.offline.vindr``), each with the twins of its test images
(``lib.offline.twins``), and says beside them that they are synthetic. ``write_reference_sets``
writes held-out reference images; ``montage`` shows each finding without and with.

Label priors (``prevalence``): in the "real" world each finding is present with the rate of the real
dataset (``REAL_PREVALENCE``, sources in ``PREVALENCE_SOURCES``), raised to ``PREVALENCE_FLOOR``
where it is rarer, so that a test split of 70-100 images still holds a few positives of each; in
the "balanced" world every finding has probability ``FINDING_PROBABILITY`` (0.5).
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np

from ..protocol.config import SYNTHETIC_MARKER
from ..protocol.data import FINDINGS, SPLITS, iter_samples, read_xray
from .layouts import MS_CXR_DIR, MS_CXR_FILE, write_mimic, write_padchest
from .synth import FINDING_PROBABILITY
from .twins import TWINS_DIR
from .vindr import write_vindr

WORLDS = ("real", "balanced")

# Per-finding prevalence of the real datasets (keys: the dataset and finding names params use).
# PadChest: frontal images (PA, AP, AP_horizontal) of the real labels file
# PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv with the label among their Labels.
# MIMIC-CXR-JPG: studies labelled positive (1.0) by the CheXpert labeler, of the 227,827 studies
# of MIMIC-CXR-JPG 2.0.0, as tabulated in Johnson et al. 2019 (arXiv:1901.07042, the table of
# label counts: Cardiomegaly 44,845, Pleural Effusion 54,300, Lung Lesion 6,284, Pneumothorax
# 10,358). Those counts were transcribed from the paper without access to it here (not checked
# against the credentialed files): read them as +-1 percentage point. "nodule" is asked as
# CheXpert's "Lung Lesion" on MIMIC (lib.protocol.data.FINDINGS).
REAL_PREVALENCE = {
    "mimic-cxr": {"cardiomegaly": 0.197, "pleural effusion": 0.238, "pneumothorax": 0.045,
                  "nodule": 0.028},
    "padchest": {"cardiomegaly": 0.089, "pleural effusion": 0.063, "pneumothorax": 0.0036,
                 "nodule": 0.021},
}
# VinDr-CXR: no per-finding counts of the release could be checked offline; MIMIC-CXR's are used.
REAL_PREVALENCE["vindr-cxr"] = dict(REAL_PREVALENCE["mimic-cxr"])
PREVALENCE_SOURCES = {
    "mimic-cxr": "Johnson et al. 2019, MIMIC-CXR-JPG (arXiv:1901.07042), CheXpert labeler positives "
                 "per study over 227,827 studies; transcribed, not verified offline (+-1 point)",
    "padchest": "real PadChest labels file (PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv), "
                "frontal images",
    "vindr-cxr": "MIMIC-CXR's rates (no VinDr-CXR label counts available offline)",
}
# Rarer findings are drawn at this rate, so that the test split (70-100 frontal images per
# dataset at the default size) holds a few positives of each; without it PadChest's
# pneumothorax (0.36 %) would have none.
PREVALENCE_FLOOR = 0.05


def prevalence(world: str = "real", floor: float = PREVALENCE_FLOOR) -> dict[str, dict[str, float]]:
    """{dataset: {finding: probability}} of the given world ("real": ``REAL_PREVALENCE`` raised
    to ``floor``; "balanced": ``FINDING_PROBABILITY`` everywhere)."""
    if world == "balanced":
        return {d: {f: FINDING_PROBABILITY for f in FINDINGS} for d in REAL_PREVALENCE}
    if world != "real":
        raise ValueError(f"unknown world {world!r}; valid: {WORLDS}")
    return {d: {f: max(rates[f], floor) for f in FINDINGS} for d, rates in REAL_PREVALENCE.items()}


# The datasets the default models are trained on and checked against; the VinDr-like tree is
# written beside them and never trained on (lib.protocol.config.REFERENCE_SPLIT: "train").
TRAINED_ON = ("mimic-cxr", "padchest")
DATASETS = (*TRAINED_ON, "vindr-cxr")


def write_default_datasets(out_root, n_images: int = 400, seed: int = 0, world: str = "balanced",
                           twins: bool = True, floor: float = PREVALENCE_FLOOR) -> dict[str, Path]:
    """Write the three synthetic datasets (``DATASETS``, ``n_images`` each) and MS-CXR's box file
    (``box_file``) under ``out_root``; returns ``{dataset: its data_root}`` of the ``TRAINED_ON``
    ones (``data_root`` names every root).

    ``world``: "real" (the real datasets' label priors, ``prevalence``) or "balanced" (every
    finding at 0.5). With ``twins`` each test image's counterfactual twins go to
    ``<out_root>/twins`` (``twins.twin_csv`` names the mapping files)."""
    out_root = Path(out_root)
    rates = prevalence(world, floor)
    twins_dir = out_root / TWINS_DIR if twins else None
    write_mimic(data_root(out_root, "mimic-cxr"), n_images, seed, rates["mimic-cxr"], twins_dir,
                box_file=box_file(out_root))
    write_padchest(data_root(out_root, "padchest"), n_images, seed, rates["padchest"], twins_dir)
    write_vindr(data_root(out_root, "vindr-cxr"), n_images, seed, rates["vindr-cxr"], twins_dir)
    mark_synthetic(out_root)
    return {d: data_root(out_root, d) for d in TRAINED_ON}


def data_root(out_root, dataset: str) -> Path:
    """The data root of ``dataset`` written by ``write_default_datasets(out_root)``."""
    return Path(out_root) / dataset


def box_file(out_root) -> Path:
    """MS-CXR's box file of the MIMIC-like tree written by ``write_default_datasets(out_root)``."""
    return Path(out_root) / MS_CXR_DIR / MS_CXR_FILE


REFERENCES_DIR = "references"
# The reference sets' splits: those lib.protocol.config.REFERENCE_SPLIT reads by default.
REFERENCE_SET_SPLIT = {"mimic-cxr": "validate", "padchest": "train"}
REFERENCE_SEED_OFFSET = 10_000   # other patients than the datasets' (same seed -> same bytes)


def write_reference_sets(out_root, n_images: int, seed: int = 0, world: str = "balanced",
                         floor: float = PREVALENCE_FLOOR) -> dict[str, Path]:
    """Write a held-out reference set per dataset under ``<out_root>/references/<dataset>``, in the
    dataset's layout and label priors, every patient in ``REFERENCE_SET_SPLIT`` (MIMIC: validate;
    PadChest: patients hashing into train), drawn with other seeds than the datasets. No training
    stage reads these roots: they are images the default models never saw, like MIMIC-CXR's validate
    split for a model trained on its train split. Returns {dataset: root}."""
    out_root = Path(out_root) / REFERENCES_DIR
    rates = prevalence(world, floor)
    writers = {"mimic-cxr": write_mimic, "padchest": write_padchest}
    return {d: write(out_root / d, n_images, seed + REFERENCE_SEED_OFFSET, rates[d],
                     split=REFERENCE_SET_SPLIT[d]) for d, write in writers.items()}


def mark_synthetic(out_root: Path) -> None:
    """Say beside the data roots that their images are synthetic (`show_images` may embed them);
    the marker sits in their parent folder, so each root keeps exactly the official layout."""
    (out_root / SYNTHETIC_MARKER).write_text(
        "Synthetic radiographs written by lib.offline.world: no patient data.\n")


def montage(data_root, dataset: str = "mimic-cxr", per_label: int = 2) -> tuple[list, list[str]]:
    """Images and titles showing each finding: per finding, ``per_label`` pairs (without, with) of
    frontal images of the tree, read as the evaluation reads them; one row per finding in
    ``lib.protocol.plots.sample_grid(images, titles, columns=2 * per_label)``."""
    picked = {(f, label): [] for f in FINDINGS for label in ("no", "yes")}
    wanted = len(picked) * per_label
    samples = itertools.chain.from_iterable(iter_samples(dataset, data_root, split=split)
                                            for split in SPLITS[dataset])
    for sample in samples:
        bucket = picked[sample.finding, sample.label]
        if len(bucket) < per_label:
            bucket.append(sample)
            wanted -= 1
            if not wanted:
                break
    images, titles = [], []
    for finding in FINDINGS:
        for i in range(per_label):
            for label in ("no", "yes"):
                if i < len(picked[finding, label]):
                    images.append(np.asarray(read_xray(picked[finding, label][i].image_path)))
                    titles.append(f"{finding}: {label}")
    return images, titles
