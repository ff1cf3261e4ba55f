"""The offline default model family: small VLMs built from the real transformers classes.

Two families, like the paper's two: a LLaVA-style model (`LlavaForConditionalGeneration`,
CLIP vision tower + Llama text model, llava-1.5 chat format, like LLaVA-Rad) and a Gemma 3-style
model (`Gemma3ForConditionalGeneration`, SigLIP vision tower + Gemma 3 text model, Gemma chat
format, like MedGemma). Each gets a real processor and a byte-level BPE tokenizer trained
locally, and is saved with `save_pretrained` (safetensors) so that the project's normal loader
reads it exactly like a hub checkpoint. Sizes are multiples of 64 so that bitsandbytes can
quantise every text Linear layer on CPU.
"""
from __future__ import annotations

import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

FAMILIES = ("llava", "gemma3")
IMAGE_SIZE = 64
PATCH_SIZE = 16
# What a base model must show on the held-out split to count as reading the image: accuracy
# with the image, and how often its text-only answer differs from its image answer.
MIN_ACCURACY = 0.85
MIN_TEXT_ONLY_DIFFERS = 0.25
# Training defaults (see `train_base`).
VISION_LR = 2e-3
VISION_SCALE = 0.1
WARMUP = 0.1

LLAVA_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] != 'system' %}{{ message['role'].upper() + ': ' }}{% endif %}"
    "{% if message['content'] is string %}{{ message['content'] + ' ' }}{% else %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}"
    "{{ '<image>\n' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{{ content['text'] + ' ' }}{% endfor %}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)

GEMMA3_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
    "{{ '<start_of_turn>' + role + '\n' }}"
    "{% if message['content'] is string %}{{ message['content'] | trim }}{% else %}"
    "{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}{{ '<start_of_image>' }}"
    "{% elif item['type'] == 'text' %}{{ item['text'] | trim }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{{ '<end_of_turn>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)

SPECIAL_TOKENS = {
    "llava": ["<pad>", "<s>", "</s>", "<unk>", "<image>"],
    "gemma3": [
        "<pad>", "<bos>", "<eos>", "<unk>", "<start_of_turn>", "<end_of_turn>",
        "<start_of_image>", "<end_of_image>", "<image_soft_token>",
    ],
}


