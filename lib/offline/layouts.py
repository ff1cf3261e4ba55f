"""The MIMIC-CXR-JPG and PadChest layouts of the offline world, and MS-CXR's box file for the MIMIC-like tree.

``write_mimic`` / ``write_padchest`` write synthetic images (``lib.offline.synth``) in trees that
``lib.protocol.data.iter_samples`` reads exactly like the real MIMIC-CXR-JPG 2.0.0 and PadChest
releases, with their label quirks. Same seed -> identical bytes.

Follow-up studies: a patient (MIMIC subject, PadChest PatientID) has one patient generator
(``synth.patient_state``) shared by all of their studies, so their images show the same anatomy and
finding geometry in another position, exposure, blur and noise; findings are drawn per study, so a
patient's other study has the opposite label for a finding with the finding's prevalence. Study
dates of one patient are in order, 1-730 days apart. ``MIMIC_STUDIES`` / ``PADCHEST_STUDIES``: the
number of studies per patient, drawn uniformly from the tuple; more patients have several studies
than in the first offline world (MIMIC-like 75 % of subjects, PadChest-like 67 % of patients), so
that a test split holds follow-ups for a fair share of its samples (real MIMIC-CXR has ~3.5
studies per subject, PadChest ~1.6 per patient).

MS-CXR (``write_mimic(..., box_file=...)``): a box for every present finding on every frontal
image, in ``MS_CXR_COLUMNS`` (MS-CXR v1.0.0's columns): the bounding box of each connected part of
the finding's footprint (``synth.finding_boxes``) in pixels of the stored 256 px image. Categories
are the finding's CheXpert column name: MS-CXR's own names for cardiomegaly, pleural effusion and
pneumothorax; "Lung Lesion" for the nodule, which MS-CXR's eight categories lack (the offline
world's extension, so that every finding can be occluded). A pneumothorax box covers its whole lung
side (its footprint: the collapsed lung under the rim changes too).
"""

from __future__ import annotations

import datetime
import gzip
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from ..protocol.data import FINDINGS, MIMIC_CHEXPERT, MIMIC_METADATA, MIMIC_SPLIT, PADCHEST_CSV, split_of_patient
from .synth import (FINDING_PROBABILITY, IMAGE_SIZE, finding_boxes, generator, patient_state,
                    render_lateral, render_radiograph)
from .twins import TwinSource, stored_range, write_twins

MIMIC_STUDIES = (1, 2, 3, 3)
PADCHEST_STUDIES = (1, 2, 2)
MS_CXR_DIR = "ms-cxr"
MS_CXR_FILE = "MS_CXR_Local_Alignment_v1.0.0.csv"
MS_CXR_COLUMNS = ("dicom_id", "category_name", "label_text", "path", "x", "y", "w", "h",
                  "image_width", "image_height")
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


def finding_rates(rates) -> dict[str, float]:
    """Per-finding probabilities: a number for all of them, or a dict (missing: balanced); None:
    balanced."""
    if rates is None:
        rates = FINDING_PROBABILITY
    if isinstance(rates, (int, float)):
        return {f: float(rates) for f in FINDINGS}
    return {f: float(rates.get(f, FINDING_PROBABILITY)) for f in FINDINGS}



