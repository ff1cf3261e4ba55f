"""Scale-out on Ray: one pair across many workers, many pairs at once (optional; `requirements-ray.txt`).

One pair across workers (`RayScorer`, a `lib.protocol.run.Scorer` that `lib.front.session` picks
when params `workers` > 1 or `ray_address` is set): the driver hands the pair's samples that the
record store does not hold yet, cut into exactly the batches of the single-process path,
into a Ray Data pipeline; an actor pool (`workers` actors, one GPU each where the cluster has
GPUs, else one CPU each) loads the model ONCE per actor and runs the per-batch logic of the
single-process path (`lib.protocol.run.load_items`, then `score_batch`: `Engine.score`, one atomic
chunk per batch in the run's `RecordStore`; an actor reads its batch's images itself, without the
single-process path's background prefetch, since Ray Data hands it one batch per call). So the
records are the very rows of a single-process run, a lost actor loses only the batches it had
not written yet (Ray restarts it and retries its block; a batch written twice is deduplicated by
key), and a rerun after a crash computes only what no chunk holds. `output_dir`, `data_root` and
the model must be on a filesystem every Ray node sees (the usual shared filesystem of a cluster);
a run whose chunks are not visible to the driver fails with a message saying so.

Many pairs at once (`sweep`, `make sweep`): every params file's `evaluate.ipynb` is run by
papermill as one Ray task with the resources of its params, then `analysis.ipynb` on the driver.

`bench_workers` measures the same pair with 1 and 2 local workers (samples/s, peak RSS per
worker) in one local cluster.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import pickle
import resource
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..protocol import config, data, identity, models, planning, provenance, records, run

REPO_ROOT = Path(__file__).resolve().parent.parent
INSTALL_HINT = "install the optional Ray extra: pip install -r requirements-ray.txt"
# Environment forwarded from the driver to every Ray worker (offline hub, deterministic hashing).
FORWARDED_ENV = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HOME", "HF_HUB_CACHE",
                 "TOKENIZERS_PARALLELISM", "PYTHONHASHSEED", "MPLBACKEND")
# Paths in params are relative to the repository root; actors run elsewhere, so they get them absolute.
PATH_KEYS = ("model", "adapter", "data_root", "questions", "output_dir")
CONNECT_TIMEOUT_S = 3.0
# At most this many Ray Data blocks; one block holds one or more whole batches.
MAX_BLOCKS = 4096


class RayAddressError(ConnectionError):
    """`ray_address` names no reachable Ray cluster; the message names the address."""


def import_ray():
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as err:
        raise ImportError(f"params 'workers' > 1 or 'ray_address' need Ray; {INSTALL_HINT}") from err
    return ray


# -- the cluster ---------------------------------------------------------------------------------

def check_reachable(address: str | None, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """Fail at once (within `timeout` s) unless `address` (host:port or ray://host:port) answers.

    `ray.init` itself may retry a dead GCS address for a minute or more; a plain TCP connect
    tells within seconds. `None`, "local" and "auto" are left to Ray.
    """
    if not address or address in ("local", "auto"):
        return
    target = address.split("://", 1)[-1].rstrip("/")
    host, _, port = target.rpartition(":")
    host = host.strip("[]")
    if not host or not port.isdigit():
        raise RayAddressError(f"ray_address {address!r} is not of the form host:port or ray://host:port")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as err:
        raise RayAddressError(
            f"no Ray cluster answers at ray_address {address!r} ({err.strerror or err}); start one "
            f"there with `ray start --head --port={port}` or fix the params key 'ray_address'"
        ) from None


def worker_env() -> dict:
    env = {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}
    env.setdefault("HF_HUB_OFFLINE", "1")
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return env


def send_auth_token() -> None:
    """Present the cluster's auth token when this machine has one.

    `ray start --head` enables token authentication and writes ~/.ray/auth_token, but a driver
    that joins it with RAY_AUTH_MODE unset does not send the token and is refused after ~20 s of
    retries. This is what Ray itself does before starting a local cluster.
    """
    if "RAY_AUTH_MODE" in os.environ:
        return
    try:
        from ray._private.authentication.authentication_token_setup import (
            maybe_enable_token_auth_if_token_available)
    except ImportError:
        return
    maybe_enable_token_auth_if_token_available(warn_if_disabled=False)


@contextlib.contextmanager
def ray_cluster(address: str | None = None, num_cpus: int | None = None):
    """Join the cluster at `address`, else start a local one (shut down again on exit).

    An already initialised Ray (a notebook that called `ray.init`, the test fixture) is reused
    as it is and left running.
    """
    ray = import_ray()
    check_reachable(address)
    if ray.is_initialized():
        yield ray
        return
    kwargs = {"runtime_env": {"env_vars": worker_env()}, "log_to_driver": False}
    if address:
        send_auth_token()
        try:
            ray.init(address=address, **kwargs)
        except ConnectionError as err:
            raise RayAddressError(
                f"could not join the Ray cluster at ray_address {address!r}: {err}. If the cluster "
                f"uses token authentication (the default of `ray start`), this machine needs its "
                f"token: ~/.ray/auth_token, RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH") from err
    else:
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, **kwargs)
    try:
        yield ray
    finally:
        ray.shutdown()


def use_gpus(ray, params: dict) -> bool:
    return params.get("device", "auto") != "cpu" and ray.cluster_resources().get("GPU", 0) >= 1


def local_cpus(workers: int, gpu: bool) -> int:
    """CPUs of a local cluster: one per CPU actor; all local cores when the actors use GPUs."""
    return max(int(workers), 1) if not gpu else max(int(workers), os.cpu_count() or 1)


# -- one pair across workers -------------------------------------------------------------------

def actor_params(params: dict) -> dict:
    """The params as the actors see them: local paths made absolute, a device Ray assigns."""
    out = dict(params)
    for key in PATH_KEYS:
        value = out.get(key)
        if value and Path(value).exists():
            out[key] = str(Path(value).resolve())
    if str(out.get("device", "auto")).startswith("cuda"):
        out["device"] = "cuda"  # Ray sets CUDA_VISIBLE_DEVICES to the actor's own GPU
    return out


def peak_rss_mb() -> float:
    """Peak resident memory of this process, MiB (Linux reports KiB)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 1024 if sys.platform != "darwin" else rss / 2**20


class BatchScorer:
    """Ray Data actor: loads the model once, then scores and writes one batch per input row."""

    def __init__(self, params: dict, store_dir: str):
        if not torch.cuda.is_available() or params.get("device") == "cpu":
            torch.set_num_threads(1)
        provenance.seed_everything(params["seed"])
        start = time.perf_counter()
        self.engine = run.load_engine(params)
        self.lm = self.engine.lm
        self.load_s = time.perf_counter() - start
        store_dir = Path(store_dir)
        self.store = records.RecordStore(store_dir.parent.parent, store_dir.name)
        self.params = params
        self.pid = os.getpid()
        self.node = socket.gethostname()

    def __call__(self, rows: dict) -> dict:
        out = {k: [] for k in ("batch_index", "n_samples", "n_scored", "start", "end", "pid", "node",
                               "peak_rss_mb", "model_load_s", "mode", "fallback_reason",
                               "device", "dtype")}
        for index, blob in zip(rows["batch_index"], rows["samples"]):
            batch = pickle.loads(blob)  # run.Job list
            start = time.time()
            loaded = run.load_items(batch, self.params["max_image_pixels"])
            n = run.score_batch(self.engine, self.store, batch, loaded)
            values = (int(index), len(batch), n, start, time.time(), self.pid, self.node,
                      peak_rss_mb(), self.load_s, self.engine.mode,
                      self.engine.fallback_reason or "", str(self.lm.device), str(self.lm.dtype))
            for key, value in zip(out, values):
                out[key].append(value)
        return out


def batch_rows(batches) -> tuple[list[dict], set[str]]:
    """One row per batch of the single-process path (same samples, same order, same sample
    classes: the batch is pickled), and the ids of all samples to do."""
    rows, todo = [], set()
    for i, batch in enumerate(batches):
        rows.append({"batch_index": i, "samples": pickle.dumps(batch)})
        todo.update(job.sample_id for job in batch)
    return rows, todo


class RayScorer:
    """A `lib.protocol.run.Scorer` on a Ray actor pool (see the module docstring)."""

    def __call__(self, params, store, batches) -> dict:
        return score_with_ray(params, store, batches)


def score_with_ray(params: dict, store, batches) -> dict:
    """Score the batches on a Ray actor pool; returns the run's engine info.

    The returned dict has the keys of the single-process engine info (mode, fallback_reason,
    samples_per_second, device, dtype) plus workers, ray_address, model_load_s,
    peak_rss_mb_per_worker and per_worker.
    """
    workers = max(int(params.get("workers") or 1), 1)
    address = params.get("ray_address") or None
    import_ray()
    check_reachable(address)  # before anything else: a wrong address fails within seconds
    rows, todo = batch_rows(batches)
    device = models.resolve_device(params["device"]) if params["device"] != "auto" else None
    info = {"mode": "prefix_sharing" if params["prefix_sharing"] else "batched",
            "fallback_reason": None if params["prefix_sharing"] else "prefix_sharing disabled by params",
            "samples_per_second": 0.0, "device": str(device or "n/a"), "dtype": params["dtype"],
            "workers": workers, "ray_address": address, "model_load_s": None,
            "peak_rss_mb_per_worker": None, "per_worker": {}}
    if not rows:
        return info

    local_gpu = torch.cuda.is_available() and params["device"] != "cpu"
    with ray_cluster(address, num_cpus=local_cpus(workers, local_gpu)) as ray:
        gpu = use_gpus(ray, params)
        if gpu and ray.cluster_resources().get("GPU", 0) < workers:
            raise ValueError(f"workers={workers} GPU actors need {workers} GPUs; the Ray cluster has "
                             f"{ray.cluster_resources().get('GPU', 0):g}; lower params 'workers'")
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
        ctx.print_on_execution_start = False
        resources = {"num_gpus": 1} if gpu else {"num_cpus": 1}
        blocks = min(len(rows), MAX_BLOCKS)
        ds = ray.data.from_items(rows, override_num_blocks=blocks).map_batches(
            BatchScorer, batch_size=1, compute=ray.data.ActorPoolStrategy(size=workers),
            fn_constructor_kwargs={"params": actor_params(params),
                                   "store_dir": str(store.dir.resolve())},
            **resources,
        )  # Ray Data restarts a lost actor and retries its unfinished blocks (its defaults)
        start, wall_start, n_scored, results = time.perf_counter(), time.time(), 0, []
        with tqdm(total=len(todo), desc=f"{params['config']}__{params['dataset']} ({workers} workers)",
                  unit="sample") as bar:
            for row in ds.iter_rows():
                results.append(row)
                n_scored += row["n_scored"]
                bar.update(row["n_samples"])
        elapsed = time.perf_counter() - start

    missing = todo - set(store.index())
    if missing:
        raise RuntimeError(
            f"{len(missing)} samples were scored by Ray workers but no chunk of theirs is in "
            f"{store.dir}: params 'output_dir' must be on a filesystem that every Ray node shares")
    per_worker = {}
    for r in results:
        w = per_worker.setdefault(f"{r['node']}:{r['pid']}", {"batches": 0, "samples": 0})
        w["batches"] += 1
        w["samples"] += r["n_scored"]
        w["model_load_s"] = r["model_load_s"]
        w["peak_rss_mb"] = max(w.get("peak_rss_mb", 0.0), r["peak_rss_mb"])
        w["busy_s"] = w.get("busy_s", 0.0) + r["end"] - r["start"]
    first = min(results, key=lambda r: r["batch_index"])
    span = max(r["end"] for r in results) - min(r["start"] for r in results)
    info.update(
        mode=first["mode"], fallback_reason=first["fallback_reason"] or None,
        device=first["device"], dtype=first["dtype"],
        samples_per_second=n_scored / elapsed if n_scored and elapsed > 0 else 0.0,
        steady_samples_per_second=n_scored / span if n_scored and span > 0 else 0.0,
        scoring_samples_per_second=sum(w["samples"] / w["busy_s"] for w in per_worker.values()
                                       if w["busy_s"] > 0),
        model_load_s=max(w["model_load_s"] for w in per_worker.values()),
        peak_rss_mb_per_worker=max(w["peak_rss_mb"] for w in per_worker.values()),
        per_worker=per_worker, wall_s=elapsed, n_scored=n_scored,
        startup_s=min(r["start"] for r in results) - wall_start,
    )
    return info


# -- throughput of 1 vs 2 local workers ------------------------------------------------------------

def bench_workers(params: dict, workers=(1, 2)) -> list[dict]:
    """The same pair scored from scratch with each number of local workers, in one local cluster.

    `params` is a validated params dict (`lib.protocol.config.load`); its output_dir is replaced by a
    temporary directory per row, so nothing resumes and nothing is left behind. Returns one dict
    per entry of `workers`: workers, samples, wall_s, samples_per_s (end to end: actor start and
    model load included, cluster start excluded), steady_samples_per_s (first batch start to last
    batch end), scoring_samples_per_s (sum over actors of samples / time inside their batches:
    the pool's scoring capacity, startup and idle excluded), startup_s (dataset start to the first batch: actor process, imports, model load),
    model_load_s (slowest actor's load_model), batches_per_worker (how the batches were shared),
    peak_rss_mb_per_worker (largest actor), device.
    """
    rows = []
    gpu = torch.cuda.is_available() and params["device"] != "cpu"
    with ray_cluster(None, num_cpus=local_cpus(max(workers), gpu)):
        for n in workers:
            with tempfile.TemporaryDirectory(prefix="bench-workers-") as tmp:
                run_params = {**params, "workers": n, "ray_address": None, "output_dir": tmp}
                store = records.RecordStore(tmp, identity.records_key(run_params))
                work = planning.plan(run_params, store, data.Skips()).todo
                start = time.perf_counter()
                info = score_with_ray(run_params, store, run.batched(work, params["batch_size"]))
                wall = time.perf_counter() - start
            rows.append({
                "workers": n, "samples": info.get("n_scored", 0), "wall_s": round(wall, 2),
                "samples_per_s": round(info.get("n_scored", 0) / wall, 2) if wall > 0 else 0.0,
                "steady_samples_per_s": round(info.get("steady_samples_per_second", 0.0), 2),
                "scoring_samples_per_s": round(info.get("scoring_samples_per_second", 0.0), 2),
                "startup_s": round(info.get("startup_s", 0.0), 2),
                "model_load_s": round(info["model_load_s"] or 0.0, 2),
                "batches_per_worker": sorted((w["batches"] for w in info["per_worker"].values()),
                                             reverse=True),
                "peak_rss_mb_per_worker": round(info["peak_rss_mb_per_worker"] or 0.0, 1),
                "device": info["device"],
            })
    return rows


# -- many pairs at once ----------------------------------------------------------------------------

def pair_resources(params: dict, gpu_cluster: bool) -> dict:
    """Ray resources of one pair's task: one GPU (else one CPU); a pair with workers > 1 is
    only the driver of its own actor pool, which asks for the GPUs itself."""
    if int(params.get("workers") or 1) > 1:
        return {"num_cpus": 0}
    if gpu_cluster and params.get("device", "auto") != "cpu":
        return {"num_gpus": 1, "num_cpus": 1}
    return {"num_cpus": 1}


def _run_notebook(cmd: list[str], cwd: str, env: dict) -> dict:
    """Body of a sweep task: one papermill run; fails with the tail of its output."""
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "papermill", *cmd], cwd=cwd,
                          env={**os.environ, **env}, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stdout + proc.stderr)[-3000:]
        raise RuntimeError(f"papermill {' '.join(cmd[:2])} failed (exit {proc.returncode}):\n{tail}")
    return {"output_notebook": cmd[1], "wall_s": round(time.perf_counter() - start, 1),
            "node": socket.gethostname()}


