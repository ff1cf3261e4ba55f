"""Known-answer tests of the image-blind rate (lib.protocol.references).

Hand-worked run: three samples of finding f on two images, question q.

| sample | image | label | pred | quadrant  | opposite references         | agreement |
|--------|-------|-------|------|-----------|-----------------------------|-----------|
| s1     | A     | yes   | yes  | Dangerous | 10 "no" images, 3 said yes  | 3/10      |
| s2     | B     | no    | no   | Dangerous | 10 "yes" images, 8 said yes | 2/10      |
| s3     | B     | no    | yes  | Ideal     | the same 10, 8 said yes     | 8/10      |

image-blind rate = (0.3 + 0.2 + 0) / 3 = 1/6; Dangerous fraction 2/3; prior-coincident
2/3 - 1/6 = 1/2; among Dangerous (1/6) / (2/3) = 1/4.
"""
import numpy as np
import pandas as pd
import pytest

from lib.protocol import references as rf

SAMPLES = pd.DataFrame(dict(
    sample_id=["s1", "s2", "s3"], image_id=["A", "B", "B"], finding="f", label=["yes", "no", "no"],
    pred=["yes", "no", "yes"], quadrant=["Dangerous", "Dangerous", "Ideal"], question="q"))


def answers(n_no=10, yes_among_no=3, n_yes=10, yes_among_yes=8, finding="f", question="q"):
    rows = [dict(image_id=f"N{i}", finding=finding, label="no", question=question,
                 answer="yes" if i < yes_among_no else "no") for i in range(n_no)]
    rows += [dict(image_id=f"Y{i}", finding=finding, label="yes", question=question,
                  answer="yes" if i < yes_among_yes else "no") for i in range(n_yes)]
    return pd.DataFrame(rows)


def test_reference_agreement_by_hand():
    got = rf.reference_agreement(SAMPLES, answers())
    assert got["n_references"].tolist() == [10, 10, 10]
    assert got["reference_agreement"].tolist() == pytest.approx([0.3, 0.2, 0.8])


def test_too_few_references_are_not_estimable():
    got = rf.reference_agreement(SAMPLES, answers(n_no=9, yes_among_no=3))
    assert np.isnan(got["reference_agreement"][0]) and got["reference_agreement"][1] == pytest.approx(0.2)
    other_question = rf.reference_agreement(SAMPLES, answers(question="another"))
    assert other_question["n_references"].tolist() == [0, 0, 0]


def test_pooled_rate_and_its_complement_by_hand():
    block, per_sample = rf.image_blind(SAMPLES, answers(), resamples=200)
    assert block["rate"] == pytest.approx(1 / 6)
    assert block["dangerous_fraction"] == pytest.approx(2 / 3)
    assert block["prior_coincident"] == pytest.approx(1 / 2)
    assert block["among_dangerous"] == pytest.approx(1 / 4)
    assert block["estimable"] and block["n_estimable"] == 3 and block["reason"] is None
    assert block["by_finding"]["f"]["rate"] == pytest.approx(1 / 6)
    assert block["by_finding"]["f"]["by_label"]["yes"]["rate"] == pytest.approx(0.3)
    assert block["by_finding"]["f"]["by_label"]["no"]["rate"] == pytest.approx(0.1)
    assert block["by_finding"]["f"]["n_references"] == {"yes": 10, "no": 10}
    assert block["n_reference_images"] == 20 and "pigeonhole" in block["ci_method"]
    assert per_sample["reference_agreement"].tolist() == pytest.approx([0.3, 0.2, 0.8])
    low, high = block["ci95"]
    assert low <= block["rate"] <= high


def test_no_references_is_not_estimable():
    block, per_sample = rf.image_blind(SAMPLES, answers().iloc[:0], resamples=50)
    assert block["rate"] is None and block["ci95"] is None and not block["estimable"]
    assert "10 or more" in block["reason"]
    assert per_sample["reference_agreement"].isna().all()


def crossed_run(n_images, n_refs, seed, p_dangerous=0.6, p_ref_yes=0.3):
    """A run of n_images samples (label yes, answer yes) whose Dangerous flags and whose n_refs
    opposite-label references' answers are drawn at random."""
    rng = np.random.default_rng(seed)
    samples = pd.DataFrame(dict(
        sample_id=[f"s{i}" for i in range(n_images)], image_id=[f"i{i}" for i in range(n_images)],
        finding="f", label="yes", pred="yes", question="q",
        quadrant=np.where(rng.random(n_images) < p_dangerous, "Dangerous", "Ideal")))
    refs = pd.DataFrame(dict(image_id=[f"r{i}" for i in range(n_refs)], finding="f", label="no",
                             question="q", answer=np.where(rng.random(n_refs) < p_ref_yes, "yes", "no")))
    return samples, refs


