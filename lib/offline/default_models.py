"""The offline default model family: small VLMs built from the real transformers classes, and their training.

Two families, like the paper's two: a LLaVA-style model (`LlavaForConditionalGeneration`,
CLIP vision tower + Llama text model, llava-1.5 chat format, like LLaVA-Rad) and a Gemma 3-style
model (`Gemma3ForConditionalGeneration`, SigLIP vision tower + Gemma 3 text model, Gemma chat
format, like MedGemma). Each gets a real processor and a byte-level BPE tokenizer trained
locally, and is saved with `save_pretrained` (safetensors) so that the project's normal loader
reads it exactly like a hub checkpoint. Sizes are multiples of 64 so that bitsandbytes can
quantise every text Linear layer on CPU.

This module owns what the default world IS: its two families, their vocabularies
(`VOCABULARIES`), chat templates (the compact ones of `lib.families.templates`), sizes (4 layers,
64 px images, patch 16), the held-out bar (`MIN_BALANCED_ACCURACY`, `MIN_YES_NO_MASS`,
`MIN_TWIN_CHANGES`), the paraphrases no training stage sees (`prompt_split`), the reliance dial
(`RELIANCE_DIAL`) and how the models are trained (`train_base`, `build_family(ies)`). The
checkpoints themselves are made by the one tiny-checkpoint factory, `lib.families.tiny`.
"""
from __future__ import annotations

import json
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from pathlib import Path

import torch

from ..families import templates, tiny
from ..families.tiny import question_corpus, save  # also this module's API (tests, notebooks)
from ..protocol import data, questions
from ..protocol import models as loading
from . import synth
from .training import Encoder, Example, base_step, is_language, pretrain_vision, train

FAMILIES = ("llava", "gemma3")
IMAGE_SIZE = 64
PATCH_SIZE = 16
LAYERS = 4
# The LLaVA model reads the last layer of its vision tower.
VISION_FEATURE_LAYER = -1
# What a base model must show on the held-out split (with the real label priors): balanced
# accuracy with the image (mean of sensitivity and specificity: plain accuracy is 0.9 for an
# always-"no" model here), the median yes/no mass of its image answers (its next-token
# distribution is an answer), and how often its answer to the original question changes when the
# image is replaced by its counterfactual twin (the finding toggled): it reads the image.
MIN_BALANCED_ACCURACY = 0.8
MIN_YES_NO_MASS = 0.9
MIN_TWIN_CHANGES = 0.6
# Training defaults (see `train_base`).
VISION_LR = 2e-3
VISION_SCALE = 0.1
WARMUP = 0.1
TEXT_DROPOUT = 0.2      # fraction of stage-2 questions asked without the image
PROMPT_POOL = 4         # the first PROMPT_POOL paraphrases of each finding are trained on
N_PRETRAIN = 800        # balanced extra images for stage 1 (synth.pretraining_images)
N_ANSWER_POOL = 300     # of which this many also join stage 2, always with their image

# The reliance dial: adapters built to ignore the image for chosen findings (their training
# shows those questions with a random other image: lib.offline.training.consistency_step). The
# params/lora/<name>.yaml of each must name the same findings (`shortcut_findings`); every other
# configuration of the default world is built to read the image for every finding.
RELIANCE_DIAL = {
    "llava-lora-shortcut": ("pneumothorax", "nodule"),
    "gemma3-lora-shortcut": ("cardiomegaly", "pleural effusion", "pneumothorax"),
}

LLAVA_CHAT_TEMPLATE = templates.LLAVA_1_5_COMPACT
GEMMA3_CHAT_TEMPLATE = templates.GEMMA3_COMPACT
CHAT_TEMPLATES = {"llava": LLAVA_CHAT_TEMPLATE, "gemma3": GEMMA3_CHAT_TEMPLATE}

# No BOS is added by the tokenizers: the Gemma 3 template writes it, the LLaVA format has none.
VOCABULARIES = {
    "llava": tiny.Vocabulary(
        specials=("<pad>", "<s>", "</s>", "<unk>", "<image>"),
        tokens={"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>",
                "extra_special_tokens": {"image_token": "<image>"}},
        template_words=("USER: ", " ASSISTANT:", "\n"),
    ),
    "gemma3": tiny.Vocabulary(
        specials=("<pad>", "<bos>", "<eos>", "<unk>", "<start_of_turn>", "<end_of_turn>",
                  "<start_of_image>", "<end_of_image>", "<image_soft_token>"),
        tokens={"bos_token": "<bos>", "eos_token": "<eos>", "unk_token": "<unk>", "pad_token": "<pad>",
                "extra_special_tokens": {
                    "boi_token": "<start_of_image>", "eoi_token": "<end_of_image>",
                    "image_token": "<image_soft_token>", "start_of_turn": "<start_of_turn>",
                    "end_of_turn": "<end_of_turn>"}},
        template_words=("user\n", "model\n", "\n\n"),
    ),
}
SPECIAL_TOKENS = {family: list(v.specials) for family, v in VOCABULARIES.items()}


