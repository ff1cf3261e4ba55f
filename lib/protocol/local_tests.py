"""Local counterfactual tests: does THIS sample's answer depend on THIS image? Definitions, written
once, here (the conditions' names are lib.protocol.vocabulary's).

Each test changes the sample's own image in one way and asks the sample's original question again
(scored once per (image, question) by lib.protocol.engine); ``<test>_changes`` says whether the
answer (pred) changed. A test applies only where the data allow it; elsewhere its column is null
and the run counts why (``not_tested``), it never guesses.

- occlude [occlude]: the finding's marked region removed. Every box of the sample's finding
  (``Sample.boxes``: VinDr-CXR's radiologists, an MS-CXR box file, the offline world's boxes) is
  filled from the other side of the chest where that side is free: the box's mirror image across
  the image's axis of left-right symmetry (``midline``), when it lies inside the image and
  overlaps no marked box of the image, is copied in and blended into the box's border by Poisson
  editing (Perez et al. 2003: the copy plus the harmonic interpolation of the border's mismatch).
  Otherwise (a central box such as the heart's, a finding on both sides) the box is filled by
  harmonic inpainting from the pixels around it (Laplace's equation solved on the box at <=
  ``SOLVE_SIDE`` px with the box's border as boundary, upsampled) plus Gaussian texture with the
  standard deviation of the fine detail (image minus its blur) in a ring around the box, seeded by
  the box. Why the other side first: a box reaching the diaphragm or the chest wall (an effusion,
  a pneumothorax side) has dense tissue on its border, and inpainting from it fills the box with a
  basal or lateral opacity, the finding's look; the other side shows that region of lung without
  the finding. Applies to samples with a box (positives, in practice). An image-reading "yes"
  should turn into "no". Occlusion is not absence: the other side is another lung (on real films
  the heart sits left of the midline, and a patient's tilt is not corrected), a harmonic fill is
  smoother than tissue, and a large central box (the heart of cardiomegaly) removes anatomy too.
- occlude_control [control_boxes]: the same boxes moved together, by one offset, to where they
  stay inside ``LUNG_FIELD`` and overlap no marked box of the image (the mirror image across the
  midline first, then ``CONTROL_TRIES`` seeded offsets); filled the same way. Null when no place
  fits (counted ``no_control_room``). Its fill follows the same rule; its mirror is the
  finding's box, so it is harmonic in practice. ``LUNG_FIELD`` is a fixed band of the image, not a
  segmentation: on real data the control can land on the mediastinum or outside the lungs.
- followup / followup_control [choose_followups]: the same patient's other study with the
  opposite (resp. the same) label for the finding, the closest to a natural twin: the fewest of
  the run's OTHER findings labelled differently in the two studies (``*_differing_labels``; a
  finding labelled in one study only counts as differing), then the closest in study date, then
  the smaller image_id (params ``followup_max_differing_labels``: only a study with at most that
  many, else the sample is counted, not tested; default: any); registered onto the sample's image
  (its position and exposure: lib.protocol.registration) and scored as a per-run unit (condition
  ``followup``, one per (other study, sample image)) with the sample's original question. Needs a
  patient id and a study id (MIMIC-CXR, PadChest; not VinDr-CXR). A registered follow-up still
  differs in more than the finding (noise, sharpness, time, breathing and projection on real
  films, findings the run does not ask about), so a change is not proof that the finding was
  read, and no change on the control is what licenses the test.
- image_blind_share (per test): among the Dangerous samples the test applies to, the share whose
  answer did not change: a locally tested counterpart of the image-blind rate of
  lib.protocol.references. The rates and their patient-clustered intervals are declared in
  lib.protocol.measures (``LOCAL_RATES``).

The offline world is the only validation: lib.protocol.ground_truth scores each test against the
counterfactual twins (precision and recall of "unchanged" for "the twin's answer is unchanged").
"""
from __future__ import annotations

import collections
import hashlib

import numpy as np
import pandas as pd
from PIL import Image
from scipy import ndimage, sparse
from scipy.sparse.linalg import spsolve

from .vocabulary import FOLLOWUP, FOLLOWUP_CONTROL, OCCLUDE, OCCLUDE_CONTROL

AXIS_WIDTH = 64                       # px: where the symmetry axis is searched (to 1/128 of the width)
SOLVE_SIDE = 48                       # px: the inpainting is smooth, solving it larger adds nothing
LUNG_FIELD = (0.12, 0.10, 0.88, 0.85)  # x0, y0, x1, y1 fractions: where a control box may go
CONTROL_TRIES = 200
FILL = "contralateral-poisson/harmonic"   # the fill rule (module docstring), in each record's fingerprint
CHANGES = {OCCLUDE: "occlusion_changes", OCCLUDE_CONTROL: "occlusion_control_changes",
           FOLLOWUP: "followup_changes", FOLLOWUP_CONTROL: "followup_control_changes"}
