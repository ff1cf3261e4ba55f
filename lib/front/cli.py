"""The command line: `python -m lib evaluate PARAMS.yaml` and `python -m lib screen` (= `cxr-screen`).

Both run ONE code path, the evaluate notebook's: the command validates its input with the checks the
notebook's validation cell runs (`lib.protocol.config` then `lib.protocol.preflight`, so a bad input
costs seconds and exits 2 with a one-line reason), then executes `notebooks/evaluate.ipynb` through
papermill into the run's output directory, exactly as `make runs` does, and exports the executed
notebook as HTML with its code cells hidden (`evaluate.html` beside `evaluate.ipynb`).

    python -m lib evaluate params/llava-base__padchest.yaml [--out DIR] [-p limit 50 ...]
    cxr-screen --model M [--adapter A] [--quantization 4bit] --dataset D --data-root R
               [--questions Q] [--limit N] [--device cuda] --out DIR [--max-dangerous F]
    cxr-screen params/x.yaml [--out DIR] [--max-dangerous F]

`screen` writes `DIR/params.yaml` from its flags (or reads the params file given), runs the pair
into DIR (the run's usual outputs: summary.json, samples.parquet, predictions.parquet, the executed
notebook and its HTML) and writes `DIR/report.html` (`lib.front.report`). Exit status: 0 when the
image-blind rate (lib.protocol.references) is at most `--max-dangerous` (default: no limit), 3 when above, 4
when `--max-dangerous` is given but the run could not estimate that rate (the gate fails
closed; the reason is printed), 2 on bad input (the reason names the flag or file), 1 when the run
itself fails (a full disk: one line naming the folder).

The output directory is the tool's own (`lib.protocol.records.claim_output_dir`): missing, empty or
marked by an earlier run, never inside the project's sources, the model or the data root. The
executed notebook is written under a temporary name and renamed into place when complete (a
failed run leaves it as `evaluate.failed.ipynb`); when a write fails after the run replaced
summary.json, the previous run's notebook, HTML and report are removed, so that what is left is
ONE run's.

Paths given as flags are read from the current directory; paths inside a params file, as everywhere
in this project, from the repository root (where the notebooks run).
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import os
import re
import sys
from pathlib import Path

import nbformat
import papermill as pm
from nbconvert import HTMLExporter

from ..protocol import config, records
from . import report

import yaml

from .notebook import ROOT

NOTEBOOK = ROOT / "notebooks" / "evaluate.ipynb"
EXECUTED = "evaluate.ipynb"
OK, FAILED, BAD_INPUT, ABOVE_LIMIT, NOT_ESTIMABLE = 0, 1, 2, 3, 4
FAILED_NOTEBOOK = "evaluate.failed.ipynb"
# what a run writes beside its summary after the notebook's run (the report: screen only)
COMPANIONS = (EXECUTED, "evaluate.html", "report.html")
# errors of the notebook that mean the input cannot run (exit 2), not a failure of the run
INPUT_ERRORS = ("ParamsError", "NoSamplesError")

# screen flag -> params key (flags that are paths are resolved against the current directory)
SCREEN_FLAGS = {
    "config": "config", "model": "model", "adapter": "adapter", "quantization": "quantization",
    "dataset": "dataset", "data_root": "data_root", "split": "split", "questions": "questions",
    "limit": "limit", "device": "device", "out": "output_dir", "reference_root": "reference_root",
}
PATH_FLAGS = ("data_root", "questions", "out", "reference_root")   # always paths
MAYBE_PATH_FLAGS = ("model", "adapter")          # a directory if it exists here, else a hub id


SCREEN_USAGE = __doc__.split("\n\n")[2]


class InputError(Exception):
    """Bad input: the message is the one line the command prints (exit 2)."""


class RunFailed(Exception):
    """The evaluate notebook failed for another reason than its input (exit 1)."""


def flag(key: str) -> str:
    return "--" + key.replace("_", "-")


# -- validation: the notebook's own checks, before any model loads ------------------------------

def validate(raw: dict, source: str, sources: dict | None = None, names: dict | None = None) -> dict:
    """`config.validate` + `preflight.check` (run from the repository root, as the notebook is);
    a ParamsError becomes an InputError whose message names the flag (``names``: source label ->
    {params key: flag}) instead of the key where the value came from a flag."""
    from ..protocol import preflight  # imports torch and transformers: not for --help

    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        params = config.validate(raw, source=source, sources=sources)
        preflight.check(params, source)
        return params
    except config.ParamsError as err:
        raise InputError(rename_keys(str(err), names or {})) from None
    finally:
        os.chdir(cwd)


def rename_keys(message: str, names: dict) -> str:
    """"<source>: key 'data_root': ..." -> "--data-root: ..." where <source>'s key came from a flag."""
    for source, keys in names.items():
        match = re.match(rf"^{re.escape(source)}: key '(\w+)'(.*)$", message, flags=re.S)
        if match and match.group(1) in keys:
            return f"{keys[match.group(1)]}{match.group(2)}"
    return message


