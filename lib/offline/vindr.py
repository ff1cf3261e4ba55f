"""The VinDr-CXR layout of the offline world: DICOM images, labels and boxes per radiologist.

``write_vindr`` writes synthetic PA images (``lib.offline.synth``) in the layout of VinDr-CXR
1.0.0 on PhysioNet (Nguyen et al. 2022, Scientific Data 9:429; https://physionet.org/content/vindr-cxr/1.0.0/):

* ``train/<image_id>.dicom``, ``test/<image_id>.dicom``: MONOCHROME2 DICOM (Digital X-Ray, 16 bits
  allocated, 12 or 14 stored, each image with its own stored range, pixel spacing 1.4 mm for the
  256 px, 36 cm field), image ids of 32 hex digits as in the release, ~70 % train / 30 % test;
* ``annotations/image_labels_{train,test}.csv``: one 0/1 column per VinDr class (``VINDR_CLASSES``,
  the release's 22 local and 6 global labels); train: one row per (image, radiologist), test: one
  consensus row per image (no ``rad_id``);
* ``annotations/annotations_{train,test}.csv``: a box per (image, radiologist, marked finding, part
  of its footprint) in the DICOM's pixels (x_min, y_min, x_max, y_max; x right, y down); a reader
  who marks nothing has one "No finding" row with empty coordinates.

The four default findings are VinDr's "Cardiomegaly", "Pleural effusion", "Pneumothorax" and
"Nodule/Mass"; the other classes are never drawn (always 0). Each train image is read by 3 of 17
radiologists (R1-R17), each of whom calls each finding other than the truth with probability
``RADIOLOGIST_DISAGREES`` and moves every box edge by up to ``BOX_JITTER`` px; a radiologist who
calls an absent finding present marks where it would be (its footprint when present). Test images
carry the truth and the exact boxes (the boxes of ``synth.finding_boxes``). VinDr has no patient
ids: every image is its own patient (no follow-up studies). Twins of every test image are written
like PadChest's (``lib.offline.twins``). Same seed -> identical bytes.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pandas as pd
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from ..protocol.data import FINDINGS
from .layouts import finding_rates
from .synth import IMAGE_SIZE, finding_boxes, generator, render_radiograph
from .twins import TwinSource, stored_range, write_twins

# The release's classes in the column order of image_labels_{train,test}.csv: 22 local labels
# (boxed), then 6 global labels (diagnoses) with "No finding" last.
VINDR_CLASSES = ("Aortic enlargement", "Atelectasis", "Calcification", "Cardiomegaly",
                 "Clavicle fracture", "Consolidation", "Edema", "Emphysema", "Enlarged PA", "ILD",
                 "Infiltration", "Lung Opacity", "Lung cavity", "Lung cyst", "Mediastinal shift",
                 "Nodule/Mass", "Pleural effusion", "Pleural thickening", "Pneumothorax",
                 "Pulmonary fibrosis", "Rib fracture", "Other lesion", "COPD", "Lung tumor",
                 "Pneumonia", "Tuberculosis", "Other diseases", "No finding")
NO_FINDING = "No finding"
VINDR_FINDINGS = {"cardiomegaly": "Cardiomegaly", "pleural effusion": "Pleural effusion",
                  "pneumothorax": "Pneumothorax", "nodule": "Nodule/Mass"}
BOX_COLUMNS = ("class_name", "x_min", "y_min", "x_max", "y_max")
SPLITS = ("train", "test")
TEST_SHARE = 0.3
RADIOLOGISTS = tuple(f"R{i}" for i in range(1, 18))
READERS_PER_TRAIN_IMAGE = 3
RADIOLOGIST_DISAGREES = 0.05
BOX_JITTER = 3.0  # px, per box edge and radiologist
PIXEL_SPACING_MM = 1.4
DX_FOR_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.1"  # SOP class: Digital X-Ray Image, for presentation


def label_columns(split: str) -> tuple[str, ...]:
    """The columns of ``image_labels_<split>.csv``."""
    return ("image_id", *(("rad_id",) if split == "train" else ()), *VINDR_CLASSES)


def annotation_columns(split: str) -> tuple[str, ...]:
    """The columns of ``annotations_<split>.csv``."""
    return ("image_id", *(("rad_id",) if split == "train" else ()), *BOX_COLUMNS)


def write_vindr(root, n_images: int, seed: int, prevalence=None, twins_dir=None) -> Path:
    """Write ``n_images`` synthetic images in the VinDr-CXR 1.0.0 layout under ``root`` (module
    docstring); each default finding present with its probability in ``prevalence`` (a number or
    {finding: rate}; default 0.5). With ``twins_dir``, the twins of the test images are written
    there. Existing files are overwritten; the CSVs define the dataset."""
    rng = np.random.default_rng([seed, 3])
    root, rates = Path(root), finding_rates(prevalence)
    labels = {s: [] for s in SPLITS}
    boxes = {s: [] for s in SPLITS}
    twins = []
    for _ in range(n_images):
        image_id = rng.bytes(16).hex()
        split = "test" if rng.random() < TEST_SHARE else "train"
        findings = {f: bool(rng.random() < rates[f]) for f in FINDINGS}
        image = TwinSource(image_id, rng.bit_generator.state, None, findings)
        pixels = render_radiograph(rng, findings)
        parts = functools.cache(lambda f, image=image: finding_boxes(generator(image.state), image.findings, f))
        bits = int(rng.choice([12, 14]))
        low, high = int(rng.integers(0, 2 ** bits // 8)), int(rng.integers(2 ** bits * 3 // 4, 2 ** bits))
        _write_dicom(root / split / f"{image_id}.dicom", stored_range(pixels, low, high), image_id, bits, rng)
        if split == "train":
            for rad in rng.choice(RADIOLOGISTS, READERS_PER_TRAIN_IMAGE, replace=False):
                called = {f: present != bool(rng.random() < RADIOLOGIST_DISAGREES) for f, present in findings.items()}
                _read(image.image_id, called, parts, {"rad_id": str(rad)}, labels[split], boxes[split], rng)
        else:
            _read(image_id, findings, parts, {}, labels[split], boxes[split], None)
            twins.append(image._replace(stored=(low, high)))
    folder = root / "annotations"
    folder.mkdir(parents=True, exist_ok=True)
    for split in SPLITS:
        pd.DataFrame(labels[split], columns=list(label_columns(split))).to_csv(
            folder / f"image_labels_{split}.csv", index=False)
        pd.DataFrame(boxes[split], columns=list(annotation_columns(split))).to_csv(
            folder / f"annotations_{split}.csv", index=False)
    if twins_dir is not None:
        write_twins(twins_dir, "vindr-cxr", twins)
    return root


def _read(image_id: str, called: dict[str, bool], parts, reader: dict, labels: list, boxes: list,
          rng: np.random.Generator | None) -> None:
    """One reading of an image (a radiologist's, or the test consensus with ``rng`` None: no
    jitter) that calls the findings ``called`` present, boxing ``parts(finding)``: its label row
    and its box rows, appended to ``labels`` and ``boxes``."""
    marked = [VINDR_FINDINGS[f] for f, present in called.items() if present]
    labels.append({"image_id": image_id, **reader, **{c: int(c in marked) for c in VINDR_CLASSES},
                   NO_FINDING: int(not marked)})
    if not marked:
        boxes.append({"image_id": image_id, **reader, "class_name": NO_FINDING})
    for finding in (f for f, present in called.items() if present):
        for box in parts(finding):
            if rng is not None:
                box = np.clip(np.asarray(box) + rng.uniform(-BOX_JITTER, BOX_JITTER, 4), 0, IMAGE_SIZE)
            boxes.append({"image_id": image_id, **reader, "class_name": VINDR_FINDINGS[finding],
                          **dict(zip(BOX_COLUMNS[1:], (round(float(v), 2) for v in box)))})


def _write_dicom(path: Path, stored: np.ndarray, image_id: str, bits: int, rng: np.random.Generator) -> None:
    """A DICOM file of the 16-bit ``stored`` pixels (``bits`` of them used), MONOCHROME2, with the
    few attributes the de-identified release keeps; UIDs derived from the image id (same bytes
    for the same seed)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = DX_FOR_PRESENTATION
    meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[image_id, "instance"])
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = DX_FOR_PRESENTATION, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid(entropy_srcs=[image_id, "study"])
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=[image_id, "series"])
    ds.Modality, ds.BodyPartExamined, ds.ViewPosition = "DX", "CHEST", "PA"
    ds.PatientSex = str(rng.choice(["M", "F"]))
    ds.PatientAge = f"{int(rng.integers(18, 90)):03d}Y"
    ds.PixelSpacing = [PIXEL_SPACING_MM, PIXEL_SPACING_MM]
    ds.set_pixel_data(stored, photometric_interpretation="MONOCHROME2", bits_stored=bits,
                      generate_instance_uid=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
