"""Convert an original-format LLaVA-Rad checkpoint into a transformers LLaVA checkpoint.

LLaVA-Rad (microsoft/llava-rad) is written for the original LLaVA code, not for transformers:
a Vicuna-7B `LlamaForCausalLM` (`model.embed_tokens`, `model.layers.*`, `model.norm`, `lm_head`),
a 2-layer GELU projector (`model.mm_projector.{0,2}`, mm_projector_type "mlp2x_gelu") and the
BiomedCLIP-CXR vision tower, an open_clip model whose image trunk is a timm ViT
(`vit_base_patch14_dinov2` at 518 px: patch 14, class token, LayerScale, no pre-norm). This
module writes the same network as `LlavaForConditionalGeneration` + `LlavaProcessor`, so that the
project's loader, engine, adapters and 4-bit path apply unchanged:

* Llama weights -> `model.language_model.*` / `lm_head` (one row is appended to the embedding
  and the head for the `<image>` placeholder token: a zero head row, so that token's logit is 0);
* projector -> `model.multi_modal_projector.linear_{1,2}` (`projector_hidden_act` "gelu");
* timm ViT trunk -> transformers `Dinov2Model` (`model.vision_tower.*`): the same architecture
  (class token + learned positions, pre-LN blocks with LayerScale, exact GELU MLP, no
  pre-layernorm); the fused `qkv` is split into q/k/v. `CLIPVisionModel` is NOT used: its
  `pre_layrnorm` is a LayerNorm, which normalises even with weight 1 and bias 0 (it is not the
  identity), and it has no LayerScale. A plain timm ViT without LayerScale (BiomedCLIP's
  `vit_base_patch16_224`) maps with LayerScale 1;
* `mm_vision_select_layer` -> `vision_feature_layer` (hidden state index: embeddings first, as in
  LLaVA's `hidden_states[select_layer]`), `mm_vision_select_feature` "patch" -> strategy
  "default" (class token dropped);
* image preprocessing -> `LlavaImageProcessorPil`: open_clip's evaluation transform (shortest
  edge to the tower's size, bicubic, centre crop, OpenAI CLIP mean/std; `image_aspect_ratio`
  "pad" pads to a square with the mean colour first, as LLaVA's expand2square). One known
  difference: for an odd crop margin transformers' centre crop rounds the offset down while
  torchvision rounds half to even, so when (resized long side - size) % 4 == 3 the crop window
  is one pixel earlier along the long side;
* prompt -> the llava-1.5 chat template `USER: <image>\\n<question> ASSISTANT:` (`--system`
  prepends LLaVA's conv "v1" system sentence, as LLaVA-Rad's own scripts do).

Sources (SRC is a directory):
  A. a full original-format checkpoint: config.json with the mm_* keys and weight shards
     (*.safetensors; *.bin only with --allow-pickle) holding the Llama and projector weights and,
     optionally, the tower under a `...vision_tower.` prefix;
  B. the microsoft/llava-rad release: config.json, adapter_config.json + adapter_model.* (a LoRA
     over the base LM given by --base, e.g. a local lmsys/vicuna-7b-v1.5), non_lora_trainables.bin
     (the projector) and the open_clip checkpoint. The LoRA is merged in float32.
  The tower comes from the shards or from --vision-checkpoint (an open_clip checkpoint, keys
  `[module.]visual.trunk.*` under "state_dict"; default: the file that config.json's
  mm_vision_tower_checkpoint names in SRC).
Pickle files (.bin/.pt) are read only with --allow-pickle, and then with
`torch.load(weights_only=True)` (tensors and plain containers only, no code); a checkpoint that
needs full unpickling is refused unless --trust-pickle.

    python -m lib.families.llava_rad SRC OUT [--base DIR] [--vision-checkpoint FILE] [--allow-pickle]
    python -m lib.families.llava_rad adapter ADAPTER_SRC ADAPTER_OUT   # remap a LoRA adapter

The second form rewrites a peft LoRA adapter trained on the ORIGINAL LLaVA layout
(`base_model.model.model.layers.N...`) to this layout (`...model.language_model.layers.N...`);
without it peft would create the LoRA modules but load none of their weights (a silent no-op).
Verified by tests/test_llava_rad.py: logits of a converted small checkpoint equal a plain-torch
reference forward of the original architecture (see docs/real_models.md).

Imports only `lib.families.templates` (the llava-hf chat template) and `vit_dinov2` (the tower's
mapping). One concept, converting the checkpoint (and an adapter on its layout); long because each
part (language model, projector, tower, tokenizer, processor, config) has its own exact mapping.
"""
from __future__ import annotations

