# Quick start:  make demo   (service + simulated sensors on :8080)
#               make test   (lint, types and the whole test suite)
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test lint install services bench loadtest image image-smoke

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
	$(BIN)/ruff check soundstream tests bench loadtest
	$(BIN)/ruff format --check soundstream tests bench loadtest
	$(BIN)/mypy

test: lint services
	scripts/observability-tools
	scripts/browser-tools
	$(BIN)/pytest

# Benchmarks: each prints its figures and writes bench/results/<name>-<time>.json.
bench: install services
	$(BIN)/python bench/extract.py
	$(BIN)/python bench/endtoend.py --seconds 600 --runs 3
	$(BIN)/python bench/pipeline.py --runs 3
	$(BIN)/python bench/memory.py
	$(BIN)/python bench/readpath.py
	$(BIN)/python bench/readapi.py
	$(BIN)/python bench/freshness.py
	$(BIN)/python bench/scaleout.py --seconds 400
	$(BIN)/python bench/live.py

# The service image, built with podman as localhost/soundstream:dev, and a run of it
# against the local services (see the Dockerfile). The flags are what podman needs
# on a sandboxed machine: no systemd (cgroupfs), runc rather than crun, and hard
# ulimits below podman's defaults (PODMAN_LIMITS go to every build and run).
# Elsewhere: `make image image-smoke PODMAN=podman PODMAN_LIMITS=`.
PODMAN ?= podman --runtime runc --cgroup-manager=cgroupfs
PODMAN_LIMITS ?= --ulimit nofile=1024:1024 --ulimit nproc=1000:1000
IMAGE ?= localhost/soundstream:dev

image:
	PODMAN='$(PODMAN)' PODMAN_LIMITS='$(PODMAN_LIMITS)' IMAGE='$(IMAGE)' scripts/image

image-smoke: image services
	PODMAN='$(PODMAN)' PODMAN_LIMITS='$(PODMAN_LIMITS)' IMAGE='$(IMAGE)' scripts/image-smoke

# Locust for 60 s against a service of its own (AMQP sensors and HTTP readers); fails
# past loadtest/thresholds.toml. Against a deployment: scripts/loadtest --host URL ...
loadtest: install services
	scripts/loadtest
