# Every target installs what it needs into .venv first, so each works on a fresh clone.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install run test lint gen

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Python into .venv, the TypeScript client's npm packages (from package-lock.json), and the Go client's
# GOPATH over Debian's Go packages (.ci/run apt-installs node and Go). Without npm or go the server still
# installs and runs; the TypeScript, Go and interop tests then fail, saying what is missing.
install: $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e clients/python -e ".[dev]"
	@if command -v npm >/dev/null 2>&1; then cd clients/typescript && npm ci --no-audit --no-fund --loglevel=error; \
	else echo "install: npm is missing: the TypeScript client is not installed (see .ci/run)"; fi
	@if command -v go >/dev/null 2>&1; then $(BIN)/python -m devtools.golang; \
	else echo "install: go is missing: the Go client is not set up (see .ci/run)"; fi

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
