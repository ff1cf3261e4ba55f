"""The finding -> dataset-label mapping, as data in one place (read by ``lib.protocol.data``).

Owns which dataset labels imply each canonical finding; it reads no files. A finding is present in
a PadChest image when ANY of its PadChest labels is among the image's labels, and in a MIMIC-CXR
study when its CheXpert (or NegBio) column is 1.0.

Sources:

* MIMIC-CXR-JPG 2.0.0: the 14 columns of ``mimic-cxr-2.0.0-chexpert.csv`` /
  ``mimic-cxr-2.0.0-negbio.csv`` (Johnson et al. 2019; Irvin et al. 2019, CheXpert labeler).
  ``No Finding`` is not a finding here. ``Lung Lesion`` is asked about as "nodule" (the question
  sets of the offline default).
* PadChest: the label hierarchy of Bustos et al., "PadChest: A large chest x-ray image dataset with
  multi-label annotated reports", Medical Image Analysis 66 (2020) 101797 (the label tree, Fig. 4
  and the tree file published with the dataset). Each finding maps to its tree node and every label
  under it, e.g. ``pleural effusion`` <- ``loculated pleural effusion``, ``loculated fissural
  effusion``, ``hydropneumothorax``, ``empyema``, ``hemothorax``; ``nodule`` <- ``multiple
  nodules``. ``pseudonodule`` (with ``nipple shadow``, ``end on vessel`` under it) and
  ``reticulonodular interstitial pattern`` (under ``infiltrates``) are NOT nodules;
  ``hydropneumothorax`` sits under both pleural effusion and pneumothorax.
  ``lung opacity`` and ``support devices`` have no single PadChest tree node, so they are
  MIMIC-only (``None``); a params ``label_policy.label_map`` may add them.
* VinDr-CXR 1.0.0: the class names of ``image_labels_{train,test}.csv`` (22 local labels, with
  boxes, and 6 global ones; Nguyen et al., Scientific Data 9, 429 (2022), Table 1), names as
  published (case kept). A finding maps to the classes that name it: ``nodule`` <- ``Nodule/Mass``,
  ``fracture`` <- ``Clavicle fracture``, ``Rib fracture``; ``pleural other`` <- ``Pleural
  thickening``; ``enlarged cardiomediastinum`` <- ``Aortic enlargement`` (as PadChest's aortic
  elongation); ``lung opacity`` <- VinDr's own ``Lung Opacity`` class only (CheXpert's Lung Opacity
  also covers edema, consolidation and atelectasis; VinDr marks those as separate classes);
  ``pneumonia`` is a global label (no boxes). VinDr has no support-device label (``None``).
  ``ILD``, ``Infiltration``, ``Calcification``, ``Emphysema``, ``Enlarged PA``, ``Lung cavity``,
  ``Lung cyst``, ``Mediastinal shift``, ``Pulmonary fibrosis``, ``Other lesion`` and the other
  global labels have no CheXpert counterpart and are not read.

Counts of frontal images (PA, AP, AP_horizontal) in the real
``PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv`` are in ``tests/test_real_padchest.py``.
"""

from __future__ import annotations

# canonical finding -> {"mimic-cxr": CheXpert column or None, "padchest": PadChest labels or None}
DATASETS = ("mimic-cxr", "padchest", "vindr-cxr")

