"""A run's numbers per finding and per paraphrase, intervals that hold on small samples, and the
one way a value with its interval is written.

Pure functions over a run's tables (``samples.parquet``: one row per sample, the columns of
``lib.protocol.taxonomy.SAMPLE_TABLE_COLUMNS``; ``predictions.parquet``: one row per prompt and
condition) and its ``summary.json``:

- ``proportion_ci(k, n)``: the Wilson score interval of k successes out of n
  (statsmodels.stats.proportion.proportion_confint). Unlike a percentile bootstrap it does not
  collapse to a point when every sample agrees (40 of 40 correct: 0.912 to 1.000, not 1.000).
- ``steady_ci(ci, k, n)``: a bootstrap interval, or the Wilson interval where the bootstrap
  degenerated (missing, or of zero width); ``steady(value, ci, n)`` the same for a rate over n
  samples (k = value x n): the interval every page shows for such a rate (a cluster bootstrap of
  8 samples that all agree gives 0.000 to 0.000, Wilson 0.000 to 0.324).
- ``lookup(summary, *keys)``: one value of a summary's tree, None where a level is missing.
- ``declared(summary, *key)``: a declared rate of the summary (lib.protocol.measures) with that
  interval, its n read from ``summary["rate_n"]``; a mean of two rates (the balanced accuracy)
  with the mean of their bounds where its own interval degenerated.
- ``per_finding(samples)``: per finding, n, positives, negatives, the four quadrant counts,
  accuracy, sensitivity and specificity with Wilson intervals.
- ``per_paraphrase(predictions, samples)``: per finding and paraphrase (prompt_id > 0), the
  flip rate against the original question (image-conditioned answers of the same sample
  differ; negated paraphrases compared by the answer they imply) with its Wilson interval.
- ``too_few(...)``: the "too few to tell" warnings, each naming its number and ``MIN_SAMPLES``
  (or ``MIN_POSITIVES``).
- ``paired_difference(a, b, measure)``: two screens of the same samples (two models, or a model
  with and without an adapter): over the samples both hold, each screen's rate of a per-sample
  indicator (``PAIRED_MEASURES``), their difference b - a with a percentile bootstrap interval
  that resamples the shared images (all samples of a drawn image together, as
  ``intervals.bootstrap_ci`` does), and the exact McNemar p-value of the discordant samples
  (statsmodels.stats.contingency_tables.mcnemar). Where every shared sample moves alike (e.g. no
  discordant sample: the bootstrap gives 0.000 to 0.000), the interval is the one the Wilson
  bound on the share of samples that could move otherwise allows (``steady_difference``).
- ``with_interval(value, ci)``: "0.742 (95 % CI 0.610 to 0.850)"; every page that shows a value
  with its interval writes it with this function, and ``shown(table)`` with it turns a table of
  these functions (a column X beside X_ci) into the table a page shows.
- ``image_blind_by_finding(summary)`` and ``local_tests_table(summary)``: the summary's per-finding
  image-blind rates and its local tests as the tables a page shows; ``scoring_lines(summary)``:
  what the run scored and how, in words.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
from statsmodels.stats.contingency_tables import mcnemar
from statsmodels.stats.proportion import proportion_confint

from .measures import RATES
from .vocabulary import QUADRANTS

# Below these a rate is shown but flagged "too few to tell": a Wilson interval over fewer than
# 30 samples is wider than +/- 0.15 near one half, and sensitivity over fewer than 10 positives
# moves by 0.1 with a single sample.
MIN_SAMPLES = 30
MIN_POSITIVES = 10
FINDING_COLUMNS = ("finding", "n", "positives", "negatives", *QUADRANTS, "accuracy", "accuracy_ci",
                   "sensitivity", "sensitivity_ci", "specificity", "specificity_ci")
# per-sample indicators two screens of the same samples are compared on: name -> (column, value).
# The image-blind rate has no per-sample indicator (lib.protocol.references: it is an expectation
# over references), so two screens compare it by its interval, not sample by sample.
PAIRED_MEASURES = {"Dangerous": ("quadrant", "Dangerous"), "correct": ("correct", True)}
PARAPHRASE_COLUMNS = ("finding", "prompt_id", "prompt", "negated", "n", "flips", "flip_rate",
                      "flip_rate_ci")


def proportion_ci(k: int, n: int, level: float = 0.95) -> list[float] | None:
    """Wilson score interval [low, high] of k successes out of n; None when n is 0."""
    if not n:
        return None
    low, high = proportion_confint(int(k), int(n), alpha=1 - level, method="wilson")
    return [float(max(low, 0.0)), float(min(high, 1.0))]


def steady_ci(ci, k: int, n: int, level: float = 0.95) -> list[float] | None:
    """``ci`` (a bootstrap interval) unless it is missing or of zero width, then the Wilson interval."""
    if ci is None or ci[0] is None or ci[1] is None or ci[1] - ci[0] <= 0:
        return proportion_ci(k, n, level)
    return [float(ci[0]), float(ci[1])]


def steady(value, ci, n) -> list[float] | None:
    """``steady_ci`` for a rate ``value`` over ``n`` samples (k = value x n, rounded); ``ci`` as
    it is where the value or n is missing."""
    if value is None or not n or (isinstance(value, float) and math.isnan(value)):
        return ci
    return steady_ci(ci, round(value * n), n)


def declared(summary: dict, *key: str) -> tuple[float | None, list[float] | None]:
    """(value, interval) of the declared rate at ``key`` (e.g. "quadrant_fractions", "Dangerous"),
    as every page shows it: ``steady`` over the samples it is over (``summary["rate_n"]``; the
    run's samples for a rate over all of them, in a summary written before ``rate_n``); an
    image-blind split without its crossed interval stays without one. A mean of
    two rates whose bootstrap degenerated gets the mean of its parts' bounds (their Wilson
    intervals where theirs degenerated too): wider than needed, never a point."""
    rate = next(r for r in RATES if r.key == key)
    value, ci = lookup(summary, *rate.point_at), lookup(summary, "ci95", *rate.key)
    kind, *args = rate.how
    if kind == "mean":
        if ci is not None and ci[1] - ci[0] > 0:
            return value, ci
        parts = [declared(summary, name)[1] for name in args]
        return value, (None if None in parts else [float(np.mean(bounds)) for bounds in zip(*parts)])
    if kind == "crossed" and ci is None:      # not estimated: Wilson would leave out the references
        return value, None
    n = (summary.get("rate_n") or {}).get(rate.name)
    if n is None and (kind == "crossed" or args[-1:] == ["one"]):
        n = summary.get("n_samples")
    return value, steady(value, ci, n)


def lookup(summary: dict, *keys):
    """summary[k1][k2]... (an int key indexes a list); None where any level is missing or None."""
    value = summary
    for key in keys:
        if isinstance(key, int) and isinstance(value, list):
            value = value[key] if -len(value) <= key < len(value) else None
        elif isinstance(value, dict):
            value = value.get(key)
        else:
            return None
        if value is None:
            return None
    return value


def _rate(hits: pd.Series) -> tuple[float | None, list[float] | None]:
    """(mean, Wilson interval) of a boolean series; (None, None) when empty."""
    n = int(len(hits))
    if not n:
        return None, None
    k = int(hits.sum())
    return k / n, proportion_ci(k, n)


def per_finding(samples: pd.DataFrame) -> pd.DataFrame:
    """One row per finding (sorted), columns ``FINDING_COLUMNS``; counts are integers, rates
    None where undefined (no positive sample: no sensitivity)."""
    rows = []
    for finding, group in samples.groupby("finding", sort=True):
        positive = group["label"] == "yes"
        counts = group["quadrant"].value_counts()
        accuracy, accuracy_ci = _rate(group["correct"].astype(bool))
        sensitivity, sensitivity_ci = _rate(group.loc[positive, "pred"] == "yes")
        specificity, specificity_ci = _rate(group.loc[~positive, "pred"] == "no")
        rows.append({"finding": finding, "n": int(len(group)), "positives": int(positive.sum()),
                     "negatives": int((~positive).sum()),
                     **{q: int(counts.get(q, 0)) for q in QUADRANTS},
                     "accuracy": accuracy, "accuracy_ci": accuracy_ci,
                     "sensitivity": sensitivity, "sensitivity_ci": sensitivity_ci,
                     "specificity": specificity, "specificity_ci": specificity_ci})
    return pd.DataFrame(rows, columns=list(FINDING_COLUMNS))


def per_paraphrase(predictions: pd.DataFrame, samples: pd.DataFrame) -> pd.DataFrame:
    """One row per (finding, paraphrase text), columns ``PARAPHRASE_COLUMNS``: over the samples
    with both the original question and that paraphrase scored with the image, how often the
    paraphrase's (implied) answer differs from the original's. ``prompt_id`` is the paraphrase's
    smallest id in the run (per-image question files may number them differently)."""
    image = predictions[(predictions["condition"] == "image")
                        & predictions["sample_id"].isin(samples["sample_id"])]
    image = image.merge(samples[["sample_id", "finding"]], on="sample_id")
    original = image[image["prompt_id"] == 0].set_index("sample_id")["pred"]
    paraphrases = image[image["prompt_id"] > 0].copy()
    paraphrases["flip"] = paraphrases["pred"].to_numpy() != original.reindex(paraphrases["sample_id"]).to_numpy()
    if "negated" not in paraphrases.columns:
        paraphrases["negated"] = False
    rows = []
    for (finding, prompt), group in paraphrases.groupby(["finding", "prompt"], sort=True):
        flip_rate, flip_ci = _rate(group["flip"])
        rows.append({"finding": finding, "prompt_id": int(group["prompt_id"].min()), "prompt": prompt,
                     "negated": bool(group["negated"].any()), "n": int(len(group)),
                     "flips": int(group["flip"].sum()), "flip_rate": flip_rate, "flip_rate_ci": flip_ci})
    table = pd.DataFrame(rows, columns=list(PARAPHRASE_COLUMNS))
    return table.sort_values(["finding", "prompt_id"], ignore_index=True)


def too_few(findings: pd.DataFrame, paraphrases: pd.DataFrame, n_samples: int) -> list[str]:
    """The "too few to tell" warnings of a run: the run, each finding (one line: its samples, its
    positives and negatives), the paraphrases (thresholds ``MIN_SAMPLES`` and ``MIN_POSITIVES``)."""
    notes = []
    if n_samples < MIN_SAMPLES:
        notes.append(f"too few to tell: the run has {n_samples} samples (fewer than {MIN_SAMPLES}); "
                     f"every rate below rests on them")
    for row in findings.itertuples():
        few = [f"{row.n} samples (fewer than {MIN_SAMPLES})"] if row.n < MIN_SAMPLES else []
        few += [f"{count} {word if count != 1 else word[:-1]} (fewer than {MIN_POSITIVES}, for the {measure})"
                for count, word, measure in ((row.positives, "positives", "sensitivity"),
                                             (row.negatives, "negatives", "specificity"))
                if count < MIN_POSITIVES]
        if few:
            notes.append(f"too few to tell for {row.finding}: {', '.join(few)}")
    thin = paraphrases[paraphrases["n"] < MIN_SAMPLES]
    if len(thin):
        notes.append(f"too few to tell for {len(thin)} of {len(paraphrases)} paraphrases: fewer than "
                     f"{MIN_SAMPLES} samples each (as few as {int(thin['n'].min())})")
    return notes


def paired_difference(a: pd.DataFrame, b: pd.DataFrame, measure: str = "Dangerous", *,
                      resamples: int = 2000, level: float = 0.95, seed: int = 0) -> dict | None:
    """Screen b against screen a on the samples both hold (module docstring): {"measure",
    "n_shared", "n_images", "rate_a", "rate_b", "difference", "ci95", "only_a", "only_b",
    "mcnemar_p"}; None when they share no sample or a table lacks the measure's column."""
    column, value = PAIRED_MEASURES[measure]
    if column not in a.columns or column not in b.columns:
        return None
    shared = a[["sample_id", "image_id", column]].merge(b[["sample_id", column]], on="sample_id",
                                                         suffixes=("_a", "_b"))
    if shared.empty:
        return None
    hit_a = (shared[f"{column}_a"] == value).fillna(False).to_numpy(bool)
    hit_b = (shared[f"{column}_b"] == value).fillna(False).to_numpy(bool)
    only_a, only_b = int((hit_a & ~hit_b).sum()), int((hit_b & ~hit_a).sum())
    table = [[int((hit_a & hit_b).sum()), only_a], [only_b, int((~hit_a & ~hit_b).sum())]]
    images, _ = pd.factorize(shared["image_id"])
    sums = np.zeros((images.max() + 1, 2))
    np.add.at(sums, images, np.column_stack([np.ones(len(shared)), hit_b.astype(float) - hit_a]))
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(sums), size=(resamples, len(sums)))
    totals = sums[draws].sum(axis=1)
    differences = totals[:, 1] / totals[:, 0]
    alpha = (1 - level) / 2
    difference = float(hit_b.mean() - hit_a.mean())
    return {"measure": measure, "n_shared": int(len(shared)), "n_images": int(len(sums)),
            "rate_a": float(hit_a.mean()), "rate_b": float(hit_b.mean()), "difference": difference,
            "ci95": steady_difference([float(x) for x in np.quantile(differences, [alpha, 1 - alpha])],
                                      difference, len(shared), level),
            "only_a": only_a, "only_b": only_b,
            "mcnemar_p": float(mcnemar(table, exact=True).pvalue) if only_a + only_b else 1.0}


