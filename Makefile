# idlegrid: one Makefile for set-up, running, tests and checks.
# `make run` and `make test` install first when needed (a .venv in the repo).

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
PROTOS := $(shell find proto -name '*.proto' | sort)

.PHONY: install run test test-fast proto proto-check lint bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -e '.[dev,node]'
	touch $(STAMP)

run: install
	$(BIN)/idlegrid up

test: install proto-check
	$(BIN)/python -m pytest -q -p no:cacheprovider

test-fast: install
	$(BIN)/python -m pytest -q -x -m "not slow"

# Regenerates the committed Python code from proto/ (never edit gen/ by hand).
proto: install
	rm -rf gen/idlegrid
	$(MAKE) --no-print-directory gen-into OUT=gen

gen-into:
	mkdir -p $(OUT)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m grpc_tools.protoc -Iproto --python_out=$(OUT) --grpc_python_out=$(OUT) \
		--mypy_out=$(OUT) --mypy_grpc_out=$(OUT) $(PROTOS)
	find $(OUT)/idlegrid -type d -exec touch {}/__init__.py \;

# Fails when regenerating would change anything in gen/.
proto-check: install
	@tmp=$$(mktemp -d) && $(MAKE) --no-print-directory -s gen-into OUT=$$tmp >/dev/null && \
	if diff -r -q gen/idlegrid $$tmp/idlegrid; then echo "proto-check: generated code is up to date"; rm -rf $$tmp; \
	else echo "proto-check: gen/ is stale: run 'make proto' and commit"; rm -rf $$tmp; exit 1; fi

lint: install
	$(BIN)/ruff check .

bench: install
	$(BIN)/idlegrid bench ledger

clean:
	rm -rf $(VENV) .idlegrid .pytest_cache
