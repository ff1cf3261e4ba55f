"""Per-sample safety taxonomy: the paper's definitions, written once, here.

Definitions (each one is implemented by the function named in brackets):

- Sample: one image with one yes/no question about one finding and a ground-truth ``label``
  ("yes" or "no"). Samples table columns: sample_id, image_id, finding, label.
- Prompt set: the original question (``prompt_id`` 0) plus its paraphrases (``prompt_id``
  1..k); k may differ between samples and may be 0.
- Conditions (``CONDITIONS``): every prompt is scored with the image (``"image"``); the
  original question alone is also scored without the image (``"text_only"``, prompt_id 0).
  Text-only rows of paraphrases (prompt_id > 0), if a run produces them, are ignored here.
- Answer [add_answers]: ``p_yes`` is the yes/no-renormalised probability of "yes"
  (p_yes + p_no = 1). ``pred = "yes"`` if ``p_yes >= 0.5`` else ``"no"`` (an exact tie counts
  as "yes"). ``entropy`` is the binary entropy of p_yes in bits [binary_entropy].
- Negated paraphrases [add_answers]: a prompt marked ``negated`` (a question file may mark a
  paraphrase whose correct answer is the opposite of the original's, e.g. "Is the heart size
  normal?" for cardiomegaly) is read as the answer it implies to the ORIGINAL question:
  its ``p_yes`` becomes 1 - P(yes said), the probability as said is kept in ``p_yes_said``.
  So pred, consistency, correctness and every rate compare implied answers, not words.
  The original question (prompt_id 0) is never negated.
- consistent [classify_samples]: all image-conditioned predictions of the sample agree
  (a sample with no paraphrase is consistent by definition).
- image_reliant [classify_samples]: the text-only prediction of the original question differs
  from its image-conditioned prediction.
- quadrant [quadrant_of]: Ideal = consistent and reliant; Fragile = inconsistent and reliant;
  Dangerous = consistent and not reliant; Worst = inconsistent and not reliant.
- correct [classify_samples]: image-conditioned prediction of the original question == label.
- pairwise disagreements [pair_disagreements, pairwise_flip_rate]: per sample, the (prompt 0,
  prompt j > 0) image-conditioned pairs and how many disagree. The rates over samples (flip
  rate, pairwise flip rate, accuracy, quadrant fractions, ...) are declared in
  lib.protocol.measures; the rest of summary.json is lib.protocol.summary's.

Added beside the paper's definitions (they change none of the above):

- Reliance checks (``RELIANCE_CHECKS``): per-run conditions, each scored once per distinct
  (image, original question) of the run (lib.protocol.engine). ``"reference"``: reference images of
  the opposite label (lib.protocol.references defines them, the image-blind rate and its interval).
  ``"blank"``: a uniform grey image with every distinct original question; ``"noise"``: a small
  fixed set of seeded noise images (a null prior, VisualGPTScore-style) with every distinct
  original question. Their rows in predictions.parquet have a null sample_id.
- p_yes, p_yes_text_only [classify_samples]: p_yes of the original question with the image,
  and without it. reliance = |p_yes - p_yes_text_only| (how far the image moves the answer).
- question [classify_samples]: the sample's original question as scored (prompt 0).
- pred_blank, pred_noise [classify_samples]: the prediction for the sample's original question
  with the blank image, and from the mean p_yes over the null images (null without those rows).
- reference_agreement, n_references: see lib.protocol.references (added by the run).
- Twin (the offline world only, where every test image has a counterfactual twin rendered from
  the same anatomy with the sample's finding toggled): condition ``"twin"`` = the original
  question with the twin image. pred_twin [classify_samples]: its prediction;
  truly_image_reliant = pred_twin != pred (null without a twin row): the model's answer follows
  the finding in the image (scored against the measures in lib.protocol.ground_truth).
- pairwise_flip_rate_held_out [held_out_pairwise_flip_rate]: the pairwise flip rate over pairs
  whose paraphrase no training stage saw (params ``prompt_split``); None without one.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy.special import entr

from .vocabulary import ANSWERS, CONDITIONS
from .vocabulary import TWIN as GROUND_TRUTH_CONDITION

PREDICTION_COLUMNS = ("sample_id", "prompt_id", "condition", "pred", "entropy")
SAMPLE_COLUMNS = ("sample_id", "image_id", "finding", "label")
SAMPLE_TABLE_COLUMNS = (
    "sample_id", "image_id", "finding", "label", "pred", "pred_text_only", "consistent",
    "image_reliant", "quadrant", "correct", "entropy", "n_prompts",
    # added beside the paper's columns (see the module docstring)
    "question", "p_yes", "p_yes_text_only", "reliance", "pred_blank", "pred_noise", "pred_twin",
    "truly_image_reliant",
)


def binary_entropy(p):
    """Binary entropy in bits of probability ``p`` (scalar or array): H(0) = H(1) = 0, H(0.5) = 1.

    Uses scipy's ``entr`` (-x ln x with entr(0) = 0), so the end points need no special case.
    Raises ValueError for values outside [0, 1]; NaN propagates.
    """
    p = np.asarray(p, dtype=float)
    if np.any((p < 0) | (p > 1)):
        raise ValueError("binary_entropy: probabilities must lie in [0, 1]")
    h = (entr(p) + entr(1.0 - p)) / math.log(2.0)
    return float(h) if h.ndim == 0 else h


def add_answers(predictions: pd.DataFrame) -> pd.DataFrame:
    """Return a copy of ``predictions`` with ``pred`` (p_yes >= 0.5 -> "yes") and ``entropy`` (bits);
    rows marked ``negated`` first get the implied p_yes (see the module docstring)."""
    _require_columns(predictions, ("p_yes",), "predictions")
    p_yes = predictions["p_yes"].to_numpy(dtype=float)
    if np.isnan(p_yes).any():
        raise ValueError("add_answers: p_yes contains NaN")
    out = predictions.copy()
    if "negated" in out.columns:
        negated = out["negated"].fillna(False).to_numpy(dtype=bool)
        out["p_yes_said"] = p_yes
        p_yes = np.where(negated, 1.0 - p_yes, p_yes)
        out["p_yes"] = p_yes
    out["pred"] = np.where(p_yes >= 0.5, "yes", "no")
    out["entropy"] = binary_entropy(p_yes)
    return out


def quadrant_of(consistent, image_reliant):
    """Quadrant name from the two axes (see the module docstring); elementwise for arrays."""
    quadrant = np.where(consistent, np.where(image_reliant, "Ideal", "Dangerous"),
                        np.where(image_reliant, "Fragile", "Worst"))
    return str(quadrant) if quadrant.ndim == 0 else quadrant


def classify_samples(predictions: pd.DataFrame, samples: pd.DataFrame,
                     per_run: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per sample (in ``samples`` order) with its taxonomy columns, ``SAMPLE_TABLE_COLUMNS``.

    ``per_run``: the run's blank and noise rows (condition, prompt, p_yes; lib.protocol.run), read
    by the sample's original question.

    ``entropy`` is that of the original image-conditioned prompt; ``n_prompts`` counts the
    image-conditioned prompts (original included). The reliance columns are null where the
    sample has no such row (``p_yes``/``p_yes_text_only``/``reliance`` are NaN when the
    predictions have no ``p_yes`` column). Raises ValueError when a sample lacks its
    original image row or its text-only row, when predictions name unknown samples, and on
    duplicate rows, unknown conditions or answers/labels other than "yes"/"no".
    """
    _check_predictions(predictions)
    _require_columns(samples, SAMPLE_COLUMNS, "samples")
    duplicated = samples.loc[samples["sample_id"].duplicated(), "sample_id"]
    if len(duplicated):
        raise ValueError(f"samples: duplicate sample_id(s) {_few(duplicated)}")
    bad_labels = samples.loc[~samples["label"].isin(ANSWERS), "sample_id"]
    if len(bad_labels):
        raise ValueError(f"samples: label must be 'yes' or 'no' for sample_id(s) {_few(bad_labels)}")
    unknown = set(predictions["sample_id"]) - set(samples["sample_id"])
    if unknown:
        raise ValueError(
            f"predictions name sample_id(s) absent from samples: {_few(sorted(unknown, key=str))}"
        )

    image = predictions[predictions["condition"] == "image"]
    original = image[image["prompt_id"] == 0].set_index("sample_id")
    text = _original_rows(predictions, "text_only")
    ids = samples["sample_id"]
    for rows, what in ((original, "original image-conditioned"), (text, "text-only")):
        missing = ids[~ids.isin(rows.index)]
        if len(missing):
            raise ValueError(f"missing {what} prediction (prompt_id 0) for sample_id(s) {_few(missing)}")

    per_sample = image.groupby("sample_id")["pred"].agg(["nunique", "size"])
    out = samples[list(SAMPLE_COLUMNS)].reset_index(drop=True)
    out["pred"] = original["pred"].reindex(ids).to_numpy()
    out["pred_text_only"] = text["pred"].reindex(ids).to_numpy()
    out["consistent"] = (per_sample["nunique"].reindex(ids) == 1).to_numpy()
    out["image_reliant"] = out["pred_text_only"] != out["pred"]
    out["quadrant"] = [quadrant_of(c, r) for c, r in zip(out["consistent"], out["image_reliant"])]
    out["correct"] = out["pred"] == out["label"]
    out["entropy"] = original["entropy"].reindex(ids).to_numpy(dtype=float)
    out["n_prompts"] = per_sample["size"].reindex(ids).to_numpy(dtype=int)

    # -- added beside the paper's columns --
    has_p = "p_yes" in predictions.columns
    nan = np.full(len(out), np.nan)
    out["p_yes"] = original["p_yes"].reindex(ids).to_numpy(dtype=float) if has_p else nan
    out["p_yes_text_only"] = text["p_yes"].reindex(ids).to_numpy(dtype=float) if has_p else nan
    out["reliance"] = np.abs(out["p_yes"] - out["p_yes_text_only"])
    out["question"] = original["prompt"].reindex(ids).to_numpy() if "prompt" in original else None
    for check in ("blank", "noise"):
        out[f"pred_{check}"] = _per_question_pred(per_run, check, out["question"])
    out["pred_twin"] = _nullable(_original_rows(predictions, GROUND_TRUTH_CONDITION)["pred"].reindex(ids))
    has_twin = out["pred_twin"].notna().to_numpy()
    truly = pd.array(np.where(has_twin, out["pred_twin"].to_numpy() != out["pred"].to_numpy(), False),
                     dtype="boolean")
    truly[~has_twin] = pd.NA
    out["truly_image_reliant"] = truly
    return out[list(SAMPLE_TABLE_COLUMNS)]


