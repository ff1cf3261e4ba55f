"""The local counterfactual tests (lib.protocol.local_tests): occlusion fills a finding's box from its
surroundings, the control box goes where no finding is marked, the other study is the same
patient's with the fewest other labels changed, then the closest in date, and the per-sample
columns say whether the answer changed."""
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from lib.offline import synth
from lib.protocol import local_tests as lt
from lib.protocol.data import Sample


def nodule_case(seed: int):
    """(image with a nodule, its twin without it, the nodule's footprint, its fractional box)."""
    rng = np.random.default_rng(seed)
    findings = {"cardiomegaly": False, "pleural effusion": False, "pneumothorax": False, "nodule": True}
    state = rng.bit_generator.state
    pixels = synth.render_radiograph(rng, findings)
    twin = synth.render_radiograph(synth.generator(state), {**findings, "nodule": False})
    foot = synth.finding_region(synth.generator(state), findings, "nodule", margin=0)
    ys, xs = np.nonzero(foot)
    size = foot.shape[0]
    box = (xs.min() / size, ys.min() / size, (xs.max() + 1) / size, (ys.max() + 1) / size)
    as_image = Image.fromarray(np.round(pixels * 255).astype(np.uint8)).convert("RGB")
    return as_image, np.round(twin * 255), foot, box


@pytest.mark.parametrize("seed", [1, 3, 5])
def test_occluding_a_nodule_comes_close_to_its_twin_and_touches_nothing_else(seed):
    image, twin, foot, box = nodule_case(seed)
    filled = np.asarray(lt.occlude(image, [box]).convert("L"), dtype=float)
    original = np.asarray(image.convert("L"), dtype=float)
    left, top, right, bottom = lt.pixel_box(box, *image.size)
    outside = np.ones_like(foot)
    outside[top:bottom, left:right] = False
    assert (filled[outside] == original[outside]).all()
    # in the nodule, the fill is far closer to the image without it than the original is
    assert np.abs(filled - twin)[foot].mean() < 0.35 * np.abs(original - twin)[foot].mean()
    assert lt.occlude(image, [box]).mode == "RGB"


def effusion_case(seed: int):
    """(image with a pleural effusion, its twin without it, the effusion's footprint, its boxes)."""
    rng = np.random.default_rng(seed)
    findings = {"cardiomegaly": False, "pleural effusion": True, "pneumothorax": False, "nodule": False}
    state = rng.bit_generator.state
    image = Image.fromarray(np.round(synth.render_radiograph(rng, findings) * 255).astype(np.uint8))
    twin = synth.render_radiograph(synth.generator(state), {**findings, "pleural effusion": False})
    foot = synth.finding_region(synth.generator(state), findings, "pleural effusion", margin=0)
    size = foot.shape[0]
    boxes = [tuple(v / size for v in b) for b in synth.finding_boxes(synth.generator(state), findings, "pleural effusion")]
    return image, np.round(twin * 255), foot, boxes


@pytest.mark.parametrize("seed", [0, 2, 4])
def test_an_effusion_is_filled_from_the_other_side_closer_to_its_twin_than_inpainting(seed):
    image, twin, foot, boxes = effusion_case(seed)
    error = {}
    for fill, marked in (("contralateral", boxes), ("harmonic", [*boxes, (0.0, 0.0, 1.0, 1.0)])):
        filled = np.asarray(lt.occlude(image, boxes, marked), dtype=float)
        error[fill] = np.abs(filled - twin)[foot].mean()
    original = np.abs(np.asarray(image, dtype=float) - twin)[foot].mean()
    # inpainting from the diaphragm and chest wall keeps a basal opacity: measured 0.70-0.78 of the
    # original's distance to the twin; the other side 0.31-0.65 (seeds 0-7)
    assert error["contralateral"] < 0.7 * original and error["contralateral"] < 0.9 * error["harmonic"]


