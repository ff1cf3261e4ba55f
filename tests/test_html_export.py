"""The executed notebooks' HTML: every figure has alternative text.

nbconvert's lab template writes no alt attribute (nbconvert then fills in "No description has been
provided for this image" and warns); lib/front/templates/lab_alt adds the cell's metadata "alt",
and every notebook cell that draws a figure declares one (jupytext: `# %% alt="..."`).
"""
import base64
import html.parser
import io
import re
import subprocess
from pathlib import Path

import matplotlib
import nbformat
import pytest

from lib.front import notebook_run

ROOT = Path(__file__).resolve().parents[1]
DRAWS = re.compile(r"lib\.protocol\.plots\.|plt\.subplots|\.plot\(")


def png() -> str:
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(1, 1))
    ax.plot([0, 1], [0, 1])
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode()


def figure_notebook(path: Path) -> Path:
    """Three figure cells: alt in the cell's metadata (with characters HTML must escape), alt in
    the output's metadata, and none."""
    data = png()
    cells = []
    for cell_alt, output_alt in (('a <b> & "c"', None), (None, "from the output"), (None, None)):
        cell = nbformat.v4.new_code_cell("fig", metadata={"alt": cell_alt} if cell_alt else {})
        cell.outputs = [nbformat.v4.new_output(
            "display_data", data={"image/png": data},
            metadata={"image/png": {"alt": output_alt}} if output_alt else {})]
        cells.append(cell)
    nbformat.write(nbformat.v4.new_notebook(cells=cells), path)
    return path


class Images(html.parser.HTMLParser):
    """Each <img>'s alt attribute as a reader gets it (entities decoded); None without one."""

    def __init__(self, page: str):
        super().__init__()
        self.alts = []
        self.feed(page)

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.alts.append(dict(attrs).get("alt"))


def check(page: str) -> None:
    assert Images(page).alts == ['a <b> & "c"', "from the output", "No description has been provided for this image"]


def test_export_html_writes_each_figure_alt(tmp_path):
    check(notebook_run.export_html(figure_notebook(tmp_path / "n.ipynb")).read_text())


def test_the_makefile_export_writes_each_figure_alt(tmp_path):
    command = subprocess.run(["make", "-s", "--no-print-directory", "--eval=print-nbconvert: ; @echo $(NBCONVERT)",
                              "print-nbconvert"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    notebook = figure_notebook(tmp_path / "n.ipynb")
    result = subprocess.run(command + [str(notebook)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "Alternative text is missing on 1 image(s)" in result.stderr   # the third figure's, only
    check(notebook.with_suffix(".html").read_text())


@pytest.mark.parametrize("notebook", sorted((ROOT / "notebooks").glob("*.ipynb")), ids=lambda p: p.stem)
def test_every_cell_that_draws_a_figure_declares_its_alt(notebook):
    cells = [c for c in nbformat.read(notebook, as_version=4).cells if c.cell_type == "code"]
    drawing = [c for c in cells if DRAWS.search(c.source)]
    assert drawing, f"{notebook.name}: no figure cell found (is DRAWS still right?)"
    missing = [c.source.splitlines()[0] for c in drawing if not str(c.metadata.get("alt", "")).strip()]
    assert not missing, f"{notebook.name}: figure cells without alt metadata: {missing}"
