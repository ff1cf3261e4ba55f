"""The offline default world: synthetic chest radiographs written in the real dataset layouts.

``render_radiograph`` draws a procedural PA chest phantom (lungs, mediastinum, heart, spine, ribs,
clavicles, soft tissue, vessel markings, noise; random pose, size and contrast per image) with any of
the four findings of ``lib.protocol.data.FINDINGS`` drawn large enough to be unambiguous at 64 x 64 px:

* cardiomegaly: cardiothoracic ratio 0.62-0.72 (normal 0.36-0.45);
* pleural effusion: tissue-dense fluid filling a lung base up to a lateral meniscus, one or both sides;
* pneumothorax: one lung collapsed towards its hilum, leaving a very dark, marking-free rim at the
  apex and lateral side bounded by a bright visceral pleural line;
* nodule: a bright disc of radius 5-7 % of the image width inside a visible lung field.

``write_mimic`` / ``write_padchest`` write trees that ``lib.protocol.data.iter_samples`` reads exactly like the
real MIMIC-CXR-JPG 2.0.0 and PadChest releases, with their label quirks. Same seed -> identical bytes.
``montage`` picks images of a written tree to show each finding without and with.

Label priors (``prevalence``): in the "real" world each finding is present with the rate of the real
dataset (``REAL_PREVALENCE``, sources in ``PREVALENCE_SOURCES``), raised to ``PREVALENCE_FLOOR``
where it is rarer, so that a test split of 70-100 images still holds a few positives of each; in
the "balanced" world every finding has probability ``FINDING_PROBABILITY`` (0.5).

Counterfactual twins (``write_twins``): every TEST frontal image is rendered again from the same
generator state (same anatomy, pose, noise) once per finding, with that finding toggled, and
written outside the official roots, at ``<out_root>/twins/<dataset>/<image_id>__<finding>.<ext>``,
with the mapping ``<out_root>/twins/<dataset>.csv`` (image_id, finding, twin_path relative to the
CSV's folder, present = the finding in the original image). A twin is stored so that
``lib.protocol.data.read_xray`` gives it exactly the original's pixels outside the finding's
region (``finding_region``): MIMIC twins are JPEGs of the same quality (untouched 8 x 8 blocks
decode identically), PadChest twins 8-bit PNGs scaled with the ORIGINAL's stored range.
``pretraining_images``: a balanced pool of extra images (never in a dataset tree) on which the
default models' vision side learns the findings.
"""

from __future__ import annotations

import gzip
import io
import itertools
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from scipy import ndimage

from ..protocol.config import SYNTHETIC_MARKER
from ..protocol.data import (FINDINGS, MIMIC_CHEXPERT, MIMIC_METADATA, MIMIC_SPLIT, PADCHEST_CSV, SPLITS,
                      iter_samples, read_xray, split_of_patient)

IMAGE_SIZE = 256
FINDING_PROBABILITY = 0.5  # every finding, in the "balanced" world
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
PREVALENCE_SOURCES = {
    "mimic-cxr": "Johnson et al. 2019, MIMIC-CXR-JPG (arXiv:1901.07042), CheXpert labeler positives "
                 "per study over 227,827 studies; transcribed, not verified offline (+-1 point)",
    "padchest": "real PadChest labels file (PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv), "
                "frontal images",
}
# Rarer findings are drawn at this rate, so that the test split (70-100 frontal images per
# dataset at the default size) holds a few positives of each; without it PadChest's
# pneumothorax (0.36 %) would have none.
PREVALENCE_FLOOR = 0.05
TWINS_DIR = "twins"
# present: the finding in the original image; findings (JSON): all four there; render_state (JSON):
# the generator state both were rendered from (`finding_region` recomputes the region from it).
TWIN_COLUMNS = ("image_id", "finding", "twin_path", "present", "findings", "render_state")

CHEXPERT_COLUMNS = ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema",
                    "Enlarged Cardiomediastinum", "Fracture", "Lung Lesion", "Lung Opacity",
                    "No Finding", "Pleural Effusion", "Pleural Other", "Pneumonia", "Pneumothorax",
                    "Support Devices")
PADCHEST_COLUMNS = ("ImageID", "ImageDir", "StudyDate_DICOM", "StudyID", "PatientID", "PatientBirth",
                    "PatientSex_DICOM", "ViewPosition_DICOM", "Projection", "MethodProjection",
                    "Pediatric", "Modality_DICOM", "Manufacturer_DICOM",
                    "PhotometricInterpretation_DICOM", "PixelRepresentation_DICOM",
                    "PixelAspectRatio_DICOM", "SpatialResolution_DICOM", "BitsStored_DICOM",
                    "WindowCenter_DICOM", "WindowWidth_DICOM", "Rows_DICOM", "Columns_DICOM",
                    "XRayTubeCurrent_DICOM", "Exposure_DICOM", "ExposureTime",
                    "RelativeXRayExposure_DICOM", "ReportID", "Report", "MethodLabel", "Labels",
                    "Localizations", "LabelsLocalizationsBySentence", "labelCUIS",
                    "LocalizationsCUIS")
# Labels that PadChest reports use and the phantom does not draw (label noise of the real kind).
PADCHEST_OTHER_LABELS = ("chronic changes", "aortic elongation", "kyphosis", "scoliosis",
                         "air trapping", "vertebral degenerative changes")
