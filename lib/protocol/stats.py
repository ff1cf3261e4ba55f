"""Across-pair statistics: collect per-run summaries and correlate flip rate with the Dangerous fraction.

A "pair" is one (model configuration, dataset) run, i.e. one ``<runs_dir>/<run>/summary.json``
written by the evaluate notebooks (see ``lib.protocol.summary.summarize``). The paper reports the
flip-rate / Dangerous-fraction correlation over its 10 pairs (r = -0.89) without naming the
correlation type or interval; we report Pearson r with a two-sided p-value and a 95 % Fisher-z
confidence interval, plus Spearman rho as a rank-based check.

Added beside them (issue 12), in ``flip_vs_dangerous`` / ``flip_vs``:

- ``bootstrap_ci95`` [bootstrap_correlation]: percentile interval of Pearson r from a bootstrap
  that resamples every pair's samples independently (stratified by pair), in clusters of images
  as the per-pair intervals do (lib.protocol.intervals.bootstrap_ci), recomputes each pair's flip
  rate and Dangerous (or image-blind) fraction from its samples table, then r across pairs
  (scipy.stats.bootstrap, one sample per pair). Resamples where r is undefined (a constant
  variable) are left out.
- ``permutation_p`` [permutation_p]: two-sided p-value of Pearson r under random re-pairings of
  the two variables (scipy.stats.permutation_test, permutation_type="pairings"; exact when n!
  is at most the number of resamples).
- ``independence_r`` [independence]: Pearson r between the flip rate f and (1 - f)(1 - rho),
  rho = image-reliance rate: since Dangerous = (1 - f) - Ideal, this is the correlation that the
  arithmetic alone produces if consistency and image reliance were independent. An observed r
  close to it says little beyond that arithmetic.
- ``image_blind``: the same correlation (with its bootstrap and permutation p) for the
  image-blind rate (lib.protocol.references: how often a Dangerous answer would survive an image
  showing the opposite finding), the part of Dangerous that does mean "ignores the image"; its
  bootstrap holds each pair's reference answers fixed.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats as sps

from .breakdown import cell, declared, lookup, shown, with_interval
from .intervals import validate_bootstrap
from .vocabulary import QUADRANTS

# Below this many pairs a correlation across them is too few to tell: Pearson r over 7 points has a
# 95 % interval wider than 1.2 even at r = 0.5, and r = 1.0 over 2 points means nothing.
MIN_PAIRS = 8
# The columns of the pairs table a page shows (the rest are in pairs.csv), with their names there.
READABLE_COLUMNS = {"flip_rate": "flip rate", "frac_Dangerous": "Dangerous",
                    "frac_image_blind": "image-blind", "accuracy": "accuracy",
                    "auroc_entropy_dangerous": "screening AUROC"}

SUMMARY_KEYS = (
    "config", "dataset", "n_samples", "flip_rate", "pairwise_flip_rate", "accuracy",
    "quadrant_fractions", "accuracy_by_quadrant", "entropy_by_quadrant",
)
# Optional summary keys (NaN when a summary predates them): column -> path in summary.json.
OPTIONAL_COLUMNS = {
    "image_reliance_rate": ("image_reliance_rate",),
    "sensitivity": ("sensitivity",),
    "specificity": ("specificity",),
    "balanced_accuracy": ("balanced_accuracy",),
    "blank_change_rate": ("blank_change_rate",),
    "frac_image_blind": ("dangerous_breakdown", "image-blind"),
    "frac_prior_coincident": ("dangerous_breakdown", "prior-coincident"),
    "image_blind_among_dangerous": ("image_blind", "among_dangerous"),
    "auroc_entropy_dangerous": ("screening", "auroc_entropy_dangerous"),
}
# Interval columns <name>_low / <name>_high: name -> key of the declared rate (lib.protocol.measures)
# whose interval they hold, as the pages show it (breakdown.declared: Wilson where it degenerated).
CI_COLUMNS = {
    "flip_rate": ("flip_rate",),
    "accuracy": ("accuracy",),
    "balanced_accuracy": ("balanced_accuracy",),
    "frac_Dangerous": ("quadrant_fractions", "Dangerous"),
    "frac_image_blind": ("dangerous_breakdown", "image-blind"),
    "frac_prior_coincident": ("dangerous_breakdown", "prior-coincident"),
    "auroc_entropy_dangerous": ("auroc_entropy_dangerous",),
}
PAIR_COLUMNS = (
    ("pair", "config", "dataset", "n_samples", "flip_rate", "pairwise_flip_rate", "accuracy")
    + tuple(f"frac_{q}" for q in QUADRANTS)
    + tuple(f"acc_{q}" for q in QUADRANTS)
    + tuple(f"entropy_{q}" for q in QUADRANTS)
    + ("n_skipped",)
    + tuple(OPTIONAL_COLUMNS)
    + tuple(f"{name}_{end}" for name in CI_COLUMNS for end in ("low", "high"))
    + ("run",)
)


def _dangerous(table: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    return (table["quadrant"] == "Dangerous").to_numpy(dtype=float), np.ones(len(table))


def _image_blind(table: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    if "reference_agreement" not in table.columns:
        return np.zeros(len(table)), np.zeros(len(table))
    agreement = table["reference_agreement"].to_numpy(dtype=float)
    ok = ~np.isnan(agreement)
    value = np.where(ok, (table["quadrant"] == "Dangerous").to_numpy() * np.nan_to_num(agreement), 0.0)
    return value, ok.astype(float)


# samples-table definitions of the across-pair variables the bootstrap recomputes: each gives a
# per-sample value and the per-sample weight of its denominator
BOOTSTRAP_VARIABLES = {"frac_Dangerous": _dangerous, "frac_image_blind": _image_blind}


def correlation(x, y) -> dict:
    """Pearson r (two-sided p, 95 % Fisher-z CI) and Spearman rho of paired values; never raises on data.

    Pairs where either value is NaN are dropped and ``n`` counts the rest. The CI,
    tanh(atanh(r) +/- z_0.975 / sqrt(n - 3)), needs n >= 4, so it is None below that. With fewer
    than 2 pairs or a constant input the coefficients are None and ``note`` says why;
    otherwise ``note`` is None. Unequal lengths are a caller error (ValueError).
    """
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"correlation: x and y must be 1-D of equal length, got {x.shape} and {y.shape}")
    keep = ~(np.isnan(x) | np.isnan(y))
    x, y = x[keep], y[keep]
    n = int(len(x))
    result = dict(pearson_r=None, p_value=None, n=n, ci95_low=None, ci95_high=None,
                  spearman_rho=None, spearman_p=None, note=None)
    if n < 2:
        result["note"] = f"only {n} complete pair(s): correlation undefined"
        return result
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        result["note"] = "constant input: correlation undefined"
        return result
    pearson = sps.pearsonr(x, y)
    spearman = sps.spearmanr(x, y)
    result.update(pearson_r=_plain(pearson.statistic), p_value=_plain(pearson.pvalue),
                  spearman_rho=_plain(spearman.statistic), spearman_p=_plain(spearman.pvalue))
    if n >= 4:
        ci = pearson.confidence_interval(0.95)  # Fisher z transform
        result.update(ci95_low=_plain(ci.low), ci95_high=_plain(ci.high))
    return result


def gather_runs(runs_dir) -> pd.DataFrame:
    """One row per ``runs_dir/*/summary.json``, sorted by (config, dataset), columns ``PAIR_COLUMNS``.

    ``n_skipped`` is the total of the summary's reason -> count dict (0 when absent); rates that
    a summary reports as None become NaN, and so do the ``OPTIONAL_COLUMNS`` that an older summary
    lacks; the ``CI_COLUMNS`` (``<name>_low``, ``<name>_high``) are ``breakdown.declared``'s
    intervals (NaN where it has none); ``run`` is the run folder's
    name (the key of ``gather_samples``). Raises FileNotFoundError when there is no summary,
    ValueError for a summary missing a key or two summaries of the same pair.
    """
    runs_dir = Path(runs_dir)
    summaries = read_summaries(runs_dir)
    if not summaries:
        raise FileNotFoundError(
            f"no */summary.json under {runs_dir}: run the evaluate notebooks first to produce the runs"
        )
    rows, seen = [], {}
    for run, summary in summaries.items():
        path = runs_dir / run / "summary.json"
        row = summary_row(run, summary, path)
        if row["pair"] in seen:
            raise ValueError(f"pair {row['pair']} appears twice: {seen[row['pair']]} and {path}")
        seen[row["pair"]] = path
        rows.append(row)
    return pairs_frame(rows).sort_values(["config", "dataset"], ignore_index=True)


