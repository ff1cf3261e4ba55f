"""One run of the evaluate notebook for the command line: papermill execution, the progress bar,
the HTML export, and what a failed write leaves (`lib.front.cli` parses and validates; this module
runs what it validated).

One concept: turning validated params into ONE run's files in the output folder. The executed
notebook is written under a temporary name and renamed into place when complete (a failed run
leaves it as `evaluate.failed.ipynb`); `one_run` turns an OSError into one line naming the folder
and, when the run had already replaced summary.json, removes the previous run's notebook, HTML
and report, so that what is left is one run's.
"""
from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
import threading
from pathlib import Path

# Only the standard library at import time (cli's --help stays fast): papermill, nbconvert and
# lib.protocol load when a run starts.
from .notebook import ROOT

NOTEBOOK = ROOT / "notebooks" / "evaluate.ipynb"
EXECUTED = "evaluate.ipynb"
FAILED_NOTEBOOK = "evaluate.failed.ipynb"
# nbconvert's lab template with each figure's alt text (its cell's metadata "alt"); the Makefile's
# NBCONVERT names the same folder and template
HTML_TEMPLATES = Path(__file__).parent / "templates"
HTML_TEMPLATE = "lab_alt"
# what a run writes beside its summary after the notebook's run (the report: screen only)
COMPANIONS = (EXECUTED, "evaluate.html", "report.html")
# errors of the notebook that mean the input cannot run (exit 2), not a failure of the run
INPUT_ERRORS = ("ParamsError", "NoSamplesError")


class InputError(Exception):
    """Bad input: the message is the one line the command prints (exit 2)."""


class RunFailed(Exception):
    """The evaluate notebook failed for another reason than its input (exit 1)."""


def execute(params_file: Path, parameters: dict, output_dir: Path, *, progress: bool = True) -> Path:
    """Run notebooks/evaluate.ipynb into ``output_dir`` (papermill, cwd = the repository root),
    export it as HTML; returns the executed notebook. ``progress``: a bar over the samples being
    scored, with an ETA, on stderr (drawn by the kernel into a file, `session.PROGRESS_ENV`, that
    `ProgressTail` copies to stderr as it grows). The notebook is written under a temporary name,
    renamed to evaluate.ipynb when complete, to evaluate.failed.ipynb when the run failed."""
    import papermill as pm

    from ..protocol import records
    from . import session

    records.claim_output_dir(output_dir)
    executed = output_dir / EXECUTED
    partial = output_dir / f".evaluate.partial-{os.getpid()}.ipynb"
    logging.getLogger("papermill").setLevel(logging.WARNING)
    tail = ProgressTail(sys.stderr) if progress else None
    # the kernel inherits this environment: the file it draws the samples bar into
    os.environ.update({session.PROGRESS_ENV: str(tail.path)} if tail else {})
    try:
        os.close(records.create_new(partial))
        pm.execute_notebook(str(NOTEBOOK), str(partial),
                            parameters={**parameters, "params_file": str(params_file)},
                            cwd=str(ROOT), progress_bar=False, extra_arguments=KERNEL_ARGUMENTS,
                            coalesce_streams=True)
        os.replace(partial, executed)
    except pm.PapermillExecutionError as err:
        reason = f"{err.ename}: {str(err.evalue).splitlines()[0] if err.evalue else ''}".strip()
        if err.ename in INPUT_ERRORS:
            raise InputError(reason.removeprefix(f"{err.ename}: ")) from None
        os.replace(partial, output_dir / FAILED_NOTEBOOK)
        raise RunFailed(f"the evaluate notebook failed in cell {err.exec_count}: {reason} "
                        f"(the executed notebook: {output_dir / FAILED_NOTEBOOK})") from None
    finally:
        os.environ.pop(session.PROGRESS_ENV, None)
        if tail is not None:
            tail.close()
        partial.unlink(missing_ok=True)
    (output_dir / FAILED_NOTEBOOK).unlink(missing_ok=True)  # a failed run's, now superseded
    export_html(executed)
    return executed


# the kernel's own log stays quiet: no "running over TCP without encryption" (papermill's kernel
# listens on localhost only), and no "KeyboardInterrupt caught in kernel", which ipykernel logs at
# ERROR when jupyter_client interrupts it before shutdown and which broke the one-line error of a
# failed run; a failing cell still reaches the user through papermill's PapermillExecutionError
KERNEL_ARGUMENTS = ["--IPKernelApp.log_level=CRITICAL"]


class ProgressTail(threading.Thread):
    """Copies what the kernel writes into a temporary file (the samples bar's frames) to
    ``stream`` as the file grows, every half second, until ``close``; then removes the file."""

    def __init__(self, stream):
        super().__init__(daemon=True)
        handle, name = tempfile.mkstemp(prefix="cxr-screen-progress-")
        os.close(handle)
        self.path, self.stream, self.drawn = Path(name), stream, False
        self.stopped = threading.Event()
        self.start()

    def run(self) -> None:
        with open(self.path, encoding="utf-8", errors="replace") as source:
            while not self.stopped.wait(0.5):
                self.copy(source)
            self.copy(source)

    def copy(self, source) -> None:
        text = source.read()
        if text:
            self.stream.write(text)
            self.stream.flush()
            self.drawn = True

    def close(self) -> None:
        self.stopped.set()
        self.join()
        self.path.unlink(missing_ok=True)
        if self.drawn:
            self.stream.write("\n")
            self.stream.flush()


def export_html(notebook: Path) -> Path:
    """`jupyter nbconvert --to html --no-input NOTEBOOK` with HTML_TEMPLATE: the HTML beside it, code
    cells hidden, each figure with its cell's alt text."""
    import nbformat
    from nbconvert import HTMLExporter

    from ..protocol import records

    exporter = HTMLExporter(template_name=HTML_TEMPLATE, extra_template_basedirs=[str(HTML_TEMPLATES)],
                            exclude_input=True, exclude_input_prompt=True, exclude_output_prompt=True)
    body, _ = exporter.from_notebook_node(nbformat.read(notebook, as_version=4))
    return records.write_new(notebook.with_suffix(".html"), body.encode("utf-8"))


@contextlib.contextmanager
def one_run(output_dir: Path):
    """Around a run's writes into ``output_dir``: an OSError (a full disk, a folder gone
    read-only) becomes RunFailed, one line naming the folder; when summary.json was replaced
    before the failure, the previous run's COMPANIONS (older than it) are removed by name, so
    that the folder holds ONE run's files."""
    from ..protocol import records

    summary = output_dir / "summary.json"
    before = stamp(summary)
    try:
        yield
    except OSError as err:
        now = stamp(summary)
        replaced = now is not None and now != before
        stale = [name for name in COMPANIONS
                 if replaced and (old := stamp(output_dir / name)) is not None and old[0] < now[0]]
        for name in stale:
            (output_dir / name).unlink()
        left = (f"the previous run's {', '.join(stale)} removed, the new run's outputs kept" if stale
                else "the outputs there are those of one run")
        why = (str(err) if isinstance(err, records.OutputDirError)
               else f"cannot write into {output_dir} ({err.strerror or err})")
        raise RunFailed(f"{why}; {left}") from None


def stamp(path: Path) -> tuple | None:
    """(mtime_ns, inode) of a file, None when there is none."""
    try:
        info = path.stat()
    except FileNotFoundError:
        return None
    return info.st_mtime_ns, info.st_ino
