"""The scoring engine against the plain one-prompt-at-a-time forward (CPU, float32).

Tiny random models of both families (LLaVA, Gemma 3) with their real processors are built once
per module, saved and loaded through the project's loader. The reference here is written
independently of lib.protocol.engine's batching: one `processor(...)` + one full `model(...)` per prompt,
the last position's logits, p_yes = P(yes) / (P(yes) + P(no)).
"""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np
import pytest
import torch
from PIL import Image

from lib.offline import default_models
from lib.protocol import models, prompts
from lib.protocol.engine import (BLANK_GREY, CONDITION_IMAGE, CONDITION_TEXT_ONLY, Engine, Item,
                        yes_probability)
from lib.protocol.questions import BUILTIN_QUESTIONS

FAMILIES = ("llava", "gemma3")
TOL = 1e-5
# A freshly initialised model's logits are nearly flat (every p_yes within 0.01 of 0.5), which
# would hide errors and make every prediction a coin toss near the threshold. Scaling the output
# head spreads p_yes over (0, 1) and amplifies any difference between the engine and the
# reference by the same factor.
HEAD_SCALE = 30.0


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory):
    """family -> directory of a saved tiny random model + processor."""
    corpus = default_models.question_corpus()
    dirs = {}
    for seed, family in enumerate(FAMILIES):
        model, processor = default_models.build_untrained(family, corpus, seed=seed)
        with torch.no_grad():
            model.lm_head.weight.mul_(HEAD_SCALE)
        dirs[family] = default_models.save(model, processor, tmp_path_factory.mktemp(family))
    return dirs


@pytest.fixture(scope="module")
def loaded(tiny_dirs):
    return {f: models.load_model(str(d), dtype="float32", device="cpu") for f, d in tiny_dirs.items()}


def make_items(n: int = 6, seed: int = 0) -> list[Item]:
    """n samples with different images and 1..6 prompts each (original first)."""
    rng = np.random.default_rng(seed)
    sets = list(BUILTIN_QUESTIONS.values())
    items = []
    for i in range(n):
        pixels = rng.integers(0, 256, size=(48 + 8 * i, 40 + 4 * i, 3), dtype=np.uint8)
        questions = sets[i % len(sets)]
        count = 1 + i % 6                      # variable paraphrase counts: 1, 2, ..., 6
        items.append(Item(f"s{i}", Image.fromarray(pixels), tuple(questions[:count])))
    return items


_REFERENCE_CACHE: dict = {}


def reference(lm, image, question: str) -> float:
    """One full forward of one prompt, batch 1: the ground truth for every engine mode.

    Memoised per (model, chat template, image pixels, question): the tests share their samples.
    """
    pixels = None if image is None else (image.size, image.tobytes())
    key = (id(lm.model), lm.processor.chat_template, pixels, question)
    if key not in _REFERENCE_CACHE:
        _REFERENCE_CACHE[key] = _reference(lm, image, question)
    return _REFERENCE_CACHE[key]


@torch.inference_mode()
def _reference(lm, image, question: str) -> float:
    text = prompts.chat_text(lm.processor, question, image is not None)
    kwargs = {"images": [[image]]} if image is not None else {}
    enc = prompts.encode(lm.processor, [text], **kwargs)
    logits = lm.model(**enc).logits[:, -1, :]
    return float(yes_probability(logits, lm.yes_ids, lm.no_ids)[0][0])


def by_key(rows) -> dict:
    return {(r["sample_id"], r["prompt_id"], r["condition"]): r for r in rows}