def sweep(params_files, ray_address: str | None = None, runs_dir: str = "outputs/runs",
          analysis_dir: str | None = "outputs/analysis") -> dict:
    """Run every pair's evaluate notebook as one Ray task, then the analysis notebook.

    Like the Makefile: `papermill notebooks/evaluate.ipynb <runs_dir>/<pair>/evaluate.ipynb
    -p params_file params/<pair>.yaml` (the folder claimed first, `records.claim_output_dir`:
    papermill writes into it before the notebook validates), one task per params file with the
    resources of `pair_resources`, all at once (Ray queues what does not fit). Paths are relative
    to the repository root. Pairs that fail are listed together after the others have finished;
    the analysis runs only when all succeeded (skip it with analysis_dir=None). Returns
    {"pairs": {pair: task result}, "analysis": path or None}.
    """
    files = [Path(f) for f in params_files]
    if not files:
        raise ValueError("sweep: no params files given")
    with contextlib.chdir(REPO_ROOT):
        loaded = {f.stem: (f, config.load(f)) for f in files}
    env = worker_env()
    with ray_cluster(ray_address) as ray:
        gpu_cluster = ray.cluster_resources().get("GPU", 0) >= 1
        gcs = ray.get_runtime_context().gcs_address
        task = ray.remote(_run_notebook)
        refs = {}
        for pair, (path, params) in loaded.items():
            out = Path(runs_dir) / pair / "evaluate.ipynb"
            records.claim_output_dir(REPO_ROOT / out.parent)
            cmd = ["notebooks/evaluate.ipynb", str(out),
                   "-p", "params_file", str(path), "--log-level", "WARNING"]
            if int(params.get("workers") or 1) > 1:
                cmd += ["-p", "ray_address", gcs]  # its actor pool joins this cluster
            refs[pair] = task.options(**pair_resources(params, gpu_cluster)).remote(
                cmd, str(REPO_ROOT), env)
        results, failures = {}, {}
        pending = {ref: pair for pair, ref in refs.items()}
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            pair = pending.pop(done[0])
            try:
                results[pair] = ray.get(done[0])
                print(f"sweep: {pair} done in {results[pair]['wall_s']} s", flush=True)
            except Exception as err:  # noqa: BLE001 - reported together below
                failures[pair] = err
                print(f"sweep: {pair} FAILED", flush=True)
    if failures:
        raise RuntimeError(f"sweep: {len(failures)} of {len(files)} pairs failed: " + "; ".join(
            f"{pair}: {err}" for pair, err in failures.items()))
    analysis = None
    if analysis_dir:
        out = Path(analysis_dir) / "analysis.ipynb"
        (REPO_ROOT / out.parent).mkdir(parents=True, exist_ok=True)
        _run_notebook(["notebooks/analysis.ipynb", str(out), "--log-level", "WARNING",
                       "-p", "runs_dir", runs_dir, "-p", "analysis_dir", analysis_dir],
                      str(REPO_ROOT), env)
        analysis = str(out)
    return {"pairs": results, "analysis": analysis}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lib.scale.ray_scorer", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("sweep", help="every params file as a Ray task, then the analysis")
    s.add_argument("params_files", nargs="+")
    s.add_argument("--address", default=os.environ.get("RAY_ADDRESS") or None,
                   help="join this Ray cluster (default: $RAY_ADDRESS, else a local one)")
    s.add_argument("--runs-dir", default="outputs/runs")
    s.add_argument("--analysis-dir", default="outputs/analysis")
    b = sub.add_parser("bench", help="one pair with 1 and 2 local workers")
    b.add_argument("params_file")
    b.add_argument("--workers", default="1,2")
    b.add_argument("--limit", type=int, default=None)
    args = parser.parse_args(argv)
    if args.command == "sweep":
        result = sweep(args.params_files, args.address, args.runs_dir, args.analysis_dir)
    else:
        params = config.load(args.params_file)
        if args.limit is not None:
            params["limit"] = args.limit
        result = bench_workers(params, tuple(int(w) for w in args.workers.split(",")))
    print(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
