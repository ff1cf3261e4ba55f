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
                                 paper_items, yes_probability)
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
    rows = engine.score(paper_items(items))
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
        results[(batch_size, max_rows)] = by_key(engine.score(paper_items(items)))
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


def text_only_forwards(lm, items, image_removal):
    """(the engine, the model's forward calls, the rows) of scoring ``items`` text-only with ``image_removal``."""
    engine = Engine(lm, image_removal=image_removal)
    calls, handle = capture_forwards(lm.model)
    try:
        rows = engine.score_text_only(paper_items(items)[len(items):])
    finally:
        handle.remove()
    return engine, calls, rows


@pytest.mark.parametrize("family", FAMILIES)
def test_text_only_rows_have_no_image_tokens(loaded, family):
    lm = loaded[family]
    ids = image_token_ids(lm.processor)
    assert ids and lm.tokenizer.unk_token_id not in ids
    items = make_items(4)
    _, calls, rows = text_only_forwards(lm, items, "none")
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
    engine, calls, text_rows = text_only_forwards(lm, items, "blank")
    grey = lm.processor.image_processor(images=[Image.new("RGB", (64, 64), BLANK_GREY)],
                                        return_tensors="pt")["pixel_values"]
    for c in calls:
        pixels = c["pixel_values"]
        assert pixels.shape[0] == len(c["input_ids"])
        assert torch.allclose(pixels, grey[:1].expand_as(pixels), atol=1e-6)
        assert set(c["input_ids"].flatten().tolist()) & image_token_ids(lm.processor)
    rows = engine.score(paper_items(items))
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
    rows = engine.score(paper_items(items))
    assert engine.mode == "batched"
    assert engine.fallback_reason and "image before the question" in engine.fallback_reason
    check_against_reference(lm, items, rows)


@pytest.mark.parametrize("family", FAMILIES)
def test_disabled_sharing_says_why_and_agrees(loaded, family):
    lm = loaded[family]
    items = make_items(6)
    engine = Engine(lm, prefix_sharing=False, batch_size=16, max_rows=5)
    rows = engine.score(paper_items(items))
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
        rows = Engine(lm, batch_size=16).score(paper_items(items))
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
    rows = Engine(lm, batch_size=16).score(paper_items(items))
    check_against_reference(lm, items, rows)


# -- per-run conditions (issues 18, 20): references, blank, null images, text-only per question ----

from lib.protocol.engine import (CONDITION_BLANK, CONDITION_NOISE, CONDITION_REFERENCE,  # noqa: E402
                                 DERIVED_SIZE, NULL_IMAGES, blank_image, null_images)


def per_run_items(items: list[Item]) -> list[Item]:
    """What a run adds beside its samples: two reference images with two questions each, the blank
    image and the null images with every distinct original question, and those questions alone."""
    questions = tuple(sorted({it.prompts[0] for it in items}))
    refs = [Item(f"reference:r{k}", items[k].image.copy(), questions[:2], CONDITION_REFERENCE) for k in range(2)]
    nulls = [Item(f"noise:{j}", image, questions, CONDITION_NOISE) for j, image in enumerate(null_images(7))]
    return refs + nulls + [Item("blank", blank_image(), questions, CONDITION_BLANK),
                           Item("text_only", None, questions, CONDITION_TEXT_ONLY)]


@pytest.mark.parametrize("sharing", (True, False))
@pytest.mark.parametrize("family", FAMILIES)
def test_per_run_rows_equal_one_prompt_forward(loaded, family, sharing):
    lm = loaded[family]
    units = per_run_items(make_items(5))
    engine = Engine(lm, prefix_sharing=sharing, batch_size=3, max_rows=4)
    rows = engine.score(units)
    assert engine.mode == ("prefix_sharing" if sharing else "batched")
    table = by_key(rows)
    assert len(table) == len(rows) == sum(len(u.prompts) for u in units)
    worst = 0.0
    for unit in units:
        for pid, q in enumerate(unit.prompts):
            row = table[(unit.sample_id, pid, unit.condition)]
            assert row["prompt"] == q
            worst = max(worst, abs(row["p_yes"] - reference(lm, unit.image, q)))
    assert worst < TOL, f"largest |p_yes - reference| = {worst:.3g}"


@pytest.mark.parametrize("family", FAMILIES)
def test_each_distinct_image_runs_its_prefix_once(loaded, family):
    """Four samples of one image and a reference that is the same picture: one prefix row each
    time the engine meets the pixels in a call; the counters say what ran."""
    lm = loaded[family]
    base = make_items(2, seed=4)
    sets = list(BUILTIN_QUESTIONS.values())
    items = [Item(f"{it.sample_id}/{k}", it.image.copy(), tuple(sets[k][:3])) for it in base for k in range(4)]
    engine = Engine(lm, batch_size=16)
    engine.score(paper_items(items))
    assert engine.passes["image_prefixes"] == 2                      # two distinct images
    assert engine.passes["suffixes"] == sum(len(it.prompts) for it in items)
    assert engine.passes["text_only"] == len(items)
    assert engine.passes["full_with_image"] == 0


def test_null_images_are_seeded_grey_noise_at_the_derived_size():
    a, b = null_images(0), null_images(0)
    assert len(a) == NULL_IMAGES and all(im.size == DERIVED_SIZE and im.mode == "RGB" for im in a)
    assert [im.tobytes() for im in a] == [im.tobytes() for im in b]       # same seed: same pixels
    assert a[0].tobytes() != a[1].tobytes()                                # K different images
    assert null_images(1)[0].tobytes() != a[0].tobytes()                   # another seed
    pixels = np.asarray(a[0], float)
    assert np.all(pixels[..., 0] == pixels[..., 1])                        # grey
    assert abs(pixels.mean() - 128) < 2 and abs(pixels.std() - 60) < 5     # N(128, 64), clipped
    assert blank_image().getextrema() == ((128, 128),) * 3 and blank_image().size == DERIVED_SIZE
