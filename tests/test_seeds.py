"""`make seeds` (lib.offline.seeds): params rewritten per seed, and the spread gathered from outputs."""
import json
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest
import yaml

from lib.offline import seeds

REPO = Path(__file__).resolve().parents[1]


def test_rewrite_moves_every_default_path_and_sets_the_seed(tmp_path):
    pair = yaml.safe_load((REPO / "params" / "llava-lora-shortcut__padchest.yaml").read_text())
    out = seeds.rewrite(pair, tmp_path / "7" / "default", 7)
    assert out["seed"] == 7 and out["dataset"] == "padchest"
    for key in ("model", "adapter", "data_root", "twins", "prompt_split"):
        assert out[key].startswith(str(tmp_path / "7" / "default")), key
        assert out[key].endswith(pair[key][len("outputs/default"):])
    assert not any(isinstance(v, str) and v.startswith("outputs/default") for v in out.values())


def summary(flip, dangerous, blind, ignored, paper):
    return {"flip_rate": flip, "balanced_accuracy": 0.9, "quadrant_fractions": {"Dangerous": dangerous},
            "dangerous_breakdown": {"image-blind": blind},
            "ground_truth": {"ignored_rate": ignored, "paper_measure": {"precision": paper, "recall": 1.0},
                             "dangerous": {"precision": paper, "recall": 0.5},
                             "image_blind": {"truth": 0.25, "covered": True}}}


def test_gather_writes_the_spread_over_seeds(tmp_path):
    for seed, shift in ((0, 0.0), (1, 0.1), (2, 0.2)):
        for pair, ignored in (("a__mimic-cxr", 0.1), ("b__mimic-cxr", 0.9)):
            run = tmp_path / str(seed) / "runs" / pair
            run.mkdir(parents=True)
            (run / "summary.json").write_text(json.dumps(summary(0.1 + shift, 0.5, 0.2, ignored, 0.3 + shift)))
        (tmp_path / str(seed) / "analysis").mkdir()
        (tmp_path / str(seed) / "analysis" / "correlation.json").write_text(
            json.dumps({"pearson_r": -0.5 - shift, "image_blind": {"pearson_r": 0.1}}))
    result = seeds.gather(tmp_path, [0, 1, 2])
    table = pd.read_csv(tmp_path / "seeds.csv")
    assert len(table) == 6 and table.image_blind_covered.eq(1.0).all() and table.image_blind_low.isna().all()
    assert result["correlations"]["r_dangerous"]["mean"] == pytest.approx(-0.6)
    assert result["correlations"]["r_dangerous"]["sd"] == pytest.approx(0.1)
    assert result["correlations"]["r_image_blind"]["min"] == pytest.approx(0.1)
    assert result["pairs"]["a__mimic-cxr"]["paper_precision"]["max"] == pytest.approx(0.5)
    assert result["pairs"]["a__mimic-cxr"]["image_blind_truth"]["mean"] == pytest.approx(0.25)
    assert result["pairs"]["a__mimic-cxr"]["reference_auroc"]["n"] == 0
    assert result["ignored_rate_span"]["mean"] == pytest.approx(0.8)
    assert json.loads((tmp_path / "distribution.json").read_text())["seeds"] == [0, 1, 2]


def test_make_seeds_rebuilds_a_seed_whole_when_code_it_runs_changed():
    """A seed's world that is newer than its code is kept; one older than a scoring module (make -W:
    as if just edited) is deleted and built again; seed 0 is make all's own."""
    world = REPO / "outputs" / "seeds" / "97"
    marker = world / "analysis" / "correlation.json"
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text("{}")

    # the notebooks have a rule (jupytext from their .py): in a fresh clone either may look newer
    settled = [f"--old-file={p.relative_to(REPO)}" for p in sorted((REPO / "notebooks").glob("*.ipynb"))]

    def dry_run(*extra):
        return subprocess.run(["make", "-n", "seeds", "SEEDS=0 97", *settled, *extra], cwd=REPO,
                              capture_output=True, text=True, check=True).stdout
    try:
        kept, stale = dry_run(), dry_run("-W", "lib/protocol/registration.py")
    finally:
        shutil.rmtree(world)
        if not any(world.parent.iterdir()):
            world.parent.rmdir()
    assert "rm -rf outputs/seeds/97" not in kept and "--seeds 0 97 " in kept
    assert "rm -rf outputs/seeds/97" in stale and "--seeds 97 " in stale
    assert "rm -rf outputs/seeds/0" not in stale
