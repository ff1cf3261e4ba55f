"""What one run scores, decided once before any model loads: each sample's Job (its prompts,
its twin, its occlusion boxes) and the per-run units (text-only questions, blank and null images,
references, the same patients' other studies), each with the fingerprint its record is keyed by.
lib.protocol.run scores the plan and writes the outputs.
"""
from __future__ import annotations

import collections
from dataclasses import dataclass
from functools import cached_property

import pandas as pd

from . import data, engine, identity, image_questions, local_tests, questions, records, references, registration
from .engine import Item
from .samples import prompt_specs, question_sets_for, stream_samples
from .vocabulary import FOLLOWUP, OCCLUDE, OCCLUDE_CONTROL, TWIN


class NoSamplesError(ValueError):
    """The reader yields no sample for the params (before any model loads)."""

    def _render_traceback_(self):
        return [f"NoSamplesError: {self}"]


@dataclass(frozen=True)
class Job:
    """One sample as it is scored: its prompts (original first, each with the params'
    answer_instruction), which of them are negated, and the images derived from its own image
    that are asked its original question: its counterfactual twin (offline world), its finding's
    boxes occluded and the control boxes occluded (lib.protocol.local_tests)."""

    sample: data.Sample
    prompts: tuple[str, ...]
    negated: tuple[bool, ...]
    twin_image_path: str | None = None
    occlude_boxes: tuple | None = None
    control_boxes: tuple | None = None
    marked_boxes: tuple = ()          # every marked box of the image: where no fill is taken from

    @property
    def sample_id(self) -> str:
        return self.sample.sample_id

    @property
    def n_counterfactuals(self) -> int:
        return sum(x is not None for x in (self.twin_image_path, self.occlude_boxes, self.control_boxes))

    @cached_property
    def fingerprint(self) -> str:
        """What the sample's record is keyed by besides the store's key: the size and mtime
        (ns) of its image file and of its twin, its prompts and its boxes. A rewritten image or an
        edited paraphrase changes it; labels are not part of it. Taken once, when the run is
        planned (it travels with the Job to a Ray actor)."""
        parts = [self.sample.sample_id, identity.file_stat(self.sample.image_path), list(self.prompts),
                 list(self.negated), identity.file_stat(self.twin_image_path)]
        if self.occlude_boxes is not None:   # appended only when set: earlier records stay valid
            parts.append([self.occlude_boxes, self.control_boxes, self.marked_boxes, local_tests.FILL])
        return identity.digest(parts)

    def item(self, image_of):
        """(the Item to score, None) or (None, the skip entry of an unreadable image)."""
        image, reasons = image_of(self.sample.image_path)
        if image is None:
            return None, unreadable(self, self.sample.image_path, reasons)
        derived = []
        twin = image_of(self.twin_image_path)[0] if self.twin_image_path else None
        if twin is not None:
            derived.append((TWIN, twin))
        if self.occlude_boxes:
            derived.append((OCCLUDE, local_tests.occlude(image, self.occlude_boxes, self.marked_boxes)))
        if self.control_boxes:
            derived.append((OCCLUDE_CONTROL, local_tests.occlude(image, self.control_boxes, self.marked_boxes)))
        return Item(self.sample_id, image, self.prompts, counterfactuals=tuple(derived)), None


@dataclass(frozen=True)
class RunUnit:
    """A per-run item, scored once however many samples read it (lib.protocol.engine): the
    text-only questions, the blank image, one null (noise) image, one reference image or one
    other study of a patient registered onto one of the patient's sample images
    (lib.protocol.registration), each with the distinct original questions it answers.
    ``unit_id`` keys its record."""

    unit_id: str
    condition: str
    prompts: tuple[str, ...]
    image_path: str | None = None          # a reference image's or other study's file ...
    image_id: str | None = None            # ... and its image_id
    null_image: int | None = None          # a null image's number (engine.null_image)
    seed: int = 0                          # ... and its seed
    onto_path: str | None = None           # the sample image an other study is registered onto ...
    onto_image_id: str | None = None       # ... and its image_id

    @property
    def sample_id(self) -> str:
        return self.unit_id

    @cached_property
    def fingerprint(self) -> str:
        parts = [self.unit_id, self.condition, list(self.prompts), identity.file_stat(self.image_path),
                 self.seed, engine.DERIVED_SIZE, engine.NULL_IMAGES]
        if self.onto_path is not None:
            parts.append([identity.file_stat(self.onto_path), registration.METHOD])
        return identity.digest(parts)

    def item(self, image_of):
        if self.condition == engine.CONDITION_TEXT_ONLY:
            return Item(self.unit_id, None, self.prompts, self.condition), None
        if self.condition == engine.CONDITION_BLANK:
            return Item(self.unit_id, engine.blank_image(), self.prompts, self.condition), None
        if self.condition == engine.CONDITION_NOISE:
            return Item(self.unit_id, engine.null_image(self.seed, self.null_image), self.prompts,
                        self.condition), None
        image, reasons = image_of(self.image_path)
        if image is None:
            return None, unreadable(self, self.image_path, reasons)
        if self.onto_path is not None:
            fixed, reasons = image_of(self.onto_path)
            if fixed is None:
                return None, unreadable(self, self.onto_path, reasons)
            image = registration.register(image, fixed)
        return Item(self.unit_id, image, self.prompts, self.condition), None


