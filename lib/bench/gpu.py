"""`make bench GPU=1`: the ways of `lib.bench.ways` at the real models' shapes on one GPU.

On a LLaVA-1.5-7B-shaped and a MedGemma-4B-shaped model with random weights
(`lib.bench.random_models`), the SAME samples (one random image each; `--prompts` 5 image
prompts per sample: the first 5 phrasings of a built-in question set, + the text-only pass of
the original question; `--batch` 16 samples):

* ``naive``: ``ways.naive``, exactly ``--max-new-tokens`` (8) new tokens per prompt, greedy
  (only the first ``--naive-samples`` samples: it is slow);
* ``forward_bs1``: ``ways.forward_bs1``, one forward per prompt at batch 1;
* ``batched``: ``lib.protocol.engine.Engine(prefix_sharing=False)`` (every prompt a full forward, batched);
* ``engine``: ``lib.protocol.engine.Engine`` (image prefix computed once per image, its KV cache shared);
* ``engine_nf4``: the engine with the text Linear layers in bitsandbytes nf4
  (``random_models.quantize_nf4``); skipped cleanly when bitsandbytes is not importable;
* ``floor``: ``lib.bench.floor``: the FLOPs of the work with sharing at the measured matmul rate.

Every way includes the processor (image preprocessing, tokenisation); images are 512 px random
RGB (64 px with ``--tiny``). The image processor is the torchvision-backed class when torchvision
works there, else the PIL class (``--image-processor``; the JSON names the class);
``preprocess_ms_per_sample`` is the engine's share of it alone. Each way is warmed up once, then
timed up to ``--repeats`` times within ``--budget-s`` seconds (CUDA synchronised), the fastest
pass counts. Agreement = fraction of prompts whose answer (``ways.answer``) equals forward_bs1's
(random weights: margins are small, so bf16 noise shows here). ``peak_memory_gib``: the peak
GPU memory of one engine pass, weights included.

Run (one H100/H200; needs the project's transformers, 5.24, for the `cache=` API):

    python -m lib.bench.gpu                              # both models, ~3-5 minutes on an H200
    python -m lib.bench.gpu --models llava --no-nf4      # a subset
    python -m lib.bench.gpu --tiny                       # tiny shapes on CPU, < 1 minute

Writes ``--out`` (outputs/bench/gpu_bench.json; ``--tiny``: gpu_bench_tiny.json) and prints a
table. The measurements committed with the code are in lib/bench/results/ (docs/results.md
shows them).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..protocol import models, questions
from ..protocol.engine import Engine, Item
from . import floor, random_models, ways

TARGETS = {"llava": {"engine_ms": 20.0}, "gemma3": {"engine_ms": 18.0}}
FLOOR_RATIO_TARGET = 1.4
NF4_RATIO_TARGET = 1.25
TABLE_WAYS = ("naive", "forward_bs1", "batched", "engine", "engine_nf4", "floor")


def make_items(n: int, image_px: int, n_prompts: int, samples_per_image: int = 1,
               seed: int = 0) -> list[Item]:
    """n samples, each a random grey-ish image and the first n_prompts phrasings of a question."""
    rng = np.random.default_rng(seed)
    sets = list(questions.BUILTIN_QUESTIONS.values())
    items, image = [], None
    for i in range(n):
        if i % samples_per_image == 0:
            pixels = rng.integers(0, 256, size=(image_px, image_px), dtype=np.uint8)
            image = Image.fromarray(pixels).convert("RGB")
        items.append(Item(f"s{i}", image.copy(), tuple(sets[i % len(sets)][:n_prompts])))
    return items


def timed(fn, items, warmup_items, device, repeats: int, budget_s: float):
    """(result, best seconds, all seconds): warm-up once, then up to `repeats` passes in budget."""
    fn(warmup_items)
    floor.sync(device)
    times, result, start = [], None, time.perf_counter()
    for _ in range(repeats):
        t = time.perf_counter()
        result = fn(items)
        floor.sync(device)
        times.append(time.perf_counter() - t)
        if time.perf_counter() - start + times[-1] > budget_s:
            break
    return result, min(times), times


def preprocess_ms(processor, items) -> float:
    """CPU time of the image preprocessing the engine does for a batch (once per image), per sample."""
    unique = list({it.image.tobytes(): it.image for it in items}.values())
    processor.image_processor(images=unique[:1], return_tensors="pt")
    best = float("inf")
    for _ in range(2):
        t = time.perf_counter()
        processor.image_processor(images=unique, return_tensors="pt")
        best = min(best, time.perf_counter() - t)
    return 1000 * best / len(items)


def peak_memory(fn, device) -> float | None:
    """Peak GPU memory (GiB) while fn() runs, weights included; None off CUDA."""
    if device.type != "cuda":
        fn()
        return None
    random_models.free(device)
    torch.cuda.reset_peak_memory_stats()
    fn()
    floor.sync(device)
    return torch.cuda.max_memory_allocated() / 2**30


def agreement(a: dict, b: dict) -> float | None:
    """Share of the prompts both ways answered on which their answers are equal."""
    keys = [k for k in a if k in b]
    if not keys:
        return None
    return sum(ways.answer(a[k]) == ways.answer(b[k]) for k in keys) / len(keys)


def compare(results: dict, ms: dict, family: str) -> dict:
    """Agreement, p_yes gaps, speed-ups and the targets, from each way's rows and ms per sample."""
    bs1, engine = results["forward_bs1"], results["engine"]
    common = [k for k in engine if k in bs1]
    out = {
        "agreement_vs_forward_bs1": {w: agreement(results[w], bs1) for w in results if w != "forward_bs1"},
        "max_abs_p_yes_diff_engine_vs_forward_bs1": max(abs(engine[k]["p_yes"] - bs1[k]["p_yes"])
                                                        for k in common),
        "mean_abs_margin_p_yes": float(np.mean([abs(bs1[k]["p_yes"] - 0.5) for k in common])),
        "naive_unparseable": (sum(r["answer"] is None for r in results["naive"].values())
                              / max(1, len(results["naive"]))),
        "speedup_vs_naive": {w: ms["naive"] / ms[w] for w in ms if w not in ("naive", "floor")},
        "engine_over_floor": ms["engine"] / ms["floor"],
    }
    target = TARGETS[family]["engine_ms"]
    out["targets"] = {
        "engine_ms_per_sample_max": target, "engine_ms_met": ms["engine"] <= target,
        "engine_over_floor_max": FLOOR_RATIO_TARGET,
        "engine_over_floor_met": out["engine_over_floor"] <= FLOOR_RATIO_TARGET,
    }
    if "engine_nf4" in results:
        out["agreement_nf4_vs_bf16_engine"] = agreement(results["engine_nf4"], engine)
        ratio = ms["engine_nf4"] / ms["engine"]
        out["targets"].update(nf4_over_bf16_max=NF4_RATIO_TARGET, nf4_over_bf16=ratio,
                              nf4_met=ratio <= NF4_RATIO_TARGET)
    return out


