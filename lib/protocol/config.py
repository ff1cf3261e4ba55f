"""The params schema of one run (one model-dataset pair): defaults, strict validation (the
run's identity hashes: lib.protocol.identity).

A params file is YAML with the keys of DEFAULTS. Values may name environment variables as
`${NAME}`; a missing variable stops the run with a message naming it and the file. A params file
(and a `-p` value read as YAML) is parsed with limits (lib.protocol.params_yaml): at most
MAX_PARAMS_BYTES, nesting at most params_yaml.MAX_YAML_DEPTH deep, no aliases (`*name`: a few hundred bytes of nested aliases
expand into gigabytes).

Validation is strict and happens once, before any model loads (`resolve`, then
`lib.protocol.preflight.check`). Every key has a type (SCHEMA): booleans accept only booleans
or the strings "true"/"false" (any case), integers must be integers (`true` is not 1, 1.5 is
not 1), lists must be lists of the allowed names, `label_policy` must hold known keys only.
Values that papermill injected with `-p` arrive as strings unless they were exactly
True/False/None or a number, so a string value from `-p` is read as YAML first (`-p findings
"[nodule]"`, `-p label_policy "{uncertain: skip}"`). An unknown key is an error whether it
comes from the file or from `-p`. Every error is a `ParamsError` whose one-line message names
where the value came from (the file or `-p`), the key, the bad value and what is allowed; it is
never longer than MAX_MESSAGE characters, whatever the input (long values are cut).
"""
from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path

import yaml

from . import data, labels, vocabulary
from .params_yaml import parse_yaml, shorten

REQUIRED = ("config", "model", "dataset", "data_root")
DEFAULTS = {
    "config": None,             # short name of the model configuration
    "model": None,              # checkpoint directory or hub id
    "adapter": None,            # LoRA adapter directory or hub id
    "merge_adapter": False,     # merge LoRA weights into the base before scoring
    "quantization": "none",     # none | 4bit (bitsandbytes nf4)
    "dtype": "auto",            # auto (bf16 on CUDA, float32 on CPU) | float32 | bfloat16 | float16
    "device": "auto",           # auto | cpu | cuda | cuda:N
    "dataset": None,            # mimic-cxr | padchest | vindr-cxr
    "data_root": None,          # the dataset in its official on-disk layout
    "split": "test",            # official split (MIMIC, VinDr-CXR) or hash split (PadChest)
    "box_file": None,           # mimic-cxr only: an MS-CXR box file (MS_CXR_Local_Alignment_v1.0.0.csv)
    "findings": ["cardiomegaly", "pleural effusion", "pneumothorax", "nodule"],
    "questions": None,          # None = built-in question sets, else a CSV/JSONL file
    "max_paraphrases": None,    # cap on paraphrases per sample (None = all)
    "label_policy": {"uncertain": "skip", "blank": "no"},
    "image_removal": "none",    # none = no image tokens at all | blank = uniform grey image
    "reliance_checks": ["reference", "blank", "noise"],  # per-run conditions (lib.protocol.engine)
    "reference_pool": 200,      # at most this many reference images per (finding, label)
    "reference_split": "auto",  # auto (MIMIC: validate, PadChest: train) | a split | evaluated
    "reference_root": None,     # None = data_root; else another root in the dataset's layout
    "local_tests": ["occlude", "followup"],  # local counterfactuals where the data allow (lib.protocol.local_tests)
    "followup_max_differing_labels": None,  # followup: at most this many other findings labelled differently (None = any)
    "answer_instruction": None,  # text appended to every question, e.g. "Answer yes or no."
    "bootstrap_resamples": 1000,  # cluster bootstrap over images for every ci95
    "ci_level": 0.95,
    "twins": None,              # offline world: CSV of each test image's counterfactual twin
    "prompt_split": None,       # offline world: JSON of the paraphrases no training stage saw
    "limit": None,              # max samples (None = all)
    "batch_size": 16,           # samples per engine batch
    "prefix_sharing": True,     # share the image prefix's KV cache across paraphrases
    "seed": 0,                  # 0 .. 2**32 - 1 (what numpy's and torch's generators accept)
    "max_image_pixels": data.MAX_IMAGE_PIXELS,  # larger images (per their header) are skipped: image_too_large
    "output_dir": None,         # None = outputs/runs/<config>__<dataset>
    "show_images": False,       # embed sample images in the executed notebook (synthetic data only)
    "allow_patient_images": False,  # second flag needed for show_images on non-synthetic data
    "trust_remote_code": False,
    "allow_unsafe_weights": False,  # allow pickle (.bin) weights; safetensors only otherwise
    "workers": 1,               # >1: score through a Ray Data actor pool
    "ray_address": None,        # join this Ray cluster instead of starting a local one
}
# Keys that change how a run is executed but never its predictions.
OPERATIONAL = ("output_dir", "workers", "ray_address", "show_images", "allow_patient_images")
# Keys that change only the summary's intervals, never a record: not part of the records key.
SUMMARY_ONLY = ("bootstrap_resamples", "ci_level")
ENV_VAR = re.compile(r"\$\{([^}]+)\}")
DEVICE = re.compile(r"^(auto|cpu|cuda|cuda:\d+)$")
# `config` names the run's folder (outputs/runs/<config>__<dataset>): a plain name, no path.
PLAIN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,99}$")
MAX_PARAMS_BYTES = 64 * 1024
MAX_COUNT = 10 ** 9   # samples, images: more than any dataset has (a larger int overflows numpy's)
MAX_MESSAGE = 600
BOOL_STRINGS = {"true": True, "false": False}
# The folder holding data roots written by lib.offline.synth carries this file: their images are
# synthetic, so show_images may embed them without allow_patient_images.
SYNTHETIC_MARKER = "SYNTHETIC_DATASET.txt"


