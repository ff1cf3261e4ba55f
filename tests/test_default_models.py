"""The offline default family: split hygiene, deterministic training, image augmentation,
the answer loss (full vocabulary, image dropout), the held-out paraphrases and the reliance dial."""
import pytest
import torch
import yaml
from pathlib import Path

from lib.offline import default_models, finetune, synth, training, world
from lib.protocol import data, models, questions

REPO = Path(__file__).resolve().parents[1]


def test_training_and_evaluation_never_share_an_image(tmp_path):
    roots = world.write_default_datasets(tmp_path, n_images=60, seed=0)
    _, train_ids = default_models.training_examples(roots, split="train")
    _, test_ids = default_models.training_examples(roots, split="test")
    assert train_ids and test_ids
    assert not train_ids & test_ids


def test_two_trainings_with_the_same_seed_are_identical(tiny_world):
    examples, _ = default_models.training_examples({"mimic-cxr": tiny_world["data"]["mimic-cxr"]})

    def weights(seed):
        model, _, vision_log, log = default_models.train_base(
            "llava", examples, seed=seed, vision_steps=3, epochs=0.5, lr=2e-3, batch_size=8,
            text_dropout=0.3, pretrain=synth.pretraining_images(4, seed=0))
        assert len(vision_log) and len(log)
        return {k: v.clone() for k, v in model.state_dict().items()}

    first, second, other = weights(0), weights(0), weights(1)
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert not all(torch.equal(first[k], other[k]) for k in first)


def test_augmentation_without_jitter_mirrors_or_keeps_each_image():
    pixels = torch.randn(16, 3, 8, 8)
    out = training.augment_pixels(pixels, torch.Generator().manual_seed(0), shift=0, zoom=0,
                                  contrast=0)
    kept = [torch.allclose(o, p, atol=1e-5) for o, p in zip(out, pixels)]
    mirrored = [torch.allclose(o, p.flip(-1), atol=1e-5) for o, p in zip(out, pixels)]
    assert all(k or m for k, m in zip(kept, mirrored))
    assert any(kept) and any(mirrored)


def test_augmentation_is_seeded_and_keeps_the_exposure():
    pixels = torch.rand(8, 3, 16, 16)
    first = training.augment_pixels(pixels, torch.Generator().manual_seed(1))
    again = training.augment_pixels(pixels, torch.Generator().manual_seed(1))
    other = training.augment_pixels(pixels, torch.Generator().manual_seed(2))
    assert torch.equal(first, again) and not torch.equal(first, other)
    assert first.shape == pixels.shape
    # Contrast is scaled about each image's mean: the mean brightness stays (up to the border).
    assert torch.allclose(first.mean(dim=(1, 2, 3)), pixels.mean(dim=(1, 2, 3)), atol=0.1)


def test_a_shifted_bright_spot_moves_with_the_shift():
    pixels = torch.zeros(1, 1, 16, 16)
    pixels[0, 0, 8, 8] = 1.0
    out = training.augment_pixels(pixels, torch.Generator().manual_seed(0), shift=0.25, zoom=0,
                                  contrast=0)
    assert out.sum() == pytest.approx(1.0, abs=1e-4)   # moved, not lost
    assert out[0, 0, 8, 8] < 1.0


def test_prompt_split_holds_out_paraphrases_of_every_finding():
    split = default_models.prompt_split(4)
    sets = questions.load_question_sets()
    for finding in data.FINDINGS:
        prompts = list(questions.prompts_for(finding, sets))
        assert split[finding]["train"] == prompts[:4] and split[finding]["held_out"] == prompts[4:]
        assert split[finding]["held_out"]
    # a pool as large as the set still holds one paraphrase out
    assert all(part["held_out"] for part in default_models.prompt_split(99).values())
    train = default_models.train_prompts(split)
    assert train["nodule"] == tuple(split["nodule"]["train"])


def test_training_examples_carry_only_the_training_prompts(tiny_world):
    split = default_models.prompt_split(3)
    examples, _ = default_models.training_examples(
        {"mimic-cxr": tiny_world["data"]["mimic-cxr"]}, prompts=default_models.train_prompts(split))
    assert examples and all(list(ex.prompts) == split[ex.finding]["train"] for ex in examples)


def step_inputs(tiny_world, n=4):
    lm = models.load_model(str(tiny_world["models"]["llava"]))
    examples, _ = default_models.training_examples({"mimic-cxr": tiny_world["data"]["mimic-cxr"]})
    return lm, default_models.by_image(examples)[:n], (lm.yes_ids[0], lm.no_ids[0])


def test_base_step_trains_the_full_vocabulary_and_drops_images(tiny_world):
    lm, groups, ids = step_inputs(tiny_world)
    encoder = training.Encoder(lm.processor)
    calls = []
    original = encoder.pixels
    encoder.pixels = lambda image: calls.append(1) or original(image)
    out = training.base_step(lm.model, encoder, groups, ids, text_dropout=1.0)
    assert not calls and float(out["text_only"]) == 1.0   # every question asked without the image
    examples = [ex for g in groups for ex in g]
    # the loss is the cross-entropy over the whole vocabulary of the answer token
    with torch.no_grad():
        random_state = training.random.getstate()
        training.random.seed(0)
        out = training.base_step(lm.model, encoder, groups, ids, text_dropout=0.0)
        training.random.seed(0)
        questions_ = [training.random.choice(ex.prompts) for ex in examples]
        logits = training.next_token_logits(lm.model, encoder([ex.image for ex in examples], questions_))
        training.random.setstate(random_state)
    expected = torch.nn.functional.cross_entropy(logits, training.answer_targets(examples, *ids))
    assert float(out["loss"]) == pytest.approx(float(expected), rel=1e-4)
    assert calls and 0 <= float(out["yes_no_mass"]) <= 1


def test_training_puts_the_mass_on_the_answer_tokens(tiny_world):
    """A few steps of full-vocabulary cross-entropy move an untrained model's mass onto yes/no."""
    lm, groups, ids = step_inputs(tiny_world, n=2)
    encoder = training.Encoder(lm.processor)
    before = training.base_step(lm.model, encoder, groups, ids)["yes_no_mass"]
    training.train(lm.model, lambda m, batch: training.base_step(m, encoder, batch, ids, 0.5), groups,
                   epochs=30, batch_size=2, lr=1e-2, seed=0)
    with torch.no_grad():
        after = training.base_step(lm.model, encoder, groups, ids)["yes_no_mass"]
    assert float(before) < 0.2 and float(after) > 0.8


def test_the_reliance_dial_has_its_adapters_and_pairs():
    for name, findings in default_models.RELIANCE_DIAL.items():
        path = REPO / "params" / "lora" / f"{name}.yaml"
        spec = finetune.resolve(yaml.safe_load(path.read_text()), path)
        assert sorted(spec["shortcut_findings"]) == sorted(findings)
        assert set(findings) < set(data.FINDINGS)  # it still reads the image for the others
        for dataset in world.TRAINED_ON:   # the adapters are trained and evaluated on these two
            pair = yaml.safe_load((REPO / "params" / f"{name}__{dataset}.yaml").read_text())
            assert pair["adapter"] == f"outputs/default/adapters/{name}"
    plain = [p for p in (REPO / "params" / "lora").glob("*.yaml") if p.stem not in default_models.RELIANCE_DIAL]
    assert plain and all(not yaml.safe_load(p.read_text()).get("shortcut_findings") for p in plain)