def read_params_file(path) -> dict:
    try:
        return config.read_file(path)
    except config.ParamsError as err:
        raise InputError(str(err)) from None


def overrides_from(pairs) -> dict:
    """`-p key value` pairs as papermill's command line reads them (True/False/None, numbers)."""
    from papermill.cli import _resolve_type

    return {key: _resolve_type(value) for key, value in pairs or ()}


# -- one run of the evaluate notebook -------------------------------------------------------------

def execute(params_file: Path, parameters: dict, output_dir: Path, *, progress: bool = True) -> Path:
    """Run notebooks/evaluate.ipynb into ``output_dir`` (papermill, cwd = the repository root),
    export it as HTML; returns the executed notebook. ``progress``: papermill's progress bar over
    the notebook's cells on stderr. The notebook is written under a temporary name, renamed to
    evaluate.ipynb when complete, to evaluate.failed.ipynb when the run failed."""
    records.claim_output_dir(output_dir)
    executed = output_dir / EXECUTED
    partial = output_dir / f".evaluate.partial-{os.getpid()}.ipynb"
    logging.getLogger("papermill").setLevel(logging.WARNING)
    try:
        os.close(records.create_new(partial))
        pm.execute_notebook(str(NOTEBOOK), str(partial),
                            parameters={**parameters, "params_file": str(params_file)},
                            cwd=str(ROOT), progress_bar=progress)
        os.replace(partial, executed)
    except pm.PapermillExecutionError as err:
        reason = f"{err.ename}: {str(err.evalue).splitlines()[0] if err.evalue else ''}".strip()
        if err.ename in INPUT_ERRORS:
            raise InputError(reason.removeprefix(f"{err.ename}: ")) from None
        os.replace(partial, output_dir / FAILED_NOTEBOOK)
        raise RunFailed(f"the evaluate notebook failed in cell {err.exec_count}: {reason} "
                        f"(the executed notebook: {output_dir / FAILED_NOTEBOOK})") from None
    finally:
        partial.unlink(missing_ok=True)
    (output_dir / FAILED_NOTEBOOK).unlink(missing_ok=True)  # a failed run's, now superseded
    export_html(executed)
    return executed


def export_html(notebook: Path) -> Path:
    """`jupyter nbconvert --to html --no-input NOTEBOOK`: the HTML beside it, code cells hidden."""
    exporter = HTMLExporter(exclude_input=True, exclude_input_prompt=True, exclude_output_prompt=True)
    body, _ = exporter.from_notebook_node(nbformat.read(notebook, as_version=4))
    return records.write_new(notebook.with_suffix(".html"), body.encode("utf-8"))


@contextlib.contextmanager
def one_run(output_dir: Path):
    """Around a run's writes into ``output_dir``: an OSError (a full disk, a folder gone
    read-only) becomes RunFailed, one line naming the folder; when summary.json was replaced
    before the failure, the previous run's COMPANIONS (older than it) are removed by name, so
    that the folder holds ONE run's files."""
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


def absolute(path: str | None) -> str | None:
    """A path from the command line, absolute (the notebook runs at the repository root)."""
    return None if path is None else str(Path(path).expanduser().resolve())


def locate(params_file: str) -> Path:
    """A params file from the command line: from the current directory, else from the repository
    root (`python -m lib evaluate params/x.yaml` works from anywhere)."""
    path = Path(params_file).expanduser()
    if not path.is_absolute() and not path.exists() and (ROOT / path).exists():
        return ROOT / path
    return path.resolve()


