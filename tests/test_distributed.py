"""Ray scale-out (lib.scale.ray_scorer): same predictions as one process, no loss when a worker dies,
a wrong cluster address fails at once.

CPU only: one local Ray cluster of 2 CPUs shared by the module, a tiny untrained LLaVA and a tiny
synthetic MIMIC-CXR tree built in tmp. Skipped when Ray is not installed (`make test` installs
requirements-ray.txt first).
"""
from __future__ import annotations

import json
import os
import pickle
import signal
import threading
import time

import pytest

ray = pytest.importorskip("ray", reason="Ray is optional: pip install -r requirements-ray.txt")

from collections import Counter  # noqa: E402

import psutil  # noqa: E402
import torch  # noqa: E402

from lib.protocol import config, data, identity, planning, records, run  # noqa: E402
from lib.offline import default_models, layouts
from lib.scale import ray_scorer as distributed
from lib.front import session

KEY = ["sample_id", "prompt_id", "condition"]
N_SAMPLES = 24


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("ray-world")
    data_root = layouts.write_mimic(root / "mimic-cxr", n_images=20, seed=0)
    model, processor = default_models.build_untrained(
        "llava", default_models.question_corpus(), seed=0)
    default_models.save(model, processor, root / "llava")
    base = {"config": "tiny", "model": str(root / "llava"), "dataset": "mimic-cxr",
            "data_root": str(data_root), "split": "train", "limit": N_SAMPLES, "batch_size": 2,
            "device": "cpu"}  # CPU actors even where a GPU exists

    def params(name, **extra):
        return config.validate({**base, "output_dir": str(root / name), **extra})

    return params


@pytest.fixture(scope="module")
def cluster():
    """One local 2-CPU cluster for the module (lib.scale.ray_scorer reuses an initialised Ray)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    ray.init(address="local", num_cpus=2, num_gpus=0, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": distributed.worker_env()})
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def reference(world):
    """The single-process run, with the actors' arithmetic (one torch thread on CPU)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return run.evaluate(world("single"))
    finally:
        torch.set_num_threads(threads)


def p_yes(result):
    return result.predictions.set_index(KEY)[["p_yes", "yes_no_mass"]]


def test_ray_path_gives_exactly_the_single_process_predictions(world, cluster, reference):
    assert reference.summary["n_samples"] == N_SAMPLES
    result = session.evaluate(world("ray", workers=2))
    engine = result.summary["engine"]
    assert engine["workers"] == 2 and engine["mode"] == reference.summary["engine"]["mode"]
    assert len(engine["per_worker"]) >= 1 and engine["peak_rss_mb_per_worker"] > 0
    assert p_yes(result).equals(p_yes(reference))  # same keys, bit-identical p_yes and mass
    cols = ["sample_id", "label", "pred", "pred_text_only", "quadrant"]
    assert result.samples[cols].equals(reference.samples[cols])
    for key in ("flip_rate", "quadrant_fractions", "accuracy", "n_skipped", "run_hash"):
        assert result.summary[key] == reference.summary[key], key


def map_workers():
    """This test's own Ray Data actor processes (descendants of this process only)."""
    found = []
    for proc in psutil.Process().children(recursive=True):
        try:
            if "MapWorker" in " ".join(proc.cmdline()):
                found.append(proc.pid)
        except psutil.Error:
            continue
    return found


def test_killing_a_worker_mid_run_loses_nothing(world, cluster, reference):
    params = world("killed", workers=2)
    records.claim_output_dir(params["output_dir"])   # what the run does first (lib.protocol.preflight)
    store = records.RecordStore(params["output_dir"], identity.records_key(params))
    killed, stop = [], threading.Event()

    def kill_after_first_chunk():
        while not stop.is_set():
            if any(store.dir.glob("chunk-*.json")):
                for pid in map_workers()[:1]:
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
                return
            time.sleep(0.01)

    killer = threading.Thread(target=kill_after_first_chunk, daemon=True)
    killer.start()
    try:
        result = session.evaluate(params)  # Ray restarts the actor and retries its block
        recovered_in_run = True
    except Exception:  # noqa: BLE001 - the contract also holds if Ray gave up: a rerun resumes
        recovered_in_run = False
        result = session.evaluate(params)
    finally:
        stop.set()
        killer.join(5)
    assert killed, "no worker was killed before the run ended"
    assert recovered_in_run, "Ray did not recover from the lost worker within the run"
    preds = result.predictions
    assert not preds[preds.sample_id.notna()].duplicated(KEY).any()
    per_run = preds[preds.sample_id.isna()]         # one row per (condition, image, question)
    assert not per_run.duplicated(records.PER_RUN_KEY).any()
    assert p_yes(result).equals(p_yes(reference))  # no missing and no extra row, same values
    assert result.summary["n_samples"] == N_SAMPLES

    chunks = sorted(store.dir.glob("chunk-*.json"))
    again = session.evaluate(params)  # nothing left to do: resumes without scoring anything
    assert sorted(store.dir.glob("chunk-*.json")) == chunks
    assert p_yes(again).equals(p_yes(reference))


def test_actors_get_exactly_the_single_process_batches(world, tmp_path):
    """Batches travel pickled: same samples, order and classes (per-image question files too)."""
    images = list(dict.fromkeys(s.image_id for s in data.iter_samples(
        "mimic-cxr", world("x")["data_root"], split="train")))[:3]
    per_image = tmp_path / "questions.jsonl"
    per_image.write_text("".join(json.dumps({
        "image_id": im, "label": "yes", "question": "Is there cardiomegaly?",
        "paraphrases": ["Is the heart enlarged?"]}) + "\n" for im in images))
    for params in (world("rows"), world("rows-per-image", questions=str(per_image))):
        store = records.RecordStore(params["output_dir"], identity.records_key(params))
        expected = planning.batches_to_score(params, store, Counter())
        rows, todo = distributed.batch_rows(expected)
        got = [pickle.loads(r["samples"]) for r in rows]
        assert got == expected and [r["batch_index"] for r in rows] == list(range(len(expected)))
        kinds = [[type(getattr(j, "sample", j)) for b in batches for j in b] for batches in (got, expected)]
        assert kinds[0] == kinds[1]     # Jobs by their sample's class, per-run units by their own
        assert todo == {j.sample_id for b in expected for j in b}
    assert type(got[0][0].sample).__name__ == "QuestionSample"


def test_unreachable_ray_address_fails_at_once_naming_it(world):
    params = world("unreachable", workers=2, ray_address="127.0.0.1:1")
    start = time.perf_counter()
    with pytest.raises(distributed.RayAddressError, match="127.0.0.1:1"):
        session.evaluate(params)
    assert time.perf_counter() - start < 10


def test_bad_address_form_is_named():
    with pytest.raises(distributed.RayAddressError, match="not-an-address"):
        distributed.check_reachable("not-an-address")


def test_sweep_resources_follow_the_params():
    assert distributed.pair_resources({"workers": 1}, gpu_cluster=True) == {"num_gpus": 1, "num_cpus": 1}
    assert distributed.pair_resources({"workers": 1}, gpu_cluster=False) == {"num_cpus": 1}
    assert distributed.pair_resources({"workers": 1, "device": "cpu"}, gpu_cluster=True) == {"num_cpus": 1}
    assert distributed.pair_resources({"workers": 4}, gpu_cluster=True) == {"num_cpus": 0}
