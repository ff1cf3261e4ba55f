"""The run's samples, decided once: dataset rows (the reader's samples of each finding, asked that
finding's question set) or, with a per-image question file (PSF-Med), that file's rows joined with
the reader's images, each carrying its own prompts; and each sample's prompts, original first.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass

from . import data, image_questions, questions


def stream_samples(params: dict, skipped: data.Skips):
    """The pair's samples, streamed from the reader, at most `limit` of them.

    With a per-image question file (`questions` = JSONL rows with an image_id, as written by
    `lib.protocol.psf_med.import_psf_med`) the samples are the file's rows joined with the reader's
    images instead (see `per_image_samples`).
    """
    if image_questions.is_per_image_file(params["questions"]):
        samples = per_image_samples(params, skipped)
    else:
        samples = data.iter_samples(
            params["dataset"], params["data_root"], findings=tuple(params["findings"]),
            split=params["split"], label_policy=data.LabelPolicy.from_dict(params["label_policy"]),
            skipped=skipped, box_file=params.get("box_file"),
        )
    return itertools.islice(samples, params["limit"])


@dataclass(frozen=True)
class QuestionSample(data.Sample):
    """A sample from a per-image question file: its prompts (original first) travel with it."""

    prompts: tuple = ()
    negated: tuple = ()


def question_sets_for(params: dict) -> dict:
    """Question sets by finding; none for a per-image file (its prompts are in its samples)."""
    if image_questions.is_per_image_file(params["questions"]):
        return {}
    return questions.load_question_sets(params["questions"])


def per_image_samples(params: dict, skipped: data.Skips):
    """One sample per row of the per-image question file whose image the reader yields.

    Images come in the reader's order (the official file's, of `split`); each image's rows in
    file order, sample_id "<image_id>/q<n>" (n = the row's rank among its image's rows). Label,
    finding (may be None) and prompts come from the row; `findings` and `label_policy` do not
    apply. Rows whose image is not a readable frontal image of the split are counted as
    `question_image_not_found`.
    """
    by_image = image_questions.load_per_image_questions(params["questions"])
    images = data.iter_samples(
        params["dataset"], params["data_root"], findings=tuple(params["findings"])[:1],
        split=params["split"], label_policy=data.LabelPolicy(uncertain="yes", blank="yes"),
        skipped=data.Skips(),
    )
    seen = set()
    for image in images:
        rows = by_image.get(image.image_id)
        if rows is None or image.image_id in seen:
            continue
        seen.add(image.image_id)
        for n, row in enumerate(rows):
            yield QuestionSample(
                sample_id=f"{image.image_id}/q{n}", image_id=image.image_id,
                image_path=image.image_path, finding=row["finding"], label=row["label"],
                prompts=row["prompts"], negated=tuple(row["negated"]))
    for image_id, rows in by_image.items():
        if image_id not in seen:
            for n in range(len(rows)):
                skipped.add("question_image_not_found", f"{image_id}/q{n}", params["questions"])


def prompt_specs(sample: data.Sample, question_sets: dict, max_paraphrases) -> list[questions.Prompt]:
    """The sample's prompts, original first (from its question file row, or its finding's set)."""
    if isinstance(sample, QuestionSample):
        negated = sample.negated or (False,) * len(sample.prompts)
        specs = [questions.Prompt(p, None, bool(n)) for p, n in zip(sample.prompts, negated)]
        return specs if max_paraphrases is None else specs[:1 + max_paraphrases]
    return list(questions.prompt_specs_for(sample.finding, question_sets, max_paraphrases))
