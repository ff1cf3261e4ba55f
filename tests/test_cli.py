"""The command line before any run starts: fast help, flags beside -p, partial question files.

`cxr-screen --help` and a usage error must not load pandas, torch or papermill (they answer in a
fraction of a second); a question file that covers only some findings either screens those (one
line says so) or, when --findings asks for one it lacks, stops with exit 2 and one line.
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lib.front import cli, notebook_run

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("pandas", "torch", "papermill", "nbformat", "nbconvert", "transformers", "lib.protocol.config")


def main(args, capsys):
    try:
        status = cli.main(args)
    except SystemExit as exit:   # argparse: --help, usage errors
        status = exit.code
    out, err = capsys.readouterr()
    return status, out, err


@pytest.mark.parametrize("argv", [["--help"], ["screen", "--help"], ["screen", "--limit", "x"]])
def test_help_and_usage_errors_load_nothing_heavy(argv):
    code = ("import sys\nfrom lib.front import cli\ntry:\n    cli.main(sys.argv[1:])\n"
            "except SystemExit as exit:\n    status = exit.code\n"
            f"print(status, [m for m in {HEAVY!r} if m in sys.modules], file=sys.stderr)")
    result = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True,
                            cwd=ROOT, timeout=60)
    status, loaded = result.stderr.strip().splitlines()[-1].split(" ", 1)
    assert loaded == "[]", f"{argv} loaded {loaded}"
    assert status == ("2" if "x" in argv else "0")


def test_a_bad_value_is_refused_before_torch_or_papermill_load(tmp_path):
    """--dataset chexpert: config's check answers (pandas loads), nothing of a run does."""
    code = ("import sys\nfrom lib.front import cli\nstatus = cli.main(sys.argv[1:])\n"
            "print(status, [m for m in ('torch', 'papermill', 'transformers') if m in sys.modules], file=sys.stderr)")
    result = subprocess.run([sys.executable, "-c", code, "screen", "--model", "m", "--dataset", "chexpert",
                             "--data-root", str(tmp_path), "--out", str(tmp_path / "o")],
                            capture_output=True, text=True, cwd=ROOT, timeout=60)
    lines = result.stderr.strip().splitlines()
    assert lines == ["cxr-screen: --dataset: got 'chexpert'; allowed: one of mimic-cxr, padchest, vindr-cxr", "2 []"]


def test_screen_help_lists_the_researcher_flags(capsys):
    status, out, _ = main(["screen", "--help"], capsys)
    assert status == 0
    for name in ("--findings", "--questions", "--answer-instruction", "--seed", "--batch-size",
                 "--device", "--quantization", "--adapter", "--limit", "--log-samples", "-p KEY VALUE"):
        assert name in out, name


def write_questions(path, findings):
    rows = ["finding,prompt_id,prompt"]
    for finding in findings:
        rows += [f"{finding},0,Is there {finding}?", f"{finding},1,Does the image show {finding}?"]
    path.write_text("\n".join(rows) + "\n")
    return path


@pytest.fixture()
def flags(tiny_world, tmp_path):
    return ["--model", str(tiny_world["models"]["llava"]), "--dataset", "padchest",
            "--data-root", str(tiny_world["data"]["padchest"]), "--split", "train",
            "--out", str(tmp_path / "out"), "--no-progress"]


def test_question_file_without_a_finding_asked_for_exits_2_in_one_line(flags, tmp_path, capsys):
    questions = write_questions(tmp_path / "q.csv", ["cardiomegaly", "nodule"])
    status, _, err = main(["screen", *flags, "--questions", str(questions),
                           "--findings", "cardiomegaly,pneumothorax"], capsys)
    assert status == 2, err
    assert err.strip().splitlines() == [
        f"cxr-screen: --questions: {questions} has no question for pneumothorax (it covers "
        f"cardiomegaly, nodule); add them to the file, or screen only the findings it covers "
        f"(findings, --findings)"]
    assert not (tmp_path / "out" / "evaluate.ipynb").exists()


