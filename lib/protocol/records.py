"""The resumable per-sample store of a run, and its final `predictions.parquet`.

Scored batches are written as they are computed to `<output_dir>/records/<run_hash>/`, one
small JSON chunk per batch, written atomically (temporary name, then `os.replace`), so a run
killed at any moment (even `kill -9`) leaves only whole chunks. A chunk holds the batch's
sample rows, its prediction rows keyed by (sample_id, prompt_id, condition), and the samples
skipped for an unreadable image. Rerunning the same params computes only the samples that no
chunk holds; other params have another hash and never see these records.
"""
from __future__ import annotations

import json
import os
import uuid
from collections import Counter
from pathlib import Path

import pandas as pd

KEY = ["sample_id", "prompt_id", "condition"]


class RecordStore:
    def __init__(self, output_dir, run_hash: str):
        self.dir = Path(output_dir) / "records" / run_hash
        self.dir.mkdir(parents=True, exist_ok=True)

    def chunks(self):
        for path in sorted(self.dir.glob("chunk-*.json")):
            yield json.loads(path.read_text())

    def done_samples(self) -> set[str]:
        """Samples already scored or already skipped under this run's hash."""
        done = set()
        for chunk in self.chunks():
            done.update(s["sample_id"] for s in chunk["samples"])
            done.update(s["sample_id"] for s in chunk["skipped"])
        return done

    def write(self, samples: list[dict], predictions: list[dict], skipped: list[dict]) -> Path:
        """Atomically add one chunk; a crash before the rename leaves no trace of it."""
        name = f"chunk-{uuid.uuid4().hex}.json"
        tmp = self.dir / f".{name}.tmp"
        tmp.write_text(json.dumps({"samples": samples, "predictions": predictions, "skipped": skipped}))
        os.replace(tmp, self.dir / name)
        return self.dir / name

    def tables(self) -> tuple[pd.DataFrame, pd.DataFrame, Counter]:
        """(samples, predictions, skipped reasons) over all chunks, deduplicated by key."""
        samples, predictions, skipped = [], [], Counter()
        for chunk in self.chunks():
            samples += chunk["samples"]
            predictions += chunk["predictions"]
            skipped.update(s["reason"] for s in {s["sample_id"]: s for s in chunk["skipped"]}.values())
        sample_df = pd.DataFrame(samples, columns=["sample_id", "image_id", "finding", "label"])
        pred_df = pd.DataFrame(predictions)
        if not pred_df.empty:
            pred_df = pred_df.drop_duplicates(KEY, keep="last").sort_values(KEY, ignore_index=True)
        sample_df = sample_df.drop_duplicates("sample_id", keep="last").sort_values(
            "sample_id", ignore_index=True)
        return sample_df, pred_df, skipped
