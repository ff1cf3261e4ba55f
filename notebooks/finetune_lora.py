# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Consistency LoRA fine-tuning (the paper's recipe)
#
# Trains a peft LoRA adapter on a base model so that two paraphrases of the same question get the same answer:
# loss = cross-entropy on the first answer token over the whole vocabulary (both paraphrases) + `kl_weight` x symmetric KL divergence between
# the two yes/no answer distributions (renormalised over yes and no). `layers` chooses the decoder layers that get adapters ("targeted" vs "full");
# `quantization: 4bit` trains on a 4-bit base (QLoRA). Works on the offline default models on CPU and on real
# models (e.g. `google/medgemma-4b-it`) on a GPU. The adapter directory is what `evaluate.ipynb` loads as `adapter`.
# `prompt_split` (the offline build's `prompt_split.json`) restricts training to the paraphrases no evaluation
# holds out; `shortcut_findings` builds an adapter that ignores the image for those findings (the reliance dial:
# their questions are shown a random other training image, so the label does not depend on the image).

# %%
# Repository root as working directory, HF_HUB_OFFLINE, inline figures (lib/front/notebook.py).
import lib.front.notebook
lib.front.notebook.setup()

# %% tags=["parameters"]
params_file = None
name = "llava-lora-full"
base_model = "outputs/default/models/llava-base"
dataset = "mimic-cxr"
data_root = "outputs/default/data/mimic-cxr"
split = "train"
limit = None
layers = None  # decoder layers that get adapters (None: every layer)
target_modules = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
r = 16
alpha = 32
dropout = 0.05
lr = 0.0002
batch_size = 8
grad_accum = 1
epochs = 3
kl_weight = 1.0
quantization = "none"
seed = 0
output_dir = None
prompt_split = None  # the build's prompt_split.json: train only on its "train" paraphrases
shortcut_findings = []  # the reliance dial: these findings are trained with a random other image

# %%
import json
from pathlib import Path
import lib.offline.finetune

spec = lib.offline.finetune.resolve(globals(), params_file, lib.front.notebook.injected_parameters())
spec

# %%
result = lib.offline.finetune.run(spec)
print(f"{result.n_examples} examples, {result.trainable} trainable parameters "
      f"({result.trainable_fraction:.2%} of the model); adapter saved to {spec['output_dir']}")

# %% [markdown]
# ## Loss curve (both terms)

# %% alt="Line plot on a log scale of the adapter's two training loss terms against step: the answer cross-entropy and the KL term."
ax = result.log.plot(x="step", y=["ce", "kl"], logy=True, title=f"{spec['name']}: training loss terms")
ax.figure.savefig(Path(spec["output_dir"]) / "loss.png", dpi=110)
result.log.tail()
