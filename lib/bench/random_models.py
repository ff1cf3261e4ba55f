"""Models with the real classes and shapes and random weights, built on the device, no download.

A LLaVA-1.5-7B-shaped model (LlavaForConditionalGeneration: CLIP ViT-L/14 at 336 px +
Llama-2-7B text, vocab 32064) and a MedGemma-4B-shaped one (Gemma3ForConditionalGeneration:
SigLIP so400m at 896 px, 256 image tokens + Gemma3-4B text, vocab 262208, tied embeddings), or
tiny versions of both for a CPU run. Allocated under `torch.device` with transformers' weight
init skipped, then one `normal_(0, 0.02)` pass over the weights, norms set to the identity.
The processor is the real processor class with a byte-level BPE tokenizer trained here on the
built-in questions (`lib.offline.default_models`); its vocabulary is small (320) so that the
questions are ~20 tokens long as with the real tokenizers, and every id is below the vocab size.
"""
from __future__ import annotations

import gc

import torch
from PIL import Image

from ..offline import default_models
from ..protocol import models

MIN_TRANSFORMERS = (5, 24)
STD = 0.02

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
# the tiny shapes (a CPU run): the same fields, small
TINY_VISION = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                   image_size=64, patch_size=8)
TINY_TEXT = dict(hidden_size=64, num_hidden_layers=4, num_attention_heads=4, intermediate_size=128,
                 vocab_size=1024, max_position_embeddings=512)
TINY = {
    "llava": {"name": "llava-tiny", "vision": {**TINY_VISION, "projection_dim": 64},
              "text": {**TINY_TEXT, "num_key_value_heads": 4}},
    "gemma3": {
        "name": "gemma3-tiny", "vision": TINY_VISION,
        # (window > prompt length, as in the real shape: 1024 > ~300 tokens. A window shorter
        # than prefix + suffix breaks prefix sharing: see the report of issue 5.)
        "text": {**TINY_TEXT, "num_key_value_heads": 2, "head_dim": 16, "sliding_window": 512,
                 "query_pre_attn_scalar": 16},
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
    """(model, processor, image processor class name) of one family with random weights."""
    from transformers import (CLIPVisionConfig, Gemma3Config, Gemma3ForConditionalGeneration,
                              Gemma3Processor, Gemma3TextConfig, LlamaConfig, LlavaConfig,
                              LlavaForConditionalGeneration, LlavaProcessor, SiglipVisionConfig)

    shape = shapes[family]
    tokenizer = default_models.train_tokenizer(family, default_models.question_corpus(), vocab_size=320)
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
    """The model as the engine takes it (yes/no token ids read from its tokenizer)."""
    tok = processor.tokenizer
    return models.LoadedModel(model, processor, models.answer_token_ids(tok, models.YES_SPELLINGS),
                              models.answer_token_ids(tok, models.NO_SPELLINGS), device, dtype)


def quantize_nf4(model, device, dtype) -> int:
    """Replace the text Linear layers by bitsandbytes nf4 ones (double quantisation, `dtype`
    compute; vision tower, projector and lm_head kept as in `lib.protocol.models`), in place;
    returns how many."""
    import bitsandbytes as bnb

    count = 0
    for parent_name, parent in list(model.named_modules()):
        for name, child in list(parent.named_children()):
            full = f"{parent_name}.{name}" if parent_name else name
            if not isinstance(child, torch.nn.Linear) or any(s in full for s in models.SKIP_QUANTIZATION):
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
    free(device)
    return count


def free(device) -> None:
    """Give back what the deleted tensors held (between models, after quantising)."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
