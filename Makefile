# One command to set up and run the daemon, one to run every test. See README.md.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
CAIRN_HOME ?= $(HOME)/.local/share/cairn
SOURCE ?= $(HOME)

.PHONY: setup run test lint proto bench

$(BIN)/cairnd: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $@

setup: $(BIN)/cairnd

# Runs cairnd in the foreground on the embedded default: a local repository under
# $(CAIRN_HOME)/repo (created if missing), watching $(SOURCE).
run: setup
	CAIRN_HOME=$(CAIRN_HOME) $(BIN)/cairnd --repo $(CAIRN_HOME)/repo --source $(SOURCE)

test: setup
	$(BIN)/pytest -q -p no:cacheprovider tests

lint: setup
	$(BIN)/ruff check .

proto: setup
	$(BIN)/python proto/generate.py

bench: setup
	$(BIN)/python bench/backup_restore.py
