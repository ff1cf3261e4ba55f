"""Real model families: what the project knows about the real checkpoints it evaluates.

Owns:
* `templates` - every chat template of the project, each defined once (the real families' hub
  texts and the offline default family's compact ones);
* `tiny` - the one factory for tiny randomly initialised checkpoints of the real classes
  (tokenizer training, config sizes, LLaVA and Gemma 3 builders, saving), used by the offline
  default family, the registry and the tests;
* `registry` - the supported families (hub checkpoints, chat template, vocabulary), their tiny
  checkpoints, and the params check run before `make paper`;
* `llava_rad` - the LLaVA-Rad converter (original checkpoint -> transformers LLaVA) and its
  LoRA adapter remapping; `vit_dinov2` - its vision trunk (timm ViT -> transformers Dinov2Model).

May import `lib.protocol`. Must NOT import `lib.offline` (the offline world builds on this
subpackage, not the other way round), `lib.scale` or `lib.bench`. Inside the subpackage the
imports go one way: templates <- tiny <- registry, templates and vit_dinov2 <- llava_rad <- registry.
"""
