"""Fast yes/no scoring: one forward pass per prompt, batched, with the image prefix shared.

The answer to a prompt is read from the next-token distribution after the prompt (never
`generate()`): p_yes = P(yes) / (P(yes) + P(no)), where P(yes) sums the probabilities of every
single-token spelling of yes (yes, Yes, YES, with and without a leading space) and likewise
for no. `yes_no_mass` = P(yes) + P(no) says how much of the distribution the answer covers.

Image prefix sharing: the chat formats of LLaVA and Gemma 3 put the image before the question,
so every prompt of a sample starts with the same tokens (template start + image tokens). The
engine runs that prefix, vision tower included, once per image, repeats its KV cache across the
sample's prompts (any number per sample) and runs only the question suffixes. Suffixes are
left-padded; padded positions are masked and the position ids continue after the prefix, so in
float32 every p_yes equals the one-prompt-at-a-time forward. Where the format does not allow it
(question before the image, or a tokenizer that merges across the cut) the engine says why in
`fallback_reason` and uses plain batching of full prompts.

Conditions (names in CONDITIONS; definitions in lib.protocol.taxonomy and lib.protocol.references).
Every Item carries its condition, and the engine scores each Item's prompts once:
- ``image`` (a sample: its image, its prompts) and the sample's derived images, each with the
  original question through the same path whenever the item has them: ``twin`` (the offline world:
  its counterfactual twin), ``occlude`` and ``occlude_control`` (lib.protocol.local_tests);
- per-run conditions, whose items the run builds once per distinct (image, prompt):
  ``reference`` (a reference image with the original question of each finding it serves),
  ``followup`` (another study of a sample's patient with the original questions it serves),
  ``blank`` (a uniform grey image, ``blank_image``) and ``noise`` (``NULL_IMAGES`` seeded Gaussian
  noise images, ``null_images``) with every distinct original question, all through the image path
  (shared prefix when the format allows it); and ``text_only`` (an item without an image: every
  distinct original question with no image tokens, or with the blank image when
  ``image_removal == "blank"``).
Counters (``passes``): image prefixes run through the vision tower, suffix rows that reuse a
prefix, full prompts with an image, and prompts without one.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from . import prompts as prompting
from .vocabulary import BLANK as CONDITION_BLANK
from .vocabulary import IMAGE as CONDITION_IMAGE
from .vocabulary import NOISE as CONDITION_NOISE
from .vocabulary import REFERENCE as CONDITION_REFERENCE
from .vocabulary import TEXT_ONLY as CONDITION_TEXT_ONLY

BLANK_GREY = (128, 128, 128)
# Derived images are made at this size: the processors resize every image to their own input
# size (224-896 px), and a uniform or i.i.d. noise image carries nothing a larger one would add.
DERIVED_SIZE = (224, 224)
NULL_IMAGES = 4          # noise images per run (a null prior averaged over K images)
NOISE_MEAN, NOISE_STD = 128.0, 64.0


@dataclass
class Item:
    """What the engine scores: an image (RGB; None for ``text_only``), its prompts and the
    condition its rows carry. ``counterfactuals``: an ``image`` item's derived images as
    (condition, image) pairs (its twin in the offline world, its occluded finding and control:
    lib.protocol.local_tests), each scored with the original question (prompt 0)."""

    sample_id: str
    image: Image.Image | None
    prompts: tuple[str, ...]
    condition: str = CONDITION_IMAGE
    counterfactuals: tuple = ()


def paper_items(items: list[Item]) -> list[Item]:
    """The paper's per-sample protocol: each item as it is, plus its original question without the
    image (a ``text_only`` item with the same sample_id) — one text-only pass per sample, where a run
    scores one per distinct question (lib.protocol.run)."""
    return list(items) + [Item(it.sample_id, None, it.prompts[:1], CONDITION_TEXT_ONLY) for it in items]


def yes_probability(logits: torch.Tensor, yes_ids, no_ids) -> tuple[torch.Tensor, torch.Tensor]:
    """(p_yes renormalised over yes+no, yes_no_mass) from next-token logits of shape (N, V)."""
    logits = logits.float()
    lse_yes = torch.logsumexp(logits[:, yes_ids], dim=-1)
    lse_no = torch.logsumexp(logits[:, no_ids], dim=-1)
    lse_all = torch.logsumexp(logits, dim=-1)
    p_yes = torch.sigmoid(lse_yes - lse_no)
    mass = torch.exp(torch.logaddexp(lse_yes, lse_no) - lse_all)
    return p_yes, mass


def blank_image() -> Image.Image:
    """The run's `blank` condition, and the image of ``image_removal: blank``: a uniform grey image
    (``DERIVED_SIZE``; the processors resize it, and a uniform image stays the same grey)."""
    return Image.new("RGB", DERIVED_SIZE, BLANK_GREY)


def null_image(seed: int, j: int) -> Image.Image:
    """Null image ``j`` of the run's `noise` condition: grey Gaussian noise (mean ``NOISE_MEAN``,
    standard deviation ``NOISE_STD``, rounded and clipped to 0..255, ``DERIVED_SIZE``) drawn from a
    generator seeded with (seed, j). Same seed and j: same pixels."""
    z = np.random.default_rng([int(seed), int(j)]).standard_normal(DERIVED_SIZE[::-1])
    pixels = np.clip(np.rint(NOISE_MEAN + NOISE_STD * z), 0, 255).astype(np.uint8)
    return Image.fromarray(pixels, "L").convert("RGB")


def null_images(seed: int = 0, k: int = NULL_IMAGES) -> list[Image.Image]:
    """The run's ``k`` null images (``null_image`` 0 .. k-1)."""
    return [null_image(seed, j) for j in range(k)]


