"""The resumable, content-keyed per-sample store of a run; the lock and the atomic final files.

Records. Scored batches are written as they are computed to `<output_dir>/records/<key>/`, one
small JSON chunk per batch, written atomically (temporary name, then `os.replace`), so a run
killed at any moment (even `kill -9`) leaves only whole chunks. `<key>` is
`config.records_key`: the params that change scoring and the model's and adapter's files. A
chunk holds, for each sample of the batch, its `fingerprint` (`run.Job.fingerprint`: the
image file's size and mtime, the prompt texts, the swap image), its prediction rows keyed by (sample_id,
prompt_id, condition), and the samples skipped for an unreadable image with the same
fingerprint. A record is reused only while the sample's fingerprint is unchanged: an edited
paraphrase, a repaired or replaced image rescore exactly the samples they touch. Labels are not
part of a record: the samples table is always built from what the reader yields now.

Lock. `OutputLock` holds an exclusive `flock` on `<output_dir>/.lock` for the whole run; a second
run into the same directory stops at once with a message naming the holder. The OS drops the
lock of a killed process, so a stale lock file is simply taken over (and reported).

Final files. `write_atomically` writes every output under a temporary name first, then removes
the previous run's files, renames the new ones into place and the summary last: a reader sees
either the previous complete set, or a subset of ONE run's files without a summary while a run
is finishing, never a mix of two runs and never a truncated file.
"""
from __future__ import annotations

import fcntl
import json
import os
import socket
import time
import uuid
from pathlib import Path

import pandas as pd

KEY = ["sample_id", "prompt_id", "condition"]


class RecordStore:
    def __init__(self, output_dir, key: str):
        self.dir = Path(output_dir) / "records" / key
        self.dir.mkdir(parents=True, exist_ok=True)

    def chunks(self):
        for path in sorted(self.dir.glob("chunk-*.json"), key=lambda p: p.stat().st_mtime_ns):
            yield json.loads(path.read_text())

    def index(self) -> dict[str, str]:
        """sample_id -> fingerprint of the latest record (scored or skipped) of each sample."""
        latest = {}
        for chunk in self.chunks():
            for entry in chunk["samples"] + chunk["skipped"]:
                latest[entry["sample_id"]] = entry["fingerprint"]
        return latest

    def write(self, samples: list[dict], predictions: list[dict], skipped: list[dict]) -> Path:
        """Atomically add one chunk; a crash before the rename leaves no trace of it.

        `samples` and `skipped` entries carry sample_id and fingerprint (skipped: also reason).
        """
        name = f"chunk-{uuid.uuid4().hex}.json"
        tmp = self.dir / f".{name}.tmp"
        tmp.write_text(json.dumps({"samples": samples, "predictions": predictions, "skipped": skipped}))
        os.replace(tmp, self.dir / name)
        return self.dir / name

    def tables(self, fingerprints: dict[str, str]) -> tuple[pd.DataFrame, list[dict]]:
        """(prediction rows, image skips) of the given samples whose records match their
        fingerprint; later chunks win when a sample was written twice."""
        rows, skipped = {}, {}
        for chunk in self.chunks():
            current = {s["sample_id"] for s in chunk["samples"]
                       if fingerprints.get(s["sample_id"]) == s["fingerprint"]}
            for sid in current:
                skipped.pop(sid, None)
            for row in chunk["predictions"]:
                if row["sample_id"] in current:
                    rows[(row["sample_id"], row["prompt_id"], row["condition"])] = row
            for entry in chunk["skipped"]:
                if fingerprints.get(entry["sample_id"]) == entry["fingerprint"]:
                    skipped[entry["sample_id"]] = entry
                    for key in [k for k in rows if k[0] == entry["sample_id"]]:
                        rows.pop(key)
        predictions = pd.DataFrame(list(rows.values()))
        if not predictions.empty:
            predictions = predictions.sort_values(KEY, ignore_index=True)
        return predictions, list(skipped.values())


# -- one run at a time per output directory ------------------------------------------------------

class OutputLockedError(RuntimeError):
    """Another live run holds the output directory."""

    def _render_traceback_(self):
        return [f"OutputLockedError: {self}"]


class OutputLock:
    """Exclusive lock on `<output_dir>/.lock` (see the module docstring)."""

    def __init__(self, output_dir):
        self.path = Path(output_dir) / ".lock"
        self.handle = None
        self.took_over = None

    def __enter__(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(self.path, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise OutputLockedError(
                f"output_dir {self.path.parent} is in use by {holder}; wait for it to finish "
                f"or choose another output_dir") from None
        handle.seek(0)
        self.took_over = handle.read().strip() or None  # left by a run that was killed
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()} since "
                     f"{time.strftime('%Y-%m-%d %H:%M:%S')}")
        handle.flush()
        self.handle = handle
        return self

    def __exit__(self, *exc):
        self.handle.truncate(0)
        fcntl.flock(self.handle, fcntl.LOCK_UN)
        self.handle.close()
        return False


# -- the final files --------------------------------------------------------------------------

def write_atomically(out_dir, tables: dict[str, pd.DataFrame], summary: dict,
                     summary_name: str = "summary.json") -> None:
    """Write `tables` (file name -> table; .parquet or .csv) and the summary as one unit.

    All files are written under temporary names first; then the previous files are removed,
    the new ones renamed into place, the summary last (see the module docstring).
    """
    out = Path(out_dir)
    for stale in out.glob(".*.tmp-*"):
        stale.unlink()  # left by a run killed while writing
    token = uuid.uuid4().hex[:8]
    staged = {}
    for name, table in tables.items():
        tmp = out / f".{name}.tmp-{token}"
        if name.endswith(".parquet"):
            table.to_parquet(tmp, index=False)
        else:
            table.to_csv(tmp, index=False)
        staged[name] = tmp
    tmp_summary = out / f".{summary_name}.tmp-{token}"
    tmp_summary.write_text(json.dumps(summary, indent=2, default=str))
    for name in (summary_name, *staged):
        (out / name).unlink(missing_ok=True)
    for name, tmp in staged.items():
        os.replace(tmp, out / name)
    os.replace(tmp_summary, out / summary_name)
