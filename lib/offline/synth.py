"""The phantom: procedural PA chest radiographs, the region each finding occupies, and the pretraining pool.

``render_radiograph`` draws a procedural PA chest phantom (lungs, mediastinum, heart, spine, ribs,
clavicles, soft tissue, vessel markings, noise) with any of the four findings of
``lib.protocol.data.FINDINGS`` drawn large enough to be unambiguous at 64 x 64 px:

* cardiomegaly: cardiothoracic ratio 0.62-0.72 (normal 0.36-0.45);
* pleural effusion: tissue-dense fluid filling a lung base up to a lateral meniscus, one or both sides;
* pneumothorax: one lung collapsed towards its hilum, leaving a very dark, marking-free rim at the
  apex and lateral side bounded by a bright visceral pleural line;
* nodule: a bright disc of radius 5-7 % of the image width inside a visible lung field.

Two generators make one image. The PATIENT's (``patient``) draws the anatomy (body, lungs, heart
sizes, bones, vessel texture) and the geometry every finding would have (effusion sides and level,
pneumothorax side and collapse, the nodule's place in the patient's frame, its size and density);
the STUDY's (``rng``) draws the position (shift, scale, rotation), the exposure (background air,
gain, contrast curve), the detector blur and the noise. Two studies of one patient therefore show
the same anatomy and, where a finding is present in both, the same finding in the same place of
the body, seen in another position and exposure. Without a patient generator the patient's draws
come from ``rng`` first (an image of its own patient). Every draw happens whatever the findings are,
so the same generator states render the same image with and without a finding (the twins, ``twins``).

``finding_region`` / ``finding_boxes``: where toggling a finding can change the image, as a mask or
as boxes (the box files of ``layouts`` and ``vindr``). ``pretraining_images``: a balanced pool of
extra images (never in a dataset tree) on which the default models' vision side learns the findings.
The dataset trees are written by ``layouts`` (MIMIC-CXR-JPG, PadChest, MS-CXR boxes) and ``vindr``.
"""

from __future__ import annotations

import io
import math

import numpy as np
from PIL import Image
from scipy import ndimage

from ..protocol.data import FINDINGS

IMAGE_SIZE = 256
FINDING_PROBABILITY = 0.5  # every finding, in the "balanced" world


def render_radiograph(rng: np.random.Generator, findings: dict[str, bool], size: int = IMAGE_SIZE,
                      patient: np.random.Generator | None = None) -> np.ndarray:
    """A synthetic PA chest radiograph, ``size`` x ``size`` floats in [0, 1], bright = dense.

    ``findings`` maps finding names (keys of ``FINDINGS``) to presence; missing keys are absent.
    ``rng``: the study's generator; ``patient``: the patient's (module docstring; None: drawn from
    ``rng``). Every random draw happens whatever the findings are, so the same generator states
    render the same anatomy with and without a finding (paired counterfactual images). Shapes are
    drawn at half resolution and upsampled (they are smooth, and this halves the time); detector
    blur and noise are added at full resolution.
    """
    unknown = set(findings) - set(FINDINGS)
    if unknown:
        raise ValueError(f"unknown finding(s) {sorted(unknown)}; valid: {tuple(FINDINGS)}")
    grid = (size + 1) // 2
    p = _draw(rng, patient, grid, size)
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
        img += _nodule(p, grid)
    return _finish(_upsample(img, size), p)


# How far (px at 256) a change of the phantom's shapes can reach after upsampling (2 px) and the
# detector blur (at most 4 sigma = 4 px at 256 px: scipy truncates the Gaussian there), with 2 px spare.
REGION_MARGIN = 8


def finding_region(rng: np.random.Generator, findings: dict[str, bool], finding: str,
                   size: int = IMAGE_SIZE, margin: int | None = None,
                   patient: np.random.Generator | None = None) -> np.ndarray:
    """Boolean ``size`` x ``size`` mask of the pixels that toggling ``finding`` can change in the
    image ``render_radiograph(rng, findings, size, patient)`` would draw from the same generator
    states: the footprint of the finding (present or absent version), dilated by ``margin`` px
    (default ``REGION_MARGIN`` scaled to the size). Consumes the same draws as a render.

    Footprints: cardiomegaly, the enlarged heart; pleural effusion, the fluid below its meniscus in
    each affected lung; pneumothorax, the WHOLE lung of its side (the collapsed lung under the rim
    holds less air, so every pixel of that lung changes); nodule, its disc."""
    if finding not in FINDINGS:
        raise ValueError(f"unknown finding {finding!r}; valid: {tuple(FINDINGS)}")
    grid = (size + 1) // 2
    p = _draw(rng, patient, grid, size)
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
        foot = _nodule(p, grid)
    mask = _upsample((foot > 0).astype(np.float32), size) > 0
    margin = round(REGION_MARGIN * size / IMAGE_SIZE) if margin is None else margin
    if margin:
        mask = ndimage.binary_dilation(mask, iterations=margin)
    return mask


