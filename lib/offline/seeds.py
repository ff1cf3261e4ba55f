"""`make seeds`: the whole offline world for several seeds, and the spread of its headline numbers.

For each seed: build the default world (`notebooks/build_default.ipynb`, `out_root` =
`<out>/<seed>/default`), train every adapter of `params/lora/*.yaml`, evaluate every pair of
`params/*.yaml` and run the analysis, all with the seed's paths (each params file is rewritten
into `<out>/<seed>/params/`, `outputs/default` replaced by the seed's build, `seed` set). A step
whose output exists is skipped (delete `<out>/<seed>` to redo one). Then, from the outputs only:

* `<out>/seeds.csv`: one row per (seed, pair): flip rate, Dangerous and image-blind fractions,
  the truly-ignored rate and the ground-truth precision / recall of the paper's measure and the
  Dangerous quadrant (`summary.json` `ground_truth`), the image-blind rate's interval, its twin
  truth and whether the interval covers it, balanced accuracy;
* `<out>/correlations.csv`: one row per seed: the analysis's flip rate vs Dangerous r (and the
  image-blind one where the analysis writes it);
* `<out>/distribution.json`: for every headline number, its mean, standard deviation, min and max
  over the seeds (per pair, and for r), with the seeds and the commit.

    python -m lib.offline.seeds --seeds 0 1 2 --out outputs/seeds
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

import pandas as pd
import yaml

from ..protocol import breakdown, provenance
from ..protocol.vocabulary import LOCAL_CHECKS, LOCAL_TESTS

DEFAULT_ROOT = "outputs/default"
PAPERMILL = [sys.executable, "-m", "papermill", "--log-level", "WARNING"]
# (column, path into summary.json)
HEADLINES = {
    "flip_rate": ("flip_rate",),
    "balanced_accuracy": ("balanced_accuracy",),
    "dangerous": ("quadrant_fractions", "Dangerous"),
    "image_blind": ("dangerous_breakdown", "image-blind"),
    "ignored_rate": ("ground_truth", "ignored_rate"),
    "paper_precision": ("ground_truth", "paper_measure", "precision"),
    "paper_recall": ("ground_truth", "paper_measure", "recall"),
    "image_blind_low": ("ci95", "dangerous_breakdown", "image-blind", 0),
    "image_blind_high": ("ci95", "dangerous_breakdown", "image-blind", 1),
    "image_blind_truth": ("ground_truth", "image_blind", "truth"),
    "image_blind_covered": ("ground_truth", "image_blind", "covered"),
    "reference_auroc": ("ground_truth", "reference_auroc"),
    "dangerous_precision": ("ground_truth", "dangerous", "precision"),
    "dangerous_recall": ("ground_truth", "dangerous", "recall"),
    **{f"{test}_{k}": ("ground_truth", "local_tests", test, f"n_{k}") for test in LOCAL_TESTS
       for k in ("hits", "predicted", "true", "covered")},
    **{f"{test}_{label}_{k}": ("ground_truth", "local_tests", test, "by_label", label, f"n_{k}")
       for test in LOCAL_TESTS for label in ("yes", "no") for k in ("hits", "predicted", "true", "covered")},
    **{f"{test}_{k}": ("local_tests", test, key) for test in LOCAL_CHECKS
       for k, key in (("change_rate", "change_rate"), ("tested", "n_tested"))},
}
CORRELATIONS = {"r_dangerous": ("pearson_r",), "r_image_blind": ("image_blind", "pearson_r"),
                "independence_r": ("independence_r",)}


def dig(tree, path):
    """tree[path[0]][path[1]]... as a float (`breakdown.lookup`); None where a key is missing or the
    value is not a number."""
    value = breakdown.lookup(tree, *path)
    return float(value) if isinstance(value, (int, float)) else None


def rewrite(values: dict, root: Path, seed: int) -> dict:
    """A params dict with `outputs/default` replaced by `root` in every string value, and the seed."""
    def swap(value):
        if isinstance(value, str) and value.startswith(DEFAULT_ROOT):
            return str(root) + value[len(DEFAULT_ROOT):]
        return value
    return {**{k: swap(v) for k, v in values.items()}, "seed": seed}


def run(command: list[str], one_thread: bool = False) -> None:
    """Run one step; adapters and pairs run torch on one thread, as in `make all` (Makefile
    ONE_THREAD), so a seed's outputs do not depend on how many steps run side by side."""
    print("+", " ".join(command), flush=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"} if one_thread else None
    subprocess.run(command, check=True, env=env, stdout=subprocess.DEVNULL if one_thread else None)


def side_by_side(steps: list, jobs: int) -> None:
    """Independent steps (callables), `jobs` at a time; the first failure stops the seed."""
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        for future in [pool.submit(step) for step in steps]:
            future.result()


def evaluate_pair(params_file: Path, run_dir: Path) -> None:
    """One pair, as `make runs` does (Makefile): the executed notebook is written beside the run's
    folder and moved in when complete, on one thread."""
    notebook = run_dir.with_name(f"{run_dir.name}.partial.ipynb")
    notebook.parent.mkdir(parents=True, exist_ok=True)
    run(PAPERMILL + ["notebooks/evaluate.ipynb", str(notebook), "-p", "params_file", str(params_file),
                     "-p", "output_dir", str(run_dir)], one_thread=True)
    notebook.replace(run_dir / "evaluate.ipynb")


def world(seed: int, out: Path, params_dir: Path = Path("params"), jobs: int = 1) -> Path:
    """Build, fine-tune, evaluate and analyse one seed's world under `<out>/<seed>`; the adapters,
    then the pairs, `jobs` at a time."""
    base = out / str(seed)
    root = base / "default"
    root.mkdir(parents=True, exist_ok=True)
    if not (root / "build_report.json").is_file():
        run(PAPERMILL + ["notebooks/build_default.ipynb", str(root / "build_default.ipynb"),
                         "-p", "out_root", str(root), "-p", "seed", str(seed)])
    adapters, pairs = [], []
    for lora in sorted((params_dir / "lora").glob("*.yaml")):
        spec = rewrite(yaml.safe_load(lora.read_text()), root, seed)
        spec["output_dir"] = str(root / "adapters" / spec["name"])
        if (Path(spec["output_dir"]) / "adapter_config.json").is_file():
            continue
        path = base / "params" / "lora" / lora.name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(spec, sort_keys=False))
        Path(spec["output_dir"]).mkdir(parents=True, exist_ok=True)
        adapters.append(PAPERMILL + ["notebooks/finetune_lora.ipynb",
                                     str(Path(spec["output_dir"]) / "finetune_lora.ipynb"),
                                     "-p", "params_file", str(path)])
    side_by_side([partial(run, c, True) for c in adapters], jobs)
    for pair in sorted(params_dir.glob("*.yaml")):
        run_dir = base / "runs" / pair.stem
        if (run_dir / "summary.json").is_file():
            continue
        path = base / "params" / pair.name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(rewrite(yaml.safe_load(pair.read_text()), root, seed), sort_keys=False))
        pairs.append(partial(evaluate_pair, path, run_dir))
    side_by_side(pairs, jobs)
    analysis = base / "analysis"
    if not (analysis / "correlation.json").is_file():
        analysis.mkdir(parents=True, exist_ok=True)
        run(PAPERMILL + ["notebooks/analysis.ipynb", str(analysis / "analysis.ipynb"),
                         "-p", "runs_dir", str(base / "runs"), "-p", "analysis_dir", str(analysis)])
    return base


