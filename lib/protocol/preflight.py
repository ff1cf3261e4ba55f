"""Every check of a run that needs no model weights, run after `config.resolve` and before any
model loads, so that a bad input costs seconds, not the minutes of loading a 7B model.

`check(params, source)` raises `config.ParamsError` with a one-line message naming the source
(file or -p), the key and the problem, for: the data root's official files and their columns,
the question file (existence, encoding, rows), the model and adapter directories (config,
tokenizer and processor files, weight formats under `allow_unsafe_weights`, remote code without
`trust_remote_code`, an adapter trained on another architecture), the output directory (outside
the project's sources, the model, the adapter and the data root; then claimed as the tool's own
by `records.claim_output_dir`: missing, empty or already marked, no link in it, writable), and
prompts longer than the model's context or holding the model's image token (read from its config
and processor, no weights).
"""
from __future__ import annotations

from pathlib import Path

from PIL import Image

from . import boxes, config, data, image_questions, models, prompts, questions, records

# Size of the probe image used to count a processor's image tokens (they do not depend on the
# input size for the fixed-resolution families; tiling families get a typical radiograph tile).
PROBE_SIDE = 512
# The repository root and its folders of sources: an output directory is never inside them.
PROJECT_ROOT = Path(__file__).resolve().parents[2]
SOURCE_FOLDERS = ("lib", "notebooks", "params", "tests", "docs", "bench", ".git", ".venv")


def check(params: dict, source: str = "<params>") -> None:
    """Run every check (see the module docstring)."""
    def fail(key, problem):
        raise config.ParamsError(f"{source}: key {key!r}: {problem}")

    policy, findings = data.LabelPolicy.from_dict(params["label_policy"]), tuple(params["findings"])
    try:
        data.check_rows(params["dataset"], params["data_root"], policy, findings=findings)
    except data.DataLayoutError as err:
        fail("data_root", err)
    except ValueError as err:  # a finding without labels in this dataset
        fail("findings", err)
    if params["reference_root"]:
        try:
            data.check_layout(params["dataset"], params["reference_root"], policy, findings)
        except (data.DataLayoutError, FileNotFoundError) as err:
            fail("reference_root", err)
    try:
        problem = coverage_problem(image_questions.check_file(params["questions"]), params["findings"])
    except (ValueError, FileNotFoundError) as err:
        fail("questions", err)
    if problem:   # a file lacking a finding is the file's problem; a built-in set's, the findings'
        fail("findings" if is_builtin(params["questions"]) else "questions", problem)
    problem = models.device_problem(params["device"]) if params["workers"] == 1 else None
    if problem:   # with workers > 1 the Ray actors hold the devices, not this machine
        fail("device", problem)
    try:
        models.check_model_exists(params["model"])
    except FileNotFoundError as err:
        fail("model", err)
    problem = models.checkpoint_problem(params["model"], params["allow_unsafe_weights"],
                                        params["trust_remote_code"])
    if problem:
        fail("model", problem)
    if params["adapter"]:
        try:
            models.check_model_exists(params["adapter"])
        except FileNotFoundError as err:
            fail("adapter", str(err).replace("model directory", "adapter directory"))
        problem = (models.adapter_weights_problem(params["adapter"], params["allow_unsafe_weights"])
                   or models.adapter_base_problem(params["adapter"], params["model"]))
        if problem:
            fail("adapter", problem)
    if params["twins"]:
        try:
            data.read_twins(params["twins"])
        except (data.DataLayoutError, OSError) as err:
            fail("twins", err)
    if params["box_file"]:
        try:
            boxes.check_ms_cxr(params["box_file"])
        except data.DataLayoutError as err:
            fail("box_file", err)
    if params["prompt_split"]:
        try:
            questions.read_prompt_split(params["prompt_split"])
        except ValueError as err:
            fail("prompt_split", err)
    problem = prompt_problem(params)
    if problem:
        fail(*problem)
    problem = output_dir_problem(params)  # last: it creates the folder
    if problem:
        fail("output_dir", problem)


def is_builtin(question_source) -> bool:
    """Whether a ``questions`` value names a built-in collection (None: the default one)."""
    return question_source is None or str(question_source).startswith(questions.BUILTIN_PREFIX)


