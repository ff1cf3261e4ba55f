"""Tiny random checkpoints of every supported family, for the tests.

gemma3 and llava come from `lib.families.registry` (the one factory, `lib.families.tiny`);
the Idefics3 and Qwen2.5-VL builders live here because only the tests use them. They take the
family's vocabulary and hub chat template from the registry and the tiny sizes from
`lib.families.tiny`, like the library's own builders.
"""
from __future__ import annotations

import torch
from transformers import (Idefics3Config, Idefics3ForConditionalGeneration,
                          Idefics3ImageProcessorPil, Idefics3Processor, Idefics3VisionConfig,
                          LlamaConfig, Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration,
                          Qwen2_5_VLProcessor, Qwen2VLImageProcessorPil)
from transformers.processing_utils import ProcessorMixin

from lib.families import registry
from lib.families.registry import FAMILIES, IMAGE_SIZE, LAYERS, PATCH_SIZE
from lib.families.tiny import token_ids


def build_idefics3(tokenizer, seed: int, layers: int = LAYERS, image_splitting: bool = True):
    """SmolVLM-Instruct's architecture: SigLIP tiles + pixel-shuffle connector + Llama."""
    torch.manual_seed(seed)
    scale = 2
    seq_len = (IMAGE_SIZE // PATCH_SIZE) ** 2 // scale ** 2
    config = Idefics3Config(
        vision_config=Idefics3VisionConfig(**registry.vision_config_kwargs()),
        text_config=LlamaConfig(**registry.text_config_kwargs(tokenizer, layers)),
        scale_factor=scale, image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False,
    )
    image_processor = Idefics3ImageProcessorPil(
        size={"longest_edge": 2 * IMAGE_SIZE}, max_image_size={"longest_edge": IMAGE_SIZE},
        do_image_splitting=image_splitting, image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5],
    )
    processor = Idefics3Processor(image_processor=image_processor, tokenizer=tokenizer,
                                  image_seq_len=seq_len,
                                  chat_template=FAMILIES["idefics3"].chat_template)
    return Idefics3ForConditionalGeneration(config), processor


def qwen_processor_in_memory(tokenizer):
    """Qwen2_5_VLProcessor without its (torchvision) video processor, for in-memory use only.

    The processor's class check of the video processor fails without torchvision; it is
    bypassed for that one None argument while the processor is built. Such a processor scores
    images but cannot be saved (save_pretrained needs the video processor)."""
    image_processor = Qwen2VLImageProcessorPil(
        patch_size=PATCH_SIZE, temporal_patch_size=2, merge_size=2,
        min_pixels=(IMAGE_SIZE // 2) ** 2, max_pixels=IMAGE_SIZE ** 2,
        image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5],
    )
    template = FAMILIES["qwen2_5_vl"].chat_template
    if registry.torchvision_available():
        # Only importable with torchvision installed (its video processor is a torchvision class).
        from transformers import Qwen2VLVideoProcessor

        return Qwen2_5_VLProcessor(image_processor=image_processor, tokenizer=tokenizer,
                                   video_processor=Qwen2VLVideoProcessor(
                                       patch_size=PATCH_SIZE, temporal_patch_size=2, merge_size=2),
                                   chat_template=template)
    original = ProcessorMixin.check_argument_for_proper_class

    def lenient(self, name, argument):
        if name == "video_processor" and argument is None:
            return None
        return original(self, name, argument)

    ProcessorMixin.check_argument_for_proper_class = lenient
    try:
        return Qwen2_5_VLProcessor(image_processor=image_processor, tokenizer=tokenizer,
                                   video_processor=None, chat_template=template)
    finally:
        ProcessorMixin.check_argument_for_proper_class = original


def build_qwen2_5_vl(tokenizer, seed: int, layers: int = LAYERS):
    """Qwen2.5-VL: windowed ViT + patch merger, Qwen2 text model with 3D mRoPE."""
    torch.manual_seed(seed)
    text = registry.text_config_kwargs(tokenizer, layers)
    text.pop("head_dim")
    text.pop("bos_token_id")
    image, video, start, end = token_ids(tokenizer, "<|image_pad|>", "<|video_pad|>",
                                         "<|vision_start|>", "<|vision_end|>")
    config = Qwen2_5_VLConfig(
        text_config=dict(**text, rope_parameters={"rope_type": "default", "mrope_section": [2, 3, 3],
                                                  "rope_theta": 10000.0}),
        vision_config=dict(depth=2, hidden_size=64, intermediate_size=128, num_heads=4,
                           patch_size=PATCH_SIZE, spatial_merge_size=2, temporal_patch_size=2,
                           window_size=4 * PATCH_SIZE, out_hidden_size=64, fullatt_block_indexes=[1]),
        image_token_id=image, video_token_id=video, vision_start_token_id=start,
        vision_end_token_id=end, tie_word_embeddings=False,
    )
    return Qwen2_5_VLForConditionalGeneration(config), qwen_processor_in_memory(tokenizer)


TEST_BUILDERS = {"idefics3": build_idefics3, "qwen2_5_vl": build_qwen2_5_vl}


def build(family: str, seed: int = 0, corpus: list[str] | None = None, **kwargs):
    """(model, processor) of a tiny randomly initialised checkpoint of any registry family."""
    if family in registry.BUILDERS:
        return registry.build(family, seed=seed, corpus=corpus, **kwargs)
    if family not in TEST_BUILDERS:
        raise ValueError(f"unknown family {family!r}; known: {sorted(FAMILIES)}")
    tokenizer = registry.train_tokenizer(family, corpus)
    model, processor = TEST_BUILDERS[family](tokenizer, seed=seed, **kwargs)
    return model.eval(), processor