def test_the_symmetry_axis_is_found_where_the_image_mirrors_itself():
    rng = np.random.default_rng(0)
    half = rng.random((60, 50))
    image = np.zeros((60, 160))
    image[:, 40:90], image[:, 90:140] = half, half[:, ::-1]       # symmetric about x = 90 px
    assert lt.midline(image * 255) == pytest.approx(90 / 160, abs=1 / 128)
    assert lt.mirror_box((0.6, 0.2, 0.7, 0.4), 0.5) == pytest.approx((0.3, 0.2, 0.4, 0.4))


def test_the_inpainted_fill_carries_the_texture_of_its_surroundings():
    rng = np.random.default_rng(0)
    noisy = Image.fromarray(np.clip(128 + 10 * rng.standard_normal((200, 200)), 0, 255).astype(np.uint8))
    box, everywhere = (0.3, 0.3, 0.6, 0.6), [(0.0, 0.0, 1.0, 1.0)]     # the other side is marked
    filled = np.asarray(lt.occlude(noisy, [box], everywhere), dtype=float)[60:120, 60:120]
    assert abs(filled.mean() - 128) < 2
    assert 6 < filled.std() < 14          # not a flat patch: about the 10 grey levels around it
    assert lt.occlude(noisy, [box], everywhere) == lt.occlude(noisy, [box], everywhere)   # seeded


def test_the_control_is_the_mirror_when_free_else_a_free_place_in_the_lung_field():
    box = (0.6, 0.4, 0.75, 0.55)
    assert lt.control_boxes([box], [box], "s", 0) == ((0.25, 0.4, 0.4, 0.55),)
    blocked = [box, (0.2, 0.35, 0.45, 0.6)]            # something marked on the other side
    moved = lt.control_boxes([box], blocked, "s", 0)[0]
    assert moved[2] - moved[0] == pytest.approx(0.15) and moved[3] - moved[1] == pytest.approx(0.15)
    assert not any(lt._overlaps(moved, m) for m in blocked) and lt._inside(moved, lt.LUNG_FIELD)
    assert moved == lt.control_boxes([box], blocked, "s", 0)[0]             # seeded
    assert lt.control_boxes([(0.0, 0.0, 0.95, 0.95)], [], "s", 0) is None   # larger than the field


def sample(image_id, finding="nodule", label="yes", patient="P", study=None, date=None, boxes=None):
    return Sample(f"{image_id}/{finding}", image_id, f"/x/{image_id}.jpg", finding, label, patient,
                  study or f"s{image_id}", date, boxes)


def test_the_other_study_is_the_same_patients_closest_in_date_with_the_label_asked():
    pool = [sample("a", "nodule", "yes", date="21500101"), sample("b", "nodule", "no", date="21500301"),
            sample("c", "nodule", "no", date="21500201"), sample("d", "nodule", "yes", date="21510101"),
            sample("e", "nodule", "no", patient="Q"), sample("a2", "nodule", "no", study="sa", date="21500101")]
    chosen, not_tested = lt.choose_followups([pool[0], pool[4], sample("z", patient=None)], pool)
    got = {(r.sample_id, r.test): r.image_id for r in chosen.itertuples()}
    # c is closer than b; a2 is the same study (another image of it), never a follow-up
    assert got == {("a/nodule", "followup"): "c", ("a/nodule", "followup_control"): "d"}
    assert not_tested == {"no_other_study": 1, "no_other_study_same_label": 1, "no_patient_study": 1}


def test_the_other_study_differs_in_the_fewest_other_findings_before_it_is_closest_in_date():
    def study(image_id, date, nodule, effusion):
        return [sample(image_id, "nodule", nodule, date=date), sample(image_id, "pleural effusion", effusion, date=date)]
    pool = (study("a", "21500101", "yes", "no") + study("near", "21500102", "no", "yes")
            + study("far", "21520101", "no", "no") + study("same", "21500103", "yes", "yes"))
    chosen, _ = lt.choose_followups([pool[0]], pool)
    got = {r.test: (r.image_id, r.differing_labels) for r in chosen.itertuples()}
    # "near" is closer in date, but its effusion label differs: "far" is the closer twin
    assert got == {"followup": ("far", 0), "followup_control": ("same", 1)}
    alone, _ = lt.choose_followups([pool[0]], [pool[0], pool[2]])   # the run asks about one finding
    assert alone.differing_labels.tolist() == [0] and alone.image_id.tolist() == ["near"]


