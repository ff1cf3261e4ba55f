"""Writes the source notebooks (without outputs). Edit here, then `make notebooks`.

Keeping the notebooks' cells in one Python file makes their diffs readable; the .ipynb files
are what papermill and JupyterLab use.
"""
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

ROOT = Path(__file__).resolve().parents[1]

SETUP = """\
import os
from pathlib import Path

# Paths in params files are relative to the repository root, wherever Jupyter was started.
os.chdir(next((p for p in [Path.cwd(), *Path.cwd().parents] if (p / "lib").is_dir()), Path.cwd()))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
%matplotlib inline"""


def code(src, tags=()):
    cell = new_code_cell(src)
    if tags:
        cell.metadata["tags"] = list(tags)
    return cell


def notebook(cells):
    for i, cell in enumerate(cells):
        cell.id = f"cell-{i}"  # stable ids: regenerating a notebook changes only what changed
    nb = new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    return nb


EVALUATE = [
    new_markdown_cell("""\
# Evaluate one model-dataset pair

This notebook runs the protocol of *Consistent but Dangerous* (see `README.md`) for ONE pair, chosen
by a params file: `papermill notebooks/evaluate.ipynb outputs/runs/<pair>.ipynb -f params/<pair>.yaml -p params_file params/<pair>.yaml`.

Every sample (one image, one yes/no question about one finding) is scored with its original question and
each paraphrase WITH the image, and with the original question WITHOUT the image. A sample is
**consistent** when all its image-conditioned answers agree and **image-reliant** when the text-only answer
differs from the image answer to the original question. The two axes give its quadrant:

| | image-reliant | not image-reliant |
|---|---|---|
| consistent | **Ideal** | **Dangerous** |
| inconsistent | **Fragile** | **Worst** |"""),
    code(SETUP),
    code("""\
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
limit = None
batch_size = 16
prefix_sharing = True
seed = 0
output_dir = None
show_images = False
trust_remote_code = False
allow_unsafe_weights = False
workers = 1
ray_address = None""", tags=["parameters"]),
    new_markdown_cell("Validate the parameters (a bad key or value stops here, naming the file and the key)."),
    code("""\
import json
import pandas as pd
import lib.protocol.config, lib.protocol.plots, lib.protocol.run

params = lib.protocol.config.resolve(globals(), params_file)
print(json.dumps(params, indent=1))"""),
    new_markdown_cell("Score every sample (resumable: rerunning computes only what is missing)."),
    code("""\
result = lib.protocol.run.evaluate(params)
summary = result.summary
print(f"{summary['n_samples']} samples scored; engine: {summary['engine']}")"""),
    new_markdown_cell("## The pair at a glance"),
    code("""\
overview = pd.Series({
    "flip rate": summary["flip_rate"],
    "pairwise flip rate": summary["pairwise_flip_rate"],
    "accuracy (original question, with image)": summary["accuracy"],
    "image reliance rate": summary["image_reliance_rate"],
    "samples": summary["n_samples"],
}, name=f"{summary['config']}__{summary['dataset']}")
overview.to_frame()""", tags=["nbval-check-output"]),
    code("""\
by_quadrant = pd.DataFrame({
    "samples": summary["quadrant_counts"],
    "fraction": summary["quadrant_fractions"],
    "accuracy": summary["accuracy_by_quadrant"],
    "mean entropy (bits)": summary["entropy_by_quadrant"],
})
by_quadrant""", tags=["nbval-check-output"]),
    code("""\
fig = lib.protocol.plots.entropy_by_quadrant(result.samples, title=overview.name)"""),
    new_markdown_cell("Quadrants per finding (a model may look at the image for one finding and not for another)."),
    code("""\
pd.crosstab(result.samples.finding, result.samples.quadrant, normalize="index").round(3)"""),
    new_markdown_cell("## Samples left out\nA missing or unreadable image, or a label that is neither positive nor negative under the label policy."),
    code("""\
pd.Series(summary["n_skipped"], name="samples skipped", dtype="int64").to_frame()"""),
    new_markdown_cell("## A look at some samples\nOnly when `show_images` is set (the offline default's synthetic images). Runs on credentialed data embed no image and no report text."),
    code("""\
if show_images:
    shown = result.samples.groupby("quadrant").head(2)
    images = [lib.protocol.run.data.read_xray(p) for p in lib.protocol.run.image_paths(params, shown.image_id)]
    titles = [f"{r.quadrant}: {r.finding}? label {r.label}, pred {r.pred}, text-only {r.pred_text_only}"
              for r in shown.itertuples()]
    fig = lib.protocol.plots.sample_grid(images, titles)"""),
    code("""\
print("outputs:", *sorted(p.name for p in Path(params["output_dir"]).glob("*.*")), sep="\\n  ")"""),
]