PADCHEST_CUIS = {"cardiomegaly": "C0018800", "pleural effusion": "C0032227",
                 "pneumothorax": "C0032326", "nodule": "C0028259"}
PADCHEST_REPORT = {"cardiomegaly": "cardiomegalia", "pleural effusion": "derrame pleural",
                   "pneumothorax": "neumotorax", "nodule": "nodulo pulmonar"}


def prevalence(world: str = "real", floor: float = PREVALENCE_FLOOR) -> dict[str, dict[str, float]]:
    """{dataset: {finding: probability}} of the given world ("real": ``REAL_PREVALENCE`` raised
    to ``floor``; "balanced": ``FINDING_PROBABILITY`` everywhere)."""
    if world == "balanced":
        return {d: {f: FINDING_PROBABILITY for f in FINDINGS} for d in REAL_PREVALENCE}
    if world != "real":
        raise ValueError(f"unknown world {world!r}; valid: {WORLDS}")
    return {d: {f: max(rates[f], floor) for f in FINDINGS} for d, rates in REAL_PREVALENCE.items()}


def _rates(rates) -> dict[str, float]:
    """Per-finding probabilities: a number for all of them, or a dict (missing: balanced)."""
    if rates is None:
        rates = FINDING_PROBABILITY
    if isinstance(rates, (int, float)):
        return {f: float(rates) for f in FINDINGS}
    return {f: float(rates.get(f, FINDING_PROBABILITY)) for f in FINDINGS}


# ---------------------------------------------------------------------------------------------
# images


def render_radiograph(rng: np.random.Generator, findings: dict[str, bool],
                      size: int = IMAGE_SIZE) -> np.ndarray:
    """A synthetic PA chest radiograph, ``size`` x ``size`` floats in [0, 1], bright = dense.

    ``findings`` maps finding names (keys of ``FINDINGS``) to presence; missing keys are absent. Every
    random draw happens whatever the findings are, so the same generator state renders the same
    anatomy with and without a finding (paired counterfactual images). Shapes are drawn at half
    resolution and upsampled (they are smooth, and this halves the time); detector blur and noise
    are added at full resolution.
    """
    unknown = set(findings) - set(FINDINGS)
    if unknown:
        raise ValueError(f"unknown finding(s) {sorted(unknown)}; valid: {tuple(FINDINGS)}")
    grid = (size + 1) // 2
    p = _draw_anatomy(rng, grid, size)
    u, v = _patient_coordinates(grid, p)

    # Lungs: pear-shaped ellipses cut from below by the diaphragm; side -1 is the image-left lung.
    ellipses = {s: _lung_ellipse(u, v, p, s) for s in (-1, 1)}
    lungs = {s: _lung(u, v, p, s, ellipses[s]) for s in (-1, 1)}
    ctr = p["ctr_big"] if findings.get("cardiomegaly") else p["ctr"]
    heart = _heart(u, v, p, ctr * (p["lung_offset"] + p["lung_halfwidth"]))
    fluid = np.zeros_like(u)
    if findings.get("pleural effusion"):
        for s in p["effusion_sides"]:
            fluid += _effusion(u, v, p, s) * lungs[s]
    rim, pleural_line, collapsed = np.zeros_like(u), np.zeros_like(u), np.zeros_like(u)
    if findings.get("pneumothorax"):
        s, anchor, k = p["ptx_side"], p["ptx_anchor"][p["ptx_side"]], p["ptx_scale"]
        collapsed = _lung(*_scale_about(u, v, anchor, k), p, s)
        outer = _lung(*_scale_about(u, v, anchor, k + 0.02), p, s)
        # pleural fluid, if any, settles below the pleural air
        rim = lungs[s] * (1 - collapsed) * (1 - fluid)
        pleural_line = lungs[s] * np.clip(outer - collapsed, 0, 1) * (1 - fluid)
        collapsed *= lungs[s]

    aerated = np.clip(lungs[-1] + lungs[1] - heart, 0, 1) * (1 - fluid)
    img = p["air"] + _body(u, v, p) + _spine(u, v, p) + _bones(u, v, p)
    img += 0.06 * heart * _step((p["diaphragm"] - v) / 0.01)  # the heart shows only above the diaphragm
    # Lung air removes density, most where the lung is thickest (depth: 0 at the outline, 1 in the
    # middle); vessel markings keep some of it. Pleural air (the pneumothorax rim) removes more and
    # has no markings; the collapsed lung under it holds less air.
    depth = np.sqrt(np.clip(1 - np.minimum(ellipses[-1], ellipses[1]), 0, 1))
    air = p["lung_air"] * (0.75 + 0.25 * depth)
    img -= air * (aerated * (1 - rim) * (1 - _markings(u, v, p)) * (1 - 0.3 * collapsed) + 1.3 * rim)
    img += 0.3 * pleural_line
    img += 0.08 * fluid * np.clip((v - p["lung_top"]) / 0.6, 0, 1)  # fluid is thickest at the base
    if findings.get("nodule"):
        img += _nodule(p, grid, visible=_nodule_room(u, v, p, lungs))
    return _finish(_upsample(img, size), p)


def _nodule_room(u, v, p, lungs):
    """Where a nodule may sit: the lungs outside a heart of normal size. It does not depend on the
    other findings, so that toggling one of them (a twin) never moves the nodule."""
    heart = _heart(u, v, p, p["ctr"] * (p["lung_offset"] + p["lung_halfwidth"]))
    return np.clip(lungs[-1] + lungs[1] - heart, 0, 1)


