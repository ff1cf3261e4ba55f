"""Across-pair statistics: collect per-run summaries and correlate flip rate with the Dangerous fraction.

A "pair" is one (model configuration, dataset) run, i.e. one ``<runs_dir>/<run>/summary.json``
written by the evaluate notebooks (see ``lib.protocol.taxonomy.summarize``). The paper reports the
flip-rate / Dangerous-fraction correlation over its 10 pairs (r = -0.89) without naming the
correlation type or interval; we report Pearson r with a two-sided p-value and a 95 % Fisher-z
confidence interval, plus Spearman rho as a rank-based check.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats as sps

from .taxonomy import QUADRANTS

SUMMARY_KEYS = (
    "config", "dataset", "n_samples", "flip_rate", "pairwise_flip_rate", "accuracy",
    "quadrant_fractions", "accuracy_by_quadrant", "entropy_by_quadrant",
)
PAIR_COLUMNS = (
    ("pair", "config", "dataset", "n_samples", "flip_rate", "pairwise_flip_rate", "accuracy")
    + tuple(f"frac_{q}" for q in QUADRANTS)
    + tuple(f"acc_{q}" for q in QUADRANTS)
    + tuple(f"entropy_{q}" for q in QUADRANTS)
    + ("n_skipped",)
)


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
    a summary reports as None become NaN. Raises FileNotFoundError when there is no summary,
    ValueError for a summary missing a key or two summaries of the same pair.
    """
    runs_dir = Path(runs_dir)
    paths = sorted(runs_dir.glob("*/summary.json")) if runs_dir.is_dir() else []
    if not paths:
        raise FileNotFoundError(
            f"no */summary.json under {runs_dir}: run the evaluate notebooks first to produce the runs"
        )
    rows, seen = [], {}
    for path in paths:
        summary = json.loads(path.read_text())
        missing = [k for k in SUMMARY_KEYS if k not in summary]
        if missing:
            raise ValueError(f"{path}: summary is missing key(s) {missing}")
        pair = f"{summary['config']}__{summary['dataset']}"
        if pair in seen:
            raise ValueError(f"pair {pair} appears twice: {seen[pair]} and {path}")
        seen[pair] = path
        row = {"pair": pair, **{k: summary[k] for k in SUMMARY_KEYS[:6]}}
        for prefix, key in (("frac", "quadrant_fractions"), ("acc", "accuracy_by_quadrant"),
                            ("entropy", "entropy_by_quadrant")):
            row.update({f"{prefix}_{q}": summary[key].get(q) for q in QUADRANTS})
        row["n_skipped"] = int(sum((summary.get("n_skipped") or {}).values()))
        rows.append(row)
    frame = pd.DataFrame(rows, columns=list(PAIR_COLUMNS))
    rates = [c for c in PAIR_COLUMNS[4:] if c != "n_skipped"]
    frame[rates] = frame[rates].astype(float)  # None -> NaN
    return frame.sort_values(["config", "dataset"], ignore_index=True)


def gather_samples(runs_dir) -> dict[str, pd.DataFrame]:
    """Each pair's per-sample table (``samples.parquet``), keyed by the run folder's name."""
    paths = sorted(Path(runs_dir).glob("*/samples.parquet"))
    return {path.parent.name: pd.read_parquet(path) for path in paths}


def flip_vs_dangerous(pairs: pd.DataFrame) -> dict:
    """``correlation(flip_rate, frac_Dangerous)`` across pairs, plus ``pairs``: the pair names used."""
    used = pairs.dropna(subset=["flip_rate", "frac_Dangerous"])
    result = correlation(used["flip_rate"], used["frac_Dangerous"])
    result["pairs"] = [str(p) for p in used["pair"]]
    return result


def _plain(x) -> float | None:
    """Python float, NaN -> None (e.g. scipy's Spearman p-value for n = 2)."""
    x = float(x)
    return None if math.isnan(x) else x
