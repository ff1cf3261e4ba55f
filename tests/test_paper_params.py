"""params/paper: the study's ten pairs, and the check `make paper` runs before anything else."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lib.protocol import config

ROOT = Path(__file__).resolve().parents[1]
PAPER = ROOT / "params" / "paper"
CONFIGS = {
    "medgemma-base": ("google/medgemma-4b-it", None),
    "medgemma-lora-targeted": ("google/medgemma-4b-it", "saillab/medgemma-4b-targeted-lora-mimic-mt-12k"),
    "medgemma-lora-full": ("google/medgemma-4b-it", "saillab/medgemma-4b-full-lora-mimic-mt-12k"),
    "llava-rad-base": ("${LLAVA_RAD_HF}", None),
    "llava-rad-lora": ("${LLAVA_RAD_HF}", "saillab/llava-rad-targeted-lora-mimic-mt-12k"),
}
DATASETS = {"mimic-cxr": "MIMIC_CXR_JPG", "padchest": "PADCHEST"}
VARIABLES = ("MIMIC_CXR_JPG", "PADCHEST", "LLAVA_RAD_HF")


@pytest.fixture
def env(tmp_path, monkeypatch):
    """The three variables pointing at temporary directories."""
    values = {}
    for name in VARIABLES:
        (tmp_path / name).mkdir()
        values[name] = str(tmp_path / name)
        monkeypatch.setenv(name, values[name])
    return values


def test_the_ten_pairs_are_written_down():
    names = sorted(p.stem for p in PAPER.glob("*.yaml"))
    assert names == sorted(f"{c}__{d}" for c in CONFIGS for d in DATASETS)


@pytest.mark.parametrize("path", sorted(PAPER.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_paper_params_file_validates(path, env):
    params = config.load(path)
    name, dataset = path.stem.split("__")
    model, adapter = CONFIGS[name]
    assert params["config"] == name and params["dataset"] == dataset
    assert params["model"] == (env["LLAVA_RAD_HF"] if model.startswith("$") else model)
    assert params["adapter"] == adapter
    assert params["data_root"] == env[DATASETS[dataset]]
    assert params["output_dir"] == f"outputs/paper/runs/{path.stem}"
    # safe defaults: no pickle weights, no remote code, no patient image in the notebook
    assert not params["allow_unsafe_weights"] and not params["trust_remote_code"]
    assert not params["show_images"]
    assert params["split"] == "test" and params["questions"] is None


@pytest.mark.parametrize("missing", VARIABLES)
def test_a_missing_variable_is_named_with_the_file(env, monkeypatch, missing):
    monkeypatch.delenv(missing)
    failing = [p for p in sorted(PAPER.glob("*.yaml")) if "${" + missing + "}" in p.read_text()]
    assert failing
    for path in failing:
        with pytest.raises(config.ParamsError) as err:
            config.load(path)
        assert missing in str(err.value) and str(path) in str(err.value)


def fake_hub_cache(root: Path, repos: dict) -> Path:
    """A Hugging Face hub cache holding the given files of each repo (one snapshot each)."""
    for repo, files in repos.items():
        folder = root / ("models--" + repo.replace("/", "--"))
        snapshot = folder / "snapshots" / ("0" * 40)
        snapshot.mkdir(parents=True)
        (folder / "refs").mkdir()
        (folder / "refs" / "main").write_text("0" * 40)
        for name, text in files.items():
            (snapshot / name).write_text(text)
    return root


def run_check(env_vars: dict) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k not in VARIABLES}
    return subprocess.run([sys.executable, "-m", "lib.families.registry", "check", "params/paper"], cwd=ROOT,
                          env={**clean, "HF_HUB_OFFLINE": "1", **env_vars},
                          capture_output=True, text=True, timeout=300)


def test_check_names_missing_variables_and_models(tmp_path):
    empty_cache = tmp_path / "cache"
    empty_cache.mkdir()
    result = run_check({"HF_HUB_CACHE": str(empty_cache)})
    assert result.returncode == 1
    for name in VARIABLES:
        assert f"environment variable {name}" in result.stderr
    (tmp_path / "mimic").mkdir()
    (tmp_path / "padchest").mkdir()
    result = run_check({"HF_HUB_CACHE": str(empty_cache), "MIMIC_CXR_JPG": str(tmp_path / "mimic"),
                        "PADCHEST": str(tmp_path / "padchest"), "LLAVA_RAD_HF": str(tmp_path / "nowhere")})
    assert result.returncode == 1
    assert "model directory not found: " + str(tmp_path / "nowhere") in result.stderr
    assert "model google/medgemma-4b-it is not in the local Hugging Face cache" in result.stderr
    assert "adapter saillab/medgemma-4b-full-lora-mimic-mt-12k is not in the local" in result.stderr


def test_check_passes_when_everything_is_there(tmp_path):
    cache = fake_hub_cache(tmp_path / "cache", {
        "google/medgemma-4b-it": {"config.json": "{}"},
        "saillab/medgemma-4b-targeted-lora-mimic-mt-12k": {"adapter_config.json": "{}"},
        "saillab/medgemma-4b-full-lora-mimic-mt-12k": {"adapter_config.json": "{}"},
        "saillab/llava-rad-targeted-lora-mimic-mt-12k": {"adapter_config.json": "{}"},
    })
    llava_rad = tmp_path / "llava-rad-hf"
    llava_rad.mkdir()
    (llava_rad / "config.json").write_text("{}")
    (llava_rad / "conversion.json").write_text(json.dumps({"source": "test"}))
    dirs = {"MIMIC_CXR_JPG": tmp_path / "mimic", "PADCHEST": tmp_path / "padchest"}
    for d in dirs.values():
        d.mkdir()
    result = run_check({"HF_HUB_CACHE": str(cache), "LLAVA_RAD_HF": str(llava_rad),
                        **{k: str(v) for k, v in dirs.items()}})
    assert result.returncode == 0, result.stderr
    assert "10 params file(s) ready" in result.stdout


def test_check_flags_an_original_layout_adapter_over_converted_llava_rad(tmp_path):
    from safetensors.torch import save_file
    import torch

    adapter = {"adapter_config.json": "{}"}
    cache = fake_hub_cache(tmp_path / "cache", {
        "google/medgemma-4b-it": {"config.json": "{}"},
        "saillab/medgemma-4b-targeted-lora-mimic-mt-12k": adapter,
        "saillab/medgemma-4b-full-lora-mimic-mt-12k": adapter,
        "saillab/llava-rad-targeted-lora-mimic-mt-12k": adapter,
    })
    snapshot = cache / "models--saillab--llava-rad-targeted-lora-mimic-mt-12k" / "snapshots" / ("0" * 40)
    save_file({"base_model.model.model.layers.14.self_attn.q_proj.lora_A.weight": torch.zeros(2, 4)},
              str(snapshot / "adapter_model.safetensors"))
    llava_rad = tmp_path / "llava-rad-hf"
    llava_rad.mkdir()
    (llava_rad / "config.json").write_text("{}")
    (llava_rad / "conversion.json").write_text("{}")
    for d in ("mimic", "padchest"):
        (tmp_path / d).mkdir()
    result = run_check({"HF_HUB_CACHE": str(cache), "LLAVA_RAD_HF": str(llava_rad),
                        "MIMIC_CXR_JPG": str(tmp_path / "mimic"), "PADCHEST": str(tmp_path / "padchest")})
    assert result.returncode == 1
    assert "original LLaVA layout" in result.stderr and "lib.families.llava_rad adapter" in result.stderr


def test_make_paper_checks_before_running_anything():
    """`make paper` runs the check first; the runs and the analysis go to outputs/paper."""
    dry = subprocess.run(["make", "-n", "paper"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert dry.returncode == 0, dry.stderr
    lines = [l for l in dry.stdout.splitlines() if "lib.families.registry check" in l or "papermill" in l]
    assert "lib.families.registry check params/paper" in lines[0]
    runs = [l for l in lines if "evaluate.ipynb" in l]
    assert len(runs) == 10 and all("outputs/paper/runs/" in l for l in runs)
    assert "analysis.ipynb" in lines[-1] and "-p runs_dir outputs/paper/runs" in lines[-1]
