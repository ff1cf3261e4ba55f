"""The screen's report: one run's numbers, with their intervals and a verdict in plain words, as HTML.

`write_report(run_dir, max_dangerous=None)` reads the run's `summary.json` and `samples.parquet`
(written by the evaluate notebook) and writes `run_dir/report.html`: the four quadrants with their
intervals; the Dangerous samples split by reference images into image-blind and prior-coincident;
accuracy against what the prior (the text-only answer) alone earns; the confidence-screening
AUROC; the yes/no-mass warnings; a verdict paragraph. The definitions are those of
`lib.protocol.taxonomy`.

The report is aggregate only, whatever the dataset: it embeds no sample image (its two figures
are histograms of numbers), no report text, no sample or image id, so it can be shared where the
summary can. The verdict gates on the image-blind rate: `passed` is None without a
limit, else whether that rate is at most ``max_dangerous``; when the run could not estimate
it (`gate_basis`) `passed` is None and `estimable` False: the gate fails closed (the screen
exits 4), it never reads an unknown as 0.
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

from ..protocol import plots, records
from ..protocol.stats import lookup
from ..protocol.taxonomy import QUADRANTS

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


def number(x, digits: int = 3) -> str:
    return "n/a" if x is None or x != x else f"{x:.{digits}f}"


def percent(x, digits: int = 1) -> str:
    return "n/a" if x is None or x != x else f"{100 * x:.{digits}f} %"


def interval(ci, as_percent: bool = False) -> str:
    if not ci or ci[0] is None or ci[1] is None:
        return "n/a"
    if as_percent:
        return f"{100 * ci[0]:.1f}-{100 * ci[1]:.1f} %"
    return f"{ci[0]:.3f}-{ci[1]:.3f}"


def baselines(samples: pd.DataFrame) -> dict:
    """Accuracy of the text-only answer alone (the prior) and of always answering the majority label."""
    if not len(samples):
        return {"prior_accuracy": None, "majority_accuracy": None, "majority_label": None}
    yes = float((samples["label"] == "yes").mean())
    return {"prior_accuracy": float((samples["pred_text_only"] == samples["label"]).mean()),
            "majority_accuracy": max(yes, 1 - yes), "majority_label": "yes" if yes >= 0.5 else "no"}


def quadrant_table(summary: dict) -> pd.DataFrame:
    rows = []
    for q in QUADRANTS:
        rows.append({
            "quadrant": q, "meaning": QUADRANT_WORDS[q],
            "samples": lookup(summary, "quadrant_counts", q),
            "fraction": lookup(summary, "quadrant_fractions", q),
            "ci": lookup(summary, "ci95", "quadrant_fractions", q),
            "accuracy": lookup(summary, "accuracy_by_quadrant", q),
            "prior accuracy": lookup(summary, "prior_accuracy_by_quadrant", q),
            "mean entropy (bits)": lookup(summary, "entropy_by_quadrant", q),
        })
    return pd.DataFrame(rows)


def gate_basis(summary: dict) -> tuple[bool, str | None]:
    """(whether the image-blind fraction could be estimated, why not): the run's own
    `image_blind.estimable` and `reason` when it has them; else unestimable when the fraction is
    None."""
    block = summary.get("image_blind")
    if isinstance(block, dict) and "estimable" in block:
        return bool(block["estimable"]), block.get("reason")
    if lookup(summary, "dangerous_breakdown", "image-blind") is None:
        return False, "the run did not measure the image-blind fraction"
    return True, None


def verdict(summary: dict, samples: pd.DataFrame, max_dangerous: float | None = None) -> dict:
    """The verdict: ``paragraphs`` (plain words), ``passed`` (None without a limit), ``line``
    (one line for the terminal) and the numbers it rests on."""
    n = summary["n_samples"]
    dangerous = lookup(summary, "quadrant_fractions", "Dangerous")
    blind = lookup(summary, "dangerous_breakdown", "image-blind")
    coincident = lookup(summary, "dangerous_breakdown", "prior-coincident")
    block = summary.get("image_blind") or {}
    flip = summary.get("flip_rate")
    consistent = None if flip is None else 1 - flip
    base = baselines(samples)
    accuracy = summary.get("accuracy")
    ci = lambda *keys: interval(lookup(summary, "ci95", *keys), as_percent=True)  # noqa: E731
    words = []
    words.append(
        f"{summary['config']} on {summary['dataset']} ({n} samples): {percent(dangerous)} of the samples "
        f"(95 % CI {ci('quadrant_fractions', 'Dangerous')}) are Dangerous: the answer is the same for "
        f"every paraphrase and the same without the image. Paraphrase consistency alone would call "
        f"all of them reliable.")
    if blind is None:
        words.append("The image-blind rate could not be estimated ("
                     + (block.get("reason") or "the reference check did not run") + "), so the Dangerous "
                     "samples cannot be told apart into image-blind and prior-coincident ones.")
    else:
        among = block.get("among_dangerous")
        refs = "; ".join(f"{f}: {v['n_references']['yes']} with / {v['n_references']['no']} without"
                         + ("" if v["estimable"] else " (too few to tell: not estimable)")
                         for f, v in sorted((block.get("by_finding") or {}).items()))
        words.append(
            f"Had the image shown the opposite finding, the model would have answered the same on about "
            f"{percent(among, 0)} of these Dangerous samples: the image-blind rate is {percent(blind)} of "
            f"all samples (CI {ci('dangerous_breakdown', 'image-blind')}), estimated from reference "
            f"images of the opposite label ({block.get('reference_source')}; references per finding, "
            f"{refs}; a finding with fewer than {block.get('min_references')} is not estimable). "
            f"The other {percent(coincident)} (CI {ci('dangerous_breakdown', 'prior-coincident')}) are "
            f"prior-coincident: the model reads the image and its answer merely agrees with what it "
            f"says without one.")
    gain = None if accuracy is None or base["prior_accuracy"] is None else accuracy - base["prior_accuracy"]
    words.append(
        f"Accuracy is {number(accuracy)} (CI {interval(lookup(summary, 'ci95', 'accuracy'))}), balanced "
        f"accuracy {number(summary.get('balanced_accuracy'))} (sensitivity {number(summary.get('sensitivity'))}, "
        f"specificity {number(summary.get('specificity'))}); the text-only answer alone would get "
        f"{number(base['prior_accuracy'])} and always answering \"{base['majority_label']}\" "
        f"{number(base['majority_accuracy'])}"
        + ("." if gain is None else f": the image adds {gain:+.3f} over the prior.")
        + f" Within the Dangerous samples accuracy is "
        f"{number(lookup(summary, 'accuracy_by_quadrant', 'Dangerous'))} against "
        f"{number(lookup(summary, 'prior_accuracy_by_quadrant', 'Dangerous'))} for the prior there "
        f"(the same number by definition: their answer is the text-only answer).")
    auroc = lookup(summary, "screening", "auroc_entropy_dangerous")
    catch = lookup(summary, "screening", "catch_rate", "0.2")
    if auroc is None:
        screen = "There is no Dangerous sample (or no other one), so confidence screening cannot be judged."
    else:
        if auroc < 0.45:
            how = "Dangerous samples are the MORE confident ones: a screen that flags low-confidence answers reaches them last"
        elif auroc <= 0.55:
            how = "an entropy screen is blind to them"
        else:
            how = "an entropy screen flags them somewhat more often than the other samples"
        screen = (f"Confidence screening: the AUROC of answer entropy for Dangerous against the other "
                  f"samples is {number(auroc, 2)} (CI {interval(lookup(summary, 'screening', 'ci95'))}; "
                  f"0.5 = blind): {how}. Flagging the 20 % least confident samples catches "
                  f"{percent(catch, 0)} of the Dangerous ones.")
    words.append(screen)
    for warning in summary.get("warnings") or []:
        words.append(f"Warning: {warning}")
    estimable, why = gate_basis(summary)
    if max_dangerous is None:
        passed, gate = None, "no limit set (--max-dangerous): the screen reports, it does not gate"
    elif not estimable:
        passed, gate = None, (f"the image-blind rate cannot be estimated ({why}): "
                              f"NOT ESTIMABLE, the gate fails closed (exit 4)")
    else:
        passed = blind <= max_dangerous
        gate = (f"image-blind rate {blind:.3f} {'<=' if passed else '>'} "
                f"--max-dangerous {max_dangerous:g}: {'PASS' if passed else 'FAIL (exit 3)'}")
    words.append(f"Gate: {gate}.")
    line = (f"{summary['config']}__{summary['dataset']}: Dangerous {percent(dangerous)}, image-blind "
            f"{percent(blind)}, prior-coincident {percent(coincident)}; {gate}")
    return {"paragraphs": words, "passed": passed, "line": line, "image_blind": blind,
            "estimable": estimable, "why_not_estimable": why, "dangerous": dangerous, **base}


def figure_png(fig) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=80)
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
th { background: #f2f2f2; } .verdict { background: #fff7e6; border-left: 4px solid #e76f51; padding: .5rem 1rem; }
.pass { color: #1d7a4f; font-weight: bold; } .fail { color: #b42318; font-weight: bold; }
.note { color: #555; font-size: .85rem; } img { max-width: 100%; }
"""


