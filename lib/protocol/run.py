"""One run: a model-dataset pair scored end to end, resumably, into the run's outputs.

`<output_dir>/predictions.parquet` (one row per sample x prompt x condition),
`<output_dir>/samples.parquet` (one row per sample, with its quadrant),
`<output_dir>/skipped.csv` (every sample or label row left out, with its reason) and
`<output_dir>/summary.json` (the pair's flip rates, quadrant fractions, accuracy and entropy per
quadrant, skipped samples by reason, how many samples were reused from earlier records and how
many scored, the params as run, the fingerprints of the files they read, provenance).

Who scores is a `Scorer`: `LocalScorer` (this process, one model) by default; the Ray actor
pool of `lib.scale` implements the same interface. Either way the records land in the run's
`records.RecordStore`, and the final files are written here.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from functools import cached_property
from pathlib import Path
from typing import Protocol

import pandas as pd
from tqdm.auto import tqdm

from . import data, engine, identity, labels, models, provenance, questions, records, references, taxonomy
from .engine import Engine, Item
from .samples import prompt_specs, question_sets_for, stream_samples
from .summary import summarize


@dataclass
class RunResult:
    samples: pd.DataFrame
    predictions: pd.DataFrame
    summary: dict


@dataclass(frozen=True)
class Job:
    """One sample as it is scored: its prompts (original first, each with the params'
    answer_instruction), which of them are negated, and its counterfactual twin (if any)."""

    sample: data.Sample
    prompts: tuple[str, ...]
    negated: tuple[bool, ...]
    twin_image_path: str | None = None

    @property
    def sample_id(self) -> str:
        return self.sample.sample_id

    @cached_property
    def fingerprint(self) -> str:
        """What the sample's record is keyed by besides the store's key: the size and mtime
        (ns) of its image file and of its twin, and its prompts. A rewritten image or an edited
        paraphrase changes it; labels are not part of it. Taken once, when the run is planned
        (it travels with the Job to a Ray actor)."""
        return identity.digest([self.sample.sample_id, identity.file_stat(self.sample.image_path),
                                list(self.prompts), list(self.negated), identity.file_stat(self.twin_image_path)])

    def item(self, image_of):
        """(the Item to score, None) or (None, the skip entry of an unreadable image)."""
        image, reasons = image_of(self.sample.image_path)
        if image is None:
            return None, unreadable(self, self.sample.image_path, reasons)
        twin = image_of(self.twin_image_path)[0] if self.twin_image_path else None
        return Item(self.sample_id, image, self.prompts, twin_image=twin), None


@dataclass(frozen=True)
class RunUnit:
    """A per-run item, scored once however many samples read it (lib.protocol.engine): the
    text-only questions, the blank image, one null (noise) image, or one reference image, each
    with the distinct original questions it answers. ``unit_id`` keys its record."""

    unit_id: str
    condition: str
    prompts: tuple[str, ...]
    image_path: str | None = None          # a reference image's file ...
    reference_image_id: str | None = None  # ... and its image_id
    null_image: int | None = None          # a null image's number (engine.null_image)
    seed: int = 0                          # ... and its seed

    @property
    def sample_id(self) -> str:
        return self.unit_id

    @cached_property
    def fingerprint(self) -> str:
        return identity.digest([self.unit_id, self.condition, list(self.prompts),
                                identity.file_stat(self.image_path), self.seed, engine.DERIVED_SIZE,
                                engine.NULL_IMAGES])

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
        return Item(self.unit_id, image, self.prompts, self.condition), None


def unreadable(work, path: str, reasons: data.Skips) -> dict:
    """The record store's skip entry of a Job or RunUnit whose image cannot be read."""
    return {"sample_id": work.sample_id, "reason": next(iter(reasons)), "detail": path,
            "fingerprint": work.fingerprint}


def jobs_for(params: dict, samples: list, question_sets: dict) -> list[Job]:
    """Every sample's Job."""
    twins = data.read_twins(params["twins"]) if params["twins"] else {}
    jobs = []
    for sample in samples:
        specs = prompt_specs(sample, question_sets, params["max_paraphrases"])
        texts = tuple(questions.with_instruction(s.text, params["answer_instruction"]) for s in specs)
        jobs.append(Job(sample, texts, tuple(s.negated for s in specs),
                        twins.get((sample.image_id, sample.finding))))
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
    findings = sorted({s.finding for s in samples if s.finding in labels.FINDING_LABELS})
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


def run_units(params: dict, jobs: list[Job], refs: pd.DataFrame) -> list[RunUnit]:
    """The per-run items: text-only over every distinct original question, the blank image and
    the null images with them, and each reference image with the questions of its findings."""
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
                                 tuple(prompts), image_path=path, reference_image_id=image_id))
    return units


