"""Training on the first answer token: the default models' base training and the consistency LoRA.

Both train the token after the chat prompt, where the protocol reads the answer, with
cross-entropy over the FULL vocabulary (the target is the token "yes" or "no"), so the
probability mass lands on the answer tokens the engine sums (`yes_no_mass` near 1) and the
entropy of the yes/no answer is the model's own:
- base training: every parameter trained; a fraction `text_dropout` of the questions is asked
  WITHOUT the image (the chat prompt with no image, as the protocol's text-only pass asks it),
  so the text-only answer is a learned prior (the training labels' rate per question), as in a
  real VLM;
- consistency LoRA (the paper's recipe): cross-entropy on the first answer token of two
  paraphrases of the same question plus `kl_weight` x the symmetric KL divergence between their
  yes/no answer distributions (renormalised over the two tokens); only the LoRA parameters are
  trained. `shortcut` findings (the reliance dial) are asked with a random other training image
  instead of their own, so that their label does not depend on the image shown: the adapter is
  built to answer them from the question alone.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

import pandas as pd
import torch
import torch.nn.functional as F

from ..protocol import prompts as prompting

LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass
class Example:
    """One training sample: an image (RGB), its finding, the finding's prompt set, the label.

    `droppable`: whether image dropout may ask it without the image (False for examples that
    must not shape the text-only prior, e.g. the balanced pretraining pool's)."""

    image: object
    finding: str
    prompts: tuple[str, ...]
    label: str
    droppable: bool = True


class Encoder:
    """Model inputs for (image, question) pairs, with each image and question processed once.

    Training revisits the same images and questions hundreds of times; the processor's work is
    cached: pixel values per image, token ids (image tokens expanded) per question. Batches are
    left-padded so that every prompt ends at the last position. With `augment`, each batch's
    pixels are jittered (`augment_pixels`), so that the models learn findings, not images.
    """

    def __init__(self, processor, augment: bool = False):
        self.processor = processor
        self.augment = augment
        self.pad_id = processor.tokenizer.pad_token_id
        self._pixels: dict[int, torch.Tensor] = {}
        self._tokens: dict[str, dict] = {}
        self._text_tokens: dict[str, dict] = {}

    def pixels(self, image) -> torch.Tensor:
        key = id(image)
        if key not in self._pixels:
            out = self.processor.image_processor(images=[image], return_tensors="pt")
            self._pixels[key] = out["pixel_values"][0]
        return self._pixels[key]

    def tokens(self, question: str, image) -> dict:
        if question not in self._tokens:
            text = prompting.chat_text(self.processor, question, with_image=True)
            enc = prompting.encode(self.processor, [text], [[image]])
            self._tokens[question] = {k: v[0] for k, v in enc.items() if k != "pixel_values"}
        return self._tokens[question]

    def text_tokens(self, question: str) -> dict:
        """Token ids of the question's text-only chat prompt (no image tokens at all)."""
        if question not in self._text_tokens:
            text = prompting.chat_text(self.processor, question, with_image=False)
            enc = prompting.encode(self.processor, [text])
            self._text_tokens[question] = {k: v[0] for k, v in enc.items()
                                           if k in ("input_ids", "attention_mask")}
        return self._text_tokens[question]

    def _pad(self, rows) -> dict:
        width = max(len(r["input_ids"]) for r in rows)
        batch = {}
        for key in rows[0]:
            fill = self.pad_id if key == "input_ids" else 0
            batch[key] = torch.stack([
                torch.cat([torch.full((width - len(r[key]),), fill, dtype=r[key].dtype), r[key]])
                for r in rows
            ])
        return batch

    def __call__(self, images, questions) -> dict:
        batch = self._pad([self.tokens(q, im) for q, im in zip(questions, images)])
        pixels = torch.stack([self.pixels(im) for im in images])
        batch["pixel_values"] = augment_pixels(pixels) if self.augment else pixels
        return batch

    def text_only(self, questions) -> dict:
        """A left-padded batch of text-only prompts."""
        return self._pad([self.text_tokens(q) for q in questions])


def augment_pixels(pixels: torch.Tensor, generator=None, shift: float = 0.08,
                   zoom: float = 0.08, contrast: float = 0.15) -> torch.Tensor:
    """Label-preserving jitter of a (B, C, H, W) batch of processed images.

    Each image is mirrored left-right with probability 1/2, shifted by up to `shift` of its
    width and height, zoomed by up to 1 +- `zoom` (borders repeat the edge pixels) and its
    contrast scaled by up to 1 +- `contrast`. None of the findings depends on the side, the
    position or the exposure: a nodule is a nodule anywhere in a lung, and the cardiothoracic
    ratio does not change under a mirror or a zoom. With 500-odd training images, a small ViT
    otherwise memorises where each training nodule was.
    """
    n = pixels.shape[0]

    def uniform(*shape):
        return torch.rand(*shape, generator=generator) * 2 - 1

    mirror = torch.where(torch.rand(n, generator=generator) < 0.5, -1.0, 1.0)
    scale = 1 + zoom * uniform(n)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = mirror * scale
    theta[:, 1, 1] = scale
    theta[:, :, 2] = 2 * shift * uniform(n, 2)  # grid coordinates span [-1, 1]
    grid = F.affine_grid(theta, list(pixels.shape), align_corners=False)
    moved = F.grid_sample(pixels, grid, padding_mode="border", align_corners=False)
    mean = moved.mean(dim=(1, 2, 3), keepdim=True)
    return mean + (moved - mean) * (1 + contrast * uniform(n, 1, 1, 1))


def is_language(name: str) -> bool:
    """Whether a parameter belongs to the language model (decoder, embeddings, head)."""
    return "language_model" in name or "lm_head" in name


def next_token_logits(model, inputs) -> torch.Tensor:
    """(N, V) logits of the token after the prompt, over the whole vocabulary."""
    return model(**inputs, logits_to_keep=1).logits[:, -1, :].float()


def answer_logits(model, inputs, yes_id: int, no_id: int) -> torch.Tensor:
    """(N, 2) logits of [no, yes] for the token after the prompt."""
    return next_token_logits(model, inputs)[:, [no_id, yes_id]]


def answer_targets(examples, yes_id: int, no_id: int) -> torch.Tensor:
    """Vocabulary ids of the answers (the token "yes" or "no")."""
    return torch.tensor([yes_id if ex.label == "yes" else no_id for ex in examples])


def symmetric_kl(logits_a: torch.Tensor, logits_b: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of KL(p_a || p_b) + KL(p_b || p_a), p = softmax of the logits."""
    log_a = F.log_softmax(logits_a, dim=-1)
    log_b = F.log_softmax(logits_b, dim=-1)
    kl_ab = (log_a.exp() * (log_a - log_b)).sum(-1)
    kl_ba = (log_b.exp() * (log_b - log_a)).sum(-1)
    return (kl_ab + kl_ba).mean()


def targets(examples) -> torch.Tensor:
    return torch.tensor([1 if ex.label == "yes" else 0 for ex in examples])


def base_step(model, encoder, groups, ids, text_dropout: float = 0.0) -> dict:
    """Full-vocabulary cross-entropy of the answers about every finding of each image in the batch.

    `groups` are lists of the examples of one image (one per finding): asking all of an image's
    questions in the same batch makes the answer depend on both the question and the pixels.
    Each question is drawn from its example's `prompts` (the training paraphrases only); each is
    asked without the image with probability `text_dropout` (image dropout: the text-only answer
    learns the labels' rate). `ids` = (yes_id, no_id).
    """
    examples = [ex for group in groups for ex in group]
    questions = [random.choice(ex.prompts) for ex in examples]
    dropped = [random.random() < text_dropout and ex.droppable for ex in examples]
    order = [i for i, d in enumerate(dropped) if not d] + [i for i, d in enumerate(dropped) if d]
    parts = []
    with_image = [i for i in order if not dropped[i]]
    if with_image:
        parts.append(next_token_logits(model, encoder([examples[i].image for i in with_image],
                                                      [questions[i] for i in with_image])))
    without = [i for i in order if dropped[i]]
    if without:
        parts.append(next_token_logits(model, encoder.text_only([questions[i] for i in without])))
    logits = torch.cat(parts)
    y = answer_targets([examples[i] for i in order], *ids)
    loss = F.cross_entropy(logits, y)
    two_way = logits[:, [ids[1], ids[0]]]
    accuracy = (two_way.argmax(-1) == (y == ids[0]).long()).float().mean()
    mass = torch.softmax(logits.detach(), -1)[:, list(ids)].sum(-1).mean()
    return {"loss": loss, "ce": loss.detach(), "accuracy": accuracy.detach(), "yes_no_mass": mass,
            "text_only": torch.tensor(float(len(without)) / len(examples))}


def consistency_step(model, encoder, examples, ids, kl_weight: float, shortcut=(),
                     image_pool=()) -> dict:
    """The LoRA recipe on two distinct paraphrases (a, b) of each example's question.

    `ids` = (yes_id, no_id); cross-entropy over the whole vocabulary, KL over [no, yes]. Examples
    whose finding is in `shortcut` are shown a random image of `image_pool` instead of theirs
    (the same one for both paraphrases).
    """
    pairs = [random.sample(ex.prompts, 2) for ex in examples]
    images = [random.choice(image_pool) if ex.finding in shortcut else ex.image for ex in examples]
    logits_a = next_token_logits(model, encoder(images, [a for a, _ in pairs]))
    logits_b = next_token_logits(model, encoder(images, [b for _, b in pairs]))
    y = answer_targets(examples, *ids)
    ce = (F.cross_entropy(logits_a, y) + F.cross_entropy(logits_b, y)) / 2
    two_way = [no_yes(logits, ids) for logits in (logits_a, logits_b)]
    kl = symmetric_kl(*two_way)
    return {"loss": ce + kl_weight * kl, "ce": ce.detach(), "kl": kl.detach()}


def no_yes(logits: torch.Tensor, ids) -> torch.Tensor:
    """(N, 2) logits of [no, yes] from full-vocabulary logits; `ids` = (yes_id, no_id)."""
    return logits[:, [ids[1], ids[0]]]


def train(model, step_fn, examples, epochs: float, batch_size: int, lr: float,
          grad_accum: int = 1, seed: int = 0, log_every: int = 10, lr_scale=None,
          warmup: float = 0.1) -> pd.DataFrame:
    """AdamW with a one-cycle schedule over the trainable parameters; returns the loss log.

    `lr_scale(name)` (optional) gives a parameter's learning rate as a multiple of `lr`
    (e.g. a slower vision side); `warmup` is the fraction of steps spent warming up.
    """
    random.seed(seed)
    torch.manual_seed(seed)
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    params = [p for _, p in named]
    scales = sorted({lr_scale(n) for n, _ in named}) if lr_scale else [1.0]
    groups = [{"params": [p for n, p in named if not lr_scale or lr_scale(n) == k], "lr": lr * k}
              for k in scales]
    groups = [g for g in groups if g["params"]]
    steps = max(1, int(epochs * len(examples) / (batch_size * grad_accum)))
    optimizer = torch.optim.AdamW(groups, lr=lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=[g["lr"] for g in groups],
                                                   total_steps=steps, pct_start=warmup)
    model.train()
    log, order = [], []
    for step in range(steps):
        terms = []
        for _ in range(grad_accum):
            if len(order) < batch_size:
                order += random.sample(range(len(examples)), len(examples))
            batch = [examples[i] for i in order[:batch_size]]
            del order[:batch_size]
            out = step_fn(model, batch)
            (out["loss"] / grad_accum).backward()
            terms.append({k: float(v.detach()) for k, v in out.items()})
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        if step % log_every == 0 or step == steps - 1:
            log.append({"step": step, **pd.DataFrame(terms).mean().to_dict()})
    model.eval()
    return pd.DataFrame(log)


def pretrain_vision(model, encoder, images, finding_labels: torch.Tensor, steps: int, lr: float,
                    batch_size: int = 32, seed: int = 0, warmup: float = 0.1) -> pd.DataFrame:
    """Stage 1 of the default models: teach the vision side (tower + projector) the findings.

    Two temporary probes predict every finding (multi-label cross-entropy, summed): a linear
    probe on all image tokens (flattened, so where a token sits counts: it learns the features
    fast) and an attention-pooling probe (per finding, a learned query attends over the image
    tokens and a linear readout scores the pooled token), which makes the evidence readable the
    way the language model reads the image, by attention from the question's tokens. The probes
    are thrown away, the vision weights stay. Training the whole VLM from random weights without
    this stage does not get past chance on CPU budgets. The learning rate follows a one-cycle
    schedule (`warmup` = fraction of steps warming up); the encoder's `augment` jitters the
    images here too.
    """
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.stack([encoder.pixels(im) for im in images])
    with torch.no_grad():
        _, n_tokens, width = image_tokens(model, pixels[:1]).shape
    classes = finding_labels.shape[1]
    flat, probe = torch.nn.Linear(n_tokens * width, classes), AttentionProbe(width, classes)
    params = [p for n, p in model.named_parameters() if not is_language(n)]
    optimizer = torch.optim.AdamW(params + list(flat.parameters()) + list(probe.parameters()), lr=lr)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps,
                                                   pct_start=warmup)
    model.train()
    log = []
    for step in range(steps):
        idx = torch.randint(len(images), (batch_size,), generator=generator)
        batch = augment_pixels(pixels[idx], generator) if encoder.augment else pixels[idx]
        feats = image_tokens(model, batch)
        logits = probe(feats)
        target = finding_labels[idx].float()
        loss = (F.binary_cross_entropy_with_logits(flat(feats.flatten(1)), target)
                + F.binary_cross_entropy_with_logits(logits, target))
        loss.backward()
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        if step % 10 == 0 or step == steps - 1:
            accuracy = ((logits > 0) == finding_labels[idx].bool()).float().mean().item()
            log.append({"step": step, "loss": loss.item(), "probe_accuracy": accuracy})
    model.eval()
    return pd.DataFrame(log)


class AttentionProbe(torch.nn.Module):
    """Per-class attention pooling over tokens followed by a per-class linear readout."""

    def __init__(self, width: int, classes: int):
        super().__init__()
        self.query = torch.nn.Parameter(torch.zeros(classes, width))
        self.readout = torch.nn.Parameter(torch.randn(classes, width) / width ** 0.5)
        self.bias = torch.nn.Parameter(torch.zeros(classes))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:  # (B, T, H) -> (B, C)
        weights = torch.softmax(torch.einsum("bth,ch->bct", tokens, self.query)
                                / tokens.shape[-1] ** 0.5, dim=-1)
        pooled = torch.einsum("bct,bth->bch", weights, tokens)
        return (pooled * self.readout).sum(-1) + self.bias


def image_tokens(model, pixel_values) -> torch.Tensor:
    """(B, T, H) image features as the language model receives them."""
    out = model.get_image_features(pixel_values=pixel_values)
    feats = getattr(out, "pooler_output", out)
    if isinstance(feats, (list, tuple)):
        feats = torch.stack(list(feats))
    return feats


def lora_config(r: int, alpha: int, dropout: float, layers, target_modules=LORA_TARGETS):
    """peft LoRA on the language model's projections of the given decoder layers only.

    The regex keeps the vision tower (whose attention also has q/k/v projections) frozen.
    """
    from peft import LoraConfig

    layer_alt = "|".join(str(i) for i in layers)
    module_alt = "|".join(target_modules)
    pattern = rf".*language_model\.layers\.({layer_alt})\.(self_attn|mlp)\.({module_alt})"
    return LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=pattern,
                      bias="none")


def decoder_layers(model) -> int:
    config = model.config.get_text_config()
    return config.num_hidden_layers
