"""One run: a model-dataset pair scored end to end, resumably, into the run's three outputs.

`<output_dir>/predictions.parquet` (one row per sample x prompt x condition),
`<output_dir>/samples.parquet` (one row per sample, with its quadrant) and
`<output_dir>/summary.json` (the pair's flip rates, quadrant fractions, accuracy and entropy per
quadrant, skipped samples by reason, the params as run and their provenance).
"""
from __future__ import annotations

import itertools
import json
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd
from tqdm.auto import tqdm

from . import config, data, provenance, questions, records, taxonomy
from .engine import Engine, Item


@dataclass
class RunResult:
    samples: pd.DataFrame
    predictions: pd.DataFrame
    summary: dict


def stream_samples(params: dict, skipped: Counter):
    """The pair's samples, streamed from the reader, at most `limit` of them.

    With a per-image question file (`questions` = JSONL rows with an image_id, as written by
    `lib.protocol.questions.import_psf_med`) the samples are the file's rows joined with the reader's
    images instead (see `per_image_samples`).
    """
    if is_per_image_file(params["questions"]):
        samples = per_image_samples(params, skipped)
    else:
        samples = data.iter_samples(
            params["dataset"], params["data_root"], findings=tuple(params["findings"]),
            split=params["split"], label_policy=data.LabelPolicy(**params["label_policy"]),
            skipped=skipped,
        )
    return itertools.islice(samples, params["limit"])


# --- per-image question files (PSF-Med) ---------------------------------------------------------

@dataclass(frozen=True)
class QuestionSample(data.Sample):
    """A sample from a per-image question file: its prompts (original first) travel with it."""

    prompts: tuple = ()


def is_per_image_file(path) -> bool:
    """True for a .jsonl question file whose first record has an "image_id" key."""
    if not path or Path(path).suffix.lower() != ".jsonl" or not Path(path).is_file():
        return False
    with open(path) as handle:
        for line in handle:
            if line.strip():
                try:
                    return "image_id" in json.loads(line)
                except (json.JSONDecodeError, TypeError):
                    return False
    return False


def question_sets_for(params: dict) -> dict:
    """Question sets by finding; none for a per-image file (its prompts are in its samples)."""
    if is_per_image_file(params["questions"]):
        return {}
    return questions.load_question_sets(params["questions"])


def per_image_samples(params: dict, skipped: Counter):
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
        skipped=Counter(),
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
                prompts=row["prompts"])
    not_found = sum(len(rows) for image_id, rows in by_image.items() if image_id not in seen)
    if not_found:
        skipped["question_image_not_found"] += not_found

# --- end per-image question files ---


def batches_to_score(params: dict, store: records.RecordStore, skipped: Counter):
    """Lists of at most batch_size samples that the store does not hold yet."""
    done = store.done_samples()
    todo = (s for s in stream_samples(params, skipped) if s.sample_id not in done)
    while batch := list(itertools.islice(todo, params["batch_size"])):
        yield batch


def image_paths(params: dict, image_ids) -> list[str]:
    """Image files of the given image ids, found by streaming the pair's reader once more."""
    wanted = list(image_ids)
    keep = set(wanted)
    found = {s.image_id: s.image_path for s in stream_samples(params, Counter()) if s.image_id in keep}
    return [found[i] for i in wanted]


def load_items(batch, question_sets, max_paraphrases):
    """Items to score and (sample_id, reason) for samples whose image cannot be read."""
    items, bad, cache = [], [], {}
    for sample in batch:
        if sample.image_path not in cache:
            reasons = Counter()
            cache[sample.image_path] = (data.load_image(sample, reasons), reasons)
        image, reasons = cache[sample.image_path]
        if image is None:
            bad.append({"sample_id": sample.sample_id, "reason": next(iter(reasons))})
            continue
        if isinstance(sample, QuestionSample):  # per-image question file
            prompts = sample.prompts if max_paraphrases is None else sample.prompts[:1 + max_paraphrases]
        else:
            prompts = questions.prompts_for(sample.finding, question_sets, max_paraphrases)
        items.append(Item(sample.sample_id, image.convert("RGB"), prompts))
    return items, bad


def sample_row(sample: data.Sample) -> dict:
    return {k: v for k, v in asdict(sample).items() if k in ("sample_id", "image_id", "finding", "label")}


def score_batch(engine: Engine, store: records.RecordStore, batch, question_sets, params) -> int:
    """Score one batch and write it to the store as one chunk; returns samples scored."""
    items, bad = load_items(batch, question_sets, params["max_paraphrases"])
    rows = engine.score(items) if items else []
    scored = {it.sample_id for it in items}
    store.write([sample_row(s) for s in batch if s.sample_id in scored], rows, bad)
    return len(items)


def score_all(engine: Engine, store, params: dict, question_sets, skipped: Counter) -> float:
    """Score every missing sample with a progress bar; returns samples per second."""
    start, n = time.perf_counter(), 0
    with tqdm(desc=f"{params['config']}__{params['dataset']}", unit="sample") as bar:
        for batch in batches_to_score(params, store, skipped):
            done = score_batch(engine, store, batch, question_sets, params)
            n += done
            bar.update(len(batch))
    elapsed = time.perf_counter() - start
    return n / elapsed if n and elapsed > 0 else 0.0


def finalize(params: dict, run_hash: str, store, label_skips: Counter, engine_info: dict) -> RunResult:
    """Build predictions.parquet, samples.parquet and summary.json from the store."""
    sample_df, raw_predictions, image_skips = store.tables()
    predictions = taxonomy.add_answers(raw_predictions)
    samples_table = taxonomy.classify_samples(predictions, sample_df)
    n_skipped = dict(sorted((label_skips + image_skips).items()))
    summary = {
        "config": params["config"], "dataset": params["dataset"],
        **taxonomy.summarize(samples_table, predictions),
        "n_skipped": n_skipped, "run_hash": run_hash, "engine": engine_info,
        "params": params, **provenance.provenance(params["seed"]),
    }
    out = Path(params["output_dir"])
    predictions.to_parquet(out / "predictions.parquet", index=False)
    samples_table.to_parquet(out / "samples.parquet", index=False)
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    return RunResult(samples_table, predictions, summary)


def evaluate(params: dict, lm=None) -> RunResult:
    """Run the whole protocol for one validated params dict (see `config.load`)."""
    from . import models

    provenance.seed_everything(params["seed"])
    run_hash = config.run_hash(params)
    store = records.RecordStore(params["output_dir"], run_hash)
    question_sets = question_sets_for(params)  # {} for a per-image question file
    # Ray scale-out (workers > 1 or ray_address set): the model loads once per Ray actor, never
    # in this process; records land in the same store.
    if lm is None and (params["workers"] > 1 or params["ray_address"]):
        from ..scale import ray_scorer as distributed

        label_skips = Counter()
        engine_info = distributed.score_with_ray(params, store, question_sets, label_skips)
        return finalize(params, run_hash, store, label_skips, engine_info)
    if lm is None:
        lm = models.load_model(
            params["model"], adapter=params["adapter"], quantization=params["quantization"],
            dtype=params["dtype"], device=params["device"], merge_adapter=params["merge_adapter"],
            trust_remote_code=params["trust_remote_code"],
            allow_unsafe_weights=params["allow_unsafe_weights"],
        )
    engine = Engine(lm, image_removal=params["image_removal"],
                    prefix_sharing=params["prefix_sharing"], batch_size=params["batch_size"])
    label_skips = Counter()
    rate = score_all(engine, store, params, question_sets, label_skips)
    engine_info = {"mode": engine.mode, "fallback_reason": engine.fallback_reason,
                   "samples_per_second": rate, "device": str(lm.device), "dtype": str(lm.dtype)}
    return finalize(params, run_hash, store, label_skips, engine_info)
