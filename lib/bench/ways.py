"""`make bench`: three ways of scoring the same samples, timed side by side in one run.

On each offline default model (llava-base, gemma3-base) and the SAME samples (the first
`--n` readable samples of the synthetic test split, each with all its built-in paraphrases from
`lib.protocol.questions`, plus the text-only pass of its original question):

* ``naive``: the usual research loop: ``model.generate()`` per prompt at batch 1 (greedy,
  ``--max-new-tokens`` 4 by default: enough for a yes/no answer and its punctuation, and half
  of the 8 used in the GPU anchor of PAPER.md, which only makes the loop look faster), the
  answer parsed from the decoded text: its prefix, case-insensitive, ``yes`` or ``no`` (after
  leading spaces and punctuation; "No." and "nonono" are no); anything else is unparseable and
  counts as a disagreement;
* ``forward_bs1``: one forward per prompt at batch 1 (processor + model, last-position logits
  only), answer read from the yes/no logits with ``lib.protocol.engine.yes_probability``;
* ``engine``: ``lib.protocol.engine.Engine`` at ``--batch-size`` 16 (prefix sharing on, text-only prompts
  batched separately).

Every way runs the processor itself (image preprocessing and tokenisation are timed); images are
read from disk once, before any timing. Each way is warmed up once on the first sample, then
timed over all the samples `--repeats` times (3), the ways interleaved; ``ms_per_sample`` is the
fastest pass (wall clock; the development machine is shared, so the minimum is the least
disturbed), ``cpu_ms_per_sample`` the same in CPU time of the process. The
prediction of a prompt is p_yes >= 0.5 (as in ``lib.protocol.taxonomy``) for the two logit ways.
``agreement`` is the fraction of all prompts (image and text-only) whose prediction equals the
engine's. Torch uses ``--threads`` CPU threads (1 by default: the development machine's 2 cores
are shared, and more threads than free cores make every way slower and noisier).

Writes ``outputs/bench/bench.json`` and prints a table. The target (a benchmark, not a test):
the engine at least 30x faster than the naive loop on CPU.

    python -m lib.bench.ways                          # the defaults below
    python -m lib.bench.ways --models DIR [DIR ...] --dataset padchest --data-root DIR --n 24
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import time
from pathlib import Path

import torch

from ..protocol import data, models, prompts, provenance, questions
from ..protocol.engine import CONDITION_IMAGE, CONDITION_TEXT_ONLY, Engine, Item, yes_probability

DEFAULT_MODELS = ("outputs/default/models/llava-base", "outputs/default/models/gemma3-base")
DEFAULT_DATA = "outputs/default/data"
TARGET_SPEEDUP = 30.0
ANSWER = re.compile(r"^\W*(yes|no)", re.IGNORECASE)
WAYS = ("naive", "forward_bs1", "engine")


def load_items(dataset: str, data_root, n: int, split: str = "test") -> list[Item]:
    """The first n samples of the split whose image can be read, with all built-in prompts."""
    sets = questions.load_question_sets()
    items, images = [], {}
    for sample in data.iter_samples(dataset, data_root, split=split):
        if sample.image_path not in images:
            image = data.load_image(sample)
            images[sample.image_path] = None if image is None else image.convert("RGB")
        if images[sample.image_path] is None:
            continue
        items.append(Item(sample.sample_id, images[sample.image_path],
                          questions.prompts_for(sample.finding, sets)))
        if len(items) == n:
            break
    if len(items) < n:
        raise SystemExit(f"only {len(items)} readable {dataset} {split} samples, {n} asked")
    return items


def jobs_of(items: list[Item]):
    """(key, image or None, question) for every prompt: image prompts, then the text-only pass."""
    for it in items:
        for pid, q in enumerate(it.prompts):
            yield (it.sample_id, pid, CONDITION_IMAGE), it.image, q
        yield (it.sample_id, 0, CONDITION_TEXT_ONLY), None, it.prompts[0]


def encode(lm, image, question: str) -> dict:
    text = prompts.chat_text(lm.processor, question, image is not None)
    kwargs = {"images": [[image]]} if image is not None else {}
    enc = lm.processor(text=[text], return_tensors="pt", **kwargs)
    return {k: v.to(lm.device, dtype=lm.dtype) if v.is_floating_point() else v.to(lm.device)
            for k, v in enc.items() if torch.is_tensor(v)}


def parse_answer(text: str) -> str | None:
    """'yes' / 'no' when the generated text starts with it (any case, after spaces and
    punctuation), None when it starts with anything else."""
    match = ANSWER.match(text)
    return match.group(1).lower() if match else None


@torch.inference_mode()
def naive(lm, items: list[Item], max_new_tokens: int, min_new_tokens: int | None = None) -> dict:
    """generate() per prompt at batch 1 (at least `min_new_tokens` new tokens when given); the
    answer parsed from the decoded text."""
    tokenizer = lm.tokenizer
    out = {}
    for key, image, question in jobs_of(items):
        enc = encode(lm, image, question)
        generated = lm.model.generate(**enc, max_new_tokens=max_new_tokens, min_new_tokens=min_new_tokens,
                                      do_sample=False, num_beams=1, pad_token_id=tokenizer.pad_token_id)
        text = tokenizer.decode(generated[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)
        out[key] = {"answer": parse_answer(text), "text": text}
    return out


@torch.inference_mode()
def forward_bs1(lm, items: list[Item]) -> dict:
    """One forward per prompt at batch 1, reading the yes/no logits."""
    out = {}
    for key, image, question in jobs_of(items):
        logits = lm.model(**encode(lm, image, question), logits_to_keep=1).logits[:, -1, :]
        p_yes, _ = yes_probability(logits, lm.yes_ids, lm.no_ids)
        out[key] = {"p_yes": float(p_yes[0])}
    return out


def engine_way(lm, items: list[Item], batch_size: int, engine: Engine | None = None) -> dict:
    engine = engine or Engine(lm, batch_size=batch_size)
    return {(r["sample_id"], r["prompt_id"], r["condition"]): {"p_yes": r["p_yes"],
                                                                "yes_no_mass": r.get("yes_no_mass")}
            for r in engine.score(items)}


def answer(row: dict) -> str | None:
    """The answer of one way's row: the parsed text (naive), else p_yes >= 0.5."""
    if "answer" in row:
        return row["answer"]
    return "yes" if row["p_yes"] >= 0.5 else "no"


