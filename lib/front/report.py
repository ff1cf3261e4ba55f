"""The screen's report: what a researcher reads first, in one minute, as HTML.

`write_report(run_dir, max_dangerous=None)` reads the run's `summary.json`, `samples.parquet` and
`predictions.parquet` (written by the evaluate notebook) and writes `run_dir/report.html`, in this
order: a headline box (the Dangerous fraction and the image-blind estimate with their intervals,
the gate); the "too few to tell" warnings (`lib.protocol.breakdown.too_few`, thresholds stated);
per finding (n, positives, quadrants, accuracy / sensitivity / specificity with Wilson
intervals); per paraphrase (flip rate against the original question, negated ones marked); the
ground-truth (twins) result when the run has one; then the quadrants, the image-blind and
prior-coincident parts of Dangerous with the image-blind rate per finding
(`breakdown.image_blind_by_finding`), the local tests, accuracy against the prior, confidence
screening, the decision threshold, the yes/no mass, the distributions and the setup.
The per-finding and per-paraphrase numbers are computed in `lib.protocol.breakdown`, and every
value with an interval is written by `breakdown.with_interval`. A bootstrap interval that
degenerated (zero width, e.g. 40 of 40 correct) is replaced by the Wilson interval
(`breakdown.declared`). The definitions are those of `lib.protocol.taxonomy`.

The report is aggregate only, whatever the dataset: it embeds no sample image (its figure is a
histogram of numbers), no report text, no sample or image id; it does show the question texts.
The verdict gates on the image-blind rate (lib.protocol.references): `passed` is None without a
limit, else whether that rate is at most ``max_dangerous``; when the run could not estimate it
(``estimable`` False, with the run's reason) `passed` is None too: the gate fails closed (the
screen exits 4), it never reads an unknown as 0.
"""
from __future__ import annotations

import base64
import datetime
import html
import io
import json
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd

from ..protocol import breakdown, plots, records
from ..protocol.breakdown import cell, lookup, with_interval
from ..protocol.vocabulary import QUADRANTS

KIND_WORDS = {
    "image-blind": "had the image shown the opposite finding, the answer would have been the same "
                   "(estimated over reference images of the opposite label): it does not come from the image",
    "prior-coincident": "an image showing the opposite finding would have changed the answer: the model "
                        "reads the image, and here its answer merely equals what it says without one",
}
QUADRANT_WORDS = {
    "Ideal": "consistent across paraphrases, and the image changes the answer",
    "Fragile": "inconsistent, and the image changes the answer",
    "Dangerous": "consistent, and the same answer without the image",
    "Worst": "inconsistent, and the same answer without the image",
}


def load_run(run_dir) -> tuple[dict, pd.DataFrame]:
    run_dir = Path(run_dir)
    summary = json.loads((run_dir / "summary.json").read_text())
    samples = pd.read_parquet(run_dir / "samples.parquet")
    return summary, samples


def load_predictions(run_dir) -> pd.DataFrame | None:
    path = Path(run_dir) / "predictions.parquet"
    return pd.read_parquet(path) if path.is_file() else None


def number(x, digits: int = 3) -> str:
    return "n/a" if x is None or x != x else f"{x:.{digits}f}"


def percent(x, digits: int = 1) -> str:
    return "n/a" if x is None or x != x else f"{100 * x:.{digits}f} %"


def image_blind(summary: dict) -> dict:
    """The image-blind estimate of a run, from its ``image_blind`` block (lib.protocol.references):
    {"rate", "ci", "among_dangerous", "estimable", "reason", "by_finding", "min_references",
    "source"}; ``ci`` never degenerates (`breakdown.steady`). Not estimable, with a reason, when
    the run has no such block or its rate is None."""
    n = summary["n_samples"]
    block = summary.get("image_blind") or {}
    rate = block.get("rate")
    estimable = bool(block.get("estimable")) and rate is not None
    reason = block.get("reason") or (None if estimable else "the run has no reference check")
    return {"rate": rate if estimable else None,
            "ci": breakdown.steady(rate, block.get("ci95"), n) if estimable else None,
            "among_dangerous": block.get("among_dangerous"), "estimable": estimable, "reason": reason,
            "by_finding": block.get("by_finding") or {}, "min_references": block.get("min_references"),
            "source": block.get("reference_source")}


