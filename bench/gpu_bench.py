"""One GPU run: naive generate() vs one forward per prompt vs plain batching vs the engine.

Builds, with random weights (no download, no hub), a LLaVA-1.5-7B-shaped model
(LlavaForConditionalGeneration: CLIP ViT-L/14 at 336 px + Llama-2-7B text, vocab 32064) and a
MedGemma-4B-shaped model (Gemma3ForConditionalGeneration: SigLIP so400m at 896 px, 256 image
tokens + Gemma3-4B text, vocab 262208, tied embeddings) directly on CUDA in bf16 (allocation under
`torch.device`, transformers' weight init skipped, one `normal_(0, 0.02)` pass over the weights,
norms set to identity). The processor is the real processor class with a byte-level BPE tokenizer
trained here on the built-in questions; its vocabulary is small (320) so that the questions are
~20 tokens long like with the real tokenizers, and every id is below the model's vocab size.

Per model, on the SAME samples (one random image each; 5 image prompts per sample: the first 5
phrasings of a built-in question set, + the text-only pass of the original question; 16 samples
per batch):

* ``naive``: ``generate()`` per prompt at batch 1, exactly ``--max-new-tokens`` (8) new tokens,
  greedy, the answer parsed from the text (only the first ``--naive-samples`` samples: it is slow);
* ``forward_bs1``: one forward per prompt at batch 1, yes/no read from the last logits;
* ``batched``: ``lib.protocol.engine.Engine(prefix_sharing=False)`` (every prompt a full forward, batched);
* ``engine``: ``lib.protocol.engine.Engine`` (image prefix computed once per image, its KV cache shared);
* ``engine_nf4``: the engine on the same model with its text Linear layers replaced by
  bitsandbytes nf4 (double quantisation, bf16 compute; vision tower, projector and lm_head kept in
  bf16 as in ``lib.protocol.models``); skipped cleanly when bitsandbytes is not importable;
* ``floor``: the matmul FLOPs of the work with sharing (vision tower once per image, prefix once
  per image, question suffixes, text-only prompts, one lm_head row per prompt, attention
  included) at the matmul rate measured with an 8192^3 bf16 matmul.

Every way includes the processor (image preprocessing, tokenisation); images are 512 px random
RGB. The image processor is the torchvision-backed class when torchvision works there, else the
PIL class (``--image-processor``; the JSON names the class): at 896 px the PIL one costs tens of
ms per image on the CPU, which the engine pays once per image; ``preprocess_ms_per_sample`` is
that cost alone (the engine's share of it). Each way is warmed up once, then
timed up to ``--repeats`` times within ``--budget-s`` seconds (CUDA synchronised), the fastest
pass counts. Agreement = fraction of prompts whose prediction (p_yes >= 0.5; parsed text for
naive) equals forward_bs1's (random weights: margins are small, so bf16 noise shows here).

Run (one H100/H200; needs the project's transformers, 5.24, for the `cache=` API):

    OUT=/path/to/dir python bench/gpu_bench.py            # both models, ~3-5 minutes on an H200
    python bench/gpu_bench.py --models llava --no-nf4     # a subset
    python bench/gpu_bench.py --tiny                      # tiny shapes on CPU, < 1 minute

from the repository root (it imports `lib`). Writes $OUT/gpu_bench.json (OUT defaults to
./outputs/bench; `--tiny` writes gpu_bench_tiny.json) and prints a table.
"""
from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from lib.offline import default_models  # noqa: E402
from lib.protocol import models, prompts, questions
from lib.bench.ways import parse_answer  # noqa: E402
from lib.protocol.engine import (CONDITION_IMAGE, CONDITION_TEXT_ONLY, Engine, Item,  # noqa: E402
                        yes_probability)

MIN_TRANSFORMERS = (5, 24)
TARGETS = {"llava": {"engine_ms": 20.0}, "gemma3": {"engine_ms": 18.0}}
FLOOR_RATIO_TARGET = 1.4
NF4_RATIO_TARGET = 1.25
STD = 0.02