def finding_boxes(rng: np.random.Generator, findings: dict[str, bool], finding: str,
                  size: int = IMAGE_SIZE, patient: np.random.Generator | None = None
                  ) -> list[tuple[int, int, int, int]]:
    """The boxes a reader would mark for ``finding`` on that image: one (x0, y0, x1, y1) per
    connected part of its footprint (``finding_region`` with margin 0; two boxes for an effusion
    of both sides), in pixels, x right and y down, x1 and y1 exclusive (the box holds pixels
    x0..x1-1, y0..y1-1)."""
    parts, _ = ndimage.label(finding_region(rng, findings, finding, size, margin=0, patient=patient))
    return [(sx.start, sy.start, sx.stop, sy.stop) for sy, sx in ndimage.find_objects(parts)]


def render_lateral(rng: np.random.Generator, size: int = IMAGE_SIZE,
                   patient: np.random.Generator | None = None) -> np.ndarray:
    """A crude lateral view (patient facing image left). Lateral images are never samples; they only
    have to look lateral so that a reader that forgets the view filter is caught."""
    grid = (size + 1) // 2
    p = _draw(rng, patient, grid, size)
    u, v = _patient_coordinates(grid, p)
    body = _soft(((u - 0.5) / 0.38) ** 2 + ((v - 0.62) / 0.6) ** 6, 0.05)
    lung = _soft(((u - 0.5) / 0.25) ** 2 + ((v - 0.47) / 0.36) ** 2, 0.05) \
        * _step((p["diaphragm"] - v + 0.1 * (u - 0.5)) / 0.01)  # diaphragm lowest posteriorly
    heart = _soft(((u - 0.36) / 0.13) ** 2 + ((v - p["diaphragm"] + 0.1) / 0.15) ** 2, 0.05)
    spine = _step((0.07 - np.abs(u - 0.74)) / 0.005) * (1 + 0.3 * np.cos(2 * np.pi * v / 0.06))
    img = p["air"] + p["tissue"] * body + 2 * p["spine"] * spine * body
    img -= p["lung_air"] * lung * (1 - 0.7 * heart) * (1 - 0.5 * _markings(u, v, p))
    return _finish(_upsample(img, size), p)


def _draw(rng: np.random.Generator, patient: np.random.Generator | None, grid: int, size: int) -> dict:
    """All random numbers of one image: the patient's (from ``patient``, else first from ``rng``),
    then the study's, each in a fixed order whatever the findings are."""
    return {**_draw_patient(rng if patient is None else patient, grid), **_draw_study(rng, size)}


def _draw_study(rng: np.random.Generator, size: int) -> dict:
    """What differs between two studies of one patient: position, exposure, blur and noise (the
    noise field for the ``size``-pixel output)."""
    u = rng.uniform
    return {"shift_x": u(-0.04, 0.04), "shift_y": u(-0.04, 0.04), "scale": u(0.9, 1.05),
            "angle": math.radians(u(-4, 4)), "air": u(0.0, 0.06),
            "gamma": u(0.8, 1.25), "gain": u(0.85, 1.0), "blur": u(0.3, 1.0) * size / 256,
            "noise": u(0.01, 0.025), "noise_field": rng.standard_normal((size, size), dtype=np.float32)}


