"""The command line: `python -m lib evaluate PARAMS.yaml` and `python -m lib screen` (= `cxr-screen`).

Both run ONE code path, the evaluate notebook's: the command validates its input with the checks the
notebook's validation cell runs (`lib.protocol.config` then `lib.protocol.preflight`, so a bad input
costs seconds and exits 2 with a one-line reason), then executes `notebooks/evaluate.ipynb` through
papermill into the run's output directory, exactly as `make runs` does, and exports the executed
notebook as HTML with its code cells hidden (`evaluate.html` beside `evaluate.ipynb`).

    python -m lib evaluate params/llava-base__padchest.yaml [--out DIR] [-p limit 50 ...]
    cxr-screen --model M [--adapter A] [--quantization 4bit] --dataset D --data-root R
               [--findings F1,F2] [--questions Q] [--answer-instruction TEXT] [--limit N]
               [--seed S] [--batch-size B] [--device cuda] [-p KEY VALUE ...] --out DIR
               [--max-dangerous F] [--log-samples]
    cxr-screen params/x.yaml [--out DIR] [-p KEY VALUE ...] [--max-dangerous F]
    cxr-screen compare DIR DIR ... --out DIR

`screen` writes `DIR/params.yaml` from its flags (or reads the params file given), runs the pair
into DIR (the run's usual outputs: summary.json, samples.parquet, predictions.parquet, the executed
notebook and its HTML) and writes `DIR/report.html` (`lib.front.report`). Exit status: 0 when the
image-blind rate (lib.protocol.references) is at most `--max-dangerous` (default: no limit), 3 when
above, 4 when `--max-dangerous` is given but the run could not estimate that rate (the gate fails
closed; the reason is printed), 2 on bad input (the reason names the flag or file), 1 when the run
itself fails (a full disk: one line naming the folder). A question file that
covers only some of the default findings (and no --findings) screens the findings it covers and
says so in one line; --findings naming a finding the file lacks is bad input. --log-samples also
writes the per-sample rows as JSON lines (DIR/samples.jsonl). The progress bar counts samples.

`compare` writes `DIR/compare.html` over several screens' output folders (`lib.front.compare`).

The output directory is the tool's own (`lib.protocol.records.claim_output_dir`): missing, empty or
marked by an earlier run, never inside the project's sources, the model or the data root. The
run itself (papermill, the progress bar, the HTML, what a failed write leaves) is
`lib.front.notebook_run`; this module is the commands: flags, validation, exit statuses.

Paths given as flags are read from the current directory; paths inside a params file, as everywhere
in this project, from the repository root (where the notebooks run).
"""
from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

# Only the standard library at import time: --help and a usage error answer in well under a
# second. papermill, nbconvert, pandas, torch (through lib.protocol) load when a command runs.
from .notebook import ROOT
from .notebook_run import EXECUTED, InputError, RunFailed, execute, one_run

OK, FAILED, BAD_INPUT, ABOVE_LIMIT, NOT_ESTIMABLE = 0, 1, 2, 3, 4

# screen flag -> params key (flags that are paths are resolved against the current directory)
SCREEN_FLAGS = {
    "config": "config", "model": "model", "adapter": "adapter", "quantization": "quantization",
    "dataset": "dataset", "data_root": "data_root", "split": "split", "findings": "findings",
    "questions": "questions", "answer_instruction": "answer_instruction", "limit": "limit",
    "seed": "seed", "batch_size": "batch_size", "device": "device", "out": "output_dir",
    "reference_root": "reference_root",
}
PATH_FLAGS = ("data_root", "questions", "out", "reference_root")   # always paths
MAYBE_PATH_FLAGS = ("model", "adapter")          # a directory if it exists here, else a hub id


# cxr-screen --help: the docstring's usage paragraph, its `python -m lib evaluate` line left out
SCREEN_USAGE = "\n".join(line for line in __doc__.split("\n\n")[2].splitlines() if "lib evaluate" not in line)


def flag(key: str) -> str:
    return "--" + key.replace("_", "-")


FLAG_OF = {key: flag(name) for name, key in SCREEN_FLAGS.items()}   # params key -> its cxr-screen flag


# -- validation: the notebook's own checks, before any model loads ------------------------------

