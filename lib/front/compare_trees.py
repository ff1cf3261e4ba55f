"""`make compare-outputs A=DIR B=DIR [TOL=x]`: are two output trees the same runs' results?

A run is a folder holding summary.json, named by its path relative to the tree (e.g.
`runs/llava-base__padchest`). Two runs of one name are compared file by file:

- predictions.parquet and samples.parquet: rows matched by their key (`records.KEY` plus the
  image ids a row was scored with, for predictions; sample_id for samples; rows sharing a key
  are matched in file order); every column
  compared, numbers as equal when ``|a - b| <= tol`` (NaN equals NaN), the rest exactly;
- summary.json: every leaf (a number, string, boolean or null, by its dotted path such as
  `ci95.flip_rate[0]`), numbers within ``tol``; the provenance keys (`PROVENANCE`: the params
  with their paths, input fingerprints, package versions, commit, machine, timing, reuse
  counts, run hash) are left out, since they differ between two checkouts of the same results.

A run in one tree only is a difference too. Exit status 1 when anything differs (each
difference one line naming the run, the file and the key), 0 when nothing does.

    python -m lib.front.compare_trees A B [--tol 0]
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import pandas as pd

from ..protocol import records

PROVENANCE = ("params", "inputs", "packages", "git_commit", "machine", "engine", "records", "run_hash")
TABLES = {"predictions.parquet": tuple(dict.fromkeys([*records.KEY, *records.PER_RUN_KEY])),
          "samples.parquet": ("sample_id",)}
SUMMARY = "summary.json"


def runs_of(tree: Path) -> dict[str, Path]:
    """The run folders below ``tree`` by their relative path (a folder holding summary.json)."""
    return {str(path.parent.relative_to(tree)): path.parent for path in sorted(tree.rglob(SUMMARY))}


def same(a, b, tol: float) -> bool:
    """Two values equal: numbers within ``tol`` (NaN equals NaN; booleans exactly), the rest by ==."""
    numbers = [isinstance(v, (int, float)) and not isinstance(v, bool) for v in (a, b)]
    if all(numbers):
        return (math.isnan(a) and math.isnan(b)) or abs(a - b) <= tol
    if any(v is None or (isinstance(v, float) and math.isnan(v)) for v in (a, b)):
        return (a is None or a != a) and (b is None or b != b)   # None and NaN: both missing
    return a == b


def leaves(value, path: str = "") -> dict:
    """A JSON value as {dotted path: leaf}: `ci95.flip_rate[0]` -> 0.12."""
    if isinstance(value, dict):
        return {k: v for key, item in value.items() for k, v in leaves(item, f"{path}.{key}" if path else key).items()}
    if isinstance(value, list):
        return {k: v for i, item in enumerate(value) for k, v in leaves(item, f"{path}[{i}]").items()}
    return {path: value}


def compare_summaries(a: Path, b: Path, tol: float) -> list[str]:
    """One line per summary key (provenance left out) whose values differ or that one side lacks."""
    left, right = (leaves({k: v for k, v in json.loads(p.read_text()).items() if k not in PROVENANCE})
                   for p in (a, b))
    lines = [f"{key}: {left.get(key, '(missing)')!r} != {right.get(key, '(missing)')!r}"
             for key in sorted(set(left) | set(right))
             if key not in left or key not in right or not same(left[key], right[key], tol)]
    return [f"{SUMMARY}: {line}" for line in lines]


def compare_tables(a: Path, b: Path, key_columns, tol: float) -> list[str]:
    """One line per column whose values differ on matched rows (how many, the first row's key),
    and one for rows present on one side only."""
    left, right = pd.read_parquet(a), pd.read_parquet(b)
    key = [c for c in key_columns if c in left.columns and c in right.columns]
    name = a.name
    lines = []
    if set(left.columns) != set(right.columns):
        lines.append(f"{name}: columns differ: only in A {sorted(set(left.columns) - set(right.columns))}, "
                     f"only in B {sorted(set(right.columns) - set(left.columns))}")
    # rows sharing a key (if any) are matched in file order: the n-th with the n-th
    left, right = (t.assign(_nth=t.groupby(key, dropna=False, sort=False).cumcount()) for t in (left, right))
    merged = left.merge(right, on=[*key, "_nth"], how="outer", suffixes=("_a", "_b"), indicator=True)
    for side, label in (("left_only", "A"), ("right_only", "B")):
        only = merged[merged["_merge"] == side]
        if len(only):
            lines.append(f"{name}: {len(only)} row(s) only in {label}, first {row_key(only.iloc[0], key)}")
    both = merged[merged["_merge"] == "both"]
    for column in sorted((set(left.columns) & set(right.columns)) - {*key, "_nth"}):
        differ = [i for i, (x, y) in enumerate(zip(both[f"{column}_a"], both[f"{column}_b"]))
                  if not same(plain(x), plain(y), tol)]
        if differ:
            first = both.iloc[differ[0]]
            lines.append(f"{name}: {column} differs in {len(differ)} of {len(both)} rows, first "
                         f"{row_key(first, key)}: {plain(first[column + '_a'])!r} != "
                         f"{plain(first[column + '_b'])!r}")
    return lines


def plain(value):
    """A cell as a plain Python value (numpy scalars to int/float/bool, pandas' NA to None)."""
    if value is pd.NA or value is None:
        return None
    return value.item() if hasattr(value, "item") else value


def row_key(row, key) -> str:
    return ", ".join(f"{c}={row[c]}" for c in key)


def compare_runs(a: Path, b: Path, tol: float = 0.0) -> list[str]:
    """The differences between two run folders (the files of ``TABLES`` and summary.json)."""
    lines = compare_summaries(a / SUMMARY, b / SUMMARY, tol)
    for file, key in TABLES.items():
        present = [(folder / file).is_file() for folder in (a, b)]
        if all(present):
            lines += compare_tables(a / file, b / file, key, tol)
        elif any(present):
            lines.append(f"{file}: only in {'A' if present[0] else 'B'}")
    return lines


def compare_trees(a, b, tol: float = 0.0) -> dict[str, list[str]]:
    """{run: its differences} for every run of either tree that differs (empty: the same)."""
    a, b = Path(a), Path(b)
    runs_a, runs_b = runs_of(a), runs_of(b)
    found = {}
    for run in sorted(set(runs_a) | set(runs_b)):
        if run not in runs_b or run not in runs_a:
            found[run] = [f"only in {'A' if run in runs_a else 'B'} ({(runs_a.get(run) or runs_b[run])})"]
        elif lines := compare_runs(runs_a[run], runs_b[run], tol):
            found[run] = lines
    return found


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lib.front.compare_trees", description=__doc__.split("\n\n")[0])
    parser.add_argument("a", type=Path, help="an output tree (e.g. outputs/ of one checkout)")
    parser.add_argument("b", type=Path, help="the other output tree")
    parser.add_argument("--tol", type=float, default=0.0, help="largest |a - b| of two equal numbers (default 0: exact)")
    args = parser.parse_args(argv)
    for tree in (args.a, args.b):
        if not tree.is_dir():
            parser.exit(2, f"{parser.prog}: {tree}: not a folder\n")
    n_runs = len(set(runs_of(args.a)) | set(runs_of(args.b)))
    if n_runs == 0:
        parser.exit(2, f"{parser.prog}: no {SUMMARY} below {args.a} or {args.b}: no runs to compare\n")
    found = compare_trees(args.a, args.b, args.tol)
    for run, lines in found.items():
        print(f"{run}:\n" + "".join(f"  {line}\n" for line in lines), end="")
    print(f"{len(found)} of {n_runs} run(s) differ (tolerance {args.tol:g})" if found
          else f"the same: {n_runs} run(s) (tolerance {args.tol:g})")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