# How far (px at 256) a change of the phantom's shapes can reach after upsampling (2 px) and the
# detector blur (at most 4 sigma = 4 px at 256 px: scipy truncates the Gaussian there), with 2 px spare.
REGION_MARGIN = 8


def finding_region(rng: np.random.Generator, findings: dict[str, bool], finding: str,
                   size: int = IMAGE_SIZE, margin: int | None = None) -> np.ndarray:
    """Boolean ``size`` x ``size`` mask of the pixels that toggling ``finding`` can change in the
    image ``render_radiograph(rng, findings, size)`` would draw from the same generator state:
    the footprint of the finding (present or absent version), dilated by ``margin`` px
    (default ``REGION_MARGIN`` scaled to the size). Consumes the same draws as a render."""
    if finding not in FINDINGS:
        raise ValueError(f"unknown finding {finding!r}; valid: {tuple(FINDINGS)}")
    grid = (size + 1) // 2
    p = _draw_anatomy(rng, grid, size)
    u, v = _patient_coordinates(grid, p)
    lungs = {s: _lung(u, v, p, s) for s in (-1, 1)}
    width = p["lung_offset"] + p["lung_halfwidth"]
    if finding == "cardiomegaly":
        foot = np.maximum(_heart(u, v, p, p["ctr_big"] * width), _heart(u, v, p, p["ctr"] * width))
    elif finding == "pleural effusion":
        foot = sum(_effusion(u, v, p, s) * lungs[s] for s in p["effusion_sides"])
    elif finding == "pneumothorax":
        foot = lungs[p["ptx_side"]]
    else:
        foot = _nodule(p, grid, visible=_nodule_room(u, v, p, lungs))
    mask = _upsample((foot > 0).astype(np.float32), size) > 0
    margin = round(REGION_MARGIN * size / IMAGE_SIZE) if margin is None else margin
    if margin:
        mask = ndimage.binary_dilation(mask, iterations=margin)
    return mask


def _render_lateral(rng: np.random.Generator, size: int = IMAGE_SIZE) -> np.ndarray:
    """A crude lateral view (patient facing image left). Lateral images are never samples; they only
    have to look lateral so that a reader that forgets the view filter is caught."""
    grid = (size + 1) // 2
    p = _draw_anatomy(rng, grid, size)
    u, v = _patient_coordinates(grid, p)
    body = _soft(((u - 0.5) / 0.38) ** 2 + ((v - 0.62) / 0.6) ** 6, 0.05)
    lung = _soft(((u - 0.5) / 0.25) ** 2 + ((v - 0.47) / 0.36) ** 2, 0.05) \
        * _step((p["diaphragm"] - v + 0.1 * (u - 0.5)) / 0.01)  # diaphragm lowest posteriorly
    heart = _soft(((u - 0.36) / 0.13) ** 2 + ((v - p["diaphragm"] + 0.1) / 0.15) ** 2, 0.05)
    spine = _step((0.07 - np.abs(u - 0.74)) / 0.005) * (1 + 0.3 * np.cos(2 * np.pi * v / 0.06))
    img = p["air"] + p["tissue"] * body + 2 * p["spine"] * spine * body
    img -= p["lung_air"] * lung * (1 - 0.7 * heart) * (1 - 0.5 * _markings(u, v, p))
    return _finish(_upsample(img, size), p)


def _draw_anatomy(rng: np.random.Generator, grid: int, size: int) -> dict:
    """All random numbers of one image, drawn in a fixed order whatever the findings are (textures
    for the ``grid``-pixel shape rendering, noise for the ``size``-pixel output)."""
    u = rng.uniform
    p = {
        "shift_x": u(-0.04, 0.04), "shift_y": u(-0.04, 0.04), "scale": u(0.9, 1.05),
        "angle": math.radians(u(-4, 4)),
        "body_halfwidth": u(0.41, 0.47), "tissue": u(0.45, 0.55), "air": u(0.0, 0.06),
        "lung_offset": u(0.19, 0.215), "lung_halfwidth": u(0.14, 0.16),
        "lung_top": u(0.13, 0.18), "diaphragm": u(0.77, 0.83),
        "dome": u(0.06, 0.10), "right_dome_up": u(0.0, 0.03), "lung_air": u(0.30, 0.36),
        "ctr": u(0.36, 0.45), "ctr_big": u(0.62, 0.72), "heart_halfheight": u(0.13, 0.16),
        "spine": u(0.04, 0.08), "rib": u(0.03, 0.06), "rib_phase": u(0, 0.02),
        "hilum": u(0.5, 0.8),
        "vessel_noise": _unit_std(ndimage.gaussian_filter(
            rng.standard_normal((grid, grid), dtype=np.float32), grid / 200)),
        "gamma": u(0.8, 1.25), "gain": u(0.85, 1.0), "blur": u(0.3, 1.0) * size / 256,
        "noise": u(0.01, 0.025), "noise_field": rng.standard_normal((size, size), dtype=np.float32),
        # finding geometry, used only when the finding is present
        "effusion_sides": [(-1,), (1,), (-1, 1)][rng.integers(3)],
        "effusion_level": u(0.3, 0.5), "meniscus": u(0.08, 0.14),
        "ptx_side": int(rng.choice([-1, 1])), "ptx_scale": u(0.55, 0.7),
        "nodule_radius": u(0.05, 0.07), "nodule_density": u(0.35, 0.45),  # radius: of the width
        "nodule_pick": rng.random(),
    }
    # the pneumothorax lung collapses towards its lower hilum, so the rim is widest at the apex
    p["ptx_anchor"] = {s: (0.5 + s * (p["lung_offset"] - 0.6 * p["lung_halfwidth"]),
                           p["diaphragm"] - 0.02) for s in (-1, 1)}
    return p


