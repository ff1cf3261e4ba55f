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
# `papermill notebooks/evaluate.ipynb outputs/runs/<pair>/evaluate.ipynb -p params_file params/<pair>.yaml`;
# the params file is read here, with limits, not by papermill's `-f`).
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
box_file = None
findings = ["cardiomegaly", "pleural effusion", "pneumothorax", "nodule"]
questions = None
max_paraphrases = None
label_policy = {"uncertain": "skip", "blank": "no"}
image_removal = "none"
reliance_checks = ["reference", "blank", "noise"]
reference_pool = 200
reference_split = "auto"
reference_root = None
local_tests = ["occlude", "followup"]  # local counterfactuals where the data allow (occluded boxes, other studies)
followup_max_differing_labels = None  # followup: at most this many other findings labelled differently, None for any
answer_instruction = None
bootstrap_resamples = 1000
ci_level = 0.95
twins = None
prompt_split = None
limit = None
batch_size = 16
prefix_sharing = True
seed = 0
max_image_pixels = 40000000
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
import html, json
from pathlib import Path
import pandas as pd
from IPython.display import HTML
import lib.front.session, lib.protocol.breakdown, lib.protocol.plots, lib.protocol.run

params = lib.front.session.params(globals(), params_file)
print(f"{params['config']} on {params['dataset']} ({params['split']}): parameters valid "
      f"(all of them at the end of this page)")

# %% [markdown]
# Score every sample. Records are keyed by content: a rerun reuses a sample's record only while
# its image file and prompts are unchanged, and rescores the rest.

# %%
result = lib.front.session.evaluate(params)
summary = result.summary
print(*lib.protocol.breakdown.scoring_lines(summary), sep="\n")

# %% [markdown]
# ## The pair at a glance

# %% [markdown]
# Every rate has a 95 % interval from a cluster bootstrap over images (the samples of one image are
# not independent): `summary["ci_method"]` says how it was made. Where the bootstrap degenerated to
# a point (every sample agrees: 0 of 40 gives 0.000 to 0.000), a rate shows the Wilson interval over
# the samples it is over instead, and the balanced accuracy the mean of its two parts' bounds
# (`lib.protocol.breakdown.declared`), as the report and the explorer do.

# %% tags=["nbval-check-output"]
pair = f"{summary['config']}__{summary['dataset']}"
with_ci = lib.protocol.breakdown.interval_table
n = summary["n_samples"]
steady = lib.protocol.breakdown.steady   # a bootstrap interval, Wilson where it degenerated to a point
declared = lib.protocol.breakdown.declared   # a declared rate with its steady interval

overview = with_ci({
    "flip rate": declared(summary, "flip_rate"),
    "pairwise flip rate": declared(summary, "pairwise_flip_rate"),
    "accuracy (original question, with image)": declared(summary, "accuracy"),
    "image reliance rate": declared(summary, "image_reliance_rate"),
    "samples": (n, None),
})
overview.columns.name = pair
overview

# %% tags=["nbval-check-output"]
by_quadrant = lib.protocol.breakdown.shown(pd.DataFrame({
    "samples": summary["quadrant_counts"],
    "fraction": summary["quadrant_fractions"],
    "fraction_ci": {q: declared(summary, "quadrant_fractions", q)[1] for q in summary["quadrant_fractions"]},
    "accuracy": summary["accuracy_by_quadrant"],
    "prior accuracy (text-only answer)": summary["prior_accuracy_by_quadrant"],
    "mean entropy (bits)": summary["entropy_by_quadrant"],
}))
by_quadrant

# %% alt="Four histograms, one per quadrant (Ideal, Fragile, Dangerous, Worst): the binary entropy of p(yes) for this pair's original questions, 0 to 1 bit."
fig = lib.protocol.plots.entropy_by_quadrant(result.samples, title=pair)

# %% [markdown]
# Per finding (a model may look at the image for one finding and not for another): samples,
# positives, quadrant counts, and accuracy, sensitivity, specificity with Wilson intervals.

# %%
lib.protocol.breakdown.shown(lib.protocol.breakdown.per_finding(result.samples)).set_index("finding")

# %% [markdown]
# Per paraphrase: how often its answer differs from the original question's on the same image
# (a negated paraphrase compared by the answer it implies).

# %%
lib.protocol.breakdown.shown(lib.protocol.breakdown.per_paraphrase(result.predictions, result.samples)).set_index(["finding", "prompt_id"])

# %% [markdown]
# ## Beside the paper's measures
# Added next to the paper's definitions, which they leave unchanged (each defined once in a module
# docstring: the rates in `lib/protocol/measures.py`, the rest in `lib/protocol/summary.py`).
#
# **Accuracy is not enough** with real prevalences (an always-"no" model is 99.6 % accurate on
# pneumothorax): sensitivity, specificity and their mean, the balanced accuracy.

# %% tags=["nbval-check-output"]
with_ci({
    "sensitivity (label yes, pred yes)": declared(summary, "sensitivity"),
    "specificity (label no, pred no)": declared(summary, "specificity"),
    "balanced accuracy": declared(summary, "balanced_accuracy"),
})

# %% [markdown]
# **Image-blind or prior-coincident?** A Dangerous sample answers the same with and without the image.
# Would it answer the same had the image shown the opposite finding? Reference images of the same
# dataset with the opposite label, from outside the evaluated samples (a split the model was not
# trained on), are each asked the finding's original question ONCE; a sample's
# `reference_agreement` is the share of them answered like the sample. The **image-blind rate** is
# the mean of [Dangerous] x reference_agreement over all samples; **prior-coincident** is the rest of
# Dangerous. Its interval resamples the images AND the references (`lib/protocol/references.py`).

