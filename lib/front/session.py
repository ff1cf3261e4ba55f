"""What a run of the evaluate notebook does around the protocol: read what papermill injected,
validate it strictly with every check that needs no model, and choose the scorer.

`params(values, params_file)` is the notebook's validation cell: `values` are its globals. The
parameters papermill injected (`notebook.injected_parameters`) are checked too, so a misspelt
`-p` key is an error here, not only a warning on papermill's stderr.

Under the command line (`PROGRESS_ENV` names a file, `lib.front.notebook_run.execute`), the local scorer
also draws a plain-text bar over the samples into that file, which the command copies to the
terminal (the kernel's own streams reach it only through papermill, and not from a terminal).
"""
from __future__ import annotations

import os

from tqdm import tqdm

from ..protocol import config, preflight, run
from ..scale import ray_scorer
from .notebook import injected_parameters

PROGRESS_ENV = "CXR_SCREEN_PROGRESS"


def params(values: dict, params_file=None) -> dict:
    """The validated params; every check that needs no model runs here, before any loads."""
    validated = config.resolve(values, params_file, injected_parameters())
    preflight.check(validated, str(params_file or "notebook parameters"))
    return validated


def scorer_for(params: dict) -> run.Scorer | None:
    """The Ray actor pool when `workers` > 1 or `ray_address` is set, else the local scorer
    (with the command line's samples bar when `PROGRESS_ENV` names a file)."""
    if params["workers"] > 1 or params["ray_address"]:
        return ray_scorer.RayScorer()
    if os.environ.get(PROGRESS_ENV):
        return ProgressScorer(run.LocalScorer(), os.environ[PROGRESS_ENV])
    return None


class ProgressScorer:
    """A scorer whose store counts the items each written batch holds on a text bar drawn into
    the file ``path``: the samples and the per-run units (text-only questions, null images,
    references, other studies), each scored once."""

    def __init__(self, inner: run.Scorer, path):
        self.inner, self.path = inner, path

    def __call__(self, params, store, batches) -> dict:
        total = sum(len(batch) for batch in batches)
        with open(self.path, "a", encoding="utf-8") as sink, \
                tqdm(total=total, desc=f"{params['config']}__{params['dataset']}", unit="item",
                     file=sink, disable=False, mininterval=1.0, ncols=100) as bar:
            return self.inner(params, CountingStore(store, bar), batches)


class CountingStore:
    """A record store that advances ``bar`` by the items (scored or skipped) of each chunk."""

    def __init__(self, store, bar):
        self.store, self.bar = store, bar

    def write(self, samples, predictions, skipped):
        path = self.store.write(samples, predictions, skipped)
        self.bar.update(len(samples) + len(skipped))
        return path

    def __getattr__(self, name):
        return getattr(self.store, name)


def evaluate(params: dict) -> run.RunResult:
    """`run.evaluate` with the scorer the params ask for."""
    return run.evaluate(params, scorer=scorer_for(params))