def validate(raw: dict, source: str, sources: dict | None = None, names: dict | None = None) -> dict:
    """`config.validate` + `preflight.check` (run from the repository root, as the notebook is);
    a ParamsError becomes an InputError whose message names the flag (``names``: source label ->
    {params key: flag}) instead of the key where the value came from a flag."""
    from ..protocol import config  # pandas: not for --help

    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        params = config.validate(raw, source=source, sources=sources)
        from ..protocol import preflight  # torch and transformers: only once the values are valid

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
    from ..protocol import config

    try:
        return config.read_file(path)
    except config.ParamsError as err:
        raise InputError(str(err)) from None


def overrides_from(pairs) -> dict:
    """`-p key value` pairs as papermill's command line reads them (True/False/None, numbers)."""
    if not pairs:
        return {}   # papermill takes seconds to import: only for a -p
    from papermill.cli import _resolve_type

    return {key: _resolve_type(value) for key, value in pairs or ()}


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
    params = validate(values, str(params_file), sources, names={"--out": {"output_dir": "--out"}})
    return params, as_validated(params, values)


def as_validated(params: dict, values: dict) -> dict:
    """The keys given, with the values validation read (`-p batch_size 0x10` is 16): the notebook
    and the written params.yaml get what was checked, not the string that was typed."""
    return {key: params[key] for key in values}


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
    logged = ", samples.jsonl" if args.log_samples and log_samples(output_dir) else ""
    print(f"{params['config']}__{params['dataset']}: outputs in {output_dir} "
          f"(summary.json, samples.parquet{logged}, {EXECUTED}, evaluate.html)")
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
    for key, value in overrides_from(args.p).items():   # -p for the keys without a flag
        if key in values:
            raise InputError(f"-p {key}: given twice; give the flag {FLAG_OF[key]} only")
        values[key] = value
    if "config" not in values:
        values["config"] = default_config_name(values)
    return values


def restrict_findings(values: dict) -> str | None:
    """A question file without --findings screens the default findings it has questions for:
    sets ``values["findings"]`` and returns the one line that says so (None when it covers them
    all, or none: preflight then names what is missing)."""
    from ..protocol import config, image_questions

    if values.get("questions") is None or "findings" in values:
        return None
    try:
        info = image_questions.check_file(values["questions"])
    except (ValueError, FileNotFoundError):
        return None   # preflight says what is wrong with the file, in one line
    default = config.DEFAULTS["findings"]
    covered = [f for f in default if f in info["findings"]]
    if info["per_image"] or not covered or covered == default:
        return None
    values["findings"] = covered
    return (f"--questions {values['questions']} asks about {', '.join(covered)} only: screening "
            f"those {len(covered)} of the {len(default)} findings (--findings to choose)")


def log_samples(output_dir: Path) -> Path:
    """samples.parquet as JSON lines, one per sample (``--log-samples``), beside it."""
    import pandas as pd

    target = output_dir / "samples.jsonl"
    pd.read_parquet(output_dir / "samples.parquet").to_json(target, orient="records", lines=True)
    return target


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
        values = screen_params(args)
        restricted = restrict_findings(values)
        source = "cxr-screen"
        names = {source: {**{key: f"-p {key}" for key, _ in args.p or ()}, **FLAG_OF}}
        params = validate(values, source, {k: "-p" for k, _ in args.p or ()}, names=names)
        values = as_validated(params, values)
        if restricted:
            print(f"cxr-screen: {restricted}", file=sys.stderr)
        params_file = output_dir_of(params) / "params.yaml"
        where = "the default reliance_checks"
    if "reference" not in params["reliance_checks"] and args.max_dangerous is not None:
        raise InputError(f"--max-dangerous needs the reference check, which {where} leaves out")
    output_dir = output_dir_of(params)
    import yaml

    from ..protocol import records
    from . import report

    with one_run(output_dir):
        if args.params is None:
            records.write_new(params_file, yaml.safe_dump(values, sort_keys=False).encode("utf-8"))
        execute(params_file, values, output_dir, progress=progress)
        if args.log_samples:
            log_samples(output_dir)
        result = report.write_report(output_dir, max_dangerous=args.max_dangerous)
    print(result["verdict_line"])
    print(f"report: {result['path']}")
    if args.max_dangerous is not None and not result["estimable"]:
        why = result["why_not_estimable"] or "the run marks it not estimable"
        print(f"cxr-screen: the image-blind rate cannot be estimated ({why}): the gate fails "
              f"closed (exit {NOT_ESTIMABLE})", file=sys.stderr)
        return NOT_ESTIMABLE
    return ABOVE_LIMIT if result["passed"] is False else OK