def train_tokenizer(family: str, corpus: list[str], vocab_size: int = 512):
    """The family's byte-level BPE tokenizer trained on the question corpus (`tiny.train_tokenizer`)."""
    return tiny.train_tokenizer(VOCABULARIES[family], corpus, chat_template=CHAT_TEMPLATES[family],
                                vocab_size=vocab_size)


def build_llava(tokenizer, seed: int, layers: int = LAYERS):
    """Randomly initialised LlavaForConditionalGeneration + LlavaProcessor (CLIP, 64 px)."""
    return tiny.build_llava(tokenizer, chat_template=LLAVA_CHAT_TEMPLATE, seed=seed, layers=layers,
                            image_size=IMAGE_SIZE, patch_size=PATCH_SIZE,
                            vision_feature_layer=VISION_FEATURE_LAYER)


def build_gemma3(tokenizer, seed: int, layers: int = LAYERS, tokens_per_image: int = 16):
    """Randomly initialised Gemma3ForConditionalGeneration + Gemma3Processor (SigLIP, 64 px)."""
    return tiny.build_gemma3(tokenizer, chat_template=GEMMA3_CHAT_TEMPLATE, seed=seed, layers=layers,
                             image_size=IMAGE_SIZE, patch_size=PATCH_SIZE,
                             tokens_per_image=tokens_per_image)


def build_untrained(family: str, corpus: list[str], seed: int):
    """(model, processor) of one default family with random weights: what `train_base` starts from."""
    tokenizer = train_tokenizer(family, corpus)
    builder = build_llava if family == "llava" else build_gemma3
    return builder(tokenizer, seed)


# -- building the offline default world ------------------------------------------------------

def prompt_split(pool: int = PROMPT_POOL) -> dict[str, dict[str, list[str]]]:
    """{finding: {"train": [...], "held_out": [...]}}: the exact built-in prompt texts that training
    may use (the original question and the next pool - 1 paraphrases) and those no training stage
    (base or LoRA) sees. Every finding keeps at least one held-out paraphrase."""
    sets = questions.load_question_sets()
    split = {}
    for finding in data.FINDINGS:
        prompts = list(questions.prompts_for(finding, sets))
        keep = min(pool, len(prompts) - 1)
        split[finding] = {"train": prompts[:keep], "held_out": prompts[keep:]}
    return split


def train_prompts(split: dict | None) -> dict[str, tuple[str, ...]] | None:
    """{finding: training prompts} of a `prompt_split` (None: None)."""
    return None if split is None else {f: tuple(v["train"]) for f, v in split.items()}


def training_examples(data_roots: dict, split: str = "train", datasets=None, prompts=None):
    """Examples (image, prompt set, label) of the given split of the synthetic datasets.

    `prompts`: {finding: the prompts training may use} (`train_prompts`); None: every built-in
    prompt."""
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
                                    prompts[sample.finding] if prompts else
                                    questions.prompts_for(sample.finding, sets), sample.label))
    return examples, {i for i, im in images.items() if im is not None}


def finding_matrix(examples):
    """Images with all four finding labels known, and their (n_images, 4) 0/1 label matrix."""
    labels: dict[int, dict] = {}
    images = {}
    for ex in examples:
        images[id(ex.image)] = ex.image
        labels.setdefault(id(ex.image), {})[ex.finding] = ex.label == "yes"
    keys = [k for k, v in labels.items() if len(v) == len(data.FINDINGS)]
    matrix = torch.tensor([[labels[k][f] for f in data.FINDINGS] for k in keys], dtype=torch.long)
    return [images[k] for k in keys], matrix


def by_image(examples) -> list[list]:
    """The examples grouped by image (all the findings asked about one image), in first-seen order."""
    groups: dict[int, list] = {}
    for ex in examples:
        groups.setdefault(id(ex.image), []).append(ex)
    return list(groups.values())


def pool_examples(pretrain, n: int, prompts: dict) -> list[Example]:
    """Stage-2 examples of the first `n` pretraining images: every finding, its training
    `prompts`, never asked without the image (they must not shape the text-only prior)."""
    images, labels = pretrain
    return [Example(image, finding, tuple(prompts[finding]), "yes" if row[j] else "no", droppable=False)
            for image, row in zip(images[:n], labels[:n]) for j, finding in enumerate(data.FINDINGS)]