def reference_warnings(blind: dict) -> list[str]:
    """"too few to tell" for each finding whose opposite-label reference images are fewer than
    the run's ``min_references``, and the reason when the estimate is not estimable."""
    notes = [] if blind["estimable"] else [f"image-blind: not estimable ({blind['reason'] or 'no reason given'})"]
    minimum = blind["min_references"]
    for finding, entry in sorted(blind["by_finding"].items()):
        refs = entry.get("n_references") or {}
        if minimum is not None and min(refs.get("yes", 0), refs.get("no", 0)) < minimum:
            notes.append(f"too few to tell whether {finding} answers are image-blind: "
                         f"{refs.get('yes', 0)} positive and {refs.get('no', 0)} negative reference "
                         f"images (fewer than {minimum})")
    return notes


def baselines(samples: pd.DataFrame) -> dict:
    """Accuracy of the text-only answer alone (the prior) and of always answering the majority label."""
    if not len(samples):
        return {"prior_accuracy": None, "majority_accuracy": None, "majority_label": None}
    yes = float((samples["label"] == "yes").mean())
    return {"prior_accuracy": float((samples["pred_text_only"] == samples["label"]).mean()),
            "majority_accuracy": max(yes, 1 - yes), "majority_label": "yes" if yes >= 0.5 else "no"}


# the blank and noise change rates, as every page words them
NULL_IMAGE_WORDS = {"blank": "blank image changes the answer", "noise": "noise images change the answer"}


def quadrant_table(summary: dict) -> pd.DataFrame:
    rows = []
    for q in QUADRANTS:
        rows.append({
            "quadrant": q, "meaning": QUADRANT_WORDS[q],
            "samples": lookup(summary, "quadrant_counts", q),
            "fraction": lookup(summary, "quadrant_fractions", q),
            "ci": breakdown.declared(summary, "quadrant_fractions", q)[1],
            "accuracy": lookup(summary, "accuracy_by_quadrant", q),
            "prior accuracy": lookup(summary, "prior_accuracy_by_quadrant", q),
            "mean entropy (bits)": lookup(summary, "entropy_by_quadrant", q),
        })
    return pd.DataFrame(rows)


def verdict(summary: dict, samples: pd.DataFrame, max_dangerous: float | None = None) -> dict:
    """The verdict: ``headline`` (the box's lines), ``passed`` (None without a limit), ``gate``
    (its words), ``line`` (one line for the terminal) and the numbers it rests on."""
    n = summary["n_samples"]
    dangerous, dangerous_ci = breakdown.declared(summary, "quadrant_fractions", "Dangerous")
    blind = image_blind(summary)
    coincident = lookup(summary, "dangerous_breakdown", "prior-coincident")
    base = baselines(samples)
    if max_dangerous is None:
        passed, gate = None, "no limit set (--max-dangerous): the screen reports, it does not gate"
    elif not blind["estimable"]:
        passed, gate = None, (f"the image-blind rate cannot be estimated ({blind['reason']}): "
                              f"NOT ESTIMABLE, the gate fails closed (exit 4)")
    else:
        passed = blind["rate"] <= max_dangerous
        gate = (f"image-blind rate {blind['rate']:.3f} {'<=' if passed else '>'} "
                f"--max-dangerous {max_dangerous:g}: {'PASS' if passed else 'FAIL (exit 3)'}")
    if blind["estimable"]:
        references = "; ".join(f"{f} {v['n_references']['yes']} with / {v['n_references']['no']} without"
                               for f, v in sorted(blind["by_finding"].items()))
        blind_words = (f"{with_interval(blind['rate'], blind['ci'], percent=True)} of all samples. Had the "
                       f"image shown the opposite finding, the model would have answered the same on about "
                       f"{percent(blind['among_dangerous'], 0)} of the Dangerous samples (references: "
                       f"{blind['source']}; per finding {references})")
    else:
        blind_words = f"not estimable ({blind['reason']})"
    headline = [
        f"Dangerous: {with_interval(dangerous, dangerous_ci, percent=True)} of {n} samples "
        f"answer the same for every paraphrase and the same without the image.",
        f"Image-blind: {blind_words}.",
        f"Gate: {gate}.",
    ]
    line = (f"{summary['config']}__{summary['dataset']}: Dangerous {percent(dangerous)}, image-blind "
            f"{percent(blind['rate'])}, prior-coincident {percent(coincident)}; {gate}")
    return {"headline": headline, "passed": passed, "gate": gate, "line": line,
            "image_blind": blind["rate"], "dangerous": dangerous, "blind": blind,
            "estimable": blind["estimable"], "why_not_estimable": blind["reason"], **base}


