"""The setup every notebook runs first: `import lib.front.notebook; lib.front.notebook.setup()`.

`lib` is installed editable into the venv (`make env`), so this import works from a kernel
started in any folder; `setup()` then moves the kernel to the repository root.
"""
from __future__ import annotations

import ast
import os
from pathlib import Path

from IPython import get_ipython

INJECTED_MARK = "# Parameters"  # the first line of the cell papermill injects
# The checkout that holds this lib (lib/front/notebook.py -> the repository root).
ROOT = Path(__file__).resolve().parents[2]


def setup() -> None:
    """Make a notebook behave the same wherever Jupyter or papermill started it.

    - the working directory becomes the repository root: paths in params files and notebook
      parameters (outputs/..., params/...) are relative to it;
    - HF_HUB_OFFLINE=1 unless already set: nothing in the default run touches the network;
    - under IPython, figures are drawn inline (`%matplotlib inline`).
    """
    os.chdir(ROOT)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    shell = get_ipython()  # None outside IPython (a plain `python notebooks/x.py`)
    if shell is not None:
        shell.run_line_magic("matplotlib", "inline")


def injected_parameters() -> dict | None:
    """The assignments of papermill's injected-parameters cell (its `-f` file's keys and `-p`
    values), read back from the kernel's input history; None when there is none (a notebook
    run by hand in JupyterLab)."""
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
