"""Each distinct (image, prompt) of a run is scored once (issue 20), and the answers are those of
the per-sample protocol that scores every sample's text-only, blank and null passes itself."""
import pandas as pd
import pytest

from lib.protocol import config, data, engine, models, records, run


@pytest.fixture(scope="module")
def evaluated(tiny_world, tmp_path_factory):
    params = config.validate({
        "config": "tiny", "model": str(tiny_world["models"]["llava"]), "dataset": "mimic-cxr",
        "data_root": str(tiny_world["data"]["mimic-cxr"]), "split": "train", "limit": 12,
        "reference_root": str(tiny_world["references"]["mimic-cxr"]), "bootstrap_resamples": 20,
        "output_dir": str(tmp_path_factory.mktemp("dedup") / "run")})
    return params, run.evaluate(params)


def test_every_distinct_image_and_question_runs_once(evaluated):
    params, result = evaluated
    samples = result.samples
    passes = result.summary["engine"]["passes"]
    questions = samples["question"].nunique()
    references = result.predictions.reference_image_id.dropna().nunique()
    assert questions == samples["finding"].nunique() == 4   # one original question per finding
    # text-only: once per distinct question, not once per sample (12)
    assert passes["text_only"] == questions
    # prefixes: the samples' images (12 samples on 3 images, one batch), the blank image, the null
    # images, every reference image and other study, each once, and each image derived from a
    # sample's own (twin, occlusion and its control)
    n_images = samples["image_id"].nunique()
    followups = len(result.predictions.dropna(subset=["followup_image_id"])[
        ["followup_image_id", "followup_onto_image_id"]].drop_duplicates())   # one per (study, image onto)
    derived = int(result.predictions.condition.isin(["twin", "occlude", "occlude_control"]).sum())
    assert followups >= 1
    assert passes["image_prefixes"] == n_images + 1 + engine.NULL_IMAGES + references + followups + derived
    per_run = result.predictions[result.predictions.sample_id.isna()]
    assert passes["suffixes"] == int((result.predictions.condition == "image").sum()) + len(per_run)
    assert per_run.groupby(records.PER_RUN_KEY, dropna=False).size().max() == 1
    dedup = result.summary["engine"]["dedup"]
    assert dedup["prompts_scored"] < dedup["prompts_per_sample_protocol"] and dedup["share_saved"] > 0


def test_answers_equal_the_per_sample_protocol(evaluated):
    """The run's image and text-only rows against every sample scored on its own, with its own
    text-only pass (engine.paper_items), and its blank / null answers against per-sample passes."""
    params, result = evaluated
    lm = models.load_model(params["model"], dtype="float32", device="cpu")
    jobs = {j.sample_id: j for j in run.plan(params, run.records.RecordStore(params["output_dir"], "x"),
                                             data.Skips()).jobs}
    items = [engine.Item(sid, data.read_xray(job.sample.image_path).convert("RGB"), job.prompts)
             for sid, job in jobs.items()]
    nulls = engine.null_images(params["seed"])
    per_sample = engine.paper_items(items)
    per_sample += [engine.Item(it.sample_id, engine.blank_image(), it.prompts[:1], engine.CONDITION_BLANK) for it in items]
    per_sample += [engine.Item(f"{it.sample_id}|{j}", image, it.prompts[:1], engine.CONDITION_NOISE)
                   for it in items for j, image in enumerate(nulls)]
    rows = pd.DataFrame(engine.Engine(lm, batch_size=1).score(per_sample))
    key = ["sample_id", "prompt_id", "condition"]
    paper = rows[rows.condition.isin(["image", "text_only"])].set_index(key)["p_yes"]
    got = result.predictions[result.predictions.sample_id.notna()].set_index(key)["p_yes"]
    assert set(got.index) == set(paper.index)
    assert (got - paper.reindex(got.index)).abs().max() < 1e-5
    by_question = result.predictions[result.predictions.sample_id.isna()]
    blank = by_question[by_question.condition == "blank"].set_index("prompt")["p_yes"]
    for row in rows[rows.condition == "blank"].itertuples():
        assert abs(blank[row.prompt] - row.p_yes) < 1e-5
    noise = by_question[by_question.condition == "noise"].groupby("prompt")["p_yes"].mean()
    per_sample_noise = rows[rows.condition == "noise"].assign(
        sample=lambda t: t.sample_id.str.split("|").str[0]).groupby(["sample", "prompt"])["p_yes"].mean()
    for (_, prompt), p in per_sample_noise.items():
        assert abs(noise[prompt] - p) < 1e-5