import argparse
import json
import math
import re
import sys
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from transformers import (AutoTokenizer, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration,
                          LlavaImageProcessorPil, LlavaProcessor)

from .templates import LLAVA_HF
from .vit_dinov2 import TRUNK_MARKER, ConversionError, dinov2_config_from_trunk, dinov2_weights, find_trunk

IMAGE_TOKEN = "<image>"
OPENAI_CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
OPENAI_CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
V1_SYSTEM = ("A chat between a curious human and an artificial intelligence assistant. "
             "The assistant gives helpful, detailed, and polite answers to the human's questions.")
LLAMA_KEYS = re.compile(r"^(model\.(embed_tokens|layers\.\d+|norm)\.|lm_head\.)")


# -- reading weights ----------------------------------------------------------------------------

def read_weights(path: Path, allow_pickle: bool, trust_pickle: bool = False) -> dict:
    """Tensors of one .safetensors or (with allow_pickle) .bin/.pt file."""
    if path.suffix == ".safetensors":
        return load_file(str(path))
    if not allow_pickle:
        raise ConversionError(f"{path} is a pickle file; rerun with --allow-pickle to read it "
                              "(loaded with torch.load(weights_only=True): tensors only)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch raises several types here
        if not trust_pickle:
            raise ConversionError(f"{path} cannot be read with weights_only=True ({err}); only if you "
                                  "trust the file, rerun with --trust-pickle") from None
        state = torch.load(path, map_location="cpu", weights_only=False)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    return {k: v for k, v in state.items() if torch.is_tensor(v)}


def shard_files(directory: Path, allow_pickle: bool) -> list[Path]:
    """Weight shards of a checkpoint directory (safetensors preferred), index files honoured."""
    for index_name, suffix in (("model.safetensors.index.json", ".safetensors"),
                               ("pytorch_model.bin.index.json", ".bin")):
        index = directory / index_name
        if index.is_file():
            names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            return [directory / n for n in names]
    files = sorted(directory.glob("model*.safetensors"))
    if not files:
        files = sorted(p for p in directory.glob("pytorch_model*.bin"))
    if files and files[0].suffix == ".bin" and not allow_pickle:
        raise ConversionError(f"{directory} has only pickle (.bin) weights; rerun with --allow-pickle")
    return files


def read_checkpoint(directory: Path, allow_pickle: bool, trust_pickle: bool = False) -> dict:
    state = {}
    for path in shard_files(directory, allow_pickle):
        state.update(read_weights(path, allow_pickle, trust_pickle))
    return state


# -- the pieces ---------------------------------------------------------------------------------

def llama_weights(src: Path, base: Path | None, allow_pickle: bool, trust_pickle: bool) -> tuple[dict, dict]:
    """(Llama weights in original names, what was done) from SRC shards or base + merged LoRA."""
    state = read_checkpoint(src, allow_pickle, trust_pickle)
    llama = {k: v for k, v in state.items() if LLAMA_KEYS.match(k)}
    if llama:
        return llama, {"language_model": f"{src} shards"}
    adapter_config = src / "adapter_config.json"
    if not adapter_config.is_file():
        raise ConversionError(f"{src}: no Llama weights (model.layers.*) in its shards and no LoRA "
                              "adapter (adapter_config.json)")
    if base is None:
        raise ConversionError(f"{src} holds a LoRA adapter over a base language model "
                              "(adapter_config.json: base_model_name_or_path); pass --base DIR")
    llama = {k: v for k, v in read_checkpoint(base, allow_pickle, trust_pickle).items()
             if LLAMA_KEYS.match(k)}
    if not llama:
        raise ConversionError(f"--base {base}: no Llama weights (model.layers.*) found")
    merged = merge_lora(llama, src, allow_pickle, trust_pickle)
    return llama, {"language_model": f"{base} + LoRA {src} merged ({merged} matrices, float32)"}


def merge_lora(llama: dict, adapter_dir: Path, allow_pickle: bool, trust_pickle: bool) -> int:
    """W += scale * B @ A for every LoRA pair, in float32, stored in W's dtype."""
    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    r, alpha = config["r"], config["lora_alpha"]
    scale = alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r
    path = next((p for p in (adapter_dir / "adapter_model.safetensors", adapter_dir / "adapter_model.bin")
                 if p.is_file()), None)
    if path is None:
        raise ConversionError(f"{adapter_dir}: adapter_config.json but no adapter_model.safetensors/.bin")
    lora = read_weights(path, allow_pickle, trust_pickle)
    merged = 0
    for key, a in lora.items():
        if ".lora_A." not in key:
            continue
        b = lora[key.replace(".lora_A.", ".lora_B.")]
        target = re.sub(r"^base_model\.model\.", "", key).replace(".lora_A.weight", ".weight")
        target = target.replace(".lora_A.default.weight", ".weight")
        if target not in llama:
            raise ConversionError(f"LoRA {key}: its target {target} is not a base weight")
        weight = llama[target]
        llama[target] = (weight.float() + scale * (b.float() @ a.float())).to(weight.dtype)
        merged += 1
    if not merged:
        raise ConversionError(f"{path}: no lora_A/lora_B pairs found")
    return merged


def projector_weights(src: Path, state_sources: list[dict]) -> dict:
    """linear_1/linear_2 of the mlp2x_gelu projector from the shards or non_lora_trainables."""
    for state in state_sources:
        found = {}
        for key, value in state.items():
            match = re.search(r"mm_projector\.(\d+)\.(weight|bias)$", key)
            if match:
                found[(int(match.group(1)), match.group(2))] = value
        if found:
            if sorted({i for i, _ in found}) != [0, 2]:
                raise ConversionError(f"{src}: projector layers {sorted({i for i, _ in found})} are "
                                      "not mlp2x_gelu's [0, 2]")
            return {f"model.multi_modal_projector.linear_{1 if i == 0 else 2}.{kind}": v
                    for (i, kind), v in found.items()}
    raise ConversionError(f"{src}: no mm_projector weights (in the shards or non_lora_trainables.bin)")


def vision_trunk(src: Path, shards: dict, cfg: dict, vision_checkpoint: Path | None,
                 allow_pickle: bool, trust_pickle: bool) -> tuple[dict, str]:
    trunk = find_trunk(shards)
    if trunk is not None:
        return trunk, f"{src} shards"
    path = vision_checkpoint
    if path is None and cfg.get("mm_vision_tower_checkpoint"):
        candidate = src / Path(cfg["mm_vision_tower_checkpoint"]).name
        path = candidate if candidate.is_file() else None
    if path is None:
        raise ConversionError(f"{src}: the vision tower is not in the shards; pass --vision-checkpoint "
                              "(the open_clip checkpoint, e.g. biomedclipcxr_518_checkpoint.pt)")
    state = read_weights(Path(path), allow_pickle, trust_pickle)
    visual = {k: v for k, v in state.items() if re.match(r"^(module\.)?visual\.trunk\.", k)}
    trunk = find_trunk(visual or state)
    if trunk is None:
        raise ConversionError(f"{path}: no timm ViT trunk (…{TRUNK_MARKER}) found")
    return trunk, str(path)


# -- tokenizer, processor, config ------------------------------------------------------------------

def chat_template(system: bool) -> str:
    if not system:
        return LLAVA_HF
    return "{{ '" + V1_SYSTEM.replace("'", "\\'") + " ' }}" + LLAVA_HF


def load_tokenizer(src: Path, base: Path | None):
    for where in (src, base):
        if where is not None and any((where / n).is_file() for n in
                                     ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")):
            tokenizer = AutoTokenizer.from_pretrained(str(where))
            break
    else:
        raise ConversionError(f"no tokenizer files in {src}" + (f" or {base}" if base else ""))
    vocab = len(tokenizer)
    if IMAGE_TOKEN not in tokenizer.get_vocab():
        tokenizer.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]})
    if tokenizer.pad_token is None:  # LLaVA v1 pads with unk
        tokenizer.pad_token = tokenizer.unk_token
    return tokenizer, vocab