def _unit_std(field: np.ndarray) -> np.ndarray:
    """``field`` scaled to standard deviation 1."""
    return field / field.std()


def _patient_coordinates(size: int, p: dict) -> tuple[np.ndarray, np.ndarray]:
    """Pixel grid mapped into the phantom's frame (u across, v down, both ~0..1) by the image's
    random shift, scale and rotation."""
    axis = ((np.arange(size, dtype=np.float32) + 0.5) / size - 0.5)
    x, y = axis[None, :] - p["shift_x"], axis[:, None] - p["shift_y"]
    c, s = math.cos(p["angle"]) / p["scale"], math.sin(p["angle"]) / p["scale"]
    return 0.5 + c * x + s * y, 0.5 - s * x + c * y


def _soft(f: np.ndarray, width: float) -> np.ndarray:
    """Soft indicator of the implicit region f < 1 (edge ``width`` wide in units of f)."""
    return _step((1.0 - f) / width)


def _step(x: np.ndarray) -> np.ndarray:
    """Soft step from 0 (x < -2) to 1 (x > 2): a linear ramp, as steep as the logistic at 0 and much
    cheaper to compute."""
    return np.clip(0.5 + 0.25 * x, 0.0, 1.0)


def _scale_about(u, v, anchor, k):
    """Coordinates in which a shape shrinks by factor ``k`` towards ``anchor``."""
    return anchor[0] + (u - anchor[0]) / k, anchor[1] + (v - anchor[1]) / k


def _diaphragm(u, p, side):
    """Height (v) of the diaphragm under one lung: a dome, highest mid-lung, lowest laterally."""
    t = (u - 0.5 - side * p["lung_offset"]) / p["lung_halfwidth"]
    up = p["right_dome_up"] if side == -1 else 0.0  # the liver lifts the right (image-left) dome
    return p["diaphragm"] - up - p["dome"] * np.clip(1 - t * t, 0, 1)


def _lung_ellipse(u, v, p, side):
    """Implicit pear-shaped ellipse of one lung (< 1 inside), before the diaphragm cuts it."""
    middle = (p["lung_top"] + p["diaphragm"] + 0.05) / 2
    halfheight = (p["diaphragm"] + 0.05 - p["lung_top"]) / 2
    widening = np.clip((v - p["lung_top"]) / (2 * halfheight), 0, 1)  # narrow apex, wide base
    du = (u - 0.5 - side * p["lung_offset"]) / (p["lung_halfwidth"] * (0.85 + 0.25 * widening))
    dv = (v - middle) / halfheight
    return du * du + dv * dv


def _lung(u, v, p, side, ellipse=None):
    """Soft mask of one lung field (``ellipse``: its ``_lung_ellipse``, when already computed)."""
    ellipse = _lung_ellipse(u, v, p, side) if ellipse is None else ellipse
    return _soft(ellipse, 0.05) * _step((_diaphragm(u, p, side) - v) / 0.01)


def _heart(u, v, p, halfwidth):
    """Soft mask of the cardiac silhouette, ``2 * halfwidth`` wide: it sits on the diaphragm, two
    thirds of it on the patient's left (image right)."""
    du = (u - 0.5 - halfwidth / 3) / halfwidth
    dv = (v - p["diaphragm"] + 0.1) / p["heart_halfheight"]
    return _soft(du * du + dv * dv, 0.05)


def _effusion(u, v, p, side):
    """Soft mask of pleural fluid: everything below a surface that rises towards the lateral wall."""
    top, bottom = p["lung_top"], p["diaphragm"]
    medial_edge = 0.5 + side * (p["lung_offset"] - p["lung_halfwidth"])
    lateral = np.clip(side * (u - medial_edge) / (2 * p["lung_halfwidth"]), 0, 1)
    surface = bottom - p["effusion_level"] * (bottom - top) - p["meniscus"] * lateral * lateral
    return _step((v - surface) / 0.008)


def _body(u, v, p):
    """Soft-tissue density of neck, shoulders and trunk, thicker in the middle as in projection."""
    a = np.abs(u - 0.5) / p["body_halfwidth"]
    shoulders = 0.03 + 0.25 * a ** 4  # top outline of the trunk, sloping down laterally
    trunk = _soft(a * a, 0.02) * _step((v - shoulders) / 0.01)
    neck = _soft((np.abs(u - 0.5) / 0.1) ** 2, 0.05)
    thickness = np.sqrt(np.clip(1 - a * a, 0, 1))
    return p["tissue"] * (0.35 + 0.65 * thickness) * np.maximum(trunk, neck)


def _spine(u, v, p):
    """Vertebral column, seen faintly through the mediastinum."""
    return p["spine"] * np.exp(-((u - 0.5) / 0.03) ** 4) * (1 + 0.3 * np.cos(2 * np.pi * v / 0.06))


