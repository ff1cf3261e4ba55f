"""Figures of one run and of the gathered pairs (matplotlib; every function returns its figure)."""
from __future__ import annotations

import textwrap

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from .breakdown import proportion_ci
from .vocabulary import QUADRANTS

QUADRANT_COLORS = {"Ideal": "#2a9d8f", "Fragile": "#e9c46a", "Dangerous": "#e76f51", "Worst": "#6d597a"}


def entropy_by_quadrant(samples_table: pd.DataFrame, title: str = ""):
    """Histograms of the original prompt's answer entropy, one panel per quadrant."""
    return per_quadrant_histograms(samples_table, "entropy", "entropy (bits)", title)


def per_quadrant_histograms(samples_table: pd.DataFrame, column: str, xlabel: str, title: str = ""):
    """One histogram of `column` (values in [0, 1]) per quadrant, side by side."""
    fig, axes = plt.subplots(1, 4, figsize=(13, 2.8), sharex=True)
    bins = np.linspace(0, 1, 21)
    for ax, quadrant in zip(axes, QUADRANTS):
        values = samples_table.loc[samples_table.quadrant == quadrant, column].dropna()
        ax.hist(values, bins=bins, color=QUADRANT_COLORS[quadrant])
        if not len(values):
            _empty(ax)
        ax.set_title(f"{quadrant} (n={len(values)})")
        ax.set_xlabel(xlabel)
    axes[0].set_ylabel("samples")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def quadrant_fractions(pairs: pd.DataFrame):
    """Stacked bars: the four quadrant fractions of every pair, side by side."""
    fig, ax = plt.subplots(figsize=(max(6, 0.7 * len(pairs)), 5.5))
    bottom = np.zeros(len(pairs))
    for quadrant in QUADRANTS:
        values = pairs[f"frac_{quadrant}"].to_numpy(dtype=float)
        ax.bar(pairs["pair"], values, bottom=bottom, label=quadrant, color=QUADRANT_COLORS[quadrant])
        bottom += values
    ax.set_ylabel("fraction of samples")
    ax.set_ylim(0, 1)
    ax.tick_params(axis="x", rotation=75)
    ax.legend(loc="upper left", bbox_to_anchor=(1, 1))
    fig.tight_layout()
    return fig


def flip_vs_dangerous(pairs: pd.DataFrame, corr: dict, min_pairs: int = 8):
    """The study's scatter: flip rate against Dangerous fraction, one point per pair, with each
    pair's intervals as error bars; the title gives r and what independent axes alone give
    (``corr["independence_r"]``), or says the pairs are too few (fewer than ``min_pairs``)."""
    fig, ax = plt.subplots(figsize=(7, 5))
    for dataset, group in pairs.groupby("dataset"):
        _, xerr = _interval_errors(group, "flip_rate")
        _, yerr = _interval_errors(group, "frac_Dangerous")
        ax.errorbar(group.flip_rate, group.frac_Dangerous, xerr=xerr, yerr=yerr, fmt="o", ms=5,
                    capsize=2, elinewidth=0.8, label=dataset)
        for k, row in enumerate(group.itertuples()):  # labels alternate sides so neighbours do not overlap
            ax.annotate(row.config, (row.flip_rate, row.frac_Dangerous), fontsize=7,
                        xytext=(5, 4 if k % 2 else -9), textcoords="offset points")
    r = corr.get("pearson_r")
    stats = "r undefined" if r is None else f"r = {r:.2f}, p = {corr['p_value']:.3g}, n = {corr['n']}"
    if corr.get("n", 0) < min_pairs:
        caveat = f"too few pairs to tell (fewer than {min_pairs})"
    elif corr.get("independence_r") is not None:
        caveat = f"mostly arithmetic: independent axes alone give r = {corr['independence_r']:.2f}"
    else:
        caveat = "partly arithmetic: Dangerous = consistent minus Ideal"
    ax.set_title(f"Flip rate vs Dangerous fraction ({stats})\n{caveat}", fontsize=10)
    ax.set_xlabel("flip rate (bars: 95 % intervals)")
    ax.set_ylabel("Dangerous fraction")
    ax.legend(title="dataset")
    fig.tight_layout()
    return fig


