# Quick start:  make demo   (service + simulated sensors on :8080)
#               make test   (lint, types and the whole test suite)
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test lint install services bench

$(BIN)/soundstream: pyproject.toml
	$(PYTHON) -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11) and "soundstream needs Python 3.11")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $@

install: $(BIN)/soundstream

services:
	scripts/services-up

demo: install services
	scripts/demo

lint: install
	$(BIN)/ruff check soundstream tests bench
	$(BIN)/ruff format --check soundstream tests bench
	$(BIN)/mypy

test: lint services
	scripts/observability-tools
	$(BIN)/pytest

# Benchmarks: each prints its figures and writes bench/results/<name>-<time>.json.
bench: install services
	$(BIN)/python bench/extract.py
	$(BIN)/python bench/endtoend.py --seconds 120 --runs 3
	$(BIN)/python bench/pipeline.py --runs 3
	$(BIN)/python bench/memory.py
	$(BIN)/python bench/readpath.py
	$(BIN)/python bench/readapi.py
	$(BIN)/python bench/freshness.py
	$(BIN)/python bench/scaleout.py