def summary_row(run: str, summary: dict, path) -> dict:
    """One row of ``gather_runs`` (columns ``PAIR_COLUMNS``) from a run's summary; ``path`` names
    the summary in the error when a key is missing."""
    missing = [k for k in SUMMARY_KEYS if k not in summary]
    if missing:
        raise ValueError(f"{path}: summary is missing key(s) {missing}")
    row = {"pair": f"{summary['config']}__{summary['dataset']}", **{k: summary[k] for k in SUMMARY_KEYS[:6]}}
    for prefix, key in (("frac", "quadrant_fractions"), ("acc", "accuracy_by_quadrant"),
                        ("entropy", "entropy_by_quadrant")):
        row.update({f"{prefix}_{q}": summary[key].get(q) for q in QUADRANTS})
    row["n_skipped"] = int(sum((summary.get("n_skipped") or {}).values()))
    row.update({name: lookup(summary, *keys) for name, keys in OPTIONAL_COLUMNS.items()})
    for name, key in CI_COLUMNS.items():
        interval = declared(summary, *key)[1] or (None, None)
        row[f"{name}_low"], row[f"{name}_high"] = interval
    row["run"] = run
    return row


def pairs_frame(rows: list[dict]) -> pd.DataFrame:
    """Rows of ``summary_row`` as a table, every rate a float (None -> NaN)."""
    frame = pd.DataFrame(rows, columns=list(PAIR_COLUMNS))
    rates = [c for c in PAIR_COLUMNS[4:] if c not in ("n_skipped", "run")]
    frame[rates] = frame[rates].astype(float)
    return frame


