"""LLaVA-Rad conversion (lib/families/llava_rad.py) against the ORIGINAL architecture, in float32.

A small checkpoint is written in the original LLaVA / LLaVA-Rad key layout (Llama
`model.layers.*`, `model.mm_projector.{0,2}`, an open_clip checkpoint whose `visual.trunk.*` is a
timm DINOv2-style ViT with patch 14, class token and LayerScale). The reference forward below is
plain torch written from the original architecture, not from transformers: the ViT's hidden
state of `mm_vision_select_layer` (embeddings first), patch tokens only, the mlp2x_gelu
projector, the features spliced at the `<image>` position (LLaVA's `tokenizer_image_token` +
`prepare_inputs_labels_for_multimodal`), then the Llama forward (RMSNorm, rotary, causal GQA
attention, SwiGLU). The converted checkpoint must give the same logits, load through the
project's loader, score the same p_yes in the engine, and run the evaluate notebook.
"""
from __future__ import annotations

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import save_file

from lib.families.llava_rad import (OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, ConversionError,
                                   adapter_layout, convert, remap_adapter)
from lib.families.tiny import Vocabulary, train_tokenizer
from lib.protocol import models, prompts
from lib.protocol.engine import Engine, Item, paper_items, yes_probability

ORIGINAL_IMAGE_TOKEN = -200  # LLaVA's IMAGE_TOKEN_INDEX
TEXT = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, rms_norm_eps=1e-5, rope_theta=10000.0)
VIT = dict(dim=128, layers=3, heads=2, patch=14, grid=4)  # 56 px, 16 patches, head dim 64
SELECT_LAYER = -2
TOL = 1e-5


# -- the original-format checkpoint ------------------------------------------------------------

# Llama's tokenizer: <unk> 0, <s> 1, </s> 2, BOS added, no pad, no <image>, no chat template.
LLAMA_VOCABULARY = Vocabulary(specials=("<unk>", "<s>", "</s>"),
                              tokens={"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"},
                              template_words=("USER: ", " ASSISTANT:"), add_bos=True)


def train_llama_tokenizer(out_dir):
    """A Llama-like tokenizer (<unk> 0, <s> 1, </s> 2, BOS added, no pad, no <image>)."""
    tokenizer = train_tokenizer(LLAMA_VOCABULARY, vocab_size=400)
    tokenizer.save_pretrained(out_dir)
    return tokenizer


