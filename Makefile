# Two entry points that work on a fresh machine: `make up` and `make test`.
# The virtual environment is rebuilt only when pyproject.toml changes.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# CPU torch from the machine's local wheel; on a GPU host install the CUDA build you want first.
TORCH ?= torch==2.13.0

.PHONY: up test install install-test lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

.stamp-install: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet "$(TORCH)"
	$(BIN)/pip install --quiet -e .
	touch $@

.stamp-install-test: pyproject.toml .stamp-install
	$(BIN)/pip install --quiet -e ".[test]"
	touch $@

install: .stamp-install
install-test: .stamp-install-test

up: .stamp-install
	$(BIN)/regime3 up

test: .stamp-install-test
	$(BIN)/python -m pytest -q

lint: .stamp-install-test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check bus services/cli services/supervisor.py services/dataset_store.py
	$(BIN)/mypy bus codec

clean:
	rm -rf $(VENV) .stamp-install .stamp-install-test
