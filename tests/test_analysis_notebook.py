"""The analysis notebook gathers runs into pairs.csv, correlation.json and figures; its explorer redraws."""
import json
from pathlib import Path

import nbformat
import pandas as pd
import papermill as pm
import pytest

from lib.front import explorer
from lib.protocol import breakdown, config, run, stats

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def runs(tiny_world, tmp_path_factory):
    runs = tmp_path_factory.mktemp("analysis") / "runs"
    for family in ("llava", "gemma3"):
        for dataset in ("mimic-cxr", "padchest"):
            params = config.validate({
                "config": f"tiny-{family}", "model": str(tiny_world["models"][family]), "dataset": dataset,
                "data_root": str(tiny_world["data"][dataset]), "split": "train", "limit": 8,
                "output_dir": str(runs / f"tiny-{family}__{dataset}")})
            run.evaluate(params)
    return runs


def test_analysis_gathers_every_run(runs, tmp_path):
    out = tmp_path / "analysis"
    pm.execute_notebook(str(ROOT / "notebooks" / "analysis.ipynb"), str(tmp_path / "analysis.ipynb"),
                        parameters={"runs_dir": str(runs), "analysis_dir": str(out),
                                    "bootstrap_resamples": 200, "permutation_resamples": 999},
                        cwd=str(ROOT), progress_bar=False)
    pairs = pd.read_csv(out / "pairs.csv")
    assert len(pairs) == 4 and set(pairs.dataset) == {"mimic-cxr", "padchest"}
    corr = json.loads((out / "correlation.json").read_text())
    for key in ("pearson_r", "p_value", "n", "ci95_low", "ci95_high", "spearman_rho"):
        assert key in corr
    assert corr["n"] == 4
    # added beside the paper's correlation (issue 12)
    for key in ("bootstrap_ci95", "bootstrap_method", "permutation_p", "independence_r", "independence",
                "image_blind"):
        assert key in corr, key
    assert corr["image_blind"]["pairs"] == corr["pairs"] or corr["image_blind"]["n"] <= corr["n"]
    for name in ("flip_vs_dangerous.png", "quadrant_fractions.png", "accuracy_by_quadrant.png",
                 "dangerous_forest.png", "screening_auroc.png"):
        assert (out / name).stat().st_size > 1000, name
    # one figure per measure, the pairs as rows (not one grid per pair)
    assert sorted(p.name for p in out.glob("*_by_pair.png")) == ["entropy_by_pair.png", "reliance_by_pair.png"]
    executed = nbformat.read(tmp_path / "analysis.ipynb", as_version=4)
    outputs = [o for c in executed.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("name") == "stderr"], "a warning printed into the page"
    printed = "".join(o.get("text", "") for o in outputs if o.get("name") == "stdout")
    assert "too few to tell: 4 pairs (a correlation needs at least 8)" in printed
    shown = [o["data"]["text/html"] for o in outputs if "text/html" in o.get("data", {})
             and "screening AUROC" in o["data"]["text/html"]][0]
    first_row = shown.split("<tbody>")[1].split("</tr>")[0]
    assert first_row.count("<td>") == 6 and "95 % CI" in shown and "NaN" not in shown   # samples + 5 rates
    text = "\n".join(c.source for c in executed.cells if c.cell_type == "markdown")
    assert "independence_r" in text and "(1 - f)(1 - rho)" in text
    widget = [o for c in executed.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]
    assert widget, "the explorer did not display"