def write_mimic(root, n_images: int, seed: int, prevalence=None, twins_dir=None,
                split: str | None = None, box_file=None) -> Path:
    """Write ``n_images`` synthetic images in the MIMIC-CXR-JPG 2.0.0 layout under ``root``.

    Subjects have 1-3 studies (``MIMIC_STUDIES``, follow-ups: module docstring); a study is a PA (with a lateral ~30 % of the time) or a portable AP,
    sometimes with a repeated frontal; ~15 % of images are laterals. Findings are drawn per study
    (the CheXpert labels are per study): each present with its probability in ``prevalence``
    (a number or {finding: rate}; default 0.5) and shown on every frontal image of the study. CheXpert semantics: present 1.0 (5 % written -1.0, uncertain),
    absent 0.0 (10 % left blank, not mentioned), "No Finding" 1.0 when none is present, the columns
    the phantom never draws blank. Subjects are 70 % train, 3 % validate, 27 % test. Existing files
    are overwritten; the CSVs define the dataset. With ``twins_dir``, the twins of the test
    split's frontal images are written there (``write_twins``). ``split``: every subject in that
    split instead (a reference set). ``box_file``: where to write the MS-CXR box file.
    """
    rng = np.random.default_rng([seed, 0])
    root = Path(root)
    rates = finding_rates(prevalence)
    ids = _UniqueIds(rng)
    metadata, splits, chexpert, twins, boxes = [], [], [], [], []
    while len(metadata) < n_images:
        subject = ids.draw(10_000_000, 20_000_000)
        draw = rng.random()
        subject_split = split or ("train" if draw < 0.70 else "validate" if draw < 0.73 else "test")
        patient = patient_state(rng)
        # MIMIC shifts dates into the 22nd century
        for date in _study_dates(rng, int(rng.choice(MIMIC_STUDIES)), 2110, 2210):
            study = ids.draw(50_000_000, 60_000_000)
            findings = {f: bool(rng.random() < rates[f]) for f in FINDINGS}
            chexpert.append({"subject_id": subject, "study_id": study,
                             **_chexpert_row(rng, findings)})
            portable = rng.random() < 0.3
            frontal = "AP" if portable else "PA"
            views = [frontal] + (["LATERAL"] if not portable and rng.random() < 0.3 else [])
            views += [frontal] if rng.random() < 0.1 else []
            time = round(int(rng.integers(0, 24)) * 10_000 + int(rng.integers(0, 60)) * 100
                         + float(rng.uniform(0, 60)), 3)  # HHMMSS.fff
            for view in views[:n_images - len(metadata)]:
                dicom_id = "-".join(rng.bytes(4).hex() for _ in range(5))
                state = rng.bit_generator.state
                relative = f"files/p{str(subject)[:2]}/p{subject}/s{study}/{dicom_id}.jpg"
                if view == "LATERAL":
                    pixels = render_lateral(rng, patient=generator(patient))
                else:
                    pixels = render_radiograph(rng, findings, patient=generator(patient))
                    if subject_split == "test":
                        twins.append(TwinSource(dicom_id, state, patient, findings))
                    if box_file is not None:
                        boxes += _ms_cxr_rows(dicom_id, relative, TwinSource(dicom_id, state, patient, findings))
                path = root / relative
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
    if box_file is not None:
        Path(box_file).parent.mkdir(parents=True, exist_ok=True)
        pd.DataFrame(boxes, columns=list(MS_CXR_COLUMNS)).to_csv(box_file, index=False)
    return root


def _ms_cxr_rows(dicom_id: str, path: str, image: TwinSource) -> list[dict]:
    """The MS-CXR rows of one frontal image: one per box of each present finding."""
    rows = []
    for finding in (f for f, present in image.findings.items() if present):
        for x0, y0, x1, y1 in finding_boxes(generator(image.state), image.findings, finding,
                                            patient=generator(image.patient_state)):
            rows.append({"dicom_id": dicom_id, "category_name": FINDINGS[finding]["mimic-cxr"],
                         "label_text": box_phrase(finding, (x0 + x1) / 2), "path": path,
                         "x": x0, "y": y0, "w": x1 - x0, "h": y1 - y0,
                         "image_width": IMAGE_SIZE, "image_height": IMAGE_SIZE})
    return rows


