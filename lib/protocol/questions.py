"""Question sets: the original yes/no question about a finding and its paraphrases.

Owns the built-in question sets, reading and checking question files (``check_file``, before any
model loads) and the PSF-Med importer. A question set's ``prompts[0]`` is the original question
(prompt_id 0); ``prompts[j]`` is paraphrase j (prompt_id j). Each prompt also has a ``kind``
(``"original"`` for prompt 0; for paraphrases one of ``PARAPHRASE_KINDS`` or None when a file
gives none) and a ``negated`` flag: a negated paraphrase's correct answer is the OPPOSITE of the
original's (``"Is the heart normal in size?"`` for cardiomegaly), so consistency must compare the
answer it implies (``implied_answer``), not the word. The original question is never negated.
Finding names are matched case-insensitively (stored lower-case, stripped), so "Pleural Effusion"
(MIMIC CheXpert column) and "pleural effusion" (PadChest label) share one set.

Sources: the built-in sets (``BUILTIN_SETS``: ``"default"``, used when no file is given, and
``"chexpert"``, named as ``"builtin:chexpert"``), a user CSV (columns finding, prompt_id, prompt;
optional kind, negated) or JSONL file (one {"finding", "question", "paraphrases"} object per line;
a paraphrase is a string or {"text", "kind", "negated"}), or a PSF-Med style benchmark file
converted per image by ``import_psf_med``. Files must be UTF-8; every error is one line naming
the file (and line).
"""

from __future__ import annotations

import ast
import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

# Paraphrases cover lexical substitution, syntactic restructuring and negation-free rewordings,
# in a modest vocabulary because a small locally trained tokenizer reads them. These texts (and
# their order) are the offline default's: its tokenizer and models are built from them.
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

ORIGINAL = "original"
# The paraphrase kinds PSF-Med names. "negation" is a wording; whether the correct answer flips
# is the separate ``negated`` flag.
PARAPHRASE_KINDS = ("lexical", "syntactic", "negation", "scope", "specificity")
ANSWER_PRESERVING_KINDS = ("lexical", "syntactic", "scope", "specificity")

L, S, SC, SP = "lexical", "syntactic", "scope", "specificity"
# Kind of each prompt of BUILTIN_QUESTIONS (same order).
BUILTIN_KINDS: dict[str, tuple[str, ...]] = {
    "cardiomegaly": (ORIGINAL, L, S, S, L, L),
    "pleural effusion": (ORIGINAL, L, S, S, L, S),
    "pneumothorax": (ORIGINAL, L, S, S, L, S),
    "nodule": (ORIGINAL, L, S, S, S),
}

