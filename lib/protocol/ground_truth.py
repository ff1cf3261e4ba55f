"""Ground truth (the offline world only): each measure of "the model ignores the image on this
sample" scored against the counterfactual twins (definitions written once, here; pred_twin and
truly_image_reliant are lib.protocol.taxonomy's columns).

- ground_truth [ground_truth], over samples with a twin row, positive class "the model ignores
  the image on this sample" (not truly_image_reliant): ``ignored_rate``; precision and recall
  [precision_recall] of ``paper_measure`` (not image_reliant) and ``dangerous`` (quadrant
  Dangerous, against "consistent and ignored"); ``reference_auroc``: the per-sample AUROC of
  reference_agreement (lib.protocol.measures.auroc) for the image-blind twin truth (Dangerous and
  unchanged on the twin): references test the model on other images, never on the sample's own,
  so this is no per-sample verdict; ``image_blind``: the twin truth of the
  image-blind rate, mean of [Dangerous and pred_twin == pred] over the samples with a twin and
  references, beside the estimate on the same samples, its interval and whether it covers;
  ``local_tests`` [local_test_truth]: per local test (occlude, followup), precision and
  recall of "the answer did not change" for "the twin's answer did not change" over the samples
  with a twin that the test covers, with ``coverage`` = those samples / the samples with a twin,
  and ``by_label``: the same per sample label ("yes", "no"), because the two directions test
  different things: a positive's other study lacks the finding, a negative's shows it, and the
  model must then detect it on another image than the one the twin changes.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from .local_tests import CHANGES
from .measures import auroc, plain
from .vocabulary import LOCAL_TESTS


def precision_recall(predicted, truth) -> dict:
    """{"precision", "recall", "n_predicted", "n_true", "n_hits"} of boolean arrays (None where
    undefined); the counts let precision and recall be pooled over runs."""
    predicted, truth = np.asarray(predicted, dtype=bool), np.asarray(truth, dtype=bool)
    hits = int((predicted & truth).sum())
    return {"precision": hits / int(predicted.sum()) if predicted.any() else None,
            "recall": hits / int(truth.sum()) if truth.any() else None,
            "n_predicted": int(predicted.sum()), "n_true": int(truth.sum()), "n_hits": hits}


def ground_truth(samples_table: pd.DataFrame, image_blind: dict | None = None) -> dict | None:
    """Each measure of "the model ignores the image on this sample" scored against the twins.

    Over the samples with a twin row; positive class: NOT truly_image_reliant. None when no
    sample has a twin. See the module docstring.
    """
    table = samples_table[samples_table["truly_image_reliant"].notna()]
    if table.empty:
        return None
    ignored = ~table["truly_image_reliant"].astype(bool).to_numpy()
    consistent = table["consistent"].astype(bool).to_numpy()
    return {
        "n_samples": int(len(table)),
        "ignored_rate": float(ignored.mean()),
        "paper_measure": precision_recall(~table["image_reliant"].astype(bool).to_numpy(), ignored),
        "dangerous": precision_recall((table["quadrant"] == "Dangerous").to_numpy(), consistent & ignored),
        "reference_auroc": _reference_auroc(table, (table["quadrant"] == "Dangerous").to_numpy() & ignored),
        "image_blind": _image_blind_truth(table, ignored, image_blind),
        "local_tests": local_test_truth(table, ignored),
    }


def local_test_truth(table: pd.DataFrame, ignored: np.ndarray) -> dict | None:
    """Each local test's "unchanged" scored against the twins' ``ignored`` (module docstring)."""
    out = {}
    for test in LOCAL_TESTS:             # a control tests nothing against the twins
        if CHANGES[test] not in table:
            continue
        unchanged, covered = local_outcome(table, test)
        label = table["label"].to_numpy()
        by_label = {value: scored(unchanged, ignored, covered & (label == value)) for value in ("yes", "no")}
        out[test] = {**scored(unchanged, ignored, covered), "coverage": float(covered.mean()), "by_label": by_label}
    return out or None


def local_outcome(table: pd.DataFrame, test: str) -> tuple[np.ndarray, np.ndarray]:
    """(unchanged, covered) per sample of ``table``: whether the local ``test`` left the answer
    unchanged (False where it did not apply) and whether it applied."""
    column = table[CHANGES[test]]
    return ~column.fillna(True).to_numpy(dtype=bool), column.notna().to_numpy()


def scored(unchanged: np.ndarray, ignored: np.ndarray, covered: np.ndarray) -> dict:
    """precision_recall of ``unchanged`` for ``ignored`` over the ``covered`` samples, and their number."""
    return {**precision_recall(unchanged[covered], ignored[covered]), "n_covered": int(covered.sum())}


def _reference_auroc(table: pd.DataFrame, ignored: np.ndarray) -> float | None:
    """AUROC of reference_agreement for the boolean truth ``ignored`` over the samples that have one."""
    if "reference_agreement" not in table:
        return None
    score = table["reference_agreement"].to_numpy(dtype=float)
    ok = ~np.isnan(score)
    return plain(auroc(score[ok], ignored[ok])[0])


def _image_blind_truth(table: pd.DataFrame, ignored: np.ndarray, image_blind: dict | None) -> dict | None:
    """The image-blind rate's twin truth beside its estimate (module docstring)."""
    if not image_blind or image_blind.get("rate") is None or "reference_agreement" not in table:
        return None
    ok = table["reference_agreement"].notna().to_numpy()
    truth = float(((table["quadrant"] == "Dangerous").to_numpy() & ignored)[ok].mean()) if ok.any() else None
    ci = image_blind.get("ci95")
    covered = None if truth is None or ci is None else bool(ci[0] <= truth <= ci[1])
    return {"truth": truth, "estimate": image_blind["rate"], "ci95": ci, "covered": covered,
            "n_samples": int(ok.sum())}
