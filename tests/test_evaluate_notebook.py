"""The evaluate notebook end to end on a tiny profile (papermill), its nbval regression, bad inputs."""
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pandas as pd
import papermill as pm
import pytest
import yaml

from lib.protocol import config, records, taxonomy

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "evaluate.ipynb"


def write_params(path, **values):
    path.write_text(yaml.safe_dump(values))
    return path


def run_notebook(params_file, out_nb):
    params = yaml.safe_load(Path(params_file).read_text())
    pm.execute_notebook(str(NOTEBOOK), str(out_nb), parameters={**params, "params_file": str(params_file)},
                        cwd=str(ROOT), progress_bar=False)


@pytest.fixture(scope="module")
def executed(tiny_world, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("evaluate")
    params_file = write_params(
        tmp / "tiny__mimic-cxr.yaml", config="tiny-llava", model=str(tiny_world["models"]["llava"]),
        dataset="mimic-cxr", data_root=str(tiny_world["data"]["mimic-cxr"]), split="train", limit=16,
        batch_size=4, show_images=True, output_dir=str(tmp / "run"))
    out_nb = tmp / "executed.ipynb"
    run_notebook(params_file, out_nb)
    return {"dir": tmp / "run", "notebook": out_nb, "params_file": params_file}


def test_outputs_have_the_documented_columns(executed):
    run = executed["dir"]
    predictions = pd.read_parquet(run / "predictions.parquet")
    samples = pd.read_parquet(run / "samples.parquet")
    summary = json.loads((run / "summary.json").read_text())
    assert {"sample_id", "prompt_id", "condition", "prompt", "p_yes", "pred", "entropy"} <= set(predictions)
    assert samples.columns[2] == "patient_id"      # beside the image: the local tests' cluster
    assert list(samples.columns.drop("patient_id")[:11]) == list(taxonomy.SAMPLE_TABLE_COLUMNS[:11])
    assert len(samples) == summary["n_samples"] == 16
    # one text-only row per sample, and one image row per prompt of every sample
    assert (predictions.condition == "text_only").sum() == 16
    assert (predictions[predictions.condition == "image"].groupby("sample_id").size() == samples.set_index("sample_id").n_prompts).all()
    per_sample = predictions[predictions.sample_id.notna()]
    assert not per_sample.duplicated(["sample_id", "prompt_id", "condition"]).any()
    # per-run rows: one per (condition, image, question)
    per_run = predictions[predictions.sample_id.isna()]
    assert set(per_run.condition) <= {"reference", "blank", "noise", "followup"}
    assert not per_run.duplicated(records.PER_RUN_KEY).any()
    for key in ("config", "dataset", "n_samples", "flip_rate", "pairwise_flip_rate", "quadrant_fractions",
                "accuracy_by_quadrant", "entropy_by_quadrant", "n_skipped", "params", "seed", "packages",
                "git_commit"):
        assert key in summary, key
    assert abs(sum(summary["quadrant_fractions"].values()) - 1) < 1e-9
    assert summary["params"]["limit"] == 16
    assert summary["engine"]["mode"] == "prefix_sharing"


def test_nbval_regression(executed):
    """Re-executing the executed notebook reproduces its checked tables (records are reused)."""
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--nbval-lax",
         str(executed["notebook"])], capture_output=True, text=True, cwd=executed["dir"].parent)
    assert result.returncode == 0, result.stdout[-3000:]
    assert " passed" in result.stdout


def test_unknown_key_stops_the_notebook_naming_file_and_key(tiny_world, tmp_path):
    params_file = write_params(
        tmp_path / "bad.yaml", config="x", model=str(tiny_world["models"]["llava"]), dataset="mimic-cxr",
        data_root=str(tiny_world["data"]["mimic-cxr"]), batchsize=4)
    with pytest.raises(pm.PapermillExecutionError) as err:
        run_notebook(params_file, tmp_path / "out.ipynb")
    assert "bad.yaml" in str(err.value) and "batchsize" in str(err.value)


@pytest.mark.parametrize("change, words", [
    ({"dataset": "chexpert"}, ["dataset", "chexpert"]),
    ({"data_root": "/nonexistent/mimic"}, ["data_root", "/nonexistent/mimic"]),
    ({"quantization": "8bit"}, ["quantization"]),
    ({"model": None}, ["model", "required"]),
])
def test_bad_values_name_file_and_key(tiny_world, tmp_path, change, words):
    values = {"config": "x", "model": "m", "dataset": "mimic-cxr", "data_root": str(tiny_world["data"]["mimic-cxr"])}
    path = write_params(tmp_path / "pair.yaml", **{**values, **change})
    with pytest.raises(config.ParamsError) as err:
        config.load(path)
    assert "pair.yaml" in str(err.value)
    for word in words:
        assert word in str(err.value)


def test_missing_env_var_is_named(tmp_path, monkeypatch):
    monkeypatch.delenv("MIMIC_CXR_JPG", raising=False)
    path = write_params(tmp_path / "real.yaml", config="x", model="m", dataset="mimic-cxr",
                        data_root="${MIMIC_CXR_JPG}")
    with pytest.raises(config.ParamsError, match="MIMIC_CXR_JPG"):
        config.load(path)


def test_missing_model_fails_at_once(tiny_world, tmp_path):
    from lib.protocol import run

    params = config.validate({"config": "x", "model": str(tmp_path / "no-model"), "dataset": "mimic-cxr",
                              "data_root": str(tiny_world["data"]["mimic-cxr"]), "output_dir": str(tmp_path / "o")})
    with pytest.raises(FileNotFoundError, match="no-model"):
        run.evaluate(params)


def test_bad_images_and_labels_are_skipped_and_counted(tiny_world, tmp_path):
    """A missing image, a corrupt image and an uncertain label leave their samples out, counted."""
    import shutil

    from lib.protocol import data, run

    root = tmp_path / "mimic"
    shutil.copytree(tiny_world["data"]["mimic-cxr"], root)
    samples = list(data.iter_samples("mimic-cxr", root, split="train"))
    images = sorted({s.image_path for s in samples})
    Path(images[0]).unlink()
    Path(images[1]).write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    params = config.validate({"config": "x", "model": str(tiny_world["models"]["llava"]), "dataset": "mimic-cxr",
                              "data_root": str(root), "split": "train", "batch_size": 8,
                              "output_dir": str(tmp_path / "run")})
    result = run.evaluate(params)
    skipped = result.summary["n_skipped"]
    assert skipped["image_missing"] == 4          # four findings of the deleted image
    assert skipped["image_unreadable"] == 4       # four findings of the corrupt image
    reader_counts = Counter()
    list(data.iter_samples("mimic-cxr", root, split="train", skipped=reader_counts))
    assert skipped.get("label_uncertain", 0) == reader_counts["label_uncertain"]
    assert result.summary["n_samples"] == len(samples) - 8
