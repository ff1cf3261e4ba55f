"""Question sets: the original yes/no question about a finding and its paraphrases.

A question set's ``prompts[0]`` is the original question (prompt_id 0); ``prompts[j]`` is
paraphrase j (prompt_id j). Finding names are matched case-insensitively (stored lower-case,
stripped), so "Pleural Effusion" (MIMIC CheXpert column) and "pleural effusion" (PadChest label)
share one set.

Sources: the built-in sets below (used when no file is given), a user CSV (columns finding,
prompt_id, prompt) or JSONL file (one {"finding", "question", "paraphrases"} object per line),
or a PSF-Med style benchmark file converted per image by ``import_psf_med``.
"""

from __future__ import annotations

import ast
import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

# Paraphrases cover lexical substitution, syntactic restructuring and negation-free rewordings,
# in a modest vocabulary because a small locally trained tokenizer reads them.
BUILTIN_QUESTIONS: dict[str, tuple[str, ...]] = {
    "cardiomegaly": (
        "Is there cardiomegaly?",
        "Is the heart enlarged?",
        "Does this chest X-ray show cardiomegaly?",
        "Can cardiomegaly be seen on this radiograph?",
        "Is the heart size increased?",
        "Does the patient have an enlarged heart?",
    ),
    "pleural effusion": (
        "Is there a pleural effusion?",
        "Is there fluid in the pleural space?",
        "Does this chest X-ray show a pleural effusion?",
        "Can a pleural effusion be seen on this radiograph?",
        "Is fluid present around the lung?",
        "Does the patient have a pleural effusion?",
    ),
    "pneumothorax": (
        "Is there a pneumothorax?",
        "Is there air in the pleural space?",
        "Does this chest X-ray show a pneumothorax?",
        "Can a pneumothorax be seen on this radiograph?",
        "Is air present outside the lung?",
        "Does the patient have a pneumothorax?",
    ),
    "nodule": (
        "Is there a lung nodule?",
        "Is there a pulmonary nodule?",
        "Does this chest X-ray show a lung nodule?",
        "Can a nodule be seen on this radiograph?",
        "Is a nodule present in the lung?",
    ),
}

AUXILIARY_VERBS = frozenset(
    "is are does do can could was were has have should will would did".split()
)

# PSF-Med column names are not published by us; these aliases cover the plausible spellings.
PSF_ALIASES = {
    "image_id": ("image_id", "dicom_id", "ImageID"),
    "question": ("question", "original_question"),
    "paraphrases": ("paraphrases", "paraphrase_list"),
    "label": ("answer", "label"),
    "finding": ("finding",),
}


@dataclass(frozen=True)
class QuestionSet:
    """One finding's prompts: ``prompts[0]`` is the original question, the rest its paraphrases."""

    finding: str
    prompts: tuple[str, ...]

    def __post_init__(self):
        if not self.prompts or any(not isinstance(p, str) or not p.strip() for p in self.prompts):
            raise ValueError(f"question set {self.finding!r}: prompts must be non-empty strings")


def is_yes_no_question(text: str) -> bool:
    """Heuristic yes/no filter: after stripping whitespace, the first word is an auxiliary verb
    (``AUXILIARY_VERBS``: is, are, does, do, can, could, was, were, has, have, should, will,
    would, did; case-insensitive) and the text ends with "?". Contractions ("Isn't ...") and
    wh-questions ("What ...") are rejected.
    """
    if not isinstance(text, str):
        return False
    text = text.strip()
    words = text.split()
    return bool(words) and words[0].lower() in AUXILIARY_VERBS and text.endswith("?")


def load_question_sets(path=None) -> dict[str, QuestionSet]:
    """Question sets by (lower-case) finding: the built-in ones for ``path=None``, else from a
    ``.csv`` or ``.jsonl`` file (see the module docstring). Raises ValueError naming the file for
    a missing column/key, a finding without prompt_id 0, duplicate prompt ids or findings, and
    an unknown extension.
    """
    if path is None:
        return {f: QuestionSet(f, prompts) for f, prompts in BUILTIN_QUESTIONS.items()}
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return _load_csv(path)
    if suffix == ".jsonl":
        return _load_jsonl(path)
    raise ValueError(f"{path}: unknown question file extension {suffix!r} (expected .csv or .jsonl)")


def prompts_for(finding: str, question_sets: dict[str, QuestionSet],
                max_paraphrases: int | None = None) -> tuple[str, ...]:
    """The original question then at most ``max_paraphrases`` paraphrases (all for None) of ``finding``."""
    key = _finding_key(finding)
    if key not in question_sets:
        raise KeyError(f"no question set for finding {finding!r}; known: {sorted(question_sets)}")
    if max_paraphrases is not None and max_paraphrases < 0:
        raise ValueError(f"max_paraphrases must be >= 0, got {max_paraphrases}")
    prompts = question_sets[key].prompts
    return prompts if max_paraphrases is None else prompts[: 1 + max_paraphrases]


