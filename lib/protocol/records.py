"""The resumable, content-keyed per-sample store of a run; the lock and the atomic final files.

Records. Scored batches are written as they are computed to `<output_dir>/records/<key>/`, one
small JSON chunk per batch, written atomically (temporary name, then `os.replace`), so a run
killed at any moment (even `kill -9`) leaves only whole chunks. `<key>` is
`identity.records_key`: the params that change scoring and the model's and adapter's files. A
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
is finishing, never a mix of two runs and never a truncated file. A write that fails (a full
disk) removes its own temporary files, by their exact names, and leaves the previous set whole.

The output folder is the tool's own. `claim_output_dir` lets a run write only into a folder that
is missing, empty or carries `OUTPUT_MARKER` (written when the folder is claimed); a folder that
holds anything else, or any symbolic link at its top level, is refused (`OutputDirError`). Every
file is created with O_EXCL | O_NOFOLLOW under a fresh name and renamed into place (`write_new`),
so no write follows a link; a run removes only files it names exactly.

Damage. A chunk that cannot be read back (zero bytes after a power cut, bad JSON) is named in a
warning, moved aside into `<records>/damaged/` and its samples are scored again.
"""
from __future__ import annotations

import fcntl
import json
import os
import socket
import time
import uuid
import warnings
from pathlib import Path

import pandas as pd

KEY = ["sample_id", "prompt_id", "condition"]
# a per-run row's key (sample_id null): its condition, its image and its question
PER_RUN_KEY = ["condition", "reference_image_id", "followup_image_id", "followup_onto_image_id", "null_image", "prompt"]
# The file that marks a folder as an output folder of this tool (written when a run claims it).
OUTPUT_MARKER = ".cxr-output-folder"
MARKER_TEXT = ("This folder holds the outputs of runs of lib.protocol.run (Consistent but Dangerous).\n"
               "A run writes only into a folder that is missing, empty or carries this file, and\n"
               "replaces only the files it wrote.\n")
# what every entry of a chunk's lists holds
CHUNK_FIELDS = {"samples": ("sample_id", "fingerprint"), "skipped": ("sample_id", "fingerprint"),
                "predictions": tuple(KEY)}


class OutputDirError(OSError):
    """An output folder a run may not write into, or cannot; the message is one line naming it."""

    def _render_traceback_(self):
        return [f"OutputDirError: {self}"]


# -- writing: new files only, never through a link --------------------------------------------

def create_new(path) -> int:
    """A file descriptor of a NEW file at ``path`` (fails if anything, a link included, is there)."""
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)