def steady_difference(ci: list[float], difference: float, n: int, level: float = 0.95) -> list[float]:
    """``ci`` (a paired difference's bootstrap interval) unless it is of zero width: then every one
    of the ``n`` samples moved by the same d (-1, 0 or 1), and the share u that could move
    otherwise is at most the Wilson upper bound of 0 of n; each such sample shifts the difference
    by at most 1 + d downwards and 1 - d upwards: [d - u (1 + d), d + u (1 - d)]."""
    if ci[1] - ci[0] > 0:
        return ci
    u = proportion_ci(0, n, level)[1]
    return [difference - u * (1 + difference), difference + u * (1 - difference)]


def with_interval(value, ci=None, *, percent: bool = False, digits: int | None = None) -> str:
    """A value with its interval, the one way every page writes it: "0.742 (95 % CI 0.610 to
    0.850)", "74.2 % (95 % CI 61.0 to 85.0 %)" with ``percent`` ("to": a bound may be negative); "n/a" for a missing value, the value alone
    without an interval. ``digits`` defaults to 3 (1 for percentages)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool) and not percent:
        return str(value)   # a count
    digits = (1 if percent else 3) if digits is None else digits
    scale, unit = (100, " %") if percent else (1, "")
    shown = f"{scale * value:.{digits}f}{unit}"
    if not ci or ci[0] is None or ci[1] is None:
        return shown
    return f"{shown} (95 % CI {scale * ci[0]:.{digits}f} to {scale * ci[1]:.{digits}f}{unit})"


def shown(table: pd.DataFrame) -> pd.DataFrame:
    """``table`` as a page shows it, every cell a string: a column X with a column X_ci beside it
    becomes one column "X (95 % CI)" (``with_interval``), other numbers are written by
    ``with_interval`` too (counts as integers, rates to 3 places, None and NaN as n/a), booleans
    as "yes" or ""."""
    out = {}
    for column in table.columns:
        if column.endswith("_ci") and column[:-3] in table.columns:
            continue
        values = table[column].astype(object)
        if f"{column}_ci" in table.columns:
            out[f"{column} (95 % CI)"] = [with_interval(v, ci) for v, ci in zip(values, table[f"{column}_ci"])]
        else:
            out[column] = [cell(v) for v in values]
    return pd.DataFrame(out, index=table.index)


def cell(value) -> str:
    """One value as a page shows it: a string as it is, a boolean as "yes" or "", a number by
    ``with_interval`` (counts as integers, rates to 3 places, None and NaN as n/a)."""
    if isinstance(value, str):
        return value
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else ""
    return with_interval(value)


def interval_table(rows: dict) -> pd.DataFrame:
    """{measure: (value, [low, high] or None)} as a one-column table, "value (95 % CI)"."""
    return pd.DataFrame({"value (95 % CI)": {label: with_interval(value, ci) for label, (value, ci) in rows.items()}})


def image_blind_by_finding(summary: dict) -> pd.DataFrame:
    """Per finding (summary ``image_blind.by_finding``, lib.protocol.references): its samples, the
    reference images with and without it, and its image-blind rate with the interval that
    resamples images and references (``steady``: Wilson where it degenerated), or why it is
    not estimable; empty without a reference check."""
    block = summary.get("image_blind") or {}
    minimum = block.get("min_references")
    rows = {}
    for finding, entry in sorted((block.get("by_finding") or {}).items()):
        refs = entry.get("n_references") or {}
        value = entry.get("rate")
        rate = (with_interval(value, steady(value, entry.get("ci95"), entry.get("n_samples")))
                if entry.get("estimable") and value is not None
                else "too few references" + (f" (fewer than {minimum})" if minimum is not None else ""))
        rows[finding] = {"samples": cell(entry.get("n_samples")), "reference images with": cell(refs.get("yes", 0)),
                         "reference images without": cell(refs.get("no", 0)), "image-blind rate (95 % CI)": rate}
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("finding")


def scoring_lines(summary: dict) -> list[str]:
    """What the run scored and how: samples reused from earlier records and scored; the engine's
    mode, device, dtype and speed, and why it fell back (only when something was scored); the
    prompts scored after deduplication against the per-sample protocol, with the per-run
    reference and follow-up prompts beside them (lib.protocol.planning.dedup_counts)."""
    reuse = summary.get("records") or {}
    engine = summary.get("engine") or {}
    lines = [f"{summary['n_samples']} samples: {reuse.get('samples_reused', 0)} reused from earlier records, "
             f"{reuse.get('samples_scored', 0)} scored"]
    if engine.get("mode"):
        speed = engine.get("samples_per_second")
        lines.append(f"engine: {engine['mode']} on {engine.get('device')} ({engine.get('dtype')})"
                     + (f", {speed:.1f} samples per second" if speed else "")
                     + (f"; fell back: {engine['fallback_reason']}" if engine.get("fallback_reason") else ""))
    dedup = engine.get("dedup")
    if dedup and dedup.get("prompts_per_sample_protocol"):
        lines.append(f"prompts scored: {dedup['prompts_scored']} (the per-sample protocol: "
                     f"{dedup['prompts_per_sample_protocol']}; {with_interval(dedup['share_saved'], percent=True)} "
                     f"saved by deduplication), plus {dedup['reference_prompts']} reference and "
                     f"{dedup['followup_prompts']} follow-up prompts")
    return lines


# what each test changes, short enough for a notebook's table cell (pandas cuts at 50 characters)
LOCAL_WORDS = {
    "occlude": "its box filled from the other side or around",
    "occlude_control": "a same-size box filled elsewhere (control)",
    "followup": "the patient's other study, opposite label",
    "followup_control": "the patient's other study, same label (control)",
}


def local_tests_table(summary: dict) -> pd.DataFrame:
    """The run's local tests (summary ``local_tests``, lib.protocol.local_tests), one row each:
    what changes, the samples tested, those not tested and why, the share whose answer changed and,
    for the two tests, the share unchanged among the Dangerous samples tested (of how many), each
    with its ``steady`` interval; empty when the run has none."""
    rows = {}
    ci = (summary.get("ci95") or {}).get("local_tests") or {}
    for test, block in (summary.get("local_tests") or {}).items():
        intervals = ci.get(test) or {}
        share = "–"
        if "image_blind_share" in block:
            unchanged, n_dangerous = block["image_blind_share"], block.get("n_dangerous_tested", 0)
            share = (f"{with_interval(unchanged, steady(unchanged, intervals.get('image_blind_share'), n_dangerous))} "
                     f"(of {n_dangerous})")
        rate = block.get("change_rate")
        rows[test] = {
            "what changes": LOCAL_WORDS.get(test, ""), "samples tested": block["n_tested"],
            "not tested (why)": ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in block["not_tested"].items()) or "–",
            "answer changed": with_interval(rate, steady(rate, intervals.get("change_rate"), block["n_tested"])),
            "unchanged among Dangerous tested": share}
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("test")