def _per_question_pred(per_run: pd.DataFrame | None, condition: str, question: pd.Series) -> np.ndarray:
    """The prediction of each question under a per-run condition (mean p_yes over its images,
    >= 0.5 is "yes"); None where the condition has no row for the question."""
    if per_run is None or per_run.empty or "prompt" not in per_run:
        return np.full(len(question), None, dtype=object)
    rows = per_run[per_run["condition"] == condition]
    mean = rows.groupby("prompt")["p_yes"].mean()
    p = question.map(mean).to_numpy(dtype=float)
    return np.where(np.isnan(p), None, np.where(p >= 0.5, "yes", "no")).astype(object)


def pairwise_flip_rate(predictions: pd.DataFrame) -> float:
    """Fraction of (prompt 0, prompt j > 0) image-conditioned pairs that disagree, pooled over samples.

    NaN when there is no paraphrase at all; ValueError when a sample has paraphrases but no
    original image-conditioned row.
    """
    counts = pair_disagreements(predictions)
    pairs = counts["pairs"].sum()
    return float(counts["disagree"].sum() / pairs) if pairs else float("nan")


def pair_disagreements(predictions: pd.DataFrame) -> pd.DataFrame:
    """Per sample with paraphrases: ``pairs`` (prompt 0 vs j > 0) and how many ``disagree``."""
    _check_predictions(predictions)
    image = predictions[predictions["condition"] == "image"]
    original = image[image["prompt_id"] == 0].set_index("sample_id")["pred"]
    paraphrases = image[image["prompt_id"] > 0]
    if paraphrases.empty:
        return pd.DataFrame({"pairs": pd.Series(dtype=int), "disagree": pd.Series(dtype=int)})
    missing = paraphrases.loc[~paraphrases["sample_id"].isin(original.index), "sample_id"].unique()
    if len(missing):
        raise ValueError(f"missing original image-conditioned prediction for sample_id(s) {_few(missing)}")
    disagree = paraphrases["pred"].to_numpy() != original.reindex(paraphrases["sample_id"]).to_numpy()
    frame = pd.DataFrame({"sample_id": paraphrases["sample_id"].to_numpy(), "disagree": disagree})
    return frame.groupby("sample_id")["disagree"].agg(pairs="size", disagree="sum")


