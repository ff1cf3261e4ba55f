"""Model loading and the tokens that mean yes and no.

A configuration is a checkpoint (local directory or hub id) loaded with the transformers auto
classes (`AutoModelForImageTextToText` + `AutoProcessor`), optionally a peft LoRA adapter on
top, optionally quantised to 4-bit nf4 with bitsandbytes. The same loader reads the offline
default models and real checkpoints.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor, BitsAndBytesConfig
from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

# Spellings whose next-token probabilities are summed into p(yes) / p(no). Only spellings that
# the tokenizer encodes as ONE token count: a multi-token spelling has no next-token probability.
YES_SPELLINGS = ("yes", "Yes", "YES", " yes", " Yes", " YES")
NO_SPELLINGS = ("no", "No", "NO", " no", " No", " NO")

# Modules kept in full precision under 4-bit: the vision side is small and precision-critical,
# and the output head must give exact yes/no logits.
SKIP_QUANTIZATION = ["vision_tower", "vision_model", "multi_modal_projector", "lm_head", "visual"]


@dataclass
class LoadedModel:
    """A ready-to-score model with its processor and the ids of the yes/no answer tokens."""

    model: torch.nn.Module
    processor: object
    yes_ids: list[int]
    no_ids: list[int]
    device: torch.device
    dtype: torch.dtype

    @property
    def tokenizer(self):
        return self.processor.tokenizer


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def device_problem(device: str) -> str | None:
    """Why ``device`` (cuda, cuda:N) cannot run here, or None; checked before the model loads
    (torch would fail only when the weights move)."""
    if not device.startswith("cuda"):
        return None
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    index = int(device.partition(":")[2] or 0)
    if index >= count:
        return (f"got {device!r}, but this machine has {count} CUDA device(s) visible "
                f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}); use cpu or auto")
    return None


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """`auto` is bfloat16 on CUDA and float32 on CPU (CPU bf16 matmuls are slow and inexact)."""
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return getattr(torch, dtype)


def answer_token_ids(tokenizer, spellings) -> list[int]:
    """Ids of the spellings that are single tokens; fails if none is (no way to read answers)."""
    ids = []
    for text in spellings:
        encoded = tokenizer.encode(text, add_special_tokens=False)
        if len(encoded) == 1 and encoded[0] not in ids:
            ids.append(encoded[0])
    if not ids:
        raise ValueError(f"none of {spellings} is a single token of this tokenizer")
    return ids


def quantization_config(quantization: str, dtype: torch.dtype):
    """bitsandbytes nf4 with double quantisation; compute in the run's dtype."""
    if quantization == "none":   # else "4bit": the params schema allows nothing else
        return None
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=dtype,
        llm_int8_skip_modules=SKIP_QUANTIZATION,
    )


def check_model_exists(model: str) -> None:
    """A path-like model id must exist; hub ids (org/name) are left to the hub cache."""
    path = Path(model)
    looks_local = model.startswith((".", "/", "~")) or path.exists() or model.count("/") != 1
    if looks_local and not path.exists():
        raise FileNotFoundError(f"model directory not found: {model}")
    if path.exists() and not path.is_dir():
        raise FileNotFoundError(f"{model} is a file; expected the model directory (its config and weights)")


def load_model(
    model: str,
    adapter: str | None = None,
    quantization: str = "none",
    dtype: str = "auto",
    device: str = "auto",
    merge_adapter: bool = False,
    trust_remote_code: bool = False,
    allow_unsafe_weights: bool = False,
) -> LoadedModel:
    """Load checkpoint + processor (+ LoRA adapter, + 4-bit), in eval mode on one device.

    Weights are read from safetensors only unless `allow_unsafe_weights` (pickle files can run
    code), for the model and the adapter; `trust_remote_code` stays off unless asked for.
    """
    check_model_exists(model)
    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, torch_device)
    common = {"trust_remote_code": trust_remote_code}
    processor = AutoProcessor.from_pretrained(model, **common)
    net = AutoModelForImageTextToText.from_pretrained(
        model,
        dtype=torch_dtype,
        use_safetensors=None if allow_unsafe_weights else True,
        quantization_config=quantization_config(quantization, torch_dtype),
        device_map={"": torch_device.index or 0} if torch_device.type == "cuda" else {"": "cpu"},
        **common,
    )
    if adapter:
        net = attach_adapter(net, adapter, merge_adapter and quantization == "none", allow_unsafe_weights)
    net.eval()
    tokenizer = processor.tokenizer
    return LoadedModel(
        model=net,
        processor=processor,
        yes_ids=answer_token_ids(tokenizer, YES_SPELLINGS),
        no_ids=answer_token_ids(tokenizer, NO_SPELLINGS),
        device=torch_device,
        dtype=torch_dtype,
    )


