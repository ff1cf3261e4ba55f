"""The offline default family: split hygiene, deterministic training, image augmentation."""
import pytest
import torch

from lib.offline import default_models, synth, training


def test_training_and_evaluation_never_share_an_image(tmp_path):
    roots = synth.write_default_datasets(tmp_path, n_images=60, seed=0)
    _, train_ids = default_models.training_examples(roots, split="train")
    _, test_ids = default_models.training_examples(roots, split="test")
    assert train_ids and test_ids
    assert not train_ids & test_ids


def test_two_trainings_with_the_same_seed_are_identical(tiny_world):
    examples, _ = default_models.training_examples({"mimic-cxr": tiny_world["data"]["mimic-cxr"]})

    def weights(seed):
        model, _, vision_log, log = default_models.train_base(
            "llava", examples, seed=seed, vision_steps=3, epochs=0.5, lr=2e-3, batch_size=8,
            prompt_pool=4)
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