# canonical finding -> {"mimic-cxr": CheXpert column or None, "padchest": PadChest labels or None,
# "vindr-cxr": VinDr-CXR class names (columns of image_labels_*.csv, class_name of the boxes) or None}
FINDING_LABELS: dict[str, dict] = {
    "cardiomegaly": {"mimic-cxr": "Cardiomegaly", "padchest": ("cardiomegaly",),
                     "vindr-cxr": ("Cardiomegaly",)},
    "pleural effusion": {"mimic-cxr": "Pleural Effusion", "padchest": (
        "pleural effusion", "loculated pleural effusion", "loculated fissural effusion",
        "hydropneumothorax", "empyema", "hemothorax"), "vindr-cxr": ("Pleural effusion",)},
    "pneumothorax": {"mimic-cxr": "Pneumothorax", "padchest": ("pneumothorax", "hydropneumothorax"),
                     "vindr-cxr": ("Pneumothorax",)},
    "nodule": {"mimic-cxr": "Lung Lesion", "padchest": ("nodule", "multiple nodules"),
               "vindr-cxr": ("Nodule/Mass",)},
    "atelectasis": {"mimic-cxr": "Atelectasis", "padchest": (
        "atelectasis", "total atelectasis", "lobar atelectasis", "segmental atelectasis",
        "laminar atelectasis", "round atelectasis", "atelectasis basal"),
        "vindr-cxr": ("Atelectasis",)},
    "consolidation": {"mimic-cxr": "Consolidation", "padchest": ("consolidation", "air bronchogram"),
                      "vindr-cxr": ("Consolidation",)},
    "edema": {"mimic-cxr": "Edema", "padchest": ("pulmonary edema",), "vindr-cxr": ("Edema",)},
    "enlarged cardiomediastinum": {"mimic-cxr": "Enlarged Cardiomediastinum", "padchest": (
        "mediastinal enlargement", "superior mediastinal enlargement", "goiter", "aortic aneurysm",
        "mediastinal mass", "hiatal hernia", "descendent aortic elongation",
        "ascendent aortic elongation", "supra aortic elongation"),
        "vindr-cxr": ("Aortic enlargement",)},
    "fracture": {"mimic-cxr": "Fracture", "padchest": (
        "fracture", "clavicle fracture", "humeral fracture", "vertebral fracture", "rib fracture",
        "callus rib fracture"), "vindr-cxr": ("Clavicle fracture", "Rib fracture")},
    "pleural other": {"mimic-cxr": "Pleural Other", "padchest": (
        "pleural thickening", "apical pleural thickening", "calcified pleural thickening",
        "pleural plaques", "calcified pleural plaques"), "vindr-cxr": ("Pleural thickening",)},
    "pneumonia": {"mimic-cxr": "Pneumonia", "padchest": ("pneumonia", "atypical pneumonia"),
                  "vindr-cxr": ("Pneumonia",)},
    "lung opacity": {"mimic-cxr": "Lung Opacity", "padchest": None, "vindr-cxr": ("Lung Opacity",)},
    "support devices": {"mimic-cxr": "Support Devices", "padchest": None, "vindr-cxr": None},
}

# PadChest labels that say nothing about any finding (see LabelPolicy.padchest_unchanged etc.).
PADCHEST_UNCHANGED = "unchanged"            # "no change from the previous study"
PADCHEST_SUBOPTIMAL = "suboptimal study"
PADCHEST_EXCLUDE = "exclude"                # study excluded from labelling
NO_INFO_LABELS = frozenset({PADCHEST_UNCHANGED, PADCHEST_SUBOPTIMAL})

# PadChest MethodLabel values in the real file, by LabelPolicy.padchest_method choice.
PADCHEST_METHODS = {"physician": "Physician", "rnn": "RNN_model"}


def merged_map(override: dict | None) -> dict[str, dict]:
    """FINDING_LABELS with ``override`` ({finding: {"mimic-cxr": column, "padchest": [labels]}})
    laid over it per dataset key; new findings are added (a missing dataset key is None)."""
    merged = {f: dict(v) for f, v in FINDING_LABELS.items()}
    for finding, entry in (override or {}).items():
        row = merged.setdefault(finding, dict.fromkeys(DATASETS))
        for dataset, value in entry.items():
            if dataset == "padchest" and value is not None:
                value = tuple(str(x).strip().lower() for x in value)
            elif dataset == "vindr-cxr" and value is not None:
                value = tuple(str(x).strip() for x in value)  # VinDr class names keep their case
            row[dataset] = value
    return merged


def findings_of(dataset: str, override: dict | None = None) -> tuple[str, ...]:
    """The findings that have labels in ``dataset`` (after ``override``)."""
    return tuple(f for f, v in merged_map(override).items() if v.get(dataset))
