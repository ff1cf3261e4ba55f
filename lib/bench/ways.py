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
  batched separately): the paper's protocol (``paper_protocol``: image prompts + one text-only pass
  per sample);
* ``default_protocol``: what a run of the default params scores for these samples besides its
  references (``lib.protocol.run``): their image prompts, and once per distinct original question
  the text-only pass, the blank image and the null images; its answers are compared with
  ``default_undeduplicated``, the same conditions scored once per SAMPLE (``agreement_dedup``).
  These per-run passes (five image prefixes whatever the run's size) are spread over the run's
  samples, so the protocol rows are timed on ``--protocol-n`` samples (96: a quarter of a
  default test split), against ``paper_protocol``, the engine way on the same samples.
  The references are a per-run cost: ``reference_ms_per_image`` (``--n`` reference images of the
  offline reference set, each with the four findings' original questions) beside
  ``reference_pool`` (the reference images of the pair's run in ``outputs/runs``, when there).

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

from ..protocol import data, engine as engine_module, models, prompts, provenance, questions
from ..protocol.engine import (CONDITION_BLANK, CONDITION_IMAGE, CONDITION_NOISE, CONDITION_REFERENCE,
                               CONDITION_TEXT_ONLY, Engine, Item, paper_items, yes_probability)

DEFAULT_MODELS = ("outputs/default/models/llava-base", "outputs/default/models/gemma3-base")
DEFAULT_DATA = "outputs/default/data"
TARGET_SPEEDUP = 30.0
ANSWER = re.compile(r"^\W*(yes|no)", re.IGNORECASE)
WAYS = ("naive", "forward_bs1", "engine")
PROTOCOL_WAYS = ("paper_protocol", "default_protocol", "default_undeduplicated")


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
    """The paper's protocol through the engine: each sample's prompts with its image, and its
    original question without (``paper_items``)."""
    engine = engine or Engine(lm, batch_size=batch_size)
    return {(r["sample_id"], r["prompt_id"], r["condition"]): {"p_yes": r["p_yes"],
                                                                "yes_no_mass": r.get("yes_no_mass")}
            for r in engine.score(paper_items(items))}


def per_question_items(items: list[Item], seed: int = 0) -> list[Item]:
    """The default protocol's per-run items for these samples: every distinct original question
    without the image, with the blank image and with each null image (lib.protocol.run.run_units)."""
    questions_ = tuple(sorted({it.prompts[0] for it in items}))
    nulls = engine_module.null_images(seed)
    return ([Item("text_only", None, questions_, CONDITION_TEXT_ONLY),
             Item("blank", engine_module.blank_image(), questions_, CONDITION_BLANK)]
            + [Item(f"noise:{j}", image, questions_, CONDITION_NOISE) for j, image in enumerate(nulls)])


def per_sample_items(items: list[Item], seed: int = 0) -> list[Item]:
    """The same conditions scored once per sample (the undeduplicated path)."""
    nulls = engine_module.null_images(seed)
    return (paper_items(items)
            + [Item(it.sample_id, engine_module.blank_image(), it.prompts[:1], CONDITION_BLANK) for it in items]
            + [Item(f"{it.sample_id}|noise:{j}", image, it.prompts[:1], CONDITION_NOISE)
               for it in items for j, image in enumerate(nulls)])


def protocol_answers(rows: list[dict], items: list[Item]) -> dict:
    """(sample_id, condition) -> answer of each sample's original question under text_only, blank
    and noise (mean p_yes over the null images), from per-question or per-sample rows."""
    by_question, by_sample = {}, {}
    for r in rows:
        sample = str(r["sample_id"]).split("|")[0]
        if r["condition"] in (CONDITION_TEXT_ONLY, CONDITION_BLANK, CONDITION_NOISE):
            by_question.setdefault((r["condition"], r["prompt"]), []).append(r["p_yes"])
            by_sample.setdefault((sample, r["condition"]), []).append(r["p_yes"])
    out = {}
    for it in items:
        for condition in (CONDITION_TEXT_ONLY, CONDITION_BLANK, CONDITION_NOISE):
            values = by_sample.get((it.sample_id, condition)) or by_question[(condition, it.prompts[0])]
            out[(it.sample_id, condition)] = "yes" if sum(values) / len(values) >= 0.5 else "no"
    return out


def load_references(dataset: str, root, n: int) -> list[Item]:
    """n reference images (frontal, every split of the offline reference set), each with the
    original question of every finding."""
    originals = tuple(questions.prompts_for(f, questions.load_question_sets())[0] for f in data.DEFAULT_FINDINGS)
    seen, out = set(), []
    for sample in data.iter_samples(dataset, root, split=None):
        if sample.image_id in seen:
            continue
        seen.add(sample.image_id)
        image = data.load_image(sample)
        if image is not None:
            out.append(Item(f"reference:{sample.image_id}", image.convert("RGB"), originals, CONDITION_REFERENCE))
        if len(out) == n:
            break
    return out


def reference_pool(model_dir: str, dataset: str, runs_dir: Path = Path("outputs/runs")) -> int | None:
    """The number of reference images the pair's run scored (its summary.json), when there."""
    path = runs_dir / f"{Path(model_dir).name}__{dataset}" / "summary.json"
    if not path.is_file():
        return None
    return ((json.loads(path.read_text()).get("image_blind") or {}).get("n_reference_images"))


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
                repeats: int = 3, references: list[Item] = (), dataset: str = "mimic-cxr",
                protocol_items: list[Item] | None = None) -> dict:
    lm = models.load_model(model_dir, dtype="float32", device="cpu")
    engine = Engine(lm, batch_size=batch_size)
    protocol_items = protocol_items or items
    ways = {
        "naive": lambda its: naive(lm, its, max_new_tokens),
        "forward_bs1": lambda its: forward_bs1(lm, its),
        "engine": lambda its: engine_way(lm, its, batch_size, engine),
        "paper_protocol": lambda its: engine_way(lm, its, batch_size, engine),
        "default_protocol": lambda its: engine.score(list(its) + per_question_items(its)),
        "default_undeduplicated": lambda its: engine.score(per_sample_items(its)),
    }
    on = {way: protocol_items if way in PROTOCOL_WAYS else items for way in ways}
    timed_ways = list(ways)
    for way in timed_ways:                # warm-up: each way once, on the first sample
        ways[way](items[:1])
    results, walls, cpus = {}, {w: [] for w in timed_ways}, {w: [] for w in timed_ways}
    for _ in range(repeats):              # interleaved, so load changes hit every way alike
        for way in timed_ways:
            results[way], wall, cpu = timed(ways[way], on[way])
            walls[way].append(wall)
            cpus[way].append(cpu)
    seconds = {way: min(walls[way]) for way in timed_ways}
    dedup = protocol_answers(results["default_protocol"], protocol_items)
    undedup = protocol_answers(results["default_undeduplicated"], protocol_items)
    reference_seconds = min(timed(engine.score, list(references))[1] for _ in range(repeats)) if references else None
    keys = list(results["engine"])
    reference = {k: answer(results["engine"][k]) for k in keys}
    agreement = {
        way: sum(answer(results[way][k]) == reference[k] for k in keys) / len(keys)
        for way in WAYS if way != "engine"
    }
    ms = {way: 1000 * seconds[way] / len(on[way]) for way in timed_ways}
    ms_cpu = {way: 1000 * min(cpus[way]) / len(on[way]) for way in timed_ways}
    naive_answers = [results["naive"][k]["answer"] for k in keys]
    return {
        "model": model_dir,
        "n_samples": len(items),
        "n_protocol_samples": len(protocol_items),
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
        "default_vs_paper_protocol": ms["default_protocol"] / ms["paper_protocol"],
        "agreement_dedup": sum(dedup[k] == undedup[k] for k in dedup) / len(dedup),
        "reference_ms_per_image": 1000 * reference_seconds / len(references) if references else None,
        "reference_images_timed": len(references),
        "reference_pool": reference_pool(model_dir, dataset),
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
             f"{'agree naive':>13}{'agree fwd':>11}{'default':>9}{'ratio':>7}{'ref/img':>9}"
             f"   ms per sample, {report['n_samples']} samples"]
    for name, r in report["models"].items():
        ms, agree = r["ms_per_sample"], r["agreement"]
        ref = r["reference_ms_per_image"]
        lines.append(f"{name:<14}{ms['naive']:>10.1f}{ms['forward_bs1']:>10.1f}{ms['engine']:>10.2f}"
                     f"{r['speedup_vs_naive']:>8.1f}x{agree['naive']:>13.3f}{agree['forward_bs1']:>11.3f}"
                     f"{ms['default_protocol']:>9.2f}{r['default_vs_paper_protocol']:>6.2f}x"
                     f"{(ref if ref is not None else float('nan')):>9.2f}")
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
    parser.add_argument("--protocol-n", type=int, default=96,
                        help="samples the protocol rows are timed on (the per-run passes are spread over them)")
    parser.add_argument("--references", type=int, default=24,
                        help="reference images of the offline reference set to time (0: none)")
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
    protocol_items = load_items(args.dataset, data_root, max(args.n, args.protocol_n), args.split)
    items = protocol_items[:args.n]
    reference_root = Path(DEFAULT_DATA) / "references" / args.dataset
    refs = load_references(args.dataset, reference_root, args.references) \
        if args.references and reference_root.is_dir() else []
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
            model_dir, items, args.batch_size, args.max_new_tokens, args.repeats, refs, args.dataset,
            protocol_items[:args.protocol_n])
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
