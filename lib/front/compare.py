"""`cxr-screen compare DIR DIR ... --out OUT`: one page over several screens, OUT/compare.html.

Each DIR is a screen's (or an evaluate run's) output folder: its summary.json and samples.parquet.
The page holds, in this order:

- the screens: their folder, n, the Dangerous fraction and the image-blind estimate with their
  intervals; then what each ran: configuration, dataset, split, model and adapter, limit,
  question file, run hash and commit (two screens of one pair with different limits are told
  apart by folder and n);
- a forest plot of those intervals, one row per screen (`plots.dangerous_forest`);
- for every two screens that share samples (same dataset and split: two models, or a model with
  and without an adapter), the paired difference over the shared samples of the Dangerous and
  correct indicators (`breakdown.paired_difference`: a bootstrap over shared images and
  McNemar's exact test); the image-blind rate, an expectation over reference images with no
  per-sample verdict, is compared by its interval in the table and the forest plot;
- the correlation of flip rate with the Dangerous fraction across screens only when there are at
  least ``stats.MIN_PAIRS`` of them; with fewer, the page says why there is none.
"""
from __future__ import annotations

import html
import itertools
import json
from pathlib import Path

import pandas as pd

from ..protocol import breakdown, plots, records, stats
from ..protocol.breakdown import cell, with_interval
from .report import STYLE, figure_png, image_blind, table_html

# what the page reads of every summary.json (the rest is shown where present)
SUMMARY_KEYS = ("config", "dataset", "n_samples")
# the screens: their numbers, then (a second table) what tells them apart
RESULT_COLUMNS = ("folder", "samples", "Dangerous", "image-blind")
SETTING_COLUMNS = ("folder", "config", "dataset", "split", "model", "adapter", "limit", "questions", "run hash",
                   "commit")
# the settings table's path columns may break anywhere (a path has no space to break at)
PATH_CELLS = ", ".join(f"table.settings td:nth-child({SETTING_COLUMNS.index(c) + 1})" for c in ("model", "adapter"))


def read_screen(directory) -> dict:
    """{"dir", "label", "summary", "samples"} of one screen's output folder; ValueError (one line)
    when it has no summary.json or samples.parquet."""
    directory = Path(directory)
    for name in ("summary.json", "samples.parquet"):
        if not (directory / name).is_file():
            raise ValueError(f"{directory}: no {name} (give the output folder of a screen or run)")
    summary = read_summary(directory / "summary.json")
    pair = f"{summary['config']}__{summary['dataset']}"
    named = directory.name if directory.name == pair else f"{directory.name}: {pair}"
    label = f"{named} (n={summary['n_samples']})"
    return {"dir": directory, "label": label, "summary": summary,
            "samples": pd.read_parquet(directory / "samples.parquet")}


def read_summary(path: Path) -> dict:
    """A screen's summary.json; ValueError (one line naming it) when it is not one."""
    try:
        summary = json.loads(path.read_bytes())
    except (ValueError, RecursionError) as err:
        raise ValueError(f"{path}: not a readable JSON file ({str(err).splitlines()[0] if str(err) else err!r})") from None
    missing = [k for k in SUMMARY_KEYS if k not in summary] if isinstance(summary, dict) else list(SUMMARY_KEYS)
    if missing:
        raise ValueError(f"{path}: not a summary of a screen or run (no {missing[0]!r})")
    return summary


def screen_rows(screens: list[dict]) -> tuple[list[tuple], list[tuple]]:
    """(rows of ``RESULT_COLUMNS``, rows of ``SETTING_COLUMNS``), one per screen."""
    results, settings = [], []
    for screen in screens:
        summary, params = screen["summary"], screen["summary"].get("params") or {}
        blind = image_blind(summary)
        results.append((screen["dir"].name, summary["n_samples"],
                        with_interval(*breakdown.declared(summary, "quadrant_fractions", "Dangerous")),
                        with_interval(blind["rate"], blind["ci"]) if blind["estimable"] else "not estimable"))
        settings.append((screen["dir"].name, summary["config"], summary["dataset"], params.get("split") or "",
                         params.get("model") or "", params.get("adapter") or "",
                         cell(params.get("limit")) if params.get("limit") else "all",
                         params.get("questions") or "built-in", summary.get("run_hash") or "",
                         (summary.get("git_commit") or "")[:12]))
    return results, settings


