"""A timm ViT trunk (BiomedCLIP-CXR's `vit_base_patch14_dinov2`, or a plain ViT) as a transformers
`Dinov2Model`: its config read from the tensors' shapes and its weights renamed (the fused qkv split
into q/k/v; LayerScale 1 where the trunk has none). Used by `lib.families.llava_rad`, whose module
docstring says why Dinov2Model and not CLIPVisionModel.
"""
from __future__ import annotations

import math

import torch
from transformers import Dinov2Config

TRUNK_MARKER = "patch_embed.proj.weight"


class ConversionError(ValueError):
    """A source that cannot be converted exactly; the message says what and where."""


def find_trunk(state: dict) -> dict | None:
    """The timm ViT trunk's tensors (prefix stripped), wherever its prefix ends."""
    prefixes = [k[: -len(TRUNK_MARKER)] for k in state if k.endswith(TRUNK_MARKER)]
    if not prefixes:
        return None
    if len(prefixes) > 1:
        raise ConversionError(f"several vision trunks in one checkpoint: {prefixes}")
    prefix = prefixes[0]
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def dinov2_config_from_trunk(trunk: dict, num_heads: int | None = None):
    """The Dinov2Config of a timm ViT trunk's tensors (head dim 64 unless num_heads is given)."""
    unsupported = [k for k in trunk if k.split(".")[0] in ("norm_pre", "reg_token")
                   or k.startswith("blocks.0.attn.q_norm") or k.startswith("blocks.0.attn.k_norm")]
    if unsupported:
        raise ConversionError(f"the vision trunk has {unsupported[0]!r}: not a plain/DINOv2 timm ViT "
                              "(a pre-norm, register tokens or q/k norms have no exact Dinov2Model mapping)")
    if "cls_token" not in trunk:
        raise ConversionError("the vision trunk has no class token; LLaVA's 'patch' features drop it")
    proj = trunk["patch_embed.proj.weight"]
    hidden, channels, patch = proj.shape[0], proj.shape[1], proj.shape[2]
    layers = 1 + max(int(k.split(".")[1]) for k in trunk if k.startswith("blocks."))
    positions = trunk["pos_embed"].shape[1] - 1
    side = int(round(math.sqrt(positions)))
    if side * side != positions:
        raise ConversionError(f"pos_embed has {positions} patch positions, not a square grid")
    mlp = trunk["blocks.0.mlp.fc1.weight"].shape[0]
    if mlp % hidden:
        raise ConversionError(f"MLP width {mlp} is not a multiple of the width {hidden}")
    return Dinov2Config(
        hidden_size=hidden, num_hidden_layers=layers,
        num_attention_heads=num_heads or hidden // 64, mlp_ratio=mlp // hidden,
        image_size=side * patch, patch_size=patch, num_channels=channels,
        qkv_bias="blocks.0.attn.qkv.bias" in trunk, layer_norm_eps=1e-6, hidden_act="gelu",
        layerscale_value=1.0, use_swiglu_ffn=False, use_mask_token=False,
    )


def dinov2_weights(trunk: dict, config) -> dict:
    """timm ViT names -> transformers Dinov2Model names (under model.vision_tower.)."""
    hidden = config.hidden_size
    out = {
        "embeddings.cls_token": trunk["cls_token"],
        "embeddings.position_embeddings": trunk["pos_embed"],
        "embeddings.patch_embeddings.projection.weight": trunk["patch_embed.proj.weight"],
        "embeddings.patch_embeddings.projection.bias": trunk["patch_embed.proj.bias"],
        "layernorm.weight": trunk.get("norm.weight", torch.ones(hidden)),
        "layernorm.bias": trunk.get("norm.bias", torch.zeros(hidden)),
    }
    for i in range(config.num_hidden_layers):
        src, dst = f"blocks.{i}.", f"encoder.layer.{i}."
        for name in ("norm1", "norm2"):
            out[dst + name + ".weight"] = trunk[src + name + ".weight"]
            out[dst + name + ".bias"] = trunk[src + name + ".bias"]
        for part, tensor in zip("qkv", trunk[src + "attn.qkv.weight"].chunk(3, dim=0)):
            out[dst + f"attention.{part}_proj.weight"] = tensor.clone()
        if config.qkv_bias:
            for part, tensor in zip("qkv", trunk[src + "attn.qkv.bias"].chunk(3, dim=0)):
                out[dst + f"attention.{part}_proj.bias"] = tensor.clone()
        out[dst + "attention.o_proj.weight"] = trunk[src + "attn.proj.weight"]
        out[dst + "attention.o_proj.bias"] = trunk[src + "attn.proj.bias"]
        for k in ("fc1", "fc2"):
            out[dst + f"mlp.{k}.weight"] = trunk[src + f"mlp.{k}.weight"]
            out[dst + f"mlp.{k}.bias"] = trunk[src + f"mlp.{k}.bias"]
        for n in (1, 2):
            gamma = trunk.get(src + f"ls{n}.gamma")
            out[dst + f"layer_scale{n}.lambda1"] = gamma if gamma is not None else torch.ones(hidden)
    return {"model.vision_tower." + k: v for k, v in out.items()}
