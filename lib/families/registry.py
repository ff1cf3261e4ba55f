"""The real model families (their registry), tiny random checkpoints of them, and the check run before `make paper`.

Each family is the SAME transformers architecture and processor class as its real checkpoints,
with the real chat template text (`lib.families.templates`); only the sizes are tiny and the
tokenizer is a byte-level BPE trained here (with the family's special tokens, and the BOS
behaviour of the real tokenizer). `FAMILIES` records, per family, the hub checkpoints, the
chat template and the vocabulary. `build(family)` makes a tiny checkpoint of gemma3 or llava
with the one tiny-checkpoint factory (`lib.families.tiny`), and `build_tiny(family, out_dir)`
saves it with `save_pretrained` (safetensors), so the project's normal loader
(`lib.protocol.models.load_model`) reads it exactly like a hub checkpoint. The tiny Idefics3 and
Qwen2.5-VL builders are used by the tests only and live in `tests/tiny_families.py`.

| family | real checkpoints | model class | processor class |
|---|---|---|---|
| gemma3 | google/medgemma-4b-it, google/gemma-3-4b-it | Gemma3ForConditionalGeneration | Gemma3Processor |
| llava | llava-hf/llava-1.5-7b-hf, converted LLaVA-Rad | LlavaForConditionalGeneration | LlavaProcessor |
| idefics3 | HuggingFaceTB/SmolVLM-Instruct, HuggingFaceM4/Idefics3-8B-Llama3 | Idefics3ForConditionalGeneration | Idefics3Processor |
| qwen2_5_vl | Qwen/Qwen2.5-VL-3B-Instruct | Qwen2_5_VLForConditionalGeneration | Qwen2_5_VLProcessor |

Qwen2.5-VL: in transformers 5.24 `Qwen2_5_VLProcessor` cannot be built without torchvision (its
video processor is a torchvision class and the processor checks every component's class), so
on this project's CPU environment (no torchvision) the tests exercise only the model and the
engine, with that class check bypassed in memory; real Qwen2.5-VL checkpoints need
`pip install torchvision` (`processor_problem`). Its 3D mRoPE positions make image-prefix
sharing wrong, so the engine falls back to plain batching for it
(`lib.protocol.engine.sharing_problem`).

`python -m lib.families.registry check params/paper` validates every params file of a directory (the
environment variables they name, the data directories) and that each model and adapter is
available (a local directory, or a hub id in the local cache since runs are offline); it exits 1
with one line per problem, naming the file, the variable or the model.

Imports `lib.protocol` and this subpackage only; never `lib.offline`.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from huggingface_hub import try_to_load_from_cache

from ..protocol import config
from . import templates, tiny
from .llava_rad import adapter_layout

# The real families' tiny checkpoints: 64 px images in patches of 8, 2 decoder layers with
# grouped-query attention (2 key/value heads) and 2048 positions.
IMAGE_SIZE = 64
PATCH_SIZE = 8
LAYERS = 2
KV_HEADS = 2
MAX_POSITIONS = 2048


@dataclass(frozen=True)
class Family:
    """What a tiny checkpoint of one family needs: its hub examples, template and vocabulary."""

    name: str
    hub_examples: tuple[str, ...]
    chat_template: str
    vocabulary: tiny.Vocabulary
    needs_torchvision: bool = False
    notes: str = ""


FAMILIES: dict[str, Family] = {
    "gemma3": Family(
        "gemma3", ("google/medgemma-4b-it", "google/gemma-3-4b-it"), templates.GEMMA3_HUB,
        tiny.Vocabulary(
            ("<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>",
             "<start_of_image>", "<end_of_image>", "<image_soft_token>"),
            {"bos_token": "<bos>", "eos_token": "<eos>", "unk_token": "<unk>", "pad_token": "<pad>",
             "extra_special_tokens": {"boi_token": "<start_of_image>", "eoi_token": "<end_of_image>",
                                      "image_token": "<image_soft_token>"}},
            template_words=("user\n", "model\n", "\n\n"), add_bos=True),
    ),
    "llava": Family(
        "llava", ("llava-hf/llava-1.5-7b-hf", "a converted LLaVA-Rad (lib.families.llava_rad)"),
        templates.LLAVA_HF,
        tiny.Vocabulary(
            ("<unk>", "<s>", "</s>", "<image>", "<pad>"),
            {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>",
             "extra_special_tokens": {"image_token": "<image>"}},
            template_words=("USER: ", " ASSISTANT:", "\n"), add_bos=True),
    ),
    "idefics3": Family(
        "idefics3", ("HuggingFaceTB/SmolVLM-Instruct", "HuggingFaceM4/Idefics3-8B-Llama3"),
        templates.IDEFICS3_SMOLVLM,
        tiny.Vocabulary(
            ("<|endoftext|>", "<|im_start|>", "<end_of_utterance>", "<fake_token_around_image>",
             "<image>", "<global-img>",
             *[f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7)]),
            {"bos_token": "<|im_start|>", "eos_token": "<end_of_utterance>",
             "unk_token": "<|endoftext|>", "pad_token": "<|endoftext|>"},
            template_words=("User:", "User: ", "Assistant:", "\n"), add_bos=False),
    ),
    "qwen2_5_vl": Family(
        "qwen2_5_vl", ("Qwen/Qwen2.5-VL-3B-Instruct", "Qwen/Qwen2.5-VL-7B-Instruct"),
        templates.QWEN2_5_VL_HUB,
        tiny.Vocabulary(
            ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
             "<|image_pad|>", "<|video_pad|>"),
            {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>", "unk_token": None,
             "bos_token": None},
            template_words=("system\nYou are a helpful assistant.", "user\n", "assistant\n", "\n"),
            add_bos=False),
        needs_torchvision=True,
        notes="Qwen2_5_VLProcessor needs torchvision in transformers 5.24 (its video processor)",
    ),
}


def torchvision_available() -> bool:
    return importlib.util.find_spec("torchvision") is not None


def processor_problem(family: str) -> str | None:
    """Why this family's processor cannot be saved and loaded here, or None."""
    fam = FAMILIES[family]
    if fam.needs_torchvision and not torchvision_available():
        return f"{family}: {fam.notes}; torchvision is not installed"
    return None


