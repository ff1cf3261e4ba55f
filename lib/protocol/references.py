"""The image-blind rate: how often a Dangerous sample's answer would survive an image showing the
opposite finding, estimated from reference images (definitions written once, here).

Why references and not one swapped image per sample: a swap answer is just the model's answer on
ANOTHER image, so one swap per sample tells whether the model read that other image, not whether it
read the sample's (its answer row equals that image's own). Like the Perceptual Score (Gat et al.,
NeurIPS 2021) and Selective Modality Shifting (Restrepo et al. 2025), the measure is therefore an
expectation over a pool of references, and its interval carries the pool's randomness too.

- Reference [choose_references]: an image of the same dataset with a known label for a finding,
  drawn from OUTSIDE the evaluated samples: never one of their images, never one of their
  patients (``patient_id``), by default from a split the model was not trained on (the params
  ``reference_split`` / ``reference_root``). For each (finding, label) at most ``pool`` images are
  kept (every one when fewer), chosen by a seeded order of image ids that is the same for every
  finding, so one image tends to serve several findings and is scored once per question.
- Reference answer: the model's prediction for the reference image with the ORIGINAL question of
  the finding (prompt 0, the same text the samples of that finding were asked), scored once per
  distinct (reference image, question); rows of condition ``"reference"``.
- reference_agreement [reference_agreement], per sample: the share of its opposite-label
  references (same finding, the other label, same question) whose answer equals the sample's
  answer: the probability that the model would have answered the same had the image shown the
  opposite finding. Null where the sample's finding has fewer than ``min_references`` such
  references (not estimable) or none at all.
- image-blind rate [image_blind]: the mean over the estimable samples of
  [quadrant == Dangerous] x reference_agreement. Its complement within Dangerous, the
  prior-coincident rate, is (Dangerous fraction of the same samples) - image-blind rate: Dangerous
  samples whose answer an opposite-finding image would have changed (the model reads the image;
  its answer merely equals its prior here). ``among_dangerous`` = image-blind rate / Dangerous
  fraction. The same per finding, and per (finding, label).
- Interval: a crossed (samples x references) bootstrap, defined in lib.protocol.intervals.
"""
from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd

from .intervals import Crossed, crossed_ci_method

OPPOSITE = {"yes": "no", "no": "yes"}
MIN_REFERENCES = 10          # fewer opposite-label references than this: not estimable
REFERENCE_COLUMNS = ("image_id", "finding", "label", "image_path")


def seeded_order(image_ids, seed: int) -> np.ndarray:
    """A seeded permutation key per image id (SHA-256 of seed and id): independent of row order."""
    return np.array([int.from_bytes(hashlib.sha256(f"{seed}:{i}".encode()).digest()[:8], "little")
                     for i in image_ids], dtype=np.uint64)


def choose_references(candidates: pd.DataFrame, samples: pd.DataFrame, pool: int, seed: int = 0) -> pd.DataFrame:
    """The references: at most ``pool`` images per (finding, label) of ``candidates`` (columns
    image_id, finding, label, image_path, patient_id) that share no image and no patient with
    ``samples`` (columns image_id, patient_id), chosen by ``seeded_order``. Rows sorted by
    finding, label, image_id; columns ``REFERENCE_COLUMNS``."""
    taken_images = set(samples["image_id"])
    taken_patients = set(samples["patient_id"].dropna()) if "patient_id" in samples else set()
    free = candidates[~candidates["image_id"].isin(taken_images)]
    if "patient_id" in free:
        free = free[~free["patient_id"].isin(taken_patients) | free["patient_id"].isna()]
    free = free.drop_duplicates(["image_id", "finding"]).assign(_order=lambda t: seeded_order(t["image_id"], seed))
    chosen = (free.sort_values(["_order", "image_id"]).groupby(["finding", "label"], sort=True).head(pool))
    return chosen.sort_values(["finding", "label", "image_id"], ignore_index=True)[list(REFERENCE_COLUMNS)]