def coverage_problem(info: dict, findings) -> str | None:
    """The findings a question file or built-in collection (``image_questions.check_file``'s
    ``info``) has no question set for, in words; None when it covers them all (a per-image file is
    checked per image)."""
    missing = [f for f in findings if not info["per_image"] and f.strip().lower() not in info["findings"]]
    if not missing:
        return None
    chexpert = questions.BUILTIN_PREFIX + "chexpert"
    if not is_builtin(info["source"]):
        remedy = "add them to the file"
    elif info["source"] == chexpert:
        remedy = "use a question file that covers them"
    else:
        remedy = f"use questions: {chexpert} (every CheXpert finding) or a question file"
    return (f"{info['source']} has no question for {', '.join(missing)} (it covers "
            f"{', '.join(info['findings']) or 'no finding'}); {remedy}, or screen only the findings it "
            f"covers (findings, --findings)")


def output_dir_problem(params: dict) -> str | None:
    """Why the run may not write into its output_dir (see the module docstring), else None; the
    folder is then created and marked."""
    out = Path(params["output_dir"]).expanduser().resolve()
    places = {f"the project's {name}/": PROJECT_ROOT / name for name in SOURCE_FOLDERS}
    places.update({"the model folder": params["model"], "the adapter folder": params["adapter"],
                   "the data root": params["data_root"]})
    for what, place in places.items():
        if place and Path(place).is_dir() and out.is_relative_to(Path(place).resolve()):
            return f"{params['output_dir']} is inside {what} ({place}): outputs never go there"
    try:
        records.claim_output_dir(params["output_dir"])
    except records.OutputDirError as err:
        return str(err)
    return None


def all_prompts(params: dict) -> list[str]:
    """Every distinct prompt text the run will score (original questions and paraphrases, with
    the params' answer_instruction)."""
    if image_questions.is_per_image_file(params["questions"]):
        rows = image_questions.load_per_image_questions(params["questions"]).values()
        texts = [p for image_rows in rows for row in image_rows for p in row["prompts"]]
    else:
        sets = questions.load_question_sets(params["questions"])
        texts = [p for finding in params["findings"]
                 for p in questions.prompts_for(finding, sets, params["max_paraphrases"])]
    return list(dict.fromkeys(questions.with_instruction(t, params["answer_instruction"]) for t in texts))


def prompt_problem(params: dict) -> tuple[str, str] | None:
    """(key, problem): the answer instruction or a prompt holding an image token
    (`image_token_problem`; the instruction, appended to every question, is looked at alone
    first so that the message names it), or the longest prompt (with its image tokens) against
    the model's context; None when neither.

    Reads the model's config and processor only; for a hub model that is not cached offline only
    the literal `<image>` is looked for, the length is left to the loader.
    """
    texts = all_prompts(params)
    try:
        processor = models.load_processor(params["model"], params["trust_remote_code"])
        limit = models.context_length(params["model"], params["trust_remote_code"])
    except (OSError, ValueError) as err:
        if Path(params["model"]).is_dir():
            return "questions", f"cannot read the processor of {params['model']}: {str(err).splitlines()[0]}"
        processor, limit = None, None
    instruction = params["answer_instruction"]
    for key, checked in (("answer_instruction", [instruction] if instruction else []), ("questions", texts)):
        problem = image_token_problem(checked, processor)
        if problem:
            return key, problem
    if not limit:
        return None
    tokenizer = processor.tokenizer
    probe = Image.new("RGB", (PROBE_SIDE, PROBE_SIDE), (128, 128, 128))
    first = prompts.chat_text(processor, texts[0], with_image=True)
    image_tokens = (prompts.encode(processor, [first], images=[probe])["input_ids"].shape[1]
                    - len(tokenizer(first)["input_ids"]))
    for text in texts:
        rendered = prompts.chat_text(processor, text, with_image=True)
        n = len(tokenizer(rendered)["input_ids"]) + max(image_tokens, 0)
        if n > limit:
            return "questions", (f"the question {shown(text)!r} ({len(text)} characters) is {n} tokens "
                                 f"with its image; the model's context is {limit} tokens")
    return None


def image_token_problem(texts: list[str], processor) -> str | None:
    """A question that holds `<image>` or the processor's own image markers: the processor would
    expand it into image slots no image fills (an error after the model has loaded)."""
    markers = {"<image>"}
    for owner in (processor, getattr(processor, "tokenizer", None)):
        markers |= {getattr(owner, name, None) for name in ("image_token", "boi_token")}
    markers = sorted(m for m in markers if isinstance(m, str) and m)
    for text in texts:
        for marker in markers:
            if marker in text:
                return (f"the question {shown(text)!r} holds the image token {marker!r}: the image "
                        f"goes in by itself, remove it from the question")
    return None


def shown(text: str, width: int = 60) -> str:
    return text if len(text) <= width else text[:width - 3] + "..."
