"""Hostile inputs (issue 19): nothing of the user's is ever overwritten, no small file exhausts
the machine, the gate fails closed.

Each case ends in a one-line message (exit 2 from the command line, a ParamsError in the
notebook), a counted skip, or a run that completes; the user's files are compared by sha256
before and after. The cases that could exhaust memory (a 342-byte YAML alias bomb, a 180 KB
PNG that declares 9600 x 9600 16-bit pixels) run as `python -m lib evaluate ... --limit 8` in a
subprocess whose peak RSS (its whole process tree, `ru_maxrss` of RUSAGE_CHILDREN) must stay
under 2 GB and its wall time under 2 minutes. A full disk is a file-size limit (RLIMIT_FSIZE) set
in the notebook's kernel only (by a sitecustomize that the kernel imports), so that the run's
final write fails there and nowhere else.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import papermill as pm
import pytest
import yaml
from PIL import Image

from lib.front import cli, notebook_run, report
from lib.protocol import config, data, identity, records, run

ROOT = Path(__file__).resolve().parents[1]
GB = 1 << 30
LIMIT = 8
FINDINGS = ["cardiomegaly", "pleural effusion"]  # 8 samples = 4 images, the first two hostile
# 342 bytes: nine levels of nine aliases, 9**9 (387 million) strings once expanded
BOMB = "a: &a [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n" + "".join(
    f"{b}: &{b} [{','.join([f'*{a}'] * 9)}]\n" for a, b in zip("abcdefgh", "bcdefghi"))
# `python -m lib ...` in a child; prints "<exit status> <wall s> <peak RSS of the tree, KiB>"
MEASURED = ("import resource, subprocess, sys, time; t = time.monotonic(); "
            "rc = subprocess.call(sys.argv[1:]); "
            "print(rc, time.monotonic() - t, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
# Imported by every Python started with its folder on PYTHONPATH: limits file sizes in the
# notebook's kernel when HOSTILE_FSIZE is set (SIGXFSZ ignored: a write past it fails with EFBIG).
SITECUSTOMIZE = textwrap.dedent("""
    import os, resource, signal, sys
    if os.environ.get("HOSTILE_FSIZE") and "ipykernel" in " ".join(sys.orig_argv):
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        limit = int(os.environ["HOSTILE_FSIZE"])
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
""")


def checksums(folder: Path) -> dict:
    """sha256 of every file under ``folder`` (links as their target path)."""
    sums = {}
    for path in sorted(folder.rglob("*")):
        if "__pycache__" in path.parts:
            continue
        if path.is_symlink():
            sums[str(path)] = "-> " + os.readlink(path)
        elif path.is_file():
            sums[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return sums


def env(**extra) -> dict:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "MPLBACKEND": "Agg",
            "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1", **extra}


def measured(args: list[str], **extra_env) -> tuple[int, float, float, str]:
    """`python -m lib <args>` in a child: (exit status, wall s, peak RSS in bytes, stderr)."""
    proc = subprocess.run([sys.executable, "-c", MEASURED, sys.executable, "-m", "lib", *args],
                          cwd=ROOT, env=env(**extra_env), capture_output=True, text=True, timeout=300)
    status, wall, rss = proc.stdout.strip().splitlines()[-1].split()
    return int(status), float(wall), int(rss) * 1024, proc.stderr


def main(argv, capsys) -> tuple[int, str]:
    """`python -m lib <argv>` in this process: (exit status, the one line of stderr)."""
    status = cli.main(argv)
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1, err
    return status, err[0]


def one_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip() and "WARNING" not in line
             and "warn" not in line.lower() and "Image size" not in line]
    assert len(lines) == 1, lines
    return lines[0]


@pytest.fixture
def pair(tiny_world, tmp_path) -> dict:
    """A good params file (tiny LLaVA on the synthetic MIMIC-CXR train split) and its values."""
    values = {"config": "tiny-llava", "model": str(tiny_world["models"]["llava"]),
              "dataset": "mimic-cxr", "data_root": str(tiny_world["data"]["mimic-cxr"]),
              "split": "train", "limit": LIMIT, "batch_size": 4, "bootstrap_resamples": 50,
              "dtype": "float32", "device": "cpu", "output_dir": str(tmp_path / "run")}
    path = tmp_path / "pair.yaml"
    path.write_text(yaml.safe_dump(values))
    return {"file": path, "values": values}


def users_folder(path: Path) -> Path:
    """A folder of the user's own files, named as the run's outputs are."""
    path.mkdir()
    for name in ("summary.json", "predictions.parquet", "report.html", "params.yaml", "evaluate.ipynb",
                 ".bashrc.tmp-old", ".summary.json.tmp-1"):
        (path / name).write_text(f"the user's {name}\n")
    return path


# -- 1, 2: output folders --------------------------------------------------------------------

@pytest.mark.parametrize("command", ["evaluate", "screen"])
def test_a_folder_of_the_users_files_is_refused_untouched(pair, tmp_path, capsys, command):
    out = users_folder(tmp_path / "mine")
    before = checksums(out)
    argv = [command, str(pair["file"]), "--out", str(out)]
    status, line = main(argv + (["--max-dangerous", "0.5"] if command == "screen" else []), capsys)
    assert status == cli.BAD_INPUT and str(out) in line and "not an output folder" in line, line
    assert checksums(out) == before


def test_a_lock_and_an_empty_records_folder_do_not_make_a_folder_the_tools(tmp_path):
    """A folder from before output folders were marked has a lock and records with chunks in them."""
    out = users_folder(tmp_path / "mine")
    (out / ".lock").touch()
    (out / "records").mkdir()
    (out / "report.html").write_text("my report\n")
    with pytest.raises(records.OutputDirError, match="not an output folder"):
        records.claim_output_dir(out)
    (out / "records" / "key").mkdir()
    (out / "records" / "key" / "chunk-0001.json").write_text("{}")
    assert records.claim_output_dir(out) == out


@pytest.mark.parametrize("name", [".lock", ".write-test", "report.html", "records"])
def test_a_link_in_an_output_folder_is_never_followed(pair, tmp_path, capsys, name):
    out = records.claim_output_dir(tmp_path / "run")
    victim = users_folder(tmp_path / "elsewhere")
    (out / name).symlink_to(victim / "summary.json")
    before = checksums(victim)
    status, line = main(["evaluate", str(pair["file"]), "--out", str(out)], capsys)
    assert status == cli.BAD_INPUT and str(out / name) in line and "symbolic link" in line, line
    with pytest.raises(records.OutputDirError, match="symbolic link"):
        records.OutputLock(out).__enter__()
    assert checksums(victim) == before


@pytest.mark.parametrize("where", ["notebooks", "lib", "params", "model", "data_root"])
def test_an_output_folder_inside_sources_model_or_data_is_refused(pair, tmp_path, capsys, where):
    base = ROOT / where if where in ("notebooks", "lib", "params") else Path(pair["values"][where])
    before = checksums(base)
    status, line = main(["evaluate", str(pair["file"]), "--out", str(base / "run")], capsys)
    assert status == cli.BAD_INPUT and "output_dir" in line and "is inside" in line, line
    assert not (base / "run").exists() and checksums(base) == before


def test_a_config_name_that_is_a_path_is_refused(pair, capsys):
    status, line = main(["evaluate", str(pair["file"]), "-p", "config", "../../../../elsewhere/x"], capsys)
    assert status == cli.BAD_INPUT and "'config'" in line and "../../../../elsewhere/x" in line, line


def test_final_files_remove_only_their_own_temporary_files(tmp_path):
    out = records.claim_output_dir(tmp_path / "run")
    (out / ".bashrc.tmp-old").write_text("the user's\n")
    (out / ".summary.json.tmp-dead").write_text("left by a killed run")
    records.write_atomically(out, {"skipped.csv": pd.DataFrame({"a": [1]})}, {"n": 1})
    assert (out / ".bashrc.tmp-old").read_text() == "the user's\n"
    assert not (out / ".summary.json.tmp-dead").exists()
    assert json.loads((out / "summary.json").read_text()) == {"n": 1}


# -- 3: params files with limits ---------------------------------------------------------------

def test_a_yaml_alias_bomb_stops_in_one_short_line_in_little_memory(pair, tmp_path):
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(yaml.safe_dump(pair["values"]) + BOMB)
    assert len(BOMB) < 500
    status, wall, rss, stderr = measured(["evaluate", str(bomb), "--out", str(tmp_path / "run")])
    line = one_line(stderr)
    assert status == cli.BAD_INPUT and str(bomb) in line and "alias" in line and len(line) < 300, line
    assert rss < 2 * GB and wall < 120, (rss, wall)
    assert not (tmp_path / "run").exists()


def test_the_papermill_path_reads_the_params_file_with_the_same_limits(pair, tmp_path):
    """As `make runs`: only `-p params_file`; the notebook's validation cell reads the file."""
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(yaml.safe_dump(pair["values"]) + BOMB)
    with pytest.raises(pm.PapermillExecutionError) as caught:
        pm.execute_notebook(str(ROOT / "notebooks" / "evaluate.ipynb"), str(tmp_path / "out.ipynb"),
                            parameters={"params_file": str(bomb)}, cwd=str(ROOT), progress_bar=False)
    assert caught.value.ename == "ParamsError" and "alias" in caught.value.evalue
    assert len(caught.value.evalue) < 300 and len(caught.value.traceback) == 1