PLANNED_BY = {OCCLUDE: OCCLUDE, OCCLUDE_CONTROL: OCCLUDE, FOLLOWUP: FOLLOWUP, FOLLOWUP_CONTROL: FOLLOWUP}
NOT_TESTED = {   # per test, why a sample was not tested (counted by the plan of PLANNED_BY[test])
    OCCLUDE: ("no_box",),
    OCCLUDE_CONTROL: ("no_box", "no_control_room"),
    FOLLOWUP: ("no_patient_study", "no_other_study", "other_study_differs", "image_unreadable"),
    FOLLOWUP_CONTROL: ("no_patient_study", "no_other_study_same_label", "other_study_same_label_differs",
                       "image_unreadable"),
}


# -- occlusion -----------------------------------------------------------------------------------

def pixel_box(box, width: int, height: int) -> tuple[int, int, int, int]:
    """A fractional (x0, y0, x1, y1) box as whole pixels covering it, at least 1 px each way."""
    x0, y0, x1, y1 = box
    left, top = int(np.floor(x0 * width)), int(np.floor(y0 * height))
    right, bottom = int(np.ceil(x1 * width)), int(np.ceil(y1 * height))
    left, top = min(max(left, 0), width - 1), min(max(top, 0), height - 1)
    return left, top, max(min(right, width), left + 1), max(min(bottom, height), top + 1)


def occlude(image: Image.Image, boxes, marked=()) -> Image.Image:
    """``image`` with every fractional box filled from the other side where ``marked`` (every
    marked box of the image) leaves it free, else by textured harmonic inpainting (module
    docstring); grey images stay grey (the fill is computed once and written to every channel)."""
    grey = np.asarray(image.convert("L"), dtype=np.float64)
    height, width = grey.shape
    out = grey.copy()
    axis = midline(grey) if boxes else None
    for box in boxes:
        left, top, right, bottom = pixel_box(box, width, height)
        source = mirror_box(box, axis)
        free = 0 <= source[0] and source[2] <= 1 and not any(_overlaps(source, m) for m in (*marked, box))
        out[top:bottom, left:right] = (_contralateral(grey, left, top, right, bottom, axis) if free
                                       else _fill(grey, left, top, right, bottom, _box_seed(box)))
    filled = Image.fromarray(np.clip(np.round(out), 0, 255).astype(np.uint8), "L")
    return filled.convert(image.mode) if image.mode != "L" else filled