class Engine:
    """Scores batches of Items (module docstring).

    Within a call the items are grouped by condition; image items share their image prefix
    (samples that ask about the same image share one prefix row) and their prompts are grouped by
    token length into forward passes of at most `max_rows` prompts each.
    """

    def __init__(self, lm, image_removal: str = "none", prefix_sharing: bool = True,
                 batch_size: int = 16, max_rows: int = 64):
        self.lm = lm
        self.image_removal = image_removal
        self.batch_size = batch_size
        self.max_rows = max_rows
        self.prefix_sharing = prefix_sharing
        self.fallback_reason = None if prefix_sharing else "prefix_sharing disabled by params"
        self._checked = not prefix_sharing
        self._texts: dict = {}       # (question, with_image) -> rendered chat text
        self._splits: dict = {}      # question -> SplitPrompt (None: cannot split)
        self._suffix_ids: dict = {}  # suffix text -> its token ids
        self._prefix_len: int | None = None
        self.passes = {"image_prefixes": 0, "suffixes": 0, "full_with_image": 0, "text_only": 0}
        lm.tokenizer.padding_side = "left"

    @property
    def mode(self) -> str:
        return "prefix_sharing" if self.prefix_sharing else "batched"

    def score(self, items: list[Item]) -> list[dict]:
        """Rows (sample_id, prompt_id, condition, prompt, p_yes, yes_no_mass) for the items."""
        rows = []
        for start in range(0, len(items), self.batch_size):
            batch = items[start:start + self.batch_size]
            with_image = [it for it in batch if it.image is not None]
            if with_image:
                rows += self.score_image(with_image)
                derived = [Item(it.sample_id, image, it.prompts[:1], condition)
                           for it in with_image for condition, image in it.counterfactuals]
                rows += self.score_image(derived) if derived else []
            text = [it for it in batch if it.image is None]
            rows += self.score_text_only(text) if text else []
        return rows

    def score_image(self, items: list[Item]) -> list[dict]:
        """Every prompt of every item with its image; rows carry the item's condition."""
        if not self._checked:
            self._decide_sharing(items[0])
        jobs = [(it, pid, q) for it in items for pid, q in enumerate(it.prompts)]
        if self.prefix_sharing and self._fits_window(items):
            p_yes, mass = self._shared_prefix_scores(items, jobs)
        else:
            p_yes, mass = self._full_prompt_scores([(it.image, q) for it, _, q in jobs], True)
        return [
            record(it.sample_id, pid, it.condition, q, p, m)
            for (it, pid, q), p, m in zip(jobs, p_yes, mass)
        ]

    def score_text_only(self, items: list[Item]) -> list[dict]:
        """Every prompt of the items without the image (no image tokens), or with a blank image."""
        with_image = self.image_removal == "blank"
        jobs = [(it, pid, q) for it in items for pid, q in enumerate(it.prompts)]
        pairs = [(blank_image() if with_image else None, q) for _, _, q in jobs]
        p_yes, mass = self._full_prompt_scores(pairs, with_image)
        return [record(it.sample_id, pid, CONDITION_TEXT_ONLY, q, p, m)
                for (it, pid, q), p, m in zip(jobs, p_yes, mass)]

    # -- forward passes ---------------------------------------------------------------------

    @torch.inference_mode()
    def _full_prompt_scores(self, pairs: list[tuple[Image.Image | None, str]], with_image: bool):
        """Plain batching: every prompt is a full forward, grouped by text length."""
        processor = self.lm.processor
        texts = [self._chat_text(q, with_image) for _, q in pairs]
        out_p = [0.0] * len(pairs)
        out_m = [0.0] * len(pairs)
        for chunk in self._length_chunks([len(t) for t in texts]):
            kwargs = {"images": [[pairs[i][0]] for i in chunk]} if with_image else {}
            enc = prompting.encode(processor, [texts[i] for i in chunk], padding=True, **kwargs)
            self.passes["full_with_image" if with_image else "text_only"] += len(chunk)
            if not with_image:
                drop_trivial_token_types(enc)
            logits = self._forward(enc)
            self._scatter(chunk, logits, out_p, out_m)
        return out_p, out_m

    @torch.inference_mode()
    def _shared_prefix_scores(self, items: list[Item], jobs):
        """Prefix (template start + image) once per image; suffixes reuse its KV cache.

        Samples that ask about the same image (same pixels) share one prefix row.
        """
        processor = self.lm.processor
        prefix = self._split(items[0].prompts[0]).prefix
        rows: dict = {}          # image fingerprint -> prefix row
        owner, images = {}, []
        for it in items:
            key = image_fingerprint(it.image)
            if key not in rows:
                rows[key] = len(images)
                images.append(it.image)
            owner[id(it)] = rows[key]
        enc = prompting.encode(processor, [prefix] * len(images), [[im] for im in images])
        prefix_len = enc["input_ids"].shape[1]
        prefix_out = self._run(enc, use_cache=True)
        self.passes["image_prefixes"] += len(images)
        self.passes["suffixes"] += len(jobs)
        suffix_ids = [self._suffix_tokens(self._split(q).suffix) for _, _, q in jobs]
        out_p = [0.0] * len(jobs)
        out_m = [0.0] * len(jobs)
        lengths = [len(ids) for ids in suffix_ids]
        for chunk in self._length_chunks(lengths):
            cache = select_rows(prefix_out.cache, torch.tensor(
                [owner[id(jobs[i][0])] for i in chunk], device=self.lm.device))
            suf = self._left_pad([suffix_ids[i] for i in chunk])
            mask = suf["attention_mask"]
            positions = prefix_len + (mask.cumsum(-1) - 1).clamp(min=0)
            full_mask = torch.cat([torch.ones(len(chunk), prefix_len, dtype=mask.dtype), mask], -1)
            logits = self._forward({
                "input_ids": suf["input_ids"], "attention_mask": full_mask,
                "position_ids": positions, "cache": cache,
            })
            self._scatter(chunk, logits, out_p, out_m)
        return out_p, out_m

    def _fits_window(self, items: list[Item]) -> bool:
        """False when a prompt is longer than a sliding attention window.

        The left padding of a suffix sits between the prefix and the question, inside the
        window's span of cache positions, so a padded row would see fewer real tokens than the
        full prompt does; such batches use plain batching (left padding there is exact).
        """
        window = getattr(self.lm.model.config.get_text_config(), "sliding_window", None)
        if not window:
            return True
        longest = max(len(self._suffix_tokens(self._split(q).suffix)) for it in items for q in it.prompts)
        return self._prefix_tokens(items[0]) + longest <= window

    def _prefix_tokens(self, item: Item) -> int:
        if self._prefix_len is None:
            prefix = self._split(item.prompts[0]).prefix
            self._prefix_len = prompting.encode(self.lm.processor, [prefix], [[item.image]])["input_ids"].shape[1]
        return self._prefix_len

    # -- memoised text work (the same questions recur in every batch) -------------------------

    def _chat_text(self, question: str, with_image: bool) -> str:
        key = (question, with_image)
        if key not in self._texts:
            self._texts[key] = prompting.chat_text(self.lm.processor, question, with_image)
        return self._texts[key]

    def _split(self, question: str):
        if question not in self._splits:
            self._splits[question] = prompting.split_at_image(self.lm.processor, question)
        return self._splits[question]

    def _suffix_tokens(self, suffix: str) -> list[int]:
        if suffix not in self._suffix_ids:
            self._suffix_ids[suffix] = self.lm.tokenizer(suffix, add_special_tokens=False)["input_ids"]
        return self._suffix_ids[suffix]

    def _left_pad(self, rows: list[list[int]]) -> dict:
        """What tokenizer(..., padding=True) gives with left padding, from cached token ids."""
        width = max(len(r) for r in rows)
        pad = self.lm.tokenizer.pad_token_id or 0   # masked out: any id will do
        ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows], dtype=torch.long)
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], dtype=torch.long)
        return {"input_ids": ids, "attention_mask": mask}

    def _run(self, inputs: dict, use_cache: bool = False):
        moved = {k: self._to_device(v) for k, v in inputs.items()}
        return self.lm.model(**moved, use_cache=use_cache, logits_to_keep=1)

    def _forward(self, inputs: dict) -> torch.Tensor:
        return self._run(inputs).logits[:, -1, :]

    def _to_device(self, value):
        if not torch.is_tensor(value):
            return value
        if value.is_floating_point():
            return value.to(self.lm.device, dtype=self.lm.dtype)
        return value.to(self.lm.device)

    def _scatter(self, chunk, logits, out_p, out_m):
        p_yes, mass = yes_probability(logits, self.lm.yes_ids, self.lm.no_ids)
        for i, p, m in zip(chunk, p_yes.tolist(), mass.tolist()):
            out_p[i], out_m[i] = p, m

    def _length_chunks(self, lengths: list[int]) -> list[list[int]]:
        """Indices sorted by length, cut into forwards of at most max_rows (less padding)."""
        order = sorted(range(len(lengths)), key=lengths.__getitem__)
        return [order[i:i + self.max_rows] for i in range(0, len(order), self.max_rows)]

    # -- can this format share the image prefix? ---------------------------------------------

    def _decide_sharing(self, item: Item) -> None:
        """Share only if prefix + suffix tokens equal the full prompt's tokens exactly."""
        self._checked = True
        reason = sharing_problem(self.lm.processor, item)
        if reason:
            self.prefix_sharing = False
            self.fallback_reason = reason


