"""Shared fixtures: a tiny offline world (synthetic datasets + untrained tiny models)."""
import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models on a shared CPU: one thread avoids oversubscription (several times faster)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory):
    """Synthetic MIMIC-CXR/PadChest trees (16 images each), their reference sets (48 images each) and
    tiny random models of both families."""
    from lib.offline import default_models, world

    root = tmp_path_factory.mktemp("world")
    data_roots = world.write_default_datasets(root / "data", n_images=16, seed=0)
    references = world.write_reference_sets(root / "data", n_images=48, seed=0)
    models = {}
    for family in default_models.FAMILIES:
        model, processor = default_models.build_untrained(family, default_models.question_corpus(), 0)
        models[family] = default_models.save(model, processor, root / "models" / family)
    return {"root": root, "data": data_roots, "models": models, "references": references}