# The "chexpert" set: every CheXpert finding (No Finding aside; Lung Lesion asked as "nodule"),
# at least one answer-preserving paraphrase of each of the four kinds. The four default findings
# start with their BUILTIN_QUESTIONS prompts, in order, then add scope and specificity.
_EXTRA = {
    "cardiomegaly": (("Is the cardiac silhouette enlarged?", SC),
                     ("Is the heart wider than half of the chest?", SP)),
    "pleural effusion": (("Is there a pleural effusion on either side?", SC),
                         ("Is there any pleural effusion, small or large?", SP)),
    "pneumothorax": (("Is there a pneumothorax in either lung?", SC),
                     ("Is there any pneumothorax, even a small one?", SP)),
    "nodule": (("Is there a nodule in either lung?", SC),
               ("Is there a pulmonary nodule of any size?", SP)),
}
CHEXPERT_QUESTIONS: dict[str, tuple[tuple[str, str], ...]] = {
    **{f: (*zip(BUILTIN_QUESTIONS[f], BUILTIN_KINDS[f]), *_EXTRA[f]) for f in BUILTIN_QUESTIONS},
    "atelectasis": (
        ("Is there atelectasis?", ORIGINAL),
        ("Is part of the lung collapsed?", L),
        ("Does this chest X-ray show atelectasis?", S),
        ("Can atelectasis be seen on this radiograph?", S),
        ("Is there atelectasis in either lung?", SC),
        ("Is there any degree of atelectasis?", SP),
    ),
    "consolidation": (
        ("Is there consolidation?", ORIGINAL),
        ("Is there airspace filling in the lung?", L),
        ("Does this chest X-ray show consolidation?", S),
        ("Can consolidation be seen on this radiograph?", S),
        ("Is there consolidation in either lung?", SC),
        ("Is there any focal or diffuse consolidation?", SP),
    ),
    "edema": (
        ("Is there pulmonary edema?", ORIGINAL),
        ("Is there fluid in the lung tissue?", L),
        ("Does this chest X-ray show pulmonary edema?", S),
        ("Can pulmonary edema be seen on this radiograph?", S),
        ("Is there edema in either lung?", SC),
        ("Is there any pulmonary edema, mild or severe?", SP),
    ),
    "enlarged cardiomediastinum": (
        ("Is the cardiomediastinal silhouette enlarged?", ORIGINAL),
        ("Is the cardiomediastinal contour widened?", L),
        ("Does this chest X-ray show an enlarged cardiomediastinal silhouette?", S),
        ("Can an enlarged cardiomediastinal silhouette be seen on this radiograph?", S),
        ("Is the silhouette of the heart and mediastinum enlarged?", SC),
        ("Is the cardiomediastinal silhouette wider than normal?", SP),
    ),
    "fracture": (
        ("Is there a fracture?", ORIGINAL),
        ("Is there a broken bone?", L),
        ("Does this chest X-ray show a fracture?", S),
        ("Can a fracture be seen on this radiograph?", S),
        ("Is there a fracture of any bone in the chest?", SC),
        ("Is there any bone fracture, recent or healed?", SP),
    ),
    "pleural other": (
        ("Is there pleural thickening or a pleural plaque?", ORIGINAL),
        ("Is the pleura thickened or does it show a plaque?", L),
        ("Does this chest X-ray show pleural thickening or a pleural plaque?", S),
        ("Can pleural thickening or a pleural plaque be seen on this radiograph?", S),
        ("Is there pleural thickening or a plaque on either side?", SC),
        ("Is there any pleural abnormality other than fluid or air?", SP),
    ),
    "pneumonia": (
        ("Is there pneumonia?", ORIGINAL),
        ("Is there a lung infection?", L),
        ("Does this chest X-ray show pneumonia?", S),
        ("Can pneumonia be seen on this radiograph?", S),
        ("Is there pneumonia in either lung?", SC),
        ("Is there any pneumonia, typical or atypical?", SP),
    ),
    "lung opacity": (
        ("Is there a lung opacity?", ORIGINAL),
        ("Is there an area of increased density in the lung?", L),
        ("Does this chest X-ray show a lung opacity?", S),
        ("Can a lung opacity be seen on this radiograph?", S),
        ("Is there an opacity in either lung?", SC),
        ("Is there any abnormal opacity in the lungs?", SP),
    ),
    "support devices": (
        ("Is there a support device?", ORIGINAL),
        ("Is there a medical device?", L),
        ("Does this chest X-ray show a support device?", S),
        ("Can a support device be seen on this radiograph?", S),
        ("Is there a support device anywhere in the image?", SC),
        ("Is there a tube, line, catheter or pacemaker?", SP),
    ),
}
BUILTIN_PREFIX = "builtin:"

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
TRUE_WORDS, FALSE_WORDS = ("true", "1", "yes"), ("false", "0", "no", "")


class QuestionFileError(ValueError):
    """A question file that cannot be used; the one-line message names the file and line."""


class Prompt(NamedTuple):
    """One prompt of a set: its text, kind and whether its correct answer is the opposite."""

    text: str
    kind: str | None
    negated: bool


@dataclass(frozen=True)
class QuestionSet:
    """One finding's prompts: ``prompts[0]`` is the original question, the rest its paraphrases;
    ``kinds`` and ``negated`` run parallel to ``prompts`` (defaults: "original" then None; all False)."""

    finding: str
    prompts: tuple[str, ...]
    kinds: tuple | None = None
    negated: tuple | None = None

    def __post_init__(self):
        if not self.prompts or any(not isinstance(p, str) or not p.strip() for p in self.prompts):
            raise ValueError(f"question set {self.finding!r}: prompts must be non-empty strings")
        n = len(self.prompts)
        kinds = tuple(self.kinds) if self.kinds is not None else (ORIGINAL,) + (None,) * (n - 1)
        negated = tuple(bool(x) for x in self.negated) if self.negated is not None else (False,) * n
        if len(kinds) != n or len(negated) != n:
            raise ValueError(f"question set {self.finding!r}: kinds/negated must have one entry "
                             f"per prompt ({n})")
        bad = [k for k in kinds[1:] if k is not None and k not in PARAPHRASE_KINDS]
        if bad or kinds[0] != ORIGINAL:
            raise ValueError(f"question set {self.finding!r}: paraphrase kind must be one of "
                             f"{PARAPHRASE_KINDS} or empty, got {(bad or [kinds[0]])[0]!r}")
        if negated[0]:
            raise ValueError(f"question set {self.finding!r}: the original question cannot be negated")
        object.__setattr__(self, "kinds", kinds)
        object.__setattr__(self, "negated", negated)

    @property
    def specs(self) -> tuple[Prompt, ...]:
        return tuple(Prompt(*x) for x in zip(self.prompts, self.kinds, self.negated))


