# The dependency graph of the notebook collection. `make help` lists the targets.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DELETE_ON_ERROR:

VENV := .venv
PY := $(VENV)/bin/python
PAPERMILL := $(VENV)/bin/papermill --log-level WARNING
# every executed notebook is also exported as HTML beside it, code cells hidden (read without Jupyter),
# each figure with its cell's alt text (the template in lib/front/templates, which
# lib.front.notebook_run.export_html uses too; not a dependency of the steps: a template change shows
# in a step's HTML the next time the step runs); the export is prefixed with - in the recipes: a
# failed export never undoes (deletes) the step.
NBCONVERT := $(VENV)/bin/jupyter nbconvert --log-level WARN --to html --no-input \
	--TemplateExporter.extra_template_basedirs=lib/front/templates --template lab_alt
JUPYTEXT := $(VENV)/bin/jupytext
STAMP := $(VENV)/.installed
RAY_STAMP := $(VENV)/.ray-installed

# Nothing in the default run touches the network.
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
export MPLBACKEND := Agg
export PYTHONHASHSEED := 0

# -- what each step runs: its notebook and the lib modules the notebook imports, followed through
# every import (those inside functions too); a package __init__.py that is only a docstring is left
# out. tests/test_notebook_pairs.py fails when a list is not exactly that (a module missing, or one
# no longer imported): after changing a notebook's imports, update the list it names.
NOTEBOOK_SETUP := lib/front/notebook.py
# params -> samples, labels, questions, prompts; loading a model (what fine-tuning uses)
PROTOCOL_LOAD := $(addprefix lib/protocol/,config.py params_yaml.py data.py reading.py policy.py images.py mimic.py padchest.py vindr.py boxes.py labels.py questions.py prompts.py models.py provenance.py vocabulary.py)
# ... -> the Engine -> records -> quadrants: one run
PROTOCOL_SCORING := $(PROTOCOL_LOAD) $(addprefix lib/protocol/,engine.py identity.py records.py samples.py image_questions.py references.py local_tests.py registration.py planning.py taxonomy.py measures.py screening.py ground_truth.py intervals.py summary.py run.py)
# the default family: tiny checkpoints of the real classes and their chat templates, trained here
# (stage 1 also sees synth.py's balanced pretraining images)
DEFAULT_FAMILY := $(addprefix lib/offline/,default_models.py training.py synth.py) $(addprefix lib/families/,tiny.py templates.py)
# build_default and evaluate also draw figures with lib/protocol/plots.py, but what make tracks
# (build_report.json, summary.json) never depends on them: a plots-only change reruns the analysis
# only, and the figures inside outputs/default/build_default.ipynb and outputs/runs/*/evaluate.ipynb
# are redrawn the next time those steps run (`touch params/*.yaml && make runs` redraws the runs'
# figures from their saved records, without scoring again).
DEFAULT_CODE := notebooks/build_default.ipynb $(NOTEBOOK_SETUP) $(addprefix lib/offline/,build.py world.py layouts.py vindr.py twins.py) $(DEFAULT_FAMILY) $(PROTOCOL_SCORING)
ADAPTER_CODE := notebooks/finetune_lora.ipynb $(NOTEBOOK_SETUP) lib/offline/finetune.py $(DEFAULT_FAMILY) $(PROTOCOL_LOAD)
# the evaluate notebook's session (strict params, preflight, the scorer: in-process or Ray)
RUN_CODE := notebooks/evaluate.ipynb $(NOTEBOOK_SETUP) lib/front/session.py lib/protocol/preflight.py lib/protocol/breakdown.py $(PROTOCOL_SCORING) lib/scale/ray_scorer.py
ANALYSIS_CODE := notebooks/analysis.ipynb $(NOTEBOOK_SETUP) lib/front/explorer.py $(addprefix lib/protocol/,stats.py plots.py taxonomy.py breakdown.py config.py params_yaml.py data.py reading.py policy.py images.py mimic.py padchest.py vindr.py boxes.py labels.py vocabulary.py measures.py intervals.py local_tests.py)

