"""The analysis notebook's explorer: choose a pair, a finding and a quadrant; see the distributions
with the pair's numbers, then the samples behind them, one by one.

`Explorer(samples_by_pair, summaries, predictions_by_pair)` is an ipywidgets box:

- three dropdowns: the pair, the finding (or all), the quadrant (or all four);
- the entropy and reliance distributions per quadrant of the samples chosen
  (`plots.pair_distributions`, drawn into an `ipywidgets.Image` as PNG) and, beside them, the
  pair's numbers with their 95 % intervals (its `summary.json`, the local tests' rates
  included: `local_test_numbers`) and, for one finding, that finding's numbers
  (`breakdown.per_finding`); the numbers go below the figure when the window is narrow;
- the samples behind the figure (a list: sample id, label, answer); choosing one shows its p_yes
  for every prompt and condition (`sample_detail`, from the pair's predictions.parquet), whether
  each local test changed its answer (`local_verdicts`) and, for a
  synthetic dataset only (`config.is_synthetic`), its image. A real dataset's image is never
  shown here, whatever the flags.

Every change redraws from the tables: the figure is rendered to PNG bytes and put in the Image
widget's value, so what the browser shows does not depend on the matplotlib backend or on an
Output widget catching a figure's display. It needs only the ipywidgets that JupyterLab ships.
"""
from __future__ import annotations

import html
import io

import ipywidgets as widgets
import matplotlib.pyplot as plt
import pandas as pd

from ..protocol import breakdown, config, data, plots
from ..protocol.breakdown import lookup, with_interval
from ..protocol.local_tests import CHANGES
from ..protocol.vocabulary import QUADRANTS

ALL = "all quadrants"
ALL_FINDINGS = "all findings"
MAX_LISTED = 200   # samples listed at once (the first ones, by sample id)


def pair_numbers(summary: dict, samples: pd.DataFrame | None = None, quadrant: str | None = None) -> list[tuple]:
    """(measure, value with its 95 % interval) rows of one pair, for all quadrants or one of them;
    a declared rate with its ``breakdown.declared`` interval (Wilson where the bootstrap degenerated)."""
    n = summary.get("n_samples")

    def row(label, *keys, ci):
        return (label, with_interval(lookup(summary, *keys), ci))

    def rate(label, *key):
        return (label, with_interval(*breakdown.declared(summary, *key)))

    if quadrant is None:
        rows = [("samples", str(n)), rate("flip rate", "flip_rate"), rate("pairwise flip rate", "pairwise_flip_rate"),
                rate("accuracy", "accuracy"), rate("balanced accuracy", "balanced_accuracy"),
                rate("image reliance rate", "image_reliance_rate")]
        rows += [rate(f"{q} fraction", "quadrant_fractions", q) for q in QUADRANTS]
        rows += [rate(f"Dangerous: {k}", "dangerous_breakdown", k) for k in (summary.get("dangerous_breakdown") or {})]
        rows += [rate("screening AUROC (Dangerous)", "auroc_entropy_dangerous"),
                 row("yes/no mass, median", "yes_no_mass", "median", ci=())]
        return rows + local_test_numbers(summary)
    rows = [("samples", str(lookup(summary, "quadrant_counts", quadrant))),
            rate("fraction", "quadrant_fractions", quadrant),
            row("accuracy", "accuracy_by_quadrant", quadrant, ci=()),
            row("prior accuracy (text-only)", "prior_accuracy_by_quadrant", quadrant, ci=()),
            row("mean entropy (bits)", "entropy_by_quadrant", quadrant, ci=())]
    if samples is not None and "reliance" in samples:
        reliance = samples.loc[samples.quadrant == quadrant, "reliance"].dropna()
        rows.append(("median reliance", with_interval(reliance.median() if len(reliance) else None)))
    if quadrant == "Dangerous":
        rows += [rate(k, "dangerous_breakdown", k) for k in (summary.get("dangerous_breakdown") or {})]
        rows += local_test_numbers(summary, dangerous_only=True)
    return rows


def local_test_numbers(summary: dict, dangerous_only: bool = False) -> list[tuple]:
    """(measure, value) rows of the run's local tests, read from the report's table
    (``breakdown.local_tests_table``): each test's change rate with its interval and n and, for
    occlude and followup, the share of the Dangerous samples tested whose answer did not change
    (only those with ``dangerous_only``)."""
    rows = []
    for test, r in breakdown.local_tests_table(summary).iterrows():
        if not dangerous_only:
            rows.append((f"{test}: answer changed", f"{r['answer changed']} (n {r['samples tested']})"))
        if r["unchanged among Dangerous tested"] != "–":
            rows.append((f"{test}: Dangerous, unchanged", r["unchanged among Dangerous tested"]))
    return rows