def implied_answer(answer: str, negated: bool) -> str:
    """The answer to the ORIGINAL question that ``answer`` to a (possibly negated) prompt implies."""
    if answer not in ("yes", "no"):
        raise ValueError(f"answer must be 'yes' or 'no', got {answer!r}")
    return {"yes": "no", "no": "yes"}[answer] if negated else answer


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


def builtin_sets(name: str = "default") -> dict[str, QuestionSet]:
    """A built-in collection: ``"default"`` (the offline default's 4 findings, BUILTIN_QUESTIONS)
    or ``"chexpert"`` (CHEXPERT_QUESTIONS, 13 findings)."""
    if name == "default":
        return {f: QuestionSet(f, p, BUILTIN_KINDS[f]) for f, p in BUILTIN_QUESTIONS.items()}
    if name == "chexpert":
        return {f: QuestionSet(f, tuple(t for t, _ in rows), tuple(k for _, k in rows))
                for f, rows in CHEXPERT_QUESTIONS.items()}
    raise QuestionFileError(f"unknown built-in question set {name!r} "
                            f"(known: {', '.join(BUILTIN_PREFIX + n for n in BUILTIN_SETS)})")


BUILTIN_SETS = ("default", "chexpert")


def load_question_sets(path=None) -> dict[str, QuestionSet]:
    """Question sets by (lower-case) finding: the built-in default ones for ``path=None``, a named
    built-in collection for ``"builtin:<name>"`` (``BUILTIN_SETS``), else from a ``.csv`` or
    ``.jsonl`` file (see the module docstring). Raises QuestionFileError (a ValueError) naming the
    file for a non-UTF-8 file, a malformed row (with its line), a missing column/key, a finding
    without prompt_id 0, duplicate prompt ids or findings, and an unknown extension.
    """
    if path is None:
        return builtin_sets("default")
    if isinstance(path, str) and path.startswith(BUILTIN_PREFIX):
        return builtin_sets(path[len(BUILTIN_PREFIX):])
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return _load_csv(path)
    if suffix == ".jsonl":
        return _load_jsonl(path)
    raise QuestionFileError(f"{path}: unknown question file extension {suffix!r} (expected .csv or .jsonl)")


def is_per_image_file(path) -> bool:
    """True for a .jsonl question file whose first record has an "image_id" key (a per-image
    file, as written by ``import_psf_med``); False for anything else, never raises."""
    if not path or (isinstance(path, str) and path.startswith(BUILTIN_PREFIX)):
        return False
    path = Path(path)
    if path.suffix.lower() != ".jsonl" or not path.is_file():
        return False
    try:
        for line in path.read_bytes().decode("utf-8-sig").splitlines():
            if line.strip():
                record = json.loads(line)
                return isinstance(record, dict) and "image_id" in record
    except (UnicodeDecodeError, json.JSONDecodeError, OSError):
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


def prompts_for(finding: str, question_sets: dict[str, QuestionSet],
                max_paraphrases: int | None = None) -> tuple[str, ...]:
    """The original question then at most ``max_paraphrases`` paraphrases (all for None) of ``finding``."""
    return tuple(p.text for p in prompt_specs_for(finding, question_sets, max_paraphrases))


def prompt_specs_for(finding: str, question_sets: dict[str, QuestionSet],
                     max_paraphrases: int | None = None) -> tuple[Prompt, ...]:
    """As ``prompts_for`` but each prompt as a ``Prompt(text, kind, negated)``."""
    key = _finding_key(finding)
    if key not in question_sets:
        raise KeyError(f"no question set for finding {finding!r}; known: {sorted(question_sets)}")
    if max_paraphrases is not None and max_paraphrases < 0:
        raise ValueError(f"max_paraphrases must be >= 0, got {max_paraphrases}")
    specs = question_sets[key].specs
    return specs if max_paraphrases is None else specs[: 1 + max_paraphrases]


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
        entries = [_paraphrase(p, path, f"record {line_no}")
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
            "finding": _finding_key(finding) if finding else None,
            "label": label,
            "question": question,
            "paraphrases": [e.text if e.kind is None and not e.negated else e._asdict()
                            for e in kept],
        })
        counts["kept"] += 1
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text("".join(json.dumps(r) + "\n" for r in out_rows), encoding="utf-8")
    return counts