def build_processor(tokenizer, vision_config, cfg: dict, system: bool):
    size = vision_config.image_size
    image_processor = LlavaImageProcessorPil(
        do_resize=True, size={"shortest_edge": size}, resample=3,  # PIL bicubic
        do_center_crop=True, crop_size={"height": size, "width": size},
        do_rescale=True, rescale_factor=1 / 255, do_normalize=True,
        image_mean=OPENAI_CLIP_MEAN, image_std=OPENAI_CLIP_STD, do_convert_rgb=True,
        do_pad=cfg.get("image_aspect_ratio") == "pad",
    )
    strategy = select_strategy(cfg)
    return LlavaProcessor(
        image_processor=image_processor, tokenizer=tokenizer, patch_size=vision_config.patch_size,
        vision_feature_select_strategy=strategy, chat_template=chat_template(system),
        num_additional_image_tokens=1, image_token=IMAGE_TOKEN,
    )


def select_strategy(cfg: dict) -> str:
    feature = cfg.get("mm_vision_select_feature", "patch")
    if feature not in ("patch", "cls_patch"):
        raise ConversionError(f"mm_vision_select_feature {feature!r} is not supported")
    return "default" if feature == "patch" else "full"


def check_original_config(cfg: dict, src: Path) -> None:
    if cfg.get("mm_projector_type", "linear") != "mlp2x_gelu":
        raise ConversionError(f"{src}/config.json: mm_projector_type {cfg.get('mm_projector_type')!r}; "
                              "only mlp2x_gelu maps onto LlavaMultiModalProjector")
    if cfg.get("mm_use_im_start_end") or cfg.get("mm_use_im_patch_token"):
        raise ConversionError(f"{src}/config.json: mm_use_im_start_end / mm_use_im_patch_token are not "
                              "supported (extra image marker tokens)")
    if cfg.get("image_aspect_ratio", "square") not in ("square", "pad", None):
        raise ConversionError(f"{src}/config.json: image_aspect_ratio {cfg['image_aspect_ratio']!r} "
                              "(anyres) is not supported")