def load_items(work: list, max_pixels: int = data.MAX_IMAGE_PIXELS):
    """Items to score and the skip entries of Jobs / reference units whose image cannot be read, is
    too small or declares more than `max_pixels` pixels (a twin that cannot be read leaves its
    sample without a twin row)."""
    items, bad, cache = [], [], {}

    def image_of(path):
        if path not in cache:
            reasons = data.Skips()
            image = data.load_image(data.Sample("image", "image", path, "", "no"), reasons, max_pixels)
            cache[path] = (image.convert("RGB") if image is not None else None, reasons)
        return cache[path]

    for unit in work:
        item, skip = unit.item(image_of)
        if item is not None:
            items.append(item)
        else:
            bad.append(skip)
    return items, bad


def score_batch(engine_: Engine, store: records.RecordStore, work: list,
                max_pixels: int = data.MAX_IMAGE_PIXELS) -> int:
    """Score one batch of Jobs / RunUnits and write it to the store as one chunk; returns the
    number of units scored."""
    items, bad = load_items(work, max_pixels)
    rows = engine_.score(items) if items else []
    negated = {w.sample_id: w.negated for w in work if isinstance(w, Job)}
    for row in rows:
        flags = negated.get(row["sample_id"])
        row["negated"] = bool(flags[row["prompt_id"]]) if flags and row["condition"] == "image" else False
    scored = {it.sample_id for it in items}
    store.write([{"sample_id": w.sample_id, "fingerprint": w.fingerprint}
                 for w in work if w.sample_id in scored], rows, bad)
    return len(items)


def load_engine(params: dict, lm=None) -> Engine:
    """The one path from validated params to a scoring Engine (the params' model unless `lm`)."""
    if lm is None:
        lm = models.load_model(
            params["model"], adapter=params["adapter"], quantization=params["quantization"],
            dtype=params["dtype"], device=params["device"], merge_adapter=params["merge_adapter"],
            trust_remote_code=params["trust_remote_code"],
            allow_unsafe_weights=params["allow_unsafe_weights"],
        )
    return Engine(lm, image_removal=params["image_removal"], prefix_sharing=params["prefix_sharing"],
                  batch_size=params["batch_size"])


class NoSamplesError(ValueError):
    """The reader yields no sample for the params (before any model loads)."""

    def _render_traceback_(self):
        return [f"NoSamplesError: {self}"]


class Scorer(Protocol):
    """Scores batches of samples into the store; returns the run's engine info (mode,
    fallback_reason, samples_per_second, device, dtype, and whatever else it measures)."""

    def __call__(self, params: dict, store: records.RecordStore, batches: list[list[Job]]) -> dict: ...


class LocalScorer:
    """Scores in this process with one model (loaded from the params unless given)."""

    def __init__(self, lm=None):
        self.lm = lm

    def __call__(self, params, store, batches) -> dict:
        engine = load_engine(params, self.lm)
        start, n = time.perf_counter(), 0
        total = sum(len(b) for b in batches)
        with tqdm(total=total, desc=f"{params['config']}__{params['dataset']}", unit="sample") as bar:
            for batch in batches:
                n += score_batch(engine, store, batch, params["max_image_pixels"])
                bar.update(len(batch))
        elapsed = time.perf_counter() - start
        return {"mode": engine.mode, "fallback_reason": engine.fallback_reason,
                "samples_per_second": n / elapsed if n and elapsed > 0 else None,
                "device": str(engine.lm.device), "dtype": str(engine.lm.dtype),
                "passes": dict(engine.passes)}


def batched(samples: list, size: int) -> list[list]:
    return [samples[i:i + size] for i in range(0, len(samples), size)]


@dataclass
class Plan:
    """What a run scores: its samples' Jobs, its per-run units (RunUnit), its references, and the
    work the store does not hold yet with its current fingerprint (Jobs first)."""

    jobs: list[Job]
    units: list[RunUnit]
    references: pd.DataFrame
    todo: list


def plan(params: dict, store: records.RecordStore, skipped: data.Skips) -> Plan:
    """The run's Plan; `skipped` receives the reader's skips. Fails before any model loads when
    the reader yields no sample."""
    samples = list(stream_samples(params, skipped))
    if not samples:
        raise NoSamplesError(
            f"data_root {params['data_root']}: no {params['split']} sample of {params['dataset']} "
            f"to score (skipped: {dict(skipped) or 'none'})")
    jobs = jobs_for(params, samples, question_sets_for(params))
    refs = plan_references(params, samples)
    units = run_units(params, jobs, refs)
    held = store.index()
    return Plan(jobs, units, refs, [w for w in jobs + units if held.get(w.sample_id) != w.fingerprint])


def batches_to_score(params: dict, store: records.RecordStore, skipped: data.Skips) -> list[list]:
    """The work still to score, cut into batches of `batch_size` (what every Scorer receives)."""
    return batched(plan(params, store, skipped).todo, params["batch_size"])


