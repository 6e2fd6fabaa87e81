# Two commands do all the set-up on a fresh machine: `make dev` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: dev test bench lock clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check 'uv>=0.13'
	$(BIN)/uv pip install --quiet --python $(BIN)/python -c constraints.txt -e '.[agents,dev]'
	touch $(STAMP)

## Run the whole platform on this machine (Temporal dev server, Postgres, workers, API).
dev: $(STAMP)
	$(BIN)/bizosaas dev

## Run the test suite (real Temporal dev server, real Postgres, real HTTP) in PYTEST_WORKERS
## processes (pytest-xdist), each with a server and database of its own, a file at a time.
## PYTEST_WORKERS=0 runs it in one process.
PYTEST_WORKERS ?= 2
test: $(STAMP)
	$(BIN)/python -m pytest -p xdist -n $(PYTEST_WORKERS) --dist loadfile --no-loadscope-reorder $(PYTEST_ARGS)

## Measure the platform against the raw Temporal SDK on the same dev server (BENCH_ARGS=--quick).
bench: $(STAMP)
	$(BIN)/python bench/bench_spine.py $(BENCH_ARGS)
	$(BIN)/python bench/bench_agents.py $(BENCH_ARGS)
	$(BIN)/python bench/bench_hitl.py $(BENCH_ARGS)
	$(BIN)/python bench/bench_webhooks.py $(BENCH_ARGS)
	$(BIN)/python bench/bench_memory.py $(BENCH_ARGS)
	$(BIN)/python bench/bench_content.py $(BENCH_ARGS)
	$(BIN)/python bench/bench_client_spans.py $(BENCH_ARGS)

## Re-resolve constraints.txt (every dependency, crewai included, resolved together).
lock: $(STAMP)
	$(BIN)/uv pip compile pyproject.toml --extra agents --extra dev -p 3.11 -o constraints.txt

clean:
	rm -rf $(VENV) .bizosaas
