# Every target installs what it needs into .venv first, so each works on a fresh clone.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install run test lint gen

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Python into .venv, the TypeScript client's npm packages (from package-lock.json), and the Go client's
# GOPATH over Debian's Go packages (.ci/run apt-installs them).
install: $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e clients/python -e ".[dev]"
	cd clients/typescript && npm ci --no-audit --no-fund --loglevel=error
	$(BIN)/python -m devtools.golang

run: install
	$(BIN)/chatmem-server

test: install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/buf lint
	$(BIN)/buf format --diff --exit-code

# Python, TypeScript and Go from protos/ with buf.gen.yaml; `devtools/gen.py --check` only compares.
gen: install
	$(BIN)/python devtools/gen.py