def render(summary: dict, samples: pd.DataFrame, max_dangerous: float | None = None) -> tuple[str, dict]:
    """(the report's HTML, its verdict)."""
    v = verdict(summary, samples, max_dangerous)
    params = summary.get("params") or {}
    pair = f"{summary['config']}__{summary['dataset']}"
    status = ("" if v["passed"] is None else
              f"<p class='{'pass' if v['passed'] else 'fail'}'>{'PASS' if v['passed'] else 'FAIL'}</p>")
    if max_dangerous is not None and not v["estimable"]:
        status = "<p class='fail'>NOT ESTIMABLE: the gate fails closed</p>"
    parts = [f"<h1>Screen: {html.escape(pair)}</h1>", status,
             "<div class='verdict'>" + "".join(f"<p>{html.escape(p)}</p>" for p in v["paragraphs"]) + "</div>"]

    setup = [("model", params.get("model")), ("adapter", params.get("adapter")),
             ("quantization", params.get("quantization")), ("dataset", summary["dataset"]),
             ("split", params.get("split")), ("samples", summary["n_samples"]),
             ("samples left out", sum((summary.get("n_skipped") or {}).values())),
             ("questions", params.get("questions") or "built-in"),
             ("reliance checks", ", ".join(summary.get("reliance_checks") or []) or "none"),
             ("run hash", summary.get("run_hash")), ("git commit", summary.get("git_commit"))]
    parts += ["<h2>What was screened</h2>", table_html(("setting", "value"), [(k, "" if x is None else x) for k, x in setup])]

    rows = [(r["quadrant"], r["meaning"], r["samples"], number(r["fraction"]), interval(r["ci"]),
             number(r["accuracy"]), number(r["prior accuracy"]), number(r["mean entropy (bits)"]))
            for r in quadrant_table(summary).to_dict("records")]
    parts += ["<h2>The four quadrants</h2>",
              table_html(("quadrant", "meaning", "samples", "fraction", "95 % CI", "accuracy",
                          "prior accuracy (text-only answer)", "mean entropy (bits)"), rows)]

    kinds = [(k, KIND_WORDS[k], number(lookup(summary, "dangerous_breakdown", k)),
              interval(lookup(summary, "ci95", "dangerous_breakdown", k)))
             for k in ("image-blind", "prior-coincident")]
    parts += ["<h2>Dangerous samples, split by reference images of the opposite label</h2>",
              "<p class='note'>Fractions of ALL samples; the two add up to the Dangerous fraction of "
              "the samples whose finding had enough references.</p>",
              table_html(("kind", "meaning", "fraction of all samples", "95 % CI"), kinds)]

    ci = lambda key: interval(lookup(summary, "ci95", key))  # noqa: E731
    perf = [("accuracy", number(summary.get("accuracy")), ci("accuracy")),
            ("balanced accuracy", number(summary.get("balanced_accuracy")), ci("balanced_accuracy")),
            ("sensitivity", number(summary.get("sensitivity")), ci("sensitivity")),
            ("specificity", number(summary.get("specificity")), ci("specificity")),
            ("text-only answer alone (the prior)", number(v["prior_accuracy"]), ""),
            (f"always \"{v['majority_label']}\" (the majority label)", number(v["majority_accuracy"]), ""),
            ("flip rate", number(summary.get("flip_rate")), ci("flip_rate")),
            ("pairwise flip rate", number(summary.get("pairwise_flip_rate")), ci("pairwise_flip_rate")),
            ("image reliance rate", number(summary.get("image_reliance_rate")), ci("image_reliance_rate")),
            ("blank image changes the answer", number(summary.get("blank_change_rate")), ""),
            ("noise images change the answer", number(summary.get("noise_change_rate")), "")]
    parts += ["<h2>Accuracy against what the prior alone earns</h2>",
              table_html(("measure", "value", "95 % CI"), perf)]

    screening = summary.get("screening") or {}
    catch = [(f"{100 * float(f):.0f} %", number(r), number((screening.get("flagged_dangerous_fraction") or {}).get(f)))
             for f, r in (screening.get("catch_rate") or {}).items()]
    parts += ["<h2>Confidence screening</h2>",
              f"<p>AUROC of answer entropy, Dangerous vs the other samples: "
              f"<b>{number(screening.get('auroc_entropy_dangerous'))}</b> (95 % CI "
              f"{interval(screening.get('ci95'))}). 0.5: an entropy screen is blind to Dangerous "
              f"samples; below 0.5 they are the more confident ones.</p>",
              table_html(("least confident samples flagged", "share of Dangerous samples caught",
                          "Dangerous among the flagged"), catch)]

    thresholds = summary.get("threshold_sensitivity") or {}
    parts += ["<h2>Decision threshold</h2>",
              "<p class='note'>Quadrant fractions when pred = yes iff p_yes &ge; t (0.5 is the protocol's).</p>",
              table_html(("t",) + QUADRANTS, [(t,) + tuple(number(f.get(q)) for q in QUADRANTS)
                                              for t, f in thresholds.items()])]

    mass = summary.get("yes_no_mass") or {}
    warnings = summary.get("warnings") or []
    parts += ["<h2>Yes/no probability mass</h2>",
              f"<p>Median {number(mass.get('median'))}, 10th percentile {number(mass.get('p10'))} over the "
              f"image prompts (how much of the next-token probability the answers yes and no held).</p>",
              "".join(f"<p class='fail'>{html.escape(w)}</p>" for w in warnings) or "<p>No warning.</p>"]

    if len(samples):
        fig = plots.pair_distributions(samples, title=pair)
        parts += ["<h2>Distributions per quadrant</h2>",
                  f"<img alt='entropy and reliance histograms per quadrant' src='data:image/png;base64,{figure_png(fig)}'>"]

    parts += ["<h2>How to read this</h2>",
              f"<p class='note'>Intervals: {html.escape(summary.get('ci_method') or 'none')}.</p>",
              "<p class='note'>This report holds aggregate numbers only: no sample image, no report "
              "text, no sample or image id (for every dataset, mimic-cxr and padchest included). The "
              "per-sample tables beside it (samples.parquet, predictions.parquet) hold dataset ids: "
              "share them only as your data use agreement allows.</p>",
              f"<p class='note'>Written {datetime.datetime.now().isoformat(timespec='seconds')} by "
              f"cxr-screen (lib/front/report.py).</p>"]
    page = (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>Screen: {html.escape(pair)}"
            f"</title><style>{STYLE}</style></head><body>{''.join(parts)}</body></html>")
    return page, v


def write_report(run_dir, path=None, max_dangerous: float | None = None) -> dict:
    """Write ``run_dir/report.html`` (or ``path``); returns the verdict with ``path`` and
    ``verdict_line``."""
    summary, samples = load_run(run_dir)
    page, v = render(summary, samples, max_dangerous)
    target = Path(path) if path else Path(run_dir) / "report.html"
    records.write_new(target, page.encode("utf-8"))
    return {**v, "path": str(target), "verdict_line": v["line"]}