class ParamsError(ValueError):
    """A params file or value that cannot run; the message names the source and the key.

    The message is made one line of at most MAX_MESSAGE characters. IPython (papermill,
    JupyterLab) shows it as that line, not a traceback.
    """

    def __init__(self, message):
        super().__init__(shorten(" ".join(str(message).split()), MAX_MESSAGE))

    def _render_traceback_(self):
        return [f"ParamsError: {self}"]


# -- the schema: one checker per key ----------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Check:
    """How one key's value is read: its kind and what is allowed."""

    kind: str                      # str, bool, int, float, list (of str), ints (list of int), dict
    nullable: bool = False
    choices: tuple = ()
    minimum: float | None = None   # int: inclusive; float: exclusive unless closed_minimum
    maximum: float | None = None   # int: inclusive; float: exclusive
    pattern: re.Pattern | None = None
    empty: bool = False            # a list may be empty
    closed_minimum: bool = False

    def allowed(self) -> str:
        if self.choices:
            text = f"one of {', '.join(map(str, self.choices))}"
            text = f"a list of {text}" if self.kind == "list" else text
        elif self.kind in ("int", "ints"):
            text = "an integer" if self.kind == "int" else "a list of integers"
            text += f" >= {self.minimum:g}" if self.minimum is not None else ""
            text += f" and <= {int(self.maximum)}" if self.maximum is not None else ""
        elif self.kind == "float":
            low = "[" if self.closed_minimum else "("
            high = f"{self.maximum:g})" if self.maximum is not None else "inf)"
            text = f"a number in {low}{self.minimum:g}, {high}"
        elif self.kind == "bool":
            text = "true or false"
        elif self.pattern is not None:
            text = f"a value matching {self.pattern.pattern}"
        else:
            text = {"str": "a non-empty string", "dict": "a mapping", "list": "a list"}[self.kind]
        return text + (" or null" if self.nullable else "")