@pytest.mark.parametrize("value, words", [
    ("{a: &a [x, x], b: [*a, *a]}", ["label_policy"]),        # an alias bomb through -p
    ("x" * 200_000, ["label_policy", "..."]),                   # a huge value
])
def test_p_values_are_read_with_the_same_limits(pair, capsys, value, words):
    status, line = main(["evaluate", str(pair["file"]), "-p", "label_policy", value], capsys)
    assert status == cli.BAD_INPUT and len(line) <= config.MAX_MESSAGE + 40, line
    assert all(word in line for word in words), line


def test_an_oversized_or_deeply_nested_params_file_stops_naming_it(tmp_path):
    big = tmp_path / "big.yaml"
    big.write_text("config: x\n" + "# padding\n" * 10_000)
    deep = tmp_path / "deep.yaml"
    deep.write_text("findings: " + "[" * 10_000 + "]" * 10_000 + "\n")
    twice = tmp_path / "twice.yaml"   # safe_load would keep the last and blame data_root later
    twice.write_text("dataset: mimic-cxr\nlabel_policy: {uncertain: skip}\ndataset: padchest\n")
    for path, words in ((big, "larger than"), (deep, "nested more than"), (twice, "the key 'dataset' is given twice")):
        with pytest.raises(config.ParamsError, match=words) as caught:
            config.read_file(path)
        assert str(path) in str(caught.value) and len(str(caught.value)) < 300


