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
# # Gather all pairs: flip rate vs Dangerous fraction
#
# Reads every `outputs/runs/*/summary.json` written by `evaluate.ipynb`, one row per model-dataset pair,
# and tests the study's claim: pairs that flip less across paraphrases have more samples in the Dangerous
# quadrant (consistent, but not image-reliant). The paper reports r = -0.89 over its 10 pairs.

# %%
# Repository root as working directory, HF_HUB_OFFLINE, inline figures (lib/front/notebook.py).
import lib.front.notebook
lib.front.notebook.setup()

# %% tags=["parameters"]
runs_dir = "outputs/runs"
analysis_dir = "outputs/analysis"
bootstrap_resamples = 1000   # resamples of the correlation's bootstrap interval
permutation_resamples = 9999  # resamples of its permutation test
seed = 0

# %%
import json
from pathlib import Path
import pandas as pd
import lib.front.explorer, lib.protocol.breakdown, lib.protocol.plots, lib.protocol.stats

out = Path(analysis_dir)
out.mkdir(parents=True, exist_ok=True)
pairs = lib.protocol.stats.gather_runs(runs_dir)
samples_by_pair = lib.protocol.stats.gather_samples(runs_dir)
pairs.to_csv(out / "pairs.csv", index=False)
print(f"{len(pairs)} pairs; every column of every pair (rates, intervals, per-quadrant numbers) is in {out / 'pairs.csv'}")
lib.protocol.stats.readable_pairs(pairs)

# %% [markdown]
# ## Correlation across pairs
# Pearson r with two-sided p-value and a 95 % Fisher-z confidence interval, and Spearman rho, as in
# the paper. Beside them: `bootstrap_ci95`, a percentile interval of r from resampling the images of
# every pair (each pair's flip rate and Dangerous fraction recomputed from its samples, then r), so it
# carries the sampling noise of each pair's own rates, which the Fisher-z interval (pairs as points
# known exactly) does not; and `permutation_p`, the two-sided p-value of r under random pairings of
# the pairs' flip rates and Dangerous fractions.

# %%
corr = lib.protocol.stats.flip_vs_dangerous(pairs, samples_by_pair, bootstrap_resamples=bootstrap_resamples,
                                            permutation_resamples=permutation_resamples, seed=seed)
(out / "correlation.json").write_text(json.dumps(corr, indent=2))
pd.concat({"flip rate vs Dangerous fraction": lib.protocol.stats.readable_correlation(corr),
           "flip rate vs image-blind rate": lib.protocol.stats.readable_correlation(corr["image_blind"])},
          axis=1, sort=False).fillna("–")

# %% [markdown]
# **How much of r is arithmetic.** A Dangerous sample is consistent and not image-reliant, so if flip
# rate f and image-reliance rate rho were independent, the Dangerous fraction would be
# (1 - f)(1 - rho): it falls as f rises by arithmetic alone, whatever the models do.
# `independence_r` is the r between f and that product across the same pairs. An observed r close to
# it says the correlation is what independent axes give; only the distance between the two is
# evidence that consistency and image-blindness go together. The image-blind rate (how often a
# Dangerous answer would survive an image showing the opposite finding, estimated over reference
# images; `lib/protocol/references.py`) is the part of the Dangerous quadrant that really ignores the
# image: its r is the study's claim with the prior-coincident samples taken out.

# %%
number = lib.protocol.breakdown.cell
print(f"flip rate vs Dangerous: r = {number(corr['pearson_r'])} (independent axes alone: r = "
      f"{number(corr['independence_r'])}); flip rate vs image-blind: r = {number(corr['image_blind']['pearson_r'])}")
if corr["n"] < lib.protocol.stats.MIN_PAIRS:
    print(f"too few to tell: {corr['n']} pairs (a correlation needs at least {lib.protocol.stats.MIN_PAIRS})")

# %% alt="Scatter plot, one point per model-dataset pair: flip rate across paraphrases against the Dangerous fraction, with each pair's intervals as error bars; the title gives the correlation."
fig = lib.protocol.plots.flip_vs_dangerous(pairs, corr)
fig.savefig(out / "flip_vs_dangerous.png", dpi=120)

# %% [markdown]
# ## Quadrants of each configuration, side by side

# %% alt="Stacked bars, one per pair: the fractions of Ideal, Fragile, Dangerous and Worst samples."
fig = lib.protocol.plots.quadrant_fractions(pairs)
fig.savefig(out / "quadrant_fractions.png", dpi=120)

# %% [markdown]
# ## The Dangerous fraction with its interval, split by reference images
# Each pair's Dangerous fraction with its cluster-bootstrap interval over images, and the two parts
# the reference images tell apart: image-blind (the answer would survive an image showing the opposite
# finding; interval over images and references) and prior-coincident (the model reads the image; its
# answer merely equals its prior).

# %% alt="Forest plot, one row per pair: the Dangerous fraction with its interval, and its image-blind and prior-coincident parts with theirs."
fig = lib.protocol.plots.dangerous_forest(pairs)
fig.savefig(out / "dangerous_forest.png", dpi=120)

# %% [markdown]
# ## Accuracy within each quadrant
# Dangerous samples can be accurate: accuracy does not reveal that the image was ignored. Within the
# Dangerous quadrant the answer IS the text-only answer, so its accuracy is what the prior alone earns there.

# %% alt="Four panels, one per quadrant, one row per pair: the accuracy of the original question within the quadrant with its Wilson interval, and the number of samples at the right."
fig = lib.protocol.plots.accuracy_by_quadrant(pairs)
fig.savefig(out / "accuracy_by_quadrant.png", dpi=120)

# %% [markdown]
# ## Confidence screening
# The AUROC of answer entropy for Dangerous samples against the rest, per pair: 0.5 means an entropy
# screen is blind to them, below 0.5 that they are the more confident ones.

# %% alt="One row per pair: the screening AUROC (a Dangerous sample's answer entropy above another sample's) with its interval."
fig = lib.protocol.plots.screening_auroc(pairs)
fig.savefig(out / "screening_auroc.png", dpi=120)

# %% [markdown]
# ## Entropy and reliance per quadrant
# Low entropy on Dangerous samples means confidence screening would not catch them; reliance =
# |p_yes - p_yes without the image| shows how far the image moves the answer. Explore one pair at a
# time with the selectors (in JupyterLab: choose a pair, a finding or all, a quadrant or all four); the
# pair's numbers and their 95 % intervals are beside the figure, the samples behind it below: choose one
# to see its p_yes for every prompt and condition (and, for the synthetic offline world only, its image). Every pair's distributions follow, one
# figure per measure, the pairs as rows (boxes: quartiles; whiskers: 1.5 IQR).

# %%
explorer = lib.front.explorer.Explorer(samples_by_pair, lib.protocol.stats.read_summaries(runs_dir),
                                      lib.protocol.stats.gather_samples(runs_dir, "predictions.parquet"))
explorer

# %% alt="Four panels, one per quadrant, one box per pair: the distribution of the original question's answer entropy, with each box's number of samples."
fig = lib.protocol.plots.distributions_by_pair(samples_by_pair, "entropy", "answer entropy (bits)")
fig.savefig(out / "entropy_by_pair.png", dpi=100)

# %% alt="Four panels, one per quadrant, one box per pair: the distribution of image reliance, with each box's number of samples."
fig = lib.protocol.plots.distributions_by_pair(samples_by_pair, "reliance", "reliance |p_yes - p_yes text-only|")
fig.savefig(out / "reliance_by_pair.png", dpi=100)
