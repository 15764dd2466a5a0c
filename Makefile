# The README's two commands are `make run` and `make test`; CI runs .ci/run, which calls `make test`.
PYTHON ?= $(shell command -v python3.11 2>/dev/null || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: run test install install-dev lint format typecheck bench clean ui-test

$(BIN)/python:
	$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python 3.11+ is required"'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# A venv made before pyproject.toml moved to xgboost-cpu has the CUDA build (and NVIDIA NCCL,
# 470 MB): both builds own site-packages/xgboost, so the old one goes before the new one comes.
define drop-cuda-xgboost
	@if $(BIN)/python -m pip show -q xgboost >/dev/null 2>&1; then \
		echo "replacing the CUDA build of xgboost (and NVIDIA NCCL) with xgboost-cpu"; \
		$(BIN)/python -m pip uninstall -q -y xgboost xgboost-cpu nvidia-nccl-cu12; \
	fi
endef

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(drop-cuda-xgboost)
	$(BIN)/python -m pip install -q -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(drop-cuda-xgboost)
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@ $(VENV)/.installed

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

## serve the demo registry on 127.0.0.1:8000, training demo models that have no version yet
run: $(VENV)/.installed
	$(BIN)/forecast-service serve --train-missing

## lint and type-check, then the whole test suite on TEST_WORKERS pytest-xdist workers (0: in one process)
TEST_WORKERS ?= 2
test: $(VENV)/.installed-dev
	$(BIN)/ruff check service tests bench
	$(BIN)/mypy service
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --durations=25

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check service tests bench
	$(BIN)/ruff format --check service tests bench

format: $(VENV)/.installed-dev
	$(BIN)/ruff format service tests bench
	$(BIN)/ruff check --fix service tests bench

typecheck: $(VENV)/.installed-dev
	$(BIN)/mypy service

## benchmarks: BENCH=quick (default) or BENCH=full; results in bench/results.json. Accuracy on competition
## data through the API: quick, Tourism seasonal naive (~40 s); full, Tourism and M1, seasonal naive and auto
## (~15 min); BENCH_ACCURACY='tourism:SeasonalNaive,auto;m1:auto' chooses, BENCH_ACCURACY= skips it
bench: $(VENV)/.installed-dev
	$(BIN)/python -m pip install -q -e '.[dev,bench]'
	$(BIN)/python -m bench --profile $(or $(BENCH),quick)

## the dashboard in headless Chromium (Debian's chromium; playwright-python drives it, no browser download);
## screenshots in ui-artifacts/. Needs /usr/bin/chromium: apt-get install chromium (.ci/run does)
ui-test: $(VENV)/.installed-dev
	$(BIN)/python -m pip install -q -e '.[dev,ui]'
	$(BIN)/python -m pytest -m browser tests/ui -p no:cacheprovider

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache

## build the image and test the container for real: buildah + podman, no Docker engine (minutes)
.PHONY: container-test
container-test:
	bash scripts/container-test.sh