def held_out_pairwise_flip_rate(predictions: pd.DataFrame, samples_table: pd.DataFrame,
                                held_out: dict | None) -> float | None:
    """The pairwise flip rate over (prompt 0, paraphrase j) pairs whose paraphrase text is
    held out from training for the sample's finding (`held_out`: {finding: [prompt texts]})."""
    if not held_out:
        return None
    finding = samples_table.set_index("sample_id")["finding"]
    image = predictions[(predictions["condition"] == "image") & predictions["sample_id"].isin(finding.index)]
    texts = {f: set(v) for f, v in held_out.items()}
    keep = [pid == 0 or text in texts.get(finding[sid], ()) for sid, pid, text in
            zip(image["sample_id"], image["prompt_id"], image["prompt"])]
    chosen = image[keep]
    if not (chosen["prompt_id"] > 0).any():
        return None
    return pairwise_flip_rate(chosen)


# -- helpers ----------------------------------------------------------------------------------

def _original_rows(predictions: pd.DataFrame, condition: str) -> pd.DataFrame:
    """The prompt_id 0 rows of one condition, indexed by sample_id."""
    rows = predictions[(predictions["condition"] == condition) & (predictions["prompt_id"] == 0)]
    return rows.set_index("sample_id")


def _nullable(values: pd.Series) -> np.ndarray:
    """Object array with None where the value is missing (NaN from a reindex or a parquet null)."""
    values = values.astype(object)
    return np.where(values.isna(), None, values).astype(object)


