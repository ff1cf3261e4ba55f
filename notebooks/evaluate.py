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
# # Evaluate one model-dataset pair
#
# This notebook runs the protocol of *Consistent but Dangerous* (see `README.md`) for ONE pair, chosen
# by a params file: `python -m lib evaluate params/<pair>.yaml` (papermill underneath:
# `papermill notebooks/evaluate.ipynb outputs/runs/<pair>/evaluate.ipynb -f params/<pair>.yaml -p params_file params/<pair>.yaml`).
#
# Every sample (one image, one yes/no question about one finding) is scored with its original question and
# each paraphrase WITH the image, and with the original question WITHOUT the image. A sample is
# **consistent** when all its image-conditioned answers agree and **image-reliant** when the text-only answer
# differs from the image answer to the original question. The two axes give its quadrant:
#
# | | image-reliant | not image-reliant |
# |---|---|---|
# | consistent | **Ideal** | **Dangerous** |
# | inconsistent | **Fragile** | **Worst** |

# %%
# Repository root as working directory, HF_HUB_OFFLINE, inline figures (lib/front/notebook.py).
import lib.front.notebook
lib.front.notebook.setup()

# %% tags=["parameters"]
params_file = None
config = "llava-base"
model = "outputs/default/models/llava-base"
adapter = None
merge_adapter = False
quantization = "none"
dtype = "auto"
device = "auto"
dataset = "mimic-cxr"
data_root = "outputs/default/data/mimic-cxr"
split = "test"
findings = ["cardiomegaly", "pleural effusion", "pneumothorax", "nodule"]
questions = None
max_paraphrases = None
label_policy = {"uncertain": "skip", "blank": "no"}
image_removal = "none"
reliance_checks = ["swap", "blank", "noise"]
answer_instruction = None
bootstrap_resamples = 1000
ci_level = 0.95
limit = None
batch_size = 16
prefix_sharing = True
seed = 0
output_dir = None
show_images = False
allow_patient_images = False
trust_remote_code = False
allow_unsafe_weights = False
workers = 1
ray_address = None

# %% [markdown]
# Validate the parameters and every input that needs no model: the data root's official files,
# the question file, the model and adapter directories, the output directory, prompt lengths.
# A bad key, value or file stops here in one line naming the file (or `-p`) and the key.

# %%
import json
from pathlib import Path
import pandas as pd
import lib.front.session, lib.protocol.plots, lib.protocol.run

params, inputs = lib.front.session.params(globals(), params_file)
print(json.dumps(params, indent=1))

# %% [markdown]
# Score every sample. Records are keyed by content: a rerun reuses a sample's record only while
# its image file and prompts are unchanged, and rescores the rest.

# %%
result = lib.front.session.evaluate(params, inputs)
summary = result.summary
print(f"{summary['n_samples']} samples: {summary['records']['samples_reused']} reused from earlier "
      f"records, {summary['records']['samples_scored']} scored; engine: {summary['engine']}")

# %% [markdown]
# ## The pair at a glance

# %% tags=["nbval-check-output"]
overview = pd.Series({
    "flip rate": summary["flip_rate"],
    "pairwise flip rate": summary["pairwise_flip_rate"],
    "accuracy (original question, with image)": summary["accuracy"],
    "image reliance rate": summary["image_reliance_rate"],
    "samples": summary["n_samples"],
}, name=f"{summary['config']}__{summary['dataset']}")
overview.to_frame()

# %% tags=["nbval-check-output"]
by_quadrant = pd.DataFrame({
    "samples": summary["quadrant_counts"],
    "fraction": summary["quadrant_fractions"],
    "accuracy": summary["accuracy_by_quadrant"],
    "mean entropy (bits)": summary["entropy_by_quadrant"],
})
by_quadrant

# %%
fig = lib.protocol.plots.entropy_by_quadrant(result.samples, title=overview.name)

# %% [markdown]
# Quadrants per finding (a model may look at the image for one finding and not for another).

# %%
pd.crosstab(result.samples.finding, result.samples.quadrant, normalize="index").round(3)

# %% [markdown]
# ## Samples left out
# A missing, unreadable or too small image, or a label that is neither positive nor negative under the
# label policy. Every skipped sample or label row is listed in `skipped.csv` beside the outputs.

# %%
pd.Series(summary["n_skipped"], name="samples skipped", dtype="int64").to_frame()

# %%
skipped = pd.read_csv(Path(params["output_dir"]) / "skipped.csv")
skipped.groupby("reason").head(5)

# %% [markdown]
# ## A look at some samples
# Only when `show_images` is set (the offline default's synthetic images). Runs on credentialed data embed no image and no report text.

# %%
if params["show_images"]:
    shown = result.samples.groupby("quadrant").head(2)
    images = [lib.protocol.run.data.read_xray(p) for p in lib.protocol.run.image_paths(params, shown.image_id)]
    titles = [f"{r.quadrant}: {r.finding}? label {r.label}, pred {r.pred}, text-only {r.pred_text_only}"
              for r in shown.itertuples()]
    fig = lib.protocol.plots.sample_grid(images, titles)

# %%
print("outputs:", *sorted(p.name for p in Path(params["output_dir"]).glob("*.*")), sep="\n  ")