def test_a_finding_without_a_builtin_question_set_exits_2_in_one_line(flags, tmp_path, capsys):
    """consolidation has labels but no question in the default set: was a KeyError's traceback."""
    status, _, err = main(["screen", *flags, "--findings", "consolidation"], capsys)
    assert status == 2, err
    assert err.strip().splitlines() == [
        "cxr-screen: --findings: builtin:default has no question for consolidation (it covers "
        "cardiomegaly, nodule, pleural effusion, pneumothorax); use questions: builtin:chexpert (every "
        "CheXpert finding) or a question file, or screen only the findings it covers (findings, --findings)"]
    assert not (tmp_path / "out").exists()


def test_question_file_covering_some_findings_restricts_the_screen(tmp_path):
    questions = str(write_questions(tmp_path / "q.csv", ["nodule", "Cardiomegaly"]))
    values = {"questions": questions}
    line = cli.restrict_findings(values)
    assert values["findings"] == ["cardiomegaly", "nodule"]   # in the default order
    assert line == (f"--questions {questions} asks about cardiomegaly, nodule only: screening those "
                    f"2 of the 4 findings (--findings to choose)")
    chosen = {"questions": questions, "findings": ["nodule"]}
    assert cli.restrict_findings(chosen) is None and chosen["findings"] == ["nodule"]
    every = {"questions": str(write_questions(tmp_path / "all.csv", cli_default_findings()))}
    assert cli.restrict_findings(every) is None and "findings" not in every


def cli_default_findings():
    from lib.protocol import config

    return config.DEFAULTS["findings"]


@pytest.mark.parametrize("extra, named", [
    (["-p", "limt", "3"], "cxr-screen: -p: unknown key 'limt'"),
    (["--limit", "3", "-p", "limit", "4"], "cxr-screen: -p limit: given twice; give the flag --limit only"),
    (["-p", "bootstrap_resamples", "0"], "cxr-screen: -p: key 'bootstrap_resamples': got 0"),
    (["--batch-size", "0"], "cxr-screen: --batch-size: got 0"),
    (["--findings", "cardiomegaly,heart"], "cxr-screen: --findings: got"),
])
def test_p_beside_flags_is_checked_and_named(flags, capsys, extra, named):
    status, _, err = main(["screen", *flags, *extra], capsys)
    assert status == 2, err
    assert err.startswith(named) and len(err.strip().splitlines()) == 1, err


def test_the_samples_bar_reaches_the_terminal_through_a_file(tmp_path):
    """session.ProgressScorer draws into the file notebook_run.ProgressTail copies to the terminal."""
    import io

    from lib.front import session

    class Store:
        def write(self, samples, predictions, skipped):
            return "chunk"

    def inner(params, store, batches):   # a scorer: writes one chunk per batch
        for batch in batches:
            store.write(batch, [], [])
        return {"mode": "fake"}

    terminal = io.StringIO()
    tail = notebook_run.ProgressTail(terminal)
    scorer = session.ProgressScorer(inner, tail.path)
    assert scorer({"config": "c", "dataset": "d"}, Store(), [["a", "b"], ["c"]]) == {"mode": "fake"}
    tail.close()
    frames = terminal.getvalue()
    assert "c__d: 100%" in frames and "3/3" in frames and "item/s" in frames and frames.endswith("\n")
    assert not tail.path.exists()


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="a machine with a GPU runs cuda")
def test_a_cuda_device_this_machine_lacks_is_bad_input(flags, tmp_path, capsys):
    """Was exit 1 once the weights moved; now named before the model loads."""
    status, _, err = main(["screen", *flags, "--device", "cuda:1"], capsys)
    assert status == 2, err
    assert err.strip().splitlines() == [
        "cxr-screen: --device: got 'cuda:1', but this machine has 0 CUDA device(s) visible "
        f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}); use cpu or auto"]
    assert not (tmp_path / "out").exists()