def sharing_problem(processor, item: Item) -> str | None:
    """Why the image prefix cannot be shared for this format, or None when it can.

    Besides the text checks, two model-family properties rule sharing out (lib/families/registry.py):
    image tokens placed on a 2D/3D position grid (Qwen2-VL / Qwen2.5-VL mRoPE: the processor
    returns `image_grid_thw`, and the text after the image does not continue at prefix length +
    i, which the shared suffix's 1D position ids assume), and a number of image tokens that
    depends on the image's size (Qwen dynamic resolution, Idefics3 / SmolVLM image splitting:
    prefixes of one batch would differ in length).
    """
    splits = [prompting.split_at_image(processor, q) for q in item.prompts]
    if any(s is None for s in splits):
        return "the chat format does not put the image before the question"
    if len({s.prefix for s in splits}) != 1:
        return "the text before the image differs between prompts"
    question = item.prompts[0]
    full = prompting.encode(processor, [prompting.chat_text(processor, question, True)],
                            [[item.image]])["input_ids"][0].tolist()
    head = prompting.encode(processor, [splits[0].prefix], [[item.image]])
    if "image_grid_thw" in head:
        return ("image tokens have multi-dimensional (mRoPE) positions, which the shared "
                "suffix's 1D position ids cannot continue")
    tail = processor.tokenizer(splits[0].suffix, add_special_tokens=False)["input_ids"]
    if head["input_ids"][0].tolist() + list(tail) != full:
        return "the tokenizer merges tokens across the image/question cut"
    width, height = item.image.size
    for size in ((3 * width, height), (width, 3 * height)):
        probe = prompting.encode(processor, [splits[0].prefix], [[item.image.resize(size)]])
        if probe["input_ids"].shape[1] != head["input_ids"].shape[1]:
            return "the number of image tokens depends on the image size"
    return None


