"""Bad input cannot hurt: each bad input goes through the evaluate notebook (papermill), and
either stops in the validation cell (before any model loads) with a one-line error naming the
file or `-p`, the key and the value, or runs with the skip counted by reason.

Values passed as `-p` are given as the strings papermill's command line makes of them.
"""
import json
import shutil
from pathlib import Path

import pandas as pd
import papermill as pm
import pytest
import torch
import yaml
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForImageTextToText

from lib.protocol import config, data

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "evaluate.ipynb"
VALIDATION_CALL = "lib.front.session.params("
BOOLEAN_KEYS = [k for k, c in config.SCHEMA.items() if c.kind == "bool"]


def run_notebook(tmp_path, file_values: dict, p_values: dict | None = None):
    """papermill -f <file> [-p key value ...]: returns the executed notebook's path."""
    params_file = tmp_path / "pair.yaml"
    params_file.write_text(yaml.safe_dump(file_values))
    out = tmp_path / "out.ipynb"
    pm.execute_notebook(str(NOTEBOOK), str(out), cwd=str(ROOT), progress_bar=False,
                        parameters={**file_values, **(p_values or {}), "params_file": str(params_file)})
    return out


def stops_before_model(tmp_path, file_values, p_values=None) -> str:
    """The one-line message of the error the validation cell raised."""
    with pytest.raises(pm.PapermillExecutionError) as caught:
        run_notebook(tmp_path, file_values, p_values)
    err = caught.value
    assert VALIDATION_CALL in err.source, f"failed in another cell: {err.source[:200]}"
    assert "\n" not in err.evalue.strip(), err.evalue
    assert len(err.traceback) == 1, err.traceback  # one line, no traceback wall
    return err.evalue