def sync(path) -> None:
    """fsync a file, or a folder (so that a rename in it survives a power cut)."""
    handle = os.open(path, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


def write_new(path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically: a new temporary file beside it (O_EXCL | O_NOFOLLOW),
    fsynced, renamed over ``path`` (a rename replaces a link, never follows it), the folder
    fsynced. A failed write removes its temporary file and leaves ``path`` as it was."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        handle = create_new(tmp)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(handle, view):]
            os.fsync(handle)
        finally:
            os.close(handle)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    sync(path.parent)
    return path


# -- the output folder: the tool's own ----------------------------------------------------------

def output_dir_problem(output_dir) -> str | None:
    """Why a run may not write into ``output_dir``, or None (see the module docstring)."""
    out = Path(output_dir)
    if out.exists() and not out.is_dir():
        return f"{out} is not a folder"
    if not out.is_dir():
        return None
    entries = sorted(entry.name for entry in os.scandir(out))
    links = [name for name in entries if (out / name).is_symlink()]
    if links:
        return (f"{out / links[0]} is a symbolic link: a run never writes through one "
                f"(remove it, or choose another folder)")
    if entries and OUTPUT_MARKER not in entries and not made_before_markers(out, entries):
        return (f"{out} is not empty and is not an output folder of this tool (no {OUTPUT_MARKER}): "
                f"a run never writes among files it did not write; choose a new or empty folder")
    return None


def made_before_markers(out: Path, entries: list[str]) -> bool:
    """An output folder of a run made before folders were marked: its lock and a record store
    holding at least one chunk (a lock and an empty records/ folder can be anybody's)."""
    return ({".lock", "records"} <= set(entries) and (out / "records").is_dir()
            and any((out / "records").glob("*/chunk-*.json")))


def claim_output_dir(output_dir) -> Path:
    """Create ``output_dir`` if missing and mark it as the tool's; OutputDirError when it may not
    be written (`output_dir_problem`) or cannot be (a read-only folder, a full disk)."""
    out = Path(output_dir)
    problem = output_dir_problem(out)
    if problem:
        raise OutputDirError(problem)
    probe = out / f".write-test-{uuid.uuid4().hex[:8]}"
    try:
        out.mkdir(parents=True, exist_ok=True)
        os.close(create_new(probe))
        probe.unlink()
        if not (out / OUTPUT_MARKER).is_file():
            write_new(out / OUTPUT_MARKER, MARKER_TEXT.encode())
    except OSError as err:
        raise OutputDirError(f"cannot write to {out} ({err.strerror or err})") from None
    return out


def is_chunk(chunk) -> bool:
    """Whether a parsed chunk has the lists of `RecordStore.write`, each entry with its fields."""
    return isinstance(chunk, dict) and all(
        isinstance(chunk.get(name), list)
        and all(isinstance(entry, dict) and all(f in entry for f in fields) for entry in chunk[name])
        for name, fields in CHUNK_FIELDS.items())


class RecordStore:
    def __init__(self, output_dir, key: str):
        self.dir = Path(output_dir) / "records" / key
        for folder in (self.dir.parent, self.dir):
            if folder.is_symlink():
                raise OutputDirError(f"{folder} is a symbolic link: records are never written through one")
        self.dir.mkdir(parents=True, exist_ok=True)

    def chunks(self):
        """The chunks, oldest first; a damaged one is set aside (`set_aside`) and skipped."""
        for path in sorted(self.dir.glob("chunk-*.json"), key=lambda p: p.stat().st_mtime_ns):
            try:
                chunk = json.loads(path.read_bytes())
                if not is_chunk(chunk):
                    raise ValueError("not a chunk of records")
            except (ValueError, UnicodeDecodeError) as err:
                self.set_aside(path, err)
                continue
            yield chunk

    def set_aside(self, path: Path, err: Exception) -> Path:
        """Move a damaged chunk into `damaged/` (its samples are then scored again), saying so."""
        target = self.dir / "damaged" / path.name
        target.parent.mkdir(exist_ok=True)
        os.replace(path, target)
        reason = "empty" if target.stat().st_size == 0 else str(err).splitlines()[0][:120]
        warnings.warn(f"damaged record chunk {path} ({reason}): moved to {target}; its samples are "
                      f"scored again", RuntimeWarning, stacklevel=3)
        return target

    def index(self) -> dict[str, str]:
        """sample_id -> fingerprint of the latest record (scored or skipped) of each sample."""
        latest = {}
        for chunk in self.chunks():
            for entry in chunk["samples"] + chunk["skipped"]:
                latest[entry["sample_id"]] = entry["fingerprint"]
        return latest

    def write(self, samples: list[dict], predictions: list[dict], skipped: list[dict]) -> Path:
        """Atomically add one chunk (`write_new`: fsynced, file and folder); a crash before the
        rename leaves no trace of it.

        `samples` and `skipped` entries carry sample_id and fingerprint (skipped: also reason).
        """
        chunk = {"samples": samples, "predictions": predictions, "skipped": skipped}
        return write_new(self.dir / f"chunk-{uuid.uuid4().hex}.json", json.dumps(chunk).encode())

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
        claim_output_dir(self.path.parent)
        try:
            handle = os.fdopen(os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644), "r+")
        except OSError as err:
            raise OutputDirError(f"cannot open the lock {self.path} ({err.strerror or err})") from None
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

    All files are written under temporary names first (new files, never through a link); then
    the previous files are removed, the new ones renamed into place, the summary last (see the
    module docstring). Temporary files are removed by their exact names: those a run killed
    while writing left behind (`<name>.tmp-*` of these names only), and this write's own when it
    fails; the failure is an OutputDirError naming the folder, the previous files untouched.
    """
    out = Path(out_dir)
    names = (*tables, summary_name)
    for name in names:
        for stale in out.glob(f".{name}.tmp-*"):
            stale.unlink()  # left by a run killed while writing
    token = uuid.uuid4().hex[:8]
    staged = {name: out / f".{name}.tmp-{token}" for name in names}
    try:
        for name, table in tables.items():
            os.close(create_new(staged[name]))
            if name.endswith(".parquet"):
                table.to_parquet(staged[name], index=False)
            else:
                table.to_csv(staged[name], index=False)
            sync(staged[name])
        handle = create_new(staged[summary_name])
        with os.fdopen(handle, "w") as stream:
            stream.write(json.dumps(summary, indent=2, default=str))
            stream.flush()
            os.fsync(stream.fileno())
    except OSError as err:
        for tmp in staged.values():
            tmp.unlink(missing_ok=True)
        raise OutputDirError(f"cannot write the outputs into {out} ({err.strerror or err}); "
                             f"the previous outputs there are unchanged") from None
    for name in names:
        (out / name).unlink(missing_ok=True)
    for name in tables:
        os.replace(staged[name], out / name)
    os.replace(staged[summary_name], out / summary_name)
    sync(out)
