# The README's two commands are `make run` and `make test`; CI runs .ci/run, which calls `make test`.
PYTHON ?= $(shell command -v python3.11 2>/dev/null || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: run test install install-dev lint format typecheck bench clean

$(BIN)/python:
	$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python 3.11+ is required"'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@ $(VENV)/.installed

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

## serve the demo registry on 127.0.0.1:8000, training demo models that have no version yet
run: $(VENV)/.installed
	$(BIN)/forecast-service serve --train-missing

## lint and type-check, then the whole test suite
test: $(VENV)/.installed-dev
	$(BIN)/ruff check service tests bench
	$(BIN)/mypy service
	$(BIN)/python -m pytest

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check service tests bench
	$(BIN)/ruff format --check service tests bench

format: $(VENV)/.installed-dev
	$(BIN)/ruff format service tests bench
	$(BIN)/ruff check --fix service tests bench

typecheck: $(VENV)/.installed-dev
	$(BIN)/mypy service

## benchmarks: BENCH=quick (default) or BENCH=full; results in bench/results.json
bench: $(VENV)/.installed-dev
	$(BIN)/python -m pip install -q -e '.[dev,bench]'
	$(BIN)/python -m bench --profile $(or $(BENCH),quick)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache

## build the image and test the container for real: buildah + podman, no Docker engine (minutes)
.PHONY: container-test
container-test:
	bash scripts/container-test.sh