def copy_model(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def lora(model_dir: Path, out: Path, safe: bool) -> Path:
    net = AutoModelForImageTextToText.from_pretrained(model_dir)
    wrapped = get_peft_model(net, LoraConfig(r=2, target_modules=["q_proj"]))
    wrapped.save_pretrained(out, safe_serialization=safe)
    cfg = json.loads((out / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = str(model_dir)
    (out / "adapter_config.json").write_text(json.dumps(cfg))
    return out


@pytest.fixture(scope="module")
def bad(tiny_world, tmp_path_factory):
    """The bad inputs: each a directory or file next to a good pair."""
    tmp = tmp_path_factory.mktemp("bad")
    llava = Path(tiny_world["models"]["llava"])
    pickle_model = copy_model(llava, tmp / "pickle-model")
    weights = pickle_model / "model.safetensors"
    from safetensors.torch import load_file
    torch.save(load_file(weights), pickle_model / "pytorch_model.bin")
    weights.unlink()
    remote = copy_model(llava, tmp / "remote-code-model")
    cfg = json.loads((remote / "config.json").read_text())
    cfg["auto_map"] = {"AutoConfig": "custom.Config", "AutoModelForImageTextToText": "custom.Model"}
    (remote / "config.json").write_text(json.dumps(cfg))
    marker = tmp / "remote-code-ran"
    (remote / "custom.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    empty_model = tmp / "empty-model"
    empty_model.mkdir()

    padchest = Path(tiny_world["data"]["padchest"])
    no_projection = tmp / "padchest-no-projection"
    shutil.copytree(padchest, no_projection)
    csv = next(no_projection.glob(f"{data.PADCHEST_CSV}*"))
    pd.read_csv(csv).drop(columns="Projection").to_csv(csv, index=False)
    not_synthetic = tmp / "mimic-not-synthetic"
    shutil.copytree(tiny_world["data"]["mimic-cxr"], not_synthetic)

    latin1 = tmp / "latin1.csv"
    latin1.write_bytes("finding,prompt_id,prompt\nnodule,0,Is there a nodule in the poumon \xe9?\n"
                       .encode("latin-1"))
    long_question = tmp / "long.csv"
    long_question.write_text("finding,prompt_id,prompt\n" + "".join(
        f"{f},0,Is there {f} {'and nothing else ' * 300}?\n" for f in data.FINDINGS))
    return {
        "pickle_model": pickle_model, "remote": remote, "marker": marker, "empty_model": empty_model,
        "pickle_adapter": lora(llava, tmp / "pickle-adapter", safe=False),
        "gemma_adapter": lora(Path(tiny_world["models"]["gemma3"]), tmp / "gemma-adapter", safe=True),
        "no_projection": no_projection, "not_synthetic": not_synthetic,
        "latin1": latin1, "long_question": long_question,
    }


@pytest.fixture
def good(tiny_world, tmp_path):
    return {"config": "tiny-llava", "model": str(tiny_world["models"]["llava"]), "dataset": "mimic-cxr",
            "data_root": str(tiny_world["data"]["mimic-cxr"]), "split": "train", "limit": 4,
            "batch_size": 4, "output_dir": str(tmp_path / "run")}


# (case, file changes, -p values, words the message must contain); values may name a `bad` entry.
STOPS = [
    ("-p boolean not true/false", {}, {"trust_remote_code": "maybe"}, ["-p", "trust_remote_code", "maybe", "true or false"]),
    ("-p misspelt key", {}, {"batchsize": 4}, ["-p", "batchsize", "unknown key"]),
    ("file unknown key", {"batchsize": 4}, {}, ["pair.yaml", "batchsize"]),
    ("seed 1.5", {"seed": 1.5}, {}, ["pair.yaml", "seed", "1.5", "integer"]),
    ("-p seed 1.5", {}, {"seed": 1.5}, ["-p", "seed", "1.5"]),
    ("limit 0", {"limit": 0}, {}, ["limit", "0", ">= 1"]),
    ("limit true", {"limit": True}, {}, ["limit", "True", "integer"]),
    ("findings as a string", {"findings": "cardiomegaly"}, {}, ["findings", "cardiomegaly", "list"]),
    ("unknown finding", {"findings": ["cardiomegally"]}, {}, ["findings", "cardiomegally"]),
    ("label_policy typo", {"label_policy": {"uncertian": "skip"}}, {}, ["label_policy", "uncertian"]),
    ("label_policy value", {"label_policy": {"uncertain": "maybe"}}, {}, ["label_policy", "uncertain", "maybe"]),
    ("workers as a string", {"workers": "2"}, {}, ["workers", "'2'", "integer"]),
    ("unknown dataset", {"dataset": "chexpert"}, {}, ["dataset", "chexpert", "mimic-cxr"]),
    ("PadChest without Projection", {"dataset": "padchest", "data_root": "no_projection", "split": "test"}, {},
     ["data_root", "PADCHEST", "Projection"]),
    ("non-UTF-8 question file", {"questions": "latin1"}, {}, ["questions", "latin1.csv"]),
    ("question longer than the context", {"questions": "long_question"}, {}, ["questions", "tokens", "context"]),
    ("empty model directory", {"model": "empty_model"}, {}, ["model", "empty-model", "config.json"]),
    ("pickle model, -p allow_unsafe_weights false", {"model": "pickle_model"}, {"allow_unsafe_weights": "false"},
     ["model", "pytorch_model.bin", "allow_unsafe_weights"]),
    ("pickle adapter", {"adapter": "pickle_adapter"}, {}, ["adapter", "adapter_model.bin", "allow_unsafe_weights"]),
    ("adapter of another base model", {"adapter": "gemma_adapter"}, {}, ["adapter", "gemma3", "llava"]),
    ("show_images on non-synthetic data", {"data_root": "not_synthetic", "show_images": True}, {},
     ["show_images", "allow_patient_images"]),
    ("missing data root", {"data_root": "/nonexistent/mimic"}, {}, ["data_root", "/nonexistent/mimic"]),
]


@pytest.mark.parametrize("case, changes, p_values, words", STOPS, ids=[c[0] for c in STOPS])
def test_bad_input_stops_before_the_model_loads(bad, good, tmp_path, case, changes, p_values, words):
    resolved = {k: str(bad[v]) if isinstance(v, str) and v in bad else v for k, v in changes.items()}
    message = stops_before_model(tmp_path, {**good, **resolved}, p_values)
    for word in words:
        assert word in message, (case, message)


def test_p_string_booleans_mean_what_they_say(bad, good, tmp_path):
    """Every boolean as the string papermill passes for `-p key false`; "false" runs no model code."""
    p_values = {key: "false" for key in BOOLEAN_KEYS}
    p_values["prefix_sharing"] = "true"
    out = run_notebook(tmp_path, {**good, "model": str(bad["remote"])}, p_values)
    assert not bad["marker"].exists(), "code from the model folder ran"
    summary = json.loads((Path(good["output_dir"]) / "summary.json").read_text())
    assert {k: summary["params"][k] for k in BOOLEAN_KEYS} == {k: k == "prefix_sharing" for k in BOOLEAN_KEYS}
    assert summary["trust_remote_code"] is False
    outputs = [o for cell in json.loads(out.read_text())["cells"] for o in cell.get("outputs", [])]
    assert not any("image/png" in o.get("data", {}) and "sample_grid" in json.dumps(o) for o in outputs)
    assert summary["n_samples"] == 4


@pytest.mark.parametrize("text, value", [("true", True), ("True", True), ("FALSE", False), ("false", False)])
def test_every_boolean_reads_its_string_forms(good, text, value):
    """The `-p` strings of each boolean key (cheap: config.resolve, as the notebook calls it)."""
    for key in BOOLEAN_KEYS:
        injected = {**good, key: text}
        if key == "show_images" and value:
            injected["allow_patient_images"] = "true"
        params = config.resolve({}, None, injected)
        assert params[key] is value, key


def test_show_images_false_by_default_and_in_the_default_params():
    assert config.DEFAULTS["show_images"] is False
    for path in sorted((ROOT / "params").glob("*.yaml")):
        raw = yaml.safe_load(path.read_text())
        assert raw.get("show_images") in (None, True, False)
        assert "allow_patient_images" not in raw, path  # the offline default needs no second flag
    for path in sorted((ROOT / "params" / "paper").glob("*.yaml")):
        assert not yaml.safe_load(path.read_text()).get("show_images"), path


def test_a_finding_is_known_from_the_label_map_in_force(good):
    """findings: the 13 built-in ones, or one label_policy.label_map adds (the readers read it)."""
    added = {**good, "findings": ["interstitial disease", "nodule"],
             "label_policy": {"label_map": {"Interstitial disease": {"mimic-cxr": "Lung Opacity"}}}}
    assert config.validate(added, "pair.yaml")["findings"] == ["interstitial disease", "nodule"]
    with pytest.raises(config.ParamsError) as err:
        config.validate({**good, "findings": ["interstitial disease"]}, "pair.yaml", {"findings": "-p"})
    message = str(err.value)
    assert message.startswith("-p: key 'findings': got ['interstitial disease'] ('interstitial disease' is not "
                              "known); allowed: a list of one of cardiomegaly, "), message
    assert message.endswith(", or a finding label_policy.label_map adds"), message


@pytest.mark.parametrize("key, value, allowed", [
    ("max_paraphrases", -1, "an integer >= 0 or null"),
    ("reference_pool", 0, "an integer >= 1 and <= 1000000000"),
    ("quantization", "8bit", "one of none, 4bit"),
    ("reliance_checks", ["reference", "flip"], "a list of one of reference, blank, noise"),
])
def test_the_schema_is_the_one_check_of_these_params(key, value, allowed):
    """questions.prompt_specs_for, references.choose_references, models.quantization_config and
    the run take these values as validated: config's one-line ParamsError is their only check."""
    with pytest.raises(config.ParamsError) as err:
        config.check_value(key, value, config.SCHEMA[key], "pair.yaml")
    assert str(err.value).startswith(f"pair.yaml: key {key!r}: got ") and str(err.value).endswith(
        f"; allowed: {allowed}"), str(err.value)


@pytest.mark.parametrize("file_values, injected, words", [
    ({"epochz": 3}, None, ["lora.yaml", "unknown key", "epochz"]),
    ({}, {"rank": "8"}, ["-p", "unknown key", "rank"]),
    ({"r": 1.5}, None, ["lora.yaml", "'r'", "1.5", "integer"]),
    ({"layers": "1,2"}, None, ["layers", "list of integers"]),
    ({}, {"dropout": "1.5"}, ["-p", "dropout", "1.5"]),
    ({"shortcut_findings": ["nodules"]}, None, ["shortcut_findings", "nodules"]),
])
def test_finetune_params_are_checked_by_the_same_code(tmp_path, file_values, injected, words):
    """The fine-tuning notebook's params go through config.Schema like the evaluate notebook's."""
    from lib.offline import finetune

    good = {"name": "x", "base_model": "m", "dataset": "mimic-cxr", "data_root": str(tmp_path)}
    path = tmp_path / "lora.yaml"
    path.write_text(yaml.safe_dump({**good, **file_values}))
    with pytest.raises(config.ParamsError) as err:
        finetune.resolve({}, path, None if injected is None else {**good, **file_values, **injected})
    for word in words:
        assert word in str(err.value), str(err.value)


def test_bad_images_and_labels_are_skipped_counted_and_listed(tiny_world, good, tmp_path):
    """A 1x1 image and a CheXpert value 2.0 through the notebook: skipped, counted by reason,
    listed in skipped.csv; the run goes on."""
    from PIL import Image

    root = tmp_path / "mimic-cxr"
    shutil.copytree(tiny_world["data"]["mimic-cxr"], root)
    samples = list(data.iter_samples("mimic-cxr", root, split="train"))
    tiny = samples[0]
    Image.new("L", (1, 1)).save(tiny.image_path)
    chexpert = next(root.glob(f"{data.MIMIC_CHEXPERT}*"))
    labels = pd.read_csv(chexpert)
    study = Path(samples[-1].image_path).parent.name.lstrip("s")  # a study of the split
    labels.loc[labels.study_id.astype(str) == study, "Cardiomegaly"] = 2.0
    labels.to_csv(chexpert, index=False)
    run_notebook(tmp_path, {**good, "data_root": str(root), "limit": None, "bootstrap_resamples": 50})
    summary = json.loads((Path(good["output_dir"]) / "summary.json").read_text())
    assert summary["n_skipped"]["image_too_small"] == sum(s.image_path == tiny.image_path for s in samples)
    assert summary["n_skipped"]["label_invalid"] >= 1
    listed = pd.read_csv(Path(good["output_dir"]) / "skipped.csv")
    assert tiny.sample_id in set(listed.loc[listed.reason == "image_too_small", "item"])
    invalid = listed[listed.reason == "label_invalid"]
    assert invalid["item"].str.contains(data.MIMIC_CHEXPERT).all() and "2.0" in " ".join(invalid.detail.astype(str))