def llava_config(cfg: dict, vision_config, vocab_size: int, image_token_id: int, pad_token_id):
    text = LlamaConfig(
        vocab_size=vocab_size, hidden_size=cfg["hidden_size"],
        intermediate_size=cfg["intermediate_size"], num_hidden_layers=cfg["num_hidden_layers"],
        num_attention_heads=cfg["num_attention_heads"],
        num_key_value_heads=cfg.get("num_key_value_heads", cfg["num_attention_heads"]),
        max_position_embeddings=cfg.get("max_position_embeddings", 4096),
        rms_norm_eps=cfg.get("rms_norm_eps", 1e-6), hidden_act=cfg.get("hidden_act", "silu"),
        rope_parameters={"rope_type": "default", "rope_theta": float(cfg.get("rope_theta", 10000.0))},
        attention_bias=cfg.get("attention_bias", False), mlp_bias=cfg.get("mlp_bias", False),
        bos_token_id=cfg.get("bos_token_id", 1), eos_token_id=cfg.get("eos_token_id", 2),
        pad_token_id=pad_token_id, tie_word_embeddings=False,
    )
    if cfg.get("rope_scaling"):
        raise ConversionError(f"rope_scaling {cfg['rope_scaling']} is not supported by this converter")
    return LlavaConfig(
        vision_config=vision_config, text_config=text, image_token_index=image_token_id,
        projector_hidden_act="gelu", vision_feature_layer=cfg.get("mm_vision_select_layer", -2),
        vision_feature_select_strategy=select_strategy(cfg), pad_token_id=pad_token_id,
        tie_word_embeddings=False, multimodal_projector_bias=True,
    )