def local_verdicts(row: pd.Series) -> str:
    """One sample's local tests as a line: for each its run has, whether the answer changed."""
    verdicts = [(test, row[column]) for test, column in CHANGES.items() if column in row]
    return "; ".join(f"{test}: {'not tested' if pd.isna(v) else 'changed' if v else 'unchanged'}" for test, v in verdicts)


def finding_numbers(samples: pd.DataFrame, finding: str) -> list[tuple]:
    """(measure, value with its Wilson interval) rows of one finding of a pair."""
    table = breakdown.shown(breakdown.per_finding(samples[samples.finding == finding]))
    return [(str(k), str(v)) for k, v in table.iloc[0].items() if k != "finding"] if len(table) else []


def numbers_html(title: str, rows: list[tuple]) -> str:
    cells = "".join(f"<tr><td>{html.escape(m)}</td><td style='padding-left:8px'>{html.escape(v)}</td></tr>"
                    for m, v in rows)
    return (f"<div style='font-size:12px; line-height:1.25; white-space:nowrap'><b>{html.escape(title)}</b>"
            f"<table style='border-collapse:collapse'><tr><th style='text-align:left'>measure</th>"
            f"<th style='text-align:left'>value (95 % CI)</th></tr>{cells}</table></div>")


def sample_detail(predictions: pd.DataFrame, sample_id: str) -> pd.DataFrame:
    """One sample's p_yes (the probability of the answer it implies to the original question) for
    every prompt (rows: prompt id and text) and condition (columns: image, text_only, ...)."""
    rows = predictions[predictions["sample_id"] == sample_id]
    table = rows.pivot_table(index=["prompt_id", "prompt"], columns="condition", values="p_yes", aggfunc="first")
    table.columns.name = None
    return table


def figure_bytes(samples: pd.DataFrame, title: str, quadrant: str | None) -> bytes:
    fig = plots.pair_distributions(samples, title=title, quadrant=quadrant)
    fig.set_size_inches(fig.get_size_inches() * 0.8)
    fig.tight_layout()
    return png(fig)


def png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=80)
    plt.close(fig)
    return buffer.getvalue()


def synthetic_image(summary: dict | None, image_id: str) -> bytes | None:
    """The PNG of a sample's image when the pair's data root is synthetic; None otherwise."""
    params = (summary or {}).get("params") or {}
    if not params.get("data_root") or not config.is_synthetic(params["data_root"]):
        return None
    samples = data.iter_samples(params["dataset"], params["data_root"], findings=tuple(params["findings"]),
                                split=params["split"], skipped=data.Skips(),
                                label_policy=data.LabelPolicy.from_dict(params["label_policy"]))
    path = next((s.image_path for s in samples if s.image_id == image_id), None)
    if path is None:
        return None
    buffer = io.BytesIO()
    data.read_xray(path).save(buffer, format="PNG")
    return buffer.getvalue()


