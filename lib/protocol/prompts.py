"""A sample's prompts in the model's own chat template, with and without the image.

Every prompt is rendered through `processor.apply_chat_template`, so each family (LLaVA,
Gemma 3, Qwen2.5-VL, ...) gets its own format. For prefix sharing the rendered text is cut right
after the image placeholder: the part before is the same for every question of a sample (the
image prefix), the part after is the question suffix.
"""
from __future__ import annotations

from dataclasses import dataclass


def messages(question: str, with_image: bool) -> list[dict]:
    content = [{"type": "image"}] if with_image else []
    content.append({"type": "text", "text": question})
    return [{"role": "user", "content": content}]


def chat_text(processor, question: str, with_image: bool) -> str:
    """The prompt as the model sees it, ending where the assistant's answer begins."""
    return processor.apply_chat_template(
        messages(question, with_image), add_generation_prompt=True, tokenize=False
    )


def image_placeholder(processor) -> str | None:
    """The text that the processor expands into image tokens (`<image>`, `<start_of_image>`...)."""
    return getattr(processor, "image_token", None) or getattr(processor, "boi_token", None)


@dataclass(frozen=True)
class SplitPrompt:
    """A rendered image prompt cut into the shared image prefix and the question suffix."""

    prefix: str
    suffix: str


def split_at_image(processor, question: str) -> SplitPrompt | None:
    """Cut after the last image placeholder; None when the format puts the question first."""
    text = chat_text(processor, question, with_image=True)
    placeholder = image_placeholder(processor)
    if not placeholder or placeholder not in text:
        return None
    cut = text.rindex(placeholder) + len(placeholder)
    prefix, suffix = text[:cut], text[cut:]
    if question.strip() in prefix or not suffix:
        return None
    return SplitPrompt(prefix, suffix)


def encode(processor, texts: list[str], images=None, **kwargs):
    """The processor's model inputs for rendered prompts, without a doubled BOS.

    Chat templates such as Gemma 3's write the BOS token themselves; a tokenizer that also adds
    one would give the model `<bos><bos>`, so special tokens are added only when the rendered
    text does not already start with BOS (as transformers' own chat path does).
    """
    bos = getattr(processor.tokenizer, "bos_token", None)
    add_special = not (bos and all(t.startswith(bos) for t in texts))
    if images is not None:
        kwargs["images"] = images
    return processor(text=texts, add_special_tokens=add_special, return_tensors="pt", **kwargs)
