"""The FLOP floor: the least time the work with prefix sharing can take on a device.

The matmul FLOPs of what the engine must compute (the vision tower and the image prefix once per
image, every question suffix after the cached prefix, every text-only prompt, one lm_head row per
prompt, attention included), divided by the rate an n x n x n matmul reaches on the device.
"""
from __future__ import annotations

import time

import numpy as np
import torch

from ..protocol import prompts


def sync(device) -> None:
    """Wait for the device's queued work (CUDA runs asynchronously), so wall time counts it."""
    if device.type == "cuda":
        torch.cuda.synchronize()


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
