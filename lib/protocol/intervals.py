"""Every interval of a run, in one home: percentile bootstraps of the rates of lib.protocol.measures.

- ci95 [bootstrap_ci]: percentile intervals from a cluster bootstrap over images (every resample
  draws the run's image_ids with replacement and takes all samples of each drawn image, because
  samples of one image are not independent; the local tests' rates draw patients instead, a
  follow-up being another image of the same patient), computed with scipy.stats.bootstrap,
  ``bootstrap_resamples`` resamples (default 1000), level ``ci_level`` (default 0.95: the key is
  called ci95 whatever the level), seeded. All rates share the same resamples. A resample where a
  rate is undefined (zero denominator, e.g. no Dangerous sample for the AUROC) is left out of that
  rate's interval; the interval is None where the rate itself is undefined on the run.
- The image-blind rate's interval [Crossed]: a crossed (samples x references) percentile
  bootstrap, the pigeonhole bootstrap of Owen (2007, Annals of Applied Statistics 1:386): every
  resample draws the evaluated images (each with all its samples) AND the reference images with
  replacement, independently, recomputes every reference group's answer shares, and then draws
  each resampled Dangerous sample's counterfactual answer, Bernoulli(its share of references
  answered alike): the rate speaks of THESE samples' answers had their images shown the opposite
  finding, and each of those answers is itself uncertain, a third source of randomness beside
  the samples and the pool. Mildly conservative for the population rate (Owen 2007); leaving out
  the references' side is what made earlier intervals miss the twins' truth, and leaving out the
  per-sample draw made them too narrow where the references all agree (a shortcut finding).
"""
from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
from scipy import stats as sps

from .measures import CLUSTER_RATES, ByCluster, place, plain


def validate_bootstrap(resamples, ci_level) -> None:
    """ValueError naming ``bootstrap_resamples`` or ``ci_level`` when one is out of range."""
    if isinstance(resamples, bool) or not isinstance(resamples, (int, np.integer)) or resamples < 1:
        raise ValueError(f"bootstrap_resamples must be an integer >= 1, got {resamples!r}")
    if isinstance(ci_level, bool) or not isinstance(ci_level, (int, float)) or not 0 < ci_level < 1:
        raise ValueError(f"ci_level must be a number strictly between 0 and 1, got {ci_level!r}")


def ci_method(resamples: int, ci_level: float, seed: int, n_images: int) -> str:
    """The sentence that ``summary["ci_method"]`` carries."""
    return (f"percentile cluster bootstrap over images (scipy.stats.bootstrap, method='percentile'): "
            f"{resamples} resamples drawing the run's {n_images} image_id(s) with replacement, each "
            f"drawn image bringing all of its samples (samples of one image are not independent; "
            f"on MIMIC-CXR the study would be the stricter unit); level {ci_level:g}, seed {seed}; "
            f"resamples where a rate is undefined are left out of that rate's interval")


def percentiles(dist: np.ndarray, ci_level: float, axis: int):
    """(low, high): the percentile interval of each statistic along ``axis``, NaN draws left out."""
    alpha = (1 - ci_level) / 2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rows -> NaN
        return np.nanquantile(dist, [alpha, 1 - alpha], axis=axis)


