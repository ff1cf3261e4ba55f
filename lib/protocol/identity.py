"""The run's identity, in one place beside its records: what keys the record store, what each
record is fingerprinted by, and the hash of everything a run's results depend on.

- records_key: the record store's key, the params that change scoring (not the operational ones,
  nor those that change the summary only) and the model's and adapter's files.
- digest / file_stat: a record's fingerprint (lib.protocol.run's Job and RunUnit): its image
  file's size and mtime and its prompts, so an edited question or a rewritten image rescores
  exactly the records it touches.
- input_fingerprints: sha256 of every file the params name besides the model.
- run_hash: params (but the operational ones), model and adapter files and input fingerprints.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from . import data
from .config import OPERATIONAL, SUMMARY_ONLY


def digest(value) -> str:
    """A short sha256 of a JSON-able value."""
    return hashlib.sha256(json.dumps(value).encode()).hexdigest()[:20]


def file_stat(path) -> list | None:
    """[size, mtime in ns] of a file; None when it cannot be read (or no path is given)."""
    try:
        stat = Path(path).stat()
    except (OSError, TypeError):
        return None
    return [stat.st_size, stat.st_mtime_ns]


def sha256_file(path, chunk: int = 1 << 20) -> str:
    """sha256 of a file's bytes, read in chunks."""
    hasher = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            hasher.update(block)
    return hasher.hexdigest()


def files_fingerprint(location) -> list | None:
    """Names, sizes and mtimes (ns) of a local checkpoint's files; None for hub ids.

    Weights are fingerprinted by size + mtime, not hashed: a 7B checkpoint is 15 GB, and any
    rewrite of a file (a retrained model, a new download) changes its mtime.
    """
    if not location or not Path(location).is_dir():
        return None
    return sorted(
        (str(p.relative_to(location)), p.stat().st_size, p.stat().st_mtime_ns)
        for p in Path(location).rglob("*") if p.is_file()
    )


def records_key(params: dict) -> str:
    """The key of a run's record store: its params (but the operational ones) and the model's
    and adapter's files. Within the store each sample's record also carries the fingerprint of
    its image file and prompts (`run.Job.fingerprint`), so an edited question file or a
    repaired image rescores exactly the samples it touches; labels are never part of a record.
    """
    keyed = {k: v for k, v in params.items() if k not in OPERATIONAL + SUMMARY_ONLY}
    keyed["model_files"] = files_fingerprint(params["model"])
    keyed["adapter_files"] = files_fingerprint(params["adapter"])
    return hashlib.sha256(json.dumps(keyed, sort_keys=True, default=str).encode()).hexdigest()[:16]


def input_fingerprints(params: dict) -> dict:
    """sha256 of every file the params name besides the model: the question file, the
    dataset's official label files (those the reader reads), the twins, prompt split and box files."""
    def named(value):
        return sha256_file(value) if value and Path(value).is_file() else None

    try:
        files = data.check_layout(params["dataset"], params["data_root"],
                                  data.LabelPolicy.from_dict(params["label_policy"]),
                                  findings=tuple(params["findings"]))
    except ValueError:
        files = {}  # preflight names the problem; without label files there is nothing to hash
    reference_files = {}
    if params.get("reference_root"):
        try:
            reference_files = data.check_layout(params["dataset"], params["reference_root"],
                                                data.LabelPolicy.from_dict(params["label_policy"]),
                                                findings=tuple(params["findings"]))
        except ValueError:
            reference_files = {}
    return {"questions": named(params["questions"]),
            "label_files": {Path(p).name: sha256_file(p) for p in files.values()},
            "reference_label_files": {Path(p).name: sha256_file(p) for p in reference_files.values()},
            "twins": named(params["twins"]), "prompt_split": named(params["prompt_split"]),
            "box_file": named(params.get("box_file"))}


def run_hash(params: dict, inputs: dict | None = None) -> str:
    """Hash of everything the run's results depend on: its params, the model's and adapter's
    files and the fingerprints of every other file they name (`inputs`, computed by
    `input_fingerprints` unless given)."""
    keyed = {k: v for k, v in params.items() if k not in OPERATIONAL}
    keyed["model_files"] = files_fingerprint(params["model"])
    keyed["adapter_files"] = files_fingerprint(params["adapter"])
    keyed["inputs"] = input_fingerprints(params) if inputs is None else inputs
    blob = json.dumps(keyed, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]