class Explorer(widgets.VBox):
    """Pair, finding and quadrant dropdowns; the distributions, the numbers, the samples behind
    them and one sample's predictions (module docstring)."""

    def __init__(self, samples_by_pair: dict, summaries: dict | None = None,
                 predictions_by_pair: dict | None = None):
        if not samples_by_pair:
            raise ValueError("Explorer: no pair to explore (no samples.parquet under the runs folder)")
        self.samples_by_pair = samples_by_pair
        self.summaries = summaries or {}
        self.predictions_by_pair = predictions_by_pair or {}
        pairs = sorted(samples_by_pair)
        self.pair = widgets.Dropdown(options=pairs, value=pairs[0], description="pair",
                                     layout=widgets.Layout(width="420px"))
        self.finding = widgets.Dropdown(description="finding")
        self.quadrant = widgets.Dropdown(options=(ALL,) + QUADRANTS, value=ALL, description="quadrant")
        # the figure keeps its own size (no stretching to the numbers' height)
        self.figure = widgets.Image(format="png", layout=widgets.Layout(width="auto", height="auto",
                                                                        object_fit="contain"))
        self.numbers = widgets.HTML(layout=widgets.Layout(flex="0 0 auto", margin="0 0 0 12px"))
        # the list wide enough for a MIMIC-CXR dicom_id, the finding, the answer and the quadrant;
        # the chosen sample's predictions and image below it, with the page's whole width
        self.samples = widgets.Select(description="samples", rows=8,
                                      layout=widgets.Layout(width="100%", max_width="820px"))
        self.detail = widgets.HTML(layout=widgets.Layout(flex="0 1 auto", min_width="0", overflow="auto",
                                                         margin="0 12px 0 0"))
        self.image = widgets.Image(format="png", layout=widgets.Layout(width="256px", height="auto",
                                                                       display="none"))
        self.set_findings()
        self.pair.observe(self.pair_changed, names="value")
        self.finding.observe(self.draw, names="value")
        self.quadrant.observe(self.draw, names="value")
        self.samples.observe(self.show_sample, names="value")
        super().__init__([widgets.HBox([self.pair, self.finding, self.quadrant]),
                          widgets.HBox([self.figure, self.numbers],
                                       layout=widgets.Layout(align_items="flex-start", flex_flow="row wrap")),
                          self.samples,
                          widgets.HBox([self.detail, self.image], layout=widgets.Layout(align_items="flex-start"))])
        self.add_class("cxr-explorer")
        self.draw()

    def set_findings(self) -> None:
        findings = sorted(self.samples_by_pair[self.pair.value]["finding"].unique())
        self.finding.options = (ALL_FINDINGS, *findings)
        self.finding.value = ALL_FINDINGS

    def pair_changed(self, change=None) -> None:
        with self.hold_trait_notifications():
            self.finding.unobserve(self.draw, names="value")
            self.set_findings()
            self.finding.observe(self.draw, names="value")
        self.draw()

    def chosen(self) -> pd.DataFrame:
        """The pair's samples of the finding chosen (all quadrants: the figure shows them side by side)."""
        samples = self.samples_by_pair[self.pair.value]
        return samples if self.finding.value == ALL_FINDINGS else samples[samples.finding == self.finding.value]

    def draw(self, change=None) -> None:
        pair = self.pair.value
        quadrant = None if self.quadrant.value == ALL else self.quadrant.value
        finding = None if self.finding.value == ALL_FINDINGS else self.finding.value
        samples = self.chosen()
        title = " / ".join(x for x in (pair, finding, quadrant) if x)
        self.figure.value = figure_bytes(samples, title, quadrant)
        summary = self.summaries.get(pair)
        numbers = (numbers_html(pair if quadrant is None else f"{pair}: {quadrant}",
                                pair_numbers(summary, self.samples_by_pair[pair], quadrant)) if summary
                   else f"<i>no summary.json for {html.escape(pair)}</i>")
        if finding:
            numbers += numbers_html(f"{finding} (Wilson intervals)", finding_numbers(self.samples_by_pair[pair], finding))
        self.numbers.value = numbers
        listed = samples if quadrant is None else samples[samples.quadrant == quadrant]
        listed = listed.sort_values("sample_id").head(MAX_LISTED)
        self.samples.options = [(f"{r.sample_id} | {r.finding} | label {r.label}, answer {r.pred} | {r.quadrant}",
                                 r.sample_id) for r in listed.itertuples()]
        self.samples.value = None
        self.detail.value = f"<i>{len(listed)} samples listed: choose one to see its predictions</i>"
        self.image.layout.display = "none"

    def show_sample(self, change=None) -> None:
        sample_id = self.samples.value
        if sample_id is None:
            return
        pair = self.pair.value
        predictions = self.predictions_by_pair.get(pair)
        row = self.samples_by_pair[pair].set_index("sample_id").loc[sample_id]
        if predictions is None:
            self.detail.value = f"<i>no predictions.parquet for {html.escape(pair)}</i>"
        else:
            table = breakdown.shown(sample_detail(predictions, sample_id).reset_index())
            verdicts = local_verdicts(row)
            self.detail.value = (f"<div style='font-size:12px; white-space:nowrap'><b>{html.escape(sample_id)}"
                                 f"</b>: p_yes per prompt and condition{table.to_html(index=False, border=0)}"
                                 + (f"local tests: {html.escape(verdicts)}" if verdicts else "") + "</div>")
        image = synthetic_image(self.summaries.get(pair), row["image_id"])
        if image is not None:
            self.image.value = image
        self.image.layout.display = "none" if image is None else "block"