def midline(grey: np.ndarray) -> float:
    """The image's axis of left-right symmetry as a fraction of its width: among vertical axes in
    the middle third, the one across which the image (at ``AXIS_WIDTH`` px wide) best correlates
    with its mirror image, over every column pair the axis has inside the image."""
    rows = max(8, round(AXIS_WIDTH * grey.shape[0] / grey.shape[1]))
    small = np.asarray(Image.fromarray(grey.astype(np.float32)).resize((AXIS_WIDTH, rows), Image.BOX),
                       dtype=np.float64)
    scores = {}
    for pair_sum in range(AXIS_WIDTH * 2 // 3, AXIS_WIDTH * 4 // 3 + 1):   # column i pairs with pair_sum - i
        first, last = max(0, pair_sum - AXIS_WIDTH + 1), (pair_sum - 1) // 2
        left = small[:, first:last + 1]
        right = small[:, [pair_sum - i for i in range(first, last + 1)]]
        scores[pair_sum] = np.corrcoef(left.ravel(), right.ravel())[0, 1]
    best = max(scores, key=scores.get)
    return (best + 1) / 2 / AXIS_WIDTH


def mirror_box(box, axis: float) -> tuple:
    """A fractional box mirrored across the vertical line at ``axis`` (a fraction of the width)."""
    return (2 * axis - box[2], box[1], 2 * axis - box[0], box[3])


def _contralateral(grey: np.ndarray, left: int, top: int, right: int, bottom: int, axis: float) -> np.ndarray:
    """The box's mirror across ``axis`` blended into the box's border: the copy plus the harmonic
    interpolation of (border - the copy's border)."""
    height, width = grey.shape
    y0, x0 = max(top - 1, 0), max(left - 1, 0)
    y1, x1 = min(bottom + 1, height), min(right + 1, width)
    columns = np.clip(np.round(2 * axis * width - 1 - np.arange(x0, x1)).astype(int), 0, width - 1)
    copy = grey[y0:y1][:, columns]
    mismatch = grey[y0:y1, x0:x1] - copy
    correction = _resized_harmonic(mismatch)
    return (copy + correction)[top - y0:bottom - y0, left - x0:right - x0]


def _box_seed(box) -> int:
    return int.from_bytes(hashlib.sha256(repr(tuple(round(float(v), 6) for v in box)).encode()).digest()[:4], "big")


def _fill(grey: np.ndarray, left: int, top: int, right: int, bottom: int, seed: int) -> np.ndarray:
    """The inpainted content of the box [top:bottom, left:right] of ``grey``."""
    height, width = grey.shape
    h, w = bottom - top, right - left
    # the boundary: the box grown by one pixel, clipped to the image
    y0, x0 = max(top - 1, 0), max(left - 1, 0)
    y1, x1 = min(bottom + 1, height), min(right + 1, width)
    fill = _resized_harmonic(grey[y0:y1, x0:x1])[top - y0:top - y0 + h, left - x0:left - x0 + w]
    return fill + _texture_std(grey, left, top, right, bottom) * np.random.default_rng(seed).standard_normal((h, w))


def _resized_harmonic(frame: np.ndarray) -> np.ndarray:
    """``_harmonic`` of ``frame`` solved at <= ``SOLVE_SIDE`` px and upsampled to its size."""
    scale = min(1.0, SOLVE_SIDE / max(frame.shape))
    size = (max(3, round(frame.shape[1] * scale)), max(3, round(frame.shape[0] * scale)))
    small = np.asarray(Image.fromarray(frame.astype(np.float32)).resize(size, Image.BOX), dtype=np.float64)
    return np.asarray(Image.fromarray(_harmonic(small).astype(np.float32)).resize(frame.shape[::-1], Image.BILINEAR),
                      dtype=np.float64)


def _harmonic(frame: np.ndarray) -> np.ndarray:
    """``frame`` with its interior replaced by the solution of Laplace's equation whose boundary
    values are the frame's outer pixels."""
    h, w = frame.shape
    inner = np.zeros((h, w), dtype=bool)
    inner[1:-1, 1:-1] = True
    index = -np.ones((h, w), dtype=int)
    index[inner] = np.arange(inner.sum())
    n = int(inner.sum())
    rows, cols, vals = [], [], []
    rhs = np.zeros(n)
    for y, x in zip(*np.nonzero(inner)):
        i = index[y, x]
        rows.append(i), cols.append(i), vals.append(4.0)
        for dy, dx in ((-1, 0), (1, 0), (0, -1), (0, 1)):
            j = index[y + dy, x + dx]
            if j >= 0:
                rows.append(i), cols.append(j), vals.append(-1.0)
            else:
                rhs[i] += frame[y + dy, x + dx]
    out = frame.copy()
    out[inner] = spsolve(sparse.csr_matrix((vals, (rows, cols)), shape=(n, n)), rhs)
    return out


def _texture_std(grey: np.ndarray, left: int, top: int, right: int, bottom: int) -> float:
    """Standard deviation of the fine detail (image minus its Gaussian blur, sigma 2 px) in a
    ring around the box as wide as a tenth of its longer side (at least 3 px)."""
    height, width = grey.shape
    ring = max(3, round(0.1 * max(right - left, bottom - top)))
    y0, x0 = max(top - ring, 0), max(left - ring, 0)
    y1, x1 = min(bottom + ring, height), min(right + ring, width)
    patch = grey[y0:y1, x0:x1]
    detail = patch - ndimage.gaussian_filter(patch, 2)
    outside = np.ones(patch.shape, dtype=bool)
    outside[top - y0:bottom - y0, left - x0:right - x0] = False
    return float(detail[outside].std()) if outside.any() else 0.0


def _overlaps(a, b) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _inside(box, field) -> bool:
    return field[0] <= box[0] and field[1] <= box[1] and box[2] <= field[2] and box[3] <= field[3]


def control_boxes(boxes, marked, key: str, seed: int) -> tuple | None:
    """The control of a sample's ``boxes``: the same boxes moved together to a place inside
    ``LUNG_FIELD`` overlapping none of ``marked`` (every box of the image), the mirror image across
    the midline first, then seeded offsets; None when nothing fits."""
    boxes = [tuple(map(float, b)) for b in boxes]
    mirrored = [(1 - b[2], b[1], 1 - b[0], b[3]) for b in boxes]
    rng = np.random.default_rng([seed, int(hashlib.sha256(key.encode()).hexdigest()[:8], 16)])
    hull = (min(b[0] for b in boxes), min(b[1] for b in boxes), max(b[2] for b in boxes), max(b[3] for b in boxes))
    candidates = [mirrored]
    fits = hull[2] - hull[0] <= LUNG_FIELD[2] - LUNG_FIELD[0] and hull[3] - hull[1] <= LUNG_FIELD[3] - LUNG_FIELD[1]
    for _ in range(CONTROL_TRIES if fits else 0):
        dx = rng.uniform(LUNG_FIELD[0] - hull[0], LUNG_FIELD[2] - hull[2])
        dy = rng.uniform(LUNG_FIELD[1] - hull[1], LUNG_FIELD[3] - hull[3])
        candidates.append([(b[0] + dx, b[1] + dy, b[2] + dx, b[3] + dy) for b in boxes])
    for moved in candidates:
        if all(_inside(b, LUNG_FIELD) for b in moved) and \
                not any(_overlaps(b, m) for b in moved for m in marked):
            return tuple(tuple(round(v, 6) for v in b) for b in moved)
    return None


def plan_occlusion(samples: list, seed: int) -> tuple[dict, collections.Counter]:
    """({sample_id: (its boxes, its control boxes or None, its image's marked boxes)} for the
    samples with a box, the count of samples not tested by reason); an image's marked boxes are
    those of all its samples."""
    marked: dict = collections.defaultdict(list)
    for s in samples:
        marked[s.image_id] += list(s.boxes or ())
    plan, not_tested = {}, collections.Counter()
    for s in samples:
        if not s.boxes:
            not_tested["no_box"] += 1
            continue
        control = control_boxes(s.boxes, marked[s.image_id], s.sample_id, seed)
        not_tested["no_control_room"] += control is None
        plan[s.sample_id] = (tuple(tuple(b) for b in s.boxes), control, tuple(tuple(b) for b in marked[s.image_id]))
    return plan, not_tested


# -- the same patient's other study --------------------------------------------------------------

FOLLOWUP_COLUMNS = ("sample_id", "test", "image_id", "image_path", "differing_labels")


def _days(date) -> float:
    try:
        return float(pd.Timestamp(str(date)).value // 86_400_000_000_000)
    except (ValueError, TypeError):
        return float("nan")


def _differing_labels(labels: pd.DataFrame, image_id: str, others: pd.Series, finding: str) -> np.ndarray:
    """Per image of ``others``: how many findings besides ``finding`` ``labels`` (image x finding,
    null where unlabelled) gives a different label than on ``image_id``."""
    rest = labels.drop(columns=[finding])
    mine, theirs = rest.reindex([image_id]).iloc[0], rest.reindex(others.to_numpy())
    same = (theirs == mine) | (theirs.isna() & mine.isna())
    return (~same).sum(axis=1).to_numpy()


def choose_followups(samples: list, candidates: list, max_differing: int | None = None
                     ) -> tuple[pd.DataFrame, collections.Counter]:
    """(one row per (sample, test) with the other study's image chosen and its ``differing_labels``,
    the count of samples without one by reason): among ``candidates`` (the split's samples, the
    evaluated ones included) of the sample's patient and finding from ANOTHER study, with the
    opposite label (``followup``) and with the same label (``followup_control``), the one with the
    fewest other findings labelled differently, then the closest in study date. With
    ``max_differing`` (params ``followup_max_differing_labels``) a study with more other findings
    labelled differently is never taken, for either test: the sample is counted
    (``other_study_differs``, ``other_study_same_label_differs``)."""
    pool = pd.DataFrame([{"patient_id": c.patient_id, "study_id": c.study_id, "finding": c.finding,
                          "label": c.label, "image_id": c.image_id, "image_path": c.image_path,
                          "days": _days(c.study_date)}
                         for c in candidates if c.patient_id is not None and c.study_id is not None])
    by_key = dict(tuple(pool.groupby(["patient_id", "finding"]))) if len(pool) else {}
    labels = pool.pivot_table(index="image_id", columns="finding", values="label", aggfunc="first") \
        if len(pool) else None
    rows, not_tested = [], collections.Counter()
    for s in samples:
        if s.patient_id is None or s.study_id is None:
            not_tested["no_patient_study"] += 1
            continue
        others = by_key.get((s.patient_id, s.finding))
        others = others[others["study_id"] != s.study_id] if others is not None else pool.iloc[:0]
        for test, same in ((FOLLOWUP, False), (FOLLOWUP_CONTROL, True)):
            match = others[(others["label"] == s.label) == same]
            if match.empty:
                not_tested["no_other_study" if not same else "no_other_study_same_label"] += 1
                continue
            gap = (match["days"] - _days(s.study_date)).abs().fillna(np.inf)
            differing = _differing_labels(labels, s.image_id, match["image_id"], s.finding)
            match = match.assign(gap=gap, differing=differing)
            if max_differing is not None:
                match = match[match["differing"] <= max_differing]
                if match.empty:
                    not_tested["other_study_differs" if not same else "other_study_same_label_differs"] += 1
                    continue
            best = match.sort_values(["differing", "gap", "image_id"]).iloc[0]
            rows.append({"sample_id": s.sample_id, "test": test, "image_id": best["image_id"],
                         "image_path": best["image_path"], "differing_labels": int(best["differing"])})
    return pd.DataFrame(rows, columns=list(FOLLOWUP_COLUMNS)), not_tested


# -- per-sample columns --------------------------------------------------------------------------

def _changes(pred: pd.Series, other: pd.Series) -> pd.array:
    """Nullable boolean: other != pred, null where other is missing."""
    out = pd.array(other.notna() & (other != pred), dtype="boolean")
    out[other.isna().to_numpy()] = pd.NA
    return out


def local_columns(samples_table: pd.DataFrame, predictions: pd.DataFrame, per_run: pd.DataFrame,
                  followups: pd.DataFrame) -> pd.DataFrame:
    """sample_id with ``CHANGES``' columns (nullable booleans, module docstring), the follow-up
    images used (``followup_image_id``, ``followup_control_image_id``) and how many other findings
    they are labelled differently for (``followup_differing_labels``, ...)."""
    t = samples_table.set_index("sample_id")
    out = pd.DataFrame({"sample_id": t.index})
    for condition in (OCCLUDE, OCCLUDE_CONTROL):
        rows = predictions[(predictions["condition"] == condition) & (predictions["prompt_id"] == 0)]
        other = rows.set_index("sample_id")["pred"].reindex(t.index)
        out[CHANGES[condition]] = _changes(t["pred"], other).to_numpy()
    key = ["followup_image_id", "followup_onto_image_id", "prompt"]
    unit_rows = per_run[per_run["condition"] == FOLLOWUP] if len(per_run) else pd.DataFrame(columns=key + ["pred"])
    answers = unit_rows.set_index(key)["pred"]
    for test in (FOLLOWUP, FOLLOWUP_CONTROL):
        chosen = followups[followups["test"] == test].set_index("sample_id").reindex(t.index)
        keys = zip(chosen["image_id"], t["image_id"], t["question"])
        other = pd.Series([answers.get(k) if isinstance(k[0], str) else None for k in keys], index=t.index)
        out[CHANGES[test]] = _changes(t["pred"], other).to_numpy()
        out[f"{test}_image_id"] = chosen["image_id"].to_numpy()
        out[f"{test}_differing_labels"] = pd.array(chosen["differing_labels"], dtype="Int64")
    return out


def summary_counts(samples_table: pd.DataFrame, not_tested: dict) -> dict:
    """summary.json's ``local_tests`` counts: per test, the samples it was scored on
    (``n_tested``; for occlude and followup also the Dangerous ones, ``n_dangerous_tested``) and
    those it was not, by reason (``NOT_TESTED``; from the plan, and ``image_unreadable`` for
    another study whose image could not be read). The rates are added by lib.protocol.summary
    from their declarations."""
    reasons = {test: {k: not_tested.get(PLANNED_BY[test], {}).get(k, 0) for k in names}
               for test, names in NOT_TESTED.items()}
    for test in (FOLLOWUP, FOLLOWUP_CONTROL):
        chosen = samples_table.get(f"{test}_image_id")
        if chosen is not None:
            lost = chosen.notna() & samples_table[CHANGES[test]].isna()
            reasons[test]["image_unreadable"] = int(lost.sum())
    dangerous = samples_table["quadrant"] == "Dangerous" if "quadrant" in samples_table else False
    out = {}
    for test, column in CHANGES.items():
        tested = samples_table[column].notna() if column in samples_table else pd.Series(False, index=samples_table.index)
        out[test] = {"n_tested": int(tested.sum()), "not_tested": {k: int(v) for k, v in reasons[test].items() if v}}
        if test in (OCCLUDE, FOLLOWUP):
            out[test]["n_dangerous_tested"] = int((tested & dangerous).sum())
    return out