def train_base(family: str, examples, seed: int, vision_steps: int, epochs: float, lr: float,
               batch_size: int, text_dropout: float = TEXT_DROPOUT, pretrain=None,
               answer_pool: int = 0, vision_lr: float = VISION_LR,
               vision_scale: float = VISION_SCALE, warmup: float = WARMUP, augment: bool = True):
    """Build a family's model from random weights and train it to answer from the pixels.

    Stage 1 teaches the vision side the findings (`training.pretrain_vision`, `vision_steps`
    steps at `vision_lr`) on the training images plus `pretrain` = (extra images, their (n, 4)
    finding matrix), e.g. `synth.pretraining_images`: a balanced pool, so that rare findings
    are learnt too. Stage 2 trains the whole model on the yes/no answers of every finding of
    `batch_size` // 4 images per step (`training.base_step`; full-vocabulary cross-entropy; a
    fraction `text_dropout` asked without the image), the vision side at `vision_scale` x `lr`.
    Stage 2 sees only the examples' own `prompts` (the training paraphrases, `prompt_split`) and
    the training labels, so its text-only answer is their prior. The first `answer_pool` images of
    `pretrain` join stage 2 too, always with their image (`pool_examples`): with a dozen training
    positives of the rarest findings the answer otherwise never learns to read them. With `augment`, both stages see
    jittered images (`training.augment_pixels`); without it the small ViT memorises where each
    training nodule was. Returns the model, its processor and both loss logs.
    """
    model, processor = build_untrained(family, question_corpus(), seed)
    encoder = Encoder(processor, augment=augment)
    images, labels = finding_matrix(examples)
    if pretrain is not None:
        images = list(images) + list(pretrain[0])
        labels = torch.cat([labels, torch.as_tensor(pretrain[1], dtype=labels.dtype)])
    vision_log = pretrain_vision(model, encoder, images, labels, steps=vision_steps, lr=vision_lr,
                                 batch_size=batch_size, seed=seed, warmup=warmup)
    ids = (loading.answer_token_ids(processor.tokenizer, ["yes"])[0],
           loading.answer_token_ids(processor.tokenizer, ["no"])[0])
    if pretrain is not None and answer_pool:
        prompts = {ex.finding: ex.prompts for ex in examples}
        examples = list(examples) + pool_examples(pretrain, answer_pool, prompts)
    groups = by_image(examples)
    per_image = max(1, round(len(examples) / len(groups)))
    step = partial(base_step, encoder=encoder, ids=ids, text_dropout=text_dropout)
    log = train(model, lambda m, batch: step(m, groups=batch), groups,
                epochs=epochs, batch_size=max(1, batch_size // per_image), lr=lr, seed=seed,
                lr_scale=lambda name: 1.0 if is_language(name) else vision_scale, warmup=warmup)
    return model, processor, vision_log, log


TRAINING_PROMPTS = "training_prompts.json"


def build_family(family: str, data_roots: dict, model_dir, seed: int,
                 prompt_pool: int = PROMPT_POOL, n_pretrain: int = N_PRETRAIN,
                 answer_pool: int = N_ANSWER_POOL, **training) -> dict:
    """Train one family's base model on the training split and save it with its loss logs.

    Runs on one thread: the result then depends on the seed only, not on how many cores the
    machine has (the order of float sums changes with the thread count, and training from random
    weights amplifies such differences). Stage 2 uses the "train" prompts of
    `prompt_split(prompt_pool)` only; they are saved beside the model (`TRAINING_PROMPTS`).
    `n_pretrain` balanced extra images join stage 1, `answer_pool` of them stage 2 as well.
    `training` holds `train_base`'s settings.
    """
    torch.set_num_threads(1)
    started = time.perf_counter()
    prompts = train_prompts(prompt_split(prompt_pool))
    examples, _ = training_examples(data_roots, split="train", prompts=prompts)
    pretrain = synth.pretraining_images(n_pretrain, seed) if n_pretrain else None
    model, processor, vision_log, log = train_base(family, examples, seed, pretrain=pretrain,
                                                   answer_pool=answer_pool if n_pretrain else 0,
                                                   **training)
    model_dir = save(model, processor, model_dir)
    vision_log.to_csv(model_dir / "vision_log.csv", index=False)
    log.to_csv(model_dir / "train_log.csv", index=False)
    (model_dir / TRAINING_PROMPTS).write_text(json.dumps(
        sorted({q for ex in examples for q in ex.prompts}), indent=1))
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