def accuracy_by_quadrant(pairs: pd.DataFrame):
    """One panel per quadrant, one row per pair: the accuracy of the original question within the
    quadrant with its Wilson interval, and the number of samples at the right (an accuracy over 2
    samples looks like one over 300 without it); a quadrant without samples draws no point."""
    y = np.arange(len(pairs))
    fig, axes = plt.subplots(1, 4, figsize=(13, max(2.5, 0.32 * len(pairs) + 1.2)), sharey=True)
    for ax, quadrant in zip(axes, QUADRANTS):
        n = np.rint(pairs[f"frac_{quadrant}"].fillna(0) * pairs["n_samples"]).astype(int).to_numpy()
        accuracy = pairs[f"acc_{quadrant}"].astype(float).to_numpy()
        intervals = [proportion_ci(round(a * m), m) if m and not np.isnan(a) else None for a, m in zip(accuracy, n)]
        errors = np.clip(np.array([[a - ci[0], ci[1] - a] if ci else [0, 0]
                                   for a, ci in zip(accuracy, intervals)]).T, 0, None)
        ax.errorbar(accuracy, y, xerr=errors, fmt="o", markersize=4, capsize=2, elinewidth=0.8,
                    color=QUADRANT_COLORS[quadrant])
        for yi, m in zip(y, n):
            ax.text(1.02, yi, f"n={m}", va="center", fontsize=7, transform=ax.get_yaxis_transform())
        ax.set_xlim(-0.02, 1.02)       # a point at 0 or 1 drawn whole, not cut by the frame
        ax.set_title(quadrant)
        ax.set_xlabel("accuracy (bars: Wilson 95 % intervals)", fontsize=8)
    axes[0].set_yticks(y, pairs["pair"], fontsize=8)
    axes[0].invert_yaxis()
    fig.tight_layout()
    return fig


def distributions_by_pair(samples_by_pair: dict, column: str, label: str):
    """One panel per quadrant, one box per pair (rows): ``column`` of the samples of that pair and
    quadrant, with the number of samples at the right; every pair in one figure."""
    pairs = sorted(samples_by_pair)
    fig, axes = plt.subplots(1, 4, figsize=(13, max(2.5, 0.32 * len(pairs) + 1.2)), sharey=True)
    for ax, quadrant in zip(axes, QUADRANTS):
        values = [samples_by_pair[p].loc[samples_by_pair[p].quadrant == quadrant, column].dropna()
                  if column in samples_by_pair[p] else pd.Series(dtype=float) for p in pairs]
        ax.boxplot([v.to_numpy() if len(v) else [np.nan] for v in values], vert=False,
                   positions=np.arange(len(pairs)), widths=0.6, showfliers=False,
                   patch_artist=True, boxprops={"facecolor": QUADRANT_COLORS[quadrant], "alpha": 0.6})
        for y, v in enumerate(values):
            ax.text(1.02, y, f"n={len(v)}", va="center", fontsize=7, transform=ax.get_yaxis_transform())
        ax.set_xlim(-0.02, 1.02)       # a point at 0 or 1 drawn whole, not cut by the frame
        ax.set_title(quadrant)
        ax.set_xlabel(label, fontsize=8)
    axes[0].set_yticks(np.arange(len(pairs)), pairs, fontsize=8)
    axes[0].invert_yaxis()
    fig.tight_layout()
    return fig


TITLE_WIDTH = 34   # characters of a sample_grid title per line: a 2.6-inch panel at 8 pt holds ~38


