.DEFAULT_GOAL := help
VENV ?= .venv

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

setup:  ## create .venv and install everything (idempotent)
	scripts/setup.sh

run:  ## the main job on the embedded default (local processes, embedded Redis, CPU)
	scripts/run.sh

test:  ## the full suite: set-up, ruff, mypy, pytest (all but gpu)
	scripts/test.sh

test-fast:  ## the quick loop, as plain pytest: no integration, slow, gpu or e2e tests
	$(VENV)/bin/python -m pytest -m "not integration and not slow and not gpu and not e2e"

lint:  ## ruff lint + format check, mypy
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check . && $(VENV)/bin/mypy services trainer reward_server

fmt:  ## format and auto-fix lint
	$(VENV)/bin/ruff format . && $(VENV)/bin/ruff check --fix .

bench:  ## run every benchmark (each prints one JSON line)
	for b in bench/*.py; do $(VENV)/bin/python $$b || exit 1; done

.PHONY: help setup run test test-fast lint fmt bench