def _draw_patient(rng: np.random.Generator, grid: int) -> dict:
    """The patient's anatomy and the geometry of every finding (used only when it is present), in
    the patient's frame (texture for the ``grid``-pixel shape rendering)."""
    u = rng.uniform
    p = {
        "body_halfwidth": u(0.41, 0.47), "tissue": u(0.45, 0.55),
        "lung_offset": u(0.19, 0.215), "lung_halfwidth": u(0.14, 0.16),
        "lung_top": u(0.13, 0.18), "diaphragm": u(0.77, 0.83),
        "dome": u(0.06, 0.10), "right_dome_up": u(0.0, 0.03), "lung_air": u(0.30, 0.36),
        "ctr": u(0.36, 0.45), "ctr_big": u(0.62, 0.72), "heart_halfheight": u(0.13, 0.16),
        "spine": u(0.04, 0.08), "rib": u(0.03, 0.06), "rib_phase": u(0, 0.02),
        "hilum": u(0.5, 0.8),
        "vessel_noise": _unit_std(ndimage.gaussian_filter(
            rng.standard_normal((grid, grid), dtype=np.float32), grid / 200)),
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
    periphery. The texture is the patient's, read at the patient's coordinates (it moves with the
    study's position)."""
    near_hilum = sum(np.exp(-np.hypot(u - 0.5 - s * (p["lung_offset"] - 0.6 * p["lung_halfwidth"]),
                                      (v - 0.5) / 1.6) / 0.08) for s in (-1, 1))
    grid = p["vessel_noise"].shape[0]
    texture = ndimage.map_coordinates(p["vessel_noise"], [v * grid - 0.5, u * grid - 0.5], order=1, mode="mirror")
    vessels = np.clip(texture, 0, None) * (0.1 + 0.25 * near_hilum)
    return np.clip(vessels + p["hilum"] * near_hilum ** 3, 0, 0.8)


def _nodule(p: dict, size: int) -> np.ndarray:
    """A bright disc of radius ``nodule_radius`` x the image width (``size``: grid width), at
    ``_nodule_centre`` moved by the study's position."""
    radius = p["nodule_radius"] * size
    du, dv = (c - 0.5 for c in _nodule_centre(p, size))
    # the inverse of _patient_coordinates: patient frame -> image axis coordinates -> grid pixels
    c, s = math.cos(p["angle"]) * p["scale"], math.sin(p["angle"]) * p["scale"]
    cx = (c * du - s * dv + p["shift_x"] + 0.5) * size - 0.5
    cy = (s * du + c * dv + p["shift_y"] + 0.5) * size - 0.5
    y, x = np.ogrid[:size, :size]
    return p["nodule_density"] * _soft(((x - cx) ** 2 + (y - cy) ** 2) / radius ** 2, 0.08)


def _nodule_centre(p: dict, size: int) -> tuple[float, float]:
    """The nodule's centre (u, v) in the patient's frame: a point where the lungs outside a heart
    of normal size can hold most of the disc, found on the unmoved patient (no shift, scale or
    rotation), so that it belongs to the patient and not to a study. It does not depend on the
    other findings, so that toggling one of them (a twin) never moves the nodule."""
    u, v = _patient_coordinates(size, {**p, "shift_x": 0.0, "shift_y": 0.0, "scale": 1.0, "angle": 0.0})
    lungs = _lung(u, v, p, -1) + _lung(u, v, p, 1)
    visible = np.clip(lungs - _heart(u, v, p, p["ctr"] * (p["lung_offset"] + p["lung_halfwidth"])), 0, 1)
    room = ndimage.distance_transform_edt(visible > 0.5)
    candidates = np.flatnonzero(room >= min(0.8 * p["nodule_radius"] * size, room.max()))
    row, col = divmod(candidates[int(p["nodule_pick"] * len(candidates))], size)
    return (col + 0.5) / size, (row + 0.5) / size


def _upsample(img: np.ndarray, size: int) -> np.ndarray:
    return np.asarray(Image.fromarray(img).resize((size, size), Image.BILINEAR))


def _finish(img: np.ndarray, p: dict) -> np.ndarray:
    """Detector blur, contrast curve and quantum noise; float in [0, 1]."""
    img = ndimage.gaussian_filter(img, p["blur"])
    img = p["gain"] * np.clip(img, 0, 1) ** p["gamma"] + p["noise"] * p["noise_field"]
    return np.clip(img, 0, 1)



def generator(state: dict | None) -> np.random.Generator | None:
    """A generator in the given (PCG64) state, which draws the same numbers again (None: None)."""
    if state is None:
        return None
    rng = np.random.Generator(np.random.PCG64())
    rng.bit_generator.state = state
    return rng


def patient_state(rng: np.random.Generator) -> dict:
    """The starting state of a new patient's generator, seeded from ``rng`` (pass
    ``generator(state)`` to every render of that patient's images)."""
    return np.random.Generator(np.random.PCG64(int(rng.integers(2 ** 63)))).bit_generator.state



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