def reference_agreement(samples: pd.DataFrame, reference_answers: pd.DataFrame,
                        min_references: int = MIN_REFERENCES) -> pd.DataFrame:
    """Per sample (``samples`` order): ``n_references`` (its opposite-label references with its
    question) and ``reference_agreement`` (module docstring; NaN when n_references <
    ``min_references``).

    ``samples``: sample_id, finding, label, pred, question (its original prompt as scored);
    ``reference_answers``: finding, label, question, answer (one row per reference answer, as in
    references.csv).
    """
    counts = _group_counts(reference_answers)
    keys = _sample_groups(samples)
    n = keys.map(lambda k: counts.get(k, (0, 0))[0]).to_numpy(dtype=int)
    yes = keys.map(lambda k: counts.get(k, (0, 0))[1]).to_numpy(dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        share_yes = yes / n
    agreement = np.where(samples["pred"].to_numpy() == "yes", share_yes, 1.0 - share_yes)
    agreement = np.where(n >= min_references, agreement, np.nan)
    return pd.DataFrame({"sample_id": samples["sample_id"].to_numpy(), "n_references": n,
                         "reference_agreement": agreement})


def _sample_groups(samples: pd.DataFrame) -> pd.Series:
    """Each sample's reference group: (finding, the OTHER label, its question)."""
    return pd.Series(list(zip(samples["finding"], samples["label"].map(OPPOSITE), samples["question"])),
                     index=samples.index)


def _group_counts(reference_answers: pd.DataFrame) -> dict:
    """(finding, label, question) -> (references, references answered yes)."""
    if reference_answers.empty:
        return {}
    grouped = reference_answers.assign(_yes=reference_answers["answer"] == "yes").groupby(
        ["finding", "label", "question"])["_yes"].agg(["size", "sum"])
    return {key: (int(row["size"]), int(row["sum"])) for key, row in grouped.iterrows()}


def image_blind(samples: pd.DataFrame, reference_answers: pd.DataFrame, *, resamples: int = 1000,
                ci_level: float = 0.95, seed: int = 0, min_references: int = MIN_REFERENCES) -> dict:
    """The image-blind rate, its complement and their intervals (module docstring).

    ``samples``: one row per sample with sample_id, image_id, finding, label, pred, quadrant,
    question; ``reference_answers``: image_id, finding, label, question, answer. Returns (the
    summary's ``image_blind`` block, the per-sample table sample_id, n_references,
    reference_agreement). The block: rate, ci95, prior_coincident (+ ci95), among_dangerous
    (+ ci95), dangerous_fraction, n_samples, n_estimable, estimable, reason, min_references,
    n_reference_images, n_reference_answers, ci_method and by_finding (per finding: n_samples,
    n_references by label, estimable, rate, ci95, and by_label).
    """
    agreement = reference_agreement(samples, reference_answers, min_references)
    table = samples.assign(reference_agreement=agreement["reference_agreement"].to_numpy(),
                           n_references=agreement["n_references"].to_numpy())
    ok = table["reference_agreement"].notna().to_numpy()
    design = Crossed(table[ok], _sample_groups(table[ok]), reference_answers)
    point, low, high = design.intervals(resamples, ci_level, seed)
    by_finding = {}
    for finding in sorted(table["finding"].dropna().unique()):
        rows = table[table["finding"] == finding]
        n_refs = {label: int(reference_answers.loc[(reference_answers["finding"] == finding)
                                                   & (reference_answers["label"] == label), "image_id"].nunique())
                  for label in ("yes", "no")}
        estimable = bool(rows["reference_agreement"].notna().all()) and len(rows) > 0
        by_finding[finding] = {
            "n_samples": int(len(rows)), "n_references": n_refs, "estimable": estimable,
            "rate": point.get(f"finding:{finding}"), "ci95": _interval(low, high, f"finding:{finding}"),
            "by_label": {label: {"n_samples": int((rows["label"] == label).sum()),
                                 "rate": point.get(f"finding:{finding}:{label}"),
                                 "ci95": _interval(low, high, f"finding:{finding}:{label}")}
                         for label in ("yes", "no")},
        }
    n_ok = int(ok.sum())
    reason = None
    if n_ok == 0:
        reason = (f"no sample has {min_references} or more opposite-label references "
                  f"({len(reference_answers)} reference answers in all)")
    return {
        "rate": point.get("rate"), "ci95": _interval(low, high, "rate"),
        "prior_coincident": point.get("prior_coincident"),
        "ci95_prior_coincident": _interval(low, high, "prior_coincident"),
        "among_dangerous": point.get("among_dangerous"),
        "ci95_among_dangerous": _interval(low, high, "among_dangerous"),
        "dangerous_fraction": point.get("dangerous"),
        "n_samples": int(len(table)), "n_estimable": n_ok, "estimable": n_ok > 0, "reason": reason,
        "min_references": int(min_references),
        "n_reference_images": int(reference_answers["image_id"].nunique()) if len(reference_answers) else 0,
        "n_reference_answers": int(len(reference_answers)),
        "ci_method": crossed_ci_method(resamples, ci_level, seed, design.n_images, design.n_refs),
        "by_finding": by_finding,
    }, table[["sample_id", "n_references", "reference_agreement"]]


def _interval(low: dict, high: dict, key: str):
    lo, hi = low.get(key), high.get(key)
    return None if lo is None or hi is None else [lo, hi]
