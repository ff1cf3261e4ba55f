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

import hashlib
import itertools
import json
import time
from dataclasses import asdict, dataclass
from functools import cached_property
from pathlib import Path
from typing import Protocol

import pandas as pd
from tqdm.auto import tqdm

from . import config, data, models, provenance, questions, records, reliance, taxonomy
from .engine import Engine, Item


@dataclass
class RunResult:
    samples: pd.DataFrame
    predictions: pd.DataFrame
    summary: dict


def stream_samples(params: dict, skipped: data.Skips):
    """The pair's samples, streamed from the reader, at most `limit` of them.

    With a per-image question file (`questions` = JSONL rows with an image_id, as written by
    `lib.protocol.questions.import_psf_med`) the samples are the file's rows joined with the reader's
    images instead (see `per_image_samples`).
    """
    if questions.is_per_image_file(params["questions"]):
        samples = per_image_samples(params, skipped)
    else:
        samples = data.iter_samples(
            params["dataset"], params["data_root"], findings=tuple(params["findings"]),
            split=params["split"], label_policy=data.LabelPolicy.from_dict(params["label_policy"]),
            skipped=skipped,
        )
    return itertools.islice(samples, params["limit"])


# --- per-image question files (PSF-Med) ---------------------------------------------------------

@dataclass(frozen=True)
class QuestionSample(data.Sample):
    """A sample from a per-image question file: its prompts (original first) travel with it."""

    prompts: tuple = ()
    negated: tuple = ()


def question_sets_for(params: dict) -> dict:
    """Question sets by finding; none for a per-image file (its prompts are in its samples)."""
    if questions.is_per_image_file(params["questions"]):
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
    by_image = questions.load_per_image_questions(params["questions"])
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

# --- end per-image question files ---


@dataclass(frozen=True)
class Job:
    """One sample as it is scored: its prompts (original first, each with the params'
    answer_instruction), which of them are negated, and the image of its swap (if any)."""

    sample: data.Sample
    prompts: tuple[str, ...]
    negated: tuple[bool, ...]
    swap_image_id: str | None = None
    swap_image_path: str | None = None
    twin_image_path: str | None = None

    @property
    def sample_id(self) -> str:
        return self.sample.sample_id

    @cached_property
    def fingerprint(self) -> str:
        """What the sample's record is keyed by besides the store's key: the size and mtime
        (ns) of its image file, of its swap image and of its twin, and its prompts. A rewritten
        image or an edited paraphrase changes it; labels are not part of it. Taken once, when
        the run is planned (it travels with the Job to a Ray actor)."""
        blob = json.dumps([self.sample.sample_id, file_stat(self.sample.image_path), list(self.prompts),
                           list(self.negated), self.swap_image_id, file_stat(self.swap_image_path),
                           file_stat(self.twin_image_path)])
        return hashlib.sha256(blob.encode()).hexdigest()[:20]


def file_stat(path) -> list | None:
    try:
        stat = Path(path).stat()
    except (OSError, TypeError):
        return None
    return [stat.st_size, stat.st_mtime_ns]


def prompt_specs(sample: data.Sample, question_sets: dict, max_paraphrases) -> list[questions.Prompt]:
    """The sample's prompts, original first (from its question file row, or its finding's set)."""
    if isinstance(sample, QuestionSample):
        negated = sample.negated or (False,) * len(sample.prompts)
        specs = [questions.Prompt(p, None, bool(n)) for p, n in zip(sample.prompts, negated)]
        return specs if max_paraphrases is None else specs[:1 + max_paraphrases]
    return list(questions.prompt_specs_for(sample.finding, question_sets, max_paraphrases))


