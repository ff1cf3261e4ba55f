"""Screening measures: could the model's own uncertainty find its Dangerous samples, and how do the
quadrants move with the decision threshold (definitions written once, here).

- screening [screening]: ``auroc_entropy_dangerous`` (declared in lib.protocol.measures: the
  AUROC of entropy for Dangerous vs the other quadrants). ``catch_rate[f]``: flag the fraction f
  (0.1, 0.2, 0.3) of samples with the highest entropy (k = f x n samples; samples tied at the
  cut share the remaining flags equally, i.e. the expectation under random tie-breaking
  [flag_weights]); catch_rate = flagged Dangerous samples / all Dangerous samples;
  ``flagged_dangerous_fraction[f]`` = flagged Dangerous / k.
- threshold_sensitivity [threshold_sensitivity]: the quadrant fractions recomputed with
  pred = "yes" iff p_yes >= t, for every prediction of the sample (image prompts and text-only),
  t in ``THRESHOLDS`` (0.4, 0.45, 0.5, 0.55, 0.6); t = 0.5 gives ``quadrant_fractions``.
- yes_no_mass [yes_no_mass]: median and 10th percentile of ``yes_no_mass`` (P(yes) + P(no)
  before renormalising) over the image-conditioned rows of all prompts; ``warnings`` says in
  words when the median is below 0.5.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from .measures import auroc, plain
from .taxonomy import quadrant_of
from .vocabulary import QUADRANTS

THRESHOLDS = (0.4, 0.45, 0.5, 0.55, 0.6)
FLAG_FRACTIONS = (0.1, 0.2, 0.3)
YES_NO_MASS_WARNING = 0.5


def auroc_entropy_dangerous(samples_table: pd.DataFrame) -> float | None:
    """P(a random Dangerous sample has higher entropy than a random other one), ties one half;
    None when either group is empty (lib.protocol.measures.auroc)."""
    dangerous = (samples_table["quadrant"] == "Dangerous").to_numpy()
    return plain(auroc(samples_table["entropy"].to_numpy(dtype=float), dangerous)[0])


def flag_weights(entropy, fraction: float) -> np.ndarray:
    """Expected flag (0..1) of each sample when the ``fraction`` x n highest-entropy ones are flagged.

    Samples strictly above the cut are flagged (1), those below are not (0), and the samples
    tied at the cut share the remaining flags equally; the weights add up to fraction x n.
    """
    entropy = np.asarray(entropy, dtype=float)
    k = fraction * len(entropy)
    weights = np.zeros(len(entropy))
    left = k
    for level in np.unique(entropy)[::-1]:
        if left <= 0:
            break
        at = entropy == level
        take = min(left, at.sum())
        weights[at] = take / at.sum()
        left -= take
    return weights


def screening(samples_table: pd.DataFrame, fractions=FLAG_FRACTIONS) -> dict:
    """``auroc_entropy_dangerous``, ``catch_rate`` and ``flagged_dangerous_fraction`` by flag fraction.

    Keys of the two dicts are the fractions as strings ("0.1", ...); see the module docstring.
    """
    dangerous = (samples_table["quadrant"] == "Dangerous").to_numpy()
    entropy = samples_table["entropy"].to_numpy(dtype=float)
    catch, share = {}, {}
    for f in fractions:
        w = flag_weights(entropy, f)
        caught = w[dangerous].sum()
        catch[str(f)] = plain(caught / dangerous.sum() if dangerous.any() else float("nan"))
        share[str(f)] = plain(caught / w.sum() if w.sum() > 0 else float("nan"))
    return {"auroc_entropy_dangerous": auroc_entropy_dangerous(samples_table),
            "catch_rate": catch, "flagged_dangerous_fraction": share}


def threshold_sensitivity(samples_table: pd.DataFrame, predictions: pd.DataFrame,
                          thresholds=THRESHOLDS) -> dict | None:
    """Quadrant fractions with pred = "yes" iff p_yes >= t, for each t (keys "0.4", ...).

    Uses every image-conditioned prompt and the text-only original of the table's samples;
    None when the predictions carry no ``p_yes``.
    """
    if "p_yes" not in predictions.columns or len(samples_table) == 0:
        return None
    ids = samples_table["sample_id"]
    image = predictions[(predictions["condition"] == "image") & predictions["sample_id"].isin(ids)]
    spread = image.groupby("sample_id")["p_yes"].agg(["min", "max"]).reindex(ids)
    lo, hi = spread["min"].to_numpy(float), spread["max"].to_numpy(float)
    p0 = samples_table["p_yes"].to_numpy(float)
    pt = samples_table["p_yes_text_only"].to_numpy(float)
    out = {}
    for t in thresholds:
        quadrant = quadrant_of((lo >= t) | (hi < t), (p0 >= t) != (pt >= t))
        out[str(t)] = {q: float(np.mean(quadrant == q)) for q in QUADRANTS}
    return out


def yes_no_mass(predictions: pd.DataFrame) -> dict:
    """``median`` and ``p10`` of yes_no_mass over image-conditioned rows, and ``warnings`` (a list)."""
    if "yes_no_mass" not in predictions.columns:
        return {"median": None, "p10": None, "warnings": []}
    mass = predictions.loc[predictions["condition"] == "image", "yes_no_mass"].to_numpy(float)
    mass = mass[~np.isnan(mass)]
    if not len(mass):
        return {"median": None, "p10": None, "warnings": []}
    median, p10 = float(np.median(mass)), float(np.percentile(mass, 10))
    notes = []
    if median < YES_NO_MASS_WARNING:
        notes.append(
            f"The median yes/no probability mass over image prompts is {median:.3f}, below "
            f"{YES_NO_MASS_WARNING}: the model mostly does not answer yes or no, so p_yes is read "
            "from a small part of its next-token distribution; an answer instruction (e.g. "
            "'Answer yes or no.') may be needed.")
    return {"median": median, "p10": p10, "warnings": notes}
