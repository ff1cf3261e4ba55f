"""Figures of one run and of the gathered pairs (matplotlib; every function returns its figure)."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from .taxonomy import QUADRANTS

QUADRANT_COLORS = {"Ideal": "#2a9d8f", "Fragile": "#e9c46a", "Dangerous": "#e76f51", "Worst": "#6d597a"}


def entropy_by_quadrant(samples_table: pd.DataFrame, title: str = ""):
    """Histograms of the original prompt's answer entropy, one panel per quadrant."""
    fig, axes = plt.subplots(1, 4, figsize=(13, 2.8), sharex=True)
    bins = np.linspace(0, 1, 21)
    for ax, quadrant in zip(axes, QUADRANTS):
        values = samples_table.loc[samples_table.quadrant == quadrant, "entropy"]
        ax.hist(values, bins=bins, color=QUADRANT_COLORS[quadrant])
        ax.set_title(f"{quadrant} (n={len(values)})")
        ax.set_xlabel("entropy (bits)")
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