# -- shapes ------------------------------------------------------------------------------------

SHAPES = {
    "llava": {
        "name": "llava-1.5-7b-shape",
        "vision": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                       intermediate_size=4096, image_size=336, patch_size=14, projection_dim=768),
        "text": dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32,
                     num_key_value_heads=32, intermediate_size=11008, vocab_size=32064,
                     max_position_embeddings=4096),
    },
    "gemma3": {
        "name": "medgemma-4b-shape",
        "vision": dict(hidden_size=1152, num_hidden_layers=27, num_attention_heads=16,
                       intermediate_size=4304, image_size=896, patch_size=14),
        "text": dict(hidden_size=2560, num_hidden_layers=34, num_attention_heads=8,
                     num_key_value_heads=4, head_dim=256, intermediate_size=10240,
                     vocab_size=262208, sliding_window=1024, query_pre_attn_scalar=256,
                     max_position_embeddings=131072),
        "mm_tokens_per_image": 256,
    },
}
TINY = {
    "llava": {
        "name": "llava-tiny",
        "vision": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                       intermediate_size=128, image_size=64, patch_size=8, projection_dim=64),
        "text": dict(hidden_size=64, num_hidden_layers=4, num_attention_heads=4,
                     num_key_value_heads=4, intermediate_size=128, vocab_size=1024,
                     max_position_embeddings=512),
    },
    "gemma3": {
        "name": "gemma3-tiny",
        "vision": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                       intermediate_size=128, image_size=64, patch_size=8),
        "text": dict(hidden_size=64, num_hidden_layers=4, num_attention_heads=4,
                     num_key_value_heads=2, head_dim=16, intermediate_size=128, vocab_size=1024,
                     sliding_window=512, query_pre_attn_scalar=16, max_position_embeddings=512),
        # (window > prompt length, as in the real shape: 1024 > ~300 tokens. A window shorter
        # than prefix + suffix breaks prefix sharing: see the report of issue 5.)
        "mm_tokens_per_image": 16,
    },
}


def check_versions() -> None:
    import transformers

    version = tuple(int(x) for x in transformers.__version__.split(".")[:2])
    if version < MIN_TRANSFORMERS:
        raise SystemExit(
            f"transformers {transformers.__version__} is too old: the engine uses the 5.24 API "
            "(`cache=` keyword, `.cache` outputs). Install the project's pinned transformers "
            "(requirements.txt) first, e.g. from carried wheels: pip install --no-deps <wheel>.")


# -- building a random model and its processor ---------------------------------------------------

def no_init():
    try:
        from transformers.initialization import no_init_weights
    except ImportError:  # older layouts
        from transformers.modeling_utils import no_init_weights
    return no_init_weights()


def fill_random(model: torch.nn.Module, std: float = STD) -> None:
    """Every parameter in one pass: weights N(0, std), biases 0, norms the identity.

    Gemma's RMSNorm multiplies by (1 + weight), so its identity is 0; other norms' is 1.
    """
    with torch.no_grad():
        for module in model.modules():
            kind = type(module).__name__
            is_norm = isinstance(module, torch.nn.LayerNorm) or "Norm" in kind
            for name, param in module.named_parameters(recurse=False):
                if name == "bias" or name.endswith("_bias"):
                    param.zero_()
                elif is_norm:
                    param.fill_(0.0 if kind.startswith("Gemma") else 1.0)
                else:
                    param.normal_(0.0, std)


def build_tokenizer(family: str):
    """The family's BPE tokenizer with a vocabulary small enough for ~20-token questions."""
    return default_models.train_tokenizer(family, default_models.question_corpus(), vocab_size=320)