ANALYSIS = [
    new_markdown_cell("""\
# Gather all pairs: flip rate vs Dangerous fraction

Reads every `outputs/runs/*/summary.json` written by `evaluate.ipynb`, one row per model-dataset pair,
and tests the study's claim: pairs that flip less across paraphrases have more samples in the Dangerous
quadrant (consistent, but not image-reliant). The paper reports r = -0.89 over its 10 pairs."""),
    code(SETUP),
    code("""\
runs_dir = "outputs/runs"
analysis_dir = "outputs/analysis\"""", tags=["parameters"]),
    code("""\
import json
import pandas as pd
import lib.protocol.plots, lib.protocol.stats

out = Path(analysis_dir)
out.mkdir(parents=True, exist_ok=True)
pairs = lib.protocol.stats.gather_runs(runs_dir)
pairs.to_csv(out / "pairs.csv", index=False)
pairs.set_index("pair").round(3)"""),
    new_markdown_cell("## Correlation across pairs\nPearson r with two-sided p-value and a 95 % Fisher-z confidence interval, and Spearman rho."),
    code("""\
corr = lib.protocol.stats.flip_vs_dangerous(pairs)
(out / "correlation.json").write_text(json.dumps(corr, indent=2))
pd.Series({k: v for k, v in corr.items() if k != "pairs"}).to_frame("flip rate vs Dangerous fraction")"""),
    code("""\
fig = lib.protocol.plots.flip_vs_dangerous(pairs, corr)
fig.savefig(out / "flip_vs_dangerous.png", dpi=120)"""),
    new_markdown_cell("## Quadrants of each configuration, side by side"),
    code("""\
fig = lib.protocol.plots.quadrant_fractions(pairs)
fig.savefig(out / "quadrant_fractions.png", dpi=120)"""),
    new_markdown_cell("## Accuracy within each quadrant\nDangerous samples can be accurate: accuracy does not reveal that the image was ignored."),
    code("""\
fig = lib.protocol.plots.accuracy_by_quadrant(pairs)
fig.savefig(out / "accuracy_by_quadrant.png", dpi=120)"""),
    new_markdown_cell("## Entropy per quadrant\nLow entropy on Dangerous samples means confidence screening would not catch them. Explore one pair at a time with the selector (JupyterLab), or read the static figures below for every pair."),
    code("""\
samples_by_pair = lib.protocol.stats.gather_samples(runs_dir)
pd.concat(samples_by_pair, names=["pair"]).groupby(["pair", "quadrant"]).entropy.describe().round(3)"""),
    code("""\
import ipywidgets as widgets

@widgets.interact(pair=sorted(samples_by_pair))
def explore(pair):
    lib.protocol.plots.entropy_by_quadrant(samples_by_pair[pair], title=pair)"""),
    code("""\
for pair, table in samples_by_pair.items():
    fig = lib.protocol.plots.entropy_by_quadrant(table, title=pair)
    fig.savefig(out / f"entropy_{pair}.png", dpi=100)"""),
]

