"""The params schema of one run (one model-dataset pair): defaults, validation, the run's hash.

A params file is YAML with the keys of DEFAULTS. Values may name environment variables as
`${NAME}`; a missing variable stops the run with a message naming it and the file.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

import yaml

REQUIRED = ("config", "model", "dataset", "data_root")
DEFAULTS = {
    "config": None,             # short name of the model configuration
    "model": None,              # checkpoint directory or hub id
    "adapter": None,            # LoRA adapter directory or hub id
    "merge_adapter": False,     # merge LoRA weights into the base before scoring
    "quantization": "none",     # none | 4bit (bitsandbytes nf4)
    "dtype": "auto",            # auto (bf16 on CUDA, float32 on CPU) | float32 | bfloat16 | float16
    "device": "auto",           # auto | cpu | cuda | cuda:N
    "dataset": None,            # mimic-cxr | padchest
    "data_root": None,          # the dataset in its official on-disk layout
    "split": "test",            # official split (MIMIC) or hash split (PadChest)
    "findings": ["cardiomegaly", "pleural effusion", "pneumothorax", "nodule"],
    "questions": None,          # None = built-in question sets, else a CSV/JSONL file
    "max_paraphrases": None,    # cap on paraphrases per sample (None = all)
    "label_policy": {"uncertain": "skip", "blank": "no"},
    "image_removal": "none",    # none = no image tokens at all | blank = uniform grey image
    "limit": None,              # max samples (None = all)
    "batch_size": 16,           # samples per engine batch
    "prefix_sharing": True,     # share the image prefix's KV cache across paraphrases
    "seed": 0,
    "output_dir": None,         # None = outputs/runs/<config>__<dataset>
    "show_images": False,       # embed sample images in the executed notebook (synthetic data only)
    "trust_remote_code": False,
    "allow_unsafe_weights": False,  # allow pickle (.bin) weights; safetensors only otherwise
    "workers": 1,               # >1: score through a Ray Data actor pool
    "ray_address": None,        # join this Ray cluster instead of starting a local one
}
CHOICES = {
    "dataset": ("mimic-cxr", "padchest"),
    "quantization": ("none", "4bit"),
    "image_removal": ("none", "blank"),
    "dtype": ("auto", "float32", "bfloat16", "float16"),
}
# Keys that change how a run is executed but never its predictions.
OPERATIONAL = ("output_dir", "workers", "ray_address", "show_images")
ENV_VAR = re.compile(r"\$\{([^}]+)\}")


class ParamsError(ValueError):
    """A params file or value that cannot run; the message names the file and the key."""


def load(path) -> dict:
    """Read, check and complete a params file."""
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"params file not found: {path}")
    raw = yaml.safe_load(path.read_text()) or {}
    if not isinstance(raw, dict):
        raise ParamsError(f"{path}: expected a mapping of keys to values")
    return validate(raw, source=str(path))


def validate(raw: dict, source: str = "<params>") -> dict:
    """Unknown or missing keys and bad values fail at once, naming `source` and the key."""
    unknown = sorted(set(raw) - set(DEFAULTS))
    if unknown:
        raise ParamsError(f"{source}: unknown key {unknown[0]!r} (known keys: {', '.join(DEFAULTS)})")
    params = {**DEFAULTS, **raw}
    for key in REQUIRED:
        if params[key] in (None, ""):
            raise ParamsError(f"{source}: key {key!r} is required")
    for key, choices in CHOICES.items():
        if params[key] not in choices:
            raise ParamsError(f"{source}: key {key!r} must be one of {choices}, got {params[key]!r}")
    params = {k: expand_env(v, k, source) for k, v in params.items()}
    for key in ("limit", "max_paraphrases"):
        if params[key] is not None and (not isinstance(params[key], int) or params[key] < 0):
            raise ParamsError(f"{source}: key {key!r} must be a non-negative integer or null")
    if not isinstance(params["batch_size"], int) or params["batch_size"] < 1:
        raise ParamsError(f"{source}: key 'batch_size' must be a positive integer")
    if not Path(params["data_root"]).is_dir():
        raise ParamsError(f"{source}: key 'data_root': directory not found: {params['data_root']}")
    if params["output_dir"] is None:
        params["output_dir"] = f"outputs/runs/{params['config']}__{params['dataset']}"
    return params


def expand_env(value, key: str, source: str):
    """Replace ${NAME} by the environment variable NAME; a missing one is an error."""
    if not isinstance(value, str):
        return value

    def lookup(match):
        name = match.group(1)
        if name not in os.environ:
            raise ParamsError(f"{source}: key {key!r} needs the environment variable {name}, which is not set")
        return os.environ[name]

    return ENV_VAR.sub(lookup, value)


def run_hash(params: dict) -> str:
    """Hash of everything that can change predictions, the model's weight files included.

    Records of a run are reused only under the same hash, so changed params (or a retrained
    local model) never reuse old records.
    """
    keyed = {k: v for k, v in params.items() if k not in OPERATIONAL}
    keyed["model_files"] = files_fingerprint(params["model"])
    keyed["adapter_files"] = files_fingerprint(params["adapter"])
    blob = json.dumps(keyed, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def files_fingerprint(location) -> list | None:
    """Names, sizes and mtimes of a local checkpoint's files (None for hub ids)."""
    if not location or not Path(location).is_dir():
        return None
    return sorted(
        (p.name, p.stat().st_size, int(p.stat().st_mtime))
        for p in Path(location).iterdir() if p.is_file()
    )


def resolve(values: dict, params_file=None) -> dict:
    """Validate the values a notebook received; a params file is also checked for unknown keys.

    Papermill injects a file's keys as variables (and drops unknown ones with a warning), so the
    file itself is read once more to catch a misspelt key.
    """
    if params_file:
        load(params_file)
    return validate({k: values.get(k, DEFAULTS[k]) for k in DEFAULTS},
                    source=str(params_file or "notebook parameters"))
