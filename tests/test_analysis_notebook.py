"""The analysis notebook gathers runs into pairs.csv, correlation.json and figures."""
import json
from pathlib import Path

import pandas as pd
import papermill as pm

from lib.protocol import config, run

ROOT = Path(__file__).resolve().parents[1]


def test_analysis_gathers_every_run(tiny_world, tmp_path):
    runs = tmp_path / "runs"
    for family in ("llava", "gemma3"):
        for dataset in ("mimic-cxr", "padchest"):
            params = config.validate({
                "config": f"tiny-{family}", "model": str(tiny_world["models"][family]), "dataset": dataset,
                "data_root": str(tiny_world["data"][dataset]), "split": "train", "limit": 8,
                "output_dir": str(runs / f"tiny-{family}__{dataset}")})
            run.evaluate(params)
    out = tmp_path / "analysis"
    pm.execute_notebook(str(ROOT / "notebooks" / "analysis.ipynb"), str(tmp_path / "analysis.ipynb"),
                        parameters={"runs_dir": str(runs), "analysis_dir": str(out)},
                        cwd=str(ROOT), progress_bar=False)
    pairs = pd.read_csv(out / "pairs.csv")
    assert len(pairs) == 4 and set(pairs.dataset) == {"mimic-cxr", "padchest"}
    corr = json.loads((out / "correlation.json").read_text())
    for key in ("pearson_r", "p_value", "n", "ci95_low", "ci95_high", "spearman_rho"):
        assert key in corr
    assert corr["n"] == 4
    for name in ("flip_vs_dangerous.png", "quadrant_fractions.png", "accuracy_by_quadrant.png"):
        assert (out / name).stat().st_size > 1000
    assert len(list(out.glob("entropy_*.png"))) == 4
