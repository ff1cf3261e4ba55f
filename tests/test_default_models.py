"""The offline default family: split hygiene and deterministic training."""
import torch

from lib import default_models


def test_training_and_evaluation_never_share_an_image(tmp_path):
    from lib import synth

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
