"""Registration of one study onto another of the same patient: the follow-up test's image brought
into the sample's position and exposure before it is asked the sample's question
(lib.protocol.local_tests). Definition, written once, here.

register(other, fixed):
- position: the similarity transform (shift, scale, rotation, in fractions of the image) that
  maximizes the normalized cross-correlation of ``fixed`` and the transformed ``other``, both
  greyscale, resized to ``SIDE`` x ``SIDE`` px and smoothed (Gaussian, ``SMOOTH`` px), found by
  Powell's method from the identity; applied to ``other`` at ``fixed``'s size (linear
  interpolation, edges extended). Coordinates are fractions of each image's width and height, so
  images of different sizes register.
- exposure: the registered image's grey levels mapped onto ``fixed``'s by a monotone quadratic
  grey-level curve fit to the two images' corresponding pixels by least trimmed squares (refit
  on the ``EXPOSURE_KEEP`` share of pixels the last fit fits best, until that share stops
  changing; an affine line where the quadratic would not rise over the image's grey levels, and
  the grey levels left as they are where neither rises). Where the two studies differ (the
  finding, what changed in the patient) the pixels are outliers of that fit, so the finding keeps
  its own contrast. Histogram matching, used before, forces the whole grey-level
  distribution onto the sample's and so dimmed the finding (its contrast against the phantom's
  twin: tests/test_registration.py).

Why: two studies of one patient differ in position and exposure besides the finding, and a model
can answer differently for those alone; the registered study differs from the sample's image in
the finding, the noise, the detector's sharpness and what changed in the patient. A global
similarity transform does not undo breathing, rotation out of the film's plane or a different
projection (AP vs PA) on real films; a finding larger than ``1 - EXPOSURE_KEEP`` of the image
pulls the grey-level curve towards it.
"""
from __future__ import annotations

import numpy as np
from PIL import Image
from scipy import ndimage, optimize

SIDE = 64          # px: where the transform is searched
SMOOTH = 1.0       # px at SIDE: the search compares shapes, not noise
EXPOSURE_KEEP = 0.8   # share of pixels each round of the grey-level fit keeps (the rest: outliers)
EXPOSURE_ROUNDS = 50      # at most; the fit stops when the pixels it keeps stop changing
EXPOSURE_FIT_PIXELS = 128 * 128
# the search's limits: shift (fractions of the image), log scale, angle (radians); beyond them two
# films of one patient are not related by a similarity
BOUNDS = ((-0.25, 0.25), (-0.25, 0.25), (-0.3, 0.3), (-0.35, 0.35))
METHOD = "similarity-ncc-64/trimmed-quadratic-grey"   # in each follow-up record's fingerprint


def register(other: Image.Image, fixed: Image.Image) -> Image.Image:
    """``other`` moved onto ``fixed``'s position and exposure, at ``fixed``'s size and mode."""
    target = _grey(fixed)
    moved = warp(_grey(other), position(other, fixed), target.shape)
    matched = match_exposure(moved, target)
    out = Image.fromarray(np.clip(np.round(matched), 0, 255).astype(np.uint8), "L")
    return out.convert(fixed.mode) if fixed.mode != "L" else out


def position(other: Image.Image, fixed: Image.Image) -> np.ndarray:
    """The similarity ``register`` applies to ``other`` (``similarity`` at ``SIDE`` px)."""
    return similarity(_grey(other, (SIDE, SIDE)), _grey(fixed, (SIDE, SIDE)))


def similarity(moving: np.ndarray, fixed: np.ndarray) -> np.ndarray:
    """(shift x, shift y, log scale, angle), within ``BOUNDS``, taking ``fixed``'s frame to
    ``moving``'s that maximize their normalized cross-correlation after smoothing."""
    moving, fixed = ndimage.gaussian_filter(moving, SMOOTH), ndimage.gaussian_filter(fixed, SMOOTH)
    result = optimize.minimize(lambda t: -_ncc(warp(moving, t, fixed.shape), fixed), np.zeros(4),
                               method="Powell", bounds=BOUNDS, options={"xtol": 1e-3, "ftol": 1e-5})
    return result.x


def warp(image: np.ndarray, theta, shape: tuple[int, int]) -> np.ndarray:
    """``image`` sampled on a ``shape`` grid through the similarity ``theta``: the output point at
    fractional position q (pixel centres, (row, col)) reads ``image`` at s R (q - c) + c + shift,
    c the centre, s = exp(log scale), R the rotation by the angle."""
    shift_x, shift_y, log_scale, angle = theta
    cos, sin = np.cos(angle), np.sin(angle)
    turn = np.exp(log_scale) * np.array([[cos, -sin], [sin, cos]])
    to_fraction, to_pixels = np.diag([1 / shape[0], 1 / shape[1]]), np.diag(image.shape).astype(float)
    centre = np.full(2, 0.5)
    matrix = to_pixels @ turn @ to_fraction
    offset = matrix @ centre + to_pixels @ (centre + np.array([shift_y, shift_x]) - turn @ centre) - 0.5
    return ndimage.affine_transform(image, matrix, offset=offset, output_shape=shape, order=1, mode="nearest")


def match_exposure(image: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """``image``'s grey levels through the curve that best maps them onto ``reference``'s at the
    same pixels (two registered images of one shape): a quadratic fit by least trimmed squares
    (``_trimmed_fit``: the ``EXPOSURE_KEEP`` share of pixels it fits best); an affine line, fit the
    same way, where the quadratic falls anywhere between the image's darkest and brightest level;
    ``image`` itself where that line falls too (or the image is flat). Fit on a regular grid of
    about ``EXPOSURE_FIT_PIXELS`` pixels (a full-size film has millions)."""
    lowest, highest = image.min(), image.max()
    if highest <= lowest:
        return image
    step = max(1, int(np.ceil(np.sqrt(image.size / EXPOSURE_FIT_PIXELS))))
    x, y = image[::step, ::step].ravel(), reference[::step, ::step].ravel()
    for degree in (2, 1):
        curve = _trimmed_fit(x, y, degree)
        slope = np.polyder(curve)
        if np.polyval(slope, lowest) > 0 and np.polyval(slope, highest) > 0:
            return np.polyval(curve, image)
    return image


def _trimmed_fit(x: np.ndarray, y: np.ndarray, degree: int) -> np.ndarray:
    """Least trimmed squares by concentration steps (each refit on the pixels the last fit fits
    best never raises the trimmed sum of squares), from the least-squares fit of every pixel."""
    keep = np.ones(x.size, dtype=bool)
    for _ in range(EXPOSURE_ROUNDS):
        curve = np.polyfit(x[keep], y[keep], degree)
        residual = np.abs(np.polyval(curve, x) - y)
        kept = residual <= np.quantile(residual, EXPOSURE_KEEP)
        if np.array_equal(kept, keep):
            break
        keep = kept
    return curve


def _grey(image: Image.Image, size: tuple[int, int] | None = None) -> np.ndarray:
    grey = image.convert("L")
    if size is not None:
        grey = grey.resize(size, Image.BILINEAR)
    return np.asarray(grey, dtype=np.float64)


def _ncc(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    norm = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / norm) if norm > 0 else 0.0
