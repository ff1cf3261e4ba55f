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

Reliance checks (`reliance_checks`, default none; definitions in lib.protocol.taxonomy): each adds
one forward pass per sample of the ORIGINAL question (prompt_id 0), after the paper's image and
text-only passes of the batch, which they leave untouched. `swap` scores the question with the
item's `swap_image` (another sample's image, chosen by lib.protocol.reliance.choose_swaps) through
the same path as the image prompts (shared prefix when the format allows it), and its row carries
`swap_image_id`; items without a swap image get no swap row. `blank` (uniform grey image of the
same size, `blank_like`) and `noise` (Gaussian noise with the image's per-channel mean and
standard deviation, seeded per sample from the engine's `seed`, `noise_like`) are full prompts
batched together like the blank text-only pass.

Ground truth (`twin`, the offline world only): an item's `twin_image` is the counterfactual twin of
its image (same anatomy, the finding toggled); the original question is scored with it through
the swap path, whenever the item has one.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from . import prompts as prompting

CONDITION_IMAGE = "image"
CONDITION_TEXT_ONLY = "text_only"
CONDITION_SWAP = "swap"
CONDITION_BLANK = "blank"
CONDITION_NOISE = "noise"
CONDITION_TWIN = "twin"
RELIANCE_CHECKS = (CONDITION_SWAP, CONDITION_BLANK, CONDITION_NOISE)
IMAGE_REMOVAL_MODES = ("none", "blank")
BLANK_GREY = (128, 128, 128)


@dataclass
class Item:
    """One sample ready to score: its image (RGB) and its prompt set (original first).

    `swap_image` / `swap_image_id`: the image (RGB) the `swap` check uses and its image_id;
    None when the sample has no swap (or the check is off). `twin_image`: the sample's
    counterfactual twin (offline world), None elsewhere.
    """

    sample_id: str
    image: Image.Image
    prompts: tuple[str, ...]
    swap_image: Image.Image | None = None
    swap_image_id: str | None = None
    twin_image: Image.Image | None = None


def yes_probability(logits: torch.Tensor, yes_ids, no_ids) -> tuple[torch.Tensor, torch.Tensor]:
    """(p_yes renormalised over yes+no, yes_no_mass) from next-token logits of shape (N, V)."""
    logits = logits.float()
    lse_yes = torch.logsumexp(logits[:, yes_ids], dim=-1)
    lse_no = torch.logsumexp(logits[:, no_ids], dim=-1)
    lse_all = torch.logsumexp(logits, dim=-1)
    p_yes = torch.sigmoid(lse_yes - lse_no)
    mass = torch.exp(torch.logaddexp(lse_yes, lse_no) - lse_all)
    return p_yes, mass


def blank_like(image: Image.Image) -> Image.Image:
    """The `blank` image removal: a uniform grey image of the same size."""
    return Image.new("RGB", image.size, BLANK_GREY)


def noise_like(image: Image.Image, seed: int = 0, key: str = "") -> Image.Image:
    """The `noise` check: Gaussian noise with the image's per-channel mean and standard deviation.

    One standard-normal field z (the image's height x width) drawn from a generator seeded with
    (seed, SHA-256 of `key`, the sample_id), every channel c = mean_c + std_c * z, rounded and
    clipped to 0..255 (a grey image gives grey noise). Same seed and key: same pixels.
    """
    pixels = np.asarray(image.convert("RGB"), dtype=np.float64)
    mean = pixels.mean(axis=(0, 1))
    std = pixels.std(axis=(0, 1))
    digest = hashlib.sha256(str(key).encode()).digest()
    rng = np.random.default_rng([int(seed), int.from_bytes(digest[:8], "little")])
    z = rng.standard_normal(pixels.shape[:2])
    noisy = np.clip(np.rint(mean + std * z[..., None]), 0, 255).astype(np.uint8)
    return Image.fromarray(noisy, "RGB")


class Engine:
    """Scores batches of samples with and without the image.

    `batch_size` samples are scored together; within a batch the prompts are grouped by token
    length into forward passes of at most `max_rows` prompts each. `reliance_checks`: any of
    RELIANCE_CHECKS (module docstring); `seed` seeds the noise images.
    """

    def __init__(self, lm, image_removal: str = "none", prefix_sharing: bool = True,
                 batch_size: int = 16, max_rows: int = 64, reliance_checks=(), seed: int = 0):
        if image_removal not in IMAGE_REMOVAL_MODES:
            raise ValueError(f"image_removal must be one of {IMAGE_REMOVAL_MODES}, got {image_removal!r}")
        if isinstance(reliance_checks, str):
            reliance_checks = (reliance_checks,)
        unknown = [c for c in reliance_checks if c not in RELIANCE_CHECKS]
        if unknown:
            raise ValueError(f"reliance_checks: unknown check(s) {unknown}; expected any of {RELIANCE_CHECKS}")
        self.reliance_checks = tuple(c for c in RELIANCE_CHECKS if c in reliance_checks)
        self.seed = int(seed)
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
        lm.tokenizer.padding_side = "left"

    @property
    def mode(self) -> str:
        return "prefix_sharing" if self.prefix_sharing else "batched"

    def score(self, items: list[Item]) -> list[dict]:
        """Rows (sample_id, prompt_id, condition, prompt, p_yes, yes_no_mass) for the items."""
        rows = []
        for start in range(0, len(items), self.batch_size):
            batch = items[start:start + self.batch_size]
            rows += self.score_image(batch)
            rows += self.score_text_only(batch)
            if self.reliance_checks or any(it.twin_image is not None for it in batch):
                rows += self.score_reliance(batch)
        return rows

    def score_image(self, items: list[Item]) -> list[dict]:
        if not self._checked:
            self._decide_sharing(items[0])
        jobs = [(it, pid, q) for it in items for pid, q in enumerate(it.prompts)]
        if self.prefix_sharing and self._fits_window(items):
            p_yes, mass = self._shared_prefix_scores(items, jobs)
        else:
            p_yes, mass = self._full_prompt_scores([(it.image, q) for it, _, q in jobs], True)
        return [
            record(it.sample_id, pid, CONDITION_IMAGE, q, p, m)
            for (it, pid, q), p, m in zip(jobs, p_yes, mass)
        ]

    def score_text_only(self, items: list[Item]) -> list[dict]:
        """The original question without the image (no image tokens), or with a blank image."""
        with_image = self.image_removal == "blank"
        pairs = [(blank_like(it.image) if with_image else None, it.prompts[0]) for it in items]
        p_yes, mass = self._full_prompt_scores(pairs, with_image)
        return [
            record(it.sample_id, 0, CONDITION_TEXT_ONLY, it.prompts[0], p, m)
            for it, p, m in zip(items, p_yes, mass)
        ]

    def score_reliance(self, items: list[Item]) -> list[dict]:
        """Rows of the engine's reliance checks (prompt_id 0); see the module docstring."""
        rows = []
        if CONDITION_SWAP in self.reliance_checks:
            rows += self._other_image_rows(items, CONDITION_SWAP, lambda it: it.swap_image,
                                           lambda it: {"swap_image_id": it.swap_image_id})
        rows += self._other_image_rows(items, CONDITION_TWIN, lambda it: it.twin_image, lambda it: {})
        jobs = []
        if CONDITION_BLANK in self.reliance_checks:
            jobs += [(it, CONDITION_BLANK, blank_like(it.image)) for it in items]
        if CONDITION_NOISE in self.reliance_checks:
            jobs += [(it, CONDITION_NOISE, noise_like(it.image, self.seed, it.sample_id)) for it in items]
        if jobs:
            p_yes, mass = self._full_prompt_scores([(image, it.prompts[0]) for it, _, image in jobs], True)
            rows += [record(it.sample_id, 0, condition, it.prompts[0], p, m)
                     for (it, condition, _), p, m in zip(jobs, p_yes, mass)]
        return rows

    def _other_image_rows(self, items: list[Item], condition: str, image_of, extra_of) -> list[dict]:
        """The original question with another image (a swap, a twin) where the item has one."""
        others = [it for it in items if image_of(it) is not None]
        if not others:
            return []
        if not self._checked:
            self._decide_sharing(others[0])
        proxies = [Item(it.sample_id, image_of(it), it.prompts[:1]) for it in others]
        jobs = [(proxy, 0, proxy.prompts[0]) for proxy in proxies]
        if self.prefix_sharing and self._fits_window(proxies):
            p_yes, mass = self._shared_prefix_scores(proxies, jobs)
        else:
            p_yes, mass = self._full_prompt_scores(
                [(proxy.image, proxy.prompts[0]) for proxy in proxies], True)
        return [record(it.sample_id, 0, condition, it.prompts[0], p, m, **extra_of(it))
                for it, p, m in zip(others, p_yes, mass)]

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


def record(sample_id, prompt_id, condition, prompt, p_yes, mass, **extra) -> dict:
    """One prediction row; `extra` (swap rows: swap_image_id) is appended to the keys."""
    return {
        "sample_id": sample_id, "prompt_id": prompt_id, "condition": condition,
        "prompt": prompt, "p_yes": float(p_yes), "yes_no_mass": float(mass), **extra,
    }