def sample_grid(images, titles, columns: int = 4):
    """A grid of images with titles, each line wrapped at TITLE_WIDTH characters so that
    neighbours' titles never overlap (synthetic data only: never used on credentialed data)."""
    rows = max(1, int(np.ceil(len(images) / columns)))
    fig, axes = plt.subplots(rows, columns, figsize=(2.6 * columns, 2.8 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, title in zip(axes.flat, images, titles):
        ax.imshow(image, cmap="gray")
        ax.set_title("\n".join(textwrap.fill(line, TITLE_WIDTH) for line in title.splitlines()), fontsize=8)
    fig.tight_layout()
    return fig


# -- figures of the measures added beside the paper's (issue 12) ---------------------------------

FOREST_SERIES = (  # (pairs column, label, colour, vertical offset)
    ("frac_Dangerous", "Dangerous", QUADRANT_COLORS["Dangerous"], -0.25),
    ("frac_image_blind", "image-blind", "#264653", 0.0),
    ("frac_prior_coincident", "prior-coincident", "#8ab17d", 0.25),
)


def _interval_errors(pairs: pd.DataFrame, column: str):
    """(values, 2 x n error bars) from ``column`` and its ``_low``/``_high`` columns; a missing
    interval draws no bar."""
    values = pairs[column].to_numpy(dtype=float) if column in pairs else np.full(len(pairs), np.nan)
    low = pairs.get(f"{column}_low", pd.Series(np.nan, index=pairs.index)).to_numpy(dtype=float)
    high = pairs.get(f"{column}_high", pd.Series(np.nan, index=pairs.index)).to_numpy(dtype=float)
    errors = np.vstack([values - low, high - values])
    return values, np.nan_to_num(np.clip(errors, 0, None), nan=0.0)


def dangerous_forest(pairs: pd.DataFrame):
    """Forest plot: each pair's Dangerous fraction with its interval, and the image-blind and
    prior-coincident parts of it with theirs (columns of ``stats.gather_runs``)."""
    labels = pairs["pair"].astype(str)
    # room for the longest row label (about 0.08 inch a character) beside a 5-inch plot and the legend
    width = 5 + 0.08 * (labels.str.len().max() if len(labels) else 0) + 1.6
    fig, ax = plt.subplots(figsize=(width, max(2.5, 0.45 * len(pairs) + 1.2)))
    y = np.arange(len(pairs))
    for column, label, colour, offset in FOREST_SERIES:
        values, errors = _interval_errors(pairs, column)
        ax.errorbar(values, y + offset, xerr=errors, fmt="o", ms=4, capsize=2, color=colour, label=label)
    ax.set_yticks(y, labels)
    ax.invert_yaxis()
    ax.set_xlim(-0.02, 1.02)       # a point at 0 or 1 drawn whole, not cut by the frame
    ax.set_xlabel("fraction of all samples\n(bars: 95 % intervals; image-blind: samples x references)")
    ax.set_title("Dangerous fraction, split by the reference images")
    ax.legend(loc="upper left", bbox_to_anchor=(1, 1))
    fig.tight_layout()
    return fig


def screening_auroc(pairs: pd.DataFrame):
    """Each pair's screening AUROC (a Dangerous sample's entropy above another's) with its interval."""
    fig, ax = plt.subplots(figsize=(7, max(2.5, 0.4 * len(pairs) + 1.2)))
    y = np.arange(len(pairs))
    values, errors = _interval_errors(pairs, "auroc_entropy_dangerous")
    ax.errorbar(values, y, xerr=errors, fmt="o", capsize=3, color=QUADRANT_COLORS["Dangerous"])
    ax.axvline(0.5, color="grey", linestyle="--", linewidth=1)
    ax.set_yticks(y, pairs["pair"])
    ax.invert_yaxis()
    ax.set_xlim(-0.02, 1.02)       # a point at 0 or 1 drawn whole, not cut by the frame
    ax.set_xlabel("AUROC of entropy, Dangerous vs the rest (0.5: blind)")
    ax.set_title("Confidence screening")
    fig.tight_layout()
    return fig


def reliance_by_quadrant(samples_table: pd.DataFrame, title: str = ""):
    """Histograms of reliance = |p_yes - p_yes_text_only| (original question), one panel per quadrant."""
    return per_quadrant_histograms(samples_table, "reliance", "reliance |p_yes - p_yes text-only|", title)


def pair_distributions(samples_table: pd.DataFrame, title: str = "", quadrant: str | None = None):
    """One pair's answer entropy and reliance distributions: a row of each per quadrant
    (``quadrant`` None: all four quadrants, 2 x 4 panels) or one quadrant's two panels.

    The explorer of the analysis notebook draws this for the pair and quadrant chosen.
    """
    quadrants = QUADRANTS if quadrant is None else (quadrant,)
    if quadrant is not None and quadrant not in QUADRANTS:
        raise ValueError(f"pair_distributions: unknown quadrant {quadrant!r}; allowed: {', '.join(QUADRANTS)}")
    bins = np.linspace(0, 1, 21)
    measures = (("entropy", "entropy (bits)"), ("reliance", "reliance |p_yes - p_yes text-only|"))
    if quadrant is None:
        fig, axes = plt.subplots(2, 4, figsize=(13, 5.2), sharex=True, squeeze=False)
        panels = [(axes[row, col], q, measure) for row, measure in enumerate(measures)
                  for col, q in enumerate(quadrants)]
    else:
        fig, axes = plt.subplots(1, 2, figsize=(9, 3), squeeze=False)
        panels = [(axes[0, col], quadrant, measure) for col, measure in enumerate(measures)]
    for ax, q, (column, label) in panels:
        in_quadrant = samples_table.quadrant == q
        values = (samples_table.loc[in_quadrant, column].dropna() if column in samples_table
                  else pd.Series(dtype=float))
        ax.hist(values, bins=bins, color=QUADRANT_COLORS[q])
        if not len(values):
            _empty(ax)
        ax.set_title(f"{q}: {column} (n={len(values)})", fontsize=9)
        ax.set_xlabel(label, fontsize=8)
    for ax in axes[:, 0]:
        ax.set_ylabel("samples")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def _empty(ax) -> None:
    """A panel without data says so (no -0.05..0.05 axis)."""
    ax.text(0.5, 0.5, "no samples", ha="center", va="center", transform=ax.transAxes, color="grey")
    ax.set_yticks([])