def _bones(u, v, p):
    """Faint posterior ribs (arcs dropping laterally, 0.068 apart) and the clavicles."""
    a = np.abs(u - 0.5)
    first = p["lung_top"] - 0.03 + p["rib_phase"] - 0.15 * a + 0.9 * a * a
    k = np.clip(np.round((v - first) / 0.068), 0, 9)  # nearest of 10 ribs
    ribs = np.exp(-((v - first - 0.068 * k) / 0.012) ** 2)
    ribs *= np.clip((a - 0.04) / 0.03, 0, 1) * _soft((a / (p["lung_offset"] + p["lung_halfwidth"] + 0.03)) ** 2, 0.05)
    clavicle = np.exp(-((v - 0.15 + 0.12 * (a - 0.18) - 0.6 * (a - 0.18) ** 2) / 0.014) ** 2)
    clavicle *= np.clip((a - 0.04) / 0.03, 0, 1) * (a < 0.33)
    return p["rib"] * ribs + 0.1 * clavicle


def _markings(u, v, p):
    """Fraction of lung air replaced by vessels: branching texture, dense at the hila, sparse at the
    periphery."""
    near_hilum = sum(np.exp(-np.hypot(u - 0.5 - s * (p["lung_offset"] - 0.6 * p["lung_halfwidth"]),
                                      (v - 0.5) / 1.6) / 0.08) for s in (-1, 1))
    vessels = np.clip(p["vessel_noise"], 0, None) * (0.1 + 0.25 * near_hilum)
    return np.clip(vessels + p["hilum"] * near_hilum ** 3, 0, 0.8)


def _nodule(p: dict, size: int, visible: np.ndarray) -> np.ndarray:
    """A bright disc centred where the visible lung can hold most of it (``size``: grid width)."""
    radius = p["nodule_radius"] * size
    room = ndimage.distance_transform_edt(visible > 0.5)
    candidates = np.flatnonzero(room >= min(0.8 * radius, room.max()))
    cy, cx = divmod(candidates[int(p["nodule_pick"] * len(candidates))], size)
    y, x = np.ogrid[:size, :size]
    return p["nodule_density"] * _soft(((x - cx) ** 2 + (y - cy) ** 2) / radius ** 2, 0.08)


def _upsample(img: np.ndarray, size: int) -> np.ndarray:
    return np.asarray(Image.fromarray(img).resize((size, size), Image.BILINEAR))


def _finish(img: np.ndarray, p: dict) -> np.ndarray:
    """Detector blur, contrast curve and quantum noise; float in [0, 1]."""
    img = ndimage.gaussian_filter(img, p["blur"])
    img = p["gain"] * np.clip(img, 0, 1) ** p["gamma"] + p["noise"] * p["noise_field"]
    return np.clip(img, 0, 1)


# ---------------------------------------------------------------------------------------------
# dataset trees


def write_default_datasets(out_root, n_images: int = 400, seed: int = 0, world: str = "balanced",
                           twins: bool = True, floor: float = PREVALENCE_FLOOR) -> dict[str, Path]:
    """Write both synthetic datasets under ``out_root``; returns ``{dataset: its data_root}``.

    ``world``: "real" (the real datasets' label priors, ``prevalence``) or "balanced" (every
    finding at 0.5). With ``twins`` each test image's counterfactual twins go to
    ``<out_root>/twins`` (``twin_csv`` names the mapping files)."""
    out_root = Path(out_root)
    rates = prevalence(world, floor)
    twins_dir = out_root / TWINS_DIR if twins else None
    roots = {"mimic-cxr": write_mimic(out_root / "mimic-cxr", n_images, seed, rates["mimic-cxr"],
                                      twins_dir),
             "padchest": write_padchest(out_root / "padchest", n_images, seed, rates["padchest"],
                                        twins_dir)}
    mark_synthetic(out_root)
    return roots


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


def twin_csv(out_root, dataset: str) -> Path:
    """The twins mapping file of ``dataset`` written by ``write_default_datasets(out_root)``."""
    return Path(out_root) / TWINS_DIR / f"{dataset}.csv"