def check_against_reference(lm, items, rows, text_image=None):
    """Every (sample, prompt) image row and every text-only row equals the reference."""
    table = by_key(rows)
    expected = sum(len(it.prompts) for it in items) + len(items)
    assert len(table) == len(rows) == expected
    worst = 0.0
    for it in items:
        for pid, q in enumerate(it.prompts):
            row = table[(it.sample_id, pid, CONDITION_IMAGE)]
            assert row["prompt"] == q
            worst = max(worst, abs(row["p_yes"] - reference(lm, it.image, q)))
        row = table[(it.sample_id, 0, CONDITION_TEXT_ONLY)]
        blank = text_image(it.image) if text_image else None
        worst = max(worst, abs(row["p_yes"] - reference(lm, blank, it.prompts[0])))
    assert worst < TOL, f"largest |p_yes - reference| = {worst:.3g}"
    return worst


@pytest.mark.parametrize("family", FAMILIES)
def test_prefix_sharing_equals_one_prompt_forward(loaded, family):
    lm = loaded[family]
    items = make_items(6)
    engine = Engine(lm, batch_size=16)
    rows = engine.score(items)
    assert engine.mode == "prefix_sharing", engine.fallback_reason
    assert engine.fallback_reason is None
    check_against_reference(lm, items, rows)
    masses = [r["yes_no_mass"] for r in rows]
    assert all(0.0 < m <= 1.0 for m in masses)
    p_yes = [r["p_yes"] for r in rows]
    assert max(p_yes) - min(p_yes) > 0.05, "p_yes too flat to test anything"


@pytest.mark.parametrize("family", FAMILIES)
def test_predictions_do_not_depend_on_batch_size(loaded, family):
    lm = loaded[family]
    items = make_items(6)
    results = {}
    for batch_size, max_rows in ((1, 64), (16, 3), (16, 64)):
        engine = Engine(lm, batch_size=batch_size, max_rows=max_rows)
        results[(batch_size, max_rows)] = by_key(engine.score(items))
        assert engine.mode == "prefix_sharing"
    base = results[(1, 64)]
    for other in results.values():
        assert other.keys() == base.keys()
        for key, row in base.items():
            assert abs(other[key]["p_yes"] - row["p_yes"]) < TOL
            assert (other[key]["p_yes"] >= 0.5) == (row["p_yes"] >= 0.5), key


def capture_forwards(model):
    """Record the kwargs of every forward of `model`; returns (calls, hook handle)."""
    calls = []

    def hook(_module, args, kwargs):
        calls.append({k: v for k, v in kwargs.items() if torch.is_tensor(v)})

    return calls, model.register_forward_pre_hook(hook, with_kwargs=True)


def image_token_ids(processor) -> set[int]:
    tokenizer = processor.tokenizer
    names = [getattr(processor, a, None) for a in ("image_token", "boi_token", "eoi_token")]
    return {tokenizer.convert_tokens_to_ids(t) for t in names if t}


@pytest.mark.parametrize("family", FAMILIES)
def test_text_only_rows_have_no_image_tokens(loaded, family):
    lm = loaded[family]
    ids = image_token_ids(lm.processor)
    assert ids and lm.tokenizer.unk_token_id not in ids
    items = make_items(4)
    engine = Engine(lm, image_removal="none")
    calls, handle = capture_forwards(lm.model)
    try:
        rows = engine.score_text_only(items)
    finally:
        handle.remove()
    assert calls and all("pixel_values" not in c for c in calls)
    for c in calls:
        assert not set(c["input_ids"].flatten().tolist()) & ids
    assert {r["condition"] for r in rows} == {CONDITION_TEXT_ONLY}
    assert all(r["prompt_id"] == 0 for r in rows)
    # The same check through the processor: the rendered text-only prompt has no image token.
    text = prompts.chat_text(lm.processor, items[0].prompts[0], with_image=False)
    assert not set(lm.processor(text=[text], return_tensors="pt")["input_ids"][0].tolist()) & ids
    for it, r in zip(items, rows):
        assert abs(r["p_yes"] - reference(lm, None, it.prompts[0])) < TOL


