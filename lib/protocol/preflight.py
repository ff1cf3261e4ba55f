"""Every check of a run that needs no model weights, run after `config.resolve` and before any
model loads, so that a bad input costs seconds, not the minutes of loading a 7B model.

`check(params, source)` raises `config.ParamsError` with a one-line message naming the source
(file or -p), the key and the problem, for: the data root's official files and their columns,
the question file (existence, encoding, rows), the model and adapter directories (config,
tokenizer and processor files, weight formats under `allow_unsafe_weights`, remote code without
`trust_remote_code`, an adapter trained on another architecture), a writable output directory,
and prompts longer than the model's context (read from its config and processor, no weights).
"""
from __future__ import annotations

from pathlib import Path

from PIL import Image

from . import config, data, models, prompts, questions

# Size of the probe image used to count a processor's image tokens (they do not depend on the
# input size for the fixed-resolution families; tiling families get a typical radiograph tile).
PROBE_SIDE = 512


def check(params: dict, source: str = "<params>") -> None:
    """Run every check (see the module docstring)."""
    def fail(key, problem):
        raise config.ParamsError(f"{source}: key {key!r}: {problem}")

    try:
        data.check_layout(params["dataset"], params["data_root"],
                          data.LabelPolicy.from_dict(params["label_policy"]),
                          findings=tuple(params["findings"]))
    except data.DataLayoutError as err:
        fail("data_root", err)
    except ValueError as err:  # a finding without labels in this dataset
        fail("findings", err)
    if params["questions"] is not None:
        try:
            problem = coverage_problem(questions.check_file(params["questions"]), params["findings"])
        except (ValueError, FileNotFoundError) as err:
            fail("questions", err)
        if problem:
            fail("questions", problem)
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
    if params["prompt_split"]:
        try:
            questions.read_prompt_split(params["prompt_split"])
        except ValueError as err:
            fail("prompt_split", err)
    problem = output_dir_problem(params["output_dir"])
    if problem:
        fail("output_dir", problem)
    problem = prompt_length_problem(params)
    if problem:
        fail("questions", problem)


def coverage_problem(info: dict, findings) -> str | None:
    """The findings a question file (``questions.check_file``'s ``info``) has no question set
    for, in words; None when it covers them all (a per-image file is checked per image)."""
    missing = [f for f in findings if not info["per_image"] and f.strip().lower() not in info["findings"]]
    if not missing:
        return None
    return (f"{info['source']} has no question for {', '.join(missing)} (it covers "
            f"{', '.join(info['findings']) or 'no finding'}); add them to the file or screen only "
            f"the findings it covers (findings, --findings)")


def output_dir_problem(output_dir) -> str | None:
    out = Path(output_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as err:
        return f"cannot write to {out} ({err.strerror or err})"
    return None


def all_prompts(params: dict) -> list[str]:
    """Every distinct prompt text the run will score (original questions and paraphrases, with
    the params' answer_instruction)."""
    if questions.is_per_image_file(params["questions"]):
        rows = questions.load_per_image_questions(params["questions"]).values()
        texts = [p for image_rows in rows for row in image_rows for p in row["prompts"]]
    else:
        sets = questions.load_question_sets(params["questions"])
        texts = [p for finding in params["findings"]
                 for p in questions.prompts_for(finding, sets, params["max_paraphrases"])]
    return list(dict.fromkeys(questions.with_instruction(t, params["answer_instruction"]) for t in texts))


def prompt_length_problem(params: dict) -> str | None:
    """The longest prompt (with its image tokens) against the model's context, or None.

    Reads the model's config and processor only; a hub model that is not cached offline is
    left to the loader (None here).
    """
    try:
        processor = models.load_processor(params["model"], params["trust_remote_code"])
        limit = models.context_length(params["model"], params["trust_remote_code"])
    except (OSError, ValueError) as err:
        if Path(params["model"]).is_dir():
            return f"cannot read the processor of {params['model']}: {str(err).splitlines()[0]}"
        return None
    if not limit:
        return None
    texts = all_prompts(params)
    tokenizer = processor.tokenizer
    probe = Image.new("RGB", (PROBE_SIDE, PROBE_SIDE), (128, 128, 128))
    first = prompts.chat_text(processor, texts[0], with_image=True)
    image_tokens = (prompts.encode(processor, [first], images=[probe])["input_ids"].shape[1]
                    - len(tokenizer(first)["input_ids"]))
    for text in texts:
        rendered = prompts.chat_text(processor, text, with_image=True)
        n = len(tokenizer(rendered)["input_ids"]) + max(image_tokens, 0)
        if n > limit:
            shown = text if len(text) <= 60 else text[:57] + "..."
            return (f"the question {shown!r} ({len(text)} characters) is {n} tokens with its "
                    f"image; the model's context is {limit} tokens")
    return None