def readable_pairs(pairs: pd.DataFrame) -> pd.DataFrame:
    """The pairs table of ``gather_runs`` as a page shows it: one row per pair, its samples and
    ``READABLE_COLUMNS`` each with its interval (``breakdown.shown``)."""
    table = pd.DataFrame({"pair": pairs["pair"], "samples": pairs["n_samples"].astype(int)})
    for column, name in READABLE_COLUMNS.items():
        table[name] = pairs[column]
        table[f"{name}_ci"] = [None if pd.isna(low) or pd.isna(high) else [low, high]
                               for low, high in zip(pairs[f"{column}_low"], pairs[f"{column}_high"])]
    return shown(table).set_index("pair")


def p_text(p) -> str:
    """A p-value as a page writes it: 3 decimals, or 2 significant digits below 0.001 (a
    permutation p's floor, 1 / (resamples + 1), is not 0); "n/a" when missing."""
    if p is None or (isinstance(p, float) and math.isnan(p)):
        return "n/a"
    return f"{p:.3f}" if p >= 0.001 else f"{p:.1e}"


def readable_correlation(result: dict) -> pd.Series:
    """One correlation of ``flip_vs`` as a page shows it, each row naming its keys in
    correlation.json: r with its Fisher-z and its bootstrap interval, the p-values, Spearman's rho,
    the pairs, the r of independent axes (where computed) and the note (where there is one)."""
    boot = result.get("bootstrap_ci95")
    rows = {
        "Pearson r, Fisher-z 95 % CI (pearson_r, ci95_low, ci95_high)":
            with_interval(result.get("pearson_r"), [result.get("ci95_low"), result.get("ci95_high")]),
        "Pearson r, bootstrap 95 % CI over images (bootstrap_ci95)":
            with_interval(result.get("pearson_r"), boot) if boot else "n/a",
        "p-value (p_value)": p_text(result.get("p_value")),
        "permutation p-value (permutation_p)": p_text(result.get("permutation_p")),
        "Spearman rho (spearman_rho)": cell(result.get("spearman_rho")),
        "Spearman p-value (spearman_p)": p_text(result.get("spearman_p")),
        "pairs (n)": cell(result.get("n")),
    }
    if result.get("independence_r") is not None:
        rows["r of independent axes (independence_r)"] = cell(result["independence_r"])
    if result.get("note"):
        rows["note"] = result["note"]
    return pd.Series(rows, dtype=object)


def read_summaries(runs_dir) -> dict[str, dict]:
    """Each run's ``summary.json`` under ``runs_dir``, keyed by the run folder's name (the key of
    ``gather_samples``); {} when there is none."""
    return {path.parent.name: json.loads(path.read_text())
            for path in sorted(Path(runs_dir).glob("*/summary.json"))}