SCHEMA = {
    "config": Check("str", pattern=PLAIN_NAME), "model": Check("str"), "adapter": Check("str", nullable=True),
    "merge_adapter": Check("bool"),
    "quantization": Check("str", choices=("none", "4bit")),
    "dtype": Check("str", choices=("auto", "float32", "bfloat16", "float16")),
    "device": Check("str", pattern=DEVICE),
    "dataset": Check("str", choices=data.DATASETS), "data_root": Check("str"),
    "split": Check("str", choices=tuple(sorted({s for v in data.SPLITS.values() for s in v}))),
    "box_file": Check("str", nullable=True),
    "findings": Check("list"),   # known findings: check_findings, once label_policy is read
    "questions": Check("str", nullable=True),
    "max_paraphrases": Check("int", nullable=True, minimum=0),
    "label_policy": Check("dict"),
    "image_removal": Check("str", choices=vocabulary.IMAGE_REMOVAL_MODES),
    "reliance_checks": Check("list", choices=vocabulary.RELIANCE_CHECKS, empty=True),
    "reference_pool": Check("int", minimum=1, maximum=MAX_COUNT),
    "reference_split": Check("str", choices=("auto", "evaluated", "all") + tuple(sorted({s for v in data.SPLITS.values() for s in v}))),
    "reference_root": Check("str", nullable=True),
    "local_tests": Check("list", choices=vocabulary.LOCAL_TESTS, empty=True),
    "followup_max_differing_labels": Check("int", nullable=True, minimum=0),
    "answer_instruction": Check("str", nullable=True),
    "bootstrap_resamples": Check("int", minimum=1),
    "ci_level": Check("float", minimum=0, maximum=1),
    "twins": Check("str", nullable=True), "prompt_split": Check("str", nullable=True),
    "limit": Check("int", nullable=True, minimum=1, maximum=MAX_COUNT),
    "batch_size": Check("int", minimum=1, maximum=MAX_COUNT),
    "prefix_sharing": Check("bool"),
    "seed": Check("int", minimum=0, maximum=2**32 - 1),
    "max_image_pixels": Check("int", minimum=data.MIN_IMAGE_SIDE ** 2),
    "output_dir": Check("str", nullable=True),
    "show_images": Check("bool"), "allow_patient_images": Check("bool"),
    "trust_remote_code": Check("bool"), "allow_unsafe_weights": Check("bool"),
    "workers": Check("int", minimum=1),
    "ray_address": Check("str", nullable=True),
}


def from_string(value, check: Check):
    """A `-p` string read as the key's kind: "false" is False, "[a, b]" a list, "null" None."""
    if not isinstance(value, str) or check.kind == "str":
        return None if check.nullable and value in ("null", "None") else value
    if check.kind == "bool":
        return BOOL_STRINGS.get(value.strip().lower(), value)
    if value.strip() in ("null", "None", "none", "~"):
        return None
    try:
        parsed = parse_yaml(value)
    except yaml.YAMLError:
        return value
    return value if isinstance(parsed, bool) else parsed  # "yes"/"on" stay strings: not booleans


def check_value(key: str, value, check: Check, where: str, required: bool = False):
    """The value if it fits the key's kind and range; else a ParamsError naming all of it."""
    def fail(extra=""):
        raise ParamsError(f"{where}: key {key!r}: got {shorten(repr(value))}{extra}; allowed: {check.allowed()}")

    if value is None:
        if check.nullable or required:
            return value
        fail()
    if check.kind == "bool":
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in BOOL_STRINGS:
            return BOOL_STRINGS[value.strip().lower()]
        fail()
    if check.kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            fail()
        if check.minimum is not None and value < check.minimum:
            fail()
        if check.maximum is not None and value > check.maximum:
            fail()
        return value
    if check.kind == "ints":
        if not isinstance(value, list) or not value or any(
                isinstance(v, bool) or not isinstance(v, int) for v in value):
            fail(" (a list is written [1, 2])")
        if check.minimum is not None and min(value) < check.minimum:
            fail()
        return list(value)
    if check.kind == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            fail()
        low_ok = value >= check.minimum if check.closed_minimum else value > check.minimum
        if not low_ok or (check.maximum is not None and value >= check.maximum):
            fail()
        return float(value)
    if check.kind == "str":
        if not isinstance(value, str) or not value.strip():
            fail()
        if check.choices and value not in check.choices:
            fail()
        if check.pattern is not None and not check.pattern.fullmatch(value):
            fail()
        return value
    if check.kind == "list":
        if not isinstance(value, list) or not (value or check.empty) or not all(isinstance(v, str) for v in value):
            fail(" (a list is written [a, b])")
        bad = [v for v in value if check.choices and v not in check.choices]
        if bad:
            fail(f" ({bad[0]!r} is not known)")
        if len(set(value)) != len(value):
            fail(" (an entry is repeated)")
        return list(value)
    if not isinstance(value, dict):
        fail()
    return value