def attach_adapter(net, adapter: str, merge: bool, allow_unsafe_weights: bool = False):
    """Wrap with a peft LoRA adapter (directory or hub id); merged weights score identically.

    peft only warns when the adapter's weights match none of the LoRA modules it creates (an
    adapter saved for another key layout), leaving an adapter that changes nothing: that is an
    error here. Partly matching adapters keep peft's warning. A local adapter saved as pickle
    (`adapter_model.bin`) loads only with `allow_unsafe_weights`.
    """
    # peft is needed only when an adapter is given; importing it costs seconds.
    from peft import PeftModel
    from peft.utils import load_peft_weights

    check_model_exists(adapter)
    problem = adapter_weights_problem(adapter, allow_unsafe_weights)
    if problem:
        raise ValueError(problem)
    wrapped = PeftModel.from_pretrained(net, adapter)
    saved = {re.sub(r"\.(lora_[A-Za-z_]+)\.", r".\1.default.", k) for k in load_peft_weights(adapter)}
    created = {name for name, _ in wrapped.named_parameters() if "lora_" in name}
    if created and not created & saved:
        raise ValueError(f"adapter {adapter} does not fit this model: none of its weights match "
                         f"the LoRA modules it targets (e.g. {sorted(created)[0]})")
    return wrapped.merge_and_unload() if merge else wrapped


# -- checks that need no model weights (run by lib.protocol.preflight before any model loads) --

SAFE_WEIGHTS = ("*.safetensors",)
PICKLE_WEIGHTS = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "vocab.json")
PROCESSOR_FILES = ("preprocessor_config.json", "processor_config.json")


def _has(directory: Path, patterns) -> list[str]:
    return sorted(p.name for pattern in patterns for p in directory.glob(pattern))


def weights_problem(directory: Path, allow_unsafe_weights: bool, what: str) -> str | None:
    """Why a local directory's weights cannot be loaded under the safety flags, or None."""
    if _has(directory, SAFE_WEIGHTS):
        return None
    pickles = _has(directory, PICKLE_WEIGHTS)
    if not pickles:
        return f"{what} {directory} has no weights (*.safetensors)"
    if not allow_unsafe_weights:
        return (f"{what} {directory} has only pickle weights ({pickles[0]}), which can run code "
                f"when loaded: convert them to safetensors, or set allow_unsafe_weights: true")
    return None


def checkpoint_problem(model: str, allow_unsafe_weights: bool, trust_remote_code: bool) -> str | None:
    """Why a local model directory cannot be loaded (files only, no weights read), or None.
    Hub ids are left to the hub cache."""
    path = Path(model)
    if not path.is_dir():
        return None
    if not (path / "config.json").is_file():
        return f"model directory {model} has no config.json (not a transformers checkpoint)"
    try:
        cfg = json.loads((path / "config.json").read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        return f"model directory {model}: config.json is not valid JSON ({err})"
    if cfg.get("auto_map") and not trust_remote_code and cfg.get("model_type") not in CONFIG_MAPPING_NAMES:
        return (f"model directory {model} needs its own code (auto_map in config.json, model_type "
                f"{cfg.get('model_type')!r}); set trust_remote_code: true only if you trust it")
    if not _has(path, TOKENIZER_FILES):
        return f"model directory {model} has no tokenizer files ({', '.join(TOKENIZER_FILES)})"
    if not _has(path, PROCESSOR_FILES):
        return f"model directory {model} has no image processor config ({' or '.join(PROCESSOR_FILES)})"
    return weights_problem(path, allow_unsafe_weights, "model directory")


def adapter_weights_problem(adapter: str, allow_unsafe_weights: bool) -> str | None:
    path = Path(adapter)
    if not path.is_dir():
        return None
    if not (path / "adapter_config.json").is_file():
        return f"adapter directory {adapter} has no adapter_config.json (not a peft adapter)"
    return weights_problem(path, allow_unsafe_weights, "adapter directory")


def model_type_of(location: str) -> str | None:
    """model_type from a local checkpoint's config.json (None when not readable here)."""
    cfg = Path(location) / "config.json"
    try:
        return json.loads(cfg.read_text()).get("model_type")
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None


def adapter_base_problem(adapter: str, model: str) -> str | None:
    """An adapter whose config names a base model of another architecture than `model`.

    The base named in adapter_config.json (`base_model_name_or_path`) is compared with the
    model by model_type where both configs can be read locally; names alone are not compared
    (a local copy of a hub model has another name).
    """
    path = Path(adapter) / "adapter_config.json"
    if not path.is_file():
        return None
    base = json.loads(path.read_text()).get("base_model_name_or_path")
    if not base:
        return None
    base_type, model_type = model_type_of(base), model_type_of(model)
    if base_type and model_type and base_type != model_type:
        return (f"adapter {adapter} was trained on {base} (model_type {base_type!r}), not on a "
                f"{model_type!r} model like {model}")
    return None


def context_length(model: str, trust_remote_code: bool) -> int | None:
    """The model's maximum positions (its text model's max_position_embeddings), from config."""
    cfg = AutoConfig.from_pretrained(model, trust_remote_code=trust_remote_code)
    text = getattr(cfg, "text_config", None) or cfg
    return getattr(text, "max_position_embeddings", None)


def load_processor(model: str, trust_remote_code: bool):
    return AutoProcessor.from_pretrained(model, trust_remote_code=trust_remote_code)
