"""The offline world: what `make all` evaluates with no GPU, no download and no credentialed data.

Owns `synth` (the phantom: synthetic radiographs, patients and studies, each finding's region and
boxes), `layouts` and `vindr` (the phantom's images in the exact on-disk layouts of MIMIC-CXR-JPG with
MS-CXR's box file, PadChest and VinDr-CXR), `twins` (a counterfactual twin of every test image),
`world` (which datasets the offline default holds, with which label priors),
`default_models` (the default LLaVA and Gemma 3 families, built with lib.families.tiny and
trained here on CPU), `training` (the training steps and augmentation), `finetune` (the
paper's consistency LoRA recipe, also usable on real models), `build` (what the default build
checks and records in build_report.json) and `seeds` (`make seeds`: the whole world for several
seeds and the spread of its headline numbers). The world has the real
datasets' label priors, a learned text-only prior, held-out paraphrases, a reliance dial (shortcut
adapters) and a counterfactual twin of every test image (the per-sample ground truth).

May import lib.protocol (to read its own datasets and load its models the way runs do) and
lib.families (the tiny-checkpoint factory); it only produces inputs for the evaluation path
and must not reach into its internals beyond those public functions. Nothing in lib.protocol
or lib.families imports it.
"""