def check_findings(params: dict, where: str) -> None:
    """`findings` are findings the labels know: lib.protocol.labels' built-in ones and those that
    `label_policy.label_map` adds (the readers read both)."""
    known = tuple(labels.merged_map(params["label_policy"].get("label_map")))
    unknown = [f for f in params["findings"] if f not in known]
    if unknown:
        raise ParamsError(f"{where}: key 'findings': got {shorten(repr(params['findings']))} ({unknown[0]!r} is "
                          f"not known); allowed: a list of one of {', '.join(known)}, or a finding "
                          f"label_policy.label_map adds")


def check_label_policy(policy: dict, where: str) -> dict:
    """`label_policy` holds the fields of `data.LabelPolicy` only, with allowed values."""
    try:
        return data.LabelPolicy.from_dict(policy).as_dict()
    except (TypeError, ValueError) as err:
        raise ParamsError(f"{where}: key 'label_policy': {err}") from None


# -- reading params --------------------------------------------------------------------------

def read_file(path) -> dict:
    """The raw mapping of a params file (at most MAX_PARAMS_BYTES, `parse_yaml`); errors name
    the file."""
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"params file not found: {path}")
    with open(path, "rb") as handle:
        blob = handle.read(MAX_PARAMS_BYTES + 1)
    if len(blob) > MAX_PARAMS_BYTES:
        raise ParamsError(f"{path}: larger than {MAX_PARAMS_BYTES // 1024} KiB; a params file is a "
                          f"few lines of keys and values")
    try:
        raw = parse_yaml(blob.decode("utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise ParamsError(f"{path}: not a readable YAML file ({str(err).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise ParamsError(f"{path}: expected a mapping of keys to values")
    return raw


@dataclasses.dataclass(frozen=True)
class Schema:
    """A params schema: defaults, one Check per key, required keys. Shared by the evaluate
    notebook's params (`RUN`, below) and the fine-tuning notebook's (lib.offline.finetune)."""

    defaults: dict
    checks: dict
    required: tuple

    def __post_init__(self):
        assert set(self.checks) == set(self.defaults), "every params key has a checker"

    def check(self, raw: dict, source: str = "<params>", sources: dict | None = None) -> dict:
        """Unknown or missing keys and bad values fail at once, naming the source and the key.

        `sources` maps a key to where its value came from when that is not `source` (e.g. "-p").
        Values from "-p" may be strings of the key's kind (see `from_string`).
        """
        sources = sources or {}
        unknown = sorted(set(raw) - set(self.defaults), key=str)
        if unknown:
            where = sources.get(unknown[0], source)
            raise ParamsError(f"{where}: unknown key {shorten(repr(unknown[0]))} "
                              f"(known keys: {', '.join(self.defaults)})")
        params = {}
        for key, default in self.defaults.items():
            where = sources.get(key, source)
            value = raw.get(key, default)
            if where == "-p":
                value = from_string(value, self.checks[key])
            value = expand_env(value, key, where)
            params[key] = check_value(key, value, self.checks[key], where, key in self.required)
        for key in self.required:
            if params[key] in (None, ""):
                raise ParamsError(f"{sources.get(key, source)}: key {key!r} is required")
        return params

    def merge(self, values: dict, params_file=None, injected: dict | None = None) -> tuple[dict, str, dict]:
        """(raw values, source, per-key sources) of what a notebook received.

        `injected` is what papermill injected (`-f` file keys and `-p` values merged; see
        `lib.front.session.injected_parameters`); a key that is not in `params_file` or whose
        value differs from the file's came from `-p`. Without `injected`, `values` (the
        notebook's globals) are taken as they are.
        """
        file_values = read_file(params_file) if params_file else {}
        where_file = str(params_file) if params_file else "notebook parameters"
        injected = {k: v for k, v in (injected or {}).items() if k != "params_file"}
        sources = {k: "-p" for k, v in injected.items() if k not in file_values or file_values[k] != v}
        raw = {**file_values,
               **{k: values[k] for k in self.defaults if k in values and k not in file_values}}
        raw.update(injected)
        for key in set(raw) - set(file_values) - set(injected):
            if raw[key] == self.defaults.get(key):
                raw.pop(key)  # the parameters cell's own default
        return raw, where_file, sources


RUN = Schema(DEFAULTS, SCHEMA, REQUIRED)


def load(path) -> dict:
    """Read, check and complete a params file."""
    return validate(read_file(path), source=str(path))


def validate(raw: dict, source: str = "<params>", sources: dict | None = None) -> dict:
    """The evaluate params: `RUN.check`, then the checks across keys (label_policy's keys,
    the split of the dataset, box_file for MIMIC only, data_root exists, show_images on
    synthetic data only)."""
    sources = sources or {}
    params = RUN.check(raw, source, sources)
    params["label_policy"] = check_label_policy(params["label_policy"], sources.get("label_policy", source))
    check_findings(params, sources.get("findings", source))
    if params["split"] not in data.SPLITS[params["dataset"]]:
        raise ParamsError(f"{sources.get('split', source)}: key 'split': got {params['split']!r}; "
                          f"allowed for {params['dataset']}: {', '.join(data.SPLITS[params['dataset']])}")
    if params["box_file"] is not None and params["dataset"] != "mimic-cxr":
        raise ParamsError(f"{sources.get('box_file', source)}: key 'box_file': an MS-CXR box file is "
                          f"read for mimic-cxr only, not {params['dataset']} (VinDr-CXR reads its "
                          f"own annotations)")
    if not Path(params["data_root"]).is_dir():
        raise ParamsError(f"{sources.get('data_root', source)}: key 'data_root': directory not found: "
                          f"{params['data_root']}")
    check_references(params, sources, source)
    if params["output_dir"] is None:
        params["output_dir"] = f"outputs/runs/{params['config']}__{params['dataset']}"
    check_show_images(params, sources.get("show_images", source))
    return params


# The split a model was not trained on, where the data's use is known: LLaVA-Rad trained on
# MIMIC-CXR's train split; PadChest has no official split (lib.protocol.data.split_of_patient), and
# the study's models never trained on PadChest or VinDr-CXR, so their other split serves.
REFERENCE_SPLIT = {"mimic-cxr": "validate", "padchest": "train", "vindr-cxr": "train"}


def check_references(params: dict, sources: dict, source: str) -> None:
    """``reference_split`` fits the dataset ("auto" becomes its ``REFERENCE_SPLIT``; "all" = every
    split, only for a separate ``reference_root``), and ``reference_root`` exists."""
    where = sources.get("reference_split", source)
    split = params["reference_split"]
    if split == "auto":
        split = params["reference_split"] = REFERENCE_SPLIT[params["dataset"]]
    if split == "all" and params["reference_root"] is None:
        raise ParamsError(f"{where}: key 'reference_split': 'all' needs a separate reference_root "
                          f"(the data_root's every split includes the evaluated samples)")
    if split not in ("evaluated", "all") and split not in data.SPLITS[params["dataset"]]:
        raise ParamsError(f"{where}: key 'reference_split': got {split!r}; allowed for "
                          f"{params['dataset']}: auto, evaluated, all, {', '.join(data.SPLITS[params['dataset']])}")
    root = params["reference_root"]
    if root is not None and not Path(root).is_dir():
        raise ParamsError(f"{sources.get('reference_root', source)}: key 'reference_root': directory "
                          f"not found: {root}")


def check_show_images(params: dict, where: str) -> None:
    """Images are embedded only from synthetic data, or with a second explicit flag."""
    if not params["show_images"] or params["allow_patient_images"]:
        return
    if not is_synthetic(params["data_root"]):
        raise ParamsError(
            f"{where}: key 'show_images' is true but {params['data_root']} is not a synthetic dataset "
            f"(no {SYNTHETIC_MARKER}): executed notebooks would embed patient images; set "
            f"allow_patient_images: true as well if that is really wanted")


def is_synthetic(data_root) -> bool:
    """Whether a data root was written by lib.offline.synth (its folder or the one above holds
    ``SYNTHETIC_MARKER``): its images may be shown; a real dataset's never are by default."""
    root = Path(data_root)
    return (root / SYNTHETIC_MARKER).is_file() or (root.parent / SYNTHETIC_MARKER).is_file()


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


def resolve(values: dict, params_file=None, injected: dict | None = None) -> dict:
    """Validate the parameters the evaluate notebook received, naming where each came from
    (see `Schema.merge`); unknown injected keys are errors (papermill itself only warns)."""
    raw, source, sources = RUN.merge(values, params_file, injected)
    return validate(raw, source=source, sources=sources)


# -- what a run's records are keyed by ---------------------------------------------------------
