"""summary.json's measures: one run's summary assembled from the declared rates and the other
measures (definitions written once, here, for the keys defined nowhere else).

- The rates with an interval (flip_rate, accuracy, quadrant_fractions, the AUROC, ...):
  declared in lib.protocol.measures; their intervals under ``ci95`` (lib.protocol.intervals).
- quadrant_counts; accuracy_by_quadrant and entropy_by_quadrant: plain means over the samples
  of each quadrant; a mean over zero samples is None.
- prior_accuracy_by_quadrant: in each quadrant, the fraction of samples whose text-only
  prediction equals the label (what the prior alone earns there).
- reliance_checks: the checks the run asked for (their change rates are declared rates).
- dangerous_breakdown: ``"image-blind"`` and ``"prior-coincident"``, the pooled rates of
  lib.protocol.references (fractions of ALL estimable samples; they add up to their Dangerous
  fraction; None when not estimable); ``image_blind``: the whole block, with per-finding rates.
- screening, threshold_sensitivity, yes_no_mass, warnings: lib.protocol.screening;
  ground_truth: lib.protocol.ground_truth; pairwise_flip_rate_held_out: lib.protocol.taxonomy.
- local_tests: per local test (lib.protocol.local_tests), ``n_tested`` samples, ``not_tested``
  by reason and its rates (declared in lib.protocol.measures); None when the run has none.
- rate_n: per declared ratio, by its name (lib.protocol.measures ``Rate.name``), the number of
  samples it is over (``Rate.over``): the n of the Wilson interval that the pages show where the
  bootstrap degenerated to a point (lib.protocol.breakdown.declared).
- ci_method: the sentences saying how the intervals were made.
"""
from __future__ import annotations

import pandas as pd

from .ground_truth import ground_truth
from .intervals import ci_method, rate_intervals, validate_bootstrap
from .measures import LOCAL_RATES, RATES, place, plain
from .screening import screening, threshold_sensitivity, yes_no_mass
from .taxonomy import held_out_pairwise_flip_rate
from .vocabulary import QUADRANTS, RELIANCE_CHECKS

# summary.json's measure keys, in the order they are written
KEYS = (
    "n_samples", "flip_rate", "pairwise_flip_rate", "pairwise_flip_rate_held_out", "accuracy",
    "image_reliance_rate", "quadrant_counts", "quadrant_fractions", "accuracy_by_quadrant",
    "entropy_by_quadrant", "sensitivity", "specificity", "balanced_accuracy", "prior_accuracy_by_quadrant",
    "reliance_checks", "blank_change_rate", "noise_change_rate", "dangerous_breakdown", "image_blind",
    "local_tests",
    "screening", "threshold_sensitivity", "yes_no_mass", "warnings", "ci95", "rate_n", "ground_truth", "ci_method",
)


def summarize(samples_table: pd.DataFrame, predictions: pd.DataFrame, *, image_blind: dict | None = None,
              reliance_checks=None, bootstrap_resamples: int = 1000, ci_level: float = 0.95, seed: int = 0,
              held_out_prompts: dict | None = None, local: dict | None = None) -> dict:
    """JSON-ready summary of a classified run (plain Python types; None where a rate is undefined).

    The rates are computed on the predictions of the table's samples only. ``reliance_checks``:
    the checks the run asked for (None: those with rows in ``predictions``). ``image_blind``: the
    block of lib.protocol.references.image_blind, from which ``dangerous_breakdown`` and its
    interval are read (None: not estimated). ``bootstrap_resamples``, ``ci_level`` and ``seed``
    drive ``ci95`` (lib.protocol.intervals). ``held_out_prompts`` ({finding: [texts]}, the
    paraphrases no training stage saw) gives ``pairwise_flip_rate_held_out``. ``local``: the local
    tests' counts (lib.protocol.local_tests.summary_counts; None: no local test). Every key is defined
    in the module docstring or the one it names.
    """
    checks = _checks(reliance_checks, predictions)
    validate_bootstrap(bootstrap_resamples, ci_level)
    in_table = predictions[predictions["sample_id"].isin(samples_table["sample_id"])]
    summary = dict.fromkeys(KEYS)
    summary["n_samples"] = int(len(samples_table))
    summary["pairwise_flip_rate_held_out"] = held_out_pairwise_flip_rate(in_table, samples_table, held_out_prompts)
    counts = samples_table["quadrant"].value_counts().reindex(QUADRANTS, fill_value=0)
    summary["quadrant_counts"] = {q: int(counts[q]) for q in QUADRANTS}
    prior_correct = samples_table["pred_text_only"] == samples_table["label"]
    for key, values in (("accuracy_by_quadrant", samples_table["correct"]),
                        ("entropy_by_quadrant", samples_table["entropy"]),
                        ("prior_accuracy_by_quadrant", prior_correct)):
        means = values.groupby(samples_table["quadrant"]).mean()
        summary[key] = {q: plain(means.get(q, float("nan"))) for q in QUADRANTS}
    summary["reliance_checks"] = list(checks)
    summary["image_blind"] = image_blind
    summary["screening"] = screening(samples_table)
    summary["threshold_sensitivity"] = threshold_sensitivity(samples_table, in_table)
    mass = yes_no_mass(in_table)
    summary["yes_no_mass"] = {"median": mass["median"], "p10": mass["p10"]}
    summary["warnings"] = mass["warnings"]
    point, interval, summary["rate_n"] = rate_intervals(samples_table, in_table, resamples=bootstrap_resamples,
                                                        ci_level=ci_level, seed=seed)
    summary["local_tests"] = local
    if local is not None:
        local_point, local_interval, local_n = rate_intervals(
            samples_table, in_table, resamples=bootstrap_resamples, ci_level=ci_level, seed=seed,
            rates=LOCAL_RATES, unit="patient")
        point, interval = {**point, **local_point}, {**interval, **local_interval}
        summary["rate_n"].update(local_n)
    block = image_blind or {}
    summary["ci95"] = {}
    for rate in RATES if local is not None else (r for r in RATES if r not in LOCAL_RATES):
        kind, *args = rate.how
        value, ci = (block.get(args[0]), block.get(args[1])) if kind == "crossed" \
            else (point[rate.name], interval[rate.name])
        place(summary, rate.point_at, value)
        place(summary["ci95"], rate.key, ci)
    summary["screening"]["ci95"] = summary["ci95"]["auroc_entropy_dangerous"]
    summary["ground_truth"] = ground_truth(samples_table, image_blind)
    summary["ci_method"] = ci_method(bootstrap_resamples, ci_level, seed,
                                     samples_table["image_id"].nunique(dropna=False))
    if block.get("ci_method"):
        summary["ci_method"] += "; " + block["ci_method"]
    return summary


def _checks(reliance_checks, predictions: pd.DataFrame) -> tuple:
    """The run's reliance checks in ``RELIANCE_CHECKS`` order (None: those with rows); the params
    schema (lib.protocol.config) is what rejects an unknown check."""
    if reliance_checks is None:
        present = set(predictions["condition"]) if "condition" in predictions.columns else set()
        return tuple(c for c in RELIANCE_CHECKS if c in present)
    return tuple(c for c in RELIANCE_CHECKS if c in reliance_checks)
