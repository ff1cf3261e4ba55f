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
# # Build the offline default world
#
# Everything `make all` needs with no GPU and no download, built from seeds on CPU:
# 1. synthetic chest radiographs in the real on-disk layouts of MIMIC-CXR-JPG and PadChest, read by the same
#    readers as the real datasets, with each dataset's real label priors (`world = "real"`; `"balanced"` puts
#    every finding at 50 %), and a counterfactual twin of every test image per finding (same anatomy, that
#    finding toggled), written beside the data roots: the per-sample ground truth of "does the model read the image";
# 2. two small VLM families trained here to answer yes/no questions about the findings from the pixels:
#    a LLaVA-style model (`LlavaForConditionalGeneration`, like LLaVA-Rad) and a Gemma 3-style model
#    (`Gemma3ForConditionalGeneration`, like MedGemma), each with its real processor and chat template; a
#    fraction of their training questions comes without the image, so their text-only answer is a learned prior;
# 3. the paraphrases that no training stage sees (`prompt_split.json`) and the reliance dial (which samples
#    the shortcut adapters of `params/lora/` are built to ignore);
# 4. checks of the required properties on the held-out split: balanced accuracy with the image, yes/no mass,
#    how often the answer follows the twin, and the text-only answer against the training prior.
#
# Training and evaluation never share an image: the split is written to `split.csv`.

# %%
# Repository root as working directory, HF_HUB_OFFLINE, inline figures (lib/front/notebook.py).
import lib.front.notebook
lib.front.notebook.setup()

# %% tags=["parameters"]
out_root = "outputs/default"
n_images = 400
n_references = 1000
seed = 0
world = "real"
prevalence_floor = 0.05
vision_steps = 3600
epochs = 8
lr = 0.002
batch_size = 32
prompt_pool = 4
text_dropout = 0.2
n_pretrain = 800
answer_pool = 300
check_limit = None
check_bootstrap = 200

# %%
import json, time
from pathlib import Path
import matplotlib.pyplot as plt
import pandas as pd
import lib.offline.default_models as dm, lib.offline.build, lib.protocol.plots, lib.protocol.provenance, lib.protocol.run, lib.offline.twins, lib.offline.world

lib.protocol.provenance.seed_everything(seed)
out = Path(out_root)
started = time.perf_counter()
data_roots = lib.offline.world.write_default_datasets(out / "data", n_images=n_images, seed=seed, world=world,
                                                      floor=prevalence_floor)
twins = {d: lib.offline.twins.twin_csv(out / "data", d) for d in data_roots}
# held-out reference images (lib.protocol.references): no training stage reads these roots
reference_roots = lib.offline.world.write_reference_sets(out / "data", n_images=n_references, seed=seed,
                                                         world=world, floor=prevalence_floor)
{k: str(v) for k, v in {**data_roots, **{f"{d} references": r for d, r in reference_roots.items()}}.items()}

# %% [markdown]
# ## The synthetic radiographs (one row per finding: without, with)

# %% alt="A grid of synthetic radiographs from the offline MIMIC-CXR-like dataset, one row per finding, without and with it, each titled."
fig = lib.protocol.plots.sample_grid(*lib.offline.world.montage(data_roots["mimic-cxr"]), columns=4)

# %% [markdown]
# ## Label priors: the rates drawn, and what each split got

# %%
prevalence = lib.offline.world.prevalence(world, prevalence_floor)
measured = lib.offline.build.measured_prevalence(data_roots)
lib.offline.build.prevalence_table(measured, prevalence)

# %% [markdown]
# ## Training data, the split, and the paraphrases no training stage sees

# %%
split_prompts = dm.prompt_split(prompt_pool)
(out / "prompt_split.json").write_text(json.dumps(split_prompts, indent=1))
examples, train_ids = dm.training_examples(data_roots, split="train", prompts=dm.train_prompts(split_prompts))
_, test_ids = dm.training_examples(data_roots, split="test")
assert not train_ids & test_ids, "training and evaluation share an image"
split = pd.DataFrame([(i, "train") for i in sorted(train_ids)] + [(i, "test") for i in sorted(test_ids)],
                     columns=["image_id", "split"])
split.to_csv(out / "split.csv", index=False)
train_prevalence = pd.DataFrame([(ex.finding, ex.label == "yes") for ex in examples],
                                columns=["finding", "yes"]).groupby("finding").yes.mean()
print(f"{len(examples)} training examples from {len(train_ids)} images; {len(test_ids)} held-out images")
pd.DataFrame({f: {"train": len(v["train"]), "held_out": len(v["held_out"])} for f, v in split_prompts.items()})

