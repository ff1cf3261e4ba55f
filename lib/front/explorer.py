"""The analysis notebook's explorer: choose a pair and a quadrant, see its distributions and numbers.

`Explorer(samples_by_pair, summaries)` is an ipywidgets box: two dropdowns (pair; quadrant or all
four), the pair's entropy and reliance distributions per quadrant (`plots.pair_distributions`,
drawn into an `ipywidgets.Image` as PNG) and, beside them, the pair's numbers with their 95 %
intervals (from its `summary.json`). Changing either dropdown redraws both: the figure is
rendered to PNG bytes and put in the Image widget's value, so what the browser shows does not
depend on the matplotlib backend, on `%matplotlib inline` or on an Output widget catching the
display of a figure from a widget callback (the explorer before this one kept the first pair's
figure on screen). It needs only the ipywidgets that JupyterLab ships with: no extension to build.
"""
from __future__ import annotations

import html
import io

import ipywidgets as widgets
import matplotlib.pyplot as plt
import pandas as pd

from ..protocol import plots
from ..protocol.breakdown import with_interval
from ..protocol.taxonomy import QUADRANTS
from ..protocol.stats import lookup

ALL = "all quadrants"


def pair_numbers(summary: dict, samples: pd.DataFrame | None = None, quadrant: str | None = None) -> list[tuple]:
    """(measure, value with its 95 % interval) rows of one pair, for all quadrants or one of them."""
    def row(label, *keys, ci=None):
        return (label, with_interval(lookup(summary, *keys), lookup(summary, "ci95", *keys) if ci is None else ci))

    if quadrant is None:
        rows = [("samples", str(summary.get("n_samples"))), row("flip rate", "flip_rate"),
                row("pairwise flip rate", "pairwise_flip_rate"), row("accuracy", "accuracy"),
                row("balanced accuracy", "balanced_accuracy"), row("image reliance rate", "image_reliance_rate")]
        rows += [row(f"{q} fraction", "quadrant_fractions", q) for q in QUADRANTS]
        rows += [row(f"Dangerous: {k}", "dangerous_breakdown", k) for k in (summary.get("dangerous_breakdown") or {})]
        rows += [row("screening AUROC (Dangerous)", "screening", "auroc_entropy_dangerous",
                     ci=lookup(summary, "screening", "ci95")),
                 row("yes/no mass, median", "yes_no_mass", "median", ci=())]
        return rows
    rows = [("samples", str(lookup(summary, "quadrant_counts", quadrant))),
            row("fraction", "quadrant_fractions", quadrant),
            row("accuracy", "accuracy_by_quadrant", quadrant, ci=()),
            row("prior accuracy (text-only)", "prior_accuracy_by_quadrant", quadrant, ci=()),
            row("mean entropy (bits)", "entropy_by_quadrant", quadrant, ci=())]
    if samples is not None and "reliance" in samples:
        reliance = samples.loc[samples.quadrant == quadrant, "reliance"].dropna()
        rows.append(("median reliance", with_interval(reliance.median() if len(reliance) else None)))
    if quadrant == "Dangerous":
        rows += [row(k, "dangerous_breakdown", k) for k in (summary.get("dangerous_breakdown") or {})]
    return rows


def numbers_html(title: str, rows: list[tuple]) -> str:
    cells = "".join(f"<tr><td>{html.escape(m)}</td><td style='padding-left:8px'>{html.escape(v)}</td></tr>"
                    for m, v in rows)
    return (f"<div style='font-size:12px; line-height:1.25; white-space:nowrap'><b>{html.escape(title)}</b>"
            f"<table style='border-collapse:collapse'><tr><th style='text-align:left'>measure</th>"
            f"<th style='text-align:left'>value (95 % CI)</th></tr>{cells}</table></div>")


def figure_bytes(samples: pd.DataFrame, title: str, quadrant: str | None) -> bytes:
    fig = plots.pair_distributions(samples, title=title, quadrant=quadrant)
    fig.set_size_inches(fig.get_size_inches() * 0.8)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=80)
    plt.close(fig)
    return buffer.getvalue()


class Explorer(widgets.VBox):
    """Pair and quadrant dropdowns, the pair's distributions and its numbers (module docstring)."""

    def __init__(self, samples_by_pair: dict, summaries: dict | None = None):
        if not samples_by_pair:
            raise ValueError("Explorer: no pair to explore (no samples.parquet under the runs folder)")
        self.samples_by_pair = samples_by_pair
        self.summaries = summaries or {}
        pairs = sorted(samples_by_pair)
        self.pair = widgets.Dropdown(options=pairs, value=pairs[0], description="pair",
                                     layout=widgets.Layout(width="420px"))
        self.quadrant = widgets.Dropdown(options=(ALL,) + QUADRANTS, value=ALL, description="quadrant")
        # the figure keeps its own size (no stretching to the numbers' height)
        self.figure = widgets.Image(format="png", layout=widgets.Layout(width="auto", height="auto",
                                                                        object_fit="contain"))
        self.numbers = widgets.HTML(layout=widgets.Layout(flex="0 0 auto", margin="0 0 0 12px"))
        self.pair.observe(self.draw, names="value")
        self.quadrant.observe(self.draw, names="value")
        super().__init__([widgets.HBox([self.pair, self.quadrant]),
                          widgets.HBox([self.figure, self.numbers],
                                       layout=widgets.Layout(align_items="flex-start"))])
        self.add_class("cxr-explorer")
        self.draw()

    def draw(self, change=None) -> None:
        pair = self.pair.value
        quadrant = None if self.quadrant.value == ALL else self.quadrant.value
        samples = self.samples_by_pair[pair]
        self.figure.value = figure_bytes(samples, pair, quadrant)
        summary = self.summaries.get(pair)
        title = pair if quadrant is None else f"{pair}: {quadrant}"
        self.numbers.value = (numbers_html(title, pair_numbers(summary, samples, quadrant)) if summary
                              else f"<i>no summary.json for {html.escape(pair)}</i>")