def image_fingerprint(image: Image.Image) -> tuple:
    """Identifies an image by its pixels (samples of one image are separate PIL objects).

    The raw bytes themselves: a dict compares them on a hash match, so equal keys mean equal
    pixels, and hashing them is several times cheaper than a cryptographic digest.
    """
    return image.mode, image.size, image.tobytes()


def drop_trivial_token_types(enc) -> None:
    """Remove all-zero `token_type_ids` (prompts without image tokens), in place.

    Gemma 3 uses them only to let image tokens attend to each other; when no token is an image
    token they change nothing, but their presence makes transformers build the attention masks
    through torch.vmap, which costs more than the whole forward of a small model.
    """
    types = enc.get("token_type_ids") if hasattr(enc, "get") else None
    if torch.is_tensor(types) and not types.any():
        del enc["token_type_ids"]


def select_rows(cache, index: torch.Tensor):
    """A cache holding rows `index` of `cache` (repeats allowed); `cache` itself is untouched.

    The layers are copied shallowly before the row selection (which builds new tensors), so the
    prefix cache is never deep-copied: a layer's update rebinds its tensors and never writes into
    the shared ones. Caches without `layers` are deep-copied first.
    """
    import copy

    layers = getattr(cache, "layers", None)
    if not isinstance(layers, list):
        selected = copy.deepcopy(cache)
    else:
        selected = copy.copy(cache)
        selected.layers = [copy.copy(layer) for layer in layers]
    selected.batch_select_indices(index)
    return selected


def record(sample_id, prompt_id, condition, prompt, p_yes, mass) -> dict:
    """One prediction row."""
    return {
        "sample_id": sample_id, "prompt_id": prompt_id, "condition": condition,
        "prompt": prompt, "p_yes": float(p_yes), "yes_no_mass": float(mass),
    }