def from_params_file(params_file: Path, overrides: dict, out: str | None = None) -> tuple[dict, dict]:
    """Validate a params file with `-p` overrides (and `--out`): (validated params, the values to
    give the notebook)."""
    file_values = read_params_file(params_file)
    injected = dict(overrides)
    if out is not None:
        injected["output_dir"] = absolute(out)
    sources = {k: "-p" for k, v in injected.items() if k not in file_values or file_values[k] != v}
    if out is not None:
        sources["output_dir"] = "--out"
    values = {**file_values, **injected}
    return validate(values, str(params_file), sources, names={"--out": {"output_dir": "--out"}}), values


def output_dir_of(params: dict) -> Path:
    output_dir = Path(params["output_dir"])
    return output_dir if output_dir.is_absolute() else ROOT / output_dir


# -- the commands -------------------------------------------------------------------------------

def evaluate_command(args) -> int:
    params_file = locate(args.params)
    params, values = from_params_file(params_file, overrides_from(args.p), args.out)
    output_dir = output_dir_of(params)
    with one_run(output_dir):
        execute(params_file, values, output_dir, progress=not args.no_progress)
    print(f"{params['config']}__{params['dataset']}: outputs in {output_dir} "
          f"(summary.json, samples.parquet, {EXECUTED}, evaluate.html)")
    return OK


def screen_params(args) -> dict:
    """The params of a screen given by flags (paths made absolute); None values left out."""
    if args.model is None or args.dataset is None or args.data_root is None:
        missing = [flag(k) for k in ("model", "dataset", "data_root") if getattr(args, k) is None]
        raise InputError(f"missing {', '.join(missing)} (or give a params file); see cxr-screen --help")
    if args.out is None:
        raise InputError("missing --out DIR: where the run and report.html go")
    values = {}
    for name, key in SCREEN_FLAGS.items():
        value = getattr(args, name)
        if value is None:
            continue
        if name in PATH_FLAGS:
            value = absolute(value)
        elif name in MAYBE_PATH_FLAGS and Path(value).expanduser().exists():
            value = absolute(value)
        values[key] = value
    if "config" not in values:
        values["config"] = default_config_name(values)
    return values


def default_config_name(values: dict) -> str:
    """The model's folder or hub name, with the adapter's and the quantization, e.g. llava-base."""
    name = Path(values["model"].rstrip("/")).name or "model"
    if values.get("adapter"):
        name += "+" + Path(values["adapter"].rstrip("/")).name
    if values.get("quantization") not in (None, "none"):
        name += "-" + values["quantization"]
    return re.sub(r"[^A-Za-z0-9._+-]+", "-", name)


def check_limit(max_dangerous):
    if max_dangerous is not None and not 0 <= max_dangerous <= 1:
        raise InputError(f"--max-dangerous: got {max_dangerous:g}; allowed: a fraction in [0, 1]")


def screen_command(args) -> int:
    check_limit(args.max_dangerous)
    progress = not args.no_progress
    if args.params is not None:
        given = [flag(k) for k in SCREEN_FLAGS if k != "out" and getattr(args, k) is not None]
        if given:
            raise InputError(f"{given[0]}: give either a params file or the flags, not both "
                             f"(-p key value overrides a params file's key)")
        params_file = locate(args.params)
        params, values = from_params_file(params_file, overrides_from(args.p), args.out)
        where = f"{params_file}: key 'reliance_checks'"
    else:
        if args.p:
            raise InputError("-p: overrides need a params file; with flags, give the flag itself")
        values = screen_params(args)
        source = "cxr-screen"
        names = {source: {key: flag(name) for name, key in SCREEN_FLAGS.items()}}
        params = validate(values, source, names=names)
        params_file = output_dir_of(params) / "params.yaml"
        where = "the default reliance_checks"
    if "reference" not in params["reliance_checks"] and args.max_dangerous is not None:
        raise InputError(f"--max-dangerous needs the reference check, which {where} leaves out")
    output_dir = output_dir_of(params)
    with one_run(output_dir):
        if args.params is None:
            records.write_new(params_file, yaml.safe_dump(values, sort_keys=False).encode("utf-8"))
        execute(params_file, values, output_dir, progress=progress)
        result = report.write_report(output_dir, max_dangerous=args.max_dangerous)
    print(result["verdict_line"])
    print(f"report: {result['path']}")
    if args.max_dangerous is not None and not result["estimable"]:
        why = result["why_not_estimable"] or "the run marks it not estimable"
        print(f"cxr-screen: the image-blind rate cannot be estimated ({why}): the gate fails "
              f"closed (exit {NOT_ESTIMABLE})", file=sys.stderr)
        return NOT_ESTIMABLE
    return ABOVE_LIMIT if result["passed"] is False else OK