def unreadable(work, path: str, reasons: data.Skips) -> dict:
    """The record store's skip entry of a Job or RunUnit whose image cannot be read."""
    return {"sample_id": work.sample_id, "reason": next(iter(reasons)), "detail": path,
            "fingerprint": work.fingerprint}


def jobs_for(params: dict, samples: list, question_sets: dict, occlusion: dict | None = None) -> list[Job]:
    """Every sample's Job; ``occlusion``: {sample_id: (boxes, control boxes, the image's marked
    boxes)} of ``local_tests.plan_occlusion``."""
    twins = data.read_twins(params["twins"]) if params["twins"] else {}
    occlusion = occlusion or {}
    jobs = []
    for sample in samples:
        specs = prompt_specs(sample, question_sets, params["max_paraphrases"])
        texts = tuple(questions.with_instruction(s.text, params["answer_instruction"]) for s in specs)
        boxes, control, marked = occlusion.get(sample.sample_id, (None, None, ()))
        jobs.append(Job(sample, texts, tuple(s.negated for s in specs),
                        twins.get((sample.image_id, sample.finding)), boxes, control, marked))
    return jobs


def original_questions(jobs: list[Job]) -> dict:
    """{finding: the distinct original questions (prompt 0, as scored) of its samples}."""
    out: dict = {}
    for job in jobs:
        if job.sample.finding is not None:
            out.setdefault(job.sample.finding, set()).add(job.prompts[0])
    return {f: tuple(sorted(q)) for f, q in sorted(out.items())}


def reference_candidates(params: dict, samples: list) -> pd.DataFrame:
    """Every image the references may come from (lib.protocol.references): the samples
    themselves for ``reference_split: evaluated``, else the reader's frontal images of
    ``reference_split`` ("all": every split) of ``reference_root`` (default: the data_root)."""
    known = data.LabelPolicy.from_dict(params["label_policy"]).finding_labels()
    findings = sorted({s.finding for s in samples if s.finding in known})
    if params["reference_split"] == "evaluated":
        rows = samples
    elif not findings:
        rows = []
    else:
        rows = data.iter_samples(
            params["dataset"], params["reference_root"] or params["data_root"], findings=tuple(findings),
            split=None if params["reference_split"] == "all" else params["reference_split"],
            label_policy=data.LabelPolicy.from_dict(params["label_policy"]), skipped=data.Skips())
    columns = ["image_id", "patient_id", "finding", "label", "image_path"]
    return pd.DataFrame([{c: getattr(s, c) for c in columns} for s in rows if s.finding in findings],
                        columns=columns)


def plan_references(params: dict, samples: list) -> pd.DataFrame:
    """The run's references (``references.choose_references``; none without the check)."""
    if "reference" not in params["reliance_checks"]:
        return pd.DataFrame(columns=list(references.REFERENCE_COLUMNS))
    evaluated = pd.DataFrame([{"image_id": s.image_id, "patient_id": s.patient_id} for s in samples],
                             columns=["image_id", "patient_id"])
    if params["reference_split"] == "evaluated":
        evaluated = evaluated.iloc[:0]   # the pool IS the evaluated images (said in the report)
    return references.choose_references(reference_candidates(params, samples), evaluated,
                                        params["reference_pool"], params["seed"])


def run_units(params: dict, jobs: list[Job], refs: pd.DataFrame, followups: pd.DataFrame) -> list[RunUnit]:
    """The per-run items: text-only over every distinct original question, the blank image and
    the null images with them, each reference image with the questions of its findings, and each
    other study chosen by ``local_tests.choose_followups``, registered onto the image of the
    samples it serves, with their questions."""
    by_finding = original_questions(jobs)
    every = tuple(sorted({job.prompts[0] for job in jobs}))
    units = [RunUnit("text_only", engine.CONDITION_TEXT_ONLY, every)] if every else []
    checks = params["reliance_checks"]
    if every and "blank" in checks:
        units.append(RunUnit("blank", engine.CONDITION_BLANK, every))
    if every and "noise" in checks:
        units += [RunUnit(f"noise:{j}", engine.CONDITION_NOISE, every, null_image=j, seed=params["seed"])
                  for j in range(engine.NULL_IMAGES)]
    for (image_id, path), group in refs.groupby(["image_id", "image_path"], sort=True):
        prompts = sorted({q for f in group["finding"] for q in by_finding.get(f, ())})
        if prompts:
            units.append(RunUnit(f"reference:{image_id}", engine.CONDITION_REFERENCE,
                                 tuple(prompts), image_path=path, image_id=image_id))
    job_of = {j.sample_id: j for j in jobs}
    onto = followups.assign(onto_image_id=[job_of[s].sample.image_id for s in followups["sample_id"]],
                            onto_path=[job_of[s].sample.image_path for s in followups["sample_id"]])
    for (image_id, path, onto_id, onto_path), group in onto.groupby(
            ["image_id", "image_path", "onto_image_id", "onto_path"], sort=True):
        prompts = tuple(sorted({job_of[s].prompts[0] for s in group["sample_id"]}))
        units.append(RunUnit(f"followup:{image_id}:onto:{onto_id}", FOLLOWUP, prompts, image_path=path,
                             image_id=image_id, onto_path=onto_path, onto_image_id=onto_id))
    return units



