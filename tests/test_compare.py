"""`cxr-screen compare`: two tiny runs of the same samples (untrained tiny LLaVA and Gemma 3) on
one page, with the paired differences checked against hand-made tables."""
import re
import shutil

import pandas as pd
import pytest

from lib.front import cli, compare
from lib.protocol import breakdown


def table(quadrants, correct, images):
    return pd.DataFrame({"sample_id": [f"s{i}" for i in range(len(quadrants))], "image_id": images,
                         "quadrant": quadrants, "correct": correct})


def test_paired_difference_counts_the_discordant_samples():
    a = table(["Dangerous", "Dangerous", "Ideal", "Ideal"], [True, True, False, True], ["i1", "i1", "i2", "i3"])
    b = table(["Dangerous", "Ideal", "Ideal", "Ideal", "Ideal"], [True] * 5, ["i1", "i1", "i2", "i3", "i4"])
    result = breakdown.paired_difference(a, b, "Dangerous", resamples=500)
    assert (result["n_shared"], result["n_images"]) == (4, 3)   # s4 is in b only
    assert (result["rate_a"], result["rate_b"], result["difference"]) == (0.5, 0.25, -0.25)
    assert (result["only_a"], result["only_b"], result["mcnemar_p"]) == (1, 0, 1.0)
    low, high = result["ci95"]
    assert -1 <= low <= -0.25 <= high <= 0
    assert breakdown.paired_difference(a, b, "correct")["difference"] == 0.25
    assert "image-blind" not in breakdown.PAIRED_MEASURES   # a rate over references, no per-sample verdict
    assert breakdown.paired_difference(a, b.assign(sample_id=list("vwxyz"))) is None   # nothing shared


def test_a_paired_difference_where_every_sample_moves_alike_keeps_an_interval():
    n = 40
    images = [f"i{i // 2}" for i in range(n)]
    same = table(["Dangerous"] * n, [True] * n, images)
    u = breakdown.proportion_ci(0, n)[1]                                # 0.088: Wilson, 0 of 40
    result = breakdown.paired_difference(same, same, "Dangerous")      # one model screened twice
    assert result["difference"] == 0 and result["ci95"] == pytest.approx([-u, u])
    moved = breakdown.paired_difference(same, table(["Ideal"] * n, [True] * n, images), "Dangerous")
    assert moved["difference"] == -1 and moved["ci95"] == pytest.approx([-1, -1 + 2 * u])
    mixed = breakdown.paired_difference(same, table(["Ideal"] * 20 + ["Dangerous"] * 20, [True] * n, images))
    assert mixed["ci95"][0] < -0.5 < mixed["ci95"][1] and mixed["ci95"][1] - mixed["ci95"][0] < 0.5   # the bootstrap's


@pytest.fixture(scope="module")
def two_runs(tiny_world, tmp_path_factory):
    from lib.protocol import config, run

    root = tmp_path_factory.mktemp("compare")
    for family in ("llava", "gemma3"):
        run.evaluate(config.validate({
            "config": f"tiny-{family}", "model": str(tiny_world["models"][family]), "dataset": "padchest",
            "data_root": str(tiny_world["data"]["padchest"]), "split": "train", "limit": 16,
            "batch_size": 8, "bootstrap_resamples": 50, "output_dir": str(root / family)}))
    return root


def test_compare_page(two_runs, capsys):
    out = two_runs / "page"
    status = cli.main(["compare", str(two_runs / "llava"), str(two_runs / "gemma3"), "--out", str(out)])
    assert status == 0 and capsys.readouterr().out.strip() == f"compare: {out / 'compare.html'}"
    page = (out / "compare.html").read_text()
    text = re.sub(r"<[^>]+>", " ", re.sub(r"<style>.*?</style>", "", page, flags=re.S))
    for words in ("Screens compared", "tiny-llava", "tiny-gemma3", "Paired differences", "McNemar",
                  "too few to tell (a correlation needs at least 8", "95 % CI"):
        assert words in text, words
    assert page.count("<img ") == 1 and not re.search(r"\bnan\b", text, flags=re.I)
    # the numbers first, one table; what each screen ran in a second, its paths free to wrap
    first = re.search(r"<table>(.*?)</table>", page, flags=re.S).group(1)
    assert re.findall(r"<th>(.*?)</th>", first) == list(compare.RESULT_COLUMNS)
    assert "<table class='settings'>" in page and "table.settings td:nth-child(5)" in page
    rows = re.findall(r"<tr><td>llava</td><td>gemma3</td><td>(\w[\w-]*)</td><td>(\d+)</td>", page)
    assert rows == [("Dangerous", "16"), ("correct", "16")]


def test_a_screen_is_labelled_by_its_folder_and_its_pair_once(two_runs, tmp_path):
    screen = compare.read_screen(two_runs / "llava")
    pair = f"{screen['summary']['config']}__{screen['summary']['dataset']}"
    n = screen["summary"]["n_samples"]
    assert screen["label"] == f"llava: {pair} (n={n})"
    shutil.copytree(two_runs / "llava", tmp_path / pair, ignore=shutil.ignore_patterns("records"))
    assert compare.read_screen(tmp_path / pair)["label"] == f"{pair} (n={n})"


def test_compare_needs_two_screen_folders(two_runs, tmp_path, capsys):
    status = cli.screen_main(["compare", str(two_runs / "llava"), str(tmp_path), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert status == 2 and err.strip() == f"cxr-screen compare: {tmp_path}: no summary.json (give the output folder of a screen or run)"
    assert cli.screen_main(["compare", str(two_runs / "llava"), "--out", str(tmp_path / "o")]) == 2
    assert "at least two" in capsys.readouterr().err


def test_compare_writes_only_into_a_folder_of_its_own(two_runs, tmp_path, capsys):
    """Never over the user's files, never through a link: one line, exit 2, everything untouched."""
    screens = [str(two_runs / "llava"), str(two_runs / "gemma3")]
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "compare.html").write_text("my page\n")
    linked = tmp_path / "linked"
    linked.mkdir()
    (tmp_path / "victim.txt").write_text("the user's\n")
    (linked / "compare.html").symlink_to(tmp_path / "victim.txt")
    for out, words in ((mine, "not an output folder"), (linked, "symbolic link"), (tmp_path / "victim.txt", "not a folder")):
        status = cli.screen_main(["compare", *screens, "--out", str(out)])
        err = capsys.readouterr().err.strip().splitlines()
        assert status == 2 and len(err) == 1 and err[0].startswith("cxr-screen compare: --out: ") and words in err[0], err
    assert (mine / "compare.html").read_text() == "my page\n" and (tmp_path / "victim.txt").read_text() == "the user's\n"
    again = tmp_path / "page"
    assert cli.screen_main(["compare", *screens, "--out", str(again)]) == 0
    assert cli.screen_main(["compare", *screens, "--out", str(again)]) == 0   # its own folder: rewritten


@pytest.mark.parametrize("text, words", [("[1, 2]", "not a summary of a screen or run (no 'config')"),
                                         ("{}", "not a summary of a screen or run (no 'config')"),
                                         ("{bad", "not a readable JSON file")])
def test_a_summary_that_is_not_one_is_named_in_one_line(two_runs, tmp_path, capsys, text, words):
    broken = tmp_path / "broken"
    shutil.copytree(two_runs / "llava", broken, ignore=shutil.ignore_patterns("records"))
    (broken / "summary.json").write_text(text)
    status = cli.screen_main(["compare", str(broken), str(two_runs / "gemma3"), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and len(err) == 1, err
    assert err[0].startswith(f"cxr-screen compare: {broken / 'summary.json'}: ") and words in err[0], err
