# make demo: set up .venv (if needed), run the embedded demo through Snakemake, print its results.
# make test: set up .venv (if needed) and run the whole test suite (what CI runs).
# make run T="<targets>" [CORES=2]: build any targets with the project's Snakemake (no venv to activate).
VENV ?= .venv
PYTHON ?= python3
BIN := $(abspath $(VENV))/bin
export PATH := $(BIN):$(PATH)

CORES ?= 2

.PHONY: setup gptq demo test run lint dry-run clean

# torch is installed first and pinned, so that no dependency pulls another torch (README, Notes).
$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

setup: $(VENV)/.installed

# GPTQ checkpoints (the paper's Llama-3-70B): gptqmodel 7.6.0 pins numpy 2.2.6, which cannot
# resolve beside this project's numpy pin, so it is installed without its dependencies and
# then given the ones it imports, with the project's torch, numpy and transformers held.
# Checked on the CPU: tests/test_llm_encoders.py::test_gptq_loading then runs and passes.
gptq: $(VENV)/.gptq

$(VENV)/.gptq: $(VENV)/.installed
	$(BIN)/python -m pip install --quiet --no-deps gptqmodel==7.6.0 optimum==2.3.0
	$(BIN)/python -m pip install --quiet torch==2.13.0 numpy==2.4.6 transformers==5.24.0 \
		datasets==5.2.0 defuser==0.0.28 device-smi==0.5.7 logbar==0.4.15 protobuf==7.36.2 \
		pypcre==0.6.4 tokenicer==0.0.14 torchao==0.18.0
	touch $@

demo: setup
	snakemake --cores 1 --workflow-profile workflow/profiles/default
	python -m pipeline.summary

test: setup gptq
	python -m pytest

run: setup
	@test -n "$(T)" || { echo 'make run: name the targets, e.g. make run T=results/demo/iisan-va.json'; exit 2; }
	snakemake --cores $(CORES) --workflow-profile workflow/profiles/default $(T)

lint: setup
	snakemake --lint

dry-run: setup
	snakemake -n

clean:
	rm -rf results .snakemake
