"""The benchmark package: the FLOP floor's arithmetic, and the GPU bench run end to end at tiny
shapes on the CPU (the same code `make bench GPU=1` runs at the real shapes)."""
import inspect
import json
from pathlib import Path

import pytest

from lib.bench import floor, gpu, ways
from lib.front import results

ROOT = Path(__file__).resolve().parents[1]

ONES = dict(h=1, q=1, kv=1, inter=1, layers=1, vocab=1)


def test_text_flops_counts_projections_attention_and_lm_head():
    # per token 2 * (q + 2 kv + o + 3 mlp) = 14; one (q, k) pair: 2 * 2 = 4; one lm_head row: 2
    assert floor.text_flops(ONES, new_tokens=1, past=0) == 20
    # 2 new tokens after 3 cached: 28 + 2 * 2 * (2 * 3 + 3) = 64, no row scored
    assert floor.text_flops(ONES, new_tokens=2, past=3, rows_scored=0) == 64


def test_agreement_reads_answers_of_every_way():
    a = {("s0", 0, "image"): {"answer": "yes", "text": "Yes."}, ("s0", 1, "image"): {"answer": None, "text": "?"}}
    b = {("s0", 0, "image"): {"p_yes": 0.7}, ("s0", 1, "image"): {"p_yes": 0.2}, ("s1", 0, "image"): {"p_yes": 0.9}}
    assert gpu.agreement(a, b) == 0.5
    assert gpu.agreement(a, {}) is None
    assert ways.parse_answer("  No.") == "no" and ways.parse_answer("maybe") is None


@pytest.mark.filterwarnings("ignore")
def test_tiny_gpu_bench_runs_on_cpu(tmp_path):
    out = tmp_path / "gpu_bench_tiny.json"
    report = gpu.main(["--tiny", "--models", "llava", "--no-nf4", "--batch", "2", "--prompts", "2",
                       "--naive-samples", "1", "--bs1-samples", "2", "--repeats", "1",
                       "--max-new-tokens", "2", "--device", "cpu", "--out", str(out)])
    assert json.loads(out.read_text())["models"].keys() == {"llava"}
    model = report["models"]["llava"]
    assert set(model["ms_per_sample"]) == {"naive", "forward_bs1", "batched", "engine", "floor"}
    assert model["n_samples"] == 2 and model["images"] == 2
    # float32 on the CPU: the engine and one forward per prompt give the same p_yes
    assert model["max_abs_p_yes_diff_engine_vs_forward_bs1"] < 1e-4
    assert model["agreement_vs_forward_bs1"]["engine"] == 1.0
    assert model["peak_memory_gib"] == {"engine_bf16": None}


def test_committed_gpu_results_are_where_make_results_reads_them():
    default = inspect.signature(results.write).parameters["gpu_results"].default
    text = results.gpu_section(ROOT / default)
    assert "`gpu_bench_h200_2026-11-26.json`: NVIDIA H200" in text
    assert "| llava-1.5-7b-shape | 1079.5 |" in text and "| medgemma-4b-shape |" in text