# -- argument parsing -------------------------------------------------------------------------

class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line naming the flag (exit 2), like every bad input."""

    def error(self, message):
        self.exit(BAD_INPUT, f"{self.prog}: {message} (see {self.prog} --help)\n")


def add_screen_arguments(parser) -> None:
    parser.add_argument("params", nargs="?", help="a params file instead of the flags below")
    parser.add_argument("--model", help="checkpoint directory or hub id")
    parser.add_argument("--adapter", help="LoRA adapter directory or hub id")
    parser.add_argument("--quantization", help="none (default) or 4bit")
    parser.add_argument("--dataset", help="mimic-cxr or padchest")
    parser.add_argument("--data-root", dest="data_root", help="the dataset in its official layout")
    parser.add_argument("--split", help="official split (default: test)")
    parser.add_argument("--questions", help="CSV/JSONL question file (default: built-in sets)")
    parser.add_argument("--reference-root", dest="reference_root",
                        help="another root in the dataset's layout to draw the opposite-label reference "
                             "images from (default: the data root's split the model did not train on)")
    parser.add_argument("--limit", type=int, help="score at most N samples")
    parser.add_argument("--device", help="auto (default), cpu, cuda or cuda:N")
    parser.add_argument("--config", help="short name of the configuration (default: from --model)")
    parser.add_argument("--out", help="output directory: the run's outputs and report.html")
    parser.add_argument("--max-dangerous", dest="max_dangerous", type=float,
                        help="exit 3 when the image-blind rate is above this (default: no limit)")
    parser.add_argument("-p", nargs=2, action="append", metavar=("KEY", "VALUE"),
                        help="override a key of the params file (repeatable)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="python -m lib", description="Run the protocol of Consistent but Dangerous.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    ev = commands.add_parser("evaluate", help="run one pair's evaluate notebook (papermill)",
                             description="Run notebooks/evaluate.ipynb for one params file into its "
                                         "output_dir (default outputs/runs/<config>__<dataset>).")
    ev.add_argument("params", help="params file (YAML)")
    ev.add_argument("--out", help="output directory (overrides output_dir)")
    ev.add_argument("-p", nargs=2, action="append", metavar=("KEY", "VALUE"),
                    help="override a key (repeatable), as papermill's -p")
    ev.add_argument("--no-progress", action="store_true", help="no progress bar")
    screen = commands.add_parser("screen", help="screen one model on one dataset: report.html and a verdict",
                                 description=SCREEN_USAGE, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_screen_arguments(screen)
    return parser


def run(command, args, prog: str) -> int:
    """Run a command; bad input, a failed run and ^C become one line on stderr and an exit status."""
    try:
        return command(args)
    except InputError as err:
        print(f"{prog}: {err}", file=sys.stderr)
        return BAD_INPUT
    except RunFailed as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return FAILED
    except KeyboardInterrupt:
        print(f"{prog}: interrupted: rerun the same command to resume (scored samples are kept)",
              file=sys.stderr)
        return 130


def main(argv=None) -> int:
    """`python -m lib evaluate|screen ...`."""
    args = build_parser().parse_args(argv)
    if args.command == "evaluate":
        return run(evaluate_command, args, "python -m lib evaluate")
    return run(screen_command, args, "cxr-screen")


def screen_main(argv=None) -> int:
    """The `cxr-screen` console script (the same as `python -m lib screen`)."""
    parser = Parser(prog="cxr-screen", description=SCREEN_USAGE,
                    formatter_class=argparse.RawDescriptionHelpFormatter)
    add_screen_arguments(parser)
    return run(screen_command, parser.parse_args(argv), "cxr-screen")
