"""Are the counterfactual twins rendered like natural images? A fresh synthetic world with twins,
and one model's answers on its natural positives and on its twin positives (the finding added to a
negative image), finding by finding.

If twin positives were easier or harder for a model than natural positives, the twin truth of the
image-blind rate (lib.protocol.references) would be biased, not the estimate. Natural positives
come from every split of the fresh world (another seed than the default's); twins from its test
split, as in the default build.

    python -m lib.offline.twin_check outputs/default/models/gemma3-base [--adapter DIR] [--dataset mimic-cxr]
"""
from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from ..protocol import data, engine, models, questions
from .layouts import write_mimic, write_padchest
from .twins import TWINS_DIR, twin_csv
from .world import prevalence


def fresh_world(root: Path, dataset: str, n_images: int, seed: int) -> Path:
    """A world of `dataset` with twins under `root` (written once; reused when there)."""
    if not twin_csv(root, dataset).is_file():
        write = write_mimic if dataset == "mimic-cxr" else write_padchest
        write(root / dataset, n_images, seed, prevalence("real")[dataset], twins_dir=root / TWINS_DIR)
    return root


def compare(lm, root: Path, dataset: str, batch_size: int = 16) -> pd.DataFrame:
    """Per finding: the share of natural positives and of twin positives answered "yes" to the
    finding's original question, and how many of each."""
    sets = questions.load_question_sets()
    original = {f: questions.prompts_for(f, sets)[0] for f in data.DEFAULT_FINDINGS}
    natural = [s for s in data.iter_samples(dataset, root / dataset, split=None) if s.label == "yes"]
    twins = pd.read_csv(twin_csv(root, dataset))
    twins = twins[~twins["present"]]
    items = [engine.Item(f"natural|{s.finding}|{s.image_id}", data.read_xray(s.image_path).convert("RGB"),
                         (original[s.finding],)) for s in natural]
    items += [engine.Item(f"twin|{t.finding}|{t.image_id}",
                          data.read_xray(twin_csv(root, dataset).parent / t.twin_path).convert("RGB"),
                          (original[t.finding],)) for t in twins.itertuples()]
    rows = pd.DataFrame(engine.Engine(lm, batch_size=batch_size).score(items))
    parts = rows["sample_id"].str.split("|", expand=True)
    rows = rows.assign(kind=parts[0], finding=parts[1], said_yes=rows["p_yes"] >= 0.5)
    table = rows.groupby(["finding", "kind"])["said_yes"].agg(["mean", "size"]).unstack("kind")
    table.columns = [f"{'sensitivity' if stat == 'mean' else 'n'} {kind}" for stat, kind in table.columns]
    return table


def main(argv=None) -> pd.DataFrame:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model")
    parser.add_argument("--adapter")
    parser.add_argument("--dataset", default="mimic-cxr", choices=data.DATASETS)
    parser.add_argument("--n-images", type=int, default=1400)
    parser.add_argument("--seed", type=int, default=20_000)
    parser.add_argument("--root", default="outputs/twin_check")
    args = parser.parse_args(argv)
    root = fresh_world(Path(args.root) / f"{args.dataset}-{args.seed}", args.dataset, args.n_images, args.seed)
    lm = models.load_model(args.model, adapter=args.adapter, merge_adapter=bool(args.adapter),
                           dtype="float32", device="cpu")
    table = compare(lm, root, args.dataset)
    print(table.round(3).to_string())
    return table


if __name__ == "__main__":
    main()