def compare_command(args) -> int:
    from ..protocol import records
    from . import compare

    try:
        target = compare.write_compare(args.dirs, args.out)
    except ValueError as err:
        raise InputError(str(err)) from None
    except records.OutputDirError as err:   # a folder it may not write into: the user's files
        raise InputError(f"--out: {err}") from None
    except OSError as err:                  # a full disk, a folder it cannot write
        raise RunFailed(f"cannot write {Path(args.out) / 'compare.html'} ({err.strerror or err})") from None
    print(f"compare: {target}")
    return OK


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
    parser.add_argument("--dataset", help="mimic-cxr, padchest or vindr-cxr")
    parser.add_argument("--data-root", dest="data_root", help="the dataset in its official layout")
    parser.add_argument("--split", help="official split (default: test)")
    parser.add_argument("--findings", type=comma_list, metavar="F1,F2",
                        help="findings to screen, comma-separated (default: cardiomegaly,pleural "
                             "effusion,pneumothorax,nodule, or those the --questions file covers)")
    parser.add_argument("--questions", help="question file: CSV with columns finding, prompt_id (0 = the "
                                            "original question), prompt, optional negated; or JSONL "
                                            "(default: built-in sets)")
    parser.add_argument("--reference-root", dest="reference_root",
                        help="another root in the dataset's layout to draw the opposite-label reference "
                             "images from (default: the data root's split the model did not train on)")
    parser.add_argument("--answer-instruction", dest="answer_instruction", metavar="TEXT",
                        help="appended to every question, e.g. 'Answer yes or no.' (chat models need one)")
    parser.add_argument("--limit", type=int, help="score at most N samples")
    parser.add_argument("--seed", type=int, help="seed of the run: references, null images, bootstrap (default 0)")
    parser.add_argument("--batch-size", dest="batch_size", type=int, help="samples per batch (default 16)")
    parser.add_argument("--device", help="auto (default), cpu, cuda or cuda:N")
    parser.add_argument("--config", help="short name of the configuration (default: from --model)")
    parser.add_argument("--out", help="output directory: the run's outputs and report.html")
    parser.add_argument("--max-dangerous", dest="max_dangerous", type=float,
                        help="exit 3 when the image-blind rate is above this, 4 when it cannot be "
                             "estimated (default: no limit)")
    parser.add_argument("-p", nargs=2, action="append", metavar=("KEY", "VALUE"),
                        help="any other params key, or override a key of the params file (repeatable)")
    add_run_arguments(parser)


def add_run_arguments(parser) -> None:
    parser.add_argument("--log-samples", dest="log_samples", action="store_true",
                        help="also write the per-sample rows as JSON lines (samples.jsonl)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def comma_list(text: str) -> list[str]:
    """--findings "cardiomegaly,pleural effusion" -> ["cardiomegaly", "pleural effusion"]."""
    return [part.strip() for part in text.split(",") if part.strip()]


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
    add_run_arguments(ev)
    screen = commands.add_parser("screen", help="screen one model on one dataset: report.html and a verdict",
                                 description=SCREEN_USAGE, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_screen_arguments(screen)
    add_compare_arguments(commands.add_parser("compare", help="one page over several screens: compare.html",
                                              description=COMPARE_USAGE))
    return parser


COMPARE_USAGE = ("Compare screens: their settings, Dangerous and image-blind with intervals, paired "
                 "differences over shared samples; writes OUT/compare.html.")


def add_compare_arguments(parser) -> None:
    parser.add_argument("dirs", nargs="+", metavar="DIR", help="output folders of screens or runs")
    parser.add_argument("--out", required=True, help="folder for compare.html")


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
    if args.command == "compare":
        return run(compare_command, args, "python -m lib compare")
    return run(screen_command, args, "cxr-screen")


def screen_main(argv=None) -> int:
    """The `cxr-screen` console script (the same as `python -m lib screen`; `cxr-screen compare ...`
    is `python -m lib compare ...`)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["compare"]:
        parser = Parser(prog="cxr-screen compare", description=COMPARE_USAGE)
        add_compare_arguments(parser)
        return run(compare_command, parser.parse_args(argv[1:]), "cxr-screen compare")
    parser = Parser(prog="cxr-screen", description=SCREEN_USAGE,
                    formatter_class=argparse.RawDescriptionHelpFormatter)
    add_screen_arguments(parser)
    return run(screen_command, parser.parse_args(argv), "cxr-screen")