def write_mimic(root, n_images: int, seed: int, prevalence=None, twins_dir=None,
                split: str | None = None) -> Path:
    """Write ``n_images`` synthetic images in the MIMIC-CXR-JPG 2.0.0 layout under ``root``.

    Subjects have 1-3 studies; a study is a PA (with a lateral ~30 % of the time) or a portable AP,
    sometimes with a repeated frontal; ~15 % of images are laterals. Findings are drawn per study
    (the CheXpert labels are per study): each present with its probability in ``prevalence``
    (a number or {finding: rate}; default 0.5) and shown on every frontal image of the study. CheXpert semantics: present 1.0 (5 % written -1.0, uncertain),
    absent 0.0 (10 % left blank, not mentioned), "No Finding" 1.0 when none is present, the columns
    the phantom never draws blank. Subjects are 70 % train, 3 % validate, 27 % test. Existing files
    are overwritten; the CSVs define the dataset. With ``twins_dir``, the twins of the test
    split's frontal images are written there (``write_twins``). ``split``: every subject in that
    split instead (a reference set).
    """
    rng = np.random.default_rng([seed, 0])
    root = Path(root)
    rates = _rates(prevalence)
    ids = _UniqueIds(rng)
    metadata, splits, chexpert, twins = [], [], [], []
    while len(metadata) < n_images:
        subject = ids.draw(10_000_000, 20_000_000)
        draw = rng.random()
        subject_split = split or ("train" if draw < 0.70 else "validate" if draw < 0.73 else "test")
        for _ in range(rng.choice([1, 1, 1, 2, 3])):
            study = ids.draw(50_000_000, 60_000_000)
            findings = {f: bool(rng.random() < rates[f]) for f in FINDINGS}
            chexpert.append({"subject_id": subject, "study_id": study,
                             **_chexpert_row(rng, findings)})
            portable = rng.random() < 0.3
            frontal = "AP" if portable else "PA"
            views = [frontal] + (["LATERAL"] if not portable and rng.random() < 0.3 else [])
            views += [frontal] if rng.random() < 0.1 else []
            date = _date(rng, 2110, 2210)  # MIMIC shifts dates into the 22nd century
            time = round(int(rng.integers(0, 24)) * 10_000 + int(rng.integers(0, 60)) * 100
                         + float(rng.uniform(0, 60)), 3)  # HHMMSS.fff
            for view in views[:n_images - len(metadata)]:
                dicom_id = "-".join(rng.bytes(4).hex() for _ in range(5))
                if view != "LATERAL" and subject_split == "test":
                    twins.append((dicom_id, rng.bit_generator.state, findings, None))
                pixels = _render_lateral(rng) if view == "LATERAL" else render_radiograph(rng, findings)
                path = root / "files" / f"p{str(subject)[:2]}" / f"p{subject}" / f"s{study}" / f"{dicom_id}.jpg"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(np.round(pixels * 255).astype(np.uint8)).save(path, quality=95)
                procedure = "CHEST (PORTABLE AP)" if portable else "CHEST (PA AND LAT)"
                metadata.append({
                    "dicom_id": dicom_id, "subject_id": subject, "study_id": study,
                    "PerformedProcedureStepDescription": procedure, "ViewPosition": view,
                    "Rows": IMAGE_SIZE, "Columns": IMAGE_SIZE, "StudyDate": date, "StudyTime": time,
                    "ProcedureCodeSequence_CodeMeaning": procedure,
                    "ViewCodeSequence_CodeMeaning": MIMIC_VIEW_MEANING[view],
                    "PatientOrientationCodeSequence_CodeMeaning": "Recumbent" if portable else "Erect"})
                splits.append({"dicom_id": dicom_id, "study_id": study, "subject_id": subject,
                               "split": subject_split})
    _write_csv_gz(pd.DataFrame(chexpert, columns=["subject_id", "study_id", *CHEXPERT_COLUMNS]),
                  root / f"{MIMIC_CHEXPERT}.gz")
    _write_csv_gz(pd.DataFrame(metadata), root / f"{MIMIC_METADATA}.gz")
    _write_csv_gz(pd.DataFrame(splits), root / f"{MIMIC_SPLIT}.gz")
    if twins_dir is not None:
        write_twins(twins_dir, "mimic-cxr", twins)
    return root


MIMIC_VIEW_MEANING = {"PA": "postero-anterior", "AP": "antero-posterior", "LATERAL": "lateral"}


def _chexpert_row(rng: np.random.Generator, findings: dict[str, bool]) -> dict[str, float]:
    """CheXpert label cells of one study (NaN = blank) for the four drawn findings and No Finding."""
    row = {}
    for finding, present in findings.items():
        if present:
            value = -1.0 if rng.random() < 0.05 else 1.0
        else:
            value = np.nan if rng.random() < 0.10 else 0.0
        row[FINDINGS[finding]["mimic-cxr"]] = value
    row["No Finding"] = np.nan if any(findings.values()) else 1.0
    return row


def write_padchest(root, n_images: int, seed: int, prevalence=None, twins_dir=None,
                   split: str | None = None) -> Path:
    """Write ``n_images`` synthetic images in the PadChest layout under ``root``.

    Patients have 1-2 studies of one frontal image (PA 70 %, AP 15 %, AP_horizontal 15 %) plus a
    lateral ("L") ~11 % of the time; findings are drawn per study (PadChest labels come from the
    study's report), each present with its probability in ``prevalence`` (default 0.5). Images are 16-bit PNGs using 12 bits, each
    with its own stored range (min 200-800, max 2500-4095), in ImageDir folders 0-2. ``Labels`` has
    the real quirks: ``['normal']`` when nothing is present, unrelated labels, leading spaces and
    empty entries. Existing files are overwritten; the CSV defines the dataset. With
    ``twins_dir``, the twins of the test split's frontal images are written there. ``split``:
    only patients whose PatientID hashes into that split (``split_of_patient``; a reference set).
    """
    rng = np.random.default_rng([seed, 1])
    root = Path(root)
    rates = _rates(prevalence)
    rows, twins = [], []
    while len(rows) < n_images:
        patient = _digits(rng, 36)
        while split is not None and split_of_patient(patient) != split:
            patient = _digits(rng, 36)
        birth, sex = float(rng.integers(1925, 2000)), str(rng.choice(["M", "F"]))
        for _ in range(rng.choice([1, 1, 1, 2])):
            study = _digits(rng, 38)
            findings = {f: bool(rng.random() < rates[f]) for f in FINDINGS}
            labels = _padchest_labels(rng, findings)
            frontal = str(rng.choice(["PA", "AP", "AP_horizontal"], p=[0.7, 0.15, 0.15]))
            views = [frontal] + (["L"] if rng.random() < 0.11 else [])
            report = {"StudyID": study, "PatientID": patient, "PatientBirth": birth,
                      "PatientSex_DICOM": sex, "StudyDate_DICOM": _date(rng, 2009, 2018),
                      "ReportID": int(rng.integers(1, 200_000)),
                      "MethodLabel": "Physician" if rng.random() < 0.27 else "RNN_model", **labels}
            for view in views[:n_images - len(rows)]:
                image_id = f"{study}_{''.join(rng.choice(list(ID_SUFFIX_CHARS), 6))}.png"
                image_dir = int(rng.integers(0, 3))
                state = rng.bit_generator.state
                pixels = _render_lateral(rng) if view == "L" else render_radiograph(rng, findings)
                low, high = int(rng.integers(200, 801)), int(rng.integers(2500, 4096))
                if view != "L" and split_of_patient(patient) == "test":
                    twins.append((Path(image_id).stem, state, findings, (pixels, low, high)))
                path = root / str(image_dir) / image_id
                path.parent.mkdir(parents=True, exist_ok=True)
                # fast zlib level: the noise makes these PNGs nearly incompressible anyway
                Image.fromarray(_stored_range(pixels, low, high)).save(path, compress_level=1)
                rows.append({**report, **_padchest_dicom_fields(rng, view), "ImageID": image_id,
                             "ImageDir": image_dir, "Projection": view,
                             "MethodProjection": "Manual review of DICOM fields", "Pediatric": "No"})
    frame = pd.DataFrame(rows, columns=list(PADCHEST_COLUMNS))
    (root / PADCHEST_CSV).write_bytes(frame.to_csv(index=False).encode())
    if twins_dir is not None:
        write_twins(twins_dir, "padchest", twins)
    return root


