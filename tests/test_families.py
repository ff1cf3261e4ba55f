"""Every supported model family, end to end, on tiny random checkpoints (CPU, float32, offline).

For each family (lib/families/registry.py; builders in tests/tiny_families.py): a tiny randomly
initialised checkpoint of the SAME model and processor class as the real ones, with the real
chat template, is saved with save_pretrained, loaded through `lib.protocol.models.load_model`, and
1. scored by the engine against one-prompt-at-a-time full forwards (|dp_yes| <= 1e-5), with
   and without the image (image_removal none and blank); families whose format rules out image
   prefix sharing must fall back to plain batching and say why;
2. run through the whole `notebooks/evaluate.ipynb` with papermill (image_removal none and
   blank) on a small fixture tree in the official MIMIC-CXR-JPG layout.

Qwen2.5-VL's processor cannot be saved or loaded without torchvision in transformers 5.24, so
here it is tested in memory (engine only); its notebook test runs where torchvision exists.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from PIL import Image

from lib.families import registry
from lib.protocol import config, data, models, prompts, psf_med, run
from lib.protocol.engine import Engine, Item, blank_image, paper_items, yes_probability
from tests import tiny_families

ROOT = Path(__file__).resolve().parents[1]
SAVED = ("gemma3", "llava", "idefics3")
TOL = 1e-5
# Random heads give p_yes ~ 0.5 everywhere; scaling spreads it over (0, 1) and magnifies errors.
HEAD_SCALE = 30.0
QUESTIONS = (
    ("Is there cardiomegaly?", "Is the heart enlarged?", "Does this chest X-ray show cardiomegaly?"),
    ("Is there a pleural effusion?", "Is there fluid in the pleural space?"),
    ("Is there a pneumothorax?", "Is there air in the pleural space?",
     "Does this chest X-ray show a pneumothorax?", "Is air present outside the lung?"),
)

# -- a fixture tree in the official MIMIC-CXR-JPG 2.0.0 layout ---------------------------------

CHEXPERT_COLUMNS = ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema",
                    "Enlarged Cardiomediastinum", "Fracture", "Lung Lesion", "Lung Opacity",
                    "No Finding", "Pleural Effusion", "Pleural Other", "Pneumonia", "Pneumothorax",
                    "Support Devices")
IMAGE_SIZES = ((96, 80), (80, 96), (88, 88), (120, 72))


def write_mimic_fixture(root, n_images: int = 4, seed: int = 0, sizes=IMAGE_SIZES) -> Path:
    """n frontal test-split images (8-bit grayscale JPEG, sizes cycling through `sizes`) with
    their metadata, split and CheXpert rows; ids are MIMIC-shaped (p1x/p1xxxxxxx/s5xxxxxxx)."""
    rng = np.random.default_rng(seed)
    root = Path(root)
    meta, split, chexpert = [], [], []
    for i in range(n_images):
        subject, study = 10000032 + i, 50414267 + i
        dicom = f"{rng.integers(16 ** 7, 16 ** 8):08x}-{rng.integers(16 ** 7, 16 ** 8):08x}"
        width, height = sizes[i % len(sizes)]
        folder = root / "files" / f"p{str(subject)[:2]}" / f"p{subject}" / f"s{study}"
        folder.mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 256, size=(height, width), dtype=np.uint8)
        Image.fromarray(pixels, "L").save(folder / f"{dicom}.jpg", quality=95)
        meta.append({"dicom_id": dicom, "subject_id": subject, "study_id": study,
                     "PerformedProcedureStepDescription": "CHEST (PA AND LAT)",
                     "ViewPosition": "PA" if i % 2 else "AP", "Rows": height, "Columns": width})
        split.append({"dicom_id": dicom, "study_id": study, "subject_id": subject, "split": "test"})
        row = {"subject_id": subject, "study_id": study}
        row.update({c: float(rng.integers(0, 2)) for c in CHEXPERT_COLUMNS})
        chexpert.append(row)
    pd.DataFrame(meta).to_csv(root / "mimic-cxr-2.0.0-metadata.csv", index=False)
    pd.DataFrame(split).to_csv(root / "mimic-cxr-2.0.0-split.csv", index=False)
    pd.DataFrame(chexpert).to_csv(root / "mimic-cxr-2.0.0-chexpert.csv", index=False)
    return root


# -- fixtures --------------------------------------------------------------------------------

def scaled_head(model):
    with torch.no_grad():
        model.lm_head.weight.mul_(HEAD_SCALE)
    return model


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """family -> saved tiny checkpoint directory (built once per module, on first use)."""
    cache = {}

    def get(family):
        if family not in cache:
            model, processor = tiny_families.build(family, seed=len(cache))
            out = tmp_path_factory.mktemp(family)
            scaled_head(model).save_pretrained(out, safe_serialization=True)
            processor.save_pretrained(out)
            cache[family] = out
        return cache[family]

    return get


@pytest.fixture(scope="module")
def mimic_root(tmp_path_factory):
    return write_mimic_fixture(tmp_path_factory.mktemp("mimic"))


def load(path):
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    return models.load_model(str(path), dtype="float32", device="cpu")


def make_items(sizes) -> list[Item]:
    rng = np.random.default_rng(1)
    return [Item(f"s{i}", Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)),
                 QUESTIONS[i % len(QUESTIONS)]) for i, (w, h) in enumerate(sizes)]


def reference(lm, image, question: str, with_image: bool) -> tuple[float, float]:
    """One full forward of one prompt: (p_yes, yes_no_mass) from the last position."""
    text = prompts.chat_text(lm.processor, question, with_image)
    enc = prompts.encode(lm.processor, [text], [[image]] if with_image else None)
    bos = lm.tokenizer.bos_token_id
    if bos is not None:  # exactly one BOS, whether the template or the tokenizer writes it
        assert enc["input_ids"][0].tolist().count(bos) <= 1
    with torch.no_grad():
        logits = lm.model(**enc).logits[:, -1, :]
    p_yes, mass = yes_probability(logits, lm.yes_ids, lm.no_ids)
    return p_yes.item(), mass.item()


def worst_difference(lm, items, rows, removal: str) -> float:
    by_id = {it.sample_id: it for it in items}
    worst = 0.0
    for row in rows:
        item = by_id[row["sample_id"]]
        if row["condition"] == "image":
            image, with_image = item.image, True
        else:
            image, with_image = blank_image(), removal == "blank"
        p_yes, mass = reference(lm, image, row["prompt"], with_image)
        worst = max(worst, abs(p_yes - row["p_yes"]), abs(mass - row["yes_no_mass"]))
    return worst


def check_rows(items, rows):
    expected = sum(len(it.prompts) + 1 for it in items)
    assert len(rows) == expected
    spread = [r["p_yes"] for r in rows]
    assert max(spread) - min(spread) > 0.05, "p_yes is flat: the comparison would prove little"


# -- loading ---------------------------------------------------------------------------------

MODEL_CLASSES = {
    "gemma3": ("Gemma3ForConditionalGeneration", "Gemma3Processor"),
    "llava": ("LlavaForConditionalGeneration", "LlavaProcessor"),
    "idefics3": ("Idefics3ForConditionalGeneration", "Idefics3Processor"),
}


@pytest.mark.parametrize("family", SAVED)
def test_real_loader_reads_the_family(checkpoints, family):
    path = checkpoints(family)
    assert list(path.glob("*.safetensors")) and not list(path.glob("*.bin"))
    lm = load(path)
    model_class, processor_class = MODEL_CLASSES[family]
    assert type(lm.model).__name__ == model_class
    assert type(lm.processor).__name__ == processor_class
    assert lm.processor.chat_template == registry.FAMILIES[family].chat_template
    assert len(lm.yes_ids) >= 2 and len(lm.no_ids) >= 2


def test_gemma3_template_renders_like_medgemma():
    tokenizer = registry.train_tokenizer("gemma3")
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": " Is there X? "}]}],
        add_generation_prompt=True, tokenize=False)
    assert text == "<bos><start_of_turn>user\n<start_of_image>Is there X?<end_of_turn>\n<start_of_turn>model\n"


# -- engine against one-prompt-at-a-time forwards --------------------------------------------

SAME_SIZE = ((72, 72),) * 4
MIXED_SIZES = ((72, 72), (200, 64), (64, 160), (90, 70))


@pytest.mark.parametrize("removal", ["none", "blank"])
@pytest.mark.parametrize("family", SAVED)
def test_engine_equals_one_prompt_forwards(checkpoints, family, removal):
    lm = load(checkpoints(family))
    items = make_items(MIXED_SIZES)
    engine = Engine(lm, image_removal=removal, batch_size=3, max_rows=5)
    rows = engine.score(paper_items(items))
    check_rows(items, rows)
    assert worst_difference(lm, items, rows, removal) <= TOL
    if family == "idefics3":  # image splitting: the number of image tokens follows the size
        assert engine.mode == "batched"
        assert "depends on the image size" in engine.fallback_reason
    else:
        assert engine.mode == "prefix_sharing", engine.fallback_reason


def test_idefics3_shares_the_prefix_when_tiles_are_fixed(checkpoints):
    """Without image splitting Idefics3 has a fixed token count, and sharing is exact."""
    model, processor = tiny_families.build("idefics3", seed=5, image_splitting=False)
    lm = models.LoadedModel(scaled_head(model), processor,
                            models.answer_token_ids(processor.tokenizer, models.YES_SPELLINGS),
                            models.answer_token_ids(processor.tokenizer, models.NO_SPELLINGS),
                            torch.device("cpu"), torch.float32)
    items = make_items(MIXED_SIZES)
    engine = Engine(lm, batch_size=4)
    rows = engine.score(paper_items(items))
    assert engine.mode == "prefix_sharing", engine.fallback_reason
    assert worst_difference(lm, items, rows, "none") <= TOL


@pytest.fixture(scope="module")
def qwen():
    model, processor = tiny_families.build("qwen2_5_vl", seed=7)
    return models.LoadedModel(scaled_head(model), processor,
                              models.answer_token_ids(processor.tokenizer, models.YES_SPELLINGS),
                              models.answer_token_ids(processor.tokenizer, models.NO_SPELLINGS),
                              torch.device("cpu"), torch.float32)


@pytest.mark.parametrize("removal", ["none", "blank"])
def test_qwen2_5_vl_falls_back_from_sharing_and_is_exact(qwen, removal):
    assert type(qwen.model).__name__ == "Qwen2_5_VLForConditionalGeneration"
    assert type(qwen.processor).__name__ == "Qwen2_5_VLProcessor"
    items = make_items(SAME_SIZE[:3])
    engine = Engine(qwen, image_removal=removal, batch_size=3)
    rows = engine.score(paper_items(items))
    assert engine.mode == "batched"
    assert "mRoPE" in engine.fallback_reason
    check_rows(items, rows)
    assert worst_difference(qwen, items, rows, removal) <= TOL


def test_qwen2_5_vl_forced_sharing_would_be_wrong(qwen):
    """Why the fallback exists: 1D position ids after the image are wrong under mRoPE."""
    items = make_items(SAME_SIZE[:3])
    engine = Engine(qwen, batch_size=3)
    engine._checked = True  # skip the check: share the prefix anyway
    rows = engine.score_image(items)
    assert engine.mode == "prefix_sharing"
    assert worst_difference(qwen, items, rows, "none") > 1e-4


# -- the whole evaluate notebook ---------------------------------------------------------------

def run_notebook(tmp_path, model_dir, data_root, removal, config="tiny", questions=None, limit=8):
    """papermill evaluate.ipynb as `make runs` does; returns (summary, predictions)."""
    out = tmp_path / f"run-{removal}"
    params = {
        "config": config, "model": str(model_dir), "dataset": "mimic-cxr",
        "data_root": str(data_root), "findings": ["cardiomegaly", "pleural effusion"],
        "image_removal": removal, "limit": limit, "batch_size": 3, "max_paraphrases": 2,
        "dtype": "float32", "device": "cpu", "output_dir": str(out), "questions": questions,
    }
    params_file = tmp_path / f"params-{removal}.yaml"
    params_file.write_text(yaml.safe_dump(params))
    cmd = [sys.executable, "-m", "papermill", "--log-level", "WARNING", "notebooks/evaluate.ipynb",
           str(tmp_path / f"evaluate-{removal}.ipynb"), "-f", str(params_file),
           "-p", "params_file", str(params_file)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "MPLBACKEND": "Agg"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    summary = json.loads((out / "summary.json").read_text())
    return summary, pd.read_parquet(out / "predictions.parquet"), out


def check_run(summary, predictions, removal, n_samples):
    assert summary["n_samples"] == n_samples
    assert summary["params"]["image_removal"] == removal
    conditions = predictions.groupby("condition").size().to_dict()
    assert conditions["text_only"] == n_samples
    assert conditions["image"] > n_samples  # the original and its paraphrases
    assert predictions["p_yes"].between(0, 1).all()
    assert sum(summary["quadrant_counts"].values()) == n_samples


# Each family runs through the notebook once; both removal modes are covered across families
# here and for every family by test_engine_equals_one_prompt_forwards (the suite's time budget).
@pytest.mark.parametrize("family, removal", [("llava", "none"), ("gemma3", "blank"), ("idefics3", "none")])
def test_evaluate_notebook_runs_the_family(checkpoints, mimic_root, tmp_path, family, removal):
    summary, predictions, _ = run_notebook(tmp_path, checkpoints(family), mimic_root, removal,
                                           config=f"tiny-{family}")
    check_run(summary, predictions, removal, n_samples=8)
    expected_mode = "batched" if family == "idefics3" else "prefix_sharing"
    assert summary["engine"]["mode"] == expected_mode


@pytest.mark.skipif(not registry.torchvision_available(),
                    reason="Qwen2_5_VLProcessor needs torchvision (transformers 5.24)")
@pytest.mark.parametrize("removal", ["none", "blank"])
def test_evaluate_notebook_runs_qwen2_5_vl(checkpoints, mimic_root, tmp_path, removal):
    summary, predictions, _ = run_notebook(tmp_path, checkpoints("qwen2_5_vl"), mimic_root, removal)
    check_run(summary, predictions, removal, n_samples=8)
    assert summary["engine"]["mode"] == "batched"


# -- per-image question files (PSF-Med, lib.protocol.psf_med.import_psf_med) -------------------------

def psf_med_file(tmp_path, mimic_root) -> tuple[Path, list[str]]:
    """A PSF-Med style CSV converted by import_psf_med; returns (JSONL path, image ids)."""
    ids = [s.image_id for s in data.iter_samples("mimic-cxr", mimic_root, findings=("cardiomegaly",))]
    rows = [
        (ids[2], "cardiomegaly", "Is there cardiomegaly?", "['Is the heart enlarged?', 'Does this chest X-ray show cardiomegaly?']", "Yes"),
        (ids[0], "", "Is there a pneumothorax?", "['Is there air in the pleural space?']", "No"),
        (ids[0], "", "What is the heart size?", "[]", "No"),  # not a yes/no question: dropped
        (ids[2], "", "Is there a lung nodule?", "[]", "no"),
        ("0000-not-in-the-dataset", "", "Is there a pneumothorax?", "['Is air present outside the lung?']", "yes"),
    ]
    csv = tmp_path / "psf_med.csv"
    pd.DataFrame(rows, columns=["dicom_id", "finding", "question", "paraphrases", "answer"]).to_csv(csv, index=False)
    out = tmp_path / "psf_med_mimic.jsonl"
    counts = psf_med.import_psf_med(csv, out)
    assert counts["kept"] == 4 and counts["dropped_not_yes_no"] == 1
    return out, ids


def test_per_image_question_file_is_joined_with_the_images(checkpoints, mimic_root, tmp_path):
    path, ids = psf_med_file(tmp_path, mimic_root)
    params = config.validate({
        "config": "tiny-llava", "model": str(checkpoints("llava")), "dataset": "mimic-cxr",
        "data_root": str(mimic_root), "questions": str(path), "max_paraphrases": 1,
        "batch_size": 2, "dtype": "float32", "device": "cpu", "output_dir": str(tmp_path / "run")})
    result = run.evaluate(params, lm=load(checkpoints("llava")))
    samples = result.samples.set_index("sample_id").sort_index()
    # reader order (ids[0] before ids[2]); each image's rows in file order
    assert sorted(samples.index) == sorted([f"{ids[0]}/q0", f"{ids[2]}/q0", f"{ids[2]}/q1"])
    assert samples.loc[f"{ids[2]}/q0", "label"] == "yes" and samples.loc[f"{ids[0]}/q0", "label"] == "no"
    assert samples.loc[f"{ids[2]}/q0", "finding"] == "cardiomegaly"
    assert pd.isna(samples.loc[f"{ids[0]}/q0", "finding"])
    image_rows = result.predictions[result.predictions.condition == "image"]
    prompts_of = image_rows.groupby("sample_id").prompt.apply(list).to_dict()
    assert prompts_of[f"{ids[2]}/q0"] == ["Is there cardiomegaly?", "Is the heart enlarged?"]  # max_paraphrases 1
    assert prompts_of[f"{ids[2]}/q1"] == ["Is there a lung nodule?"]
    text_only = result.predictions[result.predictions.condition == "text_only"].set_index("sample_id").prompt
    assert text_only[f"{ids[0]}/q0"] == "Is there a pneumothorax?"
    assert result.summary["n_skipped"] == {"question_image_not_found": 1}


def test_per_image_question_file_runs_in_the_notebook(checkpoints, mimic_root, tmp_path):
    path, _ = psf_med_file(tmp_path, mimic_root)
    summary, predictions, _ = run_notebook(tmp_path, checkpoints("gemma3"), mimic_root, "none",
                                           questions=str(path), limit=None)
    assert summary["n_samples"] == 3
    assert predictions[predictions.condition == "text_only"].shape[0] == 3
