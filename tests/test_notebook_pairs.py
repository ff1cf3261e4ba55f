"""Each notebook is a jupytext pair, and the notebooks' parameters are the params defaults in lib.

notebooks/<name>.py (percent format) is what people edit and review; notebooks/<name>.ipynb is what
papermill and JupyterLab run. `make notebooks` syncs the two (jupytext.toml pairs them). A pair that
disagrees means one side was edited and the pair not synced.

The papermill parameters of evaluate.ipynb and finetune_lora.ipynb must be the keys of the defaults
dict that validates them, with the same default values, so that a key added to DEFAULTS shows up as a
notebook parameter too. The defaults are read when the test runs. Keys in REQUIRED default to None in
lib (a params file must give them); the notebook gives them the offline default pair as an example,
so only their names are compared. `params_file` is the notebook's own parameter (where the other
values come from), not a params key.

The Makefile lists, per step, the code the step runs (DEFAULT_CODE, ADAPTER_CODE, RUN_CODE,
ANALYSIS_CODE): the step's notebook and every lib module it imports, followed through all imports
(inside functions too). The lists must be exactly that, so that a step reruns when, and only when,
code it runs changes.
"""
import ast
import importlib
import os
import shutil
import subprocess
from pathlib import Path

import jupytext
import nbformat
import papermill as pm
import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
IPYNBS = sorted(NOTEBOOKS.glob("*.ipynb"))
NOTEBOOK_ONLY = {"params_file"}


def cells(nb):
    return [(c.cell_type, c.source, c.metadata.get("tags", [])) for c in nb.cells
            if c.cell_type in ("code", "markdown")]


def test_every_notebook_has_its_pair():
    assert IPYNBS, "no notebooks found"
    names = {p.stem for p in IPYNBS}
    scripts = {p.stem for p in NOTEBOOKS.glob("*.py")}
    assert names == scripts, (f"unpaired: .ipynb without .py {sorted(names - scripts)}, "
                              f".py without .ipynb {sorted(scripts - names)}; run `make notebooks`")


@pytest.mark.parametrize("ipynb", IPYNBS, ids=lambda p: p.stem)
def test_pair_agrees(ipynb):
    script = ipynb.with_suffix(".py")
    from_script = cells(jupytext.read(script))
    from_ipynb = cells(nbformat.read(ipynb, as_version=4))
    where = f"{script.relative_to(ROOT)} and {ipynb.relative_to(ROOT)} disagree"
    for i, (a, b) in enumerate(zip(from_script, from_ipynb)):
        assert a == b, (f"{where} at cell {i}:\n.py:    {a!r}\n.ipynb: {b!r}\n"
                        "sync them with `make notebooks` (jupytext --sync keeps the newer side)")
    assert len(from_script) == len(from_ipynb), (
        f"{where}: {len(from_script)} cells in the .py, {len(from_ipynb)} in the .ipynb; run `make notebooks`")


def parameter_differences(notebook, module_name):
    """The keys where the notebook's papermill parameters and the module's DEFAULTS disagree."""
    module = importlib.import_module(module_name)
    defaults, required = module.DEFAULTS, set(getattr(module, "REQUIRED", ()))
    params = pm.inspect_notebook(str(notebook))
    values = {k: ast.literal_eval(p["default"]) for k, p in params.items() if k not in NOTEBOOK_ONLY}
    problems = []
    for key in sorted(set(values) - set(defaults)):
        problems.append(f"{key}: a notebook parameter but not in {module_name}.DEFAULTS")
    for key in sorted(set(defaults) - set(values)):
        problems.append(f"{key}: in {module_name}.DEFAULTS ({defaults[key]!r}) but not a notebook parameter")
    for key in sorted(set(values) & set(defaults) - required):
        if values[key] != defaults[key] or type(values[key]) is not type(defaults[key]):
            problems.append(f"{key}: notebook {values[key]!r}, {module_name}.DEFAULTS {defaults[key]!r}")
    return problems


@pytest.mark.parametrize("notebook, module_name", [
    ("evaluate", "lib.protocol.config"),
    ("finetune_lora", "lib.offline.finetune"),
])
def test_notebook_parameters_are_the_params_defaults(notebook, module_name):
    path = NOTEBOOKS / f"{notebook}.ipynb"
    problems = parameter_differences(path, module_name)
    assert not problems, (f"notebooks/{notebook}.py parameters differ from {module_name}.DEFAULTS "
                          f"(keys: {', '.join(p.split(':')[0] for p in problems)}):\n  " + "\n  ".join(problems))


# The Makefile variable of each step, and the modules deliberately left out of it (see its comment:
# those steps draw figures with plots, but what make tracks does not depend on them).
STEPS = {"DEFAULT_CODE": "build_default", "ADAPTER_CODE": "finetune_lora", "RUN_CODE": "evaluate",
         "ANALYSIS_CODE": "analysis"}
NOT_TRACKED = {"DEFAULT_CODE": {"lib.protocol.plots"}, "RUN_CODE": {"lib.protocol.plots"}}


def module_file(name):
    path = ROOT.joinpath(*name.split("."))
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


def is_module(name):
    return module_file(name).is_file()


def lib_imports(path, package):
    """The lib modules a file imports anywhere in it (`package`: the one relative imports start from)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "lib"}
        elif isinstance(node, ast.ImportFrom):
            parts = package.split(".")[:len(package.split(".")) - node.level + 1] if node.level else []
            base = ".".join(parts + ([node.module] if node.module else []))
            if base.split(".")[0] != "lib":
                continue
            for alias in node.names:  # `from lib.x import y`: y is a module or a name in lib.x
                found.add(f"{base}.{alias.name}" if is_module(f"{base}.{alias.name}") else base)
    found = {m for m in found if is_module(m)}
    # importing lib.a.b runs lib/__init__.py and lib/a/__init__.py first
    return found | {".".join(m.split(".")[:i]) for m in found for i in range(1, m.count(".") + 1)}


def only_docstring(path):
    body = ast.parse(path.read_text()).body
    return all(isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant) for n in body)


def code_of(notebook, left_out=()):
    """The notebook and the lib files it runs, following imports (not into the modules left out)."""
    todo, seen = set(lib_imports(NOTEBOOKS / f"{notebook}.py", "")) - set(left_out), set()
    while todo:
        name = todo.pop()
        seen.add(name)
        path = module_file(name)
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        todo |= lib_imports(path, package) - seen - set(left_out)
    files = {module_file(m) for m in seen}
    return {f"notebooks/{notebook}.ipynb"} | {
        str(f.relative_to(ROOT)) for f in files if not (f.name == "__init__.py" and only_docstring(f))}


def make_variable(name):
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}  # under `make test`
    result = subprocess.run(["make", "-s", "--no-print-directory", "--eval", "print-%: ; @echo $($*)",
                             f"print-{name}"], cwd=ROOT, capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr
    return set(result.stdout.split())


@pytest.mark.skipif(shutil.which("make") is None, reason="needs GNU make")
@pytest.mark.parametrize("variable", STEPS)
def test_makefile_lists_exactly_the_code_each_step_runs(variable):
    notebook = STEPS[variable]
    runs = code_of(notebook, NOT_TRACKED.get(variable, ()))
    listed = make_variable(variable)
    missing, extra = sorted(runs - listed), sorted(listed - runs)
    assert not missing and not extra, (
        f"Makefile {variable} is not the code notebooks/{notebook}.py runs: "
        f"missing {missing} (a change there would not rerun the step), "
        f"extra {extra} (a change there would rerun it for nothing)")