def figure_png(fig) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=80, bbox_inches="tight")   # nothing outside the axes cut off
    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def table_html(header, rows) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


STYLE = """
body { font-family: system-ui, sans-serif; max-width: 62rem; margin: 2rem auto; padding: 0 1rem; color: #222; }
h1 { font-size: 1.5rem; } h2 { font-size: 1.15rem; margin-top: 2rem; }
table { border-collapse: collapse; margin: .5rem 0; font-size: .9rem; }
th, td { border: 1px solid #ccc; padding: .25rem .6rem; text-align: left; vertical-align: top; }
th { background: #f2f2f2; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
.headline { background: #fff7e6; border-left: 4px solid #e76f51; padding: .5rem 1rem; font-size: 1.05rem; }
.warnings { background: #fdecea; border-left: 4px solid #b42318; padding: .4rem 1rem; }
.pass { color: #1d7a4f; font-weight: bold; } .fail { color: #b42318; font-weight: bold; }
.note { color: #555; font-size: .85rem; } img { max-width: 100%; }
details { margin-top: 1rem; } summary { cursor: pointer; font-weight: bold; }
"""


def frame_html(frame: pd.DataFrame) -> str:
    """A table of `breakdown`, as `breakdown.shown` writes it."""
    shown = breakdown.shown(frame)
    return table_html(shown.columns, shown.itertuples(index=False))


def ground_truth_section(truth: dict | None) -> list[str]:
    """The twins' verdict on each measure of "ignores the image" (nothing without twins)."""
    if not truth:
        return []
    rows = []
    for key, words in (("paper_measure", "not image-reliant (the paper's axis)"),
                       ("dangerous", "Dangerous (against consistent and ignoring the image)")):
        measure = truth.get(key)
        if measure:
            rows.append((words, measure["n_predicted"], measure["n_true"], cell(measure["precision"]),
                         cell(measure["recall"])))
    parts = ["<h2>Against the ground truth (counterfactual twins)</h2>",
             f"<p>{truth['n_samples']} samples have a twin image (the same anatomy with the finding "
             f"toggled); the model ignores the image on {percent(truth['ignored_rate'])} of them "
             f"(its answer does not change on the twin).</p>",
             table_html(("measure of ignoring the image", "samples it flags", "samples truly ignoring",
                         "precision", "recall"), rows)]
    blind = truth.get("image_blind")
    if blind:
        parts.append(f"<p>The image-blind rate {html.escape(with_interval(blind['estimate'], blind['ci95']))} "
                     f"against its twin truth (Dangerous and unchanged on the twin) "
                     f"{html.escape(cell(blind['truth']))}: the interval "
                     f"{'covers' if blind['covered'] else 'does NOT cover'} it.</p>")
    return parts


def local_tests_section(summary: dict) -> list[str]:
    """The local counterfactual tests (lib.protocol.local_tests): per test, the samples it could
    test and why the others were not, the change rate and, for the tests, the image-blind share of
    the Dangerous samples tested (nothing when the run has none)."""
    table = breakdown.local_tests_table(summary)
    if table.empty:
        return []
    truth = (summary.get("ground_truth") or {}).get("local_tests") or {}
    checked = [(test, t["n_covered"], cell(t["precision"]), cell(t["recall"])) for test, t in truth.items()]
    parts = ["<h2>Local tests: does the answer follow this image?</h2>",
             "<p class='note'>Each test changes the sample's own image and asks its original question "
             "again; a change says the answer followed the image. Occlusion is not absence (a box is filled "
             "from the other side of the chest, another lung, or where that side is marked inpainted from "
             "around it; a large box removes anatomy), and another study, registered onto the sample's "
             "image (position and grey levels), still differs in more than the finding (noise, sharpness, "
             "breathing, time): the controls say how often the answer changes for no reason. Intervals: "
             "cluster bootstrap over patients.</p>",
             frame_html(table.reset_index())]
    if checked:
        parts += ["<p class='note'>Against the twins (offline world): precision and recall of "
                  "\"unchanged\" for \"unchanged on the twin\", over the samples with a twin the test "
                  "covers.</p>", table_html(("test", "samples", "precision", "recall"), checked)]
    return parts


