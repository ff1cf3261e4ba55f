"""The label policy: how each dataset's labels become "yes"/"no" answers and which labelled images
are samples (the readers apply it; ``lib.protocol.labels`` holds the finding -> label mapping).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from . import labels as label_data
from .labels import DATASETS

LABEL_CHOICES = ("skip", "yes", "no")
NO_INFO_CHOICES = ("skip", "no")
METHOD_CHOICES = ("all", "physician", "rnn")
MIMIC_LABEL_FILE_CHOICES = ("chexpert", "negbio")
VINDR_RADIOLOGISTS = 3  # VinDr-CXR's train images are each labelled by 3 radiologists


@dataclass(frozen=True)
class LabelPolicy:
    """How dataset labels become answers, and which labelled images are samples.

    MIMIC: ``uncertain`` applies to -1.0 ("may be present"), ``blank`` to an empty cell (not
    mentioned in the report); each is ``"skip"`` (drop the sample, count it), ``"yes"`` or ``"no"``.
    ``mimic_label_file``: ``"chexpert"`` or ``"negbio"`` (the two label files MIMIC-CXR-JPG ships,
    same layout).

    PadChest: ``padchest_method`` keeps ``"all"`` images, or only those labelled by a
    ``"physician"`` or by the authors' ``"rnn"`` (column MethodLabel = Physician / RNN_model).
    ``padchest_min_age`` (None = no floor) drops images of patients younger than that many years
    (age = StudyDate_DICOM year - PatientBirth year; unknown age is dropped too).
    ``padchest_unchanged`` / ``padchest_suboptimal`` apply to images whose only label is
    ``unchanged`` / ``suboptimal study``, ``padchest_exclude`` to images labelled ``exclude``: each
    ``"skip"`` (counted by reason) or ``"no"`` (the label is ignored: the image's other labels
    decide, every finding not among them is negative).

    VinDr-CXR: ``vindr_min_radiologists`` (1..3, default 2): a train image's finding is "yes" when
    at least that many of its radiologists marked it (test images carry one consensus label).

    ``label_map`` ({finding: {"mimic-cxr": column, "padchest": [labels], "vindr-cxr":
    [class names]}}) is laid over ``lib.protocol.labels.FINDING_LABELS``: it may change a finding's labels or add a
    finding (params ``findings`` accepts it: lib.protocol.config.check_findings).
    """

    uncertain: str = "skip"
    blank: str = "no"
    mimic_label_file: str = "chexpert"
    padchest_method: str = "all"
    padchest_min_age: int | None = None
    padchest_unchanged: str = "skip"
    padchest_suboptimal: str = "skip"
    padchest_exclude: str = "skip"
    vindr_min_radiologists: int = 2
    label_map: dict | None = None

    def __post_init__(self):
        choices = {"uncertain": LABEL_CHOICES, "blank": LABEL_CHOICES,
                   "mimic_label_file": MIMIC_LABEL_FILE_CHOICES, "padchest_method": METHOD_CHOICES,
                   "padchest_unchanged": NO_INFO_CHOICES, "padchest_suboptimal": NO_INFO_CHOICES,
                   "padchest_exclude": NO_INFO_CHOICES}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"label_policy.{name} must be one of {allowed}, "
                                 f"got {getattr(self, name)!r}")
        age = self.padchest_min_age
        if age is not None and (isinstance(age, bool) or not isinstance(age, int) or age < 0):
            raise ValueError(f"label_policy.padchest_min_age must be a non-negative integer or "
                             f"null, got {age!r}")
        votes = self.vindr_min_radiologists
        if isinstance(votes, bool) or not isinstance(votes, int) or not 1 <= votes <= VINDR_RADIOLOGISTS:
            raise ValueError(f"label_policy.vindr_min_radiologists must be an integer from 1 to "
                             f"{VINDR_RADIOLOGISTS}, got {votes!r}")
        object.__setattr__(self, "label_map", _checked_label_map(self.label_map))

    @classmethod
    def from_dict(cls, d) -> "LabelPolicy":
        """A policy from a params ``label_policy`` dict (None = defaults); a one-line ValueError
        names an unknown key (with the allowed keys) or a bad value (with the allowed values)."""
        if d is None:
            return cls()
        if not isinstance(d, dict):
            raise ValueError(f"label_policy must be a mapping of {', '.join(cls.keys())}, "
                             f"got {d!r}")
        unknown = [k for k in d if k not in cls.keys()]
        if unknown:
            raise ValueError(f"label_policy: unknown key {unknown[0]!r} "
                             f"(allowed keys: {', '.join(cls.keys())})")
        return cls(**d)

    @classmethod
    def keys(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    def as_dict(self) -> dict:
        return asdict(self)

    def finding_labels(self) -> dict[str, dict]:
        """The finding -> dataset-label mapping in force (built-in, then ``label_map``)."""
        return label_data.merged_map(self.label_map)


def _checked_label_map(label_map) -> dict | None:
    """``label_map`` normalised (finding keys lower-case), or a one-line ValueError."""
    if label_map is None:
        return None
    where = "label_policy.label_map"
    if not isinstance(label_map, dict):
        raise ValueError(f"{where} must map findings to {{dataset: labels}}, got {label_map!r}")
    out = {}
    for finding, entry in label_map.items():
        if not isinstance(finding, str) or not finding.strip():
            raise ValueError(f"{where}: finding names must be non-empty strings, got {finding!r}")
        if not isinstance(entry, dict) or not entry:
            raise ValueError(f"{where}[{finding!r}] must map datasets {DATASETS} to labels, "
                             f"got {entry!r}")
        for dataset, value in entry.items():
            if dataset not in DATASETS:
                raise ValueError(f"{where}[{finding!r}]: unknown dataset {dataset!r} "
                                 f"(allowed: {', '.join(DATASETS)})")
            if value is None:
                continue
            if dataset == "mimic-cxr" and not (isinstance(value, str) and value.strip()):
                raise ValueError(f"{where}[{finding!r}]['mimic-cxr'] must be a column name, "
                                 f"got {value!r}")
            if dataset != "mimic-cxr" and (
                    not isinstance(value, (list, tuple)) or not value
                    or not all(isinstance(x, str) and x.strip() for x in value)):
                raise ValueError(f"{where}[{finding!r}][{dataset!r}] must be a non-empty list of "
                                 f"label strings, got {value!r}")
        out[finding.strip().lower()] = {k: (list(v) if isinstance(v, tuple) else v)
                                        for k, v in entry.items()}
    return out