def bench_family(family: str, args, device, dtype, rate: float, deadline: float) -> dict:
    """Build one random model, time every way on the same samples, compare them."""
    shapes = random_models.TINY if args.tiny else random_models.SHAPES
    t0 = time.perf_counter()
    model, processor, backend = random_models.build(family, shapes, device, dtype, args.image_processor)
    floor.sync(device)
    build_s = time.perf_counter() - t0
    lm = random_models.loaded(model, processor, device, dtype)
    items = make_items(args.batch, 64 if args.tiny else 512, args.prompts, args.samples_per_image)
    report = {"shape": shapes[family]["name"], "params": sum(p.numel() for p in model.parameters()),
              "build_seconds": build_s, "n_samples": len(items), "image_prompts_per_sample": args.prompts,
              "text_only_per_sample": 1, "batch_size": args.batch, "image_processor": backend}
    report.update(floor.work_flops(lm, items, model.config, family))
    report["preprocess_ms_per_sample"] = preprocess_ms(processor, items)
    ms, seconds, results = {}, {}, {}

    def record(way, fn, its, repeats=args.repeats):
        results[way], best, seconds[way] = timed(fn, its, items[:1], device, repeats, args.budget_s)
        ms[way] = 1000 * best / len(its)
        print(f"  {family:7s} {way:12s} {ms[way]:9.2f} ms/sample  ({len(its)} samples, "
              f"passes {[round(t, 3) for t in seconds[way]]})", flush=True)

    record("naive", lambda its: ways.naive(lm, its, args.max_new_tokens, args.max_new_tokens),
           items[:args.naive_samples], repeats=min(2, args.repeats))
    record("forward_bs1", lambda its: ways.forward_bs1(lm, its), items[:args.bs1_samples])
    batched = Engine(lm, prefix_sharing=False, batch_size=args.batch)
    record("batched", lambda its: ways.engine_way(lm, its, args.batch, batched), items)
    engine = Engine(lm, batch_size=args.batch)
    record("engine", lambda its: ways.engine_way(lm, its, args.batch, engine), items)
    report.update(engine_mode=engine.mode, engine_fallback_reason=engine.fallback_reason)
    memory = {"engine_bf16": peak_memory(lambda: ways.engine_way(lm, items, args.batch, engine), device)}

    if args.nf4 and time.perf_counter() > deadline:
        report["nf4_skipped"] = "deadline reached"
    elif args.nf4:
        try:
            report["nf4_linear_layers"] = random_models.quantize_nf4(model, device, dtype)
        except Exception as err:  # bitsandbytes not importable, or no kernel for this device
            report["nf4_skipped"] = f"{type(err).__name__}: {err}"
            print(f"  {family:7s} nf4 skipped: {report['nf4_skipped']}", flush=True)
        else:
            engine_q = Engine(lm, batch_size=args.batch)
            record("engine_nf4", lambda its: ways.engine_way(lm, its, args.batch, engine_q), items)
            memory["engine_nf4"] = peak_memory(lambda: ways.engine_way(lm, items, args.batch, engine_q),
                                               device)

    ms["floor"] = 1000 * report["flops_per_sample_shared"] / rate
    report.update(ms_per_sample=ms, seconds_per_pass=seconds, peak_memory_gib=memory)
    report.update(compare(results, ms, family))
    del engine, batched, lm, model
    random_models.free(device)
    return report