def image_paths(params: dict, image_ids) -> list[str]:
    """Image files of the given image ids, found by streaming the pair's reader once more."""
    wanted = list(image_ids)
    keep = set(wanted)
    found = {s.image_id: s.image_path for s in stream_samples(params, data.Skips()) if s.image_id in keep}
    return [found[i] for i in wanted]


def evaluate(params: dict, scorer: Scorer | None = None, lm=None) -> RunResult:
    """Run the whole protocol for one validated params dict (see `config.load`).

    Holds the output directory's lock throughout; scores only the samples and per-run units that
    the record store does not hold with their current fingerprint; writes the final files
    atomically.
    """
    provenance.seed_everything(params["seed"])
    if lm is None:
        models.check_model_exists(params["model"])
    out = Path(params["output_dir"])
    with records.OutputLock(out) as lock:
        store = records.RecordStore(out, identity.records_key(params))
        skipped = data.Skips()
        work = plan(params, store, skipped)
        engine_info = {"mode": None, "fallback_reason": None, "samples_per_second": None}
        if work.todo:
            scorer = scorer or LocalScorer(lm)
            engine_info = scorer(params, store, batched(work.todo, params["batch_size"]))
        todo_jobs = sum(isinstance(w, Job) for w in work.todo)
        reuse = {"samples_reused": len(work.jobs) - todo_jobs, "samples_scored": todo_jobs,
                 "run_units_scored": len(work.todo) - todo_jobs, "took_over_lock_of": lock.took_over}
        return finalize(params, store, work, skipped, engine_info, reuse)


def held_out_prompts(params: dict) -> dict | None:
    """{finding: held-out prompt texts as scored (with the answer instruction)} or None."""
    if not params["prompt_split"]:
        return None
    split = questions.read_prompt_split(params["prompt_split"])
    return {f: [questions.with_instruction(p, params["answer_instruction"]) for p in v["held_out"]]
            for f, v in split.items()}


def sample_row(sample: data.Sample) -> dict:
    return {k: v for k, v in asdict(sample).items() if k in ("sample_id", "image_id", "finding", "label")}