def _generator(state: dict) -> np.random.Generator:
    """A generator in the given (PCG64) state: renders the same anatomy again."""
    rng = np.random.Generator(np.random.PCG64())
    rng.bit_generator.state = state
    return rng


def twin_file_name(image_id: str, finding: str, dataset: str) -> str:
    """``<image_id>__<finding, spaces as _>.jpg`` (MIMIC) or ``.png`` (PadChest)."""
    return f"{image_id}__{finding.replace(' ', '_')}.{'jpg' if dataset == 'mimic-cxr' else 'png'}"


def write_twins(twins_dir, dataset: str, images) -> Path:
    """Render and write the counterfactual twins of ``images`` and their mapping CSV.

    ``images``: (image_id, generator state before its render, its findings, PadChest only:
    (rendered pixels, stored low, stored high)). One twin per (image, finding), with that finding
    toggled; written so that ``read_xray`` reads it as the original outside ``finding_region``
    (module docstring). The CSV also holds the findings and the generator state of each image. Returns the CSV's path (``<twins_dir>/<dataset>.csv``).
    """
    twins_dir = Path(twins_dir)
    folder = twins_dir / dataset
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for image_id, state, findings, stored in images:
        for finding in FINDINGS:
            toggled = {**findings, finding: not findings[finding]}
            pixels = render_radiograph(_generator(state), toggled)
            name = twin_file_name(image_id, finding, dataset)
            if stored is None:  # MIMIC: the original is this JPEG of round(255 x pixels)
                Image.fromarray(np.round(pixels * 255).astype(np.uint8)).save(folder / name, quality=95)
            else:  # PadChest: the original's 12-bit storage, then read_xray's min..max onto 0..255
                original, low, high = stored
                lo, hi = float(original.min()), float(original.max())
                values = np.clip(np.round(low + (pixels - lo) / (hi - lo) * (high - low)), 0, 65535)
                values = values.astype(np.uint16).astype(np.float64)  # as read_xray reads it
                scaled = np.clip(np.round((values - low) / (high - low) * 255), 0, 255)
                Image.fromarray(scaled.astype(np.uint8)).save(folder / name, compress_level=1)
            rows.append({"image_id": image_id, "finding": finding,
                         "twin_path": f"{dataset}/{name}", "present": bool(findings[finding]),
                         "findings": json.dumps(findings), "render_state": json.dumps(state)})
    path = twins_dir / f"{dataset}.csv"
    pd.DataFrame(rows, columns=list(TWIN_COLUMNS)).to_csv(path, index=False)
    return path