def gather(out: Path, seeds) -> dict:
    """seeds.csv, correlations.csv and distribution.json from the seeds' outputs."""
    rows, corr = [], []
    for seed in seeds:
        base = out / str(seed)
        for summary in sorted((base / "runs").glob("*/summary.json")):
            s = json.loads(summary.read_text())
            rows.append({"seed": seed, "pair": summary.parent.name,
                         **{k: dig(s, path) for k, path in HEADLINES.items()}})
        path = base / "analysis" / "correlation.json"
        c = json.loads(path.read_text()) if path.is_file() else {}
        corr.append({"seed": seed, **{k: dig(c, p) for k, p in CORRELATIONS.items()}})
    table, correlations = pd.DataFrame(rows), pd.DataFrame(corr)
    table.to_csv(out / "seeds.csv", index=False)
    correlations.to_csv(out / "correlations.csv", index=False)

    def spread(values: pd.Series) -> dict:
        values = values.dropna()
        return {"n": int(len(values)), "mean": float(values.mean()) if len(values) else None,
                "sd": float(values.std(ddof=1)) if len(values) > 1 else None,
                "min": float(values.min()) if len(values) else None,
                "max": float(values.max()) if len(values) else None}

    result = {
        "seeds": list(seeds),
        "correlations": {k: spread(correlations[k]) for k in CORRELATIONS},
        "pairs": {pair: {k: spread(group[k]) for k in HEADLINES}
                  for pair, group in table.groupby("pair")} if len(table) else {},
        "ignored_rate_span": spread(table.groupby("seed").ignored_rate.agg(lambda x: x.max() - x.min()))
        if len(table) else None,
    }
    result["git_commit"] = provenance.git_commit()
    result["machine"] = provenance.machine()
    (out / "distribution.json").write_text(json.dumps(result, indent=2))
    return result


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--out", default="outputs/seeds")
    parser.add_argument("--gather-only", action="store_true", help="only summarise existing outputs")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1,
                        help="adapters / pairs of a seed run side by side (default: the cores)")
    args = parser.parse_args(argv)
    if len(args.seeds) < 3 and not args.gather_only:
        print(f"note: {len(args.seeds)} seed(s); the spread needs at least 3", file=sys.stderr)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if not args.gather_only:
        for seed in args.seeds:
            world(seed, out, jobs=args.jobs)
    result = gather(out, args.seeds)
    print(json.dumps(result["correlations"], indent=1))
    return result


if __name__ == "__main__":
    main()
