# Two entry points that work on a fresh machine: `make up` and `make test`.
# The virtual environment is rebuilt only when pyproject.toml changes.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# CPU torch from the machine's local wheel; on a GPU host install the CUDA build you want first.
TORCH ?= torch==2.13.0

# The dashboard's browser tests drive Debian's Chromium (never a downloaded browser).
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

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

# Chromium for the dashboard tests, and a colour emoji font: without one the page's 🤔/🛑
# markers are empty boxes in screenshots (the page also spells them out: see dashboards/).
.stamp-browser:
	{ command -v chromium >/dev/null 2>&1 && fc-list 2>/dev/null | grep -qi 'Noto Color Emoji'; } \
		|| { $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) \
			apt-get install -y -qq chromium fonts-noto-color-emoji >/dev/null; }
	touch $@

install: .stamp-install
install-test: .stamp-install-test .stamp-browser

up: .stamp-install
	$(BIN)/regime3 up

test: .stamp-install-test .stamp-browser
	$(BIN)/python -m pytest -q

lint: .stamp-install-test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check bus checkpoints settings services/cli services/supervisor.py services/dataset_store.py
	$(BIN)/mypy bus checkpoints codec settings

clean:
	rm -rf $(VENV) .stamp-install .stamp-install-test .stamp-browser