def random_llama(vocab: int, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    d, f = TEXT["hidden_size"], TEXT["intermediate_size"]
    hd = d // TEXT["num_attention_heads"]
    kv = TEXT["num_key_value_heads"] * hd

    def w(*shape, scale=0.08):
        return torch.randn(*shape, generator=g) * scale

    state = {"model.embed_tokens.weight": w(vocab, d, scale=1.0), "model.norm.weight": 1 + w(d),
             "lm_head.weight": w(vocab, d, scale=0.5)}
    for i in range(TEXT["num_hidden_layers"]):
        p = f"model.layers.{i}."
        state.update({
            p + "input_layernorm.weight": 1 + w(d), p + "post_attention_layernorm.weight": 1 + w(d),
            p + "self_attn.q_proj.weight": w(d, d), p + "self_attn.k_proj.weight": w(kv, d),
            p + "self_attn.v_proj.weight": w(kv, d), p + "self_attn.o_proj.weight": w(d, d),
            p + "mlp.gate_proj.weight": w(f, d), p + "mlp.up_proj.weight": w(f, d),
            p + "mlp.down_proj.weight": w(d, f),
        })
    return state


def random_trunk(seed: int, layer_scale: bool = True) -> dict:
    """timm VisionTransformer state dict (vit_*_patch14_dinov2 naming)."""
    g = torch.Generator().manual_seed(seed)
    d, p, n = VIT["dim"], VIT["patch"], VIT["grid"] ** 2

    def w(*shape, scale=0.05):
        return torch.randn(*shape, generator=g) * scale

    state = {"cls_token": w(1, 1, d, scale=0.5), "pos_embed": w(1, n + 1, d, scale=0.5),
             "patch_embed.proj.weight": w(d, 3, p, p), "patch_embed.proj.bias": w(d),
             "norm.weight": 1 + w(d), "norm.bias": w(d)}
    for i in range(VIT["layers"]):
        b = f"blocks.{i}."
        state.update({
            b + "norm1.weight": 1 + w(d), b + "norm1.bias": w(d),
            b + "attn.qkv.weight": w(3 * d, d), b + "attn.qkv.bias": w(3 * d),
            b + "attn.proj.weight": w(d, d), b + "attn.proj.bias": w(d),
            b + "norm2.weight": 1 + w(d), b + "norm2.bias": w(d),
            b + "mlp.fc1.weight": w(4 * d, d), b + "mlp.fc1.bias": w(4 * d),
            b + "mlp.fc2.weight": w(d, 4 * d), b + "mlp.fc2.bias": w(d),
        })
        if layer_scale:
            state[b + "ls1.gamma"] = 0.5 + w(d, scale=0.3)
            state[b + "ls2.gamma"] = 0.5 + w(d, scale=0.3)
    return state


def random_projector(seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    d_in, d = VIT["dim"], TEXT["hidden_size"]
    return {"model.mm_projector.0.weight": torch.randn(d, d_in, generator=g) * 0.1,
            "model.mm_projector.0.bias": torch.randn(d, generator=g) * 0.1,
            "model.mm_projector.2.weight": torch.randn(d, d, generator=g) * 0.1,
            "model.mm_projector.2.bias": torch.randn(d, generator=g) * 0.1}


def original_config(vocab: int) -> dict:
    return {
        "architectures": ["LlavaLlamaForCausalLM"], "model_type": "llava", "vocab_size": vocab,
        **TEXT, "hidden_act": "silu", "max_position_embeddings": 512, "bos_token_id": 1,
        "eos_token_id": 2, "pad_token_id": 0, "tie_word_embeddings": False,
        "mm_vision_tower": "biomedclip_cxr_518", "mm_vision_tower_config": "biomedclipcxr_518.json",
        "mm_vision_tower_checkpoint": "biomedclipcxr_518_checkpoint.pt",
        "mm_projector_type": "mlp2x_gelu", "mm_hidden_size": VIT["dim"],
        "mm_vision_select_layer": SELECT_LAYER, "mm_vision_select_feature": "patch",
        "image_aspect_ratio": "square", "mm_use_im_start_end": False, "mm_use_im_patch_token": False,
    }


def open_clip_checkpoint(trunk: dict) -> dict:
    """An open_clip training checkpoint: DDP prefix, the CLIP head and a text tower too."""
    state = {f"module.visual.trunk.{k}": v for k, v in trunk.items()}
    state["module.visual.head.proj.weight"] = torch.randn(32, VIT["dim"])
    state["module.text.transformer.embeddings.word_embeddings.weight"] = torch.randn(10, 16)
    return {"epoch": 3, "name": "biomedclip-cxr", "state_dict": state}


@pytest.fixture(scope="module")
def original(tmp_path_factory):
    """Original-format LLaVA-Rad-like checkpoint: shards + separate open_clip tower checkpoint."""
    src = tmp_path_factory.mktemp("llava_rad_original")
    tokenizer = train_llama_tokenizer(src)
    llama, trunk, projector = random_llama(len(tokenizer), 0), random_trunk(1), random_projector(2)
    save_file({**llama, **projector}, str(src / "model.safetensors"))
    torch.save(open_clip_checkpoint(trunk), src / "biomedclipcxr_518_checkpoint.pt")
    (src / "config.json").write_text(json.dumps(original_config(len(tokenizer))))
    return {"dir": src, "tokenizer": tokenizer, "llama": llama, "trunk": trunk, "projector": projector}


@pytest.fixture(scope="module")
def converted(original, tmp_path_factory):
    out = tmp_path_factory.mktemp("llava_rad_hf")
    return convert(original["dir"], out, allow_pickle=True)


# -- the reference forward (plain torch, original architecture) ---------------------------------

def reference_vit_features(trunk: dict, pixels: torch.Tensor, layer: int = SELECT_LAYER) -> torch.Tensor:
    d, heads = VIT["dim"], VIT["heads"]
    hd = d // heads
    x = F.conv2d(pixels, trunk["patch_embed.proj.weight"], trunk["patch_embed.proj.bias"],
                 stride=VIT["patch"]).flatten(2).transpose(1, 2)
    x = torch.cat([trunk["cls_token"].expand(x.shape[0], -1, -1), x], dim=1) + trunk["pos_embed"]
    states = [x]  # norm_pre is the identity in a DINOv2 ViT
    for i in range(VIT["layers"]):
        b = f"blocks.{i}."
        h = F.layer_norm(x, (d,), trunk[b + "norm1.weight"], trunk[b + "norm1.bias"], 1e-6)
        qkv = F.linear(h, trunk[b + "attn.qkv.weight"], trunk[b + "attn.qkv.bias"])
        q, k, v = qkv.reshape(x.shape[0], x.shape[1], 3, heads, hd).permute(2, 0, 3, 1, 4)
        attn = torch.softmax(q @ k.transpose(-2, -1) * hd ** -0.5, dim=-1)
        o = (attn @ v).transpose(1, 2).reshape(x.shape)
        x = x + trunk.get(b + "ls1.gamma", 1.0) * F.linear(o, trunk[b + "attn.proj.weight"], trunk[b + "attn.proj.bias"])
        h = F.layer_norm(x, (d,), trunk[b + "norm2.weight"], trunk[b + "norm2.bias"], 1e-6)
        h = F.linear(F.gelu(F.linear(h, trunk[b + "mlp.fc1.weight"], trunk[b + "mlp.fc1.bias"])),
                     trunk[b + "mlp.fc2.weight"], trunk[b + "mlp.fc2.bias"])
        x = x + trunk.get(b + "ls2.gamma", 1.0) * h
        states.append(x)
    return states[layer][:, 1:]  # mm_vision_select_feature "patch"


def rms_norm(x, weight, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def rotate_half(x):
    half = x.shape[-1] // 2
    return torch.cat([-x[..., half:], x[..., :half]], dim=-1)


def reference_llama_logits(llama: dict, embeds: torch.Tensor) -> torch.Tensor:
    """Logits of every position for input embeddings (1, T, d): Vicuna's LlamaForCausalLM."""
    d, heads, kv_heads = TEXT["hidden_size"], TEXT["num_attention_heads"], TEXT["num_key_value_heads"]
    hd, eps, T = d // heads, TEXT["rms_norm_eps"], embeds.shape[1]
    inv_freq = 1.0 / (TEXT["rope_theta"] ** (torch.arange(0, hd, 2).float() / hd))
    angles = torch.outer(torch.arange(T).float(), inv_freq)
    cos, sin = torch.cat([angles, angles], -1).cos(), torch.cat([angles, angles], -1).sin()
    causal = torch.full((T, T), float("-inf")).triu(1)
    x = embeds
    for i in range(TEXT["num_hidden_layers"]):
        p = f"model.layers.{i}."
        h = rms_norm(x, llama[p + "input_layernorm.weight"], eps)
        q = F.linear(h, llama[p + "self_attn.q_proj.weight"]).view(1, T, heads, hd).transpose(1, 2)
        k = F.linear(h, llama[p + "self_attn.k_proj.weight"]).view(1, T, kv_heads, hd).transpose(1, 2)
        v = F.linear(h, llama[p + "self_attn.v_proj.weight"]).view(1, T, kv_heads, hd).transpose(1, 2)
        q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
        k, v = k.repeat_interleave(heads // kv_heads, 1), v.repeat_interleave(heads // kv_heads, 1)
        attn = torch.softmax(q @ k.transpose(-2, -1) / hd ** 0.5 + causal, dim=-1)
        x = x + F.linear((attn @ v).transpose(1, 2).reshape(1, T, d), llama[p + "self_attn.o_proj.weight"])
        h = rms_norm(x, llama[p + "post_attention_layernorm.weight"], eps)
        x = x + F.linear(F.silu(F.linear(h, llama[p + "mlp.gate_proj.weight"]))
                         * F.linear(h, llama[p + "mlp.up_proj.weight"]), llama[p + "mlp.down_proj.weight"])
    return F.linear(rms_norm(x, llama["model.norm.weight"], eps), llama["lm_head.weight"])


def tokenizer_image_token(prompt: str, tokenizer) -> list[int]:
    """LLaVA's tokenizer_image_token: chunks tokenized apart, later BOS dropped, -200 between."""
    chunks = [tokenizer(c).input_ids for c in prompt.split("<image>")]
    ids = [chunks[0][0]] if chunks[0] and chunks[0][0] == tokenizer.bos_token_id else []
    offset = len(ids)
    for n, chunk in enumerate(chunks):
        if n:
            ids.append(ORIGINAL_IMAGE_TOKEN)
        ids += chunk[offset:]
    return ids


def reference_logits(original, input_ids: list[int], pixels: torch.Tensor | None) -> torch.Tensor:
    """LLaVA's prepare_inputs_labels_for_multimodal + the Llama forward; logits (T, V)."""
    llama = original["llama"]
    pieces, start = [], 0
    for pos in [i for i, t in enumerate(input_ids) if t == ORIGINAL_IMAGE_TOKEN]:
        pieces.append(F.embedding(torch.tensor(input_ids[start:pos]), llama["model.embed_tokens.weight"]))
        feats = reference_vit_features(original["trunk"], pixels)[0]
        proj = original["projector"]
        feats = F.linear(F.gelu(F.linear(feats, proj["model.mm_projector.0.weight"], proj["model.mm_projector.0.bias"])),
                         proj["model.mm_projector.2.weight"], proj["model.mm_projector.2.bias"])
        pieces.append(feats)
        start = pos + 1
    pieces.append(F.embedding(torch.tensor(input_ids[start:]), llama["model.embed_tokens.weight"]))
    return reference_llama_logits(llama, torch.cat(pieces)[None])[0]


def open_clip_pixels(image: Image.Image, size: int) -> torch.Tensor:
    """open_clip's eval transform with torchvision semantics: Resize(shortest, bicubic),
    CenterCrop (offset int(round(margin / 2))), ToTensor, Normalize(OpenAI CLIP)."""
    image = image.convert("RGB")
    w, h = image.size
    short, long = min(w, h), max(w, h)
    new_long = int(size * long / short)
    new = (size, new_long) if w <= h else (new_long, size)
    image = image.resize(new, Image.BICUBIC)
    top, left = int(round((new[1] - size) / 2.0)), int(round((new[0] - size) / 2.0))
    image = image.crop((left, top, left + size, top + size))
    x = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)
    mean, std = torch.tensor(OPENAI_CLIP_MEAN)[:, None, None], torch.tensor(OPENAI_CLIP_STD)[:, None, None]
    return ((x - mean) / std)[None]


def image(w: int, h: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w), dtype=np.uint8), "L")


# -- tests --------------------------------------------------------------------------------------------

SIZE = VIT["patch"] * VIT["grid"]


def test_converted_logits_equal_the_original_forward(original, converted):
    lm = models.load_model(str(converted), dtype="float32", device="cpu")
    assert type(lm.model).__name__ == "LlavaForConditionalGeneration"
    assert type(lm.model.model.vision_tower).__name__ == "Dinov2Model"
    pixels = open_clip_pixels(image(SIZE, SIZE), SIZE)
    text = "USER: <image>\nIs there cardiomegaly? ASSISTANT:"
    original_ids = tokenizer_image_token(text, original["tokenizer"])
    n_image = VIT["grid"] ** 2
    image_id = lm.processor.tokenizer.convert_tokens_to_ids("<image>")
    hf_ids = [t for i in original_ids for t in ([image_id] * n_image if i == ORIGINAL_IMAGE_TOKEN else [i])]
    with torch.no_grad():
        ours = lm.model(input_ids=torch.tensor([hf_ids]), pixel_values=pixels).logits[0]
        ref = reference_logits(original, original_ids, pixels)
    vocab = ref.shape[-1]
    assert ours.shape[0] == ref.shape[0] and ours.shape[1] == vocab + 1  # + the <image> row
    assert torch.allclose(ours[:, :vocab], ref, atol=TOL * 10, rtol=TOL), (ours[:, :vocab] - ref).abs().max()
    assert ours[:, vocab].abs().max() == 0  # the added head row scores the <image> token at 0
    # and the processor makes the same ids from the chat template's text
    enc = lm.processor(text=[prompts.chat_text(lm.processor, "Is there cardiomegaly?", True)],
                       images=[[image(SIZE, SIZE)]], return_tensors="pt")
    assert enc["input_ids"][0].tolist() == hf_ids
    assert torch.allclose(enc["pixel_values"], pixels, atol=1e-6)


def test_vision_tower_equals_the_timm_trunk_at_every_layer(original, converted):
    """The mapping itself: every hidden state of the Dinov2Model equals the timm blocks'."""
    lm = models.load_model(str(converted), dtype="float32", device="cpu")
    pixels = open_clip_pixels(image(SIZE, SIZE, seed=3), SIZE)
    with torch.no_grad():
        hidden = lm.model.model.vision_tower(pixels, output_hidden_states=True).hidden_states
    assert len(hidden) == VIT["layers"] + 1
    for layer in range(-VIT["layers"] - 1, 0):
        ref = reference_vit_features(original["trunk"], pixels, layer)
        assert torch.allclose(hidden[layer][:, 1:], ref, atol=1e-5), layer


def test_engine_p_yes_equals_the_original_model(original, converted):
    lm = models.load_model(str(converted), dtype="float32", device="cpu")
    rng = np.random.default_rng(0)
    items = [Item(f"s{i}", image(int(w), int(h), seed=i).convert("RGB"),
                  ("Is there cardiomegaly?", "Is the heart enlarged?", "Is there a pneumothorax?"))
             for i, (w, h) in enumerate(rng.integers(56, 140, size=(3, 2)))]
    for removal in ("none", "blank"):
        engine = Engine(lm, image_removal=removal, batch_size=2)
        rows = engine.score(paper_items(items))
        assert engine.mode == "prefix_sharing", engine.fallback_reason
        by_id = {it.sample_id: it for it in items}
        for row in rows:
            item = by_id[row["sample_id"]]
            with_image = row["condition"] == "image" or removal == "blank"
            text = prompts.chat_text(lm.processor, row["prompt"], with_image)
            img = item.image if row["condition"] == "image" else Image.new("RGB", item.image.size, (128,) * 3)
            ids = tokenizer_image_token(text, original["tokenizer"])
            pixels = open_clip_pixels(img, SIZE) if with_image else None
            with torch.no_grad():
                logits = reference_logits(original, ids, pixels)[-1:]
            p_yes, _ = yes_probability(logits, lm.yes_ids, lm.no_ids)
            assert abs(p_yes.item() - row["p_yes"]) <= TOL


@pytest.mark.parametrize("w,h", [(SIZE, SIZE), (80, 60), (61, 90), (83, 56), (57, 120)])
def test_processor_is_open_clips_eval_transform(converted, w, h):
    """Equal to open_clip's transform, except a one-pixel crop offset when the resized long side
    minus the size is 3 mod 4 (torchvision rounds the offset half to even, transformers down)."""
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(str(converted))
    img = image(w, h, seed=w)
    ours = processor.image_processor(img.convert("RGB"), return_tensors="pt")["pixel_values"]
    ref = open_clip_pixels(img, SIZE)
    margin = int(SIZE * max(w, h) / min(w, h)) - SIZE
    if margin % 4 == 3:
        assert not torch.allclose(ours, ref, atol=1e-5)
    else:
        assert torch.allclose(ours, ref, atol=1e-5)


def test_tower_in_the_shards_and_a_lora_release_layout(original, tmp_path):
    """Variant sources: tower inside the shards; and microsoft/llava-rad's release layout
    (LoRA over a base LM + non_lora_trainables.bin projector), merged by the converter."""
    base = tmp_path / "vicuna"
    base.mkdir()
    save_file(original["llama"], str(base / "model.safetensors"))
    original["tokenizer"].save_pretrained(base)
    (base / "config.json").write_text(json.dumps({k: v for k, v in original_config(len(original["tokenizer"])).items()
                                                  if not k.startswith("mm_")}))
    release = tmp_path / "release"
    release.mkdir()
    g = torch.Generator().manual_seed(9)
    r, alpha, lora, merged = 4, 8, {}, dict(original["llama"])
    for i in range(TEXT["num_hidden_layers"]):
        for name in ("self_attn.q_proj", "mlp.down_proj"):
            weight = original["llama"][f"model.layers.{i}.{name}.weight"]
            a = torch.randn(r, weight.shape[1], generator=g) * 0.2
            b = torch.randn(weight.shape[0], r, generator=g) * 0.2
            lora[f"base_model.model.model.layers.{i}.{name}.lora_A.weight"] = a
            lora[f"base_model.model.model.layers.{i}.{name}.lora_B.weight"] = b
            merged[f"model.layers.{i}.{name}.weight"] = weight + alpha / r * b @ a
    torch.save(lora, release / "adapter_model.bin")
    (release / "adapter_config.json").write_text(json.dumps({"r": r, "lora_alpha": alpha, "peft_type": "LORA"}))
    torch.save({f"base_model.model.{k}": v for k, v in original["projector"].items()},
               release / "non_lora_trainables.bin")
    torch.save(open_clip_checkpoint(original["trunk"]), release / "biomedclipcxr_518_checkpoint.pt")
    (release / "config.json").write_text(json.dumps(original_config(len(original["tokenizer"]))))
    with pytest.raises(ConversionError, match="--allow-pickle"):
        convert(release, tmp_path / "refused", base=base)
    with pytest.raises(ConversionError, match="--base"):
        convert(release, tmp_path / "refused", allow_pickle=True)
    out = convert(release, tmp_path / "release_hf", base=base, allow_pickle=True)

    in_shards = tmp_path / "in_shards"
    in_shards.mkdir()
    original["tokenizer"].save_pretrained(in_shards)
    save_file({**original["llama"], **original["projector"],
               **{f"model.vision_tower.vision_tower.vit.{k}": v for k, v in original["trunk"].items()}},
              str(in_shards / "model.safetensors"))
    (in_shards / "config.json").write_text(json.dumps(original_config(len(original["tokenizer"]))))
    out2 = convert(in_shards, tmp_path / "in_shards_hf")  # safetensors only: no pickle needed

    pixels = open_clip_pixels(image(SIZE, SIZE, seed=5), SIZE)
    ids = tokenizer_image_token("USER: <image>\nIs there a pneumothorax? ASSISTANT:", original["tokenizer"])
    for path, llama in ((out, merged), (out2, original["llama"])):
        lm = models.load_model(str(path), dtype="float32", device="cpu")
        image_id = lm.processor.tokenizer.convert_tokens_to_ids("<image>")
        hf_ids = [t for i in ids for t in ([image_id] * VIT["grid"] ** 2 if i == ORIGINAL_IMAGE_TOKEN else [i])]
        with torch.no_grad():
            ours = lm.model(input_ids=torch.tensor([hf_ids]), pixel_values=pixels).logits[0, :, :-1]
            ref = reference_logits({**original, "llama": llama}, ids, pixels)
        assert torch.allclose(ours, ref, atol=TOL * 10, rtol=TOL), (path, (ours - ref).abs().max())


def test_original_layout_adapter_is_remapped_not_silently_ignored(original, converted, tmp_path):
    """A LoRA adapter saved on the ORIGINAL layout loads as a no-op unless remapped."""
    g = torch.Generator().manual_seed(11)
    r, alpha, lora, merged = 4, 8, {}, dict(original["llama"])
    layer = 1
    for name in ("q_proj", "v_proj"):
        weight = original["llama"][f"model.layers.{layer}.self_attn.{name}.weight"]
        a, b = torch.randn(r, weight.shape[1], generator=g) * 0.3, torch.randn(weight.shape[0], r, generator=g) * 0.3
        lora[f"base_model.model.model.layers.{layer}.self_attn.{name}.lora_A.weight"] = a
        lora[f"base_model.model.model.layers.{layer}.self_attn.{name}.lora_B.weight"] = b
        merged[f"model.layers.{layer}.self_attn.{name}.weight"] = weight + alpha / r * b @ a
    adapter = tmp_path / "adapter_original"
    adapter.mkdir()
    save_file(lora, str(adapter / "adapter_model.safetensors"))
    (adapter / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": r, "lora_alpha": alpha, "lora_dropout": 0.0,
        "bias": "none", "target_modules": r".*language_model.*\.(q_proj|v_proj)|.*model\.layers.*\.(q_proj|v_proj)",
        "layers_to_transform": None, "base_model_name_or_path": "llava-rad", "inference_mode": True,
        "fan_in_fan_out": False}))
    assert adapter_layout(adapter) == "original"
    remapped = remap_adapter(adapter, tmp_path / "adapter_hf")
    assert adapter_layout(remapped) == "llava-hf"

    pixels = open_clip_pixels(image(SIZE, SIZE, seed=6), SIZE)
    ids = tokenizer_image_token("USER: <image>\nIs there cardiomegaly? ASSISTANT:", original["tokenizer"])
    with torch.no_grad():
        ref_lora = reference_logits({**original, "llama": merged}, ids, pixels)
        ref_base = reference_logits(original, ids, pixels)
    lm = models.load_model(str(converted), adapter=str(remapped), dtype="float32", device="cpu")
    image_id = lm.processor.tokenizer.convert_tokens_to_ids("<image>")
    hf_ids = [t for i in ids for t in ([image_id] * VIT["grid"] ** 2 if i == ORIGINAL_IMAGE_TOKEN else [i])]
    with torch.no_grad():
        ours = lm.model(input_ids=torch.tensor([hf_ids]), pixel_values=pixels).logits[0, :, :-1]
    assert torch.allclose(ours, ref_lora, atol=TOL * 10, rtol=TOL)
    assert not torch.allclose(ref_lora, ref_base, atol=1e-3)
    # unmapped, the original layout would load as a silent no-op: the loader refuses it
    with pytest.raises(ValueError, match="does not fit"):
        models.load_model(str(converted), adapter=str(adapter), dtype="float32", device="cpu")


def test_converter_refuses_what_it_cannot_map_exactly(original, tmp_path):
    src = tmp_path / "linear_projector"
    src.mkdir()
    (src / "config.json").write_text(json.dumps({**original_config(10), "mm_projector_type": "linear"}))
    with pytest.raises(ConversionError, match="mlp2x_gelu"):
        convert(src, tmp_path / "x")
    (src / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(ConversionError, match="mm_"):
        convert(src, tmp_path / "x")


def test_evaluate_notebook_runs_the_converted_checkpoint(converted, tmp_path):
    from tests.test_families import check_run, run_notebook, write_mimic_fixture

    root = write_mimic_fixture(tmp_path / "mimic", n_images=3)
    summary, predictions, _ = run_notebook(tmp_path, converted, root, "none", config="llava-rad-tiny", limit=6)
    check_run(summary, predictions, "none", n_samples=6)
    assert summary["engine"]["mode"] == "prefix_sharing"
