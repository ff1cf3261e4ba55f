# The dependency graph of the notebook collection. `make help` lists the targets.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DELETE_ON_ERROR:

VENV := .venv
PY := $(VENV)/bin/python
PAPERMILL := $(VENV)/bin/papermill --log-level WARNING
STAMP := $(VENV)/.installed
RAY_STAMP := $(VENV)/.ray-installed

# Nothing in the default run touches the network.
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
export MPLBACKEND := Agg
export PYTHONHASHSEED := 0

LIB := $(wildcard lib/*.py lib/*/*.py)
DEFAULT := outputs/default/build_report.json
LORA_PARAMS := $(wildcard params/lora/*.yaml)
ADAPTERS := $(LORA_PARAMS:params/lora/%.yaml=outputs/default/adapters/%/adapter_config.json)
PAIRS := $(patsubst params/%.yaml,%,$(wildcard params/*.yaml))
SUMMARIES := $(PAIRS:%=outputs/runs/%/summary.json)
ANALYSIS := outputs/analysis/correlation.json

.PHONY: help all env default adapters runs analysis test notebooks paper bench clean sweep

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

all: $(ANALYSIS) ## build the offline default if missing, evaluate every params/*.yaml pair, gather them

env: $(STAMP) ## create .venv from the pinned requirements

$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements.txt
	$(PY) -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $@

default: $(DEFAULT) ## synthetic datasets + trained default models (cached; rebuilt when inputs change)

$(DEFAULT): notebooks/build_default.ipynb $(LIB) | $(STAMP)
	mkdir -p outputs/default
	$(PAPERMILL) notebooks/build_default.ipynb outputs/default/build_default.ipynb

adapters: $(ADAPTERS) ## consistency LoRA adapters of the default models (params/lora/*.yaml)

outputs/default/adapters/%/adapter_config.json: params/lora/%.yaml notebooks/finetune_lora.ipynb $(DEFAULT) $(LIB)
	mkdir -p $(@D)
	$(PAPERMILL) notebooks/finetune_lora.ipynb $(@D)/finetune_lora.ipynb -f $< -p params_file $<

runs: $(SUMMARIES) ## evaluate.ipynb once per params/*.yaml

outputs/runs/%/summary.json: params/%.yaml notebooks/evaluate.ipynb $(DEFAULT) $(ADAPTERS) $(LIB)
	mkdir -p $(@D)
	$(PAPERMILL) notebooks/evaluate.ipynb $(@D)/evaluate.ipynb -f $< -p params_file $<

analysis: $(ANALYSIS) ## gather all runs: correlation, figures

$(ANALYSIS): notebooks/analysis.ipynb $(SUMMARIES) $(LIB)
	mkdir -p $(@D)
	$(PAPERMILL) notebooks/analysis.ipynb $(@D)/analysis.ipynb

test: ## run the test suite (unit, readers, notebooks via nbval, bad inputs, the default build's properties)
	@# Ray installs while the default family trains (pip barely competes with the training).
	$(MAKE) --no-print-directory -j2 $(RAY_STAMP) $(DEFAULT)
	$(PY) -m pytest -q -n auto --dist loadfile

bench: $(STAMP) $(RAY_STAMP) $(DEFAULT) ## time generate() vs one forward per prompt vs the engine -> outputs/bench/bench.json (GPU=1: 7B/4B shapes on CUDA)
	mkdir -p outputs/bench
	if [ "$(GPU)" = 1 ]; then OUT=outputs/bench $(PY) bench/gpu_bench.py; else $(PY) -m lib.bench.ways --out outputs/bench/bench.json; fi

# -- Ray (issue 6): an optional extra; `make all` never needs it, `make test` installs it. -----
$(RAY_STAMP): requirements-ray.txt | $(STAMP)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements-ray.txt
	touch $@

sweep: $(DEFAULT) $(ADAPTERS) | $(RAY_STAMP) ## every pair as a Ray task, then the analysis (RAY_ADDRESS=host:port joins a cluster)
	$(PY) -m lib.scale.ray_scorer sweep $(if $(RAY_ADDRESS),--address $(RAY_ADDRESS)) $(sort $(wildcard params/*.yaml))

# -- the study's ten pairs on real data and models (issue 3; docs/real_models.md) -------------
# Needs MIMIC_CXR_JPG, PADCHEST, LLAVA_RAD_HF and the hub models cached; the check below names
# whatever is missing before anything runs. PSF-Med questions: PSF_MED_MIMIC / PSF_MED_PADCHEST
# = per-image JSONL files written by lib.protocol.questions.import_psf_med. PAPER_OUT: where runs go.
PAPER_OUT ?= outputs/paper
PAPER_PAIRS := $(patsubst params/paper/%.yaml,%,$(wildcard params/paper/*.yaml))
PAPER_SUMMARIES := $(PAPER_PAIRS:%=$(PAPER_OUT)/runs/%/summary.json)
paper_questions = $(if $(findstring __mimic-cxr,$(1)),$(PSF_MED_MIMIC),$(PSF_MED_PADCHEST))

paper: $(PAPER_OUT)/analysis/correlation.json ## the ten paper pairs on MIMIC-CXR + PadChest, then the analysis (GPU; docs/real_models.md)

paper-check: | $(STAMP)
	@$(PY) -m lib.families.registry check params/paper
	@for q in $(PSF_MED_MIMIC) $(PSF_MED_PADCHEST); do test -f "$$q" || { echo "NOT READY: PSF-Med question file not found: $$q" >&2; exit 1; }; done

$(PAPER_OUT)/runs/%/summary.json: params/paper/%.yaml notebooks/evaluate.ipynb | paper-check
	mkdir -p $(@D)
	$(PAPERMILL) notebooks/evaluate.ipynb $(@D)/evaluate.ipynb -f $< -p params_file $< -p output_dir $(@D) $(if $(call paper_questions,$*),-p questions $(call paper_questions,$*))

$(PAPER_OUT)/analysis/correlation.json: notebooks/analysis.ipynb $(PAPER_SUMMARIES)
	mkdir -p $(@D)
	$(PAPERMILL) notebooks/analysis.ipynb $(@D)/analysis.ipynb -p runs_dir $(PAPER_OUT)/runs -p analysis_dir $(@D)

.PHONY: paper-check
# -- end paper ------------------------------------------------------------------------------

notebooks: $(STAMP) ## regenerate the source notebooks from tools/make_notebooks.py
	$(PY) tools/make_notebooks.py

clean: ## remove all outputs (keeps .venv)
	rm -rf outputs