def train_tokenizer(family: str, corpus: list[str], vocab_size: int = 512):
    """A byte-level BPE tokenizer trained on the question corpus, wrapped for transformers."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = SPECIAL_TOKENS[family]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    # Newlines are always their own tokens, so a prompt's tokens do not depend on where a chat
    # template's text is cut (the engine splits prompts into an image prefix and a question).
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split("\n", behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False),
    ])
    tok.decoder = decoders.ByteLevel()
    answers = ["yes", "no", "Yes", "No", "YES", "NO", " yes", " no", " Yes", " No", " YES", " NO"]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    # Answers are repeated so every spelling becomes one token, as in real LLM vocabularies.
    tok.train_from_iterator(corpus + answers * 50 + template_words(family) * 50, trainer=trainer)
    if family == "llava":
        return PreTrainedTokenizerFast(
            tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
            pad_token="<pad>", extra_special_tokens={"image_token": "<image>"},
            chat_template=LLAVA_CHAT_TEMPLATE,
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", unk_token="<unk>",
        pad_token="<pad>", chat_template=GEMMA3_CHAT_TEMPLATE,
        extra_special_tokens={
            "boi_token": "<start_of_image>", "eoi_token": "<end_of_image>",
            "image_token": "<image_soft_token>", "start_of_turn": "<start_of_turn>",
            "end_of_turn": "<end_of_turn>",
        },
    )


def template_words(family: str) -> list[str]:
    return ["USER: ", " ASSISTANT:", "\n"] if family == "llava" else ["user\n", "model\n", "\n\n"]


def text_config_kwargs(tokenizer, layers: int) -> dict:
    """A tiny decoder whose every Linear has out_features divisible by 64 (4-bit on CPU)."""
    return dict(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=4, head_dim=16, max_position_embeddings=512,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=False,
    )


def vision_config_kwargs() -> dict:
    return dict(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        image_size=IMAGE_SIZE, patch_size=PATCH_SIZE, num_channels=3,
    )


def build_llava(tokenizer, seed: int, layers: int = 4):
    """Randomly initialised LlavaForConditionalGeneration + LlavaProcessor (CLIP, 64 px)."""
    from transformers import (CLIPImageProcessorPil, CLIPVisionConfig, LlamaConfig, LlavaConfig,
                              LlavaForConditionalGeneration, LlavaProcessor)

    torch.manual_seed(seed)
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(**vision_config_kwargs(), projection_dim=64),
        text_config=LlamaConfig(**text_config_kwargs(tokenizer, layers)),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_layer=-1, vision_feature_select_strategy="default",
        pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False,
    )
    model = LlavaForConditionalGeneration(config)
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
    )
    processor = LlavaProcessor(
        image_processor=image_processor, tokenizer=tokenizer, patch_size=PATCH_SIZE,
        vision_feature_select_strategy="default", chat_template=LLAVA_CHAT_TEMPLATE,
        num_additional_image_tokens=1,
    )
    return model, processor


def build_gemma3(tokenizer, seed: int, layers: int = 4, tokens_per_image: int = 16):
    """Randomly initialised Gemma3ForConditionalGeneration + Gemma3Processor (SigLIP, 64 px)."""
    from transformers import (Gemma3Config, Gemma3ForConditionalGeneration, Gemma3ImageProcessorPil,
                              Gemma3Processor, Gemma3TextConfig, SiglipVisionConfig)

    torch.manual_seed(seed)
    text = Gemma3TextConfig(
        **text_config_kwargs(tokenizer, layers), sliding_window=512, query_pre_attn_scalar=16,
    )
    config = Gemma3Config(
        text_config=text,
        vision_config=SiglipVisionConfig(**vision_config_kwargs()),
        mm_tokens_per_image=tokens_per_image,
        boi_token_index=tokenizer.convert_tokens_to_ids("<start_of_image>"),
        eoi_token_index=tokenizer.convert_tokens_to_ids("<end_of_image>"),
        image_token_index=tokenizer.convert_tokens_to_ids("<image_soft_token>"),
        tie_word_embeddings=False,
    )
    model = Gemma3ForConditionalGeneration(config)
    image_processor = Gemma3ImageProcessorPil(
        size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}, do_pan_and_scan=False,
        image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5],
    )
    processor = Gemma3Processor(
        image_processor=image_processor, tokenizer=tokenizer, chat_template=GEMMA3_CHAT_TEMPLATE,
        image_seq_length=tokens_per_image,
    )
    return model, processor


def build_untrained(family: str, corpus: list[str], seed: int):
    tokenizer = train_tokenizer(family, corpus)
    builder = build_llava if family == "llava" else build_gemma3
    return builder(tokenizer, seed)


def save(model, processor, out_dir) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    processor.save_pretrained(out)
    return out


# -- building the offline default world ------------------------------------------------------

def question_corpus() -> list[str]:
    """Every built-in question: the tokenizer is trained on exactly what will be asked."""
    from ..protocol.questions import BUILTIN_QUESTIONS

    return [q for prompts in BUILTIN_QUESTIONS.values() for q in prompts]


def training_examples(data_roots: dict, split: str = "train", datasets=None):
    """Examples (image, prompt set, label) of the given split of the synthetic datasets."""
    from ..protocol import data, questions
    from .training import Example

    sets = questions.load_question_sets()
    examples, images = [], {}
    for dataset in datasets or data_roots:
        for sample in data.iter_samples(dataset, data_roots[dataset], split=split):
            if sample.image_id not in images:
                loaded = data.load_image(sample)
                images[sample.image_id] = loaded.convert("RGB") if loaded else None
            if images[sample.image_id] is None:
                continue
            examples.append(Example(images[sample.image_id], sample.finding,
                                    questions.prompts_for(sample.finding, sets), sample.label))
    return examples, {i for i, im in images.items() if im is not None}


def finding_matrix(examples):
    """Images with all four finding labels known, and their (n_images, 4) 0/1 label matrix."""
    from ..protocol.data import FINDINGS

    labels: dict[int, dict] = {}
    images = {}
    for ex in examples:
        images[id(ex.image)] = ex.image
        labels.setdefault(id(ex.image), {})[ex.finding] = ex.label == "yes"
    keys = [k for k, v in labels.items() if len(v) == len(FINDINGS)]
    matrix = torch.tensor([[labels[k][f] for f in FINDINGS] for k in keys], dtype=torch.long)
    return [images[k] for k in keys], matrix


def by_image(examples) -> list[list]:
    """The examples grouped by image (all the findings asked about one image), in first-seen order."""
    groups: dict[int, list] = {}
    for ex in examples:
        groups.setdefault(id(ex.image), []).append(ex)
    return list(groups.values())


def train_base(family: str, examples, seed: int, vision_steps: int, epochs: float, lr: float,
               batch_size: int, prompt_pool: int, vision_lr: float = VISION_LR,
               vision_scale: float = VISION_SCALE, warmup: float = WARMUP, augment: bool = True):
    """Build a family's model from random weights and train it to answer from the pixels.

    Stage 1 teaches the vision side the findings (`training.pretrain_vision`, `vision_steps`
    steps at `vision_lr`); stage 2 trains the whole model on the yes/no answers of every finding
    of `batch_size` // 4 images per step (`training.base_step`), the vision side at
    `vision_scale` x `lr`. Only the first `prompt_pool` prompts of each question set are seen
    in training: the other paraphrases are new to the model at evaluation, as in real
    paraphrase benchmarks. With `augment`, both stages see jittered images
    (`training.augment_pixels`); without it the small ViT memorises where each training nodule
    was. Returns the model, its processor and both loss logs.
    """
    from functools import partial

    from ..protocol import models as loading
    from .training import Encoder, base_step, is_language, pretrain_vision, train

    model, processor = build_untrained(family, question_corpus(), seed)
    encoder = Encoder(processor, augment=augment)
    images, labels = finding_matrix(examples)
    vision_log = pretrain_vision(model, encoder, images, labels, steps=vision_steps, lr=vision_lr,
                                 batch_size=batch_size, seed=seed, warmup=warmup)
    ids = (loading.answer_token_ids(processor.tokenizer, ["yes"])[0],
           loading.answer_token_ids(processor.tokenizer, ["no"])[0])
    groups = by_image(examples)
    per_image = max(1, round(len(examples) / len(groups)))
    step = partial(base_step, encoder=encoder, ids=ids, prompt_pool=prompt_pool)
    log = train(model, lambda m, batch: step(m, groups=batch), groups,
                epochs=epochs, batch_size=max(1, batch_size // per_image), lr=lr, seed=seed,
                lr_scale=lambda name: 1.0 if is_language(name) else vision_scale, warmup=warmup)
    return model, processor, vision_log, log


def build_family(family: str, data_roots: dict, model_dir, seed: int, **training) -> dict:
    """Train one family's base model on the training split and save it with its loss logs.

    Runs on one thread: the result then depends on the seed only, not on how many cores the
    machine has (the order of float sums changes with the thread count, and training from random
    weights amplifies such differences). `training` holds `train_base`'s settings.
    """
    torch.set_num_threads(1)
    started = time.perf_counter()
    examples, _ = training_examples(data_roots, split="train")
    model, processor, vision_log, log = train_base(family, examples, seed, **training)
    model_dir = save(model, processor, model_dir)
    vision_log.to_csv(model_dir / "vision_log.csv", index=False)
    log.to_csv(model_dir / "train_log.csv", index=False)
    return {"family": family, "model_dir": str(model_dir),
            "seconds": round(time.perf_counter() - started, 1),
            "final_probe_loss": float(vision_log.loss.iloc[-1]),
            "final_answer_loss": float(log.loss.iloc[-1])}


def build_families(data_roots: dict, models_root, seed: int, workers: int | None = None,
                   **training) -> list[dict]:
    """`build_family` for every family, in parallel processes (one per core, at most one each).

    Every family is trained in a fresh process whatever `workers` is, so that a build gives the
    same models on one core and on many. Models go to `<models_root>/<family>-base`.
    """
    workers = workers or min(len(FAMILIES), os.cpu_count() or 1)
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        jobs = [pool.submit(build_family, family, data_roots, Path(models_root) / f"{family}-base",
                            seed, **training) for family in FAMILIES]
        return [job.result() for job in jobs]
