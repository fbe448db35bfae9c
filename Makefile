# Two commands: `make demo` (set up + run the whole recommender end to end) and
# `make test` (set up + run the test suite; .ci/run calls exactly this).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test unit serve clean

setup: $(STAMP)

# Everything is pinned (env/lock.txt is a full freeze of a working environment) and installed
# without dependency resolution, so a clean machine gets exactly what was tested.
$(STAMP): env/lock.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check "pip<26.3" "setuptools<70" wheel
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps -r env/lock.txt
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	$(BIN)/python -c "import merlin.systems, nvtabular, merlin.models.tf, feast, pymilvus, tritonclient.grpc, milvus" 2>/dev/null
	$(BIN)/python -c "import recsys.servers as s; s.prepare_triton_backends(__import__('pathlib').Path('$(VENV)/.triton-check'))"
	touch $(STAMP)

demo: setup
	$(BIN)/recsys demo $(DEMO_ARGS)

test: setup
	$(BIN)/python -m pytest -ra $(PYTEST_ARGS)

unit: setup
	$(BIN)/python -m pytest -ra -m "not integration" $(PYTEST_ARGS)

serve: setup
	$(BIN)/recsys serve

clean:
	rm -rf artifacts feature_repo/data
