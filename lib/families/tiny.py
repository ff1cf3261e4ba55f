"""The one factory for tiny randomly initialised checkpoints of the real model classes.

Every tiny checkpoint in the project is built here: the offline default family
(`lib.offline.default_models`, which then trains it), the tiny checkpoints of the real families
(`lib.families.registry`), and the test fixtures (`tests/`). What differs between them is passed
in, never copied: the special tokens and BOS behaviour (`Vocabulary`), the chat template (one of
`lib.families.templates`), the number of layers, the image and patch size, the image tokens,
the seed.

* `train_tokenizer`: a byte-level BPE tokenizer trained on a corpus (by default every built-in
  question, `question_corpus`), wrapped as a `PreTrainedTokenizerFast`. Newlines are always
  their own tokens, so a prompt's tokens do not depend on where a chat template's text is cut
  (the engine splits prompts into an image prefix and a question), and every yes/no spelling
  becomes one token, as in real LLM vocabularies.
* `text_config_kwargs` / `vision_config_kwargs`: a tiny decoder and vision tower whose every
  Linear has out_features divisible by 64 (bitsandbytes can quantise them on CPU).
* `build_llava` (`LlavaForConditionalGeneration` + `LlavaProcessor`, CLIP tower + Llama) and
  `build_gemma3` (`Gemma3ForConditionalGeneration` + `Gemma3Processor`, SigLIP tower + Gemma 3).
* `save`: `save_pretrained` (safetensors) of model and processor, so that the project's loader
  (`lib.protocol.models.load_model`) reads the result exactly like a hub checkpoint.

Imports only `lib.protocol` (the question corpus); never `lib.offline`.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (CLIPImageProcessorPil, CLIPVisionConfig, Gemma3Config,
                          Gemma3ForConditionalGeneration, Gemma3ImageProcessorPil, Gemma3Processor,
                          Gemma3TextConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration,
                          LlavaProcessor, PreTrainedTokenizerFast, SiglipVisionConfig)

from ..protocol.questions import BUILTIN_QUESTIONS

# Every single-token spelling of the answers the engine reads (lib.protocol.models).
ANSWERS = ["yes", "no", "Yes", "No", "YES", "NO", " yes", " no", " Yes", " No", " YES", " NO"]


@dataclass(frozen=True)
class Vocabulary:
    """A tokenizer's special tokens and how it writes them.

    `specials` get the ids 0, 1, ... in this order; `tokens` are the keyword arguments of
    `PreTrainedTokenizerFast` naming them (bos_token, eos_token, unk_token, pad_token,
    extra_special_tokens; a None value: the tokenizer has no such token); `template_words` are
    the chat template's own text, repeated in training so that it gets whole tokens; with
    `add_bos` the tokenizer puts BOS before every text (as Llama's and Gemma's do).
    """

    specials: tuple[str, ...]
    tokens: dict
    template_words: tuple[str, ...] = ()
    add_bos: bool = False


def question_corpus() -> list[str]:
    """Every built-in question: the tokenizer is trained on exactly what will be asked."""
    return [q for prompts in BUILTIN_QUESTIONS.values() for q in prompts]


def train_tokenizer(vocabulary: Vocabulary, corpus: list[str] | None = None,
                    chat_template: str | None = None, vocab_size: int = 512):
    """A byte-level BPE tokenizer trained on `corpus` (default `question_corpus()`)."""
    tok = Tokenizer(models.BPE(unk_token=vocabulary.tokens.get("unk_token")))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split("\n", behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=list(vocabulary.specials),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    corpus = question_corpus() if corpus is None else corpus
    # Answers and template words are repeated so that each becomes one token.
    tok.train_from_iterator(corpus + ANSWERS * 50 + list(vocabulary.template_words) * 50,
                            trainer=trainer)
    if vocabulary.add_bos:
        bos = vocabulary.tokens["bos_token"]
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
            special_tokens=[(bos, tok.token_to_id(bos))])
    kwargs = {k: v for k, v in vocabulary.tokens.items() if v is not None}
    return PreTrainedTokenizerFast(tokenizer_object=tok, chat_template=chat_template, **kwargs)


def token_ids(tokenizer, *tokens) -> list[int]:
    return [tokenizer.convert_tokens_to_ids(t) for t in tokens]


def text_config_kwargs(tokenizer, layers: int, kv_heads: int = 4,
                       max_positions: int = 512) -> dict:
    """A tiny decoder whose every Linear has out_features divisible by 64 (4-bit on CPU)."""
    return dict(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=kv_heads, head_dim=16,
        max_position_embeddings=max_positions,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=False,
    )


def vision_config_kwargs(image_size: int, patch_size: int) -> dict:
    """A tiny 2-layer ViT (CLIP, SigLIP, Idefics3 and the like take the same keys)."""
    return dict(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        image_size=image_size, patch_size=patch_size, num_channels=3,
    )


def build_llava(tokenizer, *, chat_template: str, seed: int, layers: int, image_size: int,
                patch_size: int, vision_feature_layer: int, kv_heads: int = 4,
                max_positions: int = 512):
    """Randomly initialised LlavaForConditionalGeneration + LlavaProcessor (CLIP + Llama).

    The tokenizer must have an `<image>` token (see `Vocabulary`)."""
    torch.manual_seed(seed)
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(**vision_config_kwargs(image_size, patch_size),
                                       projection_dim=64),
        text_config=LlamaConfig(**text_config_kwargs(tokenizer, layers, kv_heads, max_positions)),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_layer=vision_feature_layer, vision_feature_select_strategy="default",
        pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False,
    )
    model = LlavaForConditionalGeneration(config)
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size},
    )
    processor = LlavaProcessor(
        image_processor=image_processor, tokenizer=tokenizer, patch_size=patch_size,
        vision_feature_select_strategy="default", chat_template=chat_template,
        num_additional_image_tokens=1,
    )
    return model, processor


def build_gemma3(tokenizer, *, chat_template: str, seed: int, layers: int, image_size: int,
                 patch_size: int, tokens_per_image: int = 16, kv_heads: int = 4,
                 max_positions: int = 512):
    """Randomly initialised Gemma3ForConditionalGeneration + Gemma3Processor (SigLIP + Gemma 3).

    The tokenizer must have `<start_of_image>`, `<end_of_image>` and `<image_soft_token>`."""
    torch.manual_seed(seed)
    boi, eoi, soft = token_ids(tokenizer, "<start_of_image>", "<end_of_image>",
                               "<image_soft_token>")
    text = Gemma3TextConfig(
        **text_config_kwargs(tokenizer, layers, kv_heads, max_positions), sliding_window=512,
        query_pre_attn_scalar=16,
    )
    config = Gemma3Config(
        text_config=text,
        vision_config=SiglipVisionConfig(**vision_config_kwargs(image_size, patch_size)),
        mm_tokens_per_image=tokens_per_image, boi_token_index=boi, eoi_token_index=eoi,
        image_token_index=soft, tie_word_embeddings=False,
    )
    model = Gemma3ForConditionalGeneration(config)
    image_processor = Gemma3ImageProcessorPil(
        size={"height": image_size, "width": image_size}, do_pan_and_scan=False,
        image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5],
    )
    processor = Gemma3Processor(
        image_processor=image_processor, tokenizer=tokenizer, chat_template=chat_template,
        image_seq_length=tokens_per_image,
    )
    return model, processor


def save(model, processor, out_dir) -> Path:
    """Model (safetensors) and processor files in `out_dir`, as `load_model` reads them."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    processor.save_pretrained(out)
    return out