# -- 4, 8: giant and non-finite images; 5: a full disk; 6: a damaged chunk ------------------------

@pytest.fixture(scope="module")
def hostile_images(tiny_world, tmp_path_factory) -> dict:
    """A copy of the synthetic MIMIC-CXR whose first image is a 180 KB PNG declaring 9600 x 9600
    16-bit pixels and whose second is a float TIFF with one NaN pixel (under their .jpg names)."""
    root = tmp_path_factory.mktemp("hostile") / "mimic-cxr"
    shutil.copytree(tiny_world["data"]["mimic-cxr"], root)
    first = list(data.iter_samples("mimic-cxr", root, split="train", findings=FINDINGS))[:LIMIT]
    giant, nan = list(dict.fromkeys(s.image_path for s in first))[:2]
    pixels = np.zeros((9600, 9600), np.uint16)
    pixels[::97, ::89] = 4000
    Image.fromarray(pixels).save(giant, format="PNG", compress_level=9)
    del pixels
    floats = np.full((64, 64), 0.5, np.float32)
    floats[3, 5] = np.nan
    Image.fromarray(floats, mode="F").save(nan, format="TIFF")
    return {"root": root, "too_large": sum(s.image_path == giant for s in first),
            "non_finite": sum(s.image_path == nan for s in first), "size": Path(giant).stat().st_size}