def import_psf_med(path, out_path) -> dict:
    """Convert a PSF-Med style file (JSONL or CSV) into a per-image question file (JSONL).

    Input rows carry an image id, a question, its paraphrases (a list, or a JSON / Python-list
    string in CSV), a yes/no answer and optionally a finding; column names are matched through
    ``PSF_ALIASES`` because the real PSF-Med schema is not published by us. Each output line is
    {"image_id", "finding" (None when absent), "label", "question", "paraphrases"}.

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
            raise ValueError(f"{path}: missing {field!r} column (accepted names: {', '.join(aliases)})")
        names[field] = found

    counts = dict(rows_in=len(records), kept=0, dropped_not_yes_no=0, dropped_label=0, paraphrases_dropped=0)
    out_rows = []
    for record in records:
        label = str(record.get(names["label"], "")).strip().lower().rstrip(".")
        if label not in ("yes", "no"):
            counts["dropped_label"] += 1
            continue
        question = str(record.get(names["question"], "")).strip()
        if not is_yes_no_question(question):
            counts["dropped_not_yes_no"] += 1
            continue
        paraphrases = [p.strip() for p in _as_list(record.get(names["paraphrases"]), path)]
        kept = [p for p in paraphrases if is_yes_no_question(p)]
        counts["paraphrases_dropped"] += len(paraphrases) - len(kept)
        image_id = record.get(names["image_id"])
        image_id = "" if image_id is None else str(image_id).strip()
        if not image_id:
            raise ValueError(f"{path}: a row with question {question!r} has no image id")
        finding = record.get(names["finding"]) if names["finding"] else None
        out_rows.append({
            "image_id": image_id,
            "finding": _finding_key(finding) if finding else None,
            "label": label,
            "question": question,
            "paraphrases": kept,
        })
        counts["kept"] += 1
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text("".join(json.dumps(r) + "\n" for r in out_rows))
    return counts


def _finding_key(finding: str) -> str:
    return str(finding).strip().lower()


def _question_set(path: Path, finding: str, prompts) -> QuestionSet:
    """QuestionSet from stripped prompts, its validation error naming the file."""
    try:
        return QuestionSet(finding, tuple(str(p).strip() for p in prompts))
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None


def _load_csv(path: Path) -> dict[str, QuestionSet]:
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = [c for c in ("finding", "prompt_id", "prompt") if c not in frame.columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}")
    try:
        frame["prompt_id"] = frame["prompt_id"].astype(int)
    except ValueError as err:
        raise ValueError(f"{path}: prompt_id must be integers ({err})") from None
    frame["finding"] = frame["finding"].map(_finding_key)
    sets = {}
    for finding, group in frame.groupby("finding", sort=False):
        if group["prompt_id"].duplicated().any():
            dup = sorted(group.loc[group["prompt_id"].duplicated(), "prompt_id"])
            raise ValueError(f"{path}: finding {finding!r} has duplicate prompt_id(s) {dup}")
        if 0 not in set(group["prompt_id"]):
            raise ValueError(f"{path}: finding {finding!r} has no original question (prompt_id 0)")
        sets[finding] = _question_set(path, finding, group.sort_values("prompt_id")["prompt"])
    return sets


def _load_jsonl(path: Path) -> dict[str, QuestionSet]:
    sets = {}
    for line_no, record in _read_jsonl(path):
        missing = [k for k in ("finding", "question", "paraphrases") if k not in record]
        if missing:
            raise ValueError(f"{path}: line {line_no} is missing key(s) {missing}")
        finding = _finding_key(record["finding"])
        if finding in sets:
            raise ValueError(f"{path}: finding {finding!r} appears twice (duplicate prompt ids)")
        if not isinstance(record["paraphrases"], list):
            raise ValueError(f"{path}: line {line_no}: 'paraphrases' must be a list")
        sets[finding] = _question_set(path, finding, [record["question"], *record["paraphrases"]])
    return sets


def _read_jsonl(path: Path) -> list[tuple[int, dict]]:
    """(line number, object) for each non-blank line; bad JSON fails naming file and line."""
    records = []
    for line_no, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: line {line_no} is not valid JSON ({err})") from None
        if not isinstance(record, dict):
            raise ValueError(f"{path}: line {line_no} is not a JSON object")
        records.append((line_no, record))
    return records


def load_per_image_questions(path) -> dict[str, list[dict]]:
    """Rows of a per-image question file (as written by `import_psf_med`) grouped by image_id,
    in file order: {"finding", "label", "prompts"} each; bad rows fail, naming file and line."""
    path = Path(path)
    by_image: dict[str, list[dict]] = {}
    for line_no, row in _read_jsonl(path):
        missing = [k for k in ("image_id", "label", "question", "paraphrases") if k not in row]
        if missing:
            raise ValueError(f"{path}: line {line_no} is missing key(s) {missing}")
        label = str(row["label"]).strip().lower()
        if label not in ("yes", "no"):
            raise ValueError(f"{path}: line {line_no}: label must be yes or no, got {row['label']!r}")
        if not isinstance(row["paraphrases"], list):
            raise ValueError(f"{path}: line {line_no}: 'paraphrases' must be a list")
        prompts = tuple(str(p).strip() for p in [row["question"], *row["paraphrases"]])
        if not all(prompts):
            raise ValueError(f"{path}: line {line_no}: empty question or paraphrase")
        finding = row.get("finding")
        by_image.setdefault(str(row["image_id"]).strip(), []).append({
            "finding": str(finding).strip().lower() if finding else None,
            "label": label, "prompts": prompts,
        })
    return by_image


def _read_records(path: Path) -> list[dict]:
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return [record for _, record in _read_jsonl(path)]
    if suffix == ".csv":
        return pd.read_csv(path, dtype=str, keep_default_na=False).to_dict("records")
    raise ValueError(f"{path}: unknown PSF-Med file extension {suffix!r} (expected .csv or .jsonl)")


def _as_list(value, path: Path) -> list[str]:
    """Paraphrases as a list: a list as is; a JSON or Python-list string parsed; empty -> []."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return []
    if isinstance(value, list):
        return [str(v) for v in value]
    if isinstance(value, str):
        for parse in (json.loads, ast.literal_eval):
            try:
                parsed = parse(value)
            except (ValueError, SyntaxError):
                continue
            if isinstance(parsed, list):
                return [str(v) for v in parsed]
    raise ValueError(f"{path}: paraphrases value {value!r} is not a list")