def batched(samples: list, size: int) -> list[list]:
    return [samples[i:i + size] for i in range(0, len(samples), size)]


@dataclass
class Plan:
    """What a run scores: its samples' Jobs, its per-run units (RunUnit), its references, and the
    work the store does not hold yet with its current fingerprint (Jobs first)."""

    jobs: list[Job]
    units: list[RunUnit]
    references: pd.DataFrame
    followups: pd.DataFrame
    not_tested: dict        # {local test: {reason: samples}} (lib.protocol.local_tests)
    todo: list


def plan(params: dict, store: records.RecordStore, skipped: data.Skips) -> Plan:
    """The run's Plan; `skipped` receives the reader's skips. Fails before any model loads when
    the reader yields no sample."""
    samples = list(stream_samples(params, skipped))
    if not samples:
        raise NoSamplesError(
            f"data_root {params['data_root']}: no {params['split']} sample of {params['dataset']} "
            f"to score (skipped: {dict(skipped) or 'none'})")
    occlusion, not_occluded = (local_tests.plan_occlusion(samples, params["seed"])
                               if OCCLUDE in params["local_tests"] else ({}, collections.Counter()))
    followups, no_followup = plan_followups(params, samples)
    jobs = jobs_for(params, samples, question_sets_for(params), occlusion)
    refs = plan_references(params, samples)
    units = run_units(params, jobs, refs, followups)
    held = store.index()
    not_tested = {OCCLUDE: dict(not_occluded), FOLLOWUP: dict(no_followup)}
    return Plan(jobs, units, refs, followups, not_tested,
                [w for w in jobs + units if held.get(w.sample_id) != w.fingerprint])


def plan_followups(params: dict, samples: list) -> tuple[pd.DataFrame, collections.Counter]:
    """The other studies of ``local_tests.choose_followups`` among the reader's samples of the
    run's split (all of them, not only the evaluated ``limit``); none without the test."""
    empty = pd.DataFrame(columns=list(local_tests.FOLLOWUP_COLUMNS))
    if FOLLOWUP not in params["local_tests"] or image_questions.is_per_image_file(params["questions"]):
        return empty, collections.Counter()
    max_differing = params["followup_max_differing_labels"]
    if params["limit"] is None:   # the evaluated samples ARE the split's: no second pass of the reader
        return local_tests.choose_followups(samples, samples, max_differing)
    candidates = data.iter_samples(
        params["dataset"], params["data_root"], findings=tuple(sorted({s.finding for s in samples})),
        split=params["split"], label_policy=data.LabelPolicy.from_dict(params["label_policy"]),
        skipped=data.Skips())
    return local_tests.choose_followups(samples, list(candidates), max_differing)


def batches_to_score(params: dict, store: records.RecordStore, skipped: data.Skips) -> list[list]:
    """The work still to score, cut into batches of `batch_size` (what every Scorer receives)."""
    return batched(plan(params, store, skipped).todo, params["batch_size"])



def dedup_counts(jobs: list[Job], units: list[RunUnit], params: dict) -> dict:
    """Prompts scored with deduplication against the per-sample protocol it replaces (each sample's
    prompts, its text-only pass, one pass per reliance check and its derived images: twin,
    occlusion and its control); the references and other studies, per-run costs with no
    per-sample counterpart, are counted beside them."""
    per_sample = sum(len(j.prompts) + 1 + len(params["reliance_checks"]) + j.n_counterfactuals for j in jobs)
    reference_prompts = sum(len(u.prompts) for u in units if u.condition == engine.CONDITION_REFERENCE)
    followup_prompts = sum(len(u.prompts) for u in units if u.condition == FOLLOWUP)
    scored = sum(len(j.prompts) + j.n_counterfactuals for j in jobs) + \
        sum(len(u.prompts) for u in units) - reference_prompts - followup_prompts
    return {"prompts_scored": scored, "prompts_per_sample_protocol": per_sample,
            "share_saved": 1 - scored / per_sample if per_sample else None,
            "reference_prompts": reference_prompts, "followup_prompts": followup_prompts}
