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
#    readers as the real datasets;
# 2. two small VLM families trained here to answer yes/no questions about the findings from the pixels:
#    a LLaVA-style model (`LlavaForConditionalGeneration`, like LLaVA-Rad) and a Gemma 3-style model
#    (`Gemma3ForConditionalGeneration`, like MedGemma), each with its real processor and chat template;
# 3. checks of the required properties: held-out accuracy with the image, and how often the text-only
#    answer differs (the base models must use the image).
#
# Training and evaluation never share an image: the split is written to `split.csv`.

# %%
# Repository root as working directory, HF_HUB_OFFLINE, inline figures (lib/front/notebook.py).
import lib.front.notebook
lib.front.notebook.setup()

# %% tags=["parameters"]
out_root = "outputs/default"
n_images = 400
seed = 0
vision_steps = 3600
epochs = 10
lr = 0.002
batch_size = 32
prompt_pool = 4
check_limit = 400

# %%
import json, time
from pathlib import Path
import matplotlib.pyplot as plt
import pandas as pd
import lib.offline.default_models as dm, lib.protocol.config, lib.protocol.plots, lib.protocol.provenance, lib.protocol.run, lib.offline.synth

lib.protocol.provenance.seed_everything(seed)
out = Path(out_root)
started = time.perf_counter()
data_roots = lib.offline.synth.write_default_datasets(out / "data", n_images=n_images, seed=seed)
{k: str(v) for k, v in data_roots.items()}

# %% [markdown]
# ## The synthetic radiographs (one row per finding: without, with)

# %%
fig = lib.protocol.plots.sample_grid(*lib.offline.synth.montage(data_roots["mimic-cxr"]), columns=4)

# %% [markdown]
# ## Training data, and the split

# %%
examples, train_ids = dm.training_examples(data_roots, split="train")
_, test_ids = dm.training_examples(data_roots, split="test")
assert not train_ids & test_ids, "training and evaluation share an image"
split = pd.DataFrame([(i, "train") for i in sorted(train_ids)] + [(i, "test") for i in sorted(test_ids)],
                     columns=["image_id", "split"])
split.to_csv(out / "split.csv", index=False)
print(f"{len(examples)} training examples from {len(train_ids)} images; {len(test_ids)} held-out images")

# %% [markdown]
# ## Train each family from random weights
#
# Stage 1 teaches the vision side the findings (`vision_steps` steps), stage 2 trains the whole model on the
# yes/no answers (`epochs` epochs); both see jittered images (mirror, shift, zoom, contrast), see
# `lib.offline.default_models.train_base`. The families train in parallel processes, one thread each, so the models do not
# depend on the number of cores.

# %%
training = dict(vision_steps=vision_steps, epochs=epochs, lr=lr, batch_size=batch_size, prompt_pool=prompt_pool)
built = pd.DataFrame(dm.build_families(data_roots, out / "models", seed, **training)).set_index("family")
logs = {f: pd.read_csv(Path(built.model_dir[f]) / "train_log.csv") for f in dm.FAMILIES}
vision_logs = {f: pd.read_csv(Path(built.model_dir[f]) / "vision_log.csv") for f in dm.FAMILIES}
fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 3.5))
for family in dm.FAMILIES:
    vision_logs[family].plot(x="step", y="loss", ax=ax1, label=family)
    logs[family].plot(x="step", y="loss", ax=ax2, label=family)
ax1.set_title("stage 1: vision side (finding probes, BCE)")
ax2.set_title("stage 2: whole model (cross-entropy of the answer)")
ax2.set_yscale("log")
built.drop(columns="model_dir")

# %% [markdown]
# ## Required properties, measured on the held-out split

# %%
checks = []
for family in dm.FAMILIES:
    for dataset, root in data_roots.items():
        params = lib.protocol.config.validate({
            "config": f"{family}-base", "model": str(out / "models" / f"{family}-base"),
            "dataset": dataset, "data_root": str(root), "limit": check_limit, "seed": seed,
            "output_dir": str(out / "checks" / f"{family}-base__{dataset}")})
        result = lib.protocol.run.evaluate(params)
        s = result.summary
        by_finding = result.samples.groupby("finding").correct.mean()
        checks.append({"family": family, "dataset": dataset, "n": s["n_samples"], "accuracy": s["accuracy"],
                       "text_only_differs": s["image_reliance_rate"], "flip_rate": s["flip_rate"],
                       **{f"accuracy {finding}": v for finding, v in by_finding.items()}})
checks = pd.DataFrame(checks)
# The bar for a base model that reads the image (lib.offline.default_models.MIN_ACCURACY, MIN_TEXT_ONLY_DIFFERS).
checks["meets_requirements"] = (checks.accuracy >= dm.MIN_ACCURACY) & (checks.text_only_differs >= dm.MIN_TEXT_ONLY_DIFFERS)
checks

# %%
report = {"seed": seed, "n_images": n_images, "build_seconds": time.perf_counter() - started,
          "checks": checks.to_dict("records"), "requirements_met": bool(checks.meets_requirements.all()),
          "training": training, "n_train_images": len(train_ids),
          "n_test_images": len(test_ids), **lib.protocol.provenance.provenance(seed)}
(out / "build_report.json").write_text(json.dumps(report, indent=2, default=str))
print(f"built in {report['build_seconds']:.0f} s")
