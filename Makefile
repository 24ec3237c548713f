# make demo: set up .venv (if needed) and run the embedded demo through Snakemake.
# make test: set up .venv (if needed) and run the whole test suite (what CI runs).
VENV ?= .venv
PYTHON ?= python3
BIN := $(abspath $(VENV))/bin
export PATH := $(BIN):$(PATH)

.PHONY: setup demo test lint dry-run clean

# torch is installed first and pinned: an unpinned torch pulls a multi-GB CUDA build.
$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

setup: $(VENV)/.installed

demo: setup
	snakemake --cores 1 --workflow-profile workflow/profiles/default

test: setup
	python -m pytest

lint: setup
	snakemake --lint

dry-run: setup
	snakemake -n

clean:
	rm -rf results .snakemake
