# `make test` and `make demo` work on a fresh machine with only Python >= 3.11 and pip:
# they create .venv at the repository root when it is missing and install the project into it.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install test test-slow test-cluster lint format clean-venv

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

# one thread per process: the suite runs many small ops and subprocesses, where
# OpenMP spin-waiting on a shared 2-core machine costs 10-50x.
# `make test`: everything but the end-to-end runs (under 10 minutes on 2 cores);
# `make test-slow`: the end-to-end runs (the demo DAG killed and resumed, the report,
# every notebook executed as it is, a Snakemake rerun of a finished job); CI runs both.
test: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -m "not cluster and not slow"

test-slow: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -m "slow and not cluster"

# ruff (check and format) over the Python and the notebooks, snakefmt over the workflow;
# `make format` applies what `make lint` asks for.
LINTED := hspec tests benchmarks notebooks
lint: $(STAMP)
	$(BIN)/ruff check $(LINTED)
	$(BIN)/ruff format --check $(LINTED)
	$(BIN)/snakefmt --check workflow

format: $(STAMP)
	$(BIN)/ruff check --fix $(LINTED)
	$(BIN)/ruff format $(LINTED)
	$(BIN)/snakefmt workflow

# The workflow on a real one-machine Slurm (installs slurm-wlm and munge when missing;
# needs root, else skipped): about 5 minutes, so apart from `make test`; CI runs both.
test-cluster: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -m cluster

clean-venv:
	rm -rf $(VENV)

# The peers of benchmarks/bench.py as wheels in .whl/, for a GPU machine without an index
# (benchmarks/gpu.sh installs them there).
GPU_WHEELS := pyhessian==0.1 curvlinops-for-pytorch==3.0.1 backpack-for-pytorch==1.7.1 \
	einconv==0.1.0 unfoldNd==0.2.3
.PHONY: gpu-wheels
gpu-wheels: $(STAMP)
	$(BIN)/python -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
		--implementation cp --platform manylinux2014_x86_64 --platform any -d .whl $(GPU_WHEELS)

DEMO_CONFIG := config/demo.yaml

.PHONY: demo
demo: $(STAMP)
	OMP_NUM_THREADS=1 PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/snakemake --cores all --configfile $(DEMO_CONFIG)
	@echo "Figures: $(CURDIR)/results/demo/figures/fig{1..6}/ (PNG, PDF, executed notebook, HTML, numbers.json)"
