"""Per-image question files: JSONL rows that each carry an image id, a yes/no label, a question
and its paraphrases (as written by `lib.protocol.psf_med.import_psf_med`), and ``check_file``,
the one check of any ``questions`` value before a model loads (it is the place that tells the two
kinds of question file apart: finding sets, read by `lib.protocol.questions`, and per-image rows).

A row's paraphrase is a string or {"text", "kind", "negated"}, read as in a finding-set file
(`questions.paraphrase_prompt`); every error is one line naming the file and line.
"""
from __future__ import annotations

from pathlib import Path

from .questions import (BUILTIN_PREFIX, ORIGINAL, Prompt, QuestionFileError, iter_jsonl,
                        load_question_sets, paraphrase_prompt, prompt_text, read_jsonl)


def is_per_image_file(path) -> bool:
    """True for a .jsonl question file whose first record has an "image_id" key (a per-image
    file, as written by ``import_psf_med``); False for anything else, never raises."""
    if not path or (isinstance(path, str) and path.startswith(BUILTIN_PREFIX)):
        return False
    path = Path(path)
    if path.suffix.lower() != ".jsonl" or not path.is_file():
        return False
    try:  # a file that cannot be read is a finding-set file here; its reader names the problem
        for _, record in iter_jsonl(path):
            return "image_id" in record
    except (QuestionFileError, OSError):
        return False
    return False


def check_file(path) -> dict:
    """Check a ``questions`` value fully, before any model loads: None / "builtin:<name>" / a
    finding-set file / a per-image file. Returns {"source", "per_image", "findings", "prompts",
    "negated", "longest_prompt"} (counts of prompts and negated prompts; the longest prompt text);
    raises QuestionFileError (one line naming file, line and problem) or FileNotFoundError."""
    if path is not None and not (isinstance(path, str) and path.startswith(BUILTIN_PREFIX)):
        if not Path(path).is_file():
            raise FileNotFoundError(f"question file not found: {path}")
    if is_per_image_file(path):
        rows = [row for rows in load_per_image_questions(path).values() for row in rows]
        prompts = [(p, n) for row in rows for p, n in zip(row["prompts"], row["negated"])]
        findings = sorted({row["finding"] for row in rows if row["finding"]})
        per_image = True
    else:
        sets = load_question_sets(path)
        prompts = [(p, n) for qset in sets.values() for p, n in zip(qset.prompts, qset.negated)]
        findings, per_image = sorted(sets), False
    return {"source": str(path) if path is not None else BUILTIN_PREFIX + "default",
            "per_image": per_image, "findings": findings, "prompts": len(prompts),
            "negated": sum(n for _, n in prompts),
            "longest_prompt": max((p for p, _ in prompts), key=len, default="")}


def load_per_image_questions(path) -> dict[str, list[dict]]:
    """Rows of a per-image question file (as written by `import_psf_med`) grouped by image_id,
    in file order: {"finding", "label", "prompts", "kinds", "negated"} each (the last three
    parallel tuples; ``label`` answers the original question); bad rows fail, naming file and line."""
    path = Path(path)
    by_image: dict[str, list[dict]] = {}
    for line_no, row in read_jsonl(path):
        where = f"{path}: line {line_no}"
        missing = [k for k in ("image_id", "label", "question", "paraphrases") if k not in row]
        if missing:
            raise QuestionFileError(f"{where} is missing key(s) {missing}")
        label = str(row["label"]).strip().lower()
        if label not in ("yes", "no"):
            raise QuestionFileError(f"{where}: label must be yes or no, got {row['label']!r}")
        if not isinstance(row["paraphrases"], list):
            raise QuestionFileError(f"{where}: 'paraphrases' must be a list")
        specs = [Prompt(prompt_text(row["question"], where, "'question'"), ORIGINAL, False),
                 *(paraphrase_prompt(p, path, f"line {line_no}") for p in row["paraphrases"])]
        if not all(s.text for s in specs):
            raise QuestionFileError(f"{where}: empty question or paraphrase")
        image_id = str(row["image_id"]).strip()
        if not image_id:
            raise QuestionFileError(f"{where}: empty image_id")
        finding = row.get("finding")
        by_image.setdefault(image_id, []).append({
            "finding": str(finding).strip().lower() if finding else None,
            "label": label, "prompts": tuple(s.text for s in specs),
            "kinds": tuple(s.kind for s in specs), "negated": tuple(s.negated for s in specs),
        })
    return by_image
