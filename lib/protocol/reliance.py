"""Which image each sample's `swap` check uses (see lib.protocol.taxonomy for the definitions).

The swap check asks a sample's original question about the image of ANOTHER sample of the same
run that has the same finding and the opposite label, so that an image-reading model should
change its answer. The choice is a pure function of the run's samples and the seed:

- candidates of a sample: the distinct image_ids of the run's samples with the same ``finding``
  and the other ``label``, minus the sample's own image_id (per-image question files can ask
  two questions of one image); a sample whose finding is missing (None/NaN) has none;
- among them (sorted), one is drawn uniformly by a generator seeded with (seed, SHA-256 of the
  sample_id), so a sample's swap depends only on its id, the seed and its candidate set, never
  on the order of the samples or on the other samples' draws;
- no candidate: no swap (None); the run counts these samples as ``swap_unavailable``.
"""
from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd

OPPOSITE = {"yes": "no", "no": "yes"}


def choose_swaps(samples: pd.DataFrame, seed: int = 0) -> dict:
    """sample_id -> image_id of its swap image, or None when no opposite-label image exists.

    ``samples`` needs the columns sample_id, image_id, finding and label ("yes"/"no"); the dict
    follows its row order. Raises ValueError on missing columns, duplicate sample_ids or other
    labels.
    """
    missing = [c for c in ("sample_id", "image_id", "finding", "label") if c not in samples.columns]
    if missing:
        raise ValueError(f"choose_swaps: samples lack column(s) {missing}")
    if samples["sample_id"].duplicated().any():
        raise ValueError("choose_swaps: duplicate sample_id(s)")
    bad = set(samples["label"]) - set(OPPOSITE)
    if bad:
        raise ValueError(f"choose_swaps: labels must be 'yes' or 'no', found {sorted(map(str, bad))}")
    known = samples[samples["finding"].notna()]
    pools = {key: sorted(set(group["image_id"]), key=str)
             for key, group in known.groupby(["finding", "label"], sort=False)}
    members = {key: set(pool) for key, pool in pools.items()}
    swaps = {}
    for sample_id, image_id, finding, label in samples[
            ["sample_id", "image_id", "finding", "label"]].itertuples(index=False):
        if pd.isna(finding):
            swaps[sample_id] = None
            continue
        key = (finding, OPPOSITE[label])
        pool = pools.get(key, [])
        if image_id in members.get(key, ()):
            pool = [i for i in pool if i != image_id]
        swaps[sample_id] = pool[_draw(seed, sample_id, len(pool))] if pool else None
    return swaps


def swap_unavailable(swaps: dict) -> int:
    """How many samples have no swap image."""
    return sum(v is None for v in swaps.values())


def _draw(seed: int, sample_id, n: int) -> int:
    digest = hashlib.sha256(str(sample_id).encode()).digest()
    rng = np.random.default_rng([int(seed), int.from_bytes(digest[:8], "little")])
    return int(rng.integers(n))