# %% [markdown]
# ## Train each family from random weights
#
# Stage 1 teaches the vision side the findings (`vision_steps` steps) on the training images plus `n_pretrain`
# balanced extra images that belong to no dataset (`lib.offline.synth.pretraining_images`: a vision tower is
# pretrained on other data than the task's, and the rarest findings have a dozen training positives). Stage 2
# trains the whole model on the yes/no answers (`epochs` epochs, full-vocabulary cross-entropy of the answer
# token, a fraction `text_dropout` of the dataset questions without the image, the "train" paraphrases only),
# with `answer_pool` of the balanced images added, always with their image, so that the answer learns to read
# the rare findings while the text-only answer learns the datasets' priors only; both
# stages see jittered images (mirror, shift, zoom, contrast), see `lib.offline.default_models.train_base`.
# The families train in parallel processes, one thread each, so the models do not depend on the number of cores.

# %% alt="Two line plots of training loss against step, one line per default model family: stage 1, the vision side's finding probes; stage 2, the whole model's answer cross-entropy on a log scale."
training = dict(vision_steps=vision_steps, epochs=epochs, lr=lr, batch_size=batch_size,
                text_dropout=text_dropout)
built = pd.DataFrame(dm.build_families(data_roots, out / "models", seed, prompt_pool=prompt_pool,
                                       n_pretrain=n_pretrain, answer_pool=answer_pool, **training)).set_index("family")
logs = {f: pd.read_csv(Path(built.model_dir[f]) / "train_log.csv") for f in dm.FAMILIES}
vision_logs = {f: pd.read_csv(Path(built.model_dir[f]) / "vision_log.csv") for f in dm.FAMILIES}
fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 3.5))
for family in dm.FAMILIES:
    vision_logs[family].plot(x="step", y="loss", ax=ax1, label=family)
    logs[family].plot(x="step", y="loss", ax=ax2, label=family)
ax1.set_title("stage 1: vision side (finding probes, BCE)")
ax2.set_title("stage 2: whole model (cross-entropy of the answer token)")
ax2.set_yscale("log")
built.drop(columns="model_dir")

# %% [markdown]
# ## Required properties, measured on the held-out split
#
# Balanced accuracy (not accuracy: with these priors an always-"no" model is 90 % accurate), the median yes/no
# mass of the image answers, the fraction of samples whose answer changes on the counterfactual twin, and the
# text-only answer's p(yes) per finding next to that finding's rate in the training labels. The checks ask the
# original question only (`max_paraphrases: 0`); the paraphrases are what the runs of `make all` measure.

# %%
def check(family, dataset, root):
    params = lib.offline.build.check_params(family, dataset, root, out, twins=twins[dataset], limit=check_limit,
                                            seed=seed, bootstrap=check_bootstrap)
    return lib.offline.build.check_row(family, dataset, lib.protocol.run.evaluate(params))

checks = pd.DataFrame([check(f, d, r) for f in dm.FAMILIES for d, r in data_roots.items()])
# The bar for a base model that reads the image (lib.offline.default_models.MIN_*).
checks["meets_requirements"] = lib.offline.build.meets_requirements(checks)
checks.set_index(["family", "dataset"]).T

# %% [markdown]
# ## The reliance dial: which samples each configuration is built to ignore
#
# The base models and the consistency adapters are trained with the image for every finding. Each shortcut
# adapter (`lib.offline.default_models.RELIANCE_DIAL`, `params/lora/*-shortcut.yaml`) is trained with a random
# other image for its findings, so their labels do not depend on the image it sees: it is built to ignore the
# image on every test sample of those findings.

# %%
dial = lib.offline.build.reliance_dial(data_roots)
pd.DataFrame({name: {d: len(v) for d, v in entry["built_to_ignore"].items()} for name, entry in dial.items()})

# %%
report = lib.offline.build.build_report(
    seed=seed, n_images=n_images, world=world, prevalence_floor=prevalence_floor,
    build_seconds=time.perf_counter() - started, measured=measured, train_prevalence=train_prevalence.to_dict(),
    prompt_split=out / "prompt_split.json", twins=twins, dial=dial, checks=checks,
    training={**training, "prompt_pool": prompt_pool, "n_pretrain": n_pretrain, "answer_pool": answer_pool},
    n_train_images=len(train_ids), n_test_images=len(test_ids), references=reference_roots,
    n_references=n_references)
(out / "build_report.json").write_text(json.dumps(report, indent=2, default=str))
print(f"built in {report['build_seconds']:.0f} s; requirements met: {report['requirements_met']}")
