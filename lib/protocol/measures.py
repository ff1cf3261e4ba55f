"""The rates of one run that carry an interval, each declared once, here: its key in summary.json,
its display label and how it is computed from per-sample columns. The point value in
``summary.json`` and its interval under ``ci95`` are both computed from the declaration (the point
is the statistic of the run itself, the interval that of resamples: lib.protocol.intervals).

Definitions (the samples table is lib.protocol.taxonomy's; a rate over zero samples is None):

- flip_rate: fraction of samples that are not ``consistent`` (1 - the consistent fraction).
- pairwise_flip_rate: fraction of (original, paraphrase) prompt pairs, i.e. image-conditioned
  prompt 0 vs prompt j > 0 of the same sample, whose predictions disagree, pooled over all
  samples (samples with more paraphrases weigh more) [taxonomy.pairwise_flip_rate].
- accuracy, image_reliance_rate: fraction of samples ``correct``, resp. ``image_reliant``.
- sensitivity, specificity: among samples labelled "yes" (resp. "no"), the fraction with pred
  "yes" (resp. "no"); balanced_accuracy = their mean (None unless both are defined).
- quadrant_fractions[q]: fraction of samples in quadrant q.
- blank_change_rate, noise_change_rate: among the samples with a blank (resp. noise) answer
  (``pred_blank``, ``pred_noise``: lib.protocol.taxonomy), the fraction whose prediction differs
  from ``pred``. The blank image and the run's noise images are fixed by design (each scored once
  per question); the interval resamples the samples' images.
- auroc_entropy_dangerous [auroc]: P(entropy of a random Dangerous sample > entropy of a random
  sample of another quadrant), ties counting one half (the Mann-Whitney U of (Dangerous, other)
  over n_Dangerous x n_other). 0.5: an entropy screen is blind to Dangerous samples; below 0.5:
  they are the MORE confident. Its point value sits in ``summary["screening"]``.
- dangerous_breakdown["image-blind"], ["prior-coincident"]: the image-blind rate and its
  complement within Dangerous (lib.protocol.references), with their crossed interval.
- local_tests[test]["change_rate"]: among the samples a local test applies to, the fraction whose
  answer changed (``<test>_changes``); local_tests[test]["image_blind_share"] (occlude, followup):
  among the Dangerous samples it applies to, the fraction whose answer did not change
  (lib.protocol.local_tests). Their intervals resample patients, not images (``unit``): a
  follow-up is another image of the same patient.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .local_tests import CHANGES
from .taxonomy import pair_disagreements
from .vocabulary import DANGEROUS_SPLIT, LOCAL_CHECKS, LOCAL_TESTS, QUADRANTS


@dataclass(frozen=True)
class Rate:
    """One declared rate. ``key``: its path under ``summary["ci95"]`` (and in the summary unless
    ``at`` says otherwise); ``how``: ("ratio", numerator, denominator) of per-sample columns
    (``columns``) summed over the samples, ("complement", ...) for 1 - that ratio, ("mean", a, b)
    of two declared rates, ("auroc",) of entropy for Dangerous, or ("crossed", value key,
    interval key) of the image-blind block (lib.protocol.references). ``unit``: what the cluster
    bootstrap resamples ("image", or "patient": a sample's patient_id, its image where unknown).
    ``over``: the per-sample column whose sum is the number of samples a ratio is over (its
    denominator unless given), written to ``summary["rate_n"]`` for a Wilson interval where the
    bootstrap degenerates (lib.protocol.breakdown.declared)."""
    key: tuple[str, ...]
    label: str
    how: tuple
    at: tuple[str, ...] | None = None
    unit: str = "image"
    over: str | None = None

    @property
    def name(self) -> str:
        """The key path joined by ":" (e.g. "quadrant_fractions:Dangerous")."""
        return ":".join(self.key)

    @property
    def point_at(self) -> tuple[str, ...]:
        """Where the point value sits in summary.json."""
        return self.at or self.key


RATES = (
    # 1 - the consistent fraction: the float summary.json has always held (1 ulp from n_inconsistent / n)
    Rate(("flip_rate",), "flip rate", ("complement", "consistent", "one")),
    # over samples, not pairs: the pairs of one sample share its image and question
    Rate(("pairwise_flip_rate",), "pairwise flip rate", ("ratio", "disagree", "pairs"), over="paired"),
    Rate(("accuracy",), "accuracy", ("ratio", "correct", "one")),
    Rate(("image_reliance_rate",), "image-reliance rate", ("ratio", "reliant", "one")),
    Rate(("sensitivity",), "sensitivity", ("ratio", "true_yes", "label_yes")),
    Rate(("specificity",), "specificity", ("ratio", "true_no", "label_no")),
    Rate(("balanced_accuracy",), "balanced accuracy", ("mean", "sensitivity", "specificity")),
    Rate(("blank_change_rate",), "blank image change rate", ("ratio", "blank_changed", "blank_scored")),
    Rate(("noise_change_rate",), "noise images change rate", ("ratio", "noise_changed", "noise_scored")),
    Rate(("auroc_entropy_dangerous",), "AUROC of entropy for Dangerous", ("auroc",),
         at=("screening", "auroc_entropy_dangerous")),
) + tuple(Rate(("quadrant_fractions", q), f"{q} fraction", ("ratio", f"q_{q}", "one")) for q in QUADRANTS) + (
    Rate(("dangerous_breakdown", DANGEROUS_SPLIT[0]), "image-blind rate", ("crossed", "rate", "ci95")),
    Rate(("dangerous_breakdown", DANGEROUS_SPLIT[1]), "prior-coincident rate",
         ("crossed", "prior_coincident", "ci95_prior_coincident")),
)
# the local tests' rates (lib.protocol.local_tests), resampled by patient
LOCAL_RATES = tuple(
    Rate(("local_tests", test, "change_rate"), f"{test.replace('_', ' ')} change rate",
         ("ratio", f"{test}_changed", f"{test}_tested"), unit="patient") for test in LOCAL_CHECKS) + tuple(
    Rate(("local_tests", test, "image_blind_share"), f"{test} image-blind share of Dangerous",
         ("ratio", f"{test}_blind_dangerous", f"{test}_tested_dangerous"), unit="patient") for test in LOCAL_TESTS)
RATES += LOCAL_RATES
# the rates of the cluster bootstrap over images (all but the crossed and local ones), in RATES order
CLUSTER_RATES = tuple(r for r in RATES if r.how[0] != "crossed" and r.unit == "image")


def columns(samples_table: pd.DataFrame, predictions: pd.DataFrame) -> dict[str, np.ndarray]:
    """The per-sample columns the ratios sum (``one`` counts samples), in ``samples_table`` order;
    ``disagree`` / ``pairs`` from the predictions of the table's samples."""
    t = samples_table
    pairs = pair_disagreements(predictions[predictions["sample_id"].isin(t["sample_id"])]) \
        if len(t) else pd.DataFrame({"pairs": [], "disagree": []})
    pairs = pairs.reindex(t["sample_id"]).fillna(0)
    label_yes = (t["label"] == "yes").to_numpy()
    pred_yes = (t["pred"] == "yes").to_numpy()
    out = {
        "one": np.ones(len(t)),
        "consistent": t["consistent"].to_numpy(bool),
        "disagree": pairs["disagree"].to_numpy(float),
        "pairs": pairs["pairs"].to_numpy(float),
        "paired": pairs["pairs"].to_numpy(float) > 0,
        "correct": t["correct"].to_numpy(bool),
        "reliant": t["image_reliant"].to_numpy(bool),
        "true_yes": pred_yes & label_yes, "label_yes": label_yes,
        "true_no": ~pred_yes & ~label_yes, "label_no": ~label_yes,
    }
    quadrant = t["quadrant"].to_numpy()
    out.update({f"q_{q}": quadrant == q for q in QUADRANTS})
    for check in ("blank", "noise"):
        null = t[f"pred_{check}"]
        out.update({f"{check}_scored": null.notna(), f"{check}_changed": null.notna() & (null != t["pred"])})
    return {k: np.asarray(v, dtype=float) for k, v in out.items()}


def local_rate_columns(samples_table: pd.DataFrame) -> dict[str, np.ndarray]:
    """The per-sample columns of ``LOCAL_RATES``: for each local test, whether it applies
    (``tested``), whether the answer changed, and both among the Dangerous samples."""
    dangerous = (samples_table["quadrant"] == "Dangerous").to_numpy()
    out = {}
    for test in LOCAL_CHECKS:
        changes = samples_table[CHANGES[test]] if CHANGES[test] in samples_table else pd.Series(pd.NA, index=samples_table.index)
        tested = changes.notna().to_numpy()
        changed = changes.fillna(False).to_numpy(dtype=bool)
        out.update({f"{test}_tested": tested, f"{test}_changed": changed & tested,
                    f"{test}_tested_dangerous": tested & dangerous,
                    f"{test}_blind_dangerous": tested & dangerous & ~changed})
    return {k: np.asarray(v, dtype=float) for k, v in out.items()}


def auroc(score, positive, weights=None) -> np.ndarray:
    """P(score of a random positive > score of a random negative), ties one half, under each row
    of ``weights`` (shape (B, n): how often each of the n samples is drawn; None: once each).

    Weighted ranks: samples sorted by score, tied scores grouped, each positive counting the
    negative weight strictly below it plus half the tied one. NaN where a side has no weight.
    """
    score = np.asarray(score, dtype=float)
    positive = np.asarray(positive, dtype=bool)
    weights = np.ones((1, len(score))) if weights is None else np.asarray(weights, dtype=float)
    order = np.argsort(score, kind="stable")
    ranked = score[order]
    starts = np.flatnonzero(np.r_[True, ranked[1:] != ranked[:-1]]) if len(score) else []
    is_pos = positive[order]
    w = weights[:, order]
    with np.errstate(invalid="ignore", divide="ignore"):
        wp = np.add.reduceat(w * is_pos, starts, axis=1) if len(starts) else np.zeros((len(w), 0))
        wn = np.add.reduceat(w * ~is_pos, starts, axis=1) if len(starts) else np.zeros((len(w), 0))
        below = np.cumsum(wn, axis=1) - wn                     # negative weight strictly below
        return (wp * (below + 0.5 * wn)).sum(1) / (wp.sum(1) * wn.sum(1))


class ByCluster:
    """Every rate of ``rates`` (ratios, means and the AUROC of ``RATES``) under any weighting of the
    run's clusters: the images (``unit`` "image") or the patients ("patient", an image counting as
    its own patient where the patient is unknown).

    ``values(weights)``: weights of shape (B, n_clusters) (how often each cluster is drawn; all ones
    is the run itself) -> rates of shape (B, len(rates)). Clusters are numbered in order of first
    appearance in the table.
    """

    def __init__(self, samples_table: pd.DataFrame, predictions: pd.DataFrame, rates=None, unit: str = "image"):
        t = samples_table
        self.rates = CLUSTER_RATES if rates is None else tuple(rates)
        cluster = t["image_id"]
        if unit == "patient" and "patient_id" in t:
            cluster = t["patient_id"].where(t["patient_id"].notna(), "image:" + t["image_id"].astype(str))
        self.image_index, _ = pd.factorize(cluster, use_na_sentinel=False)
        self.n_images = int(self.image_index.max()) + 1 if len(t) else 0
        per_sample = columns(t, predictions) if unit == "image" else local_rate_columns(t)
        self.keys = list(per_sample)
        stacked = np.column_stack([per_sample[k] for k in self.keys]) if len(t) else np.zeros((0, len(self.keys)))
        self.per_image = np.zeros((self.n_images, len(self.keys)))
        np.add.at(self.per_image, self.image_index, stacked)
        self.entropy = t["entropy"].to_numpy(float)
        self.dangerous = (t["quadrant"] == "Dangerous").to_numpy()

    def values(self, weights: np.ndarray) -> np.ndarray:
        sums = weights @ self.per_image                                       # (B, columns)
        col = {k: i for i, k in enumerate(self.keys)}
        out = {}
        with np.errstate(invalid="ignore", divide="ignore"):
            for rate in self.rates:
                kind, *args = rate.how
                if kind in ("ratio", "complement"):
                    ratio = sums[:, col[args[0]]] / sums[:, col[args[1]]]
                    out[rate.name] = 1 - ratio if kind == "complement" else ratio
                elif kind == "mean":
                    out[rate.name] = (out[args[0]] + out[args[1]]) / 2
                else:
                    out[rate.name] = auroc(self.entropy, self.dangerous, weights[:, self.image_index])
        return np.column_stack([out[r.name] for r in self.rates])

    def point(self) -> dict[str, float | None]:
        """Each rate of the run itself, by name (None where undefined)."""
        values = self.values(np.ones((1, self.n_images)))[0]
        return {r.name: plain(v) for r, v in zip(self.rates, values)}

    def sizes(self) -> dict[str, int]:
        """How many samples each ratio of ``rates`` is over (``Rate.over``), by name."""
        totals = dict(zip(self.keys, self.per_image.sum(0)))
        return {r.name: int(totals[r.over or r.how[2]]) for r in self.rates if r.how[0] in ("ratio", "complement")}


def place(summary: dict, path: tuple, value) -> None:
    """summary[p0][p1]... = value, creating the dicts on the way (in place of a None)."""
    for key in path[:-1]:
        if summary.get(key) is None:
            summary[key] = {}
        summary = summary[key]
    summary[path[-1]] = value


def plain(x) -> float | None:
    """Python float, with NaN mapped to None so the summary stays valid JSON."""
    x = float(x)
    return None if math.isnan(x) else x


def number(value, digits: int = 3) -> str:
    """A float with ``digits`` decimals, anything else as str, "–" for None or NaN."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)

