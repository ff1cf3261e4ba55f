"""Outputs that are never stale, never torn, never written twice at once.

- A rerun into the same output_dir after editing the question file, an image and a label gives
  the new results, scoring only the samples the edits touch.
- A run killed (SIGKILL) at each step of writing its final files leaves no truncated file and
  never files of two runs side by side; the rerun completes.
- Two runs into one output_dir: the second stops at once naming the holder, the first completes;
  the lock of a killed run is taken over.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from lib.offline import default_models, layouts
from lib.protocol import config, data, questions, records, run

ROOT = Path(__file__).resolve().parents[1]
KEY, PER_RUN_KEY = records.KEY, records.PER_RUN_KEY

# A child run; argv: params.json, mode ("pause-chunks" sleeps after every chunk; "pause-final"
# announces every final rename in <output_dir>/renames.log and sleeps before doing it).
CHILD = r"""
import json, os, sys, time
from pathlib import Path
import lib.protocol.run as run
import lib.protocol.records as records
from lib.protocol import config

params = config.validate(json.load(open(sys.argv[1])))
mode = sys.argv[2]
if mode == "pause-chunks":
    score_batch = run.score_batch
    def pausing(*args):
        n = score_batch(*args)
        time.sleep(1.0)
        return n
    run.score_batch = pausing
else:
    replace = os.replace
    log = Path(params["output_dir"]) / "renames.log"
    def announced(src, dst):
        if not str(dst).endswith(".json") or Path(dst).name == "summary.json":
            with open(log, "a") as handle:
                handle.write(Path(dst).name + "\n")
            time.sleep(3.0)
        replace(src, dst)
    records.os.replace = announced