def gather_samples(runs_dir, name: str = "samples.parquet") -> dict[str, pd.DataFrame]:
    """Each pair's per-sample table (``samples.parquet``, or another table ``name`` of the runs:
    ``predictions.parquet``), keyed by the run folder's name."""
    paths = sorted(Path(runs_dir).glob(f"*/{name}"))
    return {path.parent.name: pd.read_parquet(path) for path in paths}


def flip_vs_dangerous(pairs: pd.DataFrame, samples_by_pair: dict | None = None, *,
                      bootstrap_resamples: int = 1000, ci_level: float = 0.95, seed: int = 0,
                      permutation_resamples: int = 9999) -> dict:
    """``correlation(flip_rate, frac_Dangerous)`` across pairs, plus ``pairs``: the pair names used.

    Added keys (module docstring): ``bootstrap_ci95`` (None without ``samples_by_pair``, the
    per-pair samples tables of ``gather_samples``), ``permutation_p``, ``independence_r`` and
    ``independence`` (its full correlation), and ``image_blind``: ``flip_vs`` for the
    image-blind fraction. ``bootstrap_method`` says how the interval was made.
    """
    options = dict(bootstrap_resamples=bootstrap_resamples, ci_level=ci_level, seed=seed,
                   permutation_resamples=permutation_resamples)
    result = flip_vs(pairs, "frac_Dangerous", samples_by_pair, **options)
    baseline = independence(pairs)
    result["independence_r"] = baseline["pearson_r"]
    result["independence"] = baseline
    result["image_blind"] = flip_vs(pairs, "frac_image_blind", samples_by_pair, **options)
    return result


def flip_vs(pairs: pd.DataFrame, column: str, samples_by_pair: dict | None = None, *,
            bootstrap_resamples: int = 1000, ci_level: float = 0.95, seed: int = 0,
            permutation_resamples: int = 9999) -> dict:
    """``correlation(flip_rate, pairs[column])`` with ``pairs``, ``permutation_p`` and
    ``bootstrap_ci95`` (for a column of ``BOOTSTRAP_VARIABLES``, given the samples tables).

    A missing column counts as all NaN (n = 0, every statistic None).
    """
    pairs = pairs if column in pairs.columns else pairs.assign(**{column: np.nan})
    used = pairs.dropna(subset=["flip_rate", column])
    result = correlation(used["flip_rate"], used[column])
    result["pairs"] = [str(p) for p in used["pair"]]
    result["permutation_p"] = permutation_p(used["flip_rate"], used[column],
                                            resamples=permutation_resamples, seed=seed)
    result["bootstrap_ci95"] = None
    result["bootstrap_method"] = None
    if samples_by_pair is not None and column in BOOTSTRAP_VARIABLES:
        tables = [_table_of(row, samples_by_pair) for row in used.itertuples()]
        boot = bootstrap_correlation(tables, column, resamples=bootstrap_resamples,
                                     ci_level=ci_level, seed=seed)
        result["bootstrap_ci95"] = boot["ci95"]
        result["bootstrap_method"] = boot["method"]
    return result


def independence(pairs: pd.DataFrame) -> dict:
    """``correlation(f, (1 - f)(1 - rho))`` across pairs (f flip rate, rho image-reliance rate).

    The Dangerous fraction that independent axes would give; see the module docstring. ``pairs``
    lists the pairs used; None coefficients when the image_reliance_rate column is missing.
    """
    rho = pairs["image_reliance_rate"] if "image_reliance_rate" in pairs.columns else np.nan
    frame = pairs.assign(_expected=(1 - pairs["flip_rate"]) * (1 - rho))
    used = frame.dropna(subset=["flip_rate", "_expected"])
    result = correlation(used["flip_rate"], used["_expected"])
    result["pairs"] = [str(p) for p in used["pair"]]
    return result


def permutation_p(x, y, *, resamples: int = 9999, seed: int = 0) -> float | None:
    """Two-sided permutation p-value of Pearson r (scipy.stats.permutation_test, pairings).

    NaN pairs are dropped; None with fewer than 3 pairs or a constant input.
    """
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    keep = ~(np.isnan(x) | np.isnan(y))
    x, y = x[keep], y[keep]
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return None

    def statistic(a, axis=-1):
        return _pearson_rows(a, y)

    result = sps.permutation_test((x,), statistic, permutation_type="pairings", vectorized=True,
                                  n_resamples=resamples, alternative="two-sided",
                                  rng=np.random.default_rng(seed))
    return _plain(result.pvalue)