def forest_frame(screens: list[dict]) -> pd.DataFrame:
    """`stats.summary_row` of every screen, the pair named by the screen's label (unique)."""
    rows = [stats.summary_row(s["dir"].name, s["summary"], s["dir"] / "summary.json") for s in screens]
    frame = stats.pairs_frame(rows)
    frame["pair"] = [s["label"] for s in screens]
    return frame


def paired_rows(screens: list[dict]) -> tuple[list[tuple], list[str]]:
    """(rows of paired differences, notes on the pairs of screens that share no sample)."""
    rows, notes = [], []
    for a, b in itertools.combinations(screens, 2):
        found = False
        for measure in breakdown.PAIRED_MEASURES:
            result = breakdown.paired_difference(a["samples"], b["samples"], measure)
            if result is None:
                continue
            found = True
            rows.append((a["dir"].name, b["dir"].name, measure, result["n_shared"], result["n_images"],
                         cell(result["rate_a"]), cell(result["rate_b"]),
                         with_interval(result["difference"], result["ci95"]),
                         f"{result['only_a']} / {result['only_b']}", f"{result['mcnemar_p']:.3g}"))
        if not found:
            notes.append(f"{a['dir'].name} and {b['dir'].name} share no sample: no paired difference")
    return rows, notes


def correlation_section(frame: pd.DataFrame) -> str:
    n = len(frame)
    if n < stats.MIN_PAIRS:
        return (f"<p>No correlation across screens: {n} screens are too few to tell (a correlation "
                f"needs at least {stats.MIN_PAIRS}; over fewer, even r = 1.0 says little).</p>")
    corr = stats.correlation(frame["flip_rate"], frame["frac_Dangerous"])
    if corr["pearson_r"] is None:
        return f"<p>Correlation undefined: {html.escape(corr['note'] or '')}.</p>"
    ci = [corr["ci95_low"], corr["ci95_high"]] if corr["ci95_low"] is not None else None
    return (f"<p>Flip rate against the Dangerous fraction over {corr['n']} screens: Pearson r = "
            f"{html.escape(with_interval(corr['pearson_r'], ci, digits=2))} (Fisher z), p = "
            f"{corr['p_value']:.3g}. Much of it is arithmetic: Dangerous = consistent minus Ideal.</p>")


def render(screens: list[dict]) -> str:
    frame = forest_frame(screens)
    pairs, notes = paired_rows(screens)
    results, settings = screen_rows(screens)
    parts = ["<h1>Screens compared</h1>", table_html(RESULT_COLUMNS, results),
             "<h2>What each screen ran</h2>",
             table_html(SETTING_COLUMNS, settings).replace("<table>", "<table class='settings'>", 1),
             "<h2>Dangerous and image-blind, with intervals</h2>",
             f"<img alt='forest plot of the Dangerous fraction per screen' "
             f"src='data:image/png;base64,{figure_png(plots.dangerous_forest(frame))}'>",
             "<h2>Paired differences (screens of the same samples)</h2>",
             "<p class='note'>Over the samples both screens hold: each screen's rate, the difference "
             "(second minus first) with a 95 % bootstrap interval over the shared images, the "
             "discordant samples (only in the first / only in the second) and McNemar's exact p.</p>"]
    if pairs:
        parts.append(table_html(("first", "second", "indicator", "shared samples", "shared images",
                                 "first rate", "second rate", "difference", "discordant", "McNemar p"), pairs))
    parts += [f"<p>{html.escape(note)}</p>" for note in notes]
    parts += ["<h2>Across screens</h2>", correlation_section(frame)]
    return (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>Screens compared</title>"
            f"<style>{STYLE} body {{ max-width: 90rem; }} {PATH_CELLS} {{ overflow-wrap: anywhere; }}</style></head><body>{''.join(parts)}</body></html>")


def write_compare(dirs, out) -> Path:
    """Read the screens in ``dirs`` (at least two) and write ``out/compare.html``."""
    screens = [read_screen(d) for d in dirs]
    if len(screens) < 2:
        raise ValueError("compare needs at least two screen folders")
    out = records.claim_output_dir(out)   # the tool's own folder: never among the user's files
    return records.write_new(out / "compare.html", render(screens).encode("utf-8"))