def test_explorer_redraws_for_another_pair_and_quadrant(runs):
    samples_by_pair = stats.gather_samples(runs)
    summaries = stats.read_summaries(runs)
    assert set(summaries) == set(samples_by_pair)
    box = explorer.Explorer(samples_by_pair, summaries)
    pairs = list(box.pair.options)
    assert pairs == sorted(samples_by_pair) and box.pair.value == pairs[0]
    first = box.figure.value
    assert first[:8] == b"\x89PNG\r\n\x1a\n"
    assert pairs[0] in box.numbers.value and "95 % CI" in box.numbers.value
    box.pair.value = pairs[1]
    assert box.figure.value != first, "the figure stayed the first pair's"
    assert pairs[1] in box.numbers.value and pairs[0] not in box.numbers.value
    second = box.figure.value
    box.quadrant.value = "Dangerous"
    assert box.figure.value != second
    assert f"{pairs[1]}: Dangerous" in box.numbers.value and "image-blind" in box.numbers.value
    summary = summaries[pairs[1]]
    rows = dict(explorer.pair_numbers(summary, samples_by_pair[pairs[1]], "Dangerous"))
    value = summary["quadrant_fractions"]["Dangerous"]
    low, high = breakdown.steady(value, summary["ci95"]["quadrant_fractions"]["Dangerous"], summary["n_samples"])
    assert rows["fraction"] == f"{value:.3f} (95 % CI {low:.3f} to {high:.3f})"
    with pytest.raises(ValueError, match="no pair to explore"):
        explorer.Explorer({}, {})


def test_explorer_chooses_a_finding_and_clicks_through_to_a_sample(runs):
    samples_by_pair = stats.gather_samples(runs)
    predictions = stats.gather_samples(runs, "predictions.parquet")
    box = explorer.Explorer(samples_by_pair, stats.read_summaries(runs), predictions)
    pair = box.pair.value
    samples = samples_by_pair[pair]
    finding = sorted(samples.finding.unique())[0]
    assert box.finding.options == ("all findings", *sorted(samples.finding.unique()))
    assert len(box.samples.options) == len(samples)
    before = box.figure.value
    box.finding.value = finding
    assert box.figure.value != before and f"{finding} (Wilson intervals)" in box.numbers.value
    chosen = samples[samples.finding == finding].sort_values("sample_id")
    assert [v for _, v in box.samples.options] == list(chosen.sample_id)
    box.samples.value = chosen.sample_id.iloc[0]
    detail = box.detail.value
    assert chosen.sample_id.iloc[0] in detail and "text_only" in detail and "image" in detail
    assert box.image.layout.display == "block" and box.image.value[:8] == b"\x89PNG\r\n\x1a\n"  # synthetic
    table = explorer.sample_detail(predictions[pair], chosen.sample_id.iloc[0])
    rows = predictions[pair][predictions[pair].sample_id == chosen.sample_id.iloc[0]]
    original = rows[(rows.prompt_id == 0) & (rows.condition == "image")].p_yes.iloc[0]
    assert table.loc[0, "image"].iloc[0] == original
    assert len(table) == rows.prompt_id.nunique()
    # a real dataset's image is never shown
    assert explorer.synthetic_image({"params": {"data_root": str(runs)}}, "x") is None
    box.pair.value = box.pair.options[1]
    assert box.finding.value == "all findings" and box.samples.value is None


def test_explorer_shows_the_local_tests_rates_and_one_samples_verdicts():
    summary = {"local_tests": {"occlude": {"n_tested": 53, "n_dangerous_tested": 4, "change_rate": 0.9,
                                           "image_blind_share": 0.25, "not_tested": {"no_box": 3}},
                               "occlude_control": {"n_tested": 47, "change_rate": 0.0, "not_tested": {}}},
               "ci95": {"local_tests": {"occlude": {"change_rate": [0.8, 0.95], "image_blind_share": [0.0, 0.75]}}}}
    rows = dict(explorer.local_test_numbers(summary))
    assert rows == {"occlude: answer changed": "0.900 (95 % CI 0.800 to 0.950) (n 53)",
                    "occlude: Dangerous, unchanged": "0.250 (95 % CI 0.000 to 0.750) (of 4)",
                    "occlude_control: answer changed": "0.000 (95 % CI 0.000 to 0.076) (n 47)"}   # Wilson: no bootstrap
    assert explorer.local_test_numbers(summary, dangerous_only=True) == [
        ("occlude: Dangerous, unchanged", "0.250 (95 % CI 0.000 to 0.750) (of 4)")]
    assert explorer.local_test_numbers({}) == []
    row = pd.Series({"occlusion_changes": True, "occlusion_control_changes": False, "followup_changes": pd.NA})
    assert explorer.local_verdicts(row) == "occlude: changed; occlude_control: unchanged; followup: not tested"