@pytest.fixture(scope="module")
def giant_run(tiny_world, hostile_images, tmp_path_factory) -> dict:
    """`python -m lib evaluate --limit 8` on the hostile data root, measured."""
    tmp = tmp_path_factory.mktemp("giant")
    values = {"config": "tiny-llava", "model": str(tiny_world["models"]["llava"]), "dataset": "mimic-cxr",
              "data_root": str(hostile_images["root"]), "split": "train", "batch_size": 4, "findings": FINDINGS,
              "bootstrap_resamples": 50, "dtype": "float32", "device": "cpu"}
    params_file = tmp / "pair.yaml"
    params_file.write_text(yaml.safe_dump(values))
    data_before = checksums(hostile_images["root"])
    out = tmp / "run"
    status, wall, rss, stderr = measured(["evaluate", str(params_file), "--out", str(out), "-p", "limit",
                                          str(LIMIT), "--no-progress"])
    assert status == cli.OK, stderr[-3000:]
    assert checksums(hostile_images["root"]) == data_before
    return {"out": out, "file": params_file, "wall": wall, "rss": rss, "tmp": tmp,
            "params": config.validate({**values, "limit": LIMIT, "output_dir": str(out)})}


def test_a_giant_image_and_a_nan_image_are_skipped_and_counted(hostile_images, giant_run):
    assert hostile_images["size"] < 200_000 and hostile_images["too_large"] and hostile_images["non_finite"]
    assert giant_run["rss"] < 2 * GB and giant_run["wall"] < 120, (giant_run["rss"], giant_run["wall"])
    summary = json.loads((giant_run["out"] / "summary.json").read_text())
    assert summary["n_skipped"]["image_too_large"] == hostile_images["too_large"]
    assert summary["n_skipped"]["image_non_finite"] == hostile_images["non_finite"]
    assert summary["n_samples"] == LIMIT - hostile_images["too_large"] - hostile_images["non_finite"]
    listed = pd.read_csv(giant_run["out"] / "skipped.csv")
    images = listed[listed.reason.str.startswith("image_")]
    assert set(images.reason) == {"image_too_large", "image_non_finite"}
    # whatever else is listed is a label the reader skipped on its way to the limit, counted alike
    assert (listed.reason.str.startswith("label_")).sum() == len(listed) - len(images)
    assert images.groupby("reason")["n"].sum().to_dict() == {
        k: summary["n_skipped"][k] for k in ("image_too_large", "image_non_finite")}