def timed(fn, items) -> tuple[dict, float, float]:
    """(result, wall seconds, CPU seconds of this process) of fn(items)."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn(items)
    return result, time.perf_counter() - wall, time.process_time() - cpu


def bench_model(model_dir: str, items: list[Item], batch_size: int, max_new_tokens: int,
                repeats: int = 3) -> dict:
    lm = models.load_model(model_dir, dtype="float32", device="cpu")
    engine = Engine(lm, batch_size=batch_size)
    ways = {
        "naive": lambda its: naive(lm, its, max_new_tokens),
        "forward_bs1": lambda its: forward_bs1(lm, its),
        "engine": lambda its: engine_way(lm, its, batch_size, engine),
    }
    for way in WAYS:                      # warm-up: each way once, on the first sample
        ways[way](items[:1])
    results, walls, cpus = {}, {w: [] for w in WAYS}, {w: [] for w in WAYS}
    for _ in range(repeats):              # interleaved, so load changes hit every way alike
        for way in WAYS:
            results[way], wall, cpu = timed(ways[way], items)
            walls[way].append(wall)
            cpus[way].append(cpu)
    seconds = {way: min(walls[way]) for way in WAYS}
    keys = list(results["engine"])
    reference = {k: answer(results["engine"][k]) for k in keys}
    agreement = {
        way: sum(answer(results[way][k]) == reference[k] for k in keys) / len(keys)
        for way in WAYS if way != "engine"
    }
    ms = {way: 1000 * seconds[way] / len(items) for way in WAYS}
    ms_cpu = {way: 1000 * min(cpus[way]) / len(items) for way in WAYS}
    naive_answers = [results["naive"][k]["answer"] for k in keys]
    return {
        "model": model_dir,
        "n_samples": len(items),
        "n_prompts": len(keys),
        "n_image_prompts": sum(k[2] == CONDITION_IMAGE for k in keys),
        "n_text_only_prompts": sum(k[2] == CONDITION_TEXT_ONLY for k in keys),
        "ms_per_sample": ms,
        "cpu_ms_per_sample": ms_cpu,
        "wall_seconds_per_repeat": walls,
        "speedup_vs_naive": ms["naive"] / ms["engine"],
        "speedup_vs_naive_cpu": ms_cpu["naive"] / ms_cpu["engine"],
        "speedup_forward_bs1_vs_naive": ms["naive"] / ms["forward_bs1"],
        "target_speedup": TARGET_SPEEDUP,
        "target_met": ms["naive"] / ms["engine"] >= TARGET_SPEEDUP,
        "agreement": agreement,
        "naive_unparseable": sum(a is None for a in naive_answers) / len(keys),
        "naive_agreement_where_parseable": (
            sum(results["naive"][k]["answer"] == reference[k] for k in keys
                if results["naive"][k]["answer"] is not None)
            / max(1, sum(a is not None for a in naive_answers))),
        "naive_answer_examples": sorted({results["naive"][k]["text"] for k in keys})[:5],
        # how much of the next-token distribution the engine's yes/no spellings hold (image prompts)
        "yes_no_mass_median": _median([results["engine"][k]["yes_no_mass"] for k in keys
                                       if k[2] == CONDITION_IMAGE]),
        "max_abs_p_yes_diff_forward_bs1_vs_engine": max(
            abs(results["forward_bs1"][k]["p_yes"] - results["engine"][k]["p_yes"]) for k in keys),
        "engine_mode": engine.mode,
        "engine_fallback_reason": engine.fallback_reason,
        "dtype": str(lm.dtype),
        "device": str(lm.device),
    }


def _median(values) -> float | None:
    values = sorted(v for v in values if v is not None)
    if not values:
        return None
    mid = len(values) // 2
    return float(values[mid]) if len(values) % 2 else float((values[mid - 1] + values[mid]) / 2)


def table(report: dict) -> str:
    lines = [f"{'model':<14}{'naive':>10}{'fwd_bs1':>10}{'engine':>10}{'speedup':>9}"
             f"{'agree naive':>13}{'agree fwd':>11}   ms per sample, {report['n_samples']} samples"]
    for name, r in report["models"].items():
        ms, agree = r["ms_per_sample"], r["agreement"]
        lines.append(f"{name:<14}{ms['naive']:>10.1f}{ms['forward_bs1']:>10.1f}{ms['engine']:>10.2f}"
                     f"{r['speedup_vs_naive']:>8.1f}x{agree['naive']:>13.3f}{agree['forward_bs1']:>11.3f}")
    return "\n".join(lines)


def ray_rows(params_file) -> list[dict] | None:
    """The same pair with 1 and 2 local Ray workers (`lib.scale.ray_scorer.bench_workers`)."""
    from ..protocol import config
    from ..scale import ray_scorer as distributed

    try:
        return distributed.bench_workers(config.load(params_file), workers=(1, 2))
    except ImportError:
        print("ray is not installed (requirements-ray.txt): no workers row")
        return None


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS))
    parser.add_argument("--dataset", default="mimic-cxr", choices=data.DATASETS)
    parser.add_argument("--data-root", default=None,
                        help=f"dataset root (default {DEFAULT_DATA}/<dataset>)")
    parser.add_argument("--split", default="test")
    parser.add_argument("--n", type=int, default=24, help="samples (same ones for every way)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3,
                        help="timed passes per way, interleaved; the fastest counts")
    parser.add_argument("--workers-pair", default="params/llava-base__mimic-cxr.yaml",
                        help="params file scored with 1 and 2 local Ray workers ('' to skip)")
    parser.add_argument("--out", default="outputs/bench/bench.json")
    args = parser.parse_args(argv)

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(args.threads)
    provenance.seed_everything(0)
    data_root = args.data_root or f"{DEFAULT_DATA}/{args.dataset}"
    items = load_items(args.dataset, data_root, args.n, args.split)
    report = {
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "dataset": args.dataset, "data_root": str(data_root), "split": args.split,
        "n_samples": len(items), "batch_size": args.batch_size,
        "max_new_tokens": args.max_new_tokens, "torch_threads": args.threads,
        "repeats": args.repeats,
        "machine": provenance.machine(), "packages": provenance.package_versions(),
        "git_commit": provenance.git_commit(),
        "models": {},
    }
    for model_dir in args.models:
        report["models"][Path(model_dir).name] = bench_model(
            model_dir, items, args.batch_size, args.max_new_tokens, args.repeats)
    if args.workers_pair:
        report["ray_workers"] = ray_rows(args.workers_pair)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(table(report))
    for row in report.get("ray_workers") or []:
        print(f"ray, {row['workers']} local worker(s): {row['samples_per_s']:.1f} samples/s end to end, "
              f"{row['scoring_samples_per_s']:.1f} scoring, peak RSS {row['peak_rss_mb_per_worker']:.0f} MiB/worker")
    print(f"wrote {out}")
    return report


if __name__ == "__main__":
    main()