def test_a_limit_on_other_findings_labelled_differently_counts_the_samples_it_leaves_untested():
    def study(image_id, date, nodule, effusion):
        return [sample(image_id, "nodule", nodule, date=date), sample(image_id, "pleural effusion", effusion, date=date)]
    pool = study("a", "21500101", "yes", "no") + study("near", "21500102", "no", "yes") \
        + study("same", "21500103", "yes", "yes")
    assert len(lt.choose_followups([pool[0]], pool)[0]) == 2             # default: any
    loose, _ = lt.choose_followups([pool[0]], pool, max_differing=1)
    assert set(loose.image_id) == {"near", "same"}
    strict, not_tested = lt.choose_followups([pool[0]], pool, max_differing=0)
    assert strict.empty and not_tested == {"other_study_differs": 1, "other_study_same_label_differs": 1}
    counts = lt.summary_counts(pd.DataFrame({"sample_id": ["a/nodule"], "quadrant": ["Ideal"]}),
                               {"followup": dict(not_tested)})
    assert counts["followup"]["not_tested"] == {"other_study_differs": 1}
    assert counts["followup_control"]["not_tested"] == {"other_study_same_label_differs": 1}


def test_occlusion_plan_counts_samples_without_a_box_and_without_room():
    samples = [sample("a", boxes=((0.6, 0.4, 0.75, 0.55),)), sample("a", "cardiomegaly", boxes=()),
               sample("b", boxes=((0.0, 0.0, 0.95, 0.95),)), sample("c", label="no")]
    plan, not_tested = lt.plan_occlusion(samples, seed=0)
    assert set(plan) == {"a/nodule", "b/nodule"} and plan["b/nodule"][1] is None
    assert plan["a/nodule"][2] == ((0.6, 0.4, 0.75, 0.55),)          # the image's marked boxes
    assert not_tested == {"no_box": 2, "no_control_room": 1}


def test_changes_columns_compare_each_test_with_the_original_answer():
    table = pd.DataFrame({"sample_id": ["a/n", "b/n", "c/n"], "image_id": ["a", "b", "c"],
                          "pred": ["yes", "yes", "no"], "question": ["q", "q", "q"]})
    predictions = pd.DataFrame({"sample_id": ["a/n", "b/n", "a/n"], "prompt_id": [0, 0, 0],
                                "condition": ["occlude", "occlude", "occlude_control"], "pred": ["no", "yes", "yes"]})
    per_run = pd.DataFrame({"condition": ["followup"] * 4, "followup_image_id": ["x", "x", "y", "x"],
                            "followup_onto_image_id": ["z", "a", "c", "c"], "prompt": ["q"] * 4,
                            "pred": ["yes", "no", "no", "no"]})   # x registered onto z answers another sample
    followups = pd.DataFrame({"sample_id": ["a/n", "c/n", "c/n"], "test": ["followup", "followup", "followup_control"],
                              "image_id": ["x", "y", "x"], "image_path": ["", "", ""], "differing_labels": [0, 2, 1]})
    out = lt.local_columns(table, predictions, per_run, followups).set_index("sample_id")
    assert out["occlusion_changes"].tolist() == [True, False, pd.NA]
    assert out["occlusion_control_changes"].tolist() == [False, pd.NA, pd.NA]
    assert out["followup_changes"].tolist() == [True, pd.NA, False]
    assert out["followup_control_changes"].tolist() == [pd.NA, pd.NA, False]
    assert out["followup_differing_labels"].tolist() == [0, pd.NA, 2]
    counts = lt.summary_counts(out.reset_index(), {"occlude": {"no_box": 1}})
    assert counts["occlude"] == {"n_tested": 2, "not_tested": {"no_box": 1}, "n_dangerous_tested": 0}
    assert counts["followup"]["n_tested"] == 2
