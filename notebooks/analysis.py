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

# %%
import json
from pathlib import Path
import pandas as pd
import lib.protocol.plots, lib.protocol.stats

out = Path(analysis_dir)
out.mkdir(parents=True, exist_ok=True)
pairs = lib.protocol.stats.gather_runs(runs_dir)
pairs.to_csv(out / "pairs.csv", index=False)
pairs.set_index("pair").round(3)

# %% [markdown]
# ## Correlation across pairs
# Pearson r with two-sided p-value and a 95 % Fisher-z confidence interval, and Spearman rho.

# %%
corr = lib.protocol.stats.flip_vs_dangerous(pairs)
(out / "correlation.json").write_text(json.dumps(corr, indent=2))
pd.Series({k: v for k, v in corr.items() if k != "pairs"}).to_frame("flip rate vs Dangerous fraction")

# %%
fig = lib.protocol.plots.flip_vs_dangerous(pairs, corr)
fig.savefig(out / "flip_vs_dangerous.png", dpi=120)

# %% [markdown]
# ## Quadrants of each configuration, side by side

# %%
fig = lib.protocol.plots.quadrant_fractions(pairs)
fig.savefig(out / "quadrant_fractions.png", dpi=120)

# %% [markdown]
# ## Accuracy within each quadrant
# Dangerous samples can be accurate: accuracy does not reveal that the image was ignored.

# %%
fig = lib.protocol.plots.accuracy_by_quadrant(pairs)
fig.savefig(out / "accuracy_by_quadrant.png", dpi=120)

# %% [markdown]
# ## Entropy per quadrant
# Low entropy on Dangerous samples means confidence screening would not catch them. Explore one pair at a time with the selector (JupyterLab), or read the static figures below for every pair.

# %%
samples_by_pair = lib.protocol.stats.gather_samples(runs_dir)
pd.concat(samples_by_pair, names=["pair"]).groupby(["pair", "quadrant"]).entropy.describe().round(3)

# %%
import ipywidgets as widgets

@widgets.interact(pair=sorted(samples_by_pair))
def explore(pair):
    lib.protocol.plots.entropy_by_quadrant(samples_by_pair[pair], title=pair)


# %%
for pair, table in samples_by_pair.items():
    fig = lib.protocol.plots.entropy_by_quadrant(table, title=pair)
    fig.savefig(out / f"entropy_{pair}.png", dpi=100)