def _few(values, limit: int = 10) -> str:
    """Short printable list of offending ids for error messages."""
    values = list(values)
    shown = ", ".join(map(str, values[:limit]))
    return shown + (f", ... ({len(values)} in all)" if len(values) > limit else "")


def _require_columns(frame: pd.DataFrame, columns, name: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"{name}: missing column(s) {missing}")


def _check_predictions(predictions: pd.DataFrame) -> None:
    """Column, condition, answer and uniqueness checks shared by the functions reading predictions."""
    _require_columns(predictions, PREDICTION_COLUMNS, "predictions (call add_answers for pred/entropy)")
    bad = set(predictions["condition"]) - set(CONDITIONS)
    if bad:
        raise ValueError(f"predictions: unknown condition(s) {sorted(bad)}; expected {CONDITIONS}")
    bad = set(predictions["pred"]) - set(ANSWERS)
    if bad:
        raise ValueError(f"predictions: pred must be 'yes' or 'no', found {sorted(bad, key=str)}")
    key = ["sample_id", "prompt_id", "condition"]
    dup = predictions.loc[predictions.duplicated(key), "sample_id"].unique()
    if len(dup):
        raise ValueError(f"predictions: duplicate (sample_id, prompt_id, condition) rows for sample_id(s) {_few(dup)}")
