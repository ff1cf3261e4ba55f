"""What a run of the evaluate notebook does around the protocol: read what papermill injected,
validate it strictly with every check that needs no model, and choose the scorer.

`params(values, params_file)` is the notebook's validation cell: `values` are its globals. The
parameters papermill injected (its `-f` file's keys and `-p` values) are read back from the
kernel's input history (the cell papermill writes starts with "# Parameters"), so a misspelt
`-p` key is an error here, not only a warning on papermill's stderr.
"""
from __future__ import annotations

import ast

from IPython import get_ipython

from ..protocol import config, preflight, run
from ..scale import ray_scorer

INJECTED_MARK = "# Parameters"


def injected_parameters() -> dict | None:
    """The assignments of papermill's injected-parameters cell, or None when there is none
    (a notebook run by hand in JupyterLab)."""
    shell = get_ipython()
    history = shell.user_ns.get("In", []) if shell is not None else []
    cells = [src for src in history if src.lstrip().startswith(INJECTED_MARK)]
    if not cells:
        return None
    values = {}
    for node in ast.parse(cells[-1]).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            values[node.targets[0].id] = ast.literal_eval(node.value)
    return values


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