def _finding_key(finding: str) -> str:
    return str(finding).strip().lower()


def _read_text(path: Path) -> str:
    """The file as text; non-UTF-8 bytes are a one-line error naming the file, line and byte."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(f"question file not found: {path}") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise QuestionFileError(f"{path}: line {line}: not UTF-8 text (byte 0x{data[err.start]:02x}); "
                                f"save the file as UTF-8") from None


def _truth(value, where: str) -> bool:
    """A negated flag: JSON bool, or true/false/1/0/yes/no/blank text."""
    if isinstance(value, bool) or value is None:
        return bool(value)
    text = str(value).strip().lower()
    if text in TRUE_WORDS or text in FALSE_WORDS:
        return text in TRUE_WORDS
    raise QuestionFileError(f"{where}: negated must be true or false, got {value!r}")


def _kind(value, where: str) -> str | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    kind = str(value).strip().lower()
    if kind not in PARAPHRASE_KINDS:
        raise QuestionFileError(f"{where}: kind must be one of {', '.join(PARAPHRASE_KINDS)} or empty, "
                                f"got {value!r}")
    return kind


def _paraphrase(entry, path: Path, where: str) -> Prompt:
    """A paraphrase entry (a string or {"text", "kind", "negated"}) as a Prompt."""
    at = f"{path}: {where}"
    if isinstance(entry, str):
        return Prompt(entry.strip(), None, False)
    if isinstance(entry, dict):
        unknown = sorted(set(entry) - {"text", "kind", "negated"})
        if unknown or not isinstance(entry.get("text"), str):
            raise QuestionFileError(f"{at}: a paraphrase object needs a 'text' string and may have "
                                    f"'kind' and 'negated' (got keys {sorted(entry)})")
        return Prompt(entry["text"].strip(), _kind(entry.get("kind"), at),
                      _truth(entry.get("negated"), at))
    raise QuestionFileError(f"{at}: a paraphrase must be a string or an object, got {entry!r}")


def _question_set(where: str, finding: str, specs) -> QuestionSet:
    """QuestionSet from (text, kind, negated) prompts, its validation error naming ``where``."""
    specs = list(specs)
    try:
        return QuestionSet(finding, tuple(str(s[0]).strip() for s in specs),
                           (ORIGINAL, *(s[1] for s in specs[1:])), tuple(s[2] for s in specs))
    except ValueError as err:
        raise QuestionFileError(f"{where}: {err}") from None


def _load_csv(path: Path) -> dict[str, QuestionSet]:
    """Finding sets from a CSV: finding, prompt_id, prompt (+ optional kind, negated)."""
    reader = csv.reader(io.StringIO(_read_text(path), newline=""))
    try:
        header = [h.strip() for h in next(reader)]
    except StopIteration:
        raise QuestionFileError(f"{path}: empty file (expected columns finding, prompt_id, prompt)") from None
    except csv.Error as err:
        raise QuestionFileError(f"{path}: line 1: malformed CSV ({err})") from None
    missing = [c for c in ("finding", "prompt_id", "prompt") if c not in header]
    if missing:
        raise QuestionFileError(f"{path}: missing column(s) {missing} (columns: finding, prompt_id, "
                                f"prompt; optional: kind, negated)")
    rows: dict[str, dict[int, tuple]] = {}
    first_line: dict[str, int] = {}
    while True:
        try:
            cells = next(reader)
        except StopIteration:
            break
        except csv.Error as err:
            raise QuestionFileError(f"{path}: line {reader.line_num}: malformed CSV ({err})") from None
        line = reader.line_num
        if not any(c.strip() for c in cells):
            continue
        if len(cells) != len(header):
            raise QuestionFileError(f"{path}: line {line}: {len(cells)} fields, the header has "
                                    f"{len(header)} ({', '.join(header)}); quote fields with commas")
        row = dict(zip(header, cells))
        where = f"{path}: line {line}"
        finding = _finding_key(row["finding"])
        if not finding:
            raise QuestionFileError(f"{where}: empty finding")
        try:
            prompt_id = int(row["prompt_id"].strip())
        except ValueError:
            raise QuestionFileError(f"{where}: prompt_id must be an integer, got {row['prompt_id']!r}") from None
        group = rows.setdefault(finding, {})
        first_line.setdefault(finding, line)
        if prompt_id in group:
            raise QuestionFileError(f"{where}: finding {finding!r} has duplicate prompt_id {prompt_id}")
        group[prompt_id] = (row["prompt"], _kind(row.get("kind"), where),
                            _truth(row.get("negated"), where))
    sets = {}
    for finding, group in rows.items():
        if 0 not in group:
            raise QuestionFileError(f"{path}: finding {finding!r} has no original question (prompt_id 0)")
        sets[finding] = _question_set(f"{path}: line {first_line[finding]}", finding,
                                      (group[i] for i in sorted(group)))
    return sets


def _load_jsonl(path: Path) -> dict[str, QuestionSet]:
    sets = {}
    for line_no, record in _read_jsonl(path):
        where = f"{path}: line {line_no}"
        missing = [k for k in ("finding", "question", "paraphrases") if k not in record]
        if missing:
            raise QuestionFileError(f"{where} is missing key(s) {missing}")
        finding = _finding_key(record["finding"])
        if finding in sets:
            raise QuestionFileError(f"{where}: finding {finding!r} appears twice (duplicate prompt ids)")
        if not isinstance(record["paraphrases"], list):
            raise QuestionFileError(f"{where}: 'paraphrases' must be a list")
        paraphrases = [_paraphrase(p, path, f"line {line_no}") for p in record["paraphrases"]]
        sets[finding] = _question_set(where, finding, [(record["question"], ORIGINAL, False), *paraphrases])
    return sets


def _read_jsonl(path: Path) -> list[tuple[int, dict]]:
    """(line number, object) for each non-blank line; bad JSON or bytes fail naming file and line."""
    records = []
    for line_no, line in enumerate(_read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise QuestionFileError(f"{path}: line {line_no} is not valid JSON ({err})") from None
        if not isinstance(record, dict):
            raise QuestionFileError(f"{path}: line {line_no} is not a JSON object")
        records.append((line_no, record))
    return records


def load_per_image_questions(path) -> dict[str, list[dict]]:
    """Rows of a per-image question file (as written by `import_psf_med`) grouped by image_id,
    in file order: {"finding", "label", "prompts", "kinds", "negated"} each (the last three
    parallel tuples; ``label`` answers the original question); bad rows fail, naming file and line."""
    path = Path(path)
    by_image: dict[str, list[dict]] = {}
    for line_no, row in _read_jsonl(path):
        where = f"{path}: line {line_no}"
        missing = [k for k in ("image_id", "label", "question", "paraphrases") if k not in row]
        if missing:
            raise QuestionFileError(f"{where} is missing key(s) {missing}")
        label = str(row["label"]).strip().lower()
        if label not in ("yes", "no"):
            raise QuestionFileError(f"{where}: label must be yes or no, got {row['label']!r}")
        if not isinstance(row["paraphrases"], list):
            raise QuestionFileError(f"{where}: 'paraphrases' must be a list")
        specs = [Prompt(str(row["question"]).strip(), ORIGINAL, False),
                 *(_paraphrase(p, path, f"line {line_no}") for p in row["paraphrases"])]
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


def _read_records(path: Path) -> list[dict]:
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return [record for _, record in _read_jsonl(path)]
    if suffix == ".csv":
        reader = csv.DictReader(io.StringIO(_read_text(path), newline=""))
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


def with_instruction(text: str, instruction: str | None) -> str:
    """A question with the params' answer_instruction appended (e.g. "Answer yes or no.")."""
    return f"{text} {instruction.strip()}" if instruction else text


def read_prompt_split(path) -> dict[str, dict[str, list[str]]]:
    """{finding: {"train": [...], "held_out": [...]}} from a prompt split JSON (written by the
    offline default's build: the paraphrases training may use and those no training stage
    sees); QuestionFileError (a ValueError) naming the file."""
    path = Path(path)
    try:
        split = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise QuestionFileError(f"{path}: not a readable prompt split ({err})") from None
    if not isinstance(split, dict) or not all(
            isinstance(v, dict) and isinstance(v.get("train"), list) and isinstance(v.get("held_out"), list)
            for v in split.values()):
        raise QuestionFileError(f"{path}: expected {{finding: {{\"train\": [...], \"held_out\": [...]}}}}")
    return {_finding_key(f): {part: [str(p) for p in v[part]] for part in ("train", "held_out")}
            for f, v in split.items()}