def test_interval_widens_when_the_pool_shrinks():
    samples, refs = crossed_run(400, 400, seed=0)
    wide_pool, _ = rf.image_blind(samples, refs, resamples=1000)
    small = refs.iloc[:20].copy()
    small["answer"] = np.where(np.arange(20) < round(20 * (refs.answer == "yes").mean()), "yes", "no")
    small_pool, _ = rf.image_blind(samples, small, resamples=1000)
    width = lambda b: b["ci95"][1] - b["ci95"][0]  # noqa: E731
    assert width(small_pool) > 1.5 * width(wide_pool)


def test_the_samples_only_interval_would_be_too_narrow():
    # 15 references against 3,000 answering in the same shares: the same rate, but only the small
    # pool's interval carries the pool's randomness (what a samples-only bootstrap leaves out).
    samples, refs = crossed_run(300, 15, seed=1)
    crossed, _ = rf.image_blind(samples, refs, resamples=1000)
    fixed = pd.concat([refs] * 200, ignore_index=True).assign(image_id=lambda t: [f"r{i}" for i in range(len(t))])
    samples_only, _ = rf.image_blind(samples, fixed, resamples=1000)
    assert crossed["rate"] == pytest.approx(samples_only["rate"])
    assert crossed["ci95"][1] - crossed["ci95"][0] > 1.5 * (samples_only["ci95"][1] - samples_only["ci95"][0])


def test_crossed_interval_covers_the_truth():
    # Truth: P(Dangerous) x P(a reference says yes) = 0.6 x 0.3 = 0.18. Redraw samples AND
    # references 100 times: a 95 % interval should cover at least ~90 % of the time.
    covered = 0
    for seed in range(100):
        samples, refs = crossed_run(150, 30, seed=100 + seed)
        block, _ = rf.image_blind(samples, refs, resamples=400, seed=seed)
        covered += block["ci95"][0] <= 0.18 <= block["ci95"][1]
    assert covered >= 90


def test_choose_references_excludes_evaluated_images_and_patients_and_caps_the_pool():
    candidates = pd.DataFrame(dict(
        image_id=[f"c{i}" for i in range(12)], patient_id=[f"p{i}" for i in range(12)], finding="f",
        label=["yes"] * 6 + ["no"] * 6, image_path="x"))
    evaluated = pd.DataFrame(dict(image_id=["c0"], patient_id=["p1"]))
    refs = rf.choose_references(candidates, evaluated, pool=3, seed=0)
    assert set(refs.image_id).isdisjoint({"c0", "c1"})
    assert refs.groupby("label").size().to_dict() == {"no": 3, "yes": 3}
    assert refs.equals(rf.choose_references(candidates.iloc[::-1], evaluated, pool=3, seed=0))
    every = rf.choose_references(candidates, evaluated, pool=100, seed=0)
    assert len(every) == 10                      # every image when fewer than the pool
    assert not rf.choose_references(candidates, evaluated, pool=3, seed=1).equals(refs)


def test_choose_references_shares_images_across_findings():
    ids = [f"c{i}" for i in range(50)]
    candidates = pd.concat([pd.DataFrame(dict(image_id=ids, patient_id=ids, finding=f, label="no",
                                              image_path="x")) for f in ("a", "b")])
    refs = rf.choose_references(candidates, pd.DataFrame(columns=["image_id", "patient_id"]), pool=10, seed=0)
    chosen = refs.groupby("finding").image_id.apply(set)
    assert chosen["a"] == chosen["b"]           # one seeded order: the same images serve both


def test_each_samples_counterfactual_answer_is_drawn():
    # 400 Dangerous samples alike, 1,000 references half of which answer like them: resampling the
    # samples alone moves nothing; the per-sample draw gives the binomial half-width
    # 1.96 sqrt(0.25 / 400) = 0.049, the pool adds 1.96 sqrt(0.25 / 1000): 0.058 together.
    samples = pd.DataFrame(dict(sample_id=[f"s{i}" for i in range(400)], image_id=[f"i{i}" for i in range(400)],
                                finding="f", label="yes", pred="yes", question="q", quadrant="Dangerous"))
    refs = pd.DataFrame(dict(image_id=[f"r{i}" for i in range(1000)], finding="f", label="no", question="q",
                             answer=["yes", "no"] * 500))
    block, _ = rf.image_blind(samples, refs, resamples=2000, seed=1)
    assert block["rate"] == pytest.approx(0.5)
    low, high = block["ci95"]
    assert (high - low) / 2 == pytest.approx(1.96 * np.sqrt(0.25 / 400 + 0.25 / 1000), abs=0.008)