@pytest.mark.parametrize("family", FAMILIES)
def test_blank_mode_uses_a_grey_image(loaded, family):
    lm = loaded[family]
    items = make_items(6)
    engine = Engine(lm, image_removal="blank")
    calls, handle = capture_forwards(lm.model)
    try:
        text_rows = engine.score_text_only(items)
    finally:
        handle.remove()
    grey = lm.processor.image_processor(images=[Image.new("RGB", (64, 64), BLANK_GREY)],
                                        return_tensors="pt")["pixel_values"]
    for c in calls:
        pixels = c["pixel_values"]
        assert pixels.shape[0] == len(c["input_ids"])
        assert torch.allclose(pixels, grey[:1].expand_as(pixels), atol=1e-6)
        assert set(c["input_ids"].flatten().tolist()) & image_token_ids(lm.processor)
    rows = engine.score(items)
    assert engine.mode == "prefix_sharing"
    check_against_reference(lm, items, rows,
                            text_image=lambda im: Image.new("RGB", im.size, BLANK_GREY))
    assert by_key(rows).keys() >= by_key(text_rows).keys()


TEXT_FIRST_TEMPLATES = {
    "llava": (
        "{% for message in messages %}{{ message['role'].upper() + ': ' }}"
        "{% for c in message['content'] | selectattr('type', 'equalto', 'text') %}"
        "{{ c['text'] + ' ' }}{% endfor %}"
        "{% for c in message['content'] | selectattr('type', 'equalto', 'image') %}"
        "{{ '<image>\n' }}{% endfor %}{% endfor %}"
        "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
    ),
    "gemma3": (
        "{{ bos_token }}{% for message in messages %}<start_of_turn>user\n"
        "{% for c in message['content'] | selectattr('type', 'equalto', 'text') %}"
        "{{ c['text'] | trim }}{% endfor %}"
        "{% for c in message['content'] | selectattr('type', 'equalto', 'image') %}"
        "{{ '<start_of_image>' }}{% endfor %}<end_of_turn>\n{% endfor %}"
        "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
    ),
}


@pytest.mark.parametrize("family", FAMILIES)
def test_falls_back_when_the_question_comes_before_the_image(tiny_dirs, family):
    lm = models.load_model(str(tiny_dirs[family]), dtype="float32", device="cpu")
    lm.processor.chat_template = TEXT_FIRST_TEMPLATES[family]
    items = make_items(3)
    text = prompts.chat_text(lm.processor, items[0].prompts[0], with_image=True)
    assert text.index(items[0].prompts[0]) < text.index(prompts.image_placeholder(lm.processor))
    engine = Engine(lm, batch_size=2, max_rows=4)
    rows = engine.score(items)
    assert engine.mode == "batched"
    assert engine.fallback_reason and "image before the question" in engine.fallback_reason
    check_against_reference(lm, items, rows)


@pytest.mark.parametrize("family", FAMILIES)
def test_disabled_sharing_says_why_and_agrees(loaded, family):
    lm = loaded[family]
    items = make_items(6)
    engine = Engine(lm, prefix_sharing=False, batch_size=16, max_rows=5)
    rows = engine.score(items)
    assert engine.mode == "batched" and "disabled" in engine.fallback_reason
    check_against_reference(lm, items, rows)


@pytest.mark.parametrize("family", FAMILIES)
def test_samples_of_one_image_share_one_prefix_row(loaded, family):
    """Several findings asked about one image (separate PIL objects): one prefix row per image."""
    lm = loaded[family]
    base = make_items(3, seed=6)
    sets = list(BUILTIN_QUESTIONS.values())
    items = [Item(f"{it.sample_id}/{k}", it.image.copy(), tuple(sets[k][:2 + (k + n) % 5]))
             for n, it in enumerate(base) for k in range(len(sets))]
    calls, handle = capture_forwards(lm.model)
    try:
        rows = Engine(lm, batch_size=16).score(items)
    finally:
        handle.remove()
    with_pixels = [c for c in calls if "pixel_values" in c]
    assert len(with_pixels) == 1 and len(with_pixels[0]["input_ids"]) == len(base)
    check_against_reference(lm, items, rows)


