# Two commands: `make demo` (set up + run the whole recommender end to end) and
# `make test` (set up + run the test suite; .ci/run calls exactly this).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

TOOLS ?= .venv-tools
TOOLS_STAMP := $(TOOLS)/.installed
PIP_QUIET := --quiet --disable-pip-version-check

.PHONY: setup tools demo test unit serve clean

setup: $(STAMP)

# Everything is pinned (env/lock.txt is a full freeze of a working environment) and installed
# without dependency resolution, so a clean machine gets exactly what was tested.
# env/protobuf-python.pth selects protobuf's pure-Python implementation in every process of the
# venv (the Merlin stack selects it on import anyway): with the upb one, `feast apply` on a new
# repository crashes (segfault deep-copying the registry's empty infra message).
$(STAMP): env/lock.txt pyproject.toml env/protobuf-python.pth
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check "pip<26.3" "setuptools<70" wheel
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps -r env/lock.txt
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	cp env/protobuf-python.pth "$$($(BIN)/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/"
	$(BIN)/python -c "import merlin.systems, nvtabular, merlin.models.tf, feast, pymilvus, tritonclient.grpc, milvus" 2>/dev/null
	$(BIN)/python -c "import recsys.runtime.servers as s; s.prepare_triton_backends(__import__('pathlib').Path('$(VENV)/.triton-check'))"
	touch $(STAMP)

# Offline validators of docker/ and deploy/ (hadolint, yamllint, kubernetes-validate, and
# docker-compose 1.29.2 for `config`), in virtualenvs of their own: their pins (PyYAML<6,
# jsonschema<4 for docker-compose) would clash with the project's. tests/unit/test_deploy.py
# runs them.
tools: $(TOOLS_STAMP)

$(TOOLS_STAMP): env/tools-lock.txt env/tools-compose-lock.txt
	rm -rf $(TOOLS)
	$(PYTHON) -m venv $(TOOLS)/lint
	$(TOOLS)/lint/bin/pip install $(PIP_QUIET) --no-deps -r env/tools-lock.txt
	$(PYTHON) -m venv $(TOOLS)/compose
	$(TOOLS)/compose/bin/pip install $(PIP_QUIET) "pip<26.3" setuptools==69.5.1 wheel==0.43.0 Cython==0.29.37
	$(TOOLS)/compose/bin/pip install $(PIP_QUIET) --no-deps --no-build-isolation -r env/tools-compose-lock.txt
	$(TOOLS)/lint/bin/hadolint --version >/dev/null
	$(TOOLS)/lint/bin/yamllint --version >/dev/null
	$(TOOLS)/lint/bin/kubernetes-validate --version >/dev/null
	$(TOOLS)/compose/bin/docker-compose version >/dev/null
	touch $(TOOLS_STAMP)

demo: setup
	$(BIN)/recsys demo $(DEMO_ARGS)

test: setup tools
	$(BIN)/python -m pytest -ra $(PYTEST_ARGS)

unit: setup tools
	$(BIN)/python -m pytest -ra -m "not integration" $(PYTEST_ARGS)

serve: setup
	$(BIN)/recsys serve

clean:
	rm -rf artifacts feature_repo/data