# -- the conversion -------------------------------------------------------------------------------

def convert(src, out, base=None, vision_checkpoint=None, allow_pickle: bool = False,
            trust_pickle: bool = False, system: bool = False, dtype: str | None = None,
            num_heads: int | None = None) -> Path:
    """Write a LlavaForConditionalGeneration checkpoint + LlavaProcessor converted from SRC."""
    src, out = Path(src), Path(out)
    base = Path(base) if base else None
    config_path = src / "config.json"
    if not config_path.is_file():
        raise ConversionError(f"{src}: no config.json")
    cfg = json.loads(config_path.read_text())
    if "mm_vision_tower" not in cfg and "mm_projector_type" not in cfg:
        raise ConversionError(f"{config_path}: no mm_* keys; not an original-format LLaVA checkpoint")
    if base is not None and "hidden_size" not in cfg:
        cfg = {**json.loads((base / "config.json").read_text()), **cfg}
    check_original_config(cfg, src)

    shards = read_checkpoint(src, allow_pickle, trust_pickle)
    llama, done = llama_weights(src, base, allow_pickle, trust_pickle)
    extra = [read_weights(p, allow_pickle, trust_pickle) for p in
             (src / "non_lora_trainables.bin", src / "non_lora_trainables.safetensors") if p.is_file()]
    projector = projector_weights(src, [shards, *extra])
    trunk, tower_source = vision_trunk(src, {**shards, **{k: v for e in extra for k, v in e.items()}},
                                       cfg, Path(vision_checkpoint) if vision_checkpoint else None,
                                       allow_pickle, trust_pickle)
    vision_config = dinov2_config_from_trunk(trunk, num_heads)
    tokenizer, original_vocab = load_tokenizer(src, base)
    image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)

    embed, head = llama["model.embed_tokens.weight"], llama["lm_head.weight"]
    if embed.shape[0] != original_vocab and embed.shape[0] <= image_token_id:
        raise ConversionError(f"embedding rows {embed.shape[0]} != tokenizer size {original_vocab}")
    vocab = max(embed.shape[0], image_token_id + 1)
    grow = vocab - embed.shape[0]
    state = {}
    for key, value in llama.items():
        if key in ("model.embed_tokens.weight", "lm_head.weight"):
            value = torch.cat([value, torch.zeros(grow, value.shape[1], dtype=value.dtype)]) if grow else value
        state[key if key.startswith("lm_head.") else "model.language_model." + key[len("model."):]] = value
    state.update(projector)
    state.update(dinov2_weights(trunk, vision_config))
    if dtype:
        state = {k: v.to(getattr(torch, dtype)) for k, v in state.items()}

    config = llava_config(cfg, vision_config, vocab, image_token_id, tokenizer.pad_token_id)
    with torch.device("meta"):
        model = LlavaForConditionalGeneration(config)
    result = model.load_state_dict(state, strict=False, assign=True)
    if result.missing_keys or result.unexpected_keys:
        raise ConversionError(f"weights do not fit LlavaForConditionalGeneration: missing "
                              f"{result.missing_keys[:5]}, unexpected {result.unexpected_keys[:5]}")
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    processor = build_processor(tokenizer, vision_config, cfg, system)
    processor.save_pretrained(out)
    receipt = {
        "source": str(src), "language_model": done["language_model"], "vision_tower": tower_source,
        "vision_tower_class": "Dinov2Model (timm ViT trunk mapped 1:1; qkv split)",
        "vision_feature_layer": config.vision_feature_layer,
        "vision_feature_select_strategy": config.vision_feature_select_strategy,
        "image_size": vision_config.image_size, "patch_size": vision_config.patch_size,
        "image_tokens": (vision_config.image_size // vision_config.patch_size) ** 2,
        "image_token": IMAGE_TOKEN, "image_token_id": image_token_id,
        "rows_added_to_embedding_and_head": grow,
        "image_aspect_ratio": cfg.get("image_aspect_ratio", "square"),
        "chat_template": "llava-1.5" + (" with the v1 system sentence" if system else ""),
        "dtype": str(next(iter(state.values())).dtype),
    }
    (out / "conversion.json").write_text(json.dumps(receipt, indent=2))
    return out


# -- adapters trained on the original layout --------------------------------------------------------

def adapter_layout(adapter_dir) -> str:
    """'original' (model.layers.N), 'llava-hf' (model.language_model.layers.N) or 'other'."""
    names = adapter_tensor_names(Path(adapter_dir))
    if any(".model.language_model.layers." in n for n in names):
        return "llava-hf"
    if any(re.search(r"base_model\.model\.model\.layers\.\d+\.", n) for n in names):
        return "original"
    return "other"


def adapter_tensor_names(adapter_dir: Path) -> list[str]:
    path = adapter_dir / "adapter_model.safetensors"
    if path.is_file():
        with safe_open(str(path), "pt") as handle:
            return list(handle.keys())
    return []


def remap_adapter(src, out, allow_pickle: bool = False) -> Path:
    """Rewrite an original-layout LLaVA LoRA adapter for the converted (llava-hf) layout."""
    src, out = Path(src), Path(out)
    path = next((p for p in (src / "adapter_model.safetensors", src / "adapter_model.bin") if p.is_file()), None)
    if path is None:
        raise ConversionError(f"{src}: no adapter_model.safetensors/.bin")
    state = read_weights(path, allow_pickle)
    renamed = {re.sub(r"^base_model\.model\.model\.(layers|embed_tokens|norm)",
                      r"base_model.model.model.language_model.\1", k): v.contiguous()
               for k, v in state.items()}
    if renamed.keys() == state.keys():
        raise ConversionError(f"{path}: no original-layout keys (base_model.model.model.layers.*)")
    config = json.loads((src / "adapter_config.json").read_text())
    targets = config.get("target_modules")
    if isinstance(targets, str):
        config["target_modules"] = targets.replace(r"model\.layers", r"model\.language_model\.layers")
    out.mkdir(parents=True, exist_ok=True)
    save_file(renamed, str(out / "adapter_model.safetensors"), metadata={"format": "pt"})
    (out / "adapter_config.json").write_text(json.dumps(config, indent=2))
    return out


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["adapter"]:
        parser = argparse.ArgumentParser(prog="python -m lib.families.llava_rad adapter")
        parser.add_argument("src")
        parser.add_argument("out")
        parser.add_argument("--allow-pickle", action="store_true")
        args = parser.parse_args(argv[1:])
        print(remap_adapter(args.src, args.out, args.allow_pickle))
        return 0
    parser = argparse.ArgumentParser(prog="python -m lib.families.llava_rad",
                                     description="original LLaVA / LLaVA-Rad -> transformers LLaVA")
    parser.add_argument("src", help="original-format checkpoint directory (config.json with mm_* keys)")
    parser.add_argument("out", help="output directory (LlavaForConditionalGeneration + LlavaProcessor)")
    parser.add_argument("--base", help="base language model directory, when SRC holds a LoRA adapter")
    parser.add_argument("--vision-checkpoint", help="open_clip checkpoint holding visual.trunk.*")
    parser.add_argument("--allow-pickle", action="store_true", help="read .bin/.pt (weights_only=True)")
    parser.add_argument("--trust-pickle", action="store_true",
                        help="allow full unpickling when weights_only fails (only for trusted files)")
    parser.add_argument("--system", action="store_true", help="prepend LLaVA's v1 system sentence")
    parser.add_argument("--dtype", choices=("float32", "bfloat16", "float16"),
                        help="store weights in this dtype (default: as in the source)")
    parser.add_argument("--vision-heads", type=int, help="attention heads of the tower (default dim/64)")
    args = parser.parse_args(argv)
    try:
        out = convert(args.src, args.out, base=args.base, vision_checkpoint=args.vision_checkpoint,
                      allow_pickle=args.allow_pickle, trust_pickle=args.trust_pickle,
                      system=args.system, dtype=args.dtype, num_heads=args.vision_heads)
    except ConversionError as err:
        print(f"conversion failed: {err}", file=sys.stderr)
        return 1
    print(f"wrote {out} ({json.loads((out / 'conversion.json').read_text())})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
