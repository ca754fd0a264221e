# The two commands a fresh machine needs are `make run` and `make test` (see README.md).
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: setup image run test test-unit test-e2e lint generate bench clean

setup:
	@scripts/setup.sh

image: setup
	@$(VENV)/bin/hcsshim uvm build

run: setup image
	@scripts/run-main.sh

lint: setup
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/ruff format --check src tests bench
	$(VENV)/bin/mypy

# Unit tests first, then the end-to-end group in its own run: the e2e group's session-wide UVM keeps an
# event loop running on a thread, which must not share a process with CPU-bound unit tests.
test: setup image lint
	$(PY) -m pytest -q -m "not e2e" tests
	$(PY) -m pytest -q -m e2e --durations=20 tests

test-unit: setup
	$(PY) -m pytest -q -m "not e2e" tests

test-e2e: setup image
	$(PY) -m pytest -q -m e2e --durations=20 tests

generate: setup
	$(PY) -m hcsshim.api.generate

bench: setup image
	$(PY) bench/run_all.py

clean:
	rm -rf $(VENV) build .pytest_cache .mypy_cache .ruff_cache
