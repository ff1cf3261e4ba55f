"""lib.front.callpath: the path of a notebook's params through the package, read from the source."""
from pathlib import Path

from lib.front import callpath

PACKAGE = {
    "__init__.py": '"""A package."""\n',
    "a.py": ("from . import b\nfrom .b import load as fetch\n\n"
             "def run(params):\n    b.check(params)\n    b.other(1)\n    handler = b.check\n    handler(params)\n"
             "    x = fetch(params)\n    return len(x)\n\n"
             "def finish(p):\n    return p\n"),
    "b.py": ("import json\n\n"
             "class Store:\n    def __init__(self, cfg):\n        self.keep(cfg)\n\n    def keep(self, cfg):\n        json.dumps(cfg)\n\n"
             "def check(p):\n    helper(p)\n\ndef helper(q):\n    pass\n\ndef other(x):\n    check(x)\n\n"
             "def load(params):\n    from .a import finish\n    Store(cfg=params)\n    made = finish(params)\n    return made\n"),
}


def write_package(tmp_path: Path) -> Path:
    root = tmp_path / "pkg"
    root.mkdir()
    for name, text in PACKAGE.items():
        (root / name).write_text(text)
    notebook = tmp_path / "nb.py"
    notebook.write_text("import pkg.a\nparams = dict(x=1)\nunrelated = 2\npkg.a.run(params)\nparams.get('x')\n")
    return notebook


def test_the_path_follows_params_into_functions_methods_and_back(tmp_path):
    notebook = write_package(tmp_path)
    stops, unresolved = callpath.trace(notebook, root=tmp_path / "pkg")
    assert [(s.depth, s.function) for s in stops] == [
        (0, "pkg.a.run"), (1, "pkg.b.check"), (2, "pkg.b.helper"), (1, "pkg.b.load"),
        (2, "pkg.b.Store.__init__"), (3, "pkg.b.Store.keep"), (2, "pkg.a.finish")]
    assert stops[0].where == "pkg/a.py:4"
    # a function held in a variable is not resolvable from the source; params.get(...) does not
    # take params as an argument: no stop
    assert unresolved == ["pkg.a: handler(...) line 8"]
    m = callpath.measure(stops)
    assert (m["n_stops"], m["modules"], m["returns"]) == (7, ["pkg.a", "pkg.b"], 1)
    assert m["entries"] == {"pkg.a": 2, "pkg.b": 5}


def test_the_evaluate_notebook_path_starts_at_its_session(capsys):
    m = callpath.main(["notebooks/evaluate.py"])
    out = capsys.readouterr().out
    assert out.splitlines()[0].split()[1] == "lib.front.session.params"
    assert "lib.protocol.run.evaluate" in out and "lib.protocol.run" in m["modules"]
    assert f"{m['n_stops']} stops in {len(m['modules'])} modules" in out
