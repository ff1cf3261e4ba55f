"""The PSF-Med importer: a PSF-Med style benchmark file (JSONL or CSV) converted into a per-image
question file (`lib.protocol.image_questions`), keeping yes/no questions only.
"""
from __future__ import annotations

import ast
import csv
import io
import json
from pathlib import Path

from .questions import (QuestionFileError, finding_key, is_yes_no_question, paraphrase_prompt,
                        read_jsonl, read_text)

# PSF-Med column names are not published by us; these aliases cover the plausible spellings.
PSF_ALIASES = {
    "image_id": ("image_id", "dicom_id", "ImageID"),
    "question": ("question", "original_question"),
    "paraphrases": ("paraphrases", "paraphrase_list"),
    "label": ("answer", "label"),
    "finding": ("finding",),
}


def import_psf_med(path, out_path) -> dict:
    """Convert a PSF-Med style file (JSONL or CSV) into a per-image question file (JSONL).

    Input rows carry an image id, a question, its paraphrases (a list, or a JSON / Python-list
    string in CSV; an entry may be a string or {"text", "kind", "negated"}), a yes/no answer and
    optionally a finding; column names are matched through ``PSF_ALIASES`` because the real
    PSF-Med schema is not published by us. Each output line is {"image_id", "finding" (None when
    absent), "label", "question", "paraphrases"}; a paraphrase with a kind or negated flag stays
    an object {"text", "kind", "negated"}, others are strings.

    Filtering, in this order: a row whose answer is not yes/no (case-insensitive, a trailing
    "." ignored) is dropped (``dropped_label``); a row whose question fails
    ``is_yes_no_question`` is dropped (``dropped_not_yes_no``); in kept rows, paraphrases that
    fail it are removed (``paraphrases_dropped``). Returns those counts with ``rows_in`` and
    ``kept``.
    """
    path, out_path = Path(path), Path(out_path)
    records = _read_records(path)
    columns = set().union(*(r.keys() for r in records)) if records else set()
    names = {}
    for field, aliases in PSF_ALIASES.items():
        found = next((a for a in aliases if a in columns), None)
        if found is None and field != "finding":
            raise QuestionFileError(f"{path}: missing {field!r} column (accepted names: {', '.join(aliases)})")
        names[field] = found

    counts = dict(rows_in=len(records), kept=0, dropped_not_yes_no=0, dropped_label=0, paraphrases_dropped=0)
    out_rows = []
    for line_no, record in enumerate(records, start=1):
        label = str(record.get(names["label"], "")).strip().lower().rstrip(".")
        if label not in ("yes", "no"):
            counts["dropped_label"] += 1
            continue
        question = str(record.get(names["question"], "")).strip()
        if not is_yes_no_question(question):
            counts["dropped_not_yes_no"] += 1
            continue
        entries = [paraphrase_prompt(p, path, f"record {line_no}")
                   for p in _as_list(record.get(names["paraphrases"]), path)]
        kept = [e for e in entries if is_yes_no_question(e.text)]
        counts["paraphrases_dropped"] += len(entries) - len(kept)
        image_id = record.get(names["image_id"])
        image_id = "" if image_id is None else str(image_id).strip()
        if not image_id:
            raise QuestionFileError(f"{path}: a row with question {question!r} has no image id")
        finding = record.get(names["finding"]) if names["finding"] else None
        out_rows.append({
            "image_id": image_id,
            "finding": finding_key(finding) if finding else None,
            "label": label,
            "question": question,
            "paraphrases": [e.text if e.kind is None and not e.negated else e._asdict()
                            for e in kept],
        })
        counts["kept"] += 1
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text("".join(json.dumps(r) + "\n" for r in out_rows), encoding="utf-8")
    return counts


def _read_records(path: Path) -> list[dict]:
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return [record for _, record in read_jsonl(path)]
    if suffix == ".csv":
        reader = csv.DictReader(io.StringIO(read_text(path), newline=""))
        try:
            return [{k: (v if v is not None else "") for k, v in row.items() if k is not None}
                    for row in reader]
        except csv.Error as err:
            raise QuestionFileError(f"{path}: line {reader.line_num}: malformed CSV ({err})") from None
    raise QuestionFileError(f"{path}: unknown PSF-Med file extension {suffix!r} (expected .csv or .jsonl)")


def _as_list(value, path: Path) -> list:
    """Paraphrases as a list: a list as is; a JSON or Python-list string parsed; empty -> []."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return []
    if isinstance(value, list):
        return [v if isinstance(v, dict) else str(v) for v in value]
    if isinstance(value, str):
        for parse in (json.loads, ast.literal_eval):
            try:
                parsed = parse(value)
            except (ValueError, SyntaxError):
                continue
            if isinstance(parsed, list):
                return [v if isinstance(v, dict) else str(v) for v in parsed]
    raise QuestionFileError(f"{path}: paraphrases value {value!r} is not a list")