def twin_region(row, size: int = IMAGE_SIZE, block: int | None = None) -> np.ndarray:
    """The region (``finding_region``) where a twin may differ from its original, from its row of
    a twins CSV (its ``findings`` and ``render_state``); with ``block``, grown to whole
    ``block`` x ``block`` tiles (8 for JPEG twins: a changed pixel changes its 8 x 8 block)."""
    row = row._asdict() if hasattr(row, "_asdict") else dict(row)
    mask = finding_region(_generator(json.loads(row["render_state"])), json.loads(row["findings"]),
                          row["finding"], size)
    if block:
        tiles = mask.reshape(size // block, block, size // block, block).any(axis=(1, 3))
        mask = np.repeat(np.repeat(tiles, block, axis=0), block, axis=1)
    return mask


def pretraining_images(n: int, seed: int) -> tuple[list[Image.Image], np.ndarray]:
    """``n`` extra frontal images (RGB) with every finding at probability 0.5, and their
    (n, 4) 0/1 finding matrix (columns in ``FINDINGS`` order). They belong to no dataset tree
    (generator ``[seed, 2]``): the default models' vision side learns the findings on them, as a
    real VLM's vision tower is pretrained on other data than the task's. Half are stored and read
    back like MIMIC JPEGs, half min..max-scaled like PadChest PNGs."""
    rng = np.random.default_rng([seed, 2])
    images, labels = [], []
    for i in range(n):
        findings = {f: bool(rng.random() < FINDING_PROBABILITY) for f in FINDINGS}
        pixels = render_radiograph(rng, findings)
        if i % 2:
            pixels = (pixels - pixels.min()) / (pixels.max() - pixels.min())
            image = Image.fromarray(np.round(pixels * 255).astype(np.uint8))
        else:
            buffer = io.BytesIO()
            Image.fromarray(np.round(pixels * 255).astype(np.uint8)).save(buffer, "JPEG", quality=95)
            image = Image.open(io.BytesIO(buffer.getvalue()))
        images.append(image.convert("RGB"))
        labels.append([int(findings[f]) for f in FINDINGS])
    return images, np.array(labels, dtype=np.int64)


def mark_synthetic(out_root: Path) -> None:
    """Say beside the data roots that their images are synthetic (`show_images` may embed them);
    the marker sits in their parent folder, so each root keeps exactly the official layout."""
    (out_root / SYNTHETIC_MARKER).write_text(
        "Synthetic radiographs written by lib.offline.synth: no patient data.\n")


ID_SUFFIX_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789"


def _padchest_labels(rng: np.random.Generator, findings: dict[str, bool]) -> dict[str, str]:
    """The label columns of one PadChest study (Report, Labels, Localizations, their CUIs)."""
    present = [FINDINGS[f]["padchest"] for f, p in findings.items() if p]
    others = list(rng.choice(PADCHEST_OTHER_LABELS, rng.integers(1, 3), replace=False)) \
        if rng.random() < 0.3 else []
    labels = [str(x) for x in rng.permutation(present + others)] or ["normal"]
    localizations = {"pleural effusion": ["loc costophrenic angle"], "pneumothorax": ["loc apical"]}
    locs = [loc for label in labels for loc in localizations.get(label, [])]
    written = [" " + x if rng.random() < 0.2 else x for x in labels]  # leading spaces, as in the release
    if rng.random() < 0.05:
        written.append("")
    report = " . ".join(PADCHEST_REPORT.get(x, x) for x in labels) if present \
        else "sin alteraciones significativas"
    return {"Report": report, "Labels": str(written), "Localizations": str(locs),
            "LabelsLocalizationsBySentence": str([[x, *localizations.get(x, [])] for x in labels]),
            "labelCUIS": str([PADCHEST_CUIS[x] for x in labels if x in PADCHEST_CUIS]),
            "LocalizationsCUIS": str([])}


def _padchest_dicom_fields(rng: np.random.Generator, view: str) -> dict:
    """Acquisition columns of one PadChest image (plausible values; no reader uses them)."""
    return {"ViewPosition_DICOM": {"PA": "POSTEROANTERIOR", "L": "LATERAL"}.get(view, "ANTEROPOSTERIOR"),
            "Modality_DICOM": str(rng.choice(["CR", "DX"])),
            "Manufacturer_DICOM": str(rng.choice(["PhilipsMedicalSystems", "ImagingDynamicsCompanyLtd"])),
            "PhotometricInterpretation_DICOM": "MONOCHROME2", "PixelRepresentation_DICOM": 0,
            "PixelAspectRatio_DICOM": np.nan, "SpatialResolution_DICOM": 0.139, "BitsStored_DICOM": 12,
            "WindowCenter_DICOM": 2048, "WindowWidth_DICOM": 4096,
            "Rows_DICOM": IMAGE_SIZE, "Columns_DICOM": IMAGE_SIZE,
            "XRayTubeCurrent_DICOM": int(rng.integers(100, 500)),
            "Exposure_DICOM": int(rng.integers(2, 20)), "ExposureTime": int(rng.integers(5, 40)),
            "RelativeXRayExposure_DICOM": np.nan}


class _UniqueIds:
    """Random integer ids that never repeat within one dataset."""

    def __init__(self, rng: np.random.Generator):
        self.rng, self.used = rng, set()

    def draw(self, low: int, high: int) -> int:
        while (value := int(self.rng.integers(low, high))) in self.used:
            pass
        self.used.add(value)
        return value


def _digits(rng: np.random.Generator, n: int) -> str:
    """A random ``n``-digit decimal string (PadChest ids are long digit strings)."""
    return str(rng.integers(1, 10)) + "".join(map(str, rng.integers(0, 10, n - 1)))


def _date(rng: np.random.Generator, first_year: int, last_year: int) -> int:
    """A random date as the integer YYYYMMDD."""
    return int(rng.integers(first_year, last_year + 1)) * 10_000 + int(rng.integers(1, 13)) * 100 \
        + int(rng.integers(1, 29))


def _stored_range(pixels: np.ndarray, low: int, high: int) -> np.ndarray:
    """The image's min..max stretched onto the stored integers ``low``..``high`` (uint16)."""
    scaled = (pixels - pixels.min()) / (pixels.max() - pixels.min())
    return np.round(low + scaled * (high - low)).astype(np.uint16)


def _write_csv_gz(frame: pd.DataFrame, path: Path) -> None:
    """Gzipped CSV with a zero timestamp in the gzip header, so the bytes depend on the data only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(frame.to_csv(index=False).encode(), mtime=0))


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