def split_rows(raw: pd.DataFrame, jobs: list[Job], units: list[RunUnit]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(the samples' prediction rows, text-only rows included; the per-run rows of blank, noise and
    references, with sample_id null and the image in reference_image_id / null_image).

    A sample's text-only row is the text-only unit's row of its original question: scored once per
    distinct question, it is the same forward pass for every sample that asks it.
    """
    unit_of = {u.unit_id: u for u in units}
    is_unit = raw["sample_id"].isin(unit_of)
    sample_rows, unit_rows = raw[~is_unit], raw[is_unit]
    text = unit_rows[unit_rows["condition"] == engine.CONDITION_TEXT_ONLY].set_index("prompt")
    scored = set(sample_rows["sample_id"])
    originals = [(j.sample_id, j.prompts[0]) for j in jobs if j.sample_id in scored]
    text_rows = pd.DataFrame([{"sample_id": sid, "prompt_id": 0, "condition": engine.CONDITION_TEXT_ONLY,
                               "prompt": q, "p_yes": text.at[q, "p_yes"],
                               "yes_no_mass": text.at[q, "yes_no_mass"], "negated": False}
                              for sid, q in originals if q in text.index])
    samples = pd.concat([sample_rows, text_rows], ignore_index=True).sort_values(records.KEY, ignore_index=True)
    per_run = unit_rows[unit_rows["condition"] != engine.CONDITION_TEXT_ONLY].copy()
    units_of_rows = [unit_of[i] for i in per_run["sample_id"]]
    per_run["reference_image_id"] = pd.Series([u.reference_image_id for u in units_of_rows],
                                              index=per_run.index, dtype=object)
    per_run["null_image"] = pd.array([u.null_image for u in units_of_rows], dtype="Int64")
    per_run["sample_id"] = None
    return samples, per_run.reset_index(drop=True)


def reference_answers(refs: pd.DataFrame, per_run: pd.DataFrame, jobs: list[Job]) -> pd.DataFrame:
    """references.csv: one row per (reference image, finding, question it was asked) with its
    answer (image_id, finding, label, question, p_yes, answer); references whose image could not
    be read are left out."""
    columns = ["image_id", "finding", "label", "question", "p_yes", "answer"]
    if per_run.empty:
        return pd.DataFrame(columns=columns)
    rows = per_run[per_run["condition"] == engine.CONDITION_REFERENCE]
    scored = rows.set_index(["reference_image_id", "prompt"])[["p_yes", "pred"]]
    by_finding = original_questions(jobs)
    out = [{"image_id": r.image_id, "finding": r.finding, "label": r.label, "question": q,
            "p_yes": float(scored.at[(r.image_id, q), "p_yes"]), "answer": scored.at[(r.image_id, q), "pred"]}
           for r in refs.itertuples(index=False) for q in by_finding.get(r.finding, ())
           if (r.image_id, q) in scored.index]
    return pd.DataFrame(out, columns=columns)


def finalize(params, store, work: Plan, skipped, engine_info, reuse) -> RunResult:
    """Build and write predictions.parquet, samples.parquet, references.csv, skipped.csv and
    summary.json."""
    jobs = work.jobs
    raw, image_skips = store.tables({w.sample_id: w.fingerprint for w in jobs + work.units})
    unit_ids = {u.unit_id for u in work.units}
    unreadable_references = [e for e in image_skips if e["sample_id"] in unit_ids]
    for entry in image_skips:
        if entry["sample_id"] not in unit_ids:
            skipped.add(entry["reason"], entry["sample_id"], entry.get("detail", ""))
    sample_rows, per_run = split_rows(raw, jobs, work.units) if not raw.empty else (raw, raw)
    if sample_rows.empty:
        raise NoSamplesError(
            f"no sample of {params['dataset']} at {params['data_root']} could be scored "
            f"(skipped: {dict(skipped)})")
    inputs = identity.input_fingerprints(params)
    scored_ids = set(sample_rows.sample_id)
    sample_df = pd.DataFrame([{**sample_row(j.sample), "question": j.prompts[0]} for j in jobs
                              if j.sample_id in scored_ids],
                             columns=["sample_id", "image_id", "finding", "label", "question"])
    predictions = taxonomy.add_answers(sample_rows)
    per_run = taxonomy.add_answers(per_run) if not per_run.empty else per_run
    samples_table = taxonomy.classify_samples(predictions, sample_df.sort_values("sample_id", ignore_index=True),
                                              per_run)
    answers = reference_answers(work.references, per_run, jobs)
    block = None
    if "reference" in params["reliance_checks"]:
        block, per_sample = references.image_blind(
            samples_table, answers, resamples=params["bootstrap_resamples"], ci_level=params["ci_level"],
            seed=params["seed"])
        samples_table = samples_table.merge(per_sample, on="sample_id", how="left")
        block.update(reference_source=reference_source(params), reference_split=params["reference_split"],
                     references_unreadable=len(unreadable_references))
    summary_measures = summarize(
        samples_table, predictions, image_blind=block, reliance_checks=params["reliance_checks"],
        bootstrap_resamples=params["bootstrap_resamples"], ci_level=params["ci_level"], seed=params["seed"],
        held_out_prompts=held_out_prompts(params))
    engine_info = {**engine_info, "dedup": dedup_counts(jobs, work.units, params)}
    summary = {
        "config": params["config"], "dataset": params["dataset"], **summary_measures,
        "n_skipped": dict(sorted(skipped.items())), "records": reuse,
        "run_hash": identity.run_hash(params, inputs), "inputs": inputs,
        "trust_remote_code": params["trust_remote_code"], "engine": engine_info,
        "params": params, **provenance.provenance(params["seed"]),
    }
    all_predictions = pd.concat([predictions, per_run], ignore_index=True) if not per_run.empty else predictions
    records.write_atomically(params["output_dir"], {
        "predictions.parquet": all_predictions, "samples.parquet": samples_table,
        "references.csv": answers, "skipped.csv": skipped.table()}, summary)
    return RunResult(samples_table, all_predictions, summary)


def reference_source(params: dict) -> str:
    """In words: where the run's references came from (the report names it)."""
    split = params["reference_split"]
    if split == "evaluated":
        return (f"the evaluated samples' own split ({params['split']}) of {params['data_root']}: "
                f"references may share a patient with the samples and may include images the model "
                f"was trained on")
    root = params["reference_root"] or params["data_root"]
    where = "every split" if split == "all" else f"the {split} split"
    return f"{where} of {root}, never an evaluated image or patient"


def dedup_counts(jobs: list[Job], units: list[RunUnit], params: dict) -> dict:
    """Prompts scored with deduplication against the per-sample protocol it replaces (each sample's
    prompts, its text-only pass, one pass per reliance check and its twin); the references, a
    per-run cost with no per-sample counterpart, are counted beside them."""
    per_sample = sum(len(j.prompts) + 1 + len(params["reliance_checks"]) + (j.twin_image_path is not None)
                     for j in jobs)
    reference_prompts = sum(len(u.prompts) for u in units if u.condition == engine.CONDITION_REFERENCE)
    scored = sum(len(j.prompts) + (j.twin_image_path is not None) for j in jobs) + \
        sum(len(u.prompts) for u in units) - reference_prompts
    return {"prompts_scored": scored, "prompts_per_sample_protocol": per_sample,
            "share_saved": 1 - scored / per_sample if per_sample else None,
            "reference_prompts": reference_prompts}
