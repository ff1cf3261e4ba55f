"""What `make default` checks and records about the world it built (notebooks/build_default.py).

The label priors each split got (`measured_prevalence`), the held-out checks of each base model
(`check_params`, `check_row`), the bar they must meet (`meets_requirements`), the reliance dial
(`reliance_dial`) and the assembly of ``build_report.json`` (`build_report`), whose keys
tests/test_default_build.py reads. Training itself is `default_models`; this module only
measures and records.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..protocol import config, data, provenance
from . import default_models
from .world import PREVALENCE_SOURCES, REAL_PREVALENCE, prevalence

DIAL_HOW = ("consistency LoRA trained with a random other training image "
            "for these findings (label independent of the image)")


def measured_prevalence(data_roots: dict) -> dict:
    """{dataset: {split: {finding: {"n", "positives", "rate"}}}}: the labels each split holds
    (splits with no sample are left out)."""
    measured = {}
    for dataset, root in data_roots.items():
        for split in data.SPLITS[dataset]:
            rows = pd.DataFrame([s.__dict__ for s in data.iter_samples(dataset, root, split=split)])
            for finding, group in rows.groupby("finding") if len(rows) else ():
                yes = group.label == "yes"
                measured.setdefault(dataset, {}).setdefault(split, {})[finding] = {
                    "n": len(group), "positives": int(yes.sum()), "rate": float(yes.mean())}
    return measured


def prevalence_table(measured: dict, drawn: dict) -> pd.DataFrame:
    """Findings x (dataset, split) of the measured rates, beside the rates drawn per dataset."""
    rates = pd.DataFrame({(d, s): {f: v["rate"] for f, v in by_finding.items()}
                          for d, by_split in measured.items() for s, by_finding in by_split.items()})
    return rates.assign(**{f"drawn {d}": pd.Series(r) for d, r in drawn.items()})


def check_params(family: str, dataset: str, data_root, out: Path, *, twins, limit, seed: int,
                 bootstrap: int) -> dict:
    """The validated params of one held-out check: the base model of `family` on `dataset`'s
    test split, the original question only (`max_paraphrases` 0), no reliance check, the twins
    scored; written under ``out/checks/<family>-base__<dataset>``."""
    return config.validate({
        "config": f"{family}-base", "model": str(out / "models" / f"{family}-base"),
        "dataset": dataset, "data_root": str(data_root), "limit": limit, "seed": seed,
        "reliance_checks": [], "max_paraphrases": 0, "bootstrap_resamples": bootstrap,
        "output_dir": str(out / "checks" / f"{family}-base__{dataset}"),
        "twins": str(twins), "prompt_split": str(out / "prompt_split.json")})


def check_row(family: str, dataset: str, result) -> dict:
    """One row of ``build_report.json["checks"]`` from a check's `run.RunResult`.

    Accuracy, sensitivity, specificity, balanced accuracy and the median yes/no mass are the
    run's summary's (`lib.protocol.summary.summarize`); twin_changes = the fraction of samples
    with a twin whose answer changes on it (truly_image_reliant; None without twins);
    text_only_differs = the summary's image_reliance_rate; then the accuracy and the mean
    text-only p(yes) of each finding.
    """
    s, samples = result.summary, result.samples
    twin = samples["truly_image_reliant"].dropna().astype(bool)
    return {"family": family, "dataset": dataset, "n": s["n_samples"],
            "n_positive": int((samples.label == "yes").sum()), "accuracy": s["accuracy"],
            "sensitivity": s["sensitivity"], "specificity": s["specificity"],
            "balanced_accuracy": s["balanced_accuracy"], "yes_no_mass_median": s["yes_no_mass"]["median"],
            "twin_changes": float(twin.mean()) if len(twin) else None, "n_twin": len(twin),
            "text_only_differs": s["image_reliance_rate"],
            **{f"accuracy {f}": v for f, v in samples.groupby("finding").correct.mean().items()},
            **{f"text_only p_yes {f}": float(v)
               for f, v in samples.groupby("finding").p_yes_text_only.mean().items()}}


def meets_requirements(checks: pd.DataFrame) -> pd.Series:
    """Per check row: the bar for a base model that reads the image (`default_models.MIN_*`);
    an undefined measure (no positive, no twin) does not meet it."""
    def at_least(column, bar):
        return pd.to_numeric(checks[column], errors="coerce").fillna(0) >= bar

    return (at_least("balanced_accuracy", default_models.MIN_BALANCED_ACCURACY)
            & at_least("yes_no_mass_median", default_models.MIN_YES_NO_MASS)
            & at_least("twin_changes", default_models.MIN_TWIN_CHANGES))


def reliance_dial(data_roots: dict) -> dict:
    """{adapter: {"findings", "how", "built_to_ignore": {dataset: [test sample ids]}}}: the test
    samples each shortcut adapter of `default_models.RELIANCE_DIAL` is built to ignore (those of
    its findings)."""
    test_ids = {d: [s.sample_id for s in data.iter_samples(d, r, split="test")] for d, r in data_roots.items()}
    return {name: {"findings": list(findings), "how": DIAL_HOW,
                   "built_to_ignore": {d: [i for i in ids if i.split("/", 1)[1] in findings]
                                       for d, ids in test_ids.items()}}
            for name, findings in default_models.RELIANCE_DIAL.items()}


def build_report(*, seed: int, n_images: int, world: str, prevalence_floor: float, build_seconds: float,
                 measured: dict, train_prevalence: dict, prompt_split: Path, twins: dict, dial: dict,
                 checks: pd.DataFrame, training: dict, n_train_images: int, n_test_images: int,
                 references: dict | None = None, n_references: int = 0) -> dict:
    """The contents of ``build_report.json``: the settings, the priors drawn and measured, the
    checks (with ``meets_requirements``) and whether all of them meet it, the dial, provenance."""
    return {"seed": seed, "n_images": n_images, "world": world, "build_seconds": build_seconds,
            "prevalence": prevalence(world, prevalence_floor), "prevalence_floor": prevalence_floor,
            "prevalence_real": REAL_PREVALENCE, "prevalence_sources": PREVALENCE_SOURCES,
            "prevalence_measured": measured, "train_prevalence": train_prevalence,
            "prompt_split": str(prompt_split), "twins": {d: str(p) for d, p in twins.items()},
            "references": {d: str(p) for d, p in (references or {}).items()}, "n_references": n_references,
            "reliance_dial": dial,
            "checks": checks.to_dict("records"), "requirements_met": bool(checks.meets_requirements.all()),
            "training": training, "n_train_images": n_train_images, "n_test_images": n_test_images,
            **provenance.provenance(seed)}
