"""The screen command (`cxr-screen` / `python -m lib screen`) and `python -m lib evaluate`.

On the tiny synthetic world (conftest.py): a screen by flags writes the run's usual outputs, the
executed notebook and its HTML, and report.html, and exits 0; with --max-dangerous 0 it exits 3
(the tiny run has image-blind Dangerous samples); bad input exits 2 with one line naming the flag
or the file. `python -m lib evaluate` runs a params file into a directory it creates.
"""
import json
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from lib.front import cli, report

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = Path(sys.executable).parent / "cxr-screen"   # the console script of pyproject.toml


def screen_command():
    return [str(SCRIPT)] if SCRIPT.is_file() else [sys.executable, "-m", "lib", "screen"]


def run(command, cwd):
    return subprocess.run(command, capture_output=True, text=True, cwd=cwd, timeout=600)


def main(args, capsys):
    """`python -m lib ...` in this process: (exit status, stdout, stderr)."""
    try:
        status = cli.main(args)
    except SystemExit as exit:   # argparse's usage errors
        status = exit.code
    out, err = capsys.readouterr()
    return status, out, err


@pytest.fixture(scope="module")
def flags(tiny_world):
    return ["--model", str(tiny_world["models"]["gemma3"]), "--dataset", "padchest",
            "--data-root", str(tiny_world["data"]["padchest"]), "--split", "train", "--limit", "32",
            "--reference-root", str(tiny_world["references"]["padchest"]), "--no-progress"]


@pytest.fixture(scope="module")
def screened(flags, tmp_path_factory):
    out = tmp_path_factory.mktemp("screen") / "run"
    result = run(screen_command() + flags + ["--out", str(out)], cwd=tmp_path_factory.getbasetemp())
    return {"out": out, "result": result}


def test_screen_writes_the_run_and_the_report(screened):
    result, out = screened["result"], screened["out"]
    assert result.returncode == 0, result.stderr[-3000:]
    for name in ("params.yaml", "summary.json", "samples.parquet", "predictions.parquet",
                 "evaluate.ipynb", "evaluate.html", "report.html"):
        assert (out / name).is_file(), name
    params = yaml.safe_load((out / "params.yaml").read_text())
    assert params["dataset"] == "padchest" and params["limit"] == 32 and params["output_dir"] == str(out)
    assert params["config"] == "gemma3"  # from the model's folder name
    assert "no limit set" in result.stdout and str(out / "report.html") in result.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_samples"] == 32 and summary["config"] == "gemma3"


def test_report_holds_the_measures_and_no_sample_data(screened):
    out = screened["out"]
    page = (out / "report.html").read_text()
    for words in ("The four quadrants", "Ideal", "Fragile", "Dangerous", "Worst", "image-blind",
                  "prior-coincident", "text-only answer alone", "AUROC", "95 % CI", "Gate:"):
        assert words in page, words
    summary = json.loads((out / "summary.json").read_text())
    for warning in summary["warnings"]:   # the untrained tiny model hardly says yes or no
        assert warning.split(":")[0] in page
    # the one image is a histogram figure; no sample image, no image or sample id, no image path
    images = re.findall(r"<img [^>]*src='([^']{0,30})", page)
    assert images == ["data:image/png;base64,iVBORw0K"]  # one PNG
    samples = pd.read_parquet(out / "samples.parquet")
    for value in list(samples.image_id.astype(str)) + list(samples.sample_id.astype(str)):
        assert value not in page, value
    assert ".png'" not in page and "images/" not in page
    # the executed notebook's HTML hides the code cells
    exported = (out / "evaluate.html").read_text()
    assert "lib.front.session.params(globals(), params_file)" not in exported
    assert "Beside the paper" in exported


def test_max_dangerous_gates_on_the_image_blind_rate(screened, flags, capsys):
    out = screened["out"]
    summary = json.loads((out / "summary.json").read_text())
    blind = summary["dangerous_breakdown"]["image-blind"]
    assert 0 < blind < 1, "the tiny run must have image-blind Dangerous samples for this test"
    status, stdout, stderr = main(["screen"] + flags + ["--out", str(out), "--max-dangerous", "0"], capsys)
    assert status == 3, stderr[-3000:]
    assert f"image-blind rate {blind:.3f} > --max-dangerous 0: FAIL" in stdout
    assert json.loads((out / "summary.json").read_text())["records"]["samples_scored"] == 0  # reused
    samples = pd.read_parquet(out / "samples.parquet")
    dangerous = (samples.quadrant == "Dangerous").to_numpy()
    assert (dangerous * samples.reference_agreement.fillna(0)).sum() / samples.reference_agreement.notna().sum() \
        == pytest.approx(blind)
    # exit 3 / 0 on either side of the rate, the scoring reused
    status, stdout, _ = main(["screen"] + flags + ["--out", str(out), "--max-dangerous", f"{blind + 1e-6:.9f}"], capsys)
    assert status == 0 and "PASS" in stdout
    # the gate itself: at the limit passes, below it fails
    assert report.verdict(summary, samples, blind)["passed"] is True
    assert report.verdict(summary, samples, blind - 1e-9)["passed"] is False
    assert report.verdict(summary, samples, None)["passed"] is None


