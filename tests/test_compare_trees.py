"""lib.front.compare_trees (`make compare-outputs`): two output trees, run by run, file by file."""
import json

import pandas as pd
import pytest

from lib.front import compare_trees

SUMMARY = {"flip_rate": 0.25, "ci95": {"flip_rate": [0.1, 0.4]}, "quadrant_counts": {"Ideal": 3},
           "git_commit": "abc", "params": {"output_dir": "/a/runs/x"}, "engine": {"samples_per_second": 50.0}}


def write_run(folder, p_yes=(0.9, 0.2), summary=SUMMARY):
    """A tiny run folder: two predictions of one sample, its samples row, its summary."""
    folder.mkdir(parents=True)
    pd.DataFrame({"sample_id": ["s1", "s1"], "prompt_id": [0, 1], "condition": ["image", "image"],
                  "p_yes": list(p_yes), "pred": ["yes", "no"]}).to_parquet(folder / "predictions.parquet")
    pd.DataFrame({"sample_id": ["s1"], "quadrant": ["Fragile"], "reliance": [float("nan")]}).to_parquet(
        folder / "samples.parquet")
    (folder / "summary.json").write_text(json.dumps(summary))


def test_identical_trees_exit_0(tmp_path, capsys):
    for tree in ("a", "b"):
        write_run(tmp_path / tree / "runs" / "x")
    assert compare_trees.main([str(tmp_path / "a"), str(tmp_path / "b")]) == 0
    assert capsys.readouterr().out == "the same: 1 run(s) (tolerance 0)\n"


def test_provenance_is_not_a_difference(tmp_path):
    write_run(tmp_path / "a" / "x")
    write_run(tmp_path / "b" / "x", summary={**SUMMARY, "git_commit": "def", "params": {"output_dir": "/b"},
                                             "engine": {"samples_per_second": 7.0}})
    assert compare_trees.compare_trees(tmp_path / "a", tmp_path / "b") == {}


def test_one_p_yes_changed_exits_1_naming_the_file_and_key(tmp_path, capsys):
    write_run(tmp_path / "a" / "runs" / "x")
    write_run(tmp_path / "b" / "runs" / "x", p_yes=(0.9, 0.25))
    assert compare_trees.main([str(tmp_path / "a"), str(tmp_path / "b")]) == 1
    out = capsys.readouterr().out
    assert out == ("runs/x:\n  predictions.parquet: p_yes differs in 1 of 2 rows, first sample_id=s1, "
                   "prompt_id=1, condition=image: 0.2 != 0.25\n1 of 1 run(s) differ (tolerance 0)\n")
    # within the tolerance the two are the same
    assert compare_trees.main([str(tmp_path / "a"), str(tmp_path / "b"), "--tol", "0.05"]) == 0


def test_summary_numbers_missing_runs_and_rows_are_named(tmp_path):
    write_run(tmp_path / "a" / "x")
    write_run(tmp_path / "a" / "only_a")
    write_run(tmp_path / "b" / "x", summary={**SUMMARY, "ci95": {"flip_rate": [0.1, 0.5]}})
    found = compare_trees.compare_trees(tmp_path / "a", tmp_path / "b")
    assert found["x"] == ["summary.json: ci95.flip_rate[1]: 0.4 != 0.5"]
    assert found["only_a"][0].startswith("only in A")
    more = pd.read_parquet(tmp_path / "b" / "x" / "predictions.parquet")
    more.loc[2] = ["s2", 0, "image", 0.5, "yes"]
    more.to_parquet(tmp_path / "b" / "x" / "predictions.parquet")
    assert ("predictions.parquet: 1 row(s) only in B, first sample_id=s2, prompt_id=0, condition=image"
            in compare_trees.compare_trees(tmp_path / "a", tmp_path / "b")["x"])


@pytest.mark.parametrize("a, b, tol, expected", [
    (0.1, 0.1, 0, True), (0.1, 0.1000001, 1e-6, True), (0.1, 0.2, 0.05, False),
    (float("nan"), None, 0, True), (None, 0.0, 0, False), ("yes", "yes", 0, True), ("yes", "no", 0, False),
])
def test_same(a, b, tol, expected):
    assert compare_trees.same(a, b, tol) is expected


def test_rows_sharing_a_key_are_matched_in_order(tmp_path):
    write_run(tmp_path / "a" / "x")
    write_run(tmp_path / "b" / "x")
    for tree, second in (("a", 0.3), ("b", 0.35)):
        path = tmp_path / tree / "x" / "predictions.parquet"
        table = pd.read_parquet(path)
        table.loc[2] = ["s1", 1, "image", second, "no"]   # a second row of key (s1, 1, image)
        table.to_parquet(path)
    assert compare_trees.compare_trees(tmp_path / "a", tmp_path / "b")["x"] == [
        "predictions.parquet: p_yes differs in 1 of 3 rows, first sample_id=s1, prompt_id=1, "
        "condition=image: 0.3 != 0.35"]