def box_phrase(finding: str, centre_x: float, size: int = IMAGE_SIZE) -> str:
    """A report phrase for a box (MS-CXR's label_text): the patient's side is the image's other
    side (a PA view shows the patient's right lung on the image's left)."""
    side = "right" if centre_x < size / 2 else "left"
    return {"cardiomegaly": "enlarged cardiac silhouette", "pleural effusion": f"{side} pleural effusion",
            "pneumothorax": f"{side} pneumothorax", "nodule": f"{side} lung nodule"}[finding]


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

    Patients have 1-2 studies (``PADCHEST_STUDIES``, follow-ups: module docstring) of one frontal image (PA 70 %, AP 15 %, AP_horizontal 15 %) plus a
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
    rates = finding_rates(prevalence)
    rows, twins = [], []
    while len(rows) < n_images:
        patient = _digits(rng, 36)
        while split is not None and split_of_patient(patient) != split:
            patient = _digits(rng, 36)
        birth, sex = float(rng.integers(1925, 2000)), str(rng.choice(["M", "F"]))
        patient_seed = patient_state(rng)
        for date in _study_dates(rng, int(rng.choice(PADCHEST_STUDIES)), 2009, 2018):
            study = _digits(rng, 38)
            findings = {f: bool(rng.random() < rates[f]) for f in FINDINGS}
            labels = _padchest_labels(rng, findings)
            frontal = str(rng.choice(["PA", "AP", "AP_horizontal"], p=[0.7, 0.15, 0.15]))
            views = [frontal] + (["L"] if rng.random() < 0.11 else [])
            report = {"StudyID": study, "PatientID": patient, "PatientBirth": birth,
                      "PatientSex_DICOM": sex, "StudyDate_DICOM": date,
                      "ReportID": int(rng.integers(1, 200_000)),
                      "MethodLabel": "Physician" if rng.random() < 0.27 else "RNN_model", **labels}
            for view in views[:n_images - len(rows)]:
                image_id = f"{study}_{''.join(rng.choice(list(ID_SUFFIX_CHARS), 6))}.png"
                image_dir = int(rng.integers(0, 3))
                state = rng.bit_generator.state
                if view == "L":
                    pixels = render_lateral(rng, patient=generator(patient_seed))
                else:
                    pixels = render_radiograph(rng, findings, patient=generator(patient_seed))
                low, high = int(rng.integers(200, 801)), int(rng.integers(2500, 4096))
                if view != "L" and split_of_patient(patient) == "test":
                    twins.append(TwinSource(Path(image_id).stem, state, patient_seed, findings, (low, high)))
                path = root / str(image_dir) / image_id
                path.parent.mkdir(parents=True, exist_ok=True)
                # fast zlib level: the noise makes these PNGs nearly incompressible anyway
                Image.fromarray(stored_range(pixels, low, high)).save(path, compress_level=1)
                rows.append({**report, **_padchest_dicom_fields(rng, view), "ImageID": image_id,
                             "ImageDir": image_dir, "Projection": view,
                             "MethodProjection": "Manual review of DICOM fields", "Pediatric": "No"})
    frame = pd.DataFrame(rows, columns=list(PADCHEST_COLUMNS))
    (root / PADCHEST_CSV).write_bytes(frame.to_csv(index=False).encode())
    if twins_dir is not None:
        write_twins(twins_dir, "padchest", twins)
    return root



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


def _study_dates(rng: np.random.Generator, n: int, first_year: int, last_year: int) -> list[int]:
    """``n`` study dates of one patient as integers YYYYMMDD: the first in ``first_year``..
    ``last_year``, each next one 1-730 days after the one before."""
    day = datetime.date(int(rng.integers(first_year, last_year + 1)), int(rng.integers(1, 13)),
                        int(rng.integers(1, 29)))
    dates = [day]
    for _ in range(n - 1):
        dates.append(dates[-1] + datetime.timedelta(days=int(rng.integers(1, 731))))
    return [int(d.strftime("%Y%m%d")) for d in dates]


def _write_csv_gz(frame: pd.DataFrame, path: Path) -> None:
    """Gzipped CSV with a zero timestamp in the gzip header, so the bytes depend on the data only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(frame.to_csv(index=False).encode(), mtime=0))