def bootstrap_correlation(tables: list[pd.DataFrame], column: str = "frac_Dangerous", *,
                          resamples: int = 1000, ci_level: float = 0.95, seed: int = 0) -> dict:
    """Percentile interval of Pearson r(flip rate, ``column``) across the pairs' samples tables.

    Every resample draws each pair's images with replacement, independently of the other pairs
    (all samples of a drawn image come with it), recomputes each pair's flip rate (not
    consistent) and ``column`` (``BOOTSTRAP_VARIABLES``: the Dangerous fraction, or the
    image-blind rate with each pair's reference answers held fixed), then r. Returns ``ci95`` ([low, high],
    None with fewer than 3 pairs or when no resample defines r) and ``method`` (a sentence).
    """
    validate_bootstrap(resamples, ci_level)
    variable = BOOTSTRAP_VARIABLES[column]
    method = (f"percentile bootstrap (scipy.stats.bootstrap) of Pearson r over {resamples} "
              f"resamples, each pair's images drawn with replacement independently of the other "
              f"pairs and its flip rate and {column} recomputed from its samples; level "
              f"{ci_level:g}, seed {seed}; resamples where r is undefined are left out")
    if len(tables) < 3:
        return {"ci95": None, "method": method}
    per_pair = []
    for table in tables:
        image_index, _ = pd.factorize(table["image_id"], use_na_sentinel=False)
        n_images = int(image_index.max()) + 1
        sums = np.zeros((n_images, 4))
        value, weight = variable(table)
        np.add.at(sums, image_index, np.column_stack(
            [np.ones(len(table)), ~table["consistent"].to_numpy(bool), value, weight]))
        per_pair.append(sums)

    def statistic(*indices, axis=-1):
        x, y = [], []
        for idx, sums in zip(indices, per_pair):
            idx = np.atleast_2d(idx)
            b, n = idx.shape[0], len(sums)
            weights = np.bincount((idx + n * np.arange(b)[:, None]).ravel(),
                                  minlength=b * n).reshape(b, n)
            totals = weights @ sums
            x.append(totals[:, 1] / totals[:, 0])
            with np.errstate(invalid="ignore", divide="ignore"):
                y.append(totals[:, 2] / totals[:, 3])
        return _pearson_rows(np.column_stack(x), np.column_stack(y))

    # a pair of one image cannot be resampled by scipy: two draws of its one image, same rates
    data = tuple(np.arange(len(s)) if len(s) >= 2 else np.zeros(2, dtype=int) for s in per_pair)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = sps.bootstrap(data, statistic, n_resamples=resamples, vectorized=True,
                               paired=False, method="percentile", confidence_level=ci_level,
                               rng=np.random.default_rng(seed))
        dist = np.asarray(result.bootstrap_distribution, dtype=float)
        dist = dist[~np.isnan(dist)]
    if not len(dist):
        return {"ci95": None, "method": method}
    alpha = (1 - ci_level) / 2
    low, high = np.quantile(dist, [alpha, 1 - alpha])
    return {"ci95": [float(low), float(high)], "method": method}


def _pearson_rows(x, y) -> np.ndarray:
    """Pearson r of each row of x against the same row of y (broadcast along the last axis); NaN
    for a constant row."""
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    xc = x - x.mean(axis=-1, keepdims=True)
    yc = y - y.mean(axis=-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (xc * yc).sum(-1) / np.sqrt((xc * xc).sum(-1) * (yc * yc).sum(-1))
    return np.clip(r, -1.0, 1.0)


def _table_of(row, samples_by_pair: dict) -> pd.DataFrame:
    """The samples table of one row of ``pairs``: by its run folder, else by its pair name."""
    run = getattr(row, "run", None)
    for key in (run, row.pair):
        if isinstance(key, str) and key in samples_by_pair:
            return samples_by_pair[key]
    raise ValueError(f"no samples table for pair {row.pair} (run {run}); "
                     f"have {sorted(samples_by_pair)}")


def _plain(x) -> float | None:
    """Python float, NaN -> None (e.g. scipy's Spearman p-value for n = 2)."""
    x = float(x)
    return None if math.isnan(x) else x