def rate_intervals(samples_table: pd.DataFrame, predictions: pd.DataFrame, *, resamples: int = 1000,
                   ci_level: float = 0.95, seed: int = 0, rates=CLUSTER_RATES,
                   unit: str = "image") -> tuple[dict, dict, dict]:
    """(point, interval, sizes) of every rate of ``rates`` (default ``CLUSTER_RATES``), by name: the
    point value of the run, its ``[low, high]`` (None where the rate is undefined on the run), from
    the cluster bootstrap over ``unit`` (lib.protocol.measures.ByCluster; module docstring), and for
    a ratio how many samples it is over (``ByCluster.sizes``).
    ``resamples`` and ``ci_level`` as checked by ``validate_bootstrap`` (its callers' job: once)."""
    declared = tuple(rates)
    rates = ByCluster(samples_table, predictions, declared, unit)
    n = rates.n_images
    point = rates.values(np.ones((1, n)))[0]

    def statistic(idx, axis=-1):
        idx = np.asarray(idx)
        batch_shape = idx.shape[:-1]
        idx = idx.reshape(-1, n)
        b = len(idx)
        weights = np.bincount((idx + n * np.arange(b)[:, None]).ravel(),
                              minlength=b * n).reshape(b, n).astype(float)
        return rates.values(weights).T.reshape((len(declared),) + batch_shape)

    if n >= 2:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # degenerate-distribution notices: handled below
            result = sps.bootstrap((np.arange(n),), statistic, n_resamples=resamples, vectorized=True,
                                   method="percentile", confidence_level=ci_level,
                                   rng=np.random.default_rng(seed))
        low, high = percentiles(np.atleast_2d(result.bootstrap_distribution), ci_level, axis=-1)
    else:  # one image (or none): every resample is the run itself
        low = high = point
    names = [r.name for r in declared]
    return ({name: plain(p) for name, p in zip(names, point)},
            {name: (None if math.isnan(p) or math.isnan(lo) else [float(lo), float(hi)])
             for name, p, lo, hi in zip(names, point, low, high)},
            rates.sizes())


def bootstrap_ci(samples_table: pd.DataFrame, predictions: pd.DataFrame, *, resamples: int = 1000,
                 ci_level: float = 0.95, seed: int = 0) -> dict:
    """The intervals of ``rate_intervals`` nested as under ``summary["ci95"]`` (e.g.
    ``["quadrant_fractions"]["Dangerous"]``); the image-blind rate has its own (``Crossed``)."""
    validate_bootstrap(resamples, ci_level)
    _, intervals, _ = rate_intervals(samples_table, predictions, resamples=resamples, ci_level=ci_level, seed=seed)
    out = {}
    for rate in CLUSTER_RATES:
        place(out, rate.key, intervals[rate.name])
    return out


class Crossed:
    """The image-blind rate's crossed bootstrap (module docstring) over its design: per-image sums
    of the samples' terms, per-reference answers by group.

    A sample contributes D x share_same(group), where share_same is the share of its group's
    references answered like the sample; so per image and group only the Dangerous samples'
    counts by answer are needed, and per resample only the groups' yes-shares. ``groups``: each
    sample's reference group (finding, label, question) of lib.protocol.references.
    """

    def __init__(self, samples: pd.DataFrame, groups: pd.Series, reference_answers: pd.DataFrame):
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
        # per image: Dangerous yes / no counts by (key, group); sample counts by key
        self.dy = np.zeros((self.n_images, len(self.keys), n_groups))
        self.dn = np.zeros_like(self.dy)
        self.den = np.zeros((self.n_images, len(self.keys)))
        for s in range(len(samples)):
            i, g = self.image_index[s], g_index[s]
            self.den[i] += member[s]
            if dangerous[s]:
                (self.dy if said_yes[s] else self.dn)[i, member[s], g] += 1
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
        """(point, low, high), each {statistic: value or None}: rate, dangerous, finding:<f>,
        finding:<f>:<label>, prior_coincident, among_dangerous; empty without images or
        references."""
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
        low, high = percentiles(np.vstack(dist), ci_level, axis=0)
        return ({n: plain(p) for n, p in zip(names, point)}, {n: plain(v) for n, v in zip(names, low)},
                {n: plain(v) for n, v in zip(names, high)})


def crossed_ci_method(resamples: int, ci_level: float, seed: int, n_images: int, n_reference_images: int) -> str:
    """The sentence naming the image-blind interval's method (summary ``ci_method``)."""
    return (f"image-blind rate: crossed (samples x references) percentile bootstrap, the pigeonhole "
            f"bootstrap of Owen 2007: {resamples} resamples, each drawing the run's {n_images} "
            f"evaluated image(s) (with all their samples) and its {n_reference_images} reference "
            f"image(s) with replacement, independently, then each resampled Dangerous sample's "
            f"counterfactual answer (Bernoulli of its reference agreement); level {ci_level:g}, seed {seed}")
