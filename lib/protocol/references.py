"""The image-blind rate: how often a Dangerous sample's answer would survive an image showing the
opposite finding, estimated from reference images (definitions written once, here).

Why references and not one swapped image per sample: a swap answer is just the model's answer on
ANOTHER image, so one swap per sample tells whether the model read that other image, not whether it
read the sample's (its answer row equals that image's own). Like the Perceptual Score (Gat et al.,
NeurIPS 2021) and Selective Modality Shifting (Restrepo et al. 2025), the measure is therefore an
expectation over a pool of references, and its interval carries the pool's randomness too.

- Reference [choose_references]: an image of the same dataset with a known label for a finding,
  drawn from OUTSIDE the evaluated samples: never one of their images, never one of their
  patients (``patient_id``), by default from a split the model was not trained on (the params
  ``reference_split`` / ``reference_root``). For each (finding, label) at most ``pool`` images are
  kept (every one when fewer), chosen by a seeded order of image ids that is the same for every
  finding, so one image tends to serve several findings and is scored once per question.
- Reference answer: the model's prediction for the reference image with the ORIGINAL question of
  the finding (prompt 0, the same text the samples of that finding were asked), scored once per
  distinct (reference image, question); rows of condition ``"reference"``.
- reference_agreement [reference_agreement], per sample: the share of its opposite-label
  references (same finding, the other label, same question) whose answer equals the sample's
  answer: the probability that the model would have answered the same had the image shown the
  opposite finding. Null where the sample's finding has fewer than ``min_references`` such
  references (not estimable) or none at all.
- image-blind rate [image_blind]: the mean over the estimable samples of
  [quadrant == Dangerous] x reference_agreement. Its complement within Dangerous, the
  prior-coincident rate, is (Dangerous fraction of the same samples) - image-blind rate: Dangerous
  samples whose answer an opposite-finding image would have changed (the model reads the image;
  its answer merely equals its prior here). ``among_dangerous`` = image-blind rate / Dangerous
  fraction. The same per finding, and per (finding, label).
- Interval [_Design.intervals]: a crossed (samples x references) percentile bootstrap, the
  pigeonhole bootstrap of Owen (2007, Annals of Applied Statistics 1:386): every resample draws
  the evaluated images (each with all its samples) AND the reference images with replacement,
  independently, recomputes every reference group's answer shares, and then draws each resampled
  Dangerous sample's counterfactual answer, Bernoulli(its share of references answered alike):
  the rate speaks of THESE samples' answers had their images shown the opposite finding, and each
  of those answers is itself uncertain, a third source of randomness beside the samples and the
  pool. Mildly conservative for the population rate (Owen 2007); leaving out the references' side
  is what made earlier intervals miss the twins' truth, and leaving out the per-sample draw made
  them too narrow where the references all agree (a shortcut finding).
"""
from __future__ import annotations

import hashlib
import math

import numpy as np
import pandas as pd

OPPOSITE = {"yes": "no", "no": "yes"}
MIN_REFERENCES = 10          # fewer opposite-label references than this: not estimable
REFERENCE_COLUMNS = ("image_id", "finding", "label", "image_path")


def seeded_order(image_ids, seed: int) -> np.ndarray:
    """A seeded permutation key per image id (SHA-256 of seed and id): independent of row order."""
    return np.array([int.from_bytes(hashlib.sha256(f"{seed}:{i}".encode()).digest()[:8], "little")
                     for i in image_ids], dtype=np.uint64)


def choose_references(candidates: pd.DataFrame, samples: pd.DataFrame, pool: int, seed: int = 0) -> pd.DataFrame:
    """The references: at most ``pool`` images per (finding, label) of ``candidates`` (columns
    image_id, finding, label, image_path, patient_id) that share no image and no patient with
    ``samples`` (columns image_id, patient_id), chosen by ``seeded_order``. Rows sorted by
    finding, label, image_id; columns ``REFERENCE_COLUMNS``."""
    if isinstance(pool, bool) or not isinstance(pool, int) or pool < 1:
        raise ValueError(f"reference pool must be an integer >= 1, got {pool!r}")
    taken_images = set(samples["image_id"])
    taken_patients = set(samples["patient_id"].dropna()) if "patient_id" in samples else set()
    free = candidates[~candidates["image_id"].isin(taken_images)]
    if "patient_id" in free:
        free = free[~free["patient_id"].isin(taken_patients) | free["patient_id"].isna()]
    free = free.drop_duplicates(["image_id", "finding"]).assign(_order=lambda t: seeded_order(t["image_id"], seed))
    chosen = (free.sort_values(["_order", "image_id"]).groupby(["finding", "label"], sort=True).head(pool))
    return chosen.sort_values(["finding", "label", "image_id"], ignore_index=True)[list(REFERENCE_COLUMNS)]


def reference_agreement(samples: pd.DataFrame, reference_answers: pd.DataFrame,
                        min_references: int = MIN_REFERENCES) -> pd.DataFrame:
    """Per sample (``samples`` order): ``n_references`` (its opposite-label references with its
    question) and ``reference_agreement`` (module docstring; NaN when n_references <
    ``min_references``).

    ``samples``: sample_id, finding, label, pred, question (its original prompt as scored);
    ``reference_answers``: finding, label, question, answer (one row per reference answer, as in
    references.csv).
    """
    counts = _group_counts(reference_answers)
    keys = _sample_groups(samples)
    n = keys.map(lambda k: counts.get(k, (0, 0))[0]).to_numpy(dtype=int)
    yes = keys.map(lambda k: counts.get(k, (0, 0))[1]).to_numpy(dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        share_yes = yes / n
    agreement = np.where(samples["pred"].to_numpy() == "yes", share_yes, 1.0 - share_yes)
    agreement = np.where(n >= min_references, agreement, np.nan)
    return pd.DataFrame({"sample_id": samples["sample_id"].to_numpy(), "n_references": n,
                         "reference_agreement": agreement})


def _sample_groups(samples: pd.DataFrame) -> pd.Series:
    """Each sample's reference group: (finding, the OTHER label, its question)."""
    return pd.Series(list(zip(samples["finding"], samples["label"].map(OPPOSITE), samples["question"])),
                     index=samples.index)


def _group_counts(reference_answers: pd.DataFrame) -> dict:
    """(finding, label, question) -> (references, references answered yes)."""
    if reference_answers.empty:
        return {}
    grouped = reference_answers.assign(_yes=reference_answers["answer"] == "yes").groupby(
        ["finding", "label", "question"])["_yes"].agg(["size", "sum"])
    return {key: (int(row["size"]), int(row["sum"])) for key, row in grouped.iterrows()}


def image_blind(samples: pd.DataFrame, reference_answers: pd.DataFrame, *, resamples: int = 1000,
                ci_level: float = 0.95, seed: int = 0, min_references: int = MIN_REFERENCES) -> dict:
    """The image-blind rate, its complement and their intervals (module docstring).

    ``samples``: one row per sample with sample_id, image_id, finding, label, pred, quadrant,
    question; ``reference_answers``: image_id, finding, label, question, answer. Returns (the
    summary's ``image_blind`` block, the per-sample table sample_id, n_references,
    reference_agreement). The block: rate, ci95, prior_coincident (+ ci95), among_dangerous
    (+ ci95), dangerous_fraction, n_samples, n_estimable, estimable, reason, min_references,
    n_reference_images, n_reference_answers, ci_method and by_finding (per finding: n_samples,
    n_references by label, estimable, rate, ci95, and by_label).
    """
    agreement = reference_agreement(samples, reference_answers, min_references)
    table = samples.assign(reference_agreement=agreement["reference_agreement"].to_numpy(),
                           n_references=agreement["n_references"].to_numpy())
    ok = table["reference_agreement"].notna().to_numpy()
    design = _Design(table[ok], reference_answers)
    point, low, high = design.intervals(resamples, ci_level, seed)
    by_finding = {}
    for finding in sorted(table["finding"].dropna().unique()):
        rows = table[table["finding"] == finding]
        n_refs = {label: int(reference_answers.loc[(reference_answers["finding"] == finding)
                                                   & (reference_answers["label"] == label), "image_id"].nunique())
                  for label in ("yes", "no")}
        estimable = bool(rows["reference_agreement"].notna().all()) and len(rows) > 0
        by_finding[finding] = {
            "n_samples": int(len(rows)), "n_references": n_refs, "estimable": estimable,
            "rate": point.get(f"finding:{finding}"), "ci95": _interval(low, high, f"finding:{finding}"),
            "by_label": {label: {"n_samples": int((rows["label"] == label).sum()),
                                 "rate": point.get(f"finding:{finding}:{label}"),
                                 "ci95": _interval(low, high, f"finding:{finding}:{label}")}
                         for label in ("yes", "no")},
        }
    n_ok = int(ok.sum())
    reason = None
    if n_ok == 0:
        reason = (f"no sample has {min_references} or more opposite-label references "
                  f"({len(reference_answers)} reference answers in all)")
    return {
        "rate": point.get("rate"), "ci95": _interval(low, high, "rate"),
        "prior_coincident": point.get("prior_coincident"),
        "ci95_prior_coincident": _interval(low, high, "prior_coincident"),
        "among_dangerous": point.get("among_dangerous"),
        "ci95_among_dangerous": _interval(low, high, "among_dangerous"),
        "dangerous_fraction": point.get("dangerous"),
        "n_samples": int(len(table)), "n_estimable": n_ok, "estimable": n_ok > 0, "reason": reason,
        "min_references": int(min_references),
        "n_reference_images": int(reference_answers["image_id"].nunique()) if len(reference_answers) else 0,
        "n_reference_answers": int(len(reference_answers)),
        "ci_method": ci_method(resamples, ci_level, seed, design.n_images, design.n_refs),
        "by_finding": by_finding,
    }, table[["sample_id", "n_references", "reference_agreement"]]


def _interval(low: dict, high: dict, key: str):
    lo, hi = low.get(key), high.get(key)
    return None if lo is None or hi is None else [lo, hi]


class _Design:
    """The crossed design: per-image sums of the samples' terms, per-reference answers by group.

    A sample contributes D x share_same(group), where share_same is the share of its group's
    references answered like the sample; so per image and group only the Dangerous samples'
    counts by answer are needed, and per resample only the groups' yes-shares.
    """

    def __init__(self, samples: pd.DataFrame, reference_answers: pd.DataFrame):
        groups = _sample_groups(samples)
        self.groups = sorted(set(groups), key=str)
        gi = {g: i for i, g in enumerate(self.groups)}
        g_index = groups.map(gi).to_numpy(dtype=int) if len(samples) else np.zeros(0, int)
        self.image_index, images = pd.factorize(samples["image_id"])
        self.n_images = len(images)
        dangerous = (samples["quadrant"] == "Dangerous").to_numpy()
        said_yes = (samples["pred"] == "yes").to_numpy()
        n_groups = len(self.groups)
        # statistics: rate, dangerous, per finding, per (finding, label); each a num/den pair
        self.keys = ["rate", "dangerous"]
        findings = sorted(samples["finding"].unique()) if len(samples) else []
        self.keys += [f"finding:{f}" for f in findings]
        self.keys += [f"finding:{f}:{lab}" for f in findings for lab in ("yes", "no")]
        member = np.zeros((len(samples), len(self.keys)), dtype=bool)   # sample counts toward key
        member[:, 0] = True
        for k, key in enumerate(self.keys[2:], start=2):
            parts = key.split(":")
            hit = (samples["finding"] == parts[1]).to_numpy().copy()
            if len(parts) == 3:
                hit &= (samples["label"] == parts[2]).to_numpy()
            member[:, k] = hit
        member_d = member.copy()
        # per image: Dangerous yes / no counts by (key, group); sample counts by key
        self.dy = np.zeros((self.n_images, len(self.keys), n_groups))
        self.dn = np.zeros_like(self.dy)
        self.den = np.zeros((self.n_images, len(self.keys)))
        for s in range(len(samples)):
            i, g = self.image_index[s], g_index[s]
            self.den[i] += member[s]
            if dangerous[s]:
                (self.dy if said_yes[s] else self.dn)[i, member_d[s], g] += 1
        self.dang = np.zeros(self.n_images)
        np.add.at(self.dang, self.image_index, dangerous.astype(float))
        # references: one column per reference image, yes answers by group
        refs = reference_answers[reference_answers.apply(
            lambda r: (r["finding"], r["label"], r["question"]) in gi, axis=1)] if len(reference_answers) else reference_answers
        ref_index, ref_images = pd.factorize(refs["image_id"]) if len(refs) else (np.zeros(0, int), [])
        self.n_refs = len(ref_images)
        self.ref_total = np.zeros((self.n_refs, n_groups))
        self.ref_yes = np.zeros((self.n_refs, n_groups))
        for r, (f, lab, q, pred) in zip(ref_index, refs[["finding", "label", "question", "answer"]].itertuples(index=False)):
            g = gi[(f, lab, q)]
            self.ref_total[r, g] += 1
            self.ref_yes[r, g] += pred == "yes"

    def statistic(self, w_images: np.ndarray, w_refs: np.ndarray, rng=None) -> np.ndarray:
        """(B, n_images) and (B, n_refs) resample counts -> (B, statistics). With ``rng`` each
        (resampled) Dangerous sample's counterfactual answer is drawn, Bernoulli(its share of
        references answered alike), instead of taking that share itself."""
        with np.errstate(invalid="ignore", divide="ignore"):
            share_yes = (w_refs @ self.ref_yes) / (w_refs @ self.ref_total)            # (B, G)
            dy = np.einsum("bi,ikg->bkg", w_images, self.dy)
            dn = np.einsum("bi,ikg->bkg", w_images, self.dn)
            same_yes, same_no = share_yes[:, None, :], 1 - share_yes[:, None, :]
            if rng is None:
                num = (dy * same_yes + dn * same_no).sum(-1)                           # (B, K)
            else:
                known = ~np.isnan(same_yes)
                drawn = (rng.binomial(np.rint(dy).astype(np.int64), np.where(known, same_yes, 0))
                         + rng.binomial(np.rint(dn).astype(np.int64), np.where(known, same_no, 0)))
                num = np.where(known, drawn, np.nan).sum(-1)
            den = w_images @ self.den                                                  # (B, K)
            rates = num / den
            dangerous = (w_images @ self.dang) / den[:, 0]
            rates[:, 1] = dangerous
            among = num[:, 0] / (w_images @ self.dang)
        return np.column_stack([rates, dangerous - rates[:, 0], among])

    def intervals(self, resamples: int, ci_level: float, seed: int):
        names = self.keys + ["prior_coincident", "among_dangerous"]
        if self.n_images == 0 or self.n_refs == 0:
            return {}, {}, {}
        point = self.statistic(np.ones((1, self.n_images)), np.ones((1, self.n_refs)))[0]
        rng = np.random.default_rng(seed)
        dist = []
        for start in range(0, resamples, 250):   # bounded memory: (chunk, images, keys, groups)
            b = min(250, resamples - start)
            w_i = rng.multinomial(self.n_images, np.full(self.n_images, 1 / self.n_images), size=b)
            w_r = rng.multinomial(self.n_refs, np.full(self.n_refs, 1 / self.n_refs), size=b)
            dist.append(self.statistic(w_i.astype(float), w_r.astype(float), rng))
        dist = np.vstack(dist)
        alpha = (1 - ci_level) / 2
        with np.errstate(invalid="ignore"):
            import warnings
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                low, high = np.nanquantile(dist, [alpha, 1 - alpha], axis=0)
        plain = lambda v: None if v is None or math.isnan(v) else float(v)  # noqa: E731
        return ({n: plain(p) for n, p in zip(names, point)}, {n: plain(v) for n, v in zip(names, low)},
                {n: plain(v) for n, v in zip(names, high)})


def ci_method(resamples: int, ci_level: float, seed: int, n_images: int, n_reference_images: int) -> str:
    """The sentence naming the image-blind interval's method (summary ``ci_method``)."""
    return (f"image-blind rate: crossed (samples x references) percentile bootstrap, the pigeonhole "
            f"bootstrap of Owen 2007: {resamples} resamples, each drawing the run's {n_images} "
            f"evaluated image(s) (with all their samples) and its {n_reference_images} reference "
            f"image(s) with replacement, independently, then each resampled Dangerous sample's "
            f"counterfactual answer (Bernoulli of its reference agreement); level {ci_level:g}, seed {seed}")