DEFAULT := outputs/default/build_report.json
LORA_PARAMS := $(wildcard params/lora/*.yaml)
ADAPTERS := $(LORA_PARAMS:params/lora/%.yaml=outputs/default/adapters/%/adapter_config.json)
PAIRS := $(patsubst params/%.yaml,%,$(wildcard params/*.yaml))
SUMMARIES := $(PAIRS:%=outputs/runs/%/summary.json)
ANALYSIS := outputs/analysis/correlation.json

.PHONY: help all env default adapters runs analysis test notebooks paper paper-check bench clean sweep seeds lab test-browser results compare-outputs

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

# Independent steps (the six adapters, the 20 pairs) run side by side, JOBS at a time (default:
# the machine's cores). Every adapter and pair runs torch on ONE thread whatever JOBS is, so the
# outputs of `make all JOBS=1` and `make all` are identical (the order of float sums changes with
# the thread count); the default build trains each family on one thread already.
JOBS ?= $(shell nproc 2>/dev/null || echo 1)
ONE_THREAD := OMP_NUM_THREADS=1 MKL_NUM_THREADS=1

all: ## build the offline default if missing, evaluate every params/*.yaml pair (JOBS at a time), gather them
	@$(MAKE) --no-print-directory -j$(JOBS) $(ANALYSIS)

env: $(STAMP) ## create .venv from the pinned requirements

$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements.txt
	$(PY) -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $@

# The venv's kernels (papermill's, nbval's, the lab's) log only what is critical: not ipykernel's
# warning that it runs "over TCP without encryption" in every step (papermill's kernels listen on
# localhost), nor the "KeyboardInterrupt caught in kernel" it logs at ERROR when jupyter_client
# interrupts it before shutdown (a failing cell still reaches make through papermill). cxr-screen
# passes the same level on the kernel's command line (lib.front.notebook_run.KERNEL_ARGUMENTS).
# IPython reads it from the venv's etc/ipython. An order-only prerequisite of every step that
# starts a kernel: it reruns nothing; rewritten when this Makefile changes.
KERNEL_CONFIG := $(VENV)/etc/ipython/ipython_kernel_config.json
$(KERNEL_CONFIG): Makefile | $(STAMP)
	mkdir -p $(@D)
	echo '{"IPKernelApp": {"log_level": "CRITICAL"}}' > $@

default: $(DEFAULT) ## synthetic datasets + trained default models (cached; rebuilt when inputs change)

$(DEFAULT): $(DEFAULT_CODE) | $(STAMP) $(KERNEL_CONFIG)
	mkdir -p outputs/default
	$(PAPERMILL) notebooks/build_default.ipynb outputs/default/build_default.ipynb
	-$(NBCONVERT) outputs/default/build_default.ipynb

adapters: $(ADAPTERS) ## consistency LoRA adapters of the default models (params/lora/*.yaml)

outputs/default/adapters/%/adapter_config.json: params/lora/%.yaml $(ADAPTER_CODE) $(DEFAULT) | $(KERNEL_CONFIG)
	mkdir -p $(@D)
	$(ONE_THREAD) $(PAPERMILL) notebooks/finetune_lora.ipynb $(@D)/finetune_lora.ipynb -p params_file $<
	-$(NBCONVERT) $(@D)/finetune_lora.ipynb

runs: $(SUMMARIES) ## evaluate.ipynb once per params/*.yaml

# A pair waits for (and reruns after) the one adapter its params name, if it is one of ours;
# a base-model pair does not depend on fine-tuning at all.
# Params files go to the notebooks as `-p params_file` only, never papermill's `-f`: the notebook
# reads them with the limits of lib.protocol.config.read_file (papermill's own YAML reader has
# none). The executed notebook is written beside the run's folder and moved in when complete:
# papermill writes nothing into the folder before the notebook's validation has claimed it
# (lib.protocol.records.claim_output_dir), and a failed run never replaces evaluate.ipynb.
adapter_of = $(filter $(ADAPTERS),$(addsuffix /adapter_config.json,$(shell sed -n 's/^adapter:[[:space:]]*//p' $(1) | sed 's/[[:space:]]*\#.*//' | tr -d "\"'")))
.SECONDEXPANSION:
outputs/runs/%/summary.json: params/%.yaml $(RUN_CODE) $(DEFAULT) $$(call adapter_of,params/$$*.yaml) | $(KERNEL_CONFIG)
	mkdir -p $(dir $(@D))
	$(ONE_THREAD) $(PAPERMILL) notebooks/evaluate.ipynb $(@D).partial.ipynb -p params_file $<
	mv -f $(@D).partial.ipynb $(@D)/evaluate.ipynb
	-$(NBCONVERT) $(@D)/evaluate.ipynb

analysis: $(ANALYSIS) ## gather all runs: correlation, figures

$(ANALYSIS): $(ANALYSIS_CODE) $(SUMMARIES) | $(KERNEL_CONFIG)
	mkdir -p $(@D)
	$(PAPERMILL) notebooks/analysis.ipynb $(@D)/analysis.ipynb
	-$(NBCONVERT) $(@D)/analysis.ipynb

test: ## run the test suite (unit, readers, notebooks via nbval, bad inputs, the default build's properties)
	@# Ray installs while the default family trains (pip barely competes with the training).
	$(MAKE) --no-print-directory -j2 $(RAY_STAMP) $(DEFAULT) $(KERNEL_CONFIG)
	$(PY) -m pytest -q -n auto --dist loadfile

bench: $(STAMP) $(RAY_STAMP) $(DEFAULT) ## time generate() vs one forward per prompt vs the engine -> outputs/bench/bench.json (GPU=1: 7B/4B shapes on CUDA -> outputs/bench/gpu_bench.json)
	mkdir -p outputs/bench
	if [ "$(GPU)" = 1 ]; then $(PY) -m lib.bench.gpu --out outputs/bench/gpu_bench.json; else $(PY) -m lib.bench.ways --out outputs/bench/bench.json; fi

# -- seeds (issue 13): the whole offline world for several seeds, then the spread of the headline
# numbers (r, Dangerous and image-blind fractions, ground-truth precision/recall) in outputs/seeds/.
# Each seed is a full `make all` (build, adapters, every pair, analysis) under outputs/seeds/<seed>/,
# redone whole when any code or params file a step of it runs is newer than its analysis (one seed
# never mixes two versions of the code). `make all` itself stays one seed.
SEEDS ?= 0 1 2
SEED_CODE := $(sort $(DEFAULT_CODE) $(ADAPTER_CODE) $(RUN_CODE) $(ANALYSIS_CODE) lib/offline/seeds.py $(LORA_PARAMS) $(wildcard params/*.yaml))
SEED_WORLDS := $(foreach s,$(filter-out 0,$(SEEDS)),outputs/seeds/$(s)/analysis/correlation.json)
# Seed 0 is `make all`'s own world (linked, not rebuilt); the other seeds' steps run JOBS at a time.
seeds: all $(SEED_WORLDS) ## the whole offline world for each of SEEDS (default 0 1 2) -> outputs/seeds/<seed>/, spread -> outputs/seeds/
	mkdir -p outputs/seeds/0
	for d in default runs analysis; do ln -sfn ../../$$d outputs/seeds/0/$$d; done
	$(PY) -m lib.offline.seeds --seeds $(SEEDS) --out outputs/seeds --jobs $(JOBS)

outputs/seeds/%/analysis/correlation.json: $(SEED_CODE) | $(STAMP) $(KERNEL_CONFIG)
	rm -rf outputs/seeds/$*
	$(PY) -m lib.offline.seeds --seeds $* --out outputs/seeds --jobs $(JOBS)

# -- Ray (issue 6): an optional extra; `make all` never needs it, `make test` installs it. -----
$(RAY_STAMP): requirements-ray.txt | $(STAMP)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements-ray.txt
	touch $@

sweep: $(DEFAULT) $(ADAPTERS) | $(RAY_STAMP) ## every pair as a Ray task, then the analysis (RAY_ADDRESS=host:port joins a cluster)
	$(PY) -m lib.scale.ray_scorer sweep $(if $(RAY_ADDRESS),--address $(RAY_ADDRESS)) $(sort $(wildcard params/*.yaml))

# -- the study's ten pairs on real data and models (issue 3; docs/real_models.md) -------------
# Needs MIMIC_CXR_JPG, PADCHEST, LLAVA_RAD_HF and the hub models cached; the check below names
# whatever is missing before anything runs. PSF-Med questions: PSF_MED_MIMIC / PSF_MED_PADCHEST
# = per-image JSONL files written by lib.protocol.psf_med.import_psf_med. PAPER_OUT: where runs go.
PAPER_OUT ?= outputs/paper
PAPER_PAIRS := $(patsubst params/paper/%.yaml,%,$(wildcard params/paper/*.yaml))
PAPER_SUMMARIES := $(PAPER_PAIRS:%=$(PAPER_OUT)/runs/%/summary.json)
paper_questions = $(if $(findstring __mimic-cxr,$(1)),$(PSF_MED_MIMIC),$(PSF_MED_PADCHEST))

paper: $(PAPER_OUT)/analysis/correlation.json ## the ten paper pairs on MIMIC-CXR + PadChest, then the analysis (GPU; docs/real_models.md)

paper-check: | $(STAMP) ## name whatever the paper runs lack (data, models, PSF-Med question files)
	@$(PY) -m lib.families.registry check params/paper
	@for q in $(PSF_MED_MIMIC) $(PSF_MED_PADCHEST); do test -f "$$q" || { echo "NOT READY: PSF-Med question file not found: $$q" >&2; exit 1; }; done

$(PAPER_OUT)/runs/%/summary.json: params/paper/%.yaml notebooks/evaluate.ipynb | paper-check $(KERNEL_CONFIG)
	mkdir -p $(dir $(@D))
	$(PAPERMILL) notebooks/evaluate.ipynb $(@D).partial.ipynb -p params_file $< -p output_dir $(@D) $(if $(call paper_questions,$*),-p questions $(call paper_questions,$*))
	mv -f $(@D).partial.ipynb $(@D)/evaluate.ipynb
	-$(NBCONVERT) $(@D)/evaluate.ipynb

$(PAPER_OUT)/analysis/correlation.json: $(ANALYSIS_CODE) $(PAPER_SUMMARIES) | $(KERNEL_CONFIG)
	mkdir -p $(@D)
	$(PAPERMILL) notebooks/analysis.ipynb $(@D)/analysis.ipynb -p runs_dir $(PAPER_OUT)/runs -p analysis_dir $(@D)
	-$(NBCONVERT) $(@D)/analysis.ipynb

# -- end paper ------------------------------------------------------------------------------

# -- notebooks: each is a jupytext pair (jupytext.toml). notebooks/<name>.py is the source people
# edit and review; notebooks/<name>.ipynb is what papermill runs, committed too. ------------------
NOTEBOOK_STEMS := $(sort $(basename $(wildcard notebooks/*.py notebooks/*.ipynb)))

notebooks: | $(STAMP) ## sync every notebooks/*.py with its .ipynb (jupytext --sync: the newer side wins)
	@for nb in $(NOTEBOOK_STEMS); do \
	  $(JUPYTEXT) --sync $$(test -f $$nb.py && echo $$nb.py || echo $$nb.ipynb); \
	  touch -r $$nb.ipynb $$nb.py; \
	done

# A step runs the .ipynb, so an edited .py is synced first. jupytext writes the .ipynb only when its
# cells changed, and the pair then takes the .ipynb's time: a sync that changed nothing (or
# `make notebooks`) reruns nothing. Precious: a failed sync never deletes a committed notebook.
notebooks/%.ipynb: notebooks/%.py | $(STAMP)
	$(JUPYTEXT) --sync $<
	touch -r $@ $<
.PRECIOUS: notebooks/%.ipynb

# -- the front door (issue 14): JupyterLab, and the suite's real-browser test -------------------
LAB_IP ?= 127.0.0.1
LAB_PORT ?= 8888
BROWSER_STAMP := $(VENV)/.browser-installed
CHROMIUM ?= /usr/bin/chromium

lab: $(STAMP) $(KERNEL_CONFIG) ## JupyterLab on this repository, offline, no browser opened: open the URL it prints (with its token)
	@echo "JupyterLab: open the http://$(LAB_IP):$(LAB_PORT)/lab?token=... URL printed below; Ctrl-C stops it"
	$(VENV)/bin/jupyter lab --no-browser --ServerApp.ip=$(LAB_IP) --ServerApp.port=$(LAB_PORT) \
	  --ServerApp.root_dir=$(CURDIR) $(if $(filter 0,$(shell id -u)),--allow-root) \
	  --LabApp.extension_manager=readonly --LabApp.news_url=None \
	  --LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate

$(BROWSER_STAMP): requirements-browser.txt | $(STAMP)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements-browser.txt
	touch $@

test-browser: $(STAMP) $(BROWSER_STAMP) ## JupyterLab in a real headless Chromium: run the analysis notebook, use its explorer (screenshots in outputs/browser/)
	@if ! test -x "$(CHROMIUM)"; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "make test-browser: installing Debian's chromium (apt-get install -y chromium)"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; \
	  else \
	    echo "make test-browser needs Debian's chromium at $(CHROMIUM): run 'sudo apt-get install -y chromium' (or set CHROMIUM=/path/to/chromium), then make test-browser again" >&2; \
	    exit 1; \
	  fi; \
	fi
	CHROMIUM=$(CHROMIUM) CXR_BROWSER_TEST=1 $(PY) -m pytest -q -p no:xdist -m browser tests/test_browser.py

clean: ## remove all outputs (keeps .venv)
	rm -rf outputs

TOL ?= 0
compare-outputs: | $(STAMP) ## A=DIR B=DIR [TOL=x]: every run's predictions, samples and summary numbers the same? (exit 1 naming what differs)
	@test -n "$(A)" -a -n "$(B)" || { echo "usage: make compare-outputs A=DIR B=DIR [TOL=0]" >&2; exit 2; }
	$(PY) -m lib.front.compare_trees "$(A)" "$(B)" --tol $(TOL)

results: $(ANALYSIS) | $(STAMP) ## docs/results.md from what make all (and make bench, make seeds) left in outputs/
	$(PY) -m lib.front.results --outputs outputs --out docs/results.md
