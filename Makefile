# drm-gateway: the two commands users need are `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test check lint typecheck unit clean

install: $(STAMP)

# Re-install only when the package metadata changes (idempotent).
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: install
	$(BIN)/drm-gateway demo

lint: install
	$(BIN)/ruff check proxy tests
	$(BIN)/ruff format --check proxy tests

typecheck: install
	$(BIN)/mypy --strict proxy

unit: install
	bash .ci/pytest.sh $(BIN)/pytest

check: lint typecheck

test: check unit

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis
