"""The real model families, as tiny random checkpoints, and the check run before `make paper`.

Each family is the SAME transformers architecture and processor class as its real checkpoints,
with the real chat template text; only the sizes are tiny and the tokenizer is a byte-level BPE
trained here (with the family's special tokens, and the BOS behaviour of the real tokenizer).
`build_tiny(family, out_dir)` saves one with `save_pretrained` (safetensors), so the project's
normal loader (`lib.protocol.models.load_model`) reads it exactly like a hub checkpoint.

| family | real checkpoints | model class | processor class |
|---|---|---|---|
| gemma3 | google/medgemma-4b-it, google/gemma-3-4b-it | Gemma3ForConditionalGeneration | Gemma3Processor |
| llava | llava-hf/llava-1.5-7b-hf, converted LLaVA-Rad | LlavaForConditionalGeneration | LlavaProcessor |
| idefics3 | HuggingFaceTB/SmolVLM-Instruct, HuggingFaceM4/Idefics3-8B-Llama3 | Idefics3ForConditionalGeneration | Idefics3Processor |
| qwen2_5_vl | Qwen/Qwen2.5-VL-3B-Instruct | Qwen2_5_VLForConditionalGeneration | Qwen2_5_VLProcessor |

Qwen2.5-VL: in transformers 5.24 `Qwen2_5_VLProcessor` cannot be built without torchvision (its
video processor is a torchvision class and the processor checks every component's class), so
on this project's CPU environment (no torchvision) only the model and the engine are exercised,
with that class check bypassed in memory (`qwen_processor_in_memory`); real Qwen2.5-VL
checkpoints need `pip install torchvision`. Its 3D mRoPE positions make image-prefix sharing
wrong, so the engine falls back to plain batching for it (`lib.protocol.engine.sharing_problem`).

`python -m lib.families.registry check params/paper` validates every params file of a directory (the
environment variables they name, the data directories) and that each model and adapter is
available (a local directory, or a hub id in the local cache since runs are offline); it exits 1
with one line per problem, naming the file, the variable or the model.
"""
from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch

IMAGE_SIZE = 64
PATCH_SIZE = 8
ANSWERS = ["yes", "no", "Yes", "No", "YES", "NO", " yes", " no", " Yes", " No", " YES", " NO"]

# -- the real chat templates (the text of each family's hub chat template) --------------------

GEMMA3_CHAT_TEMPLATE = (
    "{{ bos_token }}\n"
    "{%- if messages[0]['role'] == 'system' -%}\n"
    "    {%- if messages[0]['content'] is string -%}\n"
    "        {%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}\n"
    "    {%- else -%}\n"
    "        {%- set first_user_prefix = messages[0]['content'][0]['text'] + '\n\n' -%}\n"
    "    {%- endif -%}\n"
    "    {%- set loop_messages = messages[1:] -%}\n"
    "{%- else -%}\n"
    "    {%- set first_user_prefix = \"\" -%}\n"
    "    {%- set loop_messages = messages -%}\n"
    "{%- endif -%}\n"
    "{%- for message in loop_messages -%}\n"
    "    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}\n"
    "        {{ raise_exception(\"Conversation roles must alternate user/assistant/user/assistant/...\") }}\n"
    "    {%- endif -%}\n"
    "    {%- if (message['role'] == 'assistant') -%}\n"
    "        {%- set role = \"model\" -%}\n"
    "    {%- else -%}\n"
    "        {%- set role = message['role'] -%}\n"
    "    {%- endif -%}\n"
    "    {{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else \"\") }}\n"
    "    {%- if message['content'] is string -%}\n"
    "        {{ message['content'] | trim }}\n"
    "    {%- elif message['content'] is iterable -%}\n"
    "        {%- for item in message['content'] -%}\n"
    "            {%- if item['type'] == 'image' -%}\n"
    "                {{ '<start_of_image>' }}\n"
    "            {%- elif item['type'] == 'text' -%}\n"
    "                {{ item['text'] | trim }}\n"
    "            {%- endif -%}\n"
    "        {%- endfor -%}\n"
    "    {%- else -%}\n"
    "        {{ raise_exception(\"Invalid content type\") }}\n"
    "    {%- endif -%}\n"
    "    {{ '<end_of_turn>\n' }}\n"
    "{%- endfor -%}\n"
    "{%- if add_generation_prompt -%}\n"
    "    {{'<start_of_turn>model\n'}}\n"
    "{%- endif -%}\n"
)

LLAVA_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] != 'system' %}"
    "{{ message['role'].upper() + ': '}}{% endif %}"
    "{# Render all images first #}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}"
    "{{ '<image>\n' }}{% endfor %}"
    "{# Render all text next #}"
    "{% if message['role'] != 'assistant' %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{{ content['text'] + ' '}}{% endfor %}"
    "{% else %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{% generation %}{{ content['text'] + ' '}}{% endgeneration %}{% endfor %}"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)

IDEFICS3_CHAT_TEMPLATE = (
    "<|im_start|>{% for message in messages %}{{message['role'] | capitalize}}"
    "{% if message['content'][0]['type'] == 'image' %}{{':'}}{% else %}{{': '}}{% endif %}"
    "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{line['text']}}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}"
    "<end_of_utterance>\n{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)

QWEN2_5_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@dataclass(frozen=True)
class Family:
    """What a tiny checkpoint of one family needs: its tokens, template and hub examples."""

    name: str
    hub_examples: tuple[str, ...]
    chat_template: str
    specials: tuple[str, ...]
    tokens: dict                       # bos/eos/unk/pad and extra special tokens
    add_bos: bool                      # the real tokenizer puts BOS before every text
    template_words: tuple[str, ...]    # template text, so the tokenizer learns it
    needs_torchvision: bool = False
    notes: str = ""
    extra: dict = field(default_factory=dict)


FAMILIES: dict[str, Family] = {
    "gemma3": Family(
        "gemma3", ("google/medgemma-4b-it", "google/gemma-3-4b-it"), GEMMA3_CHAT_TEMPLATE,
        ("<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>",
         "<start_of_image>", "<end_of_image>", "<image_soft_token>"),
        {"bos_token": "<bos>", "eos_token": "<eos>", "unk_token": "<unk>", "pad_token": "<pad>",
         "extra_special_tokens": {"boi_token": "<start_of_image>", "eoi_token": "<end_of_image>",
                                  "image_token": "<image_soft_token>"}},
        add_bos=True, template_words=("user\n", "model\n", "\n\n"),
    ),
    "llava": Family(
        "llava", ("llava-hf/llava-1.5-7b-hf", "a converted LLaVA-Rad (lib.families.llava_rad)"),
        LLAVA_CHAT_TEMPLATE,
        ("<unk>", "<s>", "</s>", "<image>", "<pad>"),
        {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>",
         "extra_special_tokens": {"image_token": "<image>"}},
        add_bos=True, template_words=("USER: ", " ASSISTANT:", "\n"),
    ),
    "idefics3": Family(
        "idefics3", ("HuggingFaceTB/SmolVLM-Instruct", "HuggingFaceM4/Idefics3-8B-Llama3"),
        IDEFICS3_CHAT_TEMPLATE,
        ("<|endoftext|>", "<|im_start|>", "<end_of_utterance>", "<fake_token_around_image>",
         "<image>", "<global-img>", *[f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7)]),
        {"bos_token": "<|im_start|>", "eos_token": "<end_of_utterance>", "unk_token": "<|endoftext|>",
         "pad_token": "<|endoftext|>"},
        add_bos=False, template_words=("User:", "User: ", "Assistant:", "\n"),
    ),
    "qwen2_5_vl": Family(
        "qwen2_5_vl", ("Qwen/Qwen2.5-VL-3B-Instruct", "Qwen/Qwen2.5-VL-7B-Instruct"),
        QWEN2_5_VL_CHAT_TEMPLATE,
        ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
         "<|image_pad|>", "<|video_pad|>"),
        {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>", "unk_token": None, "bos_token": None},
        add_bos=False, template_words=("system\nYou are a helpful assistant.", "user\n", "assistant\n", "\n"),
        needs_torchvision=True,
        notes="Qwen2_5_VLProcessor needs torchvision in transformers 5.24 (its video processor)",
    ),
}


def torchvision_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("torchvision") is not None


def processor_problem(family: str) -> str | None:
    """Why this family's processor cannot be saved and loaded here, or None."""
    fam = FAMILIES[family]
    if fam.needs_torchvision and not torchvision_available():
        return f"{family}: {fam.notes}; torchvision is not installed"
    return None


# -- tokenizer --------------------------------------------------------------------------------

def question_corpus() -> list[str]:
    from ..protocol.questions import BUILTIN_QUESTIONS

    return [q for prompts in BUILTIN_QUESTIONS.values() for q in prompts]


def train_tokenizer(family: str, corpus: list[str] | None = None, vocab_size: int = 512):
    """Byte-level BPE with the family's special tokens and chat template (BOS as the real one)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    fam = FAMILIES[family]
    tok = Tokenizer(models.BPE(unk_token=fam.tokens.get("unk_token")))
    # Newlines are their own tokens, so tokens never merge across a cut of the chat template.
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split("\n", behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=list(fam.specials),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    corpus = question_corpus() if corpus is None else corpus
    tok.train_from_iterator(corpus + ANSWERS * 50 + list(fam.template_words) * 50, trainer=trainer)
    if fam.add_bos:
        bos = fam.tokens["bos_token"]
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, tok.token_to_id(bos))])
    kwargs = {k: v for k, v in fam.tokens.items() if v is not None}
    return PreTrainedTokenizerFast(tokenizer_object=tok, chat_template=fam.chat_template, **kwargs)


def _ids(tokenizer, *tokens) -> list[int]:
    return [tokenizer.convert_tokens_to_ids(t) for t in tokens]


def _text_kwargs(tokenizer, layers: int) -> dict:
    """The default family's tiny decoder, with grouped-query attention and longer positions."""
    from ..offline.default_models import text_config_kwargs

    return {**text_config_kwargs(tokenizer, layers), "num_key_value_heads": 2,
            "max_position_embeddings": 2048}


def _vision_kwargs() -> dict:
    return dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                image_size=IMAGE_SIZE, patch_size=PATCH_SIZE, num_channels=3)


# -- builders (random weights, real classes) --------------------------------------------------

def build_gemma3(tokenizer, layers: int = 2, tokens_per_image: int = 16):
    from transformers import (Gemma3Config, Gemma3ForConditionalGeneration, Gemma3ImageProcessorPil,
                              Gemma3Processor, Gemma3TextConfig, SiglipVisionConfig)

    boi, eoi, soft = _ids(tokenizer, "<start_of_image>", "<end_of_image>", "<image_soft_token>")
    config = Gemma3Config(
        text_config=Gemma3TextConfig(**_text_kwargs(tokenizer, layers), sliding_window=512,
                                     query_pre_attn_scalar=16),
        vision_config=SiglipVisionConfig(**_vision_kwargs()),
        mm_tokens_per_image=tokens_per_image, boi_token_index=boi, eoi_token_index=eoi,
        image_token_index=soft, tie_word_embeddings=False,
    )
    image_processor = Gemma3ImageProcessorPil(
        size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}, do_pan_and_scan=False,
        image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5],
    )
    processor = Gemma3Processor(image_processor=image_processor, tokenizer=tokenizer,
                                chat_template=FAMILIES["gemma3"].chat_template,
                                image_seq_length=tokens_per_image)
    return Gemma3ForConditionalGeneration(config), processor


def build_llava(tokenizer, layers: int = 2):
    from transformers import (CLIPImageProcessorPil, CLIPVisionConfig, LlamaConfig, LlavaConfig,
                              LlavaForConditionalGeneration, LlavaProcessor)

    config = LlavaConfig(
        vision_config=CLIPVisionConfig(**_vision_kwargs(), projection_dim=64),
        text_config=LlamaConfig(**_text_kwargs(tokenizer, layers)),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_layer=-2, vision_feature_select_strategy="default",
        pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False,
    )
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    processor = LlavaProcessor(
        image_processor=image_processor, tokenizer=tokenizer, patch_size=PATCH_SIZE,
        vision_feature_select_strategy="default", chat_template=FAMILIES["llava"].chat_template,
        num_additional_image_tokens=1,
    )
    return LlavaForConditionalGeneration(config), processor


def build_idefics3(tokenizer, layers: int = 2, image_splitting: bool = True):
    """SmolVLM-Instruct's architecture: SigLIP tiles + pixel-shuffle connector + Llama."""
    from transformers import (Idefics3Config, Idefics3ForConditionalGeneration,
                              Idefics3ImageProcessorPil, Idefics3Processor, Idefics3VisionConfig,
                              LlamaConfig)

    scale = 2
    seq_len = (IMAGE_SIZE // PATCH_SIZE) ** 2 // scale ** 2
    config = Idefics3Config(
        vision_config=Idefics3VisionConfig(**_vision_kwargs()),
        text_config=LlamaConfig(**_text_kwargs(tokenizer, layers)),
        scale_factor=scale, image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False,
    )
    image_processor = Idefics3ImageProcessorPil(
        size={"longest_edge": 2 * IMAGE_SIZE}, max_image_size={"longest_edge": IMAGE_SIZE},
        do_image_splitting=image_splitting, image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5],
    )
    processor = Idefics3Processor(image_processor=image_processor, tokenizer=tokenizer,
                                  image_seq_len=seq_len,
                                  chat_template=FAMILIES["idefics3"].chat_template)
    return Idefics3ForConditionalGeneration(config), processor


def qwen_processor_in_memory(tokenizer):
    """Qwen2_5_VLProcessor without its (torchvision) video processor, for in-memory use only.

    The processor's class check of the video processor fails without torchvision; it is
    bypassed for that one None argument while the processor is built. Such a processor scores
    images but cannot be saved (save_pretrained needs the video processor)."""
    from transformers import Qwen2_5_VLProcessor, Qwen2VLImageProcessorPil
    from transformers.processing_utils import ProcessorMixin

    image_processor = Qwen2VLImageProcessorPil(
        patch_size=PATCH_SIZE, temporal_patch_size=2, merge_size=2,
        min_pixels=(IMAGE_SIZE // 2) ** 2, max_pixels=IMAGE_SIZE ** 2,
        image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5],
    )
    if torchvision_available():
        from transformers import Qwen2VLVideoProcessor

        return Qwen2_5_VLProcessor(image_processor=image_processor, tokenizer=tokenizer,
                                   video_processor=Qwen2VLVideoProcessor(
                                       patch_size=PATCH_SIZE, temporal_patch_size=2, merge_size=2),
                                   chat_template=FAMILIES["qwen2_5_vl"].chat_template)
    original = ProcessorMixin.check_argument_for_proper_class

    def lenient(self, name, argument):
        if name == "video_processor" and argument is None:
            return None
        return original(self, name, argument)

    ProcessorMixin.check_argument_for_proper_class = lenient
    try:
        return Qwen2_5_VLProcessor(image_processor=image_processor, tokenizer=tokenizer,
                                   video_processor=None,
                                   chat_template=FAMILIES["qwen2_5_vl"].chat_template)
    finally:
        ProcessorMixin.check_argument_for_proper_class = original


def build_qwen2_5_vl(tokenizer, layers: int = 2):
    """Qwen2.5-VL: windowed ViT + patch merger, Qwen2 text model with 3D mRoPE."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    text = _text_kwargs(tokenizer, layers)
    text.pop("head_dim")
    text.pop("bos_token_id")
    image, video, start, end = _ids(tokenizer, "<|image_pad|>", "<|video_pad|>", "<|vision_start|>",
                                    "<|vision_end|>")
    config = Qwen2_5_VLConfig(
        text_config=dict(**text, rope_parameters={"rope_type": "default", "mrope_section": [2, 3, 3],
                                                  "rope_theta": 10000.0}),
        vision_config=dict(depth=2, hidden_size=64, intermediate_size=128, num_heads=4,
                           patch_size=PATCH_SIZE, spatial_merge_size=2, temporal_patch_size=2,
                           window_size=4 * PATCH_SIZE, out_hidden_size=64, fullatt_block_indexes=[1]),
        image_token_id=image, video_token_id=video, vision_start_token_id=start,
        vision_end_token_id=end, tie_word_embeddings=False,
    )
    return Qwen2_5_VLForConditionalGeneration(config), qwen_processor_in_memory(tokenizer)


BUILDERS = {"gemma3": build_gemma3, "llava": build_llava, "idefics3": build_idefics3,
            "qwen2_5_vl": build_qwen2_5_vl}


def build(family: str, seed: int = 0, corpus: list[str] | None = None, **kwargs):
    """(model, processor) of a tiny randomly initialised checkpoint of the family."""
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; known: {sorted(FAMILIES)}")
    tokenizer = train_tokenizer(family, corpus)
    torch.manual_seed(seed)
    model, processor = BUILDERS[family](tokenizer, **kwargs)
    return model.eval(), processor


def build_tiny(family: str, out_dir, seed: int = 0, **kwargs) -> Path:
    """Save a tiny checkpoint (safetensors + processor files) that `load_model` reads."""
    problem = processor_problem(family)
    if problem:
        raise RuntimeError(f"cannot save a {family} checkpoint here: {problem}")
    model, processor = build(family, seed=seed, **kwargs)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    processor.save_pretrained(out)
    return out


# -- `make paper`'s check ---------------------------------------------------------------------

def model_problem(location: str | None, what: str) -> str | None:
    """Why `location` (a directory or a hub id) cannot be loaded offline, or None."""
    if not location:
        return None
    path = Path(location).expanduser()
    if path.exists():
        if what == "model" and not (path / "config.json").is_file():
            return f"{what} directory {location} has no config.json"
        if what == "adapter" and not (path / "adapter_config.json").is_file():
            return f"{what} directory {location} has no adapter_config.json"
        return None
    if location.startswith((".", "/", "~")) or location.count("/") != 1:
        return f"{what} directory not found: {location}"
    from huggingface_hub import try_to_load_from_cache

    name = "config.json" if what == "model" else "adapter_config.json"
    if not isinstance(try_to_load_from_cache(location, name), str):
        return (f"{what} {location} is not in the local Hugging Face cache "
                f"({os.environ.get('HF_HUB_CACHE') or os.environ.get('HF_HOME') or '~/.cache/huggingface'}); "
                f"download it once with network access (see docs/real_models.md)")
    return None


def adapter_fit_problem(model: str, adapter: str | None) -> str | None:
    """An adapter saved on the ORIGINAL LLaVA layout over a converted LLaVA-Rad would load as a
    silent no-op (peft finds none of its weights); say so, with the remapping command."""
    if not adapter or not (Path(model).expanduser() / "conversion.json").is_file():
        return None
    from .llava_rad import adapter_layout

    directory = Path(adapter).expanduser()
    if not directory.is_dir():
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(adapter, "adapter_model.safetensors")
        if not isinstance(cached, str):
            return None
        directory = Path(cached).parent
    if adapter_layout(directory) == "original":
        return (f"adapter {adapter} is saved on the original LLaVA layout (model.layers.*) and would "
                f"not apply to the converted model {model}; remap it once with "
                f"`python -m lib.families.llava_rad adapter {directory} <out_dir>` and use <out_dir>")
    return None


def check_params(files) -> list[str]:
    """One message per problem across the params files (empty when all can run)."""
    from ..protocol import config

    problems = []
    for path in files:
        try:
            params = config.load(path)
        except config.ParamsError as err:
            problems.append(str(err))
            continue
        found = [model_problem(params[what], what) for what in ("model", "adapter")]
        problems += [f"{path}: {p}" for p in found if p]
        if not any(found):
            problem = adapter_fit_problem(params["model"], params["adapter"])
            if problem:
                problems.append(f"{path}: {problem}")
        if params["questions"] and not Path(params["questions"]).is_file():
            problems.append(f"{path}: questions file not found: {params['questions']}")
    return problems


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lib.families.registry", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("check", help="check params files (a directory or files) before a run")
    check.add_argument("paths", nargs="+")
    tiny = sub.add_parser("build-tiny", help="save a tiny random checkpoint of a family")
    tiny.add_argument("family", choices=sorted(FAMILIES))
    tiny.add_argument("out_dir")
    tiny.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.command == "build-tiny":
        print(build_tiny(args.family, args.out_dir, seed=args.seed))
        return 0
    files = []
    for p in map(Path, args.paths):
        files += sorted(p.glob("*.yaml")) if p.is_dir() else [p]
    if not files:
        print(f"no params files in {' '.join(args.paths)}", file=sys.stderr)
        return 1
    problems = check_params(files)
    for problem in problems:
        print(f"NOT READY: {problem}", file=sys.stderr)
    if problems:
        print(f"{len(problems)} problem(s) in {len(files)} params file(s); see docs/real_models.md",
              file=sys.stderr)
        return 1
    print(f"{len(files)} params file(s) ready")
    return 0


if __name__ == "__main__":
    sys.exit(main())
