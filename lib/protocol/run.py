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
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Protocol

import pandas as pd
from tqdm.auto import tqdm

from . import data, engine, identity, local_tests, models, provenance, questions, records, references, taxonomy
from .engine import Engine
from .planning import Job, NoSamplesError, Plan, RunUnit, batched, dedup_counts, original_questions, plan
from .samples import stream_samples
from .summary import summarize
from .vocabulary import FOLLOWUP


@dataclass
class RunResult:
    samples: pd.DataFrame
    predictions: pd.DataFrame
    summary: dict


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


def prefetched(batches: list[list], load):
    """(batch, ``load(batch)``) for each batch in order, the next batch loaded in a background
    thread while the caller scores this one. Why: reading and preparing a batch's images happens
    on the CPU (on a full-size film: ~0.03 s to decode a JPEG, ~0.07 s per occlusion, ~0.3 s per
    registered follow-up) and would otherwise leave a GPU idle between batches. One batch ahead:
    two batches of images in memory at most; the items are the same whatever the timing."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="load-images") as pool:
        ahead = pool.submit(load, batches[0]) if batches else None
        for i, batch in enumerate(batches):
            loaded = ahead.result()
            ahead = pool.submit(load, batches[i + 1]) if i + 1 < len(batches) else None
            yield batch, loaded


def score_batch(engine_: Engine, store: records.RecordStore, work: list, loaded: tuple) -> int:
    """Score one batch of Jobs / RunUnits and write it to the store as one chunk; returns the
    number of units scored. ``loaded``: the batch's ``load_items`` (items, skips)."""
    items, bad = loaded
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
            load = partial(load_items, max_pixels=params["max_image_pixels"])
            for batch, loaded in prefetched(batches, load):
                n += score_batch(engine, store, batch, loaded)
                bar.update(len(batch))
        elapsed = time.perf_counter() - start
        return {"mode": engine.mode, "fallback_reason": engine.fallback_reason,
                "samples_per_second": n / elapsed if n and elapsed > 0 else None,
                "device": str(engine.lm.device), "dtype": str(engine.lm.dtype),
                "passes": dict(engine.passes)}


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
    """(the samples' prediction rows, text-only rows included; the per-run rows of blank, noise,
    references and other studies, with sample_id null and the image in reference_image_id /
    followup_image_id (and the sample image it was registered onto, followup_onto_image_id) /
    null_image).

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
    for column, condition in (("reference_image_id", engine.CONDITION_REFERENCE), ("followup_image_id", FOLLOWUP)):
        per_run[column] = pd.Series([u.image_id if u.condition == condition else None for u in units_of_rows],
                                    index=per_run.index, dtype=object)
    per_run["followup_onto_image_id"] = pd.Series([u.onto_image_id for u in units_of_rows], index=per_run.index,
                                                  dtype=object)
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
    unit_of = {u.unit_id: u for u in work.units}
    unreadable_units = [unit_of[e["sample_id"]] for e in image_skips if e["sample_id"] in unit_of]
    for entry in image_skips:
        if entry["sample_id"] not in unit_of:
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
    patients = {j.sample_id: j.sample.patient_id for j in jobs}
    predictions = taxonomy.add_answers(sample_rows)
    per_run = taxonomy.add_answers(per_run) if not per_run.empty else per_run
    samples_table = taxonomy.classify_samples(predictions, sample_df.sort_values("sample_id", ignore_index=True),
                                              per_run)
    samples_table.insert(2, "patient_id", samples_table["sample_id"].map(patients))
    answers = reference_answers(work.references, per_run, jobs)
    block = None
    if "reference" in params["reliance_checks"]:
        block, per_sample = references.image_blind(
            samples_table, answers, resamples=params["bootstrap_resamples"], ci_level=params["ci_level"],
            seed=params["seed"])
        samples_table = samples_table.merge(per_sample, on="sample_id", how="left")
        block.update(reference_source=reference_source(params), reference_split=params["reference_split"],
                     references_unreadable=sum(u.condition == engine.CONDITION_REFERENCE for u in unreadable_units))
    if params["local_tests"]:
        samples_table = samples_table.merge(
            local_tests.local_columns(samples_table, predictions, per_run, work.followups), on="sample_id")
    summary_measures = summarize(
        samples_table, predictions, image_blind=block, reliance_checks=params["reliance_checks"],
        bootstrap_resamples=params["bootstrap_resamples"], ci_level=params["ci_level"], seed=params["seed"],
        held_out_prompts=held_out_prompts(params),
        local=local_tests.summary_counts(samples_table, work.not_tested) if params["local_tests"] else None)
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