# %% tags=["nbval-check-output"]
blind = summary["image_blind"] or {}
breakdown = summary["dangerous_breakdown"]
print(f"references: {blind.get('reference_source')}; {blind.get('n_reference_images')} images, "
      f"{blind.get('n_estimable')} of {blind.get('n_samples')} samples estimable")
with_ci({**{kind: declared(summary, "dangerous_breakdown", kind) for kind in breakdown},
         "image-blind among Dangerous": (blind.get("among_dangerous"),
                                         steady(blind.get("among_dangerous"), blind.get("ci95_among_dangerous"),
                                                summary["quadrant_counts"]["Dangerous"]))})

# %% [markdown]
# Per finding: its samples, the reference images with and without it, and its image-blind rate
# over the finding's samples ("too few references": fewer than `MIN_REFERENCES` of
# `lib/protocol/references.py`).

# %%
lib.protocol.breakdown.image_blind_by_finding(summary)

# %% [markdown]
# How often a uniform grey image, or the run's few seeded noise images, move the answer to the
# original question (each scored once per question, not per sample; the interval resamples the
# samples' images, the blank and noise images being fixed).

# %%
with_ci({
    "blank image changes the answer": declared(summary, "blank_change_rate"),
    "noise images change the answer": declared(summary, "noise_change_rate"),
})

# %% alt="Four histograms, one per quadrant: this pair's image reliance, the absolute difference between p(yes) with the image and text-only, 0 to 1."
fig = lib.protocol.plots.reliance_by_quadrant(result.samples, title=f"{pair}: reliance per quadrant")

# %% [markdown]
# **Local tests: does THIS answer follow THIS image?** Each test changes the sample's own image and
# asks its original question again (`lib/protocol/local_tests.py`): `occlude` fills the finding's
# marked box from its surroundings (where the data has boxes), `followup` shows the same patient's
# other study with the opposite label (where the data has patients and studies); each control
# should change nothing. Occlusion is not absence and a follow-up differs in more than the finding:
# read a change against its control. Intervals resample patients.

# %%
lib.protocol.breakdown.local_tests_table(summary)

# %% [markdown]
# **Confidence screening.** The paper says Dangerous samples are invisible to confidence-based
# screening. AUROC = P(a Dangerous sample has higher answer entropy than another sample), ties one
# half: 0.5 means an entropy screen is blind to them, below 0.5 they are the more confident ones.
# Catch rate: the share of Dangerous samples among the given fraction of least confident samples.

# %%
screening = summary["screening"]
print("AUROC entropy, Dangerous vs the rest:",
      lib.protocol.breakdown.with_interval(screening["auroc_entropy_dangerous"], screening["ci95"]))
pd.DataFrame({"catch rate (of all Dangerous samples)": screening["catch_rate"],
              "Dangerous among the flagged": screening["flagged_dangerous_fraction"]}).rename_axis(
    "fraction flagged").astype(float).round(3)

# %% [markdown]
# **Decision threshold.** The quadrant fractions when pred = yes iff p_yes >= t (the protocol uses 0.5).

# %%
pd.DataFrame(summary["threshold_sensitivity"]).T.rename_axis("threshold").astype(float).round(3)

# %% [markdown]
# **Yes/no probability mass**: how much of the next-token distribution the answers yes and no held
# over the image prompts. A median below 0.5 means the model is mostly not answering yes or no
# (the `answer_instruction` param can tell it to).

# %%
mass = summary["yes_no_mass"]
print(f"yes/no mass over the image prompts: median {lib.protocol.breakdown.cell(mass['median'])}, "
      f"10th percentile {lib.protocol.breakdown.cell(mass['p10'])}")
print(*(summary["warnings"] or ["no warning"]), sep="\n")

# %% [markdown]
# ## Samples left out
# A missing, unreadable or too small image, or a label that is neither positive nor negative under the
# label policy. Every skipped sample or label row is listed in `skipped.csv` beside the outputs.

# %%
skipped = pd.read_csv(Path(params["output_dir"]) / "skipped.csv")
if len(skipped):
    display(pd.Series(summary["n_skipped"], name="samples skipped", dtype="int64").to_frame())
    display(skipped.groupby("reason").head(5).fillna(""))
else:
    print("No sample was left out.")

# %% [markdown]
# ## A look at some samples
# Only when `show_images` is set (the offline default's synthetic images). Runs on credentialed data embed no image and no report text.

# %% alt="A grid of synthetic radiographs of this pair, up to two per quadrant, each titled with its quadrant, finding, label, prediction and text-only prediction."
if params["show_images"]:
    shown = result.samples.groupby("quadrant").head(2)
    images = [lib.protocol.run.data.read_xray(p) for p in lib.protocol.run.image_paths(params, shown.image_id)]
    titles = [f"{r.quadrant}: {r.finding}?\nlabel {r.label}, pred {r.pred}, text-only {r.pred_text_only}"
              for r in shown.itertuples()]
    fig = lib.protocol.plots.sample_grid(images, titles)

# %%
print("outputs:", *sorted(p.name for p in Path(params["output_dir"]).glob("*.*") if not p.name.startswith(".")),
      sep="\n  ")

# %% [markdown]
# ## Settings
# Every parameter of the run, after validation (the params file, `-p` values and defaults).

# %%
HTML(f"<details><summary>all parameters</summary><pre>{html.escape(json.dumps(params, indent=1))}</pre></details>")
