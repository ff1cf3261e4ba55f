"""Decoding radiographs: every image file a reader names becomes an 8-bit grayscale image, bright =
dense, or a counted skip (``load_image``), with the pixel limits that keep a hostile file from
exhausting memory.

Load-time skip reasons: ``image_missing``, ``image_unreadable``, ``image_too_small`` (shorter side <
``MIN_IMAGE_SIDE``), ``image_too_large`` (width x height, read from the file's header before any
pixel is decoded, above the params' ``max_image_pixels``, default ``MAX_IMAGE_PIXELS``),
``image_non_finite`` (a float image with a NaN or infinite pixel, which min..max scaling would turn
into a black image).
"""

from __future__ import annotations

import collections
import warnings
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_modality_lut, apply_voi_lut

from .reading import Sample, skip

# An image whose shorter side is below this many pixels is skipped (image_too_small): vision
# towers upsample it to 224-896 px, so it carries no usable detail (a 1x1 image scored as normal).
MIN_IMAGE_SIDE = 32
# An image with more pixels than this is skipped (image_too_large) before it is decoded: a 179 KB
# PNG can declare 9600 x 9600 16-bit pixels (gigabytes once decoded and scaled). 40 M pixels is
# above every radiograph of MIMIC-CXR, PadChest and VinDr-CXR (at most about 4300 x 4300) and
# decodes in well under 2 GB.
MAX_IMAGE_PIXELS = 40_000_000
# DICOM file suffixes: ".dcm", and ".dicom" as VinDr-CXR names its files.
DICOM_SUFFIXES = (".dcm", ".dicom")

# What a damaged or non-image file raises while being decoded (FileNotFoundError is handled first).
READ_ERRORS = (OSError, ValueError, SyntaxError, EOFError, InvalidDicomError,
               Image.DecompressionBombError)


class ImageTooLarge(ValueError):
    """An image file whose header declares more pixels than allowed (nothing decoded)."""


class NonFinitePixels(ValueError):
    """An image with a NaN or infinite pixel value."""


def read_xray(path, max_pixels: int = MAX_IMAGE_PIXELS) -> Image.Image:
    """Read a radiograph as an 8-bit grayscale ("L") image, bright = dense.

    Raises ImageTooLarge, before decoding, when the header declares more than ``max_pixels``
    pixels, and NonFinitePixels for a float image with a NaN or infinite value.

    * 8-bit JPEG/PNG: as stored (colour converted to luminance).
    * 16-bit PNG (mode I;16 / I): the actual stored min..max mapped linearly onto 0..255 (PadChest uses
      12 of the 16 bits, with a different range per image).
    * DICOM (``DICOM_SUFFIXES``): modality LUT, then the VOI LUT / window when the file has one,
      then min..max onto 0..255; MONOCHROME1 is inverted so bone is bright.
    """
    path = Path(path)
    if path.suffix.lower() in DICOM_SUFFIXES:
        return _read_dicom(path, max_pixels)
    try:
        with warnings.catch_warnings():  # Pillow warns above its own cap; ours is checked below
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            opened = Image.open(path)
    except Image.DecompressionBombError as err:  # Pillow's own hard cap, far above ours
        raise ImageTooLarge(str(err)) from None
    with opened as image:
        _check_pixels(image.size[0] * image.size[1], max_pixels, f"{image.size[0]}x{image.size[1]}")
        image.load()
        if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
            return _to_image(_scale01(np.asarray(image, dtype=np.float64)))
        return image.convert("L")


def dicom_size(path) -> tuple[int, int]:
    """(width, height) in pixels from a DICOM file's header (Columns, Rows), no pixel decoded;
    raises one of READ_ERRORS (or FileNotFoundError) for a file that is not a readable DICOM."""
    ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["Rows", "Columns"])
    try:
        return int(ds.Columns), int(ds.Rows)
    except AttributeError:
        raise ValueError(f"DICOM file {path} has no Rows/Columns") from None


def _check_pixels(n: int, max_pixels: int, size: str) -> None:
    if n > max_pixels:
        raise ImageTooLarge(f"{size} px = {n:,} pixels (max_image_pixels {max_pixels:,})")


def _read_dicom(path: Path, max_pixels: int) -> Image.Image:
    ds = pydicom.dcmread(path)
    if "PixelData" not in ds:
        raise ValueError(f"DICOM file {path} has no pixel data")
    frames = int(ds.get("NumberOfFrames") or 1)
    _check_pixels(int(ds.Rows) * int(ds.Columns) * frames, max_pixels,
                  f"{ds.Columns}x{ds.Rows}" + (f"x{frames} frames" if frames > 1 else ""))
    pixels = apply_modality_lut(ds.pixel_array, ds)
    if pixels.ndim != 2:
        raise ValueError(f"DICOM file {path} is not a single grayscale frame: shape {pixels.shape}")
    if "VOILUTSequence" in ds or ("WindowCenter" in ds and "WindowWidth" in ds):
        pixels = apply_voi_lut(pixels, ds)
    scaled = _scale01(pixels.astype(np.float64))
    if ds.get("PhotometricInterpretation") == "MONOCHROME1":
        scaled = 1.0 - scaled
    return _to_image(scaled)


def _scale01(values: np.ndarray) -> np.ndarray:
    """Map the array's min..max linearly onto 0..1 (a constant image becomes 0); NonFinitePixels
    when a value is NaN or infinite."""
    finite = np.isfinite(values)
    if not finite.all():
        raise NonFinitePixels(f"{values.size - int(finite.sum()):,} of {values.size:,} pixels are NaN or infinite")
    lo, hi = float(values.min()), float(values.max())
    return (values - lo) / (hi - lo) if hi > lo else np.zeros_like(values)


def _to_image(scaled: np.ndarray) -> Image.Image:
    """An "L" image from values in 0..1."""
    return Image.fromarray(np.round(scaled * 255).astype(np.uint8))


def load_image(sample: Sample, skipped: collections.Counter | None = None,
               max_pixels: int = MAX_IMAGE_PIXELS) -> Image.Image | None:
    """The sample's radiograph as an "L" image, or None (counted in ``skipped``) when the file is
    missing (``image_missing``), declares more than ``max_pixels`` pixels (``image_too_large``),
    has a non-finite pixel (``image_non_finite``), cannot be decoded (``image_unreadable``) or its
    shorter side is below ``MIN_IMAGE_SIDE`` (``image_too_small``). Never raises for a bad file."""
    skipped = collections.Counter() if skipped is None else skipped
    try:
        image = read_xray(sample.image_path, max_pixels)
    except FileNotFoundError:
        skip(skipped, "image_missing", sample.sample_id, detail=sample.image_path)
        return None
    except ImageTooLarge as err:
        skip(skipped, "image_too_large", sample.sample_id, detail=f"{sample.image_path}: {err}")
        return None
    except NonFinitePixels as err:
        skip(skipped, "image_non_finite", sample.sample_id, detail=f"{sample.image_path}: {err}")
        return None
    except READ_ERRORS as err:
        skip(skipped, "image_unreadable", sample.sample_id,
             detail=f"{sample.image_path}: {type(err).__name__}")
        return None
    if min(image.size) < MIN_IMAGE_SIDE:
        skip(skipped, "image_too_small", sample.sample_id,
             detail=f"{sample.image_path}: {image.size[0]}x{image.size[1]} px "
                    f"(minimum side {MIN_IMAGE_SIDE})")
        return None
    return image