BUILD_DEFAULT = [
    new_markdown_cell("""\
# Build the offline default world

Everything `make all` needs with no GPU and no download, built from seeds on CPU:
1. synthetic chest radiographs in the real on-disk layouts of MIMIC-CXR-JPG and PadChest, read by the same
   readers as the real datasets;
2. two small VLM families trained here to answer yes/no questions about the findings from the pixels:
   a LLaVA-style model (`LlavaForConditionalGeneration`, like LLaVA-Rad) and a Gemma 3-style model
   (`Gemma3ForConditionalGeneration`, like MedGemma), each with its real processor and chat template;
3. checks of the required properties: held-out accuracy with the image, and how often the text-only
   answer differs (the base models must use the image).

Training and evaluation never share an image: the split is written to `split.csv`."""),
    code(SETUP),
    code("""\
out_root = "outputs/default"
n_images = 400
seed = 0
vision_steps = 3600
epochs = 10
lr = 0.002
batch_size = 32
prompt_pool = 4
check_limit = 400""", tags=["parameters"]),
    code("""\
import json, time
import matplotlib.pyplot as plt
import pandas as pd
import lib.offline.default_models as dm, lib.protocol.config, lib.protocol.plots, lib.protocol.provenance, lib.protocol.run, lib.offline.synth

lib.protocol.provenance.seed_everything(seed)
out = Path(out_root)
started = time.perf_counter()
data_roots = lib.offline.synth.write_default_datasets(out / "data", n_images=n_images, seed=seed)
{k: str(v) for k, v in data_roots.items()}"""),
    new_markdown_cell("## The synthetic radiographs (one row per finding: without, with)"),
    code("""\
fig = lib.protocol.plots.sample_grid(*lib.offline.synth.montage(data_roots["mimic-cxr"]), columns=4)"""),
    new_markdown_cell("## Training data, and the split"),
    code("""\
examples, train_ids = dm.training_examples(data_roots, split="train")
_, test_ids = dm.training_examples(data_roots, split="test")
assert not train_ids & test_ids, "training and evaluation share an image"
split = pd.DataFrame([(i, "train") for i in sorted(train_ids)] + [(i, "test") for i in sorted(test_ids)],
                     columns=["image_id", "split"])
split.to_csv(out / "split.csv", index=False)
print(f"{len(examples)} training examples from {len(train_ids)} images; {len(test_ids)} held-out images")"""),
    new_markdown_cell("""\
## Train each family from random weights

Stage 1 teaches the vision side the findings (`vision_steps` steps), stage 2 trains the whole model on the
yes/no answers (`epochs` epochs); both see jittered images (mirror, shift, zoom, contrast), see
`lib.offline.default_models.train_base`. The families train in parallel processes, one thread each, so the models do not
depend on the number of cores."""),
    code("""\
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
built.drop(columns="model_dir")"""),
    new_markdown_cell("## Required properties, measured on the held-out split"),
    code("""\
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
checks"""),
    code("""\
report = {"seed": seed, "n_images": n_images, "build_seconds": time.perf_counter() - started,
          "checks": checks.to_dict("records"), "requirements_met": bool(checks.meets_requirements.all()),
          "training": training, "n_train_images": len(train_ids),
          "n_test_images": len(test_ids), **lib.protocol.provenance.provenance(seed)}
(out / "build_report.json").write_text(json.dumps(report, indent=2, default=str))
print(f"built in {report['build_seconds']:.0f} s")"""),
]

FINETUNE_LORA = [
    new_markdown_cell("""\
# Consistency LoRA fine-tuning (the paper's recipe)

Trains a peft LoRA adapter on a base model so that two paraphrases of the same question get the same answer:
loss = cross-entropy on the first answer token (both paraphrases) + `kl_weight` x symmetric KL divergence between
the two yes/no answer distributions. `layers` chooses the decoder layers that get adapters ("targeted" vs "full");
`quantization: 4bit` trains on a 4-bit base (QLoRA). Works on the offline default models on CPU and on real
models (e.g. `google/medgemma-4b-it`) on a GPU. The adapter directory is what `evaluate.ipynb` loads as `adapter`."""),
    code(SETUP),
    code("""\
params_file = None
name = "llava-lora-targeted"
base_model = "outputs/default/models/llava-base"
dataset = "mimic-cxr"
data_root = "outputs/default/data/mimic-cxr"
split = "train"
limit = None
layers = [1, 2]
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
output_dir = None""", tags=["parameters"]),
    code("""\
import json
import lib.offline.finetune

spec = lib.offline.finetune.resolve(globals(), params_file)
spec"""),
    code("""\
result = lib.offline.finetune.run(spec)
print(f"{result.n_examples} examples, {result.trainable} trainable parameters "
      f"({result.trainable_fraction:.2%} of the model); adapter saved to {spec['output_dir']}")"""),
    new_markdown_cell("## Loss curve (both terms)"),
    code("""\
ax = result.log.plot(x="step", y=["ce", "kl"], logy=True, title=f"{spec['name']}: training loss terms")
ax.figure.savefig(Path(spec["output_dir"]) / "loss.png", dpi=110)
result.log.tail()"""),
]


def write(name, cells):
    path = ROOT / "notebooks" / name
    nbformat.write(notebook(cells), path)
    print("wrote", path.relative_to(ROOT))


if __name__ == "__main__":
    write("evaluate.ipynb", EVALUATE)
    write("analysis.ipynb", ANALYSIS)
    write("build_default.ipynb", BUILD_DEFAULT)
    write("finetune_lora.ipynb", FINETUNE_LORA)
