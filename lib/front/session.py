"""What a run of the evaluate notebook does around the protocol: read what papermill injected,
validate it strictly with every check that needs no model, and choose the scorer.

`params(values, params_file)` is the notebook's validation cell: `values` are its globals. The
parameters papermill injected (`notebook.injected_parameters`) are checked too, so a misspelt
`-p` key is an error here, not only a warning on papermill's stderr.
"""
from __future__ import annotations

from ..protocol import config, preflight, run
from ..scale import ray_scorer
from .notebook import injected_parameters


def params(values: dict, params_file=None) -> dict:
    """The validated params; every check that needs no model runs here, before any loads."""
    validated = config.resolve(values, params_file, injected_parameters())
    preflight.check(validated, str(params_file or "notebook parameters"))
    return validated


def scorer_for(params: dict) -> run.Scorer | None:
    """The Ray actor pool when `workers` > 1 or `ray_address` is set, else the local scorer."""
    if params["workers"] > 1 or params["ray_address"]:
        return ray_scorer.RayScorer()
    return None


def evaluate(params: dict) -> run.RunResult:
    """`run.evaluate` with the scorer the params ask for."""
    return run.evaluate(params, scorer=scorer_for(params))