def test_unknown_dataset_exits_2_naming_it(flags, tmp_path):
    """The console script itself: one line on stderr, exit status 2, nothing written."""
    args = list(flags)
    args[args.index("--dataset") + 1] = "chexpert-x"
    result = run(screen_command() + args + ["--out", str(tmp_path / "out")], cwd=tmp_path)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert result.stderr.strip() == ("cxr-screen: --dataset: got 'chexpert-x'; allowed: one of "
                                     "mimic-cxr, padchest, vindr-cxr")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("change, named", [
    ({"--model": "/nonexistent/model"}, "--model: "),
    ({"--data-root": "/nonexistent/root"}, "--data-root: directory not found: /nonexistent/root"),
    ({"--quantization": "8bit"}, "--quantization: got '8bit'"),
    ({"--device": "tpu"}, "--device: got 'tpu'"),
    ({"--split": "validate"}, "--split: got 'validate'; allowed for padchest: train, test"),
    ({"--limit": "many"}, "argument --limit: invalid int value: 'many'"),
    ({"--limit": "0"}, "--limit: got 0"),
    ({"--max-dangerous": "1.5"}, "--max-dangerous: got 1.5"),
    ({"--model": None}, "missing --model"),
    ({"--out": None}, "missing --out"),
])
def test_bad_input_exits_2_naming_the_flag(flags, tmp_path, capsys, change, named):
    args = list(flags) + ["--out", str(tmp_path / "out")]
    for key, value in change.items():
        at = args.index(key) if key in args else None
        if value is None:
            del args[at:at + 2]
        elif at is None:
            args += [key, value]
        else:
            args[at + 1] = value
    status, _, stderr = main(["screen"] + args, capsys)
    assert status == 2, stderr
    assert named in stderr
    assert "Traceback" not in stderr and len(stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out" / "report.html").exists()


def test_bad_params_file_exits_2_naming_the_file(tiny_world, tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"config": "x", "model": str(tiny_world["models"]["llava"]),
                                   "dataset": "padchest", "data_root": str(tiny_world["data"]["padchest"]),
                                   "batchsize": 4}))
    status, _, stderr = main(["screen", str(bad), "--out", str(tmp_path / "out")], capsys)
    assert status == 2 and str(bad) in stderr and "unknown key 'batchsize'" in stderr
    status, _, stderr = main(["screen", str(tmp_path / "missing.yaml")], capsys)
    assert status == 2 and "params file not found" in stderr
    status, _, stderr = main(["screen", str(bad), "--model", "m"], capsys)
    assert status == 2 and "--model: give either a params file or the flags" in stderr
    no_reference = tmp_path / "no_reference.yaml"
    no_reference.write_text(yaml.safe_dump({"config": "x", "model": str(tiny_world["models"]["llava"]),
                                       "dataset": "padchest", "data_root": str(tiny_world["data"]["padchest"]),
                                       "split": "train", "reliance_checks": ["blank"]}))
    status, _, stderr = main(["screen", str(no_reference), "--out", str(tmp_path / "out"), "--max-dangerous", "0.1"], capsys)
    assert status == 2 and "--max-dangerous needs the reference check" in stderr and str(no_reference) in stderr
    assert not (tmp_path / "out" / "evaluate.ipynb").exists()
    status, _, stderr = main(["evaluate", str(bad)], capsys)
    assert status == 2 and stderr.startswith("python -m lib evaluate: ") and "batchsize" in stderr


def test_evaluate_command_creates_the_run_directory(tiny_world, tmp_path, capsys):
    params_file = tmp_path / "tiny__mimic-cxr.yaml"
    params_file.write_text(yaml.safe_dump({
        "config": "tiny-llava", "model": str(tiny_world["models"]["llava"]), "dataset": "mimic-cxr",
        "data_root": str(tiny_world["data"]["mimic-cxr"]), "split": "train", "limit": 16}))
    out = tmp_path / "new" / "nested" / "run"
    result = run([sys.executable, "-m", "lib", "evaluate", str(params_file), "--out", str(out),
                  "-p", "limit", "8", "-p", "bootstrap_resamples", "50", "--no-progress"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_samples"] == 8 and summary["params"]["output_dir"] == str(out)
    assert summary["params"]["bootstrap_resamples"] == 50
    assert (out / "evaluate.ipynb").is_file() and (out / "evaluate.html").is_file()
    # the screen on that params file reuses the run (same records) and writes the report
    status, _, stderr = main(["screen", str(params_file), "--out", str(out), "-p", "limit", "8",
                              "-p", "bootstrap_resamples", "50", "--no-progress"], capsys)
    assert status == 0, stderr[-3000:]
    assert json.loads((out / "summary.json").read_text())["records"]["samples_scored"] == 0
    assert (out / "report.html").is_file()
    status, _, stderr = main(["evaluate", str(params_file), "-p", "limt", "3"], capsys)
    assert status == 2 and "-p: unknown key 'limt'" in stderr