def render(summary: dict, samples: pd.DataFrame, max_dangerous: float | None = None,
           predictions: pd.DataFrame | None = None) -> tuple[str, dict]:
    """(the report's HTML, its verdict)."""
    v = verdict(summary, samples, max_dangerous)
    params = summary.get("params") or {}
    pair = f"{summary['config']}__{summary['dataset']}"
    n = summary["n_samples"]
    findings = breakdown.per_finding(samples)
    paraphrases = (breakdown.per_paraphrase(predictions, samples) if predictions is not None
                   else pd.DataFrame(columns=list(breakdown.PARAPHRASE_COLUMNS)))
    warnings = (breakdown.too_few(findings, paraphrases, n) + reference_warnings(v["blind"])
                + list(summary.get("warnings") or []))
    status = ("" if v["passed"] is None else
              f"<p class='{'pass' if v['passed'] else 'fail'}'>{'PASS' if v['passed'] else 'FAIL'}</p>")
    parts = [f"<h1>Screen: {html.escape(pair)}</h1>", status,
             "<div class='headline'>" + "".join(f"<p>{html.escape(p)}</p>" for p in v["headline"]) + "</div>"]
    if warnings:
        parts += ["<div class='warnings'><p><b>Warnings</b> (a rate over fewer than "
                  f"{breakdown.MIN_SAMPLES} samples, or a sensitivity or specificity over fewer than "
                  f"{breakdown.MIN_POSITIVES}, is too few to tell)</p><ul>"
                  + "".join(f"<li>{html.escape(w)}</li>" for w in warnings) + "</ul></div>"]

    parts += ["<h2>Per finding</h2>",
              frame_html(findings.rename(columns={"n": "samples"})),
              "<p class='note'>Intervals per finding: Wilson score intervals.</p>"]
    if len(paraphrases):
        parts += ["<h2>Per paraphrase</h2>",
                  "<p class='note'>Flip rate: how often the paraphrase's answer differs from the "
                  "original question's on the same image (a negated paraphrase is compared by the "
                  "answer it implies). Wilson intervals.</p>",
                  frame_html(paraphrases.rename(columns={"prompt": "paraphrase", "n": "samples"}))]
    parts += ground_truth_section(summary.get("ground_truth"))

    rows = [(r["quadrant"], r["meaning"], r["samples"],
             with_interval(r["fraction"], r["ci"]),
             cell(r["accuracy"]), cell(r["prior accuracy"]), cell(r["mean entropy (bits)"]))
            for r in quadrant_table(summary).to_dict("records")]
    parts += ["<h2>The four quadrants</h2>",
              table_html(("quadrant", "meaning", "samples", "fraction", "accuracy",
                          "prior accuracy (text-only answer)", "mean entropy (bits)"), rows)]

    kinds = [(k, KIND_WORDS.get(k, ""), with_interval(*breakdown.declared(summary, "dangerous_breakdown", k)))
             for k in (summary.get("dangerous_breakdown") or {})]
    if kinds:
        parts += ["<h2>Dangerous samples: image-blind or prior-coincident</h2>",
                  "<p class='note'>Fractions of ALL samples.</p>",
                  table_html(("kind", "meaning", "fraction of all samples"), kinds)]
    by_finding = breakdown.image_blind_by_finding(summary)
    if not by_finding.empty:
        parts += ["<p class='note'>The image-blind rate per finding, over that finding's samples, with "
                  "the opposite-label reference images it rests on.</p>", frame_html(by_finding.reset_index())]
    parts += local_tests_section(summary)

    def measure(label, key):
        return (label, with_interval(*breakdown.declared(summary, key)))

    perf = [measure("accuracy", "accuracy"), measure("balanced accuracy", "balanced_accuracy"),
            measure("sensitivity", "sensitivity"), measure("specificity", "specificity"),
            ("text-only answer alone (the prior)", cell(v["prior_accuracy"])),
            (f"always \"{v['majority_label']}\" (the majority label)", cell(v["majority_accuracy"])),
            measure("flip rate", "flip_rate"), measure("pairwise flip rate", "pairwise_flip_rate"),
            measure("image reliance rate", "image_reliance_rate")]
    perf += [measure(label, f"{check}_change_rate") for check, label in NULL_IMAGE_WORDS.items()
             if summary.get(f"{check}_change_rate") is not None]
    parts += ["<h2>Accuracy against what the prior alone earns</h2>",
              table_html(("measure", "value (95 % CI)"), perf)]

    screening = summary.get("screening") or {}
    catch = [(f"{100 * float(f):.0f} %", cell(r), cell((screening.get("flagged_dangerous_fraction") or {}).get(f)))
             for f, r in (screening.get("catch_rate") or {}).items()]
    parts += ["<h2>Confidence screening</h2>",
              f"<p>AUROC of answer entropy, Dangerous vs the other samples: "
              f"<b>{html.escape(with_interval(screening.get('auroc_entropy_dangerous'), screening.get('ci95')))}</b>. "
              f"0.5: an entropy screen is blind to Dangerous samples; below 0.5 they are the more "
              f"confident ones.</p>"]
    if any(r[1] != "n/a" for r in catch):
        parts += [table_html(("least confident samples flagged", "share of Dangerous samples caught",
                              "Dangerous among the flagged"), catch)]

    thresholds = summary.get("threshold_sensitivity") or {}
    if thresholds:
        parts += ["<h2>Decision threshold</h2>",
                  "<p class='note'>Quadrant fractions when pred = yes iff p_yes &ge; t (0.5 is the protocol's).</p>",
                  table_html(("t",) + QUADRANTS, [(t,) + tuple(cell(f.get(q)) for q in QUADRANTS)
                                                  for t, f in thresholds.items()])]

    mass = summary.get("yes_no_mass") or {}
    parts += ["<h2>Yes/no probability mass</h2>",
              f"<p>Median {cell(mass.get('median'))}, 10th percentile {cell(mass.get('p10'))} over the "
              f"image prompts (how much of the next-token probability the answers yes and no held).</p>"]

    if len(samples):
        fig = plots.pair_distributions(samples, title=pair)
        parts += ["<h2>Distributions per quadrant</h2>",
                  f"<img alt='entropy and reliance histograms per quadrant' src='data:image/png;base64,{figure_png(fig)}'>"]

    setup = [("model", params.get("model")), ("adapter", params.get("adapter")),
             ("quantization", params.get("quantization")), ("dataset", summary["dataset"]),
             ("split", params.get("split")), ("samples", n), ("limit", params.get("limit")),
             ("samples left out", sum((summary.get("n_skipped") or {}).values())),
             ("findings", ", ".join(params.get("findings") or [])),
             ("questions", params.get("questions") or "built-in"),
             ("answer instruction", params.get("answer_instruction")),
             ("reliance checks", ", ".join(summary.get("reliance_checks") or []) or "none"),
             ("seed", params.get("seed")), ("run hash", summary.get("run_hash")),
             ("git commit", summary.get("git_commit"))]
    parts += ["<details><summary>What was screened (settings)</summary>",
              table_html(("setting", "value"), [(k, "" if x is None else x) for k, x in setup]), "</details>"]

    parts += ["<h2>How to read this</h2>",
              "<p class='note'>Start with the box: Dangerous is the share of samples whose answer "
              "survives every paraphrase and the removal of the image; image-blind is the part of "
              "it whose answer does not follow the image at all. A narrow interval and no warning "
              "mean the number can be trusted; a warning saying too few means it cannot, whatever "
              "its value.</p>",
              f"<p class='note'>Intervals: {html.escape(summary.get('ci_method') or 'none')}; where "
              f"that bootstrap collapses to a point (every sample alike) the Wilson score interval "
              f"is shown instead.</p>",
              "<p class='note'>This report holds aggregate numbers and the question texts only: no "
              "sample image, no report text, no sample or image id (for every dataset, mimic-cxr "
              "and padchest included). The per-sample tables beside it (samples.parquet, "
              "predictions.parquet) hold dataset ids: share them only as your data use agreement "
              "allows.</p>",
              f"<p class='note'>Written {datetime.datetime.now().isoformat(timespec='seconds')} by "
              f"cxr-screen (lib/front/report.py).</p>"]
    page = (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>Screen: {html.escape(pair)}"
            f"</title><style>{STYLE}</style></head><body>{''.join(parts)}</body></html>")
    return page, v


def write_report(run_dir, path=None, max_dangerous: float | None = None) -> dict:
    """Write ``run_dir/report.html`` (or ``path``); returns the verdict with ``path`` and
    ``verdict_line``."""
    summary, samples = load_run(run_dir)
    page, v = render(summary, samples, max_dangerous, load_predictions(run_dir))
    target = Path(path) if path else Path(run_dir) / "report.html"
    records.write_new(target, page.encode("utf-8"))
    return {**v, "path": str(target), "verdict_line": v["line"]}
