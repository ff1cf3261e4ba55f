"""Figures of one run and of the gathered pairs (matplotlib; every function returns its figure)."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

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


def flip_vs_dangerous(pairs: pd.DataFrame, corr: dict):
    """The study's scatter: flip rate against Dangerous fraction, one point per pair."""
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for dataset, group in pairs.groupby("dataset"):
        ax.scatter(group.flip_rate, group.frac_Dangerous, label=dataset, s=40)
        for _, row in group.iterrows():
            ax.annotate(row.config, (row.flip_rate, row.frac_Dangerous), fontsize=7,
                        xytext=(3, 3), textcoords="offset points")
    r = corr.get("pearson_r")
    stats = "r undefined" if r is None else f"r = {r:.2f}, p = {corr['p_value']:.3g}, n = {corr['n']}"
    ax.set_title(f"Flip rate vs Dangerous fraction ({stats})")
    ax.set_xlabel("flip rate")
    ax.set_ylabel("Dangerous fraction")
    ax.legend()
    fig.tight_layout()
    return fig


def accuracy_by_quadrant(pairs: pd.DataFrame):
    """Grouped bars: accuracy of the original question within each quadrant, per pair."""
    fig, ax = plt.subplots(figsize=(max(6, 0.8 * len(pairs)), 5.5))
    width = 0.2
    x = np.arange(len(pairs))
    for k, quadrant in enumerate(QUADRANTS):
        ax.bar(x + (k - 1.5) * width, pairs[f"acc_{quadrant}"].astype(float), width,
               label=quadrant, color=QUADRANT_COLORS[quadrant])
    ax.set_xticks(x, pairs["pair"], rotation=75)
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1.05)
    ax.legend(loc="upper left", bbox_to_anchor=(1, 1))
    fig.tight_layout()
    return fig


def sample_grid(images, titles, columns: int = 4):
    """A grid of images with titles (synthetic data only: never used on credentialed data)."""
    rows = max(1, int(np.ceil(len(images) / columns)))
    fig, axes = plt.subplots(rows, columns, figsize=(2.6 * columns, 2.8 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, title in zip(axes.flat, images, titles):
        ax.imshow(image, cmap="gray")
        ax.set_title(title, fontsize=8)
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
    fig, ax = plt.subplots(figsize=(7, max(2.5, 0.45 * len(pairs) + 1.2)))
    y = np.arange(len(pairs))
    for column, label, colour, offset in FOREST_SERIES:
        values, errors = _interval_errors(pairs, column)
        ax.errorbar(values, y + offset, xerr=errors, fmt="o", ms=4, capsize=2, color=colour, label=label)
    ax.set_yticks(y, pairs["pair"])
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("fraction of all samples (bars: 95 % intervals; image-blind: samples x references)")
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
    ax.set_xlim(0, 1)
    ax.set_xlabel("AUROC of entropy for Dangerous vs other samples (0.5: screen blind to them)")
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
            ax.text(0.5, 0.5, "no samples", ha="center", va="center", transform=ax.transAxes, color="grey")
            ax.set_yticks([])
        ax.set_title(f"{q}: {column} (n={len(values)})", fontsize=9)
        ax.set_xlabel(label, fontsize=8)
    for ax in axes[:, 0]:
        ax.set_ylabel("samples")
    fig.suptitle(title)
    fig.tight_layout()
    return fig
