"""The consistency LoRA: its loss, where its gradients go, the adapter round trip, the notebook."""
from pathlib import Path

import pandas as pd
import papermill as pm
import pytest
import torch

from lib.protocol import models
from lib.offline import finetune, training
from lib.protocol.config import ParamsError

ROOT = Path(__file__).resolve().parents[1]


def test_symmetric_kl_is_symmetric_and_zero_on_identical():
    a = torch.tensor([[2.0, -1.0], [0.3, 0.1]])
    b = torch.tensor([[-0.5, 1.5], [1.0, -2.0]])
    assert torch.allclose(training.symmetric_kl(a, b), training.symmetric_kl(b, a))
    assert training.symmetric_kl(a, a).item() == pytest.approx(0.0, abs=1e-7)
    # known answer: p = (0.5, 0.5), q = (0.9, 0.1): KL(p||q) + KL(q||p) = 0.4 * ln 9
    p = torch.log(torch.tensor([[0.5, 0.5]]))
    q = torch.log(torch.tensor([[0.9, 0.1]]))
    assert training.symmetric_kl(p, q).item() == pytest.approx(0.4 * torch.log(torch.tensor(9.0)).item(), rel=1e-5)


@pytest.fixture
def lora_llava(tiny_world):
    from peft import get_peft_model

    lm = models.load_model(str(tiny_world["models"]["llava"]))
    net = get_peft_model(lm.model, training.lora_config(8, 16, 0.0, layers=[1, 2]))
    # LoRA B starts at zero; perturb it so the adapter changes the logits
    with torch.no_grad():
        for name, param in net.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
    return lm, net


def examples(tiny_world, lm, n=4):
    from lib.protocol import data, questions

    sets = questions.load_question_sets()
    samples = list(data.iter_samples("mimic-cxr", tiny_world["data"]["mimic-cxr"], split="train"))[:n]
    return [training.Example(data.load_image(s).convert("RGB"), s.finding,
                             questions.prompts_for(s.finding, sets), s.label) for s in samples]


def test_gradients_reach_only_lora_parameters(tiny_world, lora_llava):
    lm, net = lora_llava
    batch = examples(tiny_world, lm)
    out = training.consistency_step(net, training.Encoder(lm.processor), batch,
                                    (lm.yes_ids[0], lm.no_ids[0]), kl_weight=1.0)
    out["loss"].backward()
    with_grad = {n for n, p in net.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert with_grad, "no gradient at all"
    assert all("lora_" in n for n in with_grad), sorted(with_grad)[:5]
    layers = {int(n.split("layers.")[1].split(".")[0]) for n in with_grad}
    assert layers == {1, 2}
    assert not any("vision_tower" in n for n in with_grad)


def test_saved_adapter_reloads_to_identical_logits(tiny_world, lora_llava, tmp_path):
    lm, net = lora_llava
    batch = examples(tiny_world, lm, n=2)
    inputs = training.Encoder(lm.processor)([ex.image for ex in batch], [ex.prompts[0] for ex in batch])
    net.eval()
    with torch.no_grad():
        before = net(**inputs).logits
    net.save_pretrained(tmp_path / "adapter")
    reloaded = models.load_model(str(tiny_world["models"]["llava"]), adapter=str(tmp_path / "adapter"))
    with torch.no_grad():
        after = reloaded.model(**inputs).logits
        plain = models.load_model(str(tiny_world["models"]["llava"])).model(**inputs).logits
    assert torch.equal(before, after)
    assert not torch.allclose(before, plain), "the adapter changed nothing"
    merged = models.load_model(str(tiny_world["models"]["llava"]), adapter=str(tmp_path / "adapter"),
                               merge_adapter=True)
    with torch.no_grad():
        assert torch.allclose(merged.model(**inputs).logits, before, atol=1e-5)


def test_adapter_that_does_not_fit_is_an_error(tiny_world, lora_llava, tmp_path):
    """peft only warns when no adapter weight fits; the loader refuses such an adapter."""
    from safetensors.torch import load_file, save_file

    _, net = lora_llava
    net.save_pretrained(tmp_path / "adapter")
    weights_file = tmp_path / "adapter" / "adapter_model.safetensors"
    weights = load_file(weights_file)
    save_file({k.replace("language_model.layers.", "language_model.blocks."): v for k, v in weights.items()},
              weights_file)
    with pytest.raises(ValueError, match="does not fit"):
        models.load_model(str(tiny_world["models"]["llava"]), adapter=str(tmp_path / "adapter"))


def test_finetune_notebook_writes_an_adapter_and_its_loss_curve(tiny_world, tmp_path):
    out = tmp_path / "adapter"
    pm.execute_notebook(
        str(ROOT / "notebooks" / "finetune_lora.ipynb"), str(tmp_path / "finetune.ipynb"),
        parameters={"name": "tiny-lora", "base_model": str(tiny_world["models"]["gemma3"]),
                    "dataset": "mimic-cxr", "data_root": str(tiny_world["data"]["mimic-cxr"]),
                    "limit": 16, "layers": [1, 2], "epochs": 1, "batch_size": 4, "lr": 1e-3,
                    "output_dir": str(out), "shortcut_findings": ["nodule"]},
        cwd=str(ROOT), progress_bar=False)
    for name in ("adapter_config.json", "adapter_model.safetensors", "train_log.csv", "loss.png",
                 "training_prompts.json"):
        assert (out / name).is_file(), name
    log = pd.read_csv(out / "train_log.csv")
    assert {"step", "loss", "ce", "kl"} <= set(log.columns)
    assert models.load_model(str(tiny_world["models"]["gemma3"]), adapter=str(out)) is not None


def test_shortcut_findings_are_shown_another_image(tiny_world, lora_llava):
    lm, net = lora_llava
    batch = examples(tiny_world, lm, n=8)
    pool = [batch[0].image]
    seen = []

    class Spy(training.Encoder):
        def __call__(self, images, questions):
            seen.append(list(images))
            return super().__call__(images, questions)

    shortcut = {batch[1].finding}
    out = training.consistency_step(net, Spy(lm.processor), batch, (lm.yes_ids[0], lm.no_ids[0]),
                                    kl_weight=1.0, shortcut=shortcut, image_pool=pool)
    assert len(seen) == 2 and seen[0] == seen[1]  # both paraphrases see the same images
    for ex, image in zip(batch, seen[0]):
        assert image is (pool[0] if ex.finding in shortcut else ex.image)
    assert torch.isfinite(out["loss"])


def test_finetune_spec_checks_the_dial_and_reads_the_prompt_split(tiny_world, tmp_path):
    base = {"name": "x", "base_model": "m", "dataset": "mimic-cxr", "data_root": str(tiny_world["data"]["mimic-cxr"])}
    with pytest.raises(ParamsError, match="shortcut_findings"):
        finetune.resolve({**base, "shortcut_findings": ["effusion"]})
    with pytest.raises(ParamsError, match="shortcut_findings"):
        finetune.resolve({**base, "shortcut_findings": "nodule"})
    from lib.offline import default_models
    import json
    split = default_models.prompt_split(2)
    (tmp_path / "split.json").write_text(json.dumps(split))
    spec = finetune.resolve({**base, "prompt_split": str(tmp_path / "split.json")})
    examples_ = finetune.examples_of(spec)
    assert examples_ and all(list(ex.prompts) == split[ex.finding]["train"] for ex in examples_)
    (tmp_path / "bad.json").write_text("[1, 2]")
    with pytest.raises(ParamsError, match="prompt_split"):
        finetune.examples_of({**spec, "prompt_split": str(tmp_path / "bad.json")})
