"""One consistency LoRA fine-tuning run (notebooks/finetune_lora.ipynb), from a params file.

Loads the base through the project's loader (4-bit for QLoRA), wraps it with a peft LoRA on
the chosen decoder layers, trains with `training.consistency_step` and saves a standard peft
adapter directory plus its loss log (`train_log.csv`) and the prompts it trained on
(`training_prompts.json`).

`prompt_split` (the build's `prompt_split.json`): train only on its "train" paraphrases, so the
held-out ones stay unseen by every training stage (None: every built-in paraphrase).
`shortcut_findings` (the reliance dial): questions about these findings are shown a random other
training image instead of their own, so the adapter is built to ignore the image for them.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import pandas as pd

from ..protocol import config, data, models, provenance, questions
from . import training
from .default_models import TRAINING_PROMPTS, train_prompts, training_examples

DEFAULTS = {
    "name": None, "base_model": None, "dataset": None, "data_root": None, "split": "train",
    "limit": None, "layers": None, "target_modules": list(training.LORA_TARGETS), "r": 16,
    "alpha": 32, "dropout": 0.05, "lr": 2e-4, "batch_size": 8, "grad_accum": 1, "epochs": 3,
    "kl_weight": 1.0, "quantization": "none", "seed": 0, "output_dir": None,
    "prompt_split": None, "shortcut_findings": [],
}
REQUIRED = ("name", "base_model", "dataset", "data_root")
SCHEMA = config.Schema(DEFAULTS, {
    "name": config.Check("str"), "base_model": config.Check("str"),
    "dataset": config.Check("str", choices=data.DATASETS), "data_root": config.Check("str"),
    "split": config.Check("str", choices=("train", "validate", "test")),
    "limit": config.Check("int", nullable=True, minimum=1),
    "layers": config.Check("ints", nullable=True, minimum=0),
    "target_modules": config.Check("list"),
    "r": config.Check("int", minimum=1), "alpha": config.Check("int", minimum=1),
    "dropout": config.Check("float", minimum=0, maximum=1, closed_minimum=True),
    "lr": config.Check("float", minimum=0),
    "batch_size": config.Check("int", minimum=1), "grad_accum": config.Check("int", minimum=1),
    "epochs": config.Check("float", minimum=0),
    "kl_weight": config.Check("float", minimum=0, closed_minimum=True),
    "quantization": config.Check("str", choices=("none", "4bit")),
    "seed": config.Check("int", minimum=0), "output_dir": config.Check("str", nullable=True),
    "prompt_split": config.Check("str", nullable=True),
    "shortcut_findings": config.Check("list", choices=tuple(data.FINDINGS), empty=True),
}, REQUIRED)


@dataclass
class FinetuneResult:
    log: pd.DataFrame
    n_examples: int
    trainable: int
    trainable_fraction: float


def resolve(values: dict, params_file=None, injected: dict | None = None) -> dict:
    """Validate a fine-tuning spec with the evaluate params' machinery (`config.Schema`): unknown
    keys (from the file or `-p`), missing keys and bad values stop with one line naming the
    source, the key and what is allowed."""
    raw, source, sources = SCHEMA.merge(values, params_file, injected)
    spec = SCHEMA.check(raw, source, sources)
    if spec["output_dir"] is None:
        spec["output_dir"] = f"outputs/default/adapters/{spec['name']}"
    return spec


def read_prompt_split(path) -> dict:
    """`questions.read_prompt_split`, its error a ParamsError naming the spec key."""
    try:
        return questions.read_prompt_split(path)
    except ValueError as err:
        raise config.ParamsError(f"prompt_split {err}") from None


def examples_of(spec: dict) -> list[training.Example]:
    """The training split's samples (at most `limit`), each with the paraphrases training may use
    (the "train" ones of `prompt_split`; every built-in one without it)."""
    prompts = train_prompts(read_prompt_split(spec["prompt_split"])) if spec["prompt_split"] else None
    examples, _ = training_examples({spec["dataset"]: spec["data_root"]}, split=spec["split"],
                                    prompts=prompts)
    return examples[:spec["limit"]]


def run(spec: dict) -> FinetuneResult:
    from peft import get_peft_model, prepare_model_for_kbit_training

    provenance.seed_everything(spec["seed"])
    lm = models.load_model(spec["base_model"], quantization=spec["quantization"])
    base = lm.model
    if spec["quantization"] == "4bit":
        base = prepare_model_for_kbit_training(base, use_gradient_checkpointing=False)
    layers = spec["layers"] or range(training.decoder_layers(base))
    net = get_peft_model(base, training.lora_config(spec["r"], spec["alpha"], spec["dropout"],
                                                    layers, spec["target_modules"]))
    examples = examples_of(spec)
    ids = (lm.yes_ids[0], lm.no_ids[0])
    pool = list({id(ex.image): ex.image for ex in examples}.values())
    step = partial(training.consistency_step, encoder=training.Encoder(lm.processor), ids=ids,
                   kl_weight=spec["kl_weight"], shortcut=frozenset(spec["shortcut_findings"]),
                   image_pool=pool)
    log = training.train(net, lambda m, batch: step(m, examples=batch), examples,
                         epochs=spec["epochs"], batch_size=spec["batch_size"], lr=spec["lr"],
                         grad_accum=spec["grad_accum"], seed=spec["seed"])
    out = Path(spec["output_dir"])
    net.save_pretrained(out)
    log.to_csv(out / "train_log.csv", index=False)
    (out / TRAINING_PROMPTS).write_text(json.dumps(sorted({q for ex in examples for q in ex.prompts}), indent=1))
    (out / "finetune_spec.json").write_text(json.dumps(
        {"spec": spec, **provenance.provenance(spec["seed"])}, indent=2, default=str))
    trainable, total = net.get_nb_trainable_parameters()
    return FinetuneResult(log, len(examples), trainable, trainable / total)