# -- tiny checkpoints (random weights, real classes) ------------------------------------------

def train_tokenizer(family: str, corpus: list[str] | None = None, vocab_size: int = 512):
    """Byte-level BPE with the family's special tokens and chat template (BOS as the real one)."""
    fam = FAMILIES[family]
    return tiny.train_tokenizer(fam.vocabulary, corpus, chat_template=fam.chat_template,
                                vocab_size=vocab_size)


def text_config_kwargs(tokenizer, layers: int = LAYERS) -> dict:
    """The real families' tiny decoder: `tiny.text_config_kwargs` with GQA and 2048 positions."""
    return tiny.text_config_kwargs(tokenizer, layers, kv_heads=KV_HEADS, max_positions=MAX_POSITIONS)


def vision_config_kwargs() -> dict:
    return tiny.vision_config_kwargs(IMAGE_SIZE, PATCH_SIZE)


def build_gemma3(tokenizer, seed: int, layers: int = LAYERS, tokens_per_image: int = 16):
    return tiny.build_gemma3(tokenizer, chat_template=FAMILIES["gemma3"].chat_template, seed=seed,
                             layers=layers, image_size=IMAGE_SIZE, patch_size=PATCH_SIZE,
                             tokens_per_image=tokens_per_image, kv_heads=KV_HEADS,
                             max_positions=MAX_POSITIONS)


def build_llava(tokenizer, seed: int, layers: int = LAYERS):
    """llava-1.5's layout: the patch features of the second-to-last vision layer."""
    return tiny.build_llava(tokenizer, chat_template=FAMILIES["llava"].chat_template, seed=seed,
                            layers=layers, image_size=IMAGE_SIZE, patch_size=PATCH_SIZE,
                            vision_feature_layer=-2, kv_heads=KV_HEADS, max_positions=MAX_POSITIONS)


BUILDERS = {"gemma3": build_gemma3, "llava": build_llava}


def build(family: str, seed: int = 0, corpus: list[str] | None = None, **kwargs):
    """(model, processor) of a tiny randomly initialised checkpoint of the family."""
    if family not in BUILDERS:
        raise ValueError(f"no tiny builder for family {family!r} here; known: {sorted(BUILDERS)}")
    tokenizer = train_tokenizer(family, corpus)
    model, processor = BUILDERS[family](tokenizer, seed=seed, **kwargs)
    return model.eval(), processor


def build_tiny(family: str, out_dir, seed: int = 0, **kwargs) -> Path:
    """Save a tiny checkpoint (safetensors + processor files) that `load_model` reads."""
    problem = processor_problem(family)
    if problem:
        raise RuntimeError(f"cannot save a {family} checkpoint here: {problem}")
    model, processor = build(family, seed=seed, **kwargs)
    return tiny.save(model, processor, out_dir)


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
    directory = Path(adapter).expanduser()
    if not directory.is_dir():
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
    build_cmd = sub.add_parser("build-tiny", help="save a tiny random checkpoint of a family")
    build_cmd.add_argument("family", choices=sorted(BUILDERS))
    build_cmd.add_argument("out_dir")
    build_cmd.add_argument("--seed", type=int, default=0)
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