def jobs_for(params: dict, samples: list, question_sets: dict) -> list[Job]:
    """Every sample's Job; swaps chosen once over ALL samples of the run (`reliance.choose_swaps`)."""
    swaps = {}
    if "swap" in params["reliance_checks"] and samples:
        swaps = reliance.choose_swaps(pd.DataFrame([sample_row(s) for s in samples]), seed=params["seed"])
    paths = {s.image_id: s.image_path for s in samples}
    twins = data.read_twins(params["twins"]) if params["twins"] else {}
    jobs = []
    for sample in samples:
        specs = prompt_specs(sample, question_sets, params["max_paraphrases"])
        swap = swaps.get(sample.sample_id)
        texts = tuple(questions.with_instruction(s.text, params["answer_instruction"]) for s in specs)
        jobs.append(Job(sample, texts, tuple(s.negated for s in specs), swap, paths.get(swap),
                        twins.get((sample.image_id, sample.finding))))
    return jobs


def image_paths(params: dict, image_ids) -> list[str]:
    """Image files of the given image ids, found by streaming the pair's reader once more."""
    wanted = list(image_ids)
    keep = set(wanted)
    found = {s.image_id: s.image_path for s in stream_samples(params, data.Skips()) if s.image_id in keep}
    return [found[i] for i in wanted]


def load_items(jobs: list[Job]):
    """Items to score and the skip entries of samples whose image cannot be read or is too
    small. A swap image that cannot be read leaves its sample without a swap row."""
    items, bad, cache = [], [], {}

    def image_of(sample):
        if sample.image_path not in cache:
            reasons = data.Skips()
            cache[sample.image_path] = (data.load_image(sample, reasons), reasons)
        return cache[sample.image_path]

    for job in jobs:
        image, reasons = image_of(job.sample)
        if image is None:
            bad.append({"sample_id": job.sample_id, "reason": next(iter(reasons)),
                        "detail": job.sample.image_path, "fingerprint": job.fingerprint})
            continue
        swap = other_image(image_of, job.swap_image_id, job.swap_image_path)
        twin = other_image(image_of, f"{job.sample.image_id}/twin", job.twin_image_path)
        items.append(Item(job.sample_id, image.convert("RGB"), job.prompts, swap_image=swap,
                          swap_image_id=job.swap_image_id if swap is not None else None,
                          twin_image=twin))
    return items, bad


def other_image(image_of, image_id, path):
    """A swap or twin image as RGB, or None when there is none or it cannot be read."""
    if not path:
        return None
    image, _ = image_of(data.Sample("other", image_id, path, "", "no"))
    return image.convert("RGB") if image is not None else None


def score_batch(engine: Engine, store: records.RecordStore, jobs: list[Job]) -> int:
    """Score one batch of jobs and write it to the store as one chunk; returns samples scored."""
    items, bad = load_items(jobs)
    rows = engine.score(items) if items else []
    by_id = {job.sample_id: job for job in jobs}
    for row in rows:
        row["negated"] = bool(by_id[row["sample_id"]].negated[row["prompt_id"]])
    scored = {it.sample_id for it in items}
    store.write([{"sample_id": j.sample_id, "fingerprint": j.fingerprint}
                 for j in jobs if j.sample_id in scored], rows, bad)
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
                  batch_size=params["batch_size"], reliance_checks=tuple(params["reliance_checks"]),
                  seed=params["seed"])


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
                n += score_batch(engine, store, batch)
                bar.update(len(batch))
        elapsed = time.perf_counter() - start
        return {"mode": engine.mode, "fallback_reason": engine.fallback_reason,
                "samples_per_second": n / elapsed if n and elapsed > 0 else None,
                "device": str(engine.lm.device), "dtype": str(engine.lm.dtype)}


def batched(samples: list, size: int) -> list[list]:
    return [samples[i:i + size] for i in range(0, len(samples), size)]


def plan(params: dict, store: records.RecordStore, skipped: data.Skips) -> tuple[list, list[Job]]:
    """(the pair's samples, the Jobs of those the store does not hold with their current
    fingerprint); `skipped` receives the reader's skips. Fails before any model loads when the
    reader yields no sample."""
    samples = list(stream_samples(params, skipped))
    if not samples:
        raise NoSamplesError(
            f"data_root {params['data_root']}: no {params['split']} sample of {params['dataset']} "
            f"to score (skipped: {dict(skipped) or 'none'})")
    jobs = jobs_for(params, samples, question_sets_for(params))
    held = store.index()
    return jobs, [job for job in jobs if held.get(job.sample_id) != job.fingerprint]


def batches_to_score(params: dict, store: records.RecordStore, skipped: data.Skips) -> list[list[Job]]:
    """The Jobs still to score, cut into batches of `batch_size` (what every Scorer receives)."""
    return batched(plan(params, store, skipped)[1], params["batch_size"])


def evaluate(params: dict, scorer: Scorer | None = None, lm=None) -> RunResult:
    """Run the whole protocol for one validated params dict (see `config.load`).

    Holds the output directory's lock throughout; scores only the samples that the record store
    does not hold with their current fingerprint; writes the final files atomically.
    """
    provenance.seed_everything(params["seed"])
    if lm is None:
        models.check_model_exists(params["model"])
    out = Path(params["output_dir"])
    with records.OutputLock(out) as lock:
        store = records.RecordStore(out, config.records_key(params))
        skipped = data.Skips()
        jobs, todo = plan(params, store, skipped)
        engine_info = {"mode": None, "fallback_reason": None, "samples_per_second": None}
        if todo:
            scorer = scorer or LocalScorer(lm)
            engine_info = scorer(params, store, batched(todo, params["batch_size"]))
        reuse = {"samples_reused": len(jobs) - len(todo), "samples_scored": len(todo),
                 "took_over_lock_of": lock.took_over}
        return finalize(params, store, jobs, skipped, engine_info, reuse)


def held_out_prompts(params: dict) -> dict | None:
    """{finding: held-out prompt texts as scored (with the answer instruction)} or None."""
    if not params["prompt_split"]:
        return None
    split = questions.read_prompt_split(params["prompt_split"])
    return {f: [questions.with_instruction(p, params["answer_instruction"]) for p in v["held_out"]]
            for f, v in split.items()}


def sample_row(sample: data.Sample) -> dict:
    return {k: v for k, v in asdict(sample).items() if k in ("sample_id", "image_id", "finding", "label")}


def finalize(params, store, jobs: list[Job], skipped, engine_info, reuse) -> RunResult:
    """Build and write predictions.parquet, samples.parquet, skipped.csv and summary.json."""
    raw_predictions, image_skips = store.tables({job.sample_id: job.fingerprint for job in jobs})
    for entry in image_skips:
        skipped.add(entry["reason"], entry["sample_id"], entry.get("detail", ""))
    if raw_predictions.empty:
        raise NoSamplesError(
            f"no sample of {params['dataset']} at {params['data_root']} could be scored "
            f"(skipped: {dict(skipped)})")
    inputs = config.input_fingerprints(params)
    scored_ids = set(raw_predictions.sample_id)
    sample_df = pd.DataFrame([sample_row(j.sample) for j in jobs if j.sample_id in scored_ids],
                             columns=["sample_id", "image_id", "finding", "label"])
    if "swap_image_id" not in raw_predictions.columns:
        raw_predictions["swap_image_id"] = None  # one schema whether or not a swap ran
    predictions = taxonomy.add_answers(raw_predictions)
    samples_table = taxonomy.classify_samples(predictions, sample_df.sort_values("sample_id", ignore_index=True))
    summary = {
        "config": params["config"], "dataset": params["dataset"],
        **taxonomy.summarize(samples_table, predictions, reliance_checks=params["reliance_checks"],
                             bootstrap_resamples=params["bootstrap_resamples"],
                             ci_level=params["ci_level"], seed=params["seed"],
                             held_out_prompts=held_out_prompts(params)),
        "n_skipped": dict(sorted(skipped.items())), "records": reuse,
        "run_hash": config.run_hash(params, inputs), "inputs": inputs,
        "trust_remote_code": params["trust_remote_code"], "engine": engine_info,
        "params": params, **provenance.provenance(params["seed"]),
    }
    records.write_atomically(params["output_dir"], {
        "predictions.parquet": predictions, "samples.parquet": samples_table,
        "skipped.csv": skipped.table()}, summary)
    return RunResult(samples_table, predictions, summary)
