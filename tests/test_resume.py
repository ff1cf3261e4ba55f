"""A run killed with SIGKILL resumes to exactly the outputs of an uninterrupted run.

A tiny untrained LLaVA and a tiny synthetic MIMIC-CXR tree are built once. The run is started in
a subprocess that sleeps after writing each chunk (so the kill lands between chunks on any
machine) and killed with SIGKILL as soon as its first chunk file exists; the rerun to completion
happens in this process, which counts the samples it scores.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pandas as pd
import pytest
import torch

from lib.protocol import config, identity, questions, records, run
from lib.offline import default_models, layouts

ROOT = Path(__file__).resolve().parents[1]
LIMIT = 24
BATCH = 4
KEY = ["sample_id", "prompt_id", "condition"]

# The child: evaluate(params), pausing after every chunk it writes. argv: params.json, pause (s).
CHILD = r"""
import json, sys, time
import lib.protocol.run as run
from lib.protocol import config

params_path, pause = sys.argv[1], float(sys.argv[2])
score_batch = run.score_batch

def pausing(*args):
    n = score_batch(*args)
    time.sleep(pause)
    return n

run.score_batch = pausing
run.evaluate(config.validate(json.load(open(params_path))))
"""


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """(model dir, data root) of a tiny untrained LLaVA and a 12-image synthetic MIMIC-CXR."""
    base = tmp_path_factory.mktemp("resume")
    model, processor = default_models.build_untrained("llava", default_models.question_corpus(), 0)
    with torch.no_grad():
        model.lm_head.weight.mul_(30.0)      # spread p_yes so predictions are not all ~0.5
    model_dir = default_models.save(model, processor, base / "model")
    data_root = layouts.write_mimic(base / "mimic-cxr", n_images=12, seed=0)
    return model_dir, data_root


def make_params(world, output_dir, **overrides) -> dict:
    model_dir, data_root = world
    raw = {
        "config": "tiny-llava", "model": str(model_dir), "dataset": "mimic-cxr",
        "data_root": str(data_root), "split": "train", "limit": LIMIT, "batch_size": BATCH,
        "dtype": "float32", "device": "cpu", "output_dir": str(output_dir),
        "label_policy": {"uncertain": "yes", "blank": "no"},
        "reliance_checks": [], "local_tests": [],  # the paper's two conditions only: rows counted below
    }
    return config.validate({**raw, **overrides})


def start_child(tmp_path: Path, params: dict, pause: float) -> subprocess.Popen:
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    params_file = tmp_path / f"params-{time.monotonic_ns()}.json"
    params_file.write_text(json.dumps(params))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, str(script), str(params_file), str(pause)],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def chunk_files(params: dict) -> list[Path]:
    return sorted(records_dir(params).glob("chunk-*.json"))


def records_dir(params: dict) -> Path:
    return Path(params["output_dir"]) / "records" / identity.records_key(params)


def chunk_samples(path: Path) -> list[str]:
    """The samples a chunk holds (per-run units such as `text_only` have ids without '/')."""
    return [s["sample_id"] for s in json.loads(path.read_text())["samples"] if "/" in s["sample_id"]]


def count_scored_samples(action, units: list | None = None) -> list[str]:
    """Sample ids that lib.protocol.run scored while `action()` ran (the per-run units it scored
    go to `units`)."""
    scored = []
    original = run.score_batch

    def counting(engine, store, batch, *rest):
        scored.extend(s.sample_id for s in batch if isinstance(s, run.Job))
        if units is not None:
            units.extend(s.sample_id for s in batch if not isinstance(s, run.Job))
        return original(engine, store, batch, *rest)

    run.score_batch = counting
    try:
        action()
    finally:
        run.score_batch = original
    return scored


def test_killed_run_resumes_to_the_uninterrupted_outputs(world, tmp_path):
    params = make_params(world, tmp_path / "killed")

    # 1. Start, SIGKILL as soon as the first chunk exists.
    child = start_child(tmp_path, params, pause=2.0)
    deadline = time.monotonic() + 60
    while not chunk_files(params):
        assert child.poll() is None, child.stdout.read().decode()[-2000:]
        assert time.monotonic() < deadline, "no chunk written within 60 s"
        time.sleep(0.01)
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL
    before = {p.name: chunk_samples(p) for p in chunk_files(params)}
    done_before = [s for samples in before.values() for s in samples]
    assert 0 < len(done_before) < LIMIT
    assert not (Path(params["output_dir"]) / "predictions.parquet").exists()

    # What a kill during a write leaves: temporary files. They must never be read.
    rdir = records_dir(params)
    (rdir / ".chunk-deadbeef.json.tmp").write_text('{"samples": [{"sample_id": "tru')
    bogus = {"samples": [{"sample_id": "bogus", "image_id": "x", "finding": "nodule", "label": "no"}],
             "predictions": [{"sample_id": "bogus", "prompt_id": 0, "condition": "image",
                              "prompt": "?", "p_yes": 0.5, "yes_no_mass": 1.0}], "skipped": []}
    (rdir / ".chunk-cafebabe.json.tmp").write_text(json.dumps(bogus))

    # 2. Rerun to completion (in this process): only the missing samples are scored.
    units = []
    rescored = count_scored_samples(lambda: run.evaluate(params), units)
    assert units == ["text_only"]      # the one per-run unit without reliance checks, planned last
    assert len(rescored) == LIMIT - len(done_before)
    assert not set(rescored) & set(done_before)
    after = {p.name: chunk_samples(p) for p in chunk_files(params)}
    assert {k: after[k] for k in before} == before, "chunks of the killed run were rewritten"
    all_samples = [s for samples in after.values() for s in samples]
    assert len(all_samples) == len(set(all_samples)) == LIMIT
    assert len(after) == len(before) + -(-(len(rescored) + len(units)) // BATCH)

    killed = pd.read_parquet(Path(params["output_dir"]) / "predictions.parquet")
    assert not killed.duplicated(KEY).any()
    assert "bogus" not in set(killed["sample_id"])

    # 3. An uninterrupted run elsewhere gives the same predictions, row for row.
    clean_params = make_params(world, tmp_path / "clean")
    clean = run.evaluate(clean_params).predictions
    assert identity.run_hash(clean_params) == identity.run_hash(params)
    assert killed["sample_id"].nunique() == LIMIT
    sets = questions.load_question_sets()
    findings = pd.read_parquet(Path(params["output_dir"]) / "samples.parquet")["finding"]
    expected_rows = sum(len(questions.prompts_for(f, sets)) + 1 for f in findings)
    assert len(findings) == LIMIT
    assert len(killed) == len(clean) == expected_rows
    pd.testing.assert_frame_equal(killed[KEY + ["prompt"]], clean[KEY + ["prompt"]])
    np.testing.assert_allclose(killed["p_yes"], clean["p_yes"], rtol=0, atol=1e-6)
    assert (killed["pred"] == clean["pred"]).all()
    assert clean["p_yes"].std() > 1e-3
    samples_killed = pd.read_parquet(Path(params["output_dir"]) / "samples.parquet")
    samples_clean = pd.read_parquet(Path(clean_params["output_dir"]) / "samples.parquet")
    pd.testing.assert_series_equal(samples_killed["quadrant"], samples_clean["quadrant"])

    # 4. Rerunning the finished run scores nothing.
    assert count_scored_samples(lambda: run.evaluate(clean_params)) == []


def test_changed_params_never_reuse_records(world, tmp_path):
    params = make_params(world, tmp_path / "out", limit=8)
    first = run.evaluate(params).predictions
    old_chunks = sorted(p.name for p in chunk_files(params))

    changed = make_params(world, tmp_path / "out", limit=8, max_paraphrases=1)
    assert identity.run_hash(changed) != identity.run_hash(params)
    seen = count_scored_samples(lambda: run.evaluate(changed))
    second = pd.read_parquet(Path(changed["output_dir"]) / "predictions.parquet")
    assert len(seen) == 8, "changed params must score every sample again"
    assert sorted(p.name for p in chunk_files(params)) == old_chunks
    assert len(chunk_files(changed)) == 3      # 8 samples and the text-only unit, 4 a batch
    assert second["prompt_id"].max() == 1 < first["prompt_id"].max()
    # The operational output_dir is not part of the hash; the other params are.
    assert identity.run_hash(make_params(world, tmp_path / "elsewhere", limit=8)) == identity.run_hash(params)
    store = records.RecordStore(params["output_dir"], identity.records_key(changed))
    assert {s["sample_id"] for c in store.chunks() for s in c["samples"]} == set(second["sample_id"]) | {"text_only"}
