"""docs/results.md, written from what `make all` (and `make bench`, `make seeds`) left in outputs/.

Every number in the document is read from an output file, and the document says when, from
which commit and on which machine those outputs were made, so no number is typed by hand and
none goes stale unnoticed: `make results` rewrites it.

    python -m lib.front.results [--outputs outputs] [--out docs/results.md]
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from ..protocol import ground_truth, stats
from ..protocol.local_tests import CHANGES
from ..protocol.vocabulary import FOLLOWUP, FOLLOWUP_CONTROL, LOCAL_TESTS, OCCLUDE, OCCLUDE_CONTROL
from ..protocol.breakdown import declared, proportion_ci, with_interval
from ..protocol.measures import number
from . import report


PAIR_COLUMNS = ("pair", "n", "flip rate", "pairwise (held-out)", "balanced acc.", "Ideal", "Fragile",
                "Dangerous", "image-blind", "prior-coincident", "blank changes", "AUROC entropy",
                "yes/no mass")
SHORTCUT = "shortcut"   # the reliance dial's adapters, built to ignore the image (not "non-shortcut")
CONTROLS = {OCCLUDE: OCCLUDE_CONTROL, FOLLOWUP: FOLLOWUP_CONTROL}
LABELS = ("all", "yes", "no")    # the local tests pooled over all samples, then by the sample's label
MARGIN_COLUMNS = ["label", "agrees", "margin"]   # twin_margins' table


def table(header, rows) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def read_json(path: Path):
    return json.loads(path.read_text()) if path.is_file() else None


def pair_row(pair: str, s: dict) -> list:
    def rate(*key):
        return with_interval(*declared(s, *key))

    held = s.get("pairwise_flip_rate_held_out")
    return [pair, s["n_samples"], rate("flip_rate"), f"{number(s['pairwise_flip_rate'])} ({number(held)})",
            rate("balanced_accuracy"), *(rate("quadrant_fractions", k) for k in ("Ideal", "Fragile", "Dangerous")),
            *(rate("dangerous_breakdown", k) for k in ("image-blind", "prior-coincident")),
            rate("blank_change_rate"), rate("auroc_entropy_dangerous"),
            number((s.get("yes_no_mass") or {}).get("median"))]


def precision_recall(entry) -> str:
    if not entry:
        return "–"
    return f"{number(entry['precision'], 2)} / {number(entry['recall'], 2)}"


def ground_truth_rows(runs: dict) -> list:
    rows = []
    for pair, s in runs.items():
        gt = s.get("ground_truth")
        if gt:
            rows.append([pair, gt["n_samples"], number(gt["ignored_rate"]), precision_recall(gt["paper_measure"]),
                         precision_recall(gt["dangerous"]), number(gt.get("reference_auroc"))])
    return rows


def coverage(entries: list[tuple[str, dict]]) -> dict:
    """How often the image-blind interval covers its twin truth, and the median |estimate - truth|
    over the pairs that are not shortcut adapters, from (pair, ground_truth.image_blind) entries."""
    known = [(p, e) for p, e in entries if e and e.get("covered") is not None]
    errors = sorted(abs(e["estimate"] - e["truth"]) for p, e in known if SHORTCUT not in p)
    median = None
    if errors:
        mid = len(errors) // 2
        median = errors[mid] if len(errors) % 2 else (errors[mid - 1] + errors[mid]) / 2
    return {"covered": sum(bool(e["covered"]) for _, e in known), "n": len(known),
            "median_abs_error_non_shortcut": median}


def image_blind_section(runs: dict, seeds_dir: Path) -> str:
    """The image-blind rate against the twins: per pair of `make all`, and per pair x seed."""
    entries = [(p, (s.get("ground_truth") or {}).get("image_blind")) for p, s in runs.items()]
    rows = []
    for pair, e in entries:
        if not e:
            continue
        block = runs[pair].get("image_blind") or {}
        refs = [f"{f} {v['n_references']['yes']}/{v['n_references']['no']}"
                for f, v in sorted((block.get("by_finding") or {}).items())]
        rows.append([pair, e["n_samples"], with_interval(e["estimate"], e["ci95"]), number(e["truth"]),
                     "yes" if e["covered"] else "no", number(abs(e["estimate"] - e["truth"])),
                     number((runs[pair].get("ground_truth") or {}).get("reference_auroc"), 2), "; ".join(refs)])
    if not rows:
        return "No run has twins and references.\n"
    c = coverage(entries)
    text = (f"The interval covers the twin truth in **{c['covered']} of {c['n']}** pairs; median "
            f"|estimate - truth| over the pairs that are not shortcut adapters: "
            f"**{number(c['median_abs_error_non_shortcut'])}**.\n\n"
            + table(["pair", "n", "image-blind rate [95 % CI]", "twin truth", "covered", "abs. error",
                     "AUROC of reference agreement", "references yes/no per finding"], rows) + "\n")
    seeds_csv = seeds_dir / "seeds.csv"
    if seeds_csv.is_file():
        frame = pd.read_csv(seeds_csv)
        if "image_blind_covered" in frame:
            known = frame.dropna(subset=["image_blind_covered"])
            per_seed = [[int(r.seed), r.pair, with_interval(r.image_blind, [r.image_blind_low, r.image_blind_high]),
                         number(r.image_blind_truth), "yes" if r.image_blind_covered else "no"]
                        for r in known.itertuples()]
            text += (f"\nOver `make seeds` ({frame.seed.nunique()} seeds): the interval covers the truth in "
                     f"**{int(known.image_blind_covered.sum())} of {len(known)}** pair x seed.\n\n"
                     + table(["seed", "pair", "image-blind rate [95 % CI]", "twin truth", "covered"], per_seed) + "\n")
    return text


def shortcut_findings(config: str, lora_dir: Path = Path("params/lora")) -> list[str]:
    """The findings a reliance-dial adapter was built to ignore (its params' shortcut_findings)."""
    path = lora_dir / f"{config}.yaml"
    return list((yaml.safe_load(path.read_text()) or {}).get("shortcut_findings") or []) if path.is_file() else []


def built_to_ignore_recall(run_dir: Path, test: str, findings: list[str]) -> tuple[float | None, int]:
    """(share flagged "unchanged" by ``test``, n) among the samples of ``findings`` that ignore the
    image on their twin and that the test covers."""
    path = run_dir / "samples.parquet"
    column = CHANGES[test]
    if not findings or not path.is_file():
        return None, 0
    s = pd.read_parquet(path)
    if column not in s or "truly_image_reliant" not in s:
        return None, 0
    keep = s["finding"].isin(findings) & (s["truly_image_reliant"] == False) & s[column].notna()  # noqa: E712
    n = int(keep.sum())
    return ((~s.loc[keep, column].astype(bool)).mean() if n else None), n


def twin_margins(run_dir: Path, test: str) -> pd.DataFrame:
    """Per sample the test covers that has a twin: its label, whether the test's "unchanged" agrees
    with "unchanged on the twin", and the twin's margin |p_yes - 0.5| on the original question
    (how far the twin's own answer was from a tie)."""
    samples, predictions = (run_dir / f for f in ("samples.parquet", "predictions.parquet"))
    if not samples.is_file() or not predictions.is_file():
        return pd.DataFrame(columns=MARGIN_COLUMNS)
    s = pd.read_parquet(samples)
    if CHANGES[test] not in s:
        return pd.DataFrame(columns=MARGIN_COLUMNS)
    p = pd.read_parquet(predictions, columns=["sample_id", "prompt_id", "condition", "p_yes"])
    twin = p[(p["condition"] == "twin") & (p["prompt_id"] == 0)].set_index("sample_id")["p_yes"]
    s, unchanged, ignored = _against_twins(s, test)
    margin = abs(twin.reindex(s["sample_id"]).to_numpy(dtype=float) - 0.5)
    frame = pd.DataFrame(dict(zip(MARGIN_COLUMNS, (s["label"].to_numpy(), unchanged == ignored, margin))))
    return frame[frame["margin"].notna()]


def margins_text(runs: dict, runs_dir: Path) -> str:
    """How decisive the twin's answer was where each local test agrees and disagrees with it,
    pooled over the non-shortcut pairs (``twin_margins``)."""
    rows = []
    for test in LOCAL_TESTS:
        frame = pd.concat([twin_margins(runs_dir / pair, test) for pair in runs if SHORTCUT not in pair]
                          + [pd.DataFrame(columns=MARGIN_COLUMNS)])
        for label, agrees in [(label, a) for label in sorted(set(frame["label"])) for a in (True, False)]:
            group = frame[(frame["label"] == label) & (frame["agrees"] == agrees)]
            if group.empty:
                continue
            q = group["margin"].quantile([0.25, 0.5, 0.75]).tolist()
            rows.append([test, label, "agrees" if agrees else "disagrees", len(group),
                         f"{q[1]:.2f} ({q[0]:.2f} to {q[2]:.2f})"])
    if not rows:
        return ""
    return ("\nWhere each test agrees and disagrees with the twin (non-shortcut pairs): the twin's own "
            "margin |p_yes - 0.5| on the original question, median (quartiles). A disagreement on a "
            "twin near 0.5 is a near-tie on the twin, which a test on another image cannot reproduce:\n\n"
            + table(["test", "samples' label", "with the twin", "samples", "twin's margin"], rows) + "\n")


def followup_counts(run_dir: Path) -> dict:
    """{"0" / "1 or more": the counts ``pool`` reads} of the follow-up test against the twins, by
    how many of the run's other findings the two studies label differently."""
    path = run_dir / "samples.parquet"
    s = pd.read_parquet(path) if path.is_file() else pd.DataFrame()
    if CHANGES[FOLLOWUP] not in s:
        return {}
    s, unchanged, ignored = _against_twins(s, FOLLOWUP)
    differing = s["followup_differing_labels"]
    return {name: ground_truth.scored(unchanged, ignored, keep.fillna(False).to_numpy(dtype=bool))
            for name, keep in (("0", differing == 0), ("1 or more", differing > 0))}


def _against_twins(s: pd.DataFrame, test: str) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """(the samples the local ``test`` covers that have a twin, whether the test left each answer
    unchanged, whether the twin did: lib.protocol.ground_truth's "ignored")."""
    s = s[s[CHANGES[test]].notna() & s["truly_image_reliant"].notna()]
    unchanged, _ = ground_truth.local_outcome(s, test)
    return s, unchanged, ~s["truly_image_reliant"].astype(bool).to_numpy()


def differing_text(runs_by_seed: dict) -> str:
    """The follow-up test against the twins, pooled over the non-shortcut pairs of each seed's runs
    folder ({seed: folder}) and over all of them, by how many other findings the two studies label
    differently (``followup_counts``)."""
    counts = {seed: [followup_counts(pair) for pair in sorted(folder.iterdir())
                     if pair.is_dir() and SHORTCUT not in pair.name]
              for seed, folder in runs_by_seed.items() if folder.is_dir()}
    if len(counts) > 1:
        counts["all"] = [c for entries in counts.values() for c in entries]
    rows = []
    for seed, entries in counts.items():
        for name in ("0", "1 or more"):
            p = pool([e.get(name) or {} for e in entries])
            if p["n_covered"]:
                rows.append([seed, name, p["n_covered"], p["n_true"], *pooled_cells(p)])
    if not rows:
        return ""
    return ("\nThe follow-up by how many of the run's other findings the two studies label differently "
            "(`followup_differing_labels`; the test takes the fewest there are), pooled over the "
            "non-shortcut pairs per seed (\"all\": the seeds pooled):\n\n"
            + table(["seed", "other findings labelled differently", "samples covered", "unchanged on the twin",
                     "precision", "recall"], rows) + "\n")


def pool(entries: list[dict]) -> dict:
    """Precision and recall pooled over runs from their counts (n_hits, n_predicted, n_true), each
    with its Wilson interval (``precision_ci``, ``recall_ci``). The interval treats the pooled
    samples as independent; runs of one dataset share images, so it is narrower than it should be."""
    hits, predicted, true = (int(sum(e.get(k) or 0 for e in entries)) for k in ("n_hits", "n_predicted", "n_true"))
    return {"precision": hits / predicted if predicted else None, "recall": hits / true if true else None,
            "precision_ci": proportion_ci(hits, predicted), "recall_ci": proportion_ci(hits, true),
            "n_predicted": predicted, "n_true": true, "n_covered": sum(e.get("n_covered") or 0 for e in entries)}


def pooled_cells(p: dict) -> list[str]:
    """A pooled entry's precision and recall, each with its interval (``pool``)."""
    return [with_interval(p["precision"], p["precision_ci"], digits=2),
            with_interval(p["recall"], p["recall_ci"], digits=2)]


def pooled_change_rate(blocks: list[dict]) -> tuple[float | None, int]:
    """(change rate over all samples tested, their number) from summary ``local_tests`` blocks."""
    tested = sum(b.get("n_tested") or 0 for b in blocks)
    changed = sum((b.get("change_rate") or 0) * (b.get("n_tested") or 0) for b in blocks)
    return (changed / tested if tested else None), tested


def local_tests_section(runs: dict, runs_dir: Path, seeds_dir: Path) -> str:
    """Each local test against the twins: per pair, pooled over the non-shortcut pairs, the
    controls of the base models, the shortcut adapters' built-to-ignore findings, and per seed."""
    rows, pooled_rows = [], []
    for pair, s in runs.items():
        truth = ((s.get("ground_truth") or {}).get("local_tests")) or {}
        for test in LOCAL_TESTS:
            control = (s.get("local_tests") or {}).get(CONTROLS[test]) or {}
            e = truth.get(test)
            if not e:
                continue
            ignore = shortcut_findings(s["config"]) if SHORTCUT in pair else []
            recall, n = built_to_ignore_recall(runs_dir / pair, test, ignore)
            rows.append([pair, test, f"{e['n_covered']} ({number(e['coverage'], 2)})", precision_recall(e),
                         f"{number(control.get('change_rate'))} (n {control.get('n_tested', 0)})",
                         f"{number(recall, 2)} (n {n})" if ignore else ""])
    if not rows:
        return "No run has a local test and twins.\n"
    for test in LOCAL_TESTS:
        entries = [((s.get("ground_truth") or {}).get("local_tests") or {}).get(test) or {}
                   for p, s in runs.items() if SHORTCUT not in p]
        rate, n = pooled_change_rate([((s.get("local_tests") or {}).get(CONTROLS[test]) or {})
                                      for pair, s in runs.items() if "-base" in s["config"]])
        for label in LABELS:
            p = pool([e if label == "all" else (e.get("by_label") or {}).get(label) or {} for e in entries])
            if label != "all" and not p["n_covered"]:    # occlusion covers positives only
                continue
            pooled_rows.append([test, label, p["n_covered"], p["n_true"], p["n_predicted"], *pooled_cells(p),
                                f"{number(rate)} (n {n})" if label == "all" else ""])
    text = ("Pooled over the non-shortcut pairs (targets: precision and recall >= 0.8; the base "
            "models' control change rate <= 0.05). Intervals: Wilson, the pooled samples taken as "
            "independent (pairs of one dataset share images: too narrow, not too wide):\n\n"
            + table(["test", "samples' label", "samples covered", "unchanged on the twin", "flagged unchanged",
                     "precision", "recall", "control change rate, base models"], pooled_rows)
            + "\n\nPer pair: samples with a twin the test covers (coverage), precision / recall of "
              "\"unchanged\" for \"unchanged on the twin\", the control's change rate, and for the "
              "shortcut adapters the recall on the findings they were built to ignore (target >= 0.9).\n\n"
            + table(["pair", "test", "covered (coverage)", "precision / recall", "control change rate",
                     "built-to-ignore recall"], rows) + "\n")
    seeds = {0: runs_dir, **{int(d.name): d / "runs" for d in sorted(seeds_dir.glob("[1-9]*")) if d.name.isdigit()}}
    return text + margins_text(runs, runs_dir) + differing_text(seeds) + local_seeds_text(seeds_dir)


def local_seeds_text(seeds_dir: Path) -> str:
    """Per seed of `make seeds`: each local test pooled over the non-shortcut pairs, the base
    models' control change rate, and the shortcut adapters' recall on their built-to-ignore findings."""
    path = seeds_dir / "seeds.csv"
    frame = pd.read_csv(path) if path.is_file() else pd.DataFrame()
    if frame.empty or f"{LOCAL_TESTS[0]}_hits" not in frame:
        return ""
    rows = []
    frame = frame.fillna(0)
    for seed, group in [*frame.groupby("seed"), ("all", frame)]:
        plain = group[~group["pair"].str.contains(SHORTCUT)].to_dict("records")
        for test, label in [(t, label) for t in LOCAL_TESTS for label in LABELS
                            if label == "all" or f"{t}_{label}_hits" in frame]:
            prefix = test if label == "all" else f"{test}_{label}"
            p = pool([{k: r[f"{prefix}_{k[2:]}"] for k in ("n_hits", "n_predicted", "n_true", "n_covered")}
                      for r in plain])
            if label != "all" and not p["n_covered"]:
                continue
            rate, n = pooled_change_rate([{"change_rate": r[f"{CONTROLS[test]}_change_rate"],
                                           "n_tested": r[f"{CONTROLS[test]}_tested"]}
                                          for r in plain if "-base" in r["pair"].split("__")[0]])
            shortcut = [built_to_ignore_recall(seeds_dir / str(int(r["seed"])) / "runs" / r["pair"], test,
                                               shortcut_findings(r["pair"].split("__")[0]))
                        for r in group.to_dict("records") if SHORTCUT in r["pair"]]
            flagged = sum(v * k for v, k in shortcut if v is not None)
            total = sum(k for _, k in shortcut)
            rows.append([seed if seed == "all" else int(seed), test, label, int(p["n_covered"]), int(p["n_true"]),
                         *pooled_cells(p), *([f"{number(rate)} (n {int(n)})",
                                              f"{number(flagged / total if total else None, 2)} (n {total})"]
                                             if label == "all" else ["", ""])])
    return (f"\nOver `make seeds` ({frame.seed.nunique()} seeds; \"all\": the seeds pooled): pooled over the "
            "non-shortcut pairs, the base models' control, and the shortcut adapters' recall on the findings "
            "they were built to ignore:\n\n"
            + table(["seed", "test", "samples' label", "samples covered", "unchanged on the twin", "precision",
                     "recall", "control change rate, base models", "built-to-ignore recall"], rows) + "\n")


def correlation_section(corr: dict | None) -> str:
    if not corr:
        return "No analysis in outputs/analysis (run `make all`).\n"
    boot = corr.get("bootstrap_ci95") or [None, None]
    blind = corr.get("image_blind") or {}
    rows = [
        ["flip rate vs Dangerous fraction", corr.get("n"), number(corr.get("pearson_r")),
         f"[{number(corr.get('ci95_low'), 2)}, {number(corr.get('ci95_high'), 2)}]",
         f"[{number(boot[0], 2)}, {number(boot[1], 2)}]", stats.p_text(corr.get("p_value")),
         stats.p_text(corr.get("permutation_p")), number(corr.get("spearman_rho"))],
    ]
    if blind:
        bb = blind.get("bootstrap_ci95") or [None, None]
        rows.append(["flip rate vs image-blind rate", blind.get("n"), number(blind.get("pearson_r")),
                     f"[{number(blind.get('ci95_low'), 2)}, {number(blind.get('ci95_high'), 2)}]",
                     f"[{number(bb[0], 2)}, {number(bb[1], 2)}]", stats.p_text(blind.get("p_value")),
                     stats.p_text(blind.get("permutation_p")), number(blind.get("spearman_rho"))])
    text = table(["correlation", "pairs", "Pearson r", "Fisher-z CI", "bootstrap CI", "p", "permutation p",
                  "Spearman rho"], rows)
    if corr.get("independence_r") is not None:
        text += (f"\n\nr between flip rate f and (1 - f) x (1 - image-reliance rate) across the same "
                 f"pairs: {number(corr['independence_r'])} — the correlation that arithmetic alone "
                 f"gives if flipping and image reliance were independent.")
    return text + "\n"


def build_section(report: dict | None) -> str:
    if not report:
        return "No build report (outputs/default/build_report.json).\n"
    checks = report.get("checks", [])
    keys = [k for k in (checks[0] if checks else {}) if k not in ("family", "dataset")]
    text = table(["family", "dataset", *keys],
                 [[c["family"], c["dataset"], *(number(c.get(k)) for k in keys)] for c in checks])
    if report.get("prevalence"):
        text += "\n\nPrevalence of each finding (`build_report.json` `prevalence`):\n\n"
        findings = sorted({f for v in report["prevalence"].values() if isinstance(v, dict) for f in v})
        text += table(["dataset", *findings],
                      [[d, *(number(v.get(f), 4) for f in findings)] for d, v in report["prevalence"].items()
                       if isinstance(v, dict)])
    return text + f"\n\nBuilt in {number(report.get('build_seconds'), 0)} s, seed {report.get('seed')}.\n"


def provenance_line(runs: dict, report: dict | None) -> str:
    first = next(iter(runs.values()), None) or report or {}
    machine = first.get("machine") or {}
    return (f"Outputs made from commit `{first.get('git_commit')}` on {machine.get('platform')} "
            f"(Python {machine.get('python')}, {machine.get('cpu_count')} CPU threads"
            f"{', ' + machine['gpu'] if machine.get('gpu') else ''}).")


def seeds_section(seeds_dir: Path) -> str:
    """`make seeds` (outputs/seeds/distribution.json): the spread of the headline numbers."""
    dist = read_json(seeds_dir / "distribution.json")
    if not dist:
        return "Not run here (`make seeds` builds and evaluates the whole world for seeds 0, 1, 2).\n"

    def span(entry) -> str:
        if not entry or entry.get("mean") is None:
            return "–"
        return f"{number(entry['mean'])} ({number(entry['min'], 2)} to {number(entry['max'], 2)})"

    corr = [[k, *(span(v) for v in [v])] for k, v in dist.get("correlations", {}).items()]
    keys = ["flip_rate", "dangerous", "image_blind", "image_blind_truth", "ignored_rate", "paper_precision",
            "paper_recall"]
    pairs = [[pair, *(span(values.get(k)) for k in keys)] for pair, values in dist.get("pairs", {}).items()]
    return (f"Seeds {dist.get('seeds')} (commit `{dist.get('git_commit')}`); mean (min to max) over the seeds.\n\n"
            + table(["across pairs", "value"], corr) + "\n\n"
            + table(["pair", *keys], pairs) + "\n")


VERDICT_PAIR = "llava-base__padchest"


def verdict_section(runs_dir: Path, pair: str = VERDICT_PAIR) -> str:
    """The verdict `cxr-screen --max-dangerous 0` would print for one pair of `make all`, read from
    its outputs (lib.front.report.verdict)."""
    if not (runs_dir / pair / "summary.json").is_file():
        return f"No run {pair} in {runs_dir}.\n"
    summary, samples = report.load_run(runs_dir / pair)
    words = report.verdict(summary, samples, max_dangerous=0.0)["headline"]
    return f"`{pair}`, all {summary['n_samples']} samples, `--max-dangerous 0`:\n\n" + \
        "\n".join(f"> {w}\n>" for w in words).rstrip(">\n") + "\n"


def bench_section(bench: dict | None) -> str:
    """`make bench` (outputs/bench/bench.json): ms per sample of each way and its agreement, and the
    default protocol's per-sample part against the paper's protocol, the references beside it."""
    if not bench:
        return "Not run here (`make bench`).\n"
    rows, protocol = [], []
    for name, model in bench.get("models", {}).items():
        ms, agree = model.get("ms_per_sample", {}), model.get("agreement", {})
        rows.append([name, *(number(ms.get(w), 2) for w in ("naive", "forward_bs1", "engine")),
                     number(model.get("speedup_vs_naive"), 1), number(agree.get("naive")),
                     number(agree.get("forward_bs1")), number(model.get("yes_no_mass_median"))])
        protocol.append([name, number(ms.get("paper_protocol"), 2), number(ms.get("default_protocol"), 2),
                         number(model.get("default_vs_paper_protocol"), 2), number(ms.get("default_undeduplicated"), 2),
                         number(model.get("agreement_dedup")), number(model.get("reference_ms_per_image"), 2),
                         number(model.get("reference_pool"))])
    return (f"{bench.get('n_samples')} test samples, one CPU thread; ms per sample:\n\n"
            + table(["model", "generate() per prompt", "forward bs 1", "engine", "speedup",
                     "agreement generate / engine", "agreement forward / engine", "yes/no mass"], rows)
            + f"\n\nOn {next(iter(bench.get('models', {}).values()), {}).get('n_protocol_samples')} test samples, "
            "the paper's protocol (image prompts + a text-only pass per sample) against the default "
            "protocol's per-sample part (the same, with the text-only, blank and null-image passes scored "
            "once per distinct question), and the same conditions scored once per sample; the references "
            "are a per-run cost (ms per reference image, and how many the pair's run scored):\n\n"
            + table(["model", "paper protocol", "default protocol", "ratio", "undeduplicated",
                     "agreement dedup / undedup", "ms per reference image", "reference pool"], protocol) + "\n")


def gpu_section(results_dir: Path) -> str:
    """The committed GPU measurements (lib/bench/results/*.json, written by `make bench GPU=1`)."""
    parts = []
    for path in sorted(results_dir.glob("gpu_bench_*.json")):
        report = json.loads(path.read_text())
        rows = []
        for model in report.get("models", {}).values():
            ms, mem = model.get("ms_per_sample", {}), model.get("peak_memory_gib", {})
            rows.append([model.get("shape"), *(number(ms.get(w), 1) for w in
                                               ("naive", "forward_bs1", "batched", "engine", "engine_nf4", "floor")),
                         f"{number(mem.get('engine_bf16'), 1)} / {number(mem.get('engine_nf4'), 1)}"])
        versions = report.get("versions", {})
        parts.append(f"`{path.name}`: {report.get('device')}, {report.get('dtype')}, {report.get('created')}, "
                     f"torch {versions.get('torch')}, transformers {versions.get('transformers')}; "
                     f"ms per sample ({report.get('settings', {}).get('prompts')} image prompts + 1 text-only):\n\n"
                     + table(["shape", "generate() bs 1", "forward bs 1", "batched", "engine", "engine nf4",
                              "FLOP floor", "peak GiB bf16 / nf4"], rows))
    return "\n\n".join(parts) + "\n" if parts else "No committed GPU measurement.\n"


def write(outputs: Path, out: Path, gpu_results: Path = Path("lib/bench/results")) -> str:
    runs = stats.read_summaries(outputs / "runs")
    report = read_json(outputs / "default" / "build_report.json")
    corr = read_json(outputs / "analysis" / "correlation.json")
    parts = [
        "# Results of the offline default\n",
        f"Written by `make results` on {time.strftime('%Y-%m-%d %H:%M %Z')} from `{outputs}/`. "
        f"{provenance_line(runs, report)} Do not edit by hand: rerun `make all` and `make results`.\n",
        "Intervals: [low, high] at 95 %, a cluster bootstrap over images; the image-blind rate's "
        "a crossed bootstrap over images and references (`ci_method` in each summary.json); where "
        "a bootstrap degenerated to a point (every sample agrees), the tables show the Wilson "
        "interval over the samples the rate is over (`lib.protocol.breakdown.declared`; the "
        "coverage check reads the bootstrap's own); "
        "definitions in `lib/protocol/measures.py`, `lib/protocol/intervals.py` and `lib/protocol/references.py`.\n",
        "## The default build\n", build_section(report),
        "## The pairs\n",
        table(PAIR_COLUMNS, [pair_row(p, s) for p, s in runs.items()]) if runs else "No runs.",
        "\nimage-blind / prior-coincident: fractions of ALL samples; the image-blind rate is the mean "
        "of [Dangerous] x reference agreement (how often an image showing the opposite finding would "
        "leave the answer unchanged; `lib/protocol/references.py`), prior-coincident the rest of "
        "Dangerous. blank changes: share of samples whose answer differs with a grey image "
        "(the one grey image fixed; the interval resamples the samples' images). "
        "AUROC entropy: the probability "
        "that a Dangerous sample has higher entropy than a sample of another quadrant (0.5: an "
        "entropy screen is blind to them).\n",
        "## Against the ground truth (counterfactual twins)\n",
        "Positive class: the model ignores the image on the sample (its answer does not change on "
        "the twin with the finding toggled). precision / recall of each measure.\n",
        table(["pair", "n", "ignored rate", "paper's measure (not image-reliant)",
               "Dangerous vs consistent & ignored", "AUROC of reference agreement (image-blind twin truth)"],
              ground_truth_rows(runs)) if ground_truth_rows(runs) else "No run has twins.",
        "\n## The image-blind rate against the twin truth\n",
        "Twin truth: the share of samples that are Dangerous AND whose answer does not change on the "
        "twin (same anatomy, the finding toggled). The estimate never sees the twins. The per-sample "
        "AUROC of reference agreement for that truth is no per-sample verdict: references test the "
        "model on other images, never on the sample's own, so a sample's agreement says only what "
        "its answer and its finding say (the local-counterfactual issue addresses that).\n",
        image_blind_section(runs, outputs / "seeds"),
        "\n## Local tests against the twins\n",
        "Occlusion (the finding's box filled from the other side of the chest where that side is "
        "unmarked, else inpainted from its surroundings) and the same patient's other study (opposite "
        "label, the fewest other findings labelled differently, registered onto the sample's image; "
        "the control: same label) test each "
        "sample on its OWN image "
        "(`lib/protocol/local_tests.py`). Positive class: the answer does not change; truth: it does "
        "not change on the twin. The twins exist only here: on real data this offline check is the "
        "only validation the tests have.\n",
        local_tests_section(runs, outputs / "runs", outputs / "seeds"),
        "\n## A screen's verdict\n", verdict_section(outputs / "runs"),
        "\n## Across pairs\n", correlation_section(corr),
        "## Across seeds\n", seeds_section(outputs / "seeds"),
        "## Speed (CPU)\n", bench_section(read_json(outputs / "bench" / "bench.json")),
        "## Speed (GPU, committed measurements)\n", gpu_section(gpu_results),
    ]
    text = "\n".join(parts)
    out.write_text(text)
    return text


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lib.front.results", description=__doc__.split("\n")[0])
    parser.add_argument("--outputs", default="outputs")
    parser.add_argument("--out", default="docs/results.md")
    args = parser.parse_args(argv)
    write(Path(args.outputs), Path(args.out))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