def image_processor(family: str, size: int, backend: str):
    """(image processor, its class name): torchvision-backed (torch ops, much faster at 896 px)
    or PIL. `auto` takes the torchvision one when it works (transformers itself falls back to
    the PIL class when torchvision is missing), else PIL (the project default).
    """
    import transformers

    names = {"llava": ("CLIPImageProcessor", "CLIPImageProcessorPil"),
             "gemma3": ("Gemma3ImageProcessor", "Gemma3ImageProcessorPil")}[family]
    if family == "llava":
        kwargs = dict(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
    else:
        kwargs = dict(size={"height": size, "width": size}, do_pan_and_scan=False,
                      image_mean=[0.5] * 3, image_std=[0.5] * 3)
    if backend in ("auto", "torchvision"):
        try:
            proc = getattr(transformers, names[0])(**kwargs)
            proc(images=[Image.new("RGB", (size, size))], return_tensors="pt")
            return proc, type(proc).__name__
        except Exception as err:
            if backend == "torchvision":
                raise
            print(f"  torchvision image processor unavailable ({type(err).__name__}: {err}); "
                  "using PIL", flush=True)
    return getattr(transformers, names[1])(**kwargs), names[1]


def build(family: str, shapes: dict, device: torch.device, dtype: torch.dtype,
          image_backend: str = "pil"):
    """(model, processor, image backend) of one family with random weights, on `device`."""
    from transformers import (CLIPVisionConfig, Gemma3Config, Gemma3ForConditionalGeneration,
                              Gemma3Processor, Gemma3TextConfig, LlamaConfig, LlavaConfig,
                              LlavaForConditionalGeneration, LlavaProcessor, SiglipVisionConfig)

    shape = shapes[family]
    tokenizer = build_tokenizer(family)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in default_models.SPECIAL_TOKENS[family]}
    assert max(tokenizer.get_vocab().values()) < shape["text"]["vocab_size"]
    common = dict(pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                  eos_token_id=tokenizer.eos_token_id)
    vision, size, patch = shape["vision"], shape["vision"]["image_size"], shape["vision"]["patch_size"]
    images, backend = image_processor(family, size, image_backend)
    if family == "llava":
        config = LlavaConfig(
            vision_config=CLIPVisionConfig(**vision),
            text_config=LlamaConfig(**shape["text"], **common, tie_word_embeddings=False),
            image_token_index=ids["<image>"], vision_feature_layer=-2,
            vision_feature_select_strategy="default", image_seq_length=(size // patch) ** 2,
            pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False,
        )
        cls = LlavaForConditionalGeneration
        processor = LlavaProcessor(
            image_processor=images, tokenizer=tokenizer, patch_size=patch, vision_feature_select_strategy="default",
            chat_template=default_models.LLAVA_CHAT_TEMPLATE, num_additional_image_tokens=1,
        )
    else:
        tokens = shape["mm_tokens_per_image"]
        config = Gemma3Config(
            text_config=Gemma3TextConfig(**shape["text"], **common, tie_word_embeddings=True),
            vision_config=SiglipVisionConfig(**vision, vision_use_head=False),
            mm_tokens_per_image=tokens, boi_token_index=ids["<start_of_image>"],
            eoi_token_index=ids["<end_of_image>"], image_token_index=ids["<image_soft_token>"],
            tie_word_embeddings=True,
        )
        cls = Gemma3ForConditionalGeneration
        processor = Gemma3Processor(
            image_processor=images, tokenizer=tokenizer, chat_template=default_models.GEMMA3_CHAT_TEMPLATE,
            image_seq_length=tokens,
        )
    with torch.device(device), no_init():
        model = cls._from_config(config, dtype=dtype)
    fill_random(model)
    if getattr(config, "tie_word_embeddings", False):
        model.tie_weights()
    model.eval()
    return model, processor, backend


def loaded(model, processor, device, dtype) -> models.LoadedModel:
    tok = processor.tokenizer
    return models.LoadedModel(model, processor, models.answer_token_ids(tok, models.YES_SPELLINGS),
                              models.answer_token_ids(tok, models.NO_SPELLINGS), device, dtype)


def quantize_nf4(model, device, dtype) -> int:
    """Replace the text Linear layers by bitsandbytes nf4 ones (in place); returns how many."""
    import bitsandbytes as bnb

    skip = models.SKIP_QUANTIZATION
    count = 0
    for parent_name, parent in list(model.named_modules()):
        for name, child in list(parent.named_children()):
            full = f"{parent_name}.{name}" if parent_name else name
            if not isinstance(child, torch.nn.Linear) or any(s in full for s in skip):
                continue
            q = bnb.nn.Linear4bit(child.in_features, child.out_features, bias=child.bias is not None,
                                  compute_dtype=dtype, compress_statistics=True, quant_type="nf4",
                                  device="meta")
            q.weight = bnb.nn.Params4bit(child.weight.data, requires_grad=False,
                                         compress_statistics=True, quant_type="nf4",
                                         module=q).to(device)
            if child.bias is not None:
                q.bias = torch.nn.Parameter(child.bias.data, requires_grad=False)
            setattr(parent, name, q)
            count += 1
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return count


# -- samples ------------------------------------------------------------------------------------

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
        qs = sets[i % len(sets)]
        items.append(Item(f"s{i}", image.copy(), tuple(qs[:n_prompts])))
    return items


def jobs_of(items):
    for it in items:
        for pid, q in enumerate(it.prompts):
            yield (it.sample_id, pid, CONDITION_IMAGE), it.image, q
        yield (it.sample_id, 0, CONDITION_TEXT_ONLY), None, it.prompts[0]


def encode(lm, image, question):
    text = prompts.chat_text(lm.processor, question, image is not None)
    kwargs = {"images": [[image]]} if image is not None else {}
    enc = lm.processor(text=[text], return_tensors="pt", **kwargs)
    return {k: v.to(lm.device, dtype=lm.dtype) if v.is_floating_point() else v.to(lm.device)
            for k, v in enc.items() if torch.is_tensor(v)}


# -- the ways -----------------------------------------------------------------------------------

@torch.inference_mode()
def way_naive(lm, items, max_new_tokens: int) -> dict:
    tok = lm.tokenizer
    out = {}
    for key, image, question in jobs_of(items):
        enc = encode(lm, image, question)
        gen = lm.model.generate(**enc, max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens,
                                do_sample=False, num_beams=1, pad_token_id=tok.pad_token_id)
        text = tok.decode(gen[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)
        out[key] = parse_answer(text)
    return out


@torch.inference_mode()
def way_forward_bs1(lm, items) -> dict:
    out = {}
    for key, image, question in jobs_of(items):
        logits = lm.model(**encode(lm, image, question), logits_to_keep=1).logits[:, -1, :]
        out[key] = float(yes_probability(logits, lm.yes_ids, lm.no_ids)[0][0])
    return out


def way_engine(engine: Engine, items) -> dict:
    return {(r["sample_id"], r["prompt_id"], r["condition"]): r["p_yes"] for r in engine.score(items)}


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, items, warmup_items, device, repeats: int, budget_s: float):
    """(result, best seconds, all seconds): warm-up once, then up to `repeats` passes in budget."""
    fn(warmup_items)
    sync(device)
    times, result, start = [], None, time.perf_counter()
    for _ in range(repeats):
        t = time.perf_counter()
        result = fn(items)
        sync(device)
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
    """Peak GPU memory (GiB) while fn() runs, weights included."""
    if device.type != "cuda":
        fn()
        return None
    gc.collect()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    fn()
    sync(device)
    return torch.cuda.max_memory_allocated() / 2**30


def as_answer(value):
    if value is None or isinstance(value, str):
        return value
    return "yes" if value >= 0.5 else "no"


def agreement(a: dict, b: dict) -> float | None:
    keys = [k for k in a if k in b]
    if not keys:
        return None
    return sum(as_answer(a[k]) == as_answer(b[k]) for k in keys) / len(keys)


# -- the FLOP floor ------------------------------------------------------------------------------

def matmul_rate(device, dtype, n: int) -> float:
    """FLOP/s of an n x n x n matmul (best of several timed runs)."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    sync(device)
    best = float("inf")
    for _ in range(5):
        t = time.perf_counter()
        for _ in range(10):
            a @ b
        sync(device)
        best = min(best, (time.perf_counter() - t) / 10)
    del a, b
    return 2 * n**3 / best


def text_dims(tc) -> dict:
    head_dim = getattr(tc, "head_dim", None) or tc.hidden_size // tc.num_attention_heads
    return dict(h=tc.hidden_size, inter=tc.intermediate_size, layers=tc.num_hidden_layers,
                q=tc.num_attention_heads * head_dim, kv=tc.num_key_value_heads * head_dim,
                vocab=tc.vocab_size)


def text_flops(d: dict, new_tokens: int, past: int, rows_scored: int = 1) -> float:
    """Matmul FLOPs of `new_tokens` causal tokens after `past` cached ones, + lm_head rows."""
    per_token = 2 * (d["h"] * d["q"] + 2 * d["h"] * d["kv"] + d["q"] * d["h"] + 3 * d["h"] * d["inter"])
    keys = new_tokens * past + new_tokens * (new_tokens + 1) / 2        # attended (q, k) pairs
    attention = 2 * 2 * d["q"] * keys                                   # QK^T and AV
    return d["layers"] * (per_token * new_tokens + attention) + 2 * d["h"] * d["vocab"] * rows_scored


def vision_flops(config, family: str) -> float:
    """Matmul FLOPs of the vision tower (+ projector) on one image."""
    vc = config.vision_config
    h, inter, layers = vc.hidden_size, vc.intermediate_size, vc.num_hidden_layers
    patches = (vc.image_size // vc.patch_size) ** 2
    n = patches + (1 if family == "llava" else 0)                      # CLIP's class token
    per_layer = 2 * n * (4 * h * h + 2 * h * inter) + 2 * 2 * h * n * n
    embed = 2 * patches * 3 * vc.patch_size**2 * h
    text_h = config.text_config.hidden_size
    if family == "llava":
        projector = 2 * patches * (h * text_h + text_h * text_h)
    else:
        projector = 2 * config.mm_tokens_per_image * h * text_h
    return layers * per_layer + embed + projector


def work_flops(lm, items, config, family: str) -> dict:
    """FLOPs per sample with sharing (what the engine must do) and without (full prompts)."""
    d = text_dims(config.text_config)
    vision = vision_flops(config, family)
    processor, tok = lm.processor, lm.tokenizer
    split = prompts.split_at_image(processor, items[0].prompts[0])
    prefix_len = processor(text=[split.prefix], images=[[items[0].image]],
                           return_tensors="pt")["input_ids"].shape[1]
    images = len({it.image.tobytes() for it in items})
    shared = unshared = 0.0
    suffix_lengths, text_lengths = [], []
    for it in items:
        for q in it.prompts:
            s = len(tok(prompts.split_at_image(processor, q).suffix, add_special_tokens=False)["input_ids"])
            suffix_lengths.append(s)
            shared += text_flops(d, s, prefix_len)
            unshared += vision + text_flops(d, prefix_len + s, 0)
        t = len(tok(prompts.chat_text(processor, it.prompts[0], False))["input_ids"])
        text_lengths.append(t)
        shared += text_flops(d, t, 0)
        unshared += text_flops(d, t, 0)
    shared += images * (vision + text_flops(d, prefix_len, 0, rows_scored=0))
    n = len(items)
    return {"flops_per_sample_shared": shared / n, "flops_per_sample_unshared": unshared / n,
            "vision_flops_per_image": vision, "prefix_tokens": prefix_len,
            "mean_suffix_tokens": float(np.mean(suffix_lengths)),
            "mean_text_only_tokens": float(np.mean(text_lengths)), "images": images}


# -- one model ------------------------------------------------------------------------------------

def bench_family(family: str, args, device, dtype, rate: float) -> dict:
    shapes = TINY if args.tiny else SHAPES
    t0 = time.perf_counter()
    model, processor, backend = build(family, shapes, device, dtype, args.image_processor)
    sync(device)
    build_s = time.perf_counter() - t0
    lm = loaded(model, processor, device, dtype)
    n_params = sum(p.numel() for p in model.parameters())
    image_px = 64 if args.tiny else 512
    items = make_items(args.batch, image_px, args.prompts, args.samples_per_image)
    warm = items[:1]
    report = {"shape": shapes[family]["name"], "params": n_params, "build_seconds": build_s,
              "n_samples": len(items), "image_prompts_per_sample": args.prompts,
              "text_only_per_sample": 1, "batch_size": args.batch, "image_processor": backend}
    report.update(work_flops(lm, items, model.config, family))
    report["preprocess_ms_per_sample"] = preprocess_ms(processor, items)
    ms, seconds, results = {}, {}, {}

    def record(way, fn, its, repeats=args.repeats):
        res, best, times = timed(fn, its, warm, device, repeats, args.budget_s)
        ms[way] = 1000 * best / len(its)
        seconds[way] = times
        results[way] = res
        print(f"  {family:7s} {way:12s} {ms[way]:9.2f} ms/sample  ({len(its)} samples, "
              f"passes {[round(t, 3) for t in times]})", flush=True)

    naive_items = items[:args.naive_samples]
    record("naive", lambda its: way_naive(lm, its, args.max_new_tokens), naive_items,
           repeats=min(2, args.repeats))
    record("forward_bs1", lambda its: way_forward_bs1(lm, its), items[:args.bs1_samples])
    batched = Engine(lm, prefix_sharing=False, batch_size=args.batch)
    record("batched", lambda its: way_engine(batched, its), items)
    engine = Engine(lm, batch_size=args.batch)
    record("engine", lambda its: way_engine(engine, its), items)
    report["engine_mode"] = engine.mode
    report["engine_fallback_reason"] = engine.fallback_reason
    memory = {"engine_bf16": peak_memory(lambda: way_engine(engine, items), device)}

    if args.nf4 and time.perf_counter() - args.started > args.deadline_s:
        report["nf4_skipped"] = "deadline reached"
    elif args.nf4:
        try:
            import bitsandbytes  # noqa: F401
            quantized = quantize_nf4(model, device, dtype)
        except Exception as err:  # not importable, or no kernel for this device
            report["nf4_skipped"] = f"{type(err).__name__}: {err}"
            print(f"  {family:7s} nf4 skipped: {report['nf4_skipped']}", flush=True)
        else:
            report["nf4_linear_layers"] = quantized
            engine_q = Engine(lm, batch_size=args.batch)
            record("engine_nf4", lambda its: way_engine(engine_q, its), items)
            memory["engine_nf4"] = peak_memory(lambda: way_engine(engine_q, items), device)

    ms["floor"] = 1000 * report["flops_per_sample_shared"] / rate
    report["ms_per_sample"] = ms
    report["seconds_per_pass"] = seconds
    report["peak_memory_gib"] = memory
    bs1 = results["forward_bs1"]
    report["agreement_vs_forward_bs1"] = {
        way: agreement(results[way], bs1) for way in results if way != "forward_bs1"}
    if "engine_nf4" in results:
        report["agreement_nf4_vs_bf16_engine"] = agreement(results["engine_nf4"], results["engine"])
    common = [k for k in results["engine"] if k in bs1]
    report["max_abs_p_yes_diff_engine_vs_forward_bs1"] = max(
        abs(results["engine"][k] - bs1[k]) for k in common)
    report["mean_abs_margin_p_yes"] = float(np.mean([abs(bs1[k] - 0.5) for k in common]))
    report["naive_unparseable"] = (sum(v is None for v in results["naive"].values())
                                   / max(1, len(results["naive"])))
    report["speedup_vs_naive"] = {w: ms["naive"] / ms[w] for w in ms if w not in ("naive", "floor")}
    report["engine_over_floor"] = ms["engine"] / ms["floor"]
    target = TARGETS[family]["engine_ms"]
    report["targets"] = {
        "engine_ms_per_sample_max": target, "engine_ms_met": ms["engine"] <= target,
        "engine_over_floor_max": FLOOR_RATIO_TARGET,
        "engine_over_floor_met": report["engine_over_floor"] <= FLOOR_RATIO_TARGET,
    }
    if "engine_nf4" in ms:
        report["targets"]["nf4_over_bf16_max"] = NF4_RATIO_TARGET
        report["targets"]["nf4_over_bf16"] = ms["engine_nf4"] / ms["engine"]
        report["targets"]["nf4_met"] = ms["engine_nf4"] / ms["engine"] <= NF4_RATIO_TARGET
    del engine, batched, lm, model
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return report


def table(report: dict) -> str:
    ways = ("naive", "forward_bs1", "batched", "engine", "engine_nf4", "floor")
    head = f"{'model':22s}" + "".join(f"{w:>12s}" for w in ways) + f"{'agree':>8s}{'mem bf16/nf4 GiB':>20s}"
    lines = [f"ms per sample on {report['device']}", head]
    for r in report["models"].values():
        ms = r["ms_per_sample"]
        cells = "".join(f"{ms[w]:12.2f}" if w in ms else f"{'-':>12s}" for w in ways)
        agree = r["agreement_vs_forward_bs1"].get("engine")
        mem = r["peak_memory_gib"]
        mem_s = "/".join("-" if mem.get(k) is None else f"{mem[k]:.1f}" for k in ("engine_bf16", "engine_nf4"))
        lines.append(f"{r['shape']:22s}{cells}{agree:8.3f}{mem_s:>20s}")
    lines.append(f"matmul rate: {report['matmul_tflops']:.1f} TFLOP/s "
                 f"({report['matmul_n']}^3 {report['dtype']})")
    return "\n".join(lines)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="tiny shapes (CPU test of the script)")
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
    parser.add_argument("--out", default=None, help="JSON path (default $OUT/gpu_bench.json)")
    args = parser.parse_args(argv)
    defaults = {"naive_samples": (3, 2), "bs1_samples": (16, 8), "repeats": (3, 2),
                "budget_s": (25.0, 8.0)}
    for key, (full, tiny) in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, tiny if args.tiny else full)

    check_versions()
    start = args.started = time.perf_counter()
    device = models.resolve_device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    if device.type != "cuda" and not args.tiny:
        raise SystemExit("no CUDA device: the full shapes need a GPU (use --tiny to test on CPU)")
    torch.manual_seed(0)
    n = 1024 if args.tiny else 8192
    rate = matmul_rate(device, dtype, n)
    print(f"matmul {n}^3 {dtype}: {rate / 1e12:.1f} TFLOP/s", flush=True)
    import transformers

    report = {
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": torch.cuda.get_device_name(0) if device.type == "cuda" else platform.processor() or "cpu",
        "tiny": args.tiny, "dtype": str(dtype).replace("torch.", ""),
        "matmul_n": n, "matmul_tflops": rate / 1e12,
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "cuda": torch.version.cuda, "python": platform.python_version()},
        "settings": {k: v for k, v in vars(args).items() if k not in ("out", "started")},
        "models": {},
    }
    try:
        import bitsandbytes

        report["versions"]["bitsandbytes"] = bitsandbytes.__version__
    except Exception:
        report["versions"]["bitsandbytes"] = None
    out = Path(args.out) if args.out else Path(os.environ.get("OUT", "outputs/bench")) / (
        "gpu_bench_tiny.json" if args.tiny else "gpu_bench.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    for family in [f.strip() for f in args.models.split(",") if f.strip()]:
        if time.perf_counter() - start > args.deadline_s:
            report["models_skipped"] = report.get("models_skipped", []) + [family]
            print(f"{family}: skipped, deadline reached", flush=True)
            continue
        print(f"{family}: building and measuring", flush=True)
        report["models"][family] = bench_family(family, args, device, dtype, rate)
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
        report["total_seconds"] = time.perf_counter() - start
        out.write_text(json.dumps(report, indent=2))      # partial results survive a timeout
    report["total_seconds"] = time.perf_counter() - start
    out.write_text(json.dumps(report, indent=2))
    print(table(report))
    print(f"wrote {out} in {report['total_seconds']:.0f} s")
    return report


if __name__ == "__main__":
    main()