run.evaluate(params)
"""


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    base = tmp_path_factory.mktemp("outputs")
    model, processor = default_models.build_untrained("llava", default_models.question_corpus(), 0)
    with torch.no_grad():
        model.lm_head.weight.mul_(30.0)  # spread p_yes so that edits show in the predictions
    model_dir = default_models.save(model, processor, base / "model")
    data_root = layouts.write_mimic(base / "mimic-cxr", n_images=12, seed=0)
    return model_dir, data_root


def make_params(model_dir, data_root, output_dir, **extra) -> dict:
    return config.validate({
        "config": "tiny", "model": str(model_dir), "dataset": "mimic-cxr", "data_root": str(data_root),
        "split": "train", "limit": 12, "batch_size": 4, "dtype": "float32", "device": "cpu",
        "output_dir": str(output_dir), "label_policy": {"uncertain": "yes", "blank": "no"},
        "bootstrap_resamples": 50, **extra})


def start_child(tmp_path, params, mode) -> subprocess.Popen:
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    params_file = tmp_path / f"params-{time.monotonic_ns()}.json"
    params_file.write_text(json.dumps(params))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, str(script), str(params_file), mode], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def wait_for(condition, child, what, timeout=120):
    deadline = time.monotonic() + timeout
    while not condition():
        assert child.poll() is None, f"child ended before {what}: " + child.stdout.read().decode()[-2000:]
        assert time.monotonic() < deadline, f"no {what} within {timeout} s"
        time.sleep(0.02)


def followup_units(result) -> dict:
    """{(other study, the image it is registered onto): the questions asked of it} of a run."""
    rows = result.predictions.dropna(subset=["followup_image_id"])
    return {k: set(g["prompt"]) for k, g in rows.groupby(["followup_image_id", "followup_onto_image_id"])}


def test_rerun_after_editing_questions_image_and_label_gives_the_new_results(world, tmp_path):
    model_dir, original_root = world
    root = tmp_path / "mimic-cxr"
    shutil.copytree(original_root, root)
    qfile = tmp_path / "questions.csv"
    rows = [(f, i, p) for f, prompts in questions.BUILTIN_QUESTIONS.items() for i, p in enumerate(prompts)]
    pd.DataFrame(rows, columns=["finding", "prompt_id", "prompt"]).to_csv(qfile, index=False)
    out = tmp_path / "run"
    params = make_params(model_dir, root, out, questions=str(qfile))
    first = run.evaluate(params)
    records = first.summary["records"]
    assert (records["samples_reused"], records["samples_scored"], records["took_over_lock_of"]) == (0, 12, None)
    assert records["run_units_scored"] >= 1 + 1 + 4          # text-only, blank, 4 null images (+ references)

    samples = list(data.iter_samples("mimic-cxr", root, split="train",
                                     label_policy=data.LabelPolicy(uncertain="yes")))[:12]
    # 1. a paraphrase fixed in the question file
    edited_finding = samples[0].finding
    table = pd.read_csv(qfile)
    at = (table.finding == edited_finding) & (table.prompt_id == 1)
    table.loc[at, "prompt"] = "Is there any sign of it on this radiograph?"
    table.to_csv(qfile, index=False)
    # 2. an image repaired (rewritten: other pixels)
    repaired = next(s for s in samples if s.finding != edited_finding)
    image = data.read_xray(repaired.image_path)
    image.transpose(0).save(repaired.image_path, quality=95)
    # 3. a label corrected in the official labels file
    relabelled = samples[-1]
    chexpert = next(root.glob(f"{data.MIMIC_CHEXPERT}*"))
    labels = pd.read_csv(chexpert)
    study = Path(relabelled.image_path).parent.name.lstrip("s")
    column = data.FINDINGS[relabelled.finding]["mimic-cxr"]
    labels.loc[labels.study_id.astype(str) == study, column] = 0.0 if relabelled.label == "yes" else 1.0
    labels.to_csv(chexpert, index=False)

    second = run.evaluate(make_params(model_dir, root, out, questions=str(qfile)))
    touched = {s.sample_id for s in samples if s.finding == edited_finding or s.image_id == repaired.image_id}
    # the per-run units ask prompt 0 only: untouched, except the other studies showing the repaired
    # image or registered onto it, and those the relabelled sample now chooses or no longer asks
    before, after = followup_units(first), followup_units(second)
    rescored = [k for k, prompts in after.items() if before.get(k) != prompts or repaired.image_id in k]
    assert second.summary["records"]["run_units_scored"] == len(rescored) > 0
    assert second.summary["records"]["samples_scored"] == len(touched)
    assert second.summary["records"]["samples_reused"] == 12 - len(touched)
    assert second.summary["run_hash"] != first.summary["run_hash"]
    new_label = second.samples.set_index("sample_id").label[relabelled.sample_id]
    assert new_label != relabelled.label
    texts = set(second.predictions.loc[second.predictions.prompt_id == 1, "prompt"])
    assert "Is there any sign of it on this radiograph?" in texts

    fresh = run.evaluate(make_params(model_dir, root, tmp_path / "fresh", questions=str(qfile)))
    assert fresh.summary["run_hash"] == second.summary["run_hash"]
    for a, b, key in ((second.predictions, fresh.predictions, KEY), (second.predictions, fresh.predictions, PER_RUN_KEY)):
        rows = [frame[frame.sample_id.notna() == (key == KEY)] for frame in (a, b)]
        merged = rows[0].merge(rows[1], on=key, suffixes=("", "_fresh"))
        assert len(merged) == len(rows[0]) == len(rows[1])
        assert (merged.p_yes - merged.p_yes_fresh).abs().max() < 1e-6
    merged = second.predictions.dropna(subset=["sample_id"]).merge(
        fresh.predictions.dropna(subset=["sample_id"]), on=KEY, suffixes=("", "_fresh"))
    assert (merged.prompt == merged.prompt_fresh).all()
    assert (merged.p_yes - merged.p_yes_fresh).abs().max() < 1e-6
    # the same samples and answers; p_yes of a batch scored in another mix differs in float32 below 1e-6
    pd.testing.assert_frame_equal(second.samples, fresh.samples, check_exact=False, atol=1e-6, rtol=0)


def check_one_run(out: Path, n_old: int, n_new: int) -> str:
    """Whatever the kill left: no truncated file, and never files of two runs side by side."""
    present = {name for name in ("predictions.parquet", "samples.parquet", "skipped.csv", "summary.json")
               if (out / name).exists()}
    sizes = set()
    if "predictions.parquet" in present:
        sizes.add(pd.read_parquet(out / "predictions.parquet").sample_id.nunique())
    if "samples.parquet" in present:
        sizes.add(len(pd.read_parquet(out / "samples.parquet")))
    if "summary.json" in present:
        sizes.add(json.loads((out / "summary.json").read_text())["n_samples"])
        assert {"predictions.parquet", "samples.parquet", "skipped.csv"} <= present, present
    if "skipped.csv" in present:
        pd.read_csv(out / "skipped.csv")
    assert len(sizes) <= 1, f"files of two runs side by side: {present} with {sizes} samples"
    return "old" if sizes == {n_old} else "new" if sizes == {n_new} else "none"


@pytest.mark.parametrize("kill_at", [1, 2, 3, 4])
def test_a_kill_during_the_final_write_never_leaves_a_mix(world, tmp_path, kill_at):
    model_dir, root = world
    out = tmp_path / "run"
    old = run.evaluate(make_params(model_dir, root, out, limit=8))
    assert old.summary["n_samples"] == 8
    params = make_params(model_dir, root, out, limit=12)
    child = start_child(tmp_path, params, "pause-final")
    log = out / "renames.log"
    wait_for(lambda: log.exists() and len(log.read_text().split()) >= kill_at, child, f"rename {kill_at}")
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=30)
    state = check_one_run(out, 8, 12)
    assert state in ("new", "none"), state  # the old files went first
    again = run.evaluate(params)
    assert check_one_run(out, 8, 12) == "new"
    assert again.summary["n_samples"] == 12
    assert again.summary["records"]["took_over_lock_of"].startswith(f"pid {child.pid} ")
    assert not list(out.glob(".*.tmp-*")), "temporary files left behind"


def test_a_second_concurrent_run_stops_naming_the_holder(world, tmp_path):
    model_dir, root = world
    params = make_params(model_dir, root, tmp_path / "run")
    first = start_child(tmp_path, params, "pause-chunks")
    lock = Path(params["output_dir"]) / ".lock"
    wait_for(lambda: lock.exists() and lock.read_text().startswith("pid"), first, "the lock")
    started = time.monotonic()
    with pytest.raises(records.OutputLockedError, match=f"in use by pid {first.pid} "):
        run.evaluate(params)
    assert time.monotonic() - started < 10, "the second run did not stop at once"
    assert first.wait(timeout=300) == 0, first.stdout.read().decode()[-2000:]
    summary = json.loads((Path(params["output_dir"]) / "summary.json").read_text())
    assert summary["n_samples"] == 12 and summary["records"]["samples_scored"] == 12
