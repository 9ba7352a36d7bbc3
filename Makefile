# idlegrid: one Makefile for set-up, running, tests and checks.
# `make run` and `make test` install first when needed (a .venv in the repo).

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
PROTOS := $(shell find proto -name '*.proto' | sort)

.PHONY: install run test test-fast fuzz proto proto-check lint bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -e '.[dev,node]'
	touch $(STAMP)

run: install
	$(BIN)/idlegrid up

test: install proto-check lint browser
	$(BIN)/python -m pytest -q -p no:cacheprovider

# The console's browser tests (tests/console) drive Debian's chromium through
# Playwright; Playwright's own browser download is never used.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
browser:
	@command -v chromium >/dev/null 2>&1 || { $(SUDO) apt-get update && $(SUDO) apt-get install -y chromium; }

# Everything but the scenarios marked slow (real services with demo Tritons,
# or otherwise long): about a minute here, under 90 s.
test-fast: install
	$(BIN)/python -m pytest -q -x -p no:cacheprovider -m "not slow"

# Schemathesis against the gateway's OpenAPI document (tests/fuzz), longer
# than the bounded run in `make test`: FUZZ_EXAMPLES examples per operation
# (make fuzz FUZZ_EXAMPLES=1000), FUZZ_SEED to vary the seed.
FUZZ_EXAMPLES ?= 200
fuzz: install
	FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) FUZZ_TIMEOUT_S=3600 $(BIN)/python -m pytest -q -p no:cacheprovider tests/fuzz

# The generated gRPC API of each service lives in its package, as
# idlegrid.<service>.v1: proto/idlegrid/ledger/v1 -> ledger/v1,
# proto/idlegrid/<service>/v1 -> services/<service>/v1. Never edit it by hand.
API_SERVICES := $(sort $(patsubst proto/idlegrid/%/v1,%,$(shell find proto/idlegrid -mindepth 2 -maxdepth 2 -type d -name v1)))

# Regenerates the committed Python code from proto/.
proto: install
	@tmp=$$(mktemp -d) && $(MAKE) --no-print-directory -s gen-into OUT=$$tmp >/dev/null && \
	for s in $(API_SERVICES); do \
	  case $$s in ledger) d=ledger/v1;; *) d=services/$$s/v1;; esac; \
	  rm -rf $$d && mkdir -p $$d && cp $$tmp/idlegrid/$$s/v1/* $$d/; \
	done; rm -rf $$tmp; echo "proto: regenerated $(API_SERVICES)"

gen-into:
	mkdir -p $(OUT)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m grpc_tools.protoc -Iproto --python_out=$(OUT) --grpc_python_out=$(OUT) \
		--mypy_out=$(OUT) --mypy_grpc_out=$(OUT) $(PROTOS)
	find $(OUT)/idlegrid -mindepth 2 -type d -name v1 -exec touch {}/__init__.py \;

# Fails when regenerating would change anything that is committed.
proto-check: install
	@tmp=$$(mktemp -d) && $(MAKE) --no-print-directory -s gen-into OUT=$$tmp >/dev/null && \
	stale=0; for s in $(API_SERVICES); do \
	  case $$s in ledger) d=ledger/v1;; *) d=services/$$s/v1;; esac; \
	  diff -r -q $$d $$tmp/idlegrid/$$s/v1 -x __pycache__ || stale=1; \
	done; rm -rf $$tmp; \
	if [ $$stale = 0 ]; then echo "proto-check: generated code is up to date"; \
	else echo "proto-check: generated code is stale: run 'make proto' and commit"; exit 1; fi

# Style, and the architecture's boundaries (import-linter contracts in pyproject.toml).
lint: install
	$(BIN)/ruff check .
	$(BIN)/lint-imports --no-cache

bench: install
	$(BIN)/idlegrid bench ledger

clean:
	rm -rf $(VENV) .idlegrid .pytest_cache