def test_prompts_longer_than_a_sliding_window_stay_exact(tiny_dirs):
    """Gemma 3's sliding window counts cache positions, padding included: the engine must not
    share the prefix when a prompt outgrows the window (it falls back for that batch)."""
    lm = models.load_model(str(tiny_dirs["gemma3"]), dtype="float32", device="cpu")
    text_config = lm.model.config.get_text_config()
    text_config.sliding_window = 24        # shorter than prefix (16 image tokens + template) + question
    for layer in lm.model.model.language_model.layers:
        if layer.self_attn.sliding_window:
            layer.self_attn.sliding_window = 24
    items = make_items(4)
    rows = Engine(lm, batch_size=16).score(items)
    check_against_reference(lm, items, rows)


# -- reliance checks (issue 12): swap, blank, noise on the original question ------------------

from lib.protocol.engine import RELIANCE_CHECKS, blank_like, noise_like  # noqa: E402
from lib.protocol import taxonomy  # noqa: E402


def with_swaps(items: list[Item]) -> list[Item]:
    """Every item but the last gets the next item's image as its swap image."""
    out = []
    for k, it in enumerate(items):
        if k + 1 < len(items):
            out.append(Item(it.sample_id, it.image, it.prompts, items[k + 1].image.copy(),
                            f"img{k + 1}"))
        else:
            out.append(it)
    return out


@pytest.mark.parametrize("sharing", (True, False))
@pytest.mark.parametrize("family", FAMILIES)
def test_reliance_rows_equal_one_prompt_forward(loaded, family, sharing):
    lm = loaded[family]
    items = with_swaps(make_items(5))
    engine = Engine(lm, prefix_sharing=sharing, batch_size=3, max_rows=4,
                    reliance_checks=RELIANCE_CHECKS, seed=7)
    rows = engine.score(items)
    assert engine.mode == ("prefix_sharing" if sharing else "batched")
    table = by_key(rows)
    assert len(table) == len(rows)
    worst = 0.0
    for k, it in enumerate(items):
        q0 = it.prompts[0]
        if it.swap_image is None:
            assert (it.sample_id, 0, "swap") not in table
        else:
            row = table[(it.sample_id, 0, "swap")]
            assert row["swap_image_id"] == f"img{k + 1}" and row["prompt"] == q0
            worst = max(worst, abs(row["p_yes"] - reference(lm, it.swap_image, q0)))
        blank = table[(it.sample_id, 0, "blank")]
        worst = max(worst, abs(blank["p_yes"] - reference(lm, blank_like(it.image), q0)))
        noise = table[(it.sample_id, 0, "noise")]
        worst = max(worst, abs(noise["p_yes"] - reference(lm, noise_like(it.image, 7, it.sample_id), q0)))
        for condition in ("blank", "noise"):
            assert "swap_image_id" not in table[(it.sample_id, 0, condition)]
    assert worst < TOL, f"largest |p_yes - reference| = {worst:.3g}"
    # reliance rows are prompt 0 only; the other rows are those of a plain engine
    assert {r["prompt_id"] for r in rows if r["condition"] in RELIANCE_CHECKS} == {0}
    assert sum(r["condition"] == "swap" for r in rows) == len(items) - 1
    assert set(RELIANCE_CHECKS) <= set(taxonomy.CONDITIONS)


@pytest.mark.parametrize("family", FAMILIES)
def test_reliance_checks_leave_the_paper_rows_bit_identical(loaded, family):
    lm = loaded[family]
    items = with_swaps(make_items(6))
    plain = Engine(lm, batch_size=4).score(items)
    assert Engine(lm).reliance_checks == ()
    assert {r["condition"] for r in plain} == {CONDITION_IMAGE, CONDITION_TEXT_ONLY}
    assert all("swap_image_id" not in r for r in plain)
    checked = Engine(lm, batch_size=4, reliance_checks=("noise", "swap")).score(items)
    paper = [r for r in checked if r["condition"] in (CONDITION_IMAGE, CONDITION_TEXT_ONLY)]
    assert paper == plain   # same dicts, same order, exactly equal floats
    assert {r["condition"] for r in checked} == {CONDITION_IMAGE, CONDITION_TEXT_ONLY, "swap", "noise"}