def table(report: dict) -> str:
    head = f"{'model':22s}" + "".join(f"{w:>12s}" for w in TABLE_WAYS) + f"{'agree':>8s}{'mem bf16/nf4 GiB':>20s}"
    lines = [f"ms per sample on {report['device']}", head]
    for r in report["models"].values():
        ms = r["ms_per_sample"]
        cells = "".join(f"{ms[w]:12.2f}" if w in ms else f"{'-':>12s}" for w in TABLE_WAYS)
        agree = r["agreement_vs_forward_bs1"].get("engine")
        mem = r["peak_memory_gib"]
        mem_s = "/".join("-" if mem.get(k) is None else f"{mem[k]:.1f}" for k in ("engine_bf16", "engine_nf4"))
        lines.append(f"{r['shape']:22s}{cells}{agree:8.3f}{mem_s:>20s}")
    lines.append(f"matmul rate: {report['matmul_tflops']:.1f} TFLOP/s "
                 f"({report['matmul_n']}^3 {report['dtype']})")
    return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m lib.bench.gpu", description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="tiny shapes (a CPU test of the module)")
    parser.add_argument("--models", default="llava,gemma3")
    parser.add_argument("--batch", type=int, default=16, help="samples per batch (and measured)")
    parser.add_argument("--prompts", type=int, default=5, help="image prompts per sample")
    parser.add_argument("--samples-per-image", type=int, default=1)
    parser.add_argument("--naive-samples", type=int, default=None, help="3 (--tiny: 2)")
    parser.add_argument("--bs1-samples", type=int, default=None, help="16 (--tiny: 8)")
    parser.add_argument("--max-new-tokens", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=None, help="3 (--tiny: 2)")
    parser.add_argument("--budget-s", type=float, default=None, help="time box per way: 25 (--tiny: 8)")
    parser.add_argument("--no-nf4", dest="nf4", action="store_false")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--image-processor", default="auto", choices=("auto", "torchvision", "pil"))
    parser.add_argument("--deadline-s", type=float, default=320.0,
                        help="skip what is left (nf4, next model) after this many seconds")
    parser.add_argument("--out", default=None, help="JSON path (default outputs/bench/gpu_bench.json)")
    args = parser.parse_args(argv)
    defaults = {"naive_samples": (3, 2), "bs1_samples": (16, 8), "repeats": (3, 2), "budget_s": (25.0, 8.0)}
    for key, (full, tiny) in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, tiny if args.tiny else full)
    if args.out is None:
        args.out = f"outputs/bench/gpu_bench{'_tiny' if args.tiny else ''}.json"
    return args


def versions() -> dict:
    import transformers

    try:
        import bitsandbytes
        bnb = bitsandbytes.__version__
    except Exception:
        bnb = None
    return {"torch": torch.__version__, "transformers": transformers.__version__,
            "cuda": torch.version.cuda, "python": platform.python_version(), "bitsandbytes": bnb}


def main(argv=None) -> dict:
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    random_models.check_versions()
    start = time.perf_counter()
    deadline = start + args.deadline_s
    device = models.resolve_device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    if device.type != "cuda" and not args.tiny:
        raise SystemExit("no CUDA device: the full shapes need a GPU (use --tiny to test on CPU)")
    torch.manual_seed(0)
    n = 1024 if args.tiny else 8192
    rate = floor.matmul_rate(device, dtype, n)
    print(f"matmul {n}^3 {dtype}: {rate / 1e12:.1f} TFLOP/s", flush=True)
    report = {
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": torch.cuda.get_device_name(0) if device.type == "cuda" else platform.processor() or "cpu",
        "tiny": args.tiny, "dtype": str(dtype).replace("torch.", ""),
        "matmul_n": n, "matmul_tflops": rate / 1e12, "versions": versions(),
        "settings": {k: v for k, v in vars(args).items() if k != "out"},
        "models": {},
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    for family in [f.strip() for f in args.models.split(",") if f.strip()]:
        if time.perf_counter() > deadline:
            report.setdefault("models_skipped", []).append(family)
            print(f"{family}: skipped, deadline reached", flush=True)
            continue
        print(f"{family}: building and measuring", flush=True)
        report["models"][family] = bench_family(family, args, device, dtype, rate, deadline)
        report["total_seconds"] = time.perf_counter() - start
        out.write_text(json.dumps(report, indent=2))      # partial results survive a timeout
    report["total_seconds"] = time.perf_counter() - start
    out.write_text(json.dumps(report, indent=2))
    print(table(report))
    print(f"wrote {out} in {report['total_seconds']:.0f} s")
    return report


if __name__ == "__main__":
    main()
