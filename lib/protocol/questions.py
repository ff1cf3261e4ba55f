"""Question sets: the original yes/no question about a finding and its paraphrases.

Owns the built-in question sets and reading finding-set files (CSV, JSONL); per-image question
files and the check of any ``questions`` value are `lib.protocol.image_questions`, the PSF-Med
importer `lib.protocol.psf_med`. One concept, the question set; the module is long because the
built-in texts (``BUILTIN_QUESTIONS``, ``CHEXPERT_QUESTIONS``) are data kept beside their kinds.
A question set's ``prompts[0]`` is the original question
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
a paraphrase is a string or {"text", "kind", "negated"}: ``paraphrase_prompt``, shared with
per-image files). Files must be UTF-8; every error is one line naming the file (and line).
"""
from __future__ import annotations

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

TRUE_WORDS, FALSE_WORDS = ("true", "1", "yes"), ("false", "0", "no", "")
# A CSV prompt_id numbers a finding's paraphrases (PSF-Med has tens); a larger one is a typo or
# another column pasted in, not a question set.
MAX_PROMPT_ID = 9999


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
    file for a non-UTF-8 file, a malformed row (with its line: bad or too deeply nested JSON, a
    prompt_id not in 0..MAX_PROMPT_ID, a question that is not a non-empty string), a missing or
    repeated column, a missing key, a finding without prompt_id 0, duplicate prompt ids or
    findings, and an unknown extension.
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


def prompts_for(finding: str, question_sets: dict[str, QuestionSet],
                max_paraphrases: int | None = None) -> tuple[str, ...]:
    """The original question then at most ``max_paraphrases`` paraphrases (all for None) of ``finding``."""
    return tuple(p.text for p in prompt_specs_for(finding, question_sets, max_paraphrases))


def prompt_specs_for(finding: str, question_sets: dict[str, QuestionSet],
                     max_paraphrases: int | None = None) -> tuple[Prompt, ...]:
    """As ``prompts_for`` but each prompt as a ``Prompt(text, kind, negated)``."""
    key = finding_key(finding)
    if key not in question_sets:
        raise KeyError(f"no question set for finding {finding!r}; known: {sorted(question_sets)}")
    specs = question_sets[key].specs
    return specs if max_paraphrases is None else specs[: 1 + max_paraphrases]


def finding_key(finding: str) -> str:
    """How a finding names its question set: stripped, lower-case."""
    return str(finding).strip().lower()


def read_text(path: Path) -> str:
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


def paraphrase_prompt(entry, path: Path, where: str) -> Prompt:
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


def _shown(value) -> str:
    """A JSON value as the file spells it, short: null, 3, true, "", or a list / an object."""
    if isinstance(value, (list, dict)):
        return "a list" if isinstance(value, list) else "an object"
    return json.dumps(value)[:60]


def prompt_text(value, where: str, field: str) -> str:
    """A question's text, stripped; anything but a non-empty string (a JSON null or number is
    not one: it would be asked as the text "None") fails naming ``where`` and ``field``."""
    if not isinstance(value, str) or not value.strip():
        raise QuestionFileError(f"{where}: {field} must be a non-empty string, got {_shown(value)}")
    return value.strip()


def _prompt_id(value: str, where: str) -> int:
    """A CSV prompt_id: plain digits, 0 (the original question) to MAX_PROMPT_ID; a negative id
    would sort first and silently become the original question."""
    text = value.strip()
    if not (text.isascii() and text.isdigit()) or int(text) > MAX_PROMPT_ID:
        raise QuestionFileError(f"{where}: prompt_id must be an integer from 0 (the original question) "
                                f"to {MAX_PROMPT_ID}, got {value!r}")
    return int(text)


def _check_header(header: list[str], path: Path) -> None:
    """The CSV header has the required columns, each once (csv rows as dicts keep the last of a
    repeated column, silently); unnamed columns are never read, so they may repeat."""
    missing = [c for c in ("finding", "prompt_id", "prompt") if c not in header]
    if missing:
        raise QuestionFileError(f"{path}: missing column(s) {missing} (columns: finding, prompt_id, "
                                f"prompt; optional: kind, negated)")
    repeated = [c for i, c in enumerate(header) if c and c in header[:i]]
    if repeated:
        raise QuestionFileError(f"{path}: line 1: column {repeated[0]!r} appears more than once in the header")


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
    reader = csv.reader(io.StringIO(read_text(path), newline=""))
    try:
        header = [h.strip() for h in next(reader)]
    except StopIteration:
        raise QuestionFileError(f"{path}: empty file (expected columns finding, prompt_id, prompt)") from None
    except csv.Error as err:
        raise QuestionFileError(f"{path}: line 1: malformed CSV ({err})") from None
    _check_header(header, path)
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
        finding = finding_key(row["finding"])
        if not finding:
            raise QuestionFileError(f"{where}: empty finding")
        prompt_id = _prompt_id(row["prompt_id"], where)
        group = rows.setdefault(finding, {})
        first_line.setdefault(finding, line)
        if prompt_id in group:
            raise QuestionFileError(f"{where}: finding {finding!r} has duplicate prompt_id {prompt_id}")
        group[prompt_id] = (prompt_text(row["prompt"], where, "prompt"), _kind(row.get("kind"), where),
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
    for line_no, record in read_jsonl(path):
        where = f"{path}: line {line_no}"
        missing = [k for k in ("finding", "question", "paraphrases") if k not in record]
        if missing:
            raise QuestionFileError(f"{where} is missing key(s) {missing}")
        finding = finding_key(prompt_text(record["finding"], where, "'finding'"))   # null is not "none"
        if finding in sets:
            raise QuestionFileError(f"{where}: finding {finding!r} appears twice (duplicate prompt ids)")
        if not isinstance(record["paraphrases"], list):
            raise QuestionFileError(f"{where}: 'paraphrases' must be a list")
        paraphrases = [paraphrase_prompt(p, path, f"line {line_no}") for p in record["paraphrases"]]
        question = prompt_text(record["question"], where, "'question'")
        sets[finding] = _question_set(where, finding, [(question, ORIGINAL, False), *paraphrases])
    return sets


def read_jsonl(path: Path) -> list[tuple[int, dict]]:
    """(line number, object) for each non-blank line; bad JSON or bytes fail naming file and line."""
    return list(iter_jsonl(path))


def iter_jsonl(path: Path):
    """``read_jsonl`` one line at a time (a caller that needs only the first record parses only it)."""
    for line_no, line in enumerate(read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise QuestionFileError(f"{path}: line {line_no} is not valid JSON ({err})") from None
        except RecursionError:  # e.g. '[' * 100000: the decoder's depth limit, not a bug here
            raise QuestionFileError(f"{path}: line {line_no}: JSON nested too deeply") from None
        if not isinstance(record, dict):
            raise QuestionFileError(f"{path}: line {line_no} is not a JSON object")
        yield line_no, record


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
    except (OSError, ValueError, RecursionError) as err:   # RecursionError: JSON nested too deeply
        raise QuestionFileError(f"{path}: not a readable prompt split ({err or type(err).__name__})") from None
    if not isinstance(split, dict) or not all(
            isinstance(v, dict) and isinstance(v.get("train"), list) and isinstance(v.get("held_out"), list)
            for v in split.values()):
        raise QuestionFileError(f"{path}: expected {{finding: {{\"train\": [...], \"held_out\": [...]}}}}")
    return {finding_key(f): {part: [str(p) for p in v[part]] for part in ("train", "held_out")}
            for f, v in split.items()}