def test_a_full_disk_at_the_final_write_leaves_the_previous_result_whole(giant_run, tmp_path):
    """The rerun reuses every record; its final write fails in the kernel (files over 4 KiB)."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    out = giant_run["out"]
    before = {k: v for k, v in checksums(out).items() if "/records/" not in k and not k.endswith(".lock")}
    status, _, _, stderr = measured(
        ["evaluate", str(giant_run["file"]), "--out", str(out), "-p", "limit", str(LIMIT), "--no-progress"],
        HOSTILE_FSIZE="4096", PYTHONPATH=os.pathsep.join([str(site), str(ROOT)]))
    line = one_line(stderr)
    assert status == cli.FAILED and str(out) in line and "unchanged" in line, line
    after = checksums(out)
    assert {k: after.get(k) for k in before} == before
    assert json.loads((out / "evaluate.ipynb").read_text())["cells"]
    assert (out / notebook_run.FAILED_NOTEBOOK).is_file()
    assert not list(out.glob(".*tmp-*")) and not list(out.glob(".evaluate.partial-*"))


def test_a_write_error_of_the_command_is_one_line_and_tears_no_notebook(giant_run, capsys, monkeypatch):
    """papermill itself cannot write the executed notebook (ENOSPC): evaluate.ipynb stays whole."""
    out = giant_run["out"]
    before = (out / "evaluate.ipynb").read_bytes()

    def full_disk(notebook, output, **_):
        Path(output).write_text('{"cells": [')
        raise OSError(28, "No space left on device")

    import papermill

    monkeypatch.setattr(papermill, "execute_notebook", full_disk)
    status, line = main(["evaluate", str(giant_run["file"]), "--out", str(out), "-p", "limit", str(LIMIT)], capsys)
    assert status == cli.FAILED and str(out) in line and "No space left" in line, line
    assert (out / "evaluate.ipynb").read_bytes() == before
    assert not list(out.glob(".evaluate.partial-*"))


def test_a_damaged_chunk_is_named_set_aside_and_rescored(giant_run, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(giant_run["out"], out)
    params = {**giant_run["params"], "output_dir": str(out)}
    store = records.RecordStore(out, identity.records_key(params))
    empty, garbled = sorted(store.dir.glob("chunk-*.json"))[:2]
    held = [s["sample_id"] for path in (empty, garbled) for key in ("samples", "skipped")
            for s in json.loads(path.read_text())[key]]
    lost = {sid for sid in held if "/" in sid}           # samples; per-run units have no '/' in their id
    empty.write_bytes(b"")
    garbled.write_text('{"samples": [{"sample_id": "tru')
    (out / ".notes.tmp-1").write_text("the user's")
    with pytest.warns(RuntimeWarning, match="damaged record chunk") as caught:
        result = run.evaluate(params)
    named = " ".join(str(w.message) for w in caught)
    assert empty.name in named and garbled.name in named
    assert (store.dir / "damaged" / empty.name).exists() and (store.dir / "damaged" / garbled.name).exists()
    assert result.summary["records"]["samples_scored"] == len(lost)
    assert result.summary["records"]["run_units_scored"] == len(set(held) - lost)
    assert result.summary["n_samples"] == json.loads((giant_run["out"] / "summary.json").read_text())["n_samples"]
    assert (out / ".notes.tmp-1").read_text() == "the user's"


# -- 7: the gate fails closed ------------------------------------------------------------------

def test_the_gate_fails_closed_when_image_blind_cannot_be_estimated(giant_run, tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    shutil.copytree(giant_run["out"], out, ignore=shutil.ignore_patterns("records"))
    summary = json.loads((out / "summary.json").read_text())
    summary["dangerous_breakdown"]["image-blind"] = None
    summary["image_blind"] = {"estimable": False, "reason": "no finding has references of both labels"}
    (out / "summary.json").write_text(json.dumps(summary))
    monkeypatch.setattr(cli, "execute", lambda *args, **kwargs: None)
    status = cli.main(["screen", str(giant_run["file"]), "--out", str(out), "--max-dangerous", "0"])
    captured = capsys.readouterr()
    assert status == cli.NOT_ESTIMABLE == 4
    assert "no finding has references of both labels" in captured.err and "PASS" not in captured.out
    assert "NOT ESTIMABLE" in (out / "report.html").read_text()
    assert report.image_blind({**summary, "image_blind": {"estimable": True, "rate": 0.1, "ci95": [0.05, 0.2]}})["estimable"]


# -- 9: late errors become validation errors ----------------------------------------------------

def test_disagreeing_duplicate_label_rows_stop_naming_the_file_and_the_id(pair, tiny_world, tmp_path, capsys):
    root = tmp_path / "mimic-cxr"
    shutil.copytree(tiny_world["data"]["mimic-cxr"], root)
    chexpert = next(root.glob(f"{data.MIMIC_CHEXPERT}*"))
    table = pd.read_csv(chexpert)
    twin = table.iloc[[0]].copy()
    twin["Cardiomegaly"] = 0.0 if table.iloc[0]["Cardiomegaly"] == 1.0 else 1.0
    pd.concat([table, twin]).to_csv(chexpert, index=False)
    status, line = main(["evaluate", str(pair["file"]), "-p", "data_root", str(root)], capsys)
    assert status == cli.BAD_INPUT and chexpert.name in line, line
    assert f"study_id {table['study_id'].iloc[0]}" in line and "Cardiomegaly" in line, line


def test_a_seed_beyond_what_generators_accept_stops_naming_seed(pair, capsys):
    status, line = main(["evaluate", str(pair["file"]), "-p", "seed", str(2 ** 70)], capsys)
    assert status == cli.BAD_INPUT and "'seed'" in line and str(2 ** 32 - 1) in line, line


def test_a_question_holding_the_image_token_stops_in_preflight(pair, tmp_path, capsys):
    questions = tmp_path / "questions.csv"
    questions.write_text("finding,prompt_id,prompt\n" + "".join(
        f"{f},0,<image> Is there {f}?\n" for f in data.DEFAULT_FINDINGS))
    status, line = main(["evaluate", str(pair["file"]), "-p", "questions", str(questions)], capsys)
    assert status == cli.BAD_INPUT and "'questions'" in line and "<image>" in line, line
