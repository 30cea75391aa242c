# Two commands on a fresh machine with Python 3.11:  `make demo`  and  `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DEMO   ?= runs/demo

# `make test` = lint (ruff + mypy, configured in pyproject.toml) then the tests; a lint failure fails the run.

.PHONY: install system-deps demo test bench lint clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -U pip setuptools wheel
	$(BIN)/pip install -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# Redis (Debian) for the serving tests' Redis cache; skipped when present or when not root.
system-deps:
	@command -v redis-server >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq redis-server >/dev/null; \
	  else echo "redis-server missing (tests needing it will skip): sudo apt-get install redis-server"; fi; }

# The main job on embedded defaults: demo data -> pipeline (kfp.local) -> live service on localhost.
demo: install
	$(BIN)/pi2i demo --out $(DEMO)

test: install system-deps
	@$(MAKE) --no-print-directory lint
	$(BIN)/python -m pytest -q -ra -m 'not cluster' tests
	# the cluster path in its own process: a two-node Ray cluster's auth state must not leak into in-process Ray
	$(BIN)/python -m pytest -q -ra -m cluster tests

bench: install
	$(BIN)/python benchmarks/bench_swing.py

lint: install
	@status=0; $(BIN)/ruff check . || status=1; $(BIN)/mypy || status=1; exit $$status

clean:
	rm -rf $(VENV) runs build *.egg-info