def test_noise_like_is_seeded_and_matches_the_image_statistics():
    rng = np.random.default_rng(3)
    grey = rng.normal(100, 30, size=(64, 48)).clip(0, 255).astype(np.uint8)
    image = Image.fromarray(np.stack([grey] * 3, -1))
    a, b = noise_like(image, 0, "s1"), noise_like(image, 0, "s1")
    assert a.size == image.size and a.mode == "RGB"
    assert a.tobytes() == b.tobytes()                            # same seed and key: same pixels
    assert noise_like(image, 1, "s1").tobytes() != a.tobytes()   # another seed
    assert noise_like(image, 0, "s2").tobytes() != a.tobytes()   # another sample
    src, out = np.asarray(image, float), np.asarray(a, float)
    assert np.all(out[..., 0] == out[..., 1]) and np.all(out[..., 1] == out[..., 2])  # grey in, grey out
    assert abs(out.mean() - src.mean()) < 2.0 and abs(out.std() - src.std()) < 2.0
    assert abs(np.corrcoef(out[..., 0].ravel(), src[..., 0].ravel())[0, 1]) < 0.1  # no trace of the image
    colour = Image.fromarray(rng.integers([0, 100, 200], [50, 150, 255], size=(40, 40, 3)).astype(np.uint8))
    means = np.asarray(noise_like(colour, 0, "c"), float).mean(axis=(0, 1))
    assert means == pytest.approx(np.asarray(colour, float).mean(axis=(0, 1)), abs=2.0)
    assert blank_like(image).getextrema() == ((128, 128),) * 3


def test_unknown_reliance_check_is_rejected(loaded):
    with pytest.raises(ValueError, match="flip"):
        Engine(loaded["llava"], reliance_checks=("swap", "flip"))


def test_swaps_scored_classified_and_summarised_end_to_end(loaded):
    """choose_swaps -> Items with swap images -> Engine -> taxonomy, as a run wires them."""
    import json

    import pandas as pd

    from lib.protocol import reliance

    lm = loaded["llava"]
    base = make_items(6, seed=2)
    samples = pd.DataFrame({"sample_id": [it.sample_id for it in base],
                            "image_id": [f"img{k}" for k in range(6)],
                            "finding": ["cardiomegaly"] * 4 + ["nodule"] * 2,
                            "label": ["yes", "no", "no", "yes", "yes", "yes"]})
    swaps = reliance.choose_swaps(samples, seed=0)
    assert reliance.swap_unavailable(swaps) == 2           # no nodule-negative image
    image_of = dict(zip(samples.image_id, (it.image for it in base)))
    items = [Item(it.sample_id, it.image, it.prompts,
                  image_of[swaps[it.sample_id]] if swaps[it.sample_id] else None, swaps[it.sample_id])
             for it in base]
    rows = Engine(lm, batch_size=4, reliance_checks=RELIANCE_CHECKS, seed=0).score(items)
    predictions = taxonomy.add_answers(pd.DataFrame(rows))
    table = taxonomy.classify_samples(predictions, samples)
    assert table["swap_image_id"].tolist()[:4] == [swaps[s] for s in samples.sample_id[:4]]
    assert table["swap_changes"].isna().tolist() == [False] * 4 + [True] * 2
    summary = taxonomy.summarize(table, predictions, reliance_checks=list(RELIANCE_CHECKS),
                                 bootstrap_resamples=50)
    json.dumps(summary)
    assert summary["swap_unavailable"] == 2
    assert summary["reliance_checks"] == list(RELIANCE_CHECKS)
    assert table["pred_blank"].notna().all() and table["pred_noise"].notna().all()
